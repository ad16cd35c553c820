//! The circuit bridge: copies bytes between the source's hop stream and the
//! target's stop stream, both ways, under the circuit's limit.
//!
//! One future drives both directions. Between two of our yamux streams the chunks the
//! receiving session buffered are moved, not copied, into the sending session; backpressure
//! comes from the streams' yamux windows and send buffers (a write that cannot proceed stops
//! the reads of its direction).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use circuit_net::Stream;
use circuit_proto::relay::Limit;
use circuit_proto::yamux::{Chunk, StreamLimits, WindowBudget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which way a forwarded chunk went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the circuit's source (the dialer, on the hop stream) to its destination.
    SrcToDst,
    /// From the destination (the listener, on the stop stream) back to the source.
    DstToSrc,
}

/// An observer of the bytes a relay forwards: called with every chunk the
/// bridge has written on, in order, per direction. For tests and diagnostics
/// (e.g. proving the relay only ever sees ciphertext); it runs on the copy
/// path, so it must be quick and must not block.
#[derive(Clone)]
pub struct Tap(pub Arc<TapFn>);

/// The callback type of a [`Tap`].
pub type TapFn = dyn Fn(Direction, &[u8]) + Send + Sync;

impl Tap {
    /// Wraps a callback.
    pub fn new(f: impl Fn(Direction, &[u8]) + Send + Sync + 'static) -> Tap {
        Tap(Arc::new(f))
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap(..)")
    }
}

/// How a direction of the bridge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeEnd {
    /// Both sides finished cleanly.
    Done,
    /// The data limit of a direction was reached; both streams were reset.
    DataLimit,
    /// The duration limit was reached; both streams were reset.
    DurationLimit,
    /// A side failed or reset.
    Error,
}

/// Totals of a bridged circuit.
#[derive(Debug, Clone, Copy)]
pub struct BridgeStats {
    /// Bytes from source to destination.
    pub src_to_dst: u64,
    /// Bytes from destination to source.
    pub dst_to_src: u64,
    /// How it ended.
    pub end: BridgeEnd,
}

#[derive(Debug, Clone, Copy)]
enum DirEnd {
    Eof,
    Limit,
    Err,
}

/// What the bridge needs of each side: owned chunks in, owned chunks out. Our yamux
/// [`Stream`] hands its buffered chunks over as they are (no payload copy between the two
/// connections); any other `AsyncRead + AsyncWrite` goes through [`Buffered`].
pub(crate) trait Side: Unpin {
    /// Reads up to `max` (> 0) bytes; an empty chunk is the end of the stream.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Chunk>>;
    /// Writes the whole chunk; on `Ready(Ok)` it has been taken (left empty).
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Chunk)
        -> Poll<io::Result<()>>;
    /// Half-closes the write side.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends a run of chunk writes: makes sure they get sent (see [`Stream::flush_chunks`]).
    fn flush_chunks(&mut self) {}
}

/// Receive-window cap of a relayed stream. The end points' own (end-to-end) yamux window
/// is what limits a circuit's throughput; the relay's windows only need to cover its
/// hops (their bandwidth × round trip, plus what the sender's socket buffer holds), and
/// each byte of them is memory the relay may have to hold when the far side is slower. So
/// a relayed stream's window grows, while the stream is window-bound, only to what
/// [`RELAY_WINDOW_RATE`] needs over the hop's least measured round trip, and never beyond
/// this (reached at a 62 ms hop). On loopback or a LAN the windows stay at the initial
/// 256 KiB (measured: the same throughput as with 1 MiB windows, 1.5 MiB less relay RSS
/// for one circuit). Through the harness's wan workload (two 50 ms hops, 96 MiB each way):
/// 35.0/33.3 MiB/s up/down, rust-libp2p's relay 35.9/33.2; with a 4 MiB cap 26.9/25.5,
/// with the former fixed 1 MiB about 8. At most (the window + [`RELAY_SEND_BUFFER`]) per
/// direction is buffered per circuit, and all circuits together hold at most the relay's
/// window budget (`limits.window_budget`) beyond their initial windows.
pub(crate) const RELAY_MAX_WINDOW: u32 = 16 * 1024 * 1024;

/// Send buffer of a relayed stream: only a hand-over between the bridge and the outgoing
/// connection, since what waits for the far side's window already waits in the incoming
/// stream's receive window (measured, one circuit moving 512 MiB each way on loopback:
/// relay RSS peak 14.3–14.5 MiB against 14.9–15.3 with the session's 256 KiB, the same
/// throughput and CPU; through two 50 ms hops the same throughput).
pub(crate) const RELAY_SEND_BUFFER: usize = 128 * 1024;

/// Rate a relayed stream's receive window is sized for: the window grows (when the stream
/// is window-bound) up to this × the hop's least measured round trip.
pub(crate) const RELAY_WINDOW_RATE: u32 = 256 * 1024 * 1024;

/// What a relayed stream may make the relay buffer: windows sized to the hop (see
/// [`RELAY_MAX_WINDOW`]), their growth taken from the relay-wide `budget`, and a small
/// send buffer (see [`RELAY_SEND_BUFFER`]).
pub(crate) fn relayed_stream_limits(budget: &WindowBudget) -> StreamLimits {
    StreamLimits {
        max_window: Some(RELAY_MAX_WINDOW),
        window_rate: Some(RELAY_WINDOW_RATE),
        max_send_buffer: Some(RELAY_SEND_BUFFER),
        window_budget: Some(budget.clone()),
    }
}

impl Side for Stream {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Chunk>> {
        Stream::poll_read_chunk(self, cx, max)
    }
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Chunk,
    ) -> Poll<io::Result<()>> {
        Stream::poll_write_chunk(self, cx, chunk)
    }
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
    fn flush_chunks(&mut self) {
        Stream::flush_chunks(self)
    }
}

/// Any `AsyncRead + AsyncWrite` as a [`Side`]: reads into a buffer of `buf_size` bytes (one
/// allocation per chunk read), writes with partial-write tracking.
pub(crate) struct Buffered<T> {
    io: T,
    buf_size: usize,
    /// Bytes of the chunk being written that are already written.
    written: usize,
}

impl<T> Buffered<T> {
    pub(crate) fn new(io: T, buf_size: usize) -> Self {
        Buffered {
            io,
            buf_size: buf_size.max(1),
            written: 0,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Side for Buffered<T> {
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Chunk>> {
        let mut buf = vec![0u8; max.min(self.buf_size)];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.truncate(n);
                Poll::Ready(Ok(Chunk::from(buf)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Chunk,
    ) -> Poll<io::Result<()>> {
        while self.written < chunk.len() {
            match Pin::new(&mut self.io).poll_write(cx, &chunk[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.written = 0;
        chunk.clear();
        Poll::Ready(Ok(()))
    }
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Chunks moved per direction per poll before yielding, so one busy circuit cannot keep a
/// runtime thread from everything else.
const CHUNKS_PER_POLL: usize = 64;

/// One direction of the bridge.
struct Dir<'a> {
    max: Option<u64>,
    /// Largest chunk read at once.
    chunk_max: usize,
    total: u64,
    /// A chunk read and not yet written on.
    pending: Chunk,
    /// The source ended (or, at the limit, was found to end): closing the destination.
    closing: bool,
    /// The limit was reached: checking whether the source ends right there.
    probing: bool,
    end: Option<DirEnd>,
    counters: &'a [&'a AtomicU64],
    tap: Option<(&'a Tap, Direction)>,
}

impl<'a> Dir<'a> {
    fn new(
        max: Option<u64>,
        chunk_max: usize,
        counters: &'a [&'a AtomicU64],
        tap: Option<(&'a Tap, Direction)>,
    ) -> Self {
        Dir {
            max,
            chunk_max,
            total: 0,
            pending: Chunk::default(),
            closing: false,
            probing: false,
            end: None,
            counters,
            tap,
        }
    }

    /// Moves chunks from `r` to `w` until something blocks, the direction ends, or the
    /// per-poll budget is spent (then `Ready(false)`: poll again soon). `Ready(true)` when it
    /// ended, `Pending` when blocked.
    fn poll<R: Side, W: Side>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<bool> {
        if self.end.is_some() {
            return Poll::Ready(true);
        }
        let before = self.total;
        let res = self.poll_moves(cx, r, w);
        if self.total != before {
            // One wake-up of the destination's driver for the whole run of chunks.
            w.flush_chunks();
        }
        res
    }

    fn poll_moves<R: Side, W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<bool> {
        for _ in 0..CHUNKS_PER_POLL {
            if self.closing {
                return match w.poll_close(cx) {
                    Poll::Ready(_) => {
                        self.end = Some(DirEnd::Eof);
                        Poll::Ready(true)
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            if !self.pending.is_empty() {
                let n = self.pending.len() as u64;
                if let Some((tap, dir)) = self.tap {
                    // A copy only when observed: the tap sees exactly what was written on.
                    let copy = self.pending.to_vec();
                    match w.poll_write_chunk(cx, &mut self.pending) {
                        Poll::Ready(Ok(())) => (tap.0)(dir, &copy),
                        Poll::Ready(Err(_)) => {
                            self.end = Some(DirEnd::Err);
                            return Poll::Ready(true);
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                } else {
                    match w.poll_write_chunk(cx, &mut self.pending) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => {
                            self.end = Some(DirEnd::Err);
                            return Poll::Ready(true);
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.total += n;
                for c in self.counters {
                    c.fetch_add(n, Ordering::Relaxed);
                }
                continue;
            }
            // Never read more than the limit lets through: the byte after it is never forwarded.
            let want = match self.max {
                Some(m) if self.total >= m => {
                    // The limit allows exactly m bytes; peek whether the source ends right
                    // here (a clean end) or has more (over the limit).
                    self.probing = true;
                    1
                }
                Some(m) => usize::try_from(m - self.total)
                    .unwrap_or(usize::MAX)
                    .min(self.chunk_max),
                None => self.chunk_max,
            };
            match r.poll_read_chunk(cx, want) {
                Poll::Ready(Ok(chunk)) if chunk.is_empty() => self.closing = true,
                Poll::Ready(Ok(_)) if self.probing => {
                    self.end = Some(DirEnd::Limit);
                    return Poll::Ready(true);
                }
                Poll::Ready(Ok(chunk)) => self.pending = chunk,
                Poll::Ready(Err(_)) if self.probing => {
                    self.end = Some(DirEnd::Limit);
                    return Poll::Ready(true);
                }
                Poll::Ready(Err(_)) => {
                    self.end = Some(DirEnd::Err);
                    return Poll::Ready(true);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(false)
    }
}

/// Bridges `src` and `dst` until both directions end or a limit is hit.
/// `relayed` counts every forwarded byte (for metrics). Streams are reset on a
/// limit or error (the caller drops them; dropping an unfinished stream resets it).
pub async fn bridge<A, B>(
    src: A,
    dst: B,
    limit: Limit,
    buf_size: usize,
    relayed: &AtomicU64,
) -> BridgeStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    bridge_tapped(src, dst, limit, buf_size, relayed, None).await
}

/// [`bridge`], showing every forwarded chunk to `tap` (if any) after it was written on.
pub async fn bridge_tapped<A, B>(
    src: A,
    dst: B,
    limit: Limit,
    buf_size: usize,
    relayed: &AtomicU64,
    tap: Option<&Tap>,
) -> BridgeStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    bridge_counted(
        Buffered::new(src, buf_size),
        Buffered::new(dst, buf_size),
        limit,
        buf_size,
        &[relayed],
        &[relayed],
        tap,
    )
    .await
}

/// [`bridge_tapped`] over [`Side`]s with separate counters per direction (each forwarded
/// byte is added to every counter of its direction): totals and metrics at once. One future
/// drives both directions (no task, lock or split per direction). `buf_size` caps the bytes
/// moved per chunk (our streams buffer chunks of at most 16 KiB, so the default moves them
/// whole).
pub(crate) async fn bridge_counted<A: Side, B: Side>(
    mut src: A,
    mut dst: B,
    limit: Limit,
    buf_size: usize,
    up_counters: &[&AtomicU64],
    down_counters: &[&AtomicU64],
    tap: Option<&Tap>,
) -> BridgeStats {
    let chunk_max = buf_size.max(1);
    let mut up = Dir::new(
        limit.data,
        chunk_max,
        up_counters,
        tap.map(|t| (t, Direction::SrcToDst)),
    );
    let mut down = Dir::new(
        limit.data,
        chunk_max,
        down_counters,
        tap.map(|t| (t, Direction::DstToSrc)),
    );
    let both = std::future::poll_fn(|cx| {
        let u = up.poll(cx, &mut src, &mut dst);
        let d = down.poll(cx, &mut dst, &mut src);
        // Finish when both are done, or as soon as one hits its limit or fails.
        let stopped = |e: Option<DirEnd>| matches!(e, Some(DirEnd::Limit | DirEnd::Err));
        if (up.end.is_some() && down.end.is_some()) || stopped(up.end) || stopped(down.end) {
            return Poll::Ready(());
        }
        if matches!(u, Poll::Ready(false)) || matches!(d, Poll::Ready(false)) {
            // Budget spent with work left: come back after others had their turn.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    });
    let deadline = limit.duration.unwrap_or(Duration::from_secs(u64::MAX / 4));
    let timed_out = tokio::time::timeout(deadline, both).await.is_err();
    let (up_res, down_res) = if timed_out {
        (None, None)
    } else {
        (up.end, down.end)
    };
    let end = if timed_out {
        BridgeEnd::DurationLimit
    } else if matches!(up_res, Some(DirEnd::Limit)) || matches!(down_res, Some(DirEnd::Limit)) {
        BridgeEnd::DataLimit
    } else if matches!(up_res, Some(DirEnd::Err)) || matches!(down_res, Some(DirEnd::Err)) {
        BridgeEnd::Error
    } else {
        BridgeEnd::Done
    };
    BridgeStats {
        src_to_dst: up.total,
        dst_to_src: down.total,
        end,
    }
}

impl From<io::Error> for BridgeEnd {
    fn from(_: io::Error) -> Self {
        BridgeEnd::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_until_both_close() {
        let (src_peer, src) = tokio::io::duplex(1024);
        let (dst_peer, dst) = tokio::io::duplex(1024);
        let counter = AtomicU64::new(0);
        let peers = async move {
            let (mut sp, mut dp) = (src_peer, dst_peer);
            sp.write_all(b"hello").await.unwrap();
            sp.shutdown().await.unwrap();
            let mut got = Vec::new();
            dp.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            dp.write_all(b"world!").await.unwrap();
            dp.shutdown().await.unwrap();
            let mut back = Vec::new();
            sp.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"world!");
        };
        let (stats, ()) = tokio::join!(bridge(src, dst, Limit::UNLIMITED, 8, &counter), peers);
        assert_eq!(stats.end, BridgeEnd::Done);
        assert_eq!((stats.src_to_dst, stats.dst_to_src), (5, 6));
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn data_limit_is_per_direction_and_never_exceeded() {
        let (mut src_peer, src) = tokio::io::duplex(1 << 16);
        let (mut dst_peer, dst) = tokio::io::duplex(1 << 16);
        let counter = AtomicU64::new(0);
        let limit = Limit {
            duration: None,
            data: Some(1000),
        };
        let peers = async move {
            // 900 bytes each way fit the per-direction limit even though 1800 in total do not.
            src_peer.write_all(&[1u8; 900]).await.unwrap();
            dst_peer.write_all(&[2u8; 900]).await.unwrap();
            let mut a = [0u8; 900];
            dst_peer.read_exact(&mut a).await.unwrap();
            src_peer.read_exact(&mut a).await.unwrap();
            // Now push past the limit in one direction.
            src_peer.write_all(&[3u8; 500]).await.unwrap();
            let mut rest = Vec::new();
            let _ = dst_peer.read_to_end(&mut rest).await;
            rest.len()
        };
        let (stats, forwarded_after) = tokio::join!(bridge(src, dst, limit, 64, &counter), peers);
        assert_eq!(stats.end, BridgeEnd::DataLimit);
        assert_eq!(stats.src_to_dst, 1000);
        assert_eq!(forwarded_after, 100);
    }

    #[tokio::test]
    async fn tap_sees_exactly_the_forwarded_bytes_per_direction() {
        let (mut src_peer, src) = tokio::io::duplex(1 << 16);
        let (mut dst_peer, dst) = tokio::io::duplex(1 << 16);
        let counter = AtomicU64::new(0);
        let seen = Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
        let s2 = seen.clone();
        let tap = Tap::new(move |dir, chunk| {
            let mut g = s2.lock().unwrap();
            match dir {
                Direction::SrcToDst => g.0.extend_from_slice(chunk),
                Direction::DstToSrc => g.1.extend_from_slice(chunk),
            }
        });
        let limit = Limit {
            duration: None,
            data: Some(300),
        };
        let peers = async move {
            dst_peer.write_all(b"back").await.unwrap();
            let mut b = [0u8; 4];
            src_peer.read_exact(&mut b).await.unwrap();
            // 500 bytes against a 300-byte limit: the tap must not see the 200 cut off.
            let up: Vec<u8> = (0..500u32).map(|i| i as u8).collect();
            src_peer.write_all(&up).await.unwrap();
            let mut got = Vec::new();
            let _ = dst_peer.read_to_end(&mut got).await;
            (up, got)
        };
        let (stats, (up, got)) = tokio::join!(
            bridge_tapped(src, dst, limit, 64, &counter, Some(&tap)),
            peers
        );
        assert_eq!(stats.end, BridgeEnd::DataLimit);
        let g = seen.lock().unwrap();
        assert_eq!(g.0, up[..300].to_vec());
        assert_eq!(g.0, got);
        assert_eq!(g.1, b"back".to_vec());
        assert_eq!(format!("{tap:?}"), "Tap(..)");
    }

    #[tokio::test(start_paused = true)]
    async fn duration_limit_ends_the_circuit() {
        let (_src_peer, src) = tokio::io::duplex(64);
        let (_dst_peer, dst) = tokio::io::duplex(64);
        let counter = AtomicU64::new(0);
        let limit = Limit {
            duration: Some(Duration::from_secs(120)),
            data: None,
        };
        let stats = bridge(src, dst, limit, 64, &counter).await;
        assert_eq!(stats.end, BridgeEnd::DurationLimit);
    }
}
