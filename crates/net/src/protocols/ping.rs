//! Ping (`/ipfs/ping/1.0.0`): 32 random bytes echoed back.

use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connection::{Connection, Stream};
use crate::node::{DialError, Node};

/// Protocol id.
pub const PROTOCOL: &str = "/ipfs/ping/1.0.0";
/// Size of a ping.
pub const PING_SIZE: usize = 32;
/// The server closes a ping stream idle this long (go uses 10 s between pings... rust pings every 15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn install(node: &Node) {
    node.handle(PROTOCOL, |mut inc| {
        tokio::spawn(async move {
            let mut buf = [0u8; PING_SIZE];
            loop {
                match tokio::time::timeout(IDLE_TIMEOUT, inc.stream.read_exact(&mut buf)).await {
                    Ok(Ok(_)) => {
                        if inc.stream.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = inc.stream.shutdown().await;
                        return;
                    }
                }
            }
        });
    });
}

/// A ping stream: send pings one after the other on one stream.
pub struct Pinger {
    stream: Stream,
}

impl Pinger {
    /// Opens a ping stream on `conn`.
    pub async fn open(node: &Node, conn: &Connection) -> Result<Pinger, DialError> {
        Ok(Pinger {
            stream: node.open_stream(conn, PROTOCOL).await?,
        })
    }

    /// Sends one ping and waits for its echo; returns the round-trip time.
    pub async fn ping(&mut self, timeout: Duration) -> std::io::Result<Duration> {
        let mut payload = [0u8; PING_SIZE];
        rand::thread_rng().fill_bytes(&mut payload);
        let start = Instant::now();
        let fut = async {
            self.stream.write_all(&payload).await?;
            let mut echo = [0u8; PING_SIZE];
            self.stream.read_exact(&mut echo).await?;
            if echo != payload {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "ping echo differs from what we sent",
                ));
            }
            Ok(start.elapsed())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no ping answer"))?
    }

    /// Ends the stream cleanly.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}
