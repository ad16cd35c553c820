//! Perf (`/perf/1.0.0`): the client sends the number of bytes it wants back
//! (u64 big-endian), uploads, half-closes; the server drains, then sends.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use circuit_proto::yamux::Chunk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connection::{Connection, Stream};
use crate::node::{DialError, Node};

/// Protocol id.
pub const PROTOCOL: &str = "/perf/1.0.0";
/// Size of the chunks perf sends.
const CHUNK: usize = 64 * 1024;

/// Reads the stream to its end, counting the bytes in `got` (also what came before an
/// error), taking the buffered chunks whole (nothing is copied out of them); `on_first`
/// runs when the first byte arrives. More than `max` bytes is an error (`InvalidData`).
async fn drain(
    s: &mut Stream,
    max: u64,
    got: &mut u64,
    mut on_first: impl FnMut(),
) -> io::Result<()> {
    loop {
        let chunk = poll_fn(|cx| s.poll_read_chunk(cx, usize::MAX)).await?;
        if chunk.is_empty() {
            return Ok(());
        }
        if *got == 0 {
            on_first();
        }
        *got += chunk.len() as u64;
        if *got > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max} bytes uploaded"),
            ));
        }
    }
}

/// Sends `n` zero bytes as whole chunks (zero-filled by the allocator, handed to the
/// stream without a copy).
async fn send_zeros(s: &mut Stream, n: u64) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        let mut chunk = Chunk::owned(BytesMut::zeroed(len));
        poll_fn(|cx| s.poll_write_chunk(cx, &mut chunk)).await?;
        s.flush_chunks();
        left -= len as u64;
    }
    Ok(())
}

/// Called with how each perf request ended.
pub type Observer = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Bounds on what a perf server does for others.
#[derive(Clone)]
pub struct ServerLimits {
    /// Most bytes one request may upload, and most it may ask back; a larger request has
    /// its stream reset (when its header asks for more, or as soon as its upload passes).
    pub max_bytes: u64,
    /// Most requests served at once; streams beyond are reset without being read.
    pub max_concurrent: usize,
    /// Told how each request ended (for metrics); runs on the serving task, so quick.
    pub observer: Option<Observer>,
}

impl ServerLimits {
    /// No bounds (what `circuit listen` serves: a peer's own tool).
    pub fn unlimited() -> ServerLimits {
        ServerLimits {
            max_bytes: u64::MAX,
            max_concurrent: usize::MAX,
            observer: None,
        }
    }
}

impl std::fmt::Debug for ServerLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLimits")
            .field("max_bytes", &self.max_bytes)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

/// How one perf request ended, as a server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served in full.
    Served {
        /// Bytes the client uploaded.
        received: u64,
        /// Bytes sent back.
        sent: u64,
    },
    /// Refused: `max_concurrent` requests were being served.
    Busy,
    /// Refused: it asked for, or uploaded, more than `max_bytes`.
    TooLarge {
        /// Bytes received before the stream was reset.
        received: u64,
    },
    /// The stream failed (reset or closed by the client, connection lost).
    Failed {
        /// Bytes received.
        received: u64,
        /// Bytes sent.
        sent: u64,
    },
}

impl Outcome {
    /// Every [`Outcome::label`], for metrics that list their label values up front.
    pub const LABELS: [&'static str; 4] = ["served", "busy", "too_large", "failed"];

    /// Short name, as a metric label: one of [`Outcome::LABELS`].
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Served { .. } => "served",
            Outcome::Busy => "busy",
            Outcome::TooLarge { .. } => "too_large",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// Bytes received and sent.
    pub fn bytes(&self) -> (u64, u64) {
        match *self {
            Outcome::Served { received, sent } | Outcome::Failed { received, sent } => {
                (received, sent)
            }
            Outcome::TooLarge { received } => (received, 0),
            Outcome::Busy => (0, 0),
        }
    }
}

/// Serves perf on `node` without bounds. Off by default: it makes the node do work for
/// anyone who asks.
pub fn enable(node: &Node) {
    serve(node, ServerLimits::unlimited());
}

/// Serves perf on `node` within `limits` (what a relay serves its clients).
pub fn serve(node: &Node, limits: ServerLimits) {
    let active = Arc::new(AtomicUsize::new(0));
    node.handle(PROTOCOL, move |mut inc| {
        let limits = limits.clone();
        let peer = inc.connection.peer();
        if active.fetch_add(1, Ordering::AcqRel) >= limits.max_concurrent {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(%peer, max = limits.max_concurrent, "perf request refused: as many being served as allowed");
            inc.stream.reset();
            observe(&limits, &Outcome::Busy);
            return;
        }
        let active = active.clone();
        tokio::spawn(async move {
            let outcome = answer(&mut inc.stream, limits.max_bytes).await;
            active.fetch_sub(1, Ordering::AcqRel);
            match outcome {
                Outcome::TooLarge { .. } => {
                    tracing::debug!(%peer, max_bytes = limits.max_bytes, "perf request refused: more bytes than allowed");
                    inc.stream.reset();
                }
                Outcome::Failed { .. } => inc.stream.reset(),
                _ => {}
            }
            observe(&limits, &outcome);
        });
    });
}

fn observe(limits: &ServerLimits, outcome: &Outcome) {
    if let Some(f) = &limits.observer {
        f(outcome);
    }
}

/// One request: header, upload (drained), answer.
async fn answer(s: &mut Stream, max: u64) -> Outcome {
    let mut hdr = [0u8; 8];
    if s.read_exact(&mut hdr).await.is_err() {
        return Outcome::Failed {
            received: 0,
            sent: 0,
        };
    }
    let want = u64::from_be_bytes(hdr);
    if want > max {
        return Outcome::TooLarge { received: 0 };
    }
    let mut received = 0;
    match drain(s, max, &mut received, || {}).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Outcome::TooLarge { received },
        Err(_) => return Outcome::Failed { received, sent: 0 },
    }
    if send_zeros(s, want).await.is_err() || s.shutdown().await.is_err() {
        return Outcome::Failed { received, sent: 0 };
    }
    Outcome::Served {
        received,
        sent: want,
    }
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
    send_zeros(&mut s, upload).await?;
    s.shutdown().await?;
    let upload_time = start.elapsed();
    let dl_start = Instant::now();
    let mut ttfb = None;
    let mut got = 0;
    drain(&mut s, u64::MAX, &mut got, || {
        ttfb = Some(dl_start.elapsed())
    })
    .await?;
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
