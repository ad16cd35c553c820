//! The circuit bridge: copies bytes between the source's hop stream and the
//! target's stop stream, both ways, under the circuit's limit.
//!
//! One fixed buffer per direction, no allocation per chunk; backpressure comes
//! from the streams' yamux windows (a write that cannot proceed stops the read).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use circuit_proto::relay::Limit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

enum DirEnd {
    Eof,
    Limit,
    Err,
}

async fn copy_dir<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    max: Option<u64>,
    buf_size: usize,
    counters: &[&AtomicU64],
    dir_total: &AtomicU64,
    tap: Option<(&Tap, Direction)>,
) -> DirEnd {
    let mut buf = vec![0u8; buf_size];
    let mut total = 0u64;
    loop {
        dir_total.store(total, Ordering::Relaxed);
        // Never read more than the limit lets through: the byte after it is never forwarded.
        let want = match max {
            Some(m) if total >= m => return DirEnd::Limit,
            Some(m) => ((m - total) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = match r.read(&mut buf[..want]).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return DirEnd::Eof;
            }
            Ok(n) => n,
            Err(_) => return DirEnd::Err,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            return DirEnd::Err;
        }
        if let Some((tap, dir)) = tap {
            (tap.0)(dir, &buf[..n]);
        }
        total += n as u64;
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(m) = max {
            if total >= m {
                // The limit allows exactly m bytes; anything more would be over it.
                // Peek whether more is coming: if the source ends right here, it's a clean end.
                let mut probe = [0u8; 1];
                dir_total.store(total, Ordering::Relaxed);
                return match r.read(&mut probe).await {
                    Ok(0) => {
                        let _ = w.shutdown().await;
                        DirEnd::Eof
                    }
                    _ => DirEnd::Limit,
                };
            }
        }
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
    bridge_counted(src, dst, limit, buf_size, &[relayed], &[relayed], tap).await
}

/// [`bridge_tapped`] with separate counters per direction (each forwarded byte
/// is added to every counter of its direction): totals and metrics at once.
pub(crate) async fn bridge_counted<A, B>(
    src: A,
    dst: B,
    limit: Limit,
    buf_size: usize,
    up_counters: &[&AtomicU64],
    down_counters: &[&AtomicU64],
    tap: Option<&Tap>,
) -> BridgeStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sr, mut sw) = tokio::io::split(src);
    let (mut dr, mut dw) = tokio::io::split(dst);
    let (up_total, down_total) = (AtomicU64::new(0), AtomicU64::new(0));
    let up_tap = tap.map(|t| (t, Direction::SrcToDst));
    let down_tap = tap.map(|t| (t, Direction::DstToSrc));
    let up = copy_dir(
        &mut sr,
        &mut dw,
        limit.data,
        buf_size,
        up_counters,
        &up_total,
        up_tap,
    );
    let down = copy_dir(
        &mut dr,
        &mut sw,
        limit.data,
        buf_size,
        down_counters,
        &down_total,
        down_tap,
    );
    tokio::pin!(up);
    tokio::pin!(down);
    let both = async {
        // Finish when both are done, or as soon as one hits its limit or fails.
        let mut up_res = None;
        let mut down_res = None;
        loop {
            tokio::select! {
                r = &mut up, if up_res.is_none() => {
                    let stop = !matches!(r, DirEnd::Eof);
                    up_res = Some(r);
                    if stop { break; }
                }
                r = &mut down, if down_res.is_none() => {
                    let stop = !matches!(r, DirEnd::Eof);
                    down_res = Some(r);
                    if stop { break; }
                }
            }
            if up_res.is_some() && down_res.is_some() {
                break;
            }
        }
        (up_res, down_res)
    };
    let deadline = limit.duration.unwrap_or(Duration::from_secs(u64::MAX / 4));
    let (up_res, down_res, timed_out) = match tokio::time::timeout(deadline, both).await {
        Ok((u, d)) => (u, d, false),
        Err(_) => (None, None, true),
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
        src_to_dst: up_total.load(Ordering::Relaxed),
        dst_to_src: down_total.load(Ordering::Relaxed),
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
