//! Perf (`/perf/1.0.0`): the client sends the number of bytes it wants back
//! (u64 big-endian), uploads, half-closes; the server drains, then sends.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connection::Connection;
use crate::node::{DialError, Node};

/// Protocol id.
pub const PROTOCOL: &str = "/perf/1.0.0";
/// Chunk size for perf writes and reads.
const CHUNK: usize = 64 * 1024;

/// Serves perf on `node`. Off by default: it makes the node do work for anyone who asks.
pub fn enable(node: &Node) {
    node.handle(PROTOCOL, |mut inc| {
        tokio::spawn(async move {
            let mut hdr = [0u8; 8];
            if inc.stream.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let want = u64::from_be_bytes(hdr);
            let mut buf = vec![0u8; CHUNK];
            loop {
                match inc.stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            buf.fill(0);
            let mut left = want;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if inc.stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = inc.stream.shutdown().await;
        });
    });
}

/// Figures from one perf run.
#[derive(Debug, Clone, Copy)]
pub struct PerfReport {
    /// Bytes sent.
    pub uploaded: u64,
    /// Bytes received.
    pub downloaded: u64,
    /// Time to send everything (until our half-close).
    pub upload_time: Duration,
    /// From the half-close to the first byte back.
    pub time_to_first_byte: Option<Duration>,
    /// From the half-close to the end of the answer.
    pub download_time: Duration,
    /// Whole request, stream opening included.
    pub total: Duration,
}

/// Runs one perf request on `conn`.
pub async fn run(
    node: &Node,
    conn: &Connection,
    upload: u64,
    download: u64,
) -> Result<PerfReport, DialError> {
    let start = Instant::now();
    let mut s = node.open_stream(conn, PROTOCOL).await?;
    s.write_all(&download.to_be_bytes()).await?;
    let buf = vec![0u8; CHUNK];
    let mut left = upload;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let upload_time = start.elapsed();
    let dl_start = Instant::now();
    let mut rbuf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut ttfb = None;
    loop {
        let n = s.read(&mut rbuf).await?;
        if n == 0 {
            break;
        }
        if ttfb.is_none() {
            ttfb = Some(dl_start.elapsed());
        }
        got += n as u64;
    }
    if got != download {
        return Err(DialError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("perf server sent {got} bytes, asked for {download}"),
        )));
    }
    Ok(PerfReport {
        uploaded: upload,
        downloaded: got,
        upload_time,
        time_to_first_byte: ttfb,
        download_time: dl_start.elapsed(),
        total: start.elapsed(),
    })
}
