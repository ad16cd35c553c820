//! A byte queue made of bounded chunks, for the per-stream receive and send buffers.
//!
//! A `VecDeque<u8>` grows by reallocating and copying everything buffered, and keeping its
//! capacity after a burst pins a window's worth of memory per idle stream. Chunks of at most
//! [`CHUNK`] bytes never move once written, are freed as soon as they are read, and can be
//! handed over whole ([`ChunkBuf::pop_chunk`] / [`ChunkBuf::push_chunk`]) so a relay can move
//! bytes from one stream to another without copying them.

use std::collections::VecDeque;

/// Largest chunk allocated by [`ChunkBuf::extend`].
pub const CHUNK: usize = 16 * 1024;

/// Smallest chunk allocated, so a run of small writes does not make a chunk each.
const MIN_CHUNK: usize = 512;

/// A FIFO byte queue of chunks. `len` is what is buffered; memory held is that rounded up
/// to chunk sizes (plus the unread head of the front chunk).
#[derive(Debug, Default)]
pub struct ChunkBuf {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already consumed.
    head: usize,
    len: usize,
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

    /// Appends a copy of `data`: into the spare room of the last chunk first, then into new
    /// chunks of at most [`CHUNK`] bytes.
    pub fn extend(&mut self, mut data: &[u8]) {
        self.len += data.len();
        if let Some(last) = self.chunks.back_mut() {
            let n = (last.capacity() - last.len()).min(data.len());
            last.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let cap = data.len().clamp(MIN_CHUNK, CHUNK);
            let n = cap.min(data.len());
            let mut c = Vec::with_capacity(cap);
            c.extend_from_slice(&data[..n]);
            self.chunks.push_back(c);
            data = &data[n..];
        }
    }

    /// Appends a whole chunk without copying it (small ones are copied into the last
    /// chunk's spare room instead, so many tiny chunks do not pile up).
    pub fn push_chunk(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        if let Some(last) = self.chunks.back() {
            if chunk.len() < MIN_CHUNK && last.capacity() - last.len() >= chunk.len() {
                self.extend(&chunk);
                return;
            }
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Removes and returns up to `max` bytes from the front: the front chunk itself when it
    /// is untouched and fits (no copy), else a copy of its first part. `None` when empty or
    /// `max == 0`.
    pub fn pop_chunk(&mut self, max: usize) -> Option<Vec<u8>> {
        if max == 0 {
            return None;
        }
        let front = self.chunks.front_mut()?;
        let avail = front.len() - self.head;
        let out = if self.head == 0 && avail <= max {
            self.chunks.pop_front()?
        } else {
            let n = avail.min(max);
            let c = front[self.head..self.head + n].to_vec();
            self.head += n;
            if self.head == front.len() {
                self.chunks.pop_front();
                self.head = 0;
            }
            c
        };
        self.len -= out.len();
        Some(out)
    }

    /// Copies up to `buf.len()` bytes out into `buf`, freeing chunks as they empty. Returns
    /// the number copied.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let m = (front.len() - self.head).min(buf.len() - n);
            buf[n..n + m].copy_from_slice(&front[self.head..self.head + m]);
            n += m;
            self.consume_front(m);
        }
        self.len -= n;
        n
    }

    /// Moves `n` bytes (at most what is buffered) to the end of `out`.
    pub fn write_to(&mut self, out: &mut Vec<u8>, n: usize) {
        let mut left = n.min(self.len);
        self.len -= left;
        while left > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let m = (front.len() - self.head).min(left);
            out.extend_from_slice(&front[self.head..self.head + m]);
            left -= m;
            self.consume_front(m);
        }
    }

    fn consume_front(&mut self, m: usize) {
        self.head += m;
        if self
            .chunks
            .front()
            .is_some_and(|front| self.head == front.len())
        {
            self.chunks.pop_front();
            self.head = 0;
        }
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
        Read(usize),
        Pop(usize),
        WriteTo(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40_000).prop_map(Op::Extend),
            prop::collection::vec(any::<u8>(), 0..2_000).prop_map(Op::Push),
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
                    Op::Push(d) => { model.extend(&d); b.push_chunk(d); }
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
                        prop_assert_eq!(got, want);
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
            }
        }
    }

    #[test]
    fn chunks_are_bounded_and_freed_when_read() {
        let mut b = ChunkBuf::default();
        b.extend(&[7u8; 100_000]);
        assert!(b.chunks.iter().all(|c| c.capacity() <= CHUNK));
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
        assert_eq!(c.capacity(), CHUNK);
        assert_eq!(b.len(), 10);
    }
}
