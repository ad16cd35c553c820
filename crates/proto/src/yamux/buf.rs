//! A byte queue made of bounded chunks, for the per-stream receive and send buffers.
//!
//! A `VecDeque<u8>` grows by reallocating and copying everything buffered, and keeping its
//! capacity after a burst pins a window's worth of memory per idle stream. Chunks never
//! move once written, are freed as soon as they are read, and are handed over whole
//! ([`ChunkBuf::pop_chunk`] / [`ChunkBuf::push_chunk`]) so a relay moves bytes from one
//! stream to another without copying them.
//!
//! A chunk is either owned (at most [`CHUNK`] bytes, allocated here) or *shared*: a piece
//! of a connection's receive buffer, split off where the Noise frame was decrypted, so
//! received data reaches the stream without a copy (see [`Chunk::shared`]). A shared piece
//! keeps its whole receive buffer (≈ 128 KiB) alive until it is consumed, so a buffer
//! holds at most [`MAX_SHARED`] of them and copies the rest: a peer that interleaves
//! small unread pieces with other traffic pins at most `MAX_SHARED` receive buffers per
//! stream buffer, not one per piece.

use std::collections::VecDeque;
use std::ops::Deref;

use bytes::{Buf, BytesMut};

/// Largest chunk allocated by [`ChunkBuf::extend`].
pub const CHUNK: usize = 16 * 1024;

/// Smallest chunk allocated, so a run of small writes does not make a chunk each.
const MIN_CHUNK: usize = 512;

/// Most shared chunks one buffer holds; further shared chunks are copied.
pub const MAX_SHARED: usize = 8;

/// An owned run of bytes moved between stream buffers without copying.
#[derive(Debug, Default)]
pub struct Chunk {
    data: BytesMut,
    shared: bool,
}

impl Chunk {
    /// A chunk that owns its allocation (and nothing more).
    pub fn owned(data: impl Into<BytesMut>) -> Chunk {
        Chunk {
            data: data.into(),
            shared: false,
        }
    }

    /// A piece of a larger buffer (a connection's receive buffer): the allocation it keeps
    /// alive may be much larger than the piece, so buffers limit how many they hold.
    pub fn shared(data: BytesMut) -> Chunk {
        Chunk { data, shared: true }
    }

    /// Whether this is a piece of a larger buffer.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The bytes, as a `BytesMut`.
    pub fn into_bytes(self) -> BytesMut {
        self.data
    }

    /// Empties the chunk (its memory is released).
    pub fn clear(&mut self) {
        *self = Chunk::default();
    }

    /// Splits off the first `at` bytes (no copy; both halves keep the allocation alive).
    fn split_to(&mut self, at: usize) -> Chunk {
        Chunk {
            data: self.data.split_to(at),
            shared: self.shared,
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(v: Vec<u8>) -> Chunk {
        Chunk::owned(BytesMut::from(&v[..]))
    }
}

/// Where [`crate::yamux::Session::poll_transmit_bounded`] lays out outgoing frames: a `Vec<u8>` (everything
/// copied in), or a sink that keeps the payload as the stream buffers' own chunks (a driver
/// that encrypts each chunk straight into its Noise frame, so payload bytes are read once).
pub trait Transmit {
    /// Bytes laid out so far.
    fn len(&self) -> usize;
    /// Whether nothing is laid out.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends frame header bytes.
    fn put(&mut self, bytes: &[u8]);
    /// Appends the first `n` bytes of `buf` (at most what it holds), removing them from it.
    fn put_payload(&mut self, buf: &mut ChunkBuf, n: usize);
}

impl Transmit for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_payload(&mut self, buf: &mut ChunkBuf, n: usize) {
        buf.write_to(self, n);
    }
}

/// A [`ChunkBuf::read_with`] sink that copies the slices it is handed into `buf`, one after
/// another (the caller bounds their total by `buf.len()`).
pub(crate) fn fill(buf: &mut [u8]) -> impl FnMut(&[u8]) + '_ {
    let mut n = 0;
    move |s| {
        buf[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    }
}

/// A FIFO byte queue of chunks. `len` is what is buffered; memory held is that rounded up
/// to chunk sizes (plus the unread head of the front chunk), and for shared chunks the
/// buffers they belong to.
#[derive(Debug, Default)]
pub struct ChunkBuf {
    chunks: VecDeque<Chunk>,
    len: usize,
    /// How many of `chunks` are shared.
    shared: usize,
}

impl ChunkBuf {
    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `data`: into the spare room of the last chunk first (if it is
    /// owned), then into new chunks of at most [`CHUNK`] bytes.
    pub fn extend(&mut self, mut data: &[u8]) {
        self.len += data.len();
        if let Some(last) = self.chunks.back_mut().filter(|c| !c.shared) {
            let n = (last.data.capacity() - last.data.len()).min(data.len());
            last.data.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let cap = data.len().clamp(MIN_CHUNK, CHUNK);
            let n = cap.min(data.len());
            let mut c = BytesMut::with_capacity(cap);
            c.extend_from_slice(&data[..n]);
            self.chunks.push_back(Chunk::owned(c));
            data = &data[n..];
        }
    }

    /// Appends a whole chunk without copying it. Copied instead: small chunks that fit the
    /// last chunk's spare room (so many tiny chunks do not pile up), and shared chunks
    /// beyond [`MAX_SHARED`].
    pub fn push_chunk(&mut self, chunk: Chunk) {
        if chunk.is_empty() {
            return;
        }
        if chunk.shared && self.shared >= MAX_SHARED {
            self.extend(&chunk);
            return;
        }
        if let Some(last) = self.chunks.back() {
            if chunk.len() < MIN_CHUNK
                && !last.shared
                && last.data.capacity() - last.data.len() >= chunk.len()
            {
                self.extend(&chunk);
                return;
            }
        }
        self.len += chunk.len();
        self.shared += usize::from(chunk.shared);
        self.chunks.push_back(chunk);
    }

    /// Removes and returns up to `max` bytes from the front, without copying: the front
    /// chunk itself when it fits, else its first part split off. `None` when empty or
    /// `max == 0`.
    pub fn pop_chunk(&mut self, max: usize) -> Option<Chunk> {
        if max == 0 {
            return None;
        }
        let front = self.chunks.front_mut()?;
        let out = if front.len() <= max {
            let c = self.chunks.pop_front()?;
            self.shared -= usize::from(c.shared);
            c
        } else {
            // A shared front stays shared (the count is unchanged): the piece leaves.
            front.split_to(max)
        };
        self.len -= out.len();
        Some(out)
    }

    /// Copies up to `buf.len()` bytes out into `buf`, freeing chunks as they empty. Returns
    /// the number copied.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        self.read_with(buf.len(), fill(buf))
    }

    /// Moves `n` bytes (at most what is buffered) to the end of `out`.
    pub fn write_to(&mut self, out: &mut Vec<u8>, n: usize) {
        self.read_with(n, |s| out.extend_from_slice(s));
    }

    /// Hands up to `max` bytes from the front to `sink`, slice by slice in order, freeing
    /// chunks as they empty; returns the number handed over. For a destination that need not
    /// be initialised first (a `tokio::io::ReadBuf`'s spare room, say).
    pub fn read_with(&mut self, max: usize, mut sink: impl FnMut(&[u8])) -> usize {
        let mut left = max.min(self.len);
        let n = left;
        self.len -= n;
        while left > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let m = front.len().min(left);
            sink(&front[..m]);
            left -= m;
            self.consume_front(m);
        }
        n
    }

    fn consume_front(&mut self, m: usize) {
        let Some(front) = self.chunks.front_mut() else {
            return;
        };
        if m >= front.len() {
            let c = self.chunks.pop_front();
            self.shared -= c.map_or(0, |c| usize::from(c.shared));
        } else {
            front.data.advance(m);
        }
    }

    #[cfg(test)]
    fn shared_chunks(&self) -> usize {
        debug_assert_eq!(self.shared, self.chunks.iter().filter(|c| c.shared).count());
        self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Extend(Vec<u8>),
        Push(Vec<u8>),
        PushShared(Vec<u8>),
        Read(usize),
        Pop(usize),
        WriteTo(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40_000).prop_map(Op::Extend),
            prop::collection::vec(any::<u8>(), 0..2_000).prop_map(Op::Push),
            prop::collection::vec(any::<u8>(), 0..20_000).prop_map(Op::PushShared),
            (0usize..40_000).prop_map(Op::Read),
            (0usize..40_000).prop_map(Op::Pop),
            (0usize..40_000).prop_map(Op::WriteTo),
        ]
    }

    proptest! {
        /// Behaves exactly like a plain FIFO of bytes, whatever the mix of operations.
        #[test]
        fn behaves_like_a_fifo(ops in prop::collection::vec(op(), 1..60)) {
            let mut b = ChunkBuf::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Extend(d) => { b.extend(&d); model.extend(&d); }
                    Op::Push(d) => { model.extend(&d); b.push_chunk(Chunk::from(d)); }
                    Op::PushShared(d) => {
                        model.extend(&d);
                        // A piece of a larger buffer, as the receive path splits them off.
                        let mut big = BytesMut::from(&[0u8; 64][..]);
                        big.extend_from_slice(&d);
                        big.extend_from_slice(&[0u8; 64]);
                        let _ = big.split_to(64);
                        b.push_chunk(Chunk::shared(big.split_to(d.len())));
                    }
                    Op::Read(n) => {
                        let mut buf = vec![0u8; n];
                        let got = b.read(&mut buf);
                        let want: Vec<u8> = model.drain(..n.min(model.len())).collect();
                        prop_assert_eq!(&buf[..got], &want[..]);
                    }
                    Op::Pop(n) => {
                        let got = b.pop_chunk(n).unwrap_or_default();
                        prop_assert!(got.len() <= n);
                        prop_assert!(!got.is_empty() || n == 0 || model.is_empty());
                        let want: Vec<u8> = model.drain(..got.len()).collect();
                        prop_assert_eq!(&got[..], &want[..]);
                    }
                    Op::WriteTo(n) => {
                        let mut out = vec![1, 2];
                        b.write_to(&mut out, n);
                        let want: Vec<u8> = model.drain(..n.min(model.len())).collect();
                        prop_assert_eq!(&out[2..], &want[..]);
                    }
                }
                prop_assert_eq!(b.len(), model.len());
                prop_assert_eq!(b.is_empty(), model.is_empty());
                prop_assert!(b.shared_chunks() <= MAX_SHARED);
            }
        }
    }

    #[test]
    fn chunks_are_bounded_and_freed_when_read() {
        let mut b = ChunkBuf::default();
        b.extend(&[7u8; 100_000]);
        assert!(b.chunks.iter().all(|c| c.data.capacity() <= CHUNK));
        let mut sink = vec![0u8; 99_999];
        assert_eq!(b.read(&mut sink), 99_999);
        assert_eq!(b.chunks.len(), 1);
        assert_eq!(b.read(&mut sink), 1);
        assert!(b.chunks.is_empty());
    }

    #[test]
    fn untouched_front_chunk_is_handed_over_without_copy() {
        let mut b = ChunkBuf::default();
        b.extend(&[1u8; CHUNK]);
        b.extend(&[2u8; 10]);
        let c = b.pop_chunk(usize::MAX).unwrap();
        assert_eq!(c.len(), CHUNK);
        assert_eq!(c.data.capacity(), CHUNK);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn shared_chunks_beyond_the_cap_are_copied() {
        let mut b = ChunkBuf::default();
        let mut recv = BytesMut::from(&[9u8; 64 * 1024][..]);
        for _ in 0..MAX_SHARED + 4 {
            b.push_chunk(Chunk::shared(recv.split_to(4096)));
        }
        assert_eq!(b.len(), (MAX_SHARED + 4) * 4096);
        assert_eq!(b.shared_chunks(), MAX_SHARED);
        // Splitting a shared front keeps the count; popping it releases a slot.
        let piece = b.pop_chunk(100).unwrap();
        assert!(piece.is_shared());
        assert_eq!(b.shared_chunks(), MAX_SHARED);
        let rest = b.pop_chunk(usize::MAX).unwrap();
        assert_eq!(rest.len(), 4096 - 100);
        assert_eq!(b.shared_chunks(), MAX_SHARED - 1);
        b.push_chunk(Chunk::shared(recv.split_to(4096)));
        assert_eq!(b.shared_chunks(), MAX_SHARED);
    }

    #[test]
    fn partial_pop_does_not_copy() {
        let mut b = ChunkBuf::default();
        b.extend(&[3u8; 1000]);
        let ptr = b.chunks[0].as_ptr();
        let first = b.pop_chunk(10).unwrap();
        assert_eq!(first.as_ptr(), ptr);
        assert_eq!(&first[..], &[3u8; 10][..]);
        assert_eq!(b.chunks[0].as_ptr(), ptr.wrapping_add(10));
        assert_eq!(b.len(), 990);
    }
}
