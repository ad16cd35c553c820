//! Perf (`/perf/1.0.0`): the client sends the number of bytes it wants back
//! (u64 big-endian), uploads, half-closes; the server drains, then sends.

use std::future::poll_fn;
use std::io;
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

/// Reads the stream to its end and counts the bytes, taking the buffered chunks whole
/// (nothing is copied out of them); `on_first` runs when the first byte arrives.
async fn drain(s: &mut Stream, mut on_first: impl FnMut()) -> io::Result<u64> {
    let mut got = 0u64;
    loop {
        let chunk = poll_fn(|cx| s.poll_read_chunk(cx, usize::MAX)).await?;
        if chunk.is_empty() {
            return Ok(got);
        }
        if got == 0 {
            on_first();
        }
        got += chunk.len() as u64;
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

/// Serves perf on `node`. Off by default: it makes the node do work for anyone who asks.
pub fn enable(node: &Node) {
    node.handle(PROTOCOL, |mut inc| {
        tokio::spawn(async move {
            let mut hdr = [0u8; 8];
            if inc.stream.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let want = u64::from_be_bytes(hdr);
            if drain(&mut inc.stream, || {}).await.is_err() {
                return;
            }
            if send_zeros(&mut inc.stream, want).await.is_err() {
                return;
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
    send_zeros(&mut s, upload).await?;
    s.shutdown().await?;
    let upload_time = start.elapsed();
    let dl_start = Instant::now();
    let mut ttfb = None;
    let got = drain(&mut s, || ttfb = Some(dl_start.elapsed())).await?;
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
