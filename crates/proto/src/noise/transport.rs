//! The Noise transport phase: length-framed ChaChaPoly messages after the handshake.

use super::{Error, LEN_PREFIX, MAX_PLAINTEXT, TAG_LEN};

/// Returns the length of the first frame in `buf` if the whole frame (prefix + body) is buffered.
///
/// The length is a u16, so a frame can never exceed [`super::MAX_FRAME`]; nothing is allocated from
/// the announced length — callers only ever slice bytes that are already there.
pub(crate) fn complete_frame_len(buf: &[u8]) -> Option<usize> {
    let [hi, lo, ref rest @ ..] = *buf else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    (rest.len() >= len).then_some(len)
}

/// An established Noise session: encrypts outgoing bytes and decrypts incoming frames.
///
/// Sans-IO: feed ciphertext with [`Transport::handle_input`], drain plaintext with
/// [`Transport::read_plaintext`], and produce ciphertext with [`Transport::encrypt`].
pub struct Transport {
    state: snow::TransportState,
    /// Buffered ciphertext; bytes before `pos` are already consumed. A read offset instead of
    /// draining after every frame avoids a memmove per frame; see `handle_input` for compaction.
    inbuf: Vec<u8>,
    pos: usize,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("initiator", &self.state.is_initiator())
            .field("buffered_input", &self.buffered_input())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Wraps a finished snow session; `leftover` is ciphertext that arrived with the last handshake
    /// message (pipelined transport frames).
    pub(crate) fn new(state: snow::TransportState, leftover: Vec<u8>) -> Self {
        Transport {
            state,
            inbuf: leftover,
            pos: 0,
        }
    }

    /// Raw ciphertext bytes from the wire (any split), buffered until [`Transport::read_plaintext`].
    ///
    /// Call `read_plaintext` after each call: it drains every complete frame, so the buffer then holds
    /// at most one partial frame (≤ 65537 bytes) plus the latest input.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.pos == self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.inbuf.len() + data.len() > self.inbuf.capacity() {
            // Reclaim the consumed prefix instead of growing the allocation: the memmove is of at
            // most one partial frame and only happens when we would otherwise reallocate.
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        self.inbuf.extend_from_slice(data);
    }

    /// Decrypts every complete frame buffered, appending the plaintext to `out`; returns the number of
    /// plaintext bytes appended (0 if no complete frame is buffered yet).
    ///
    /// Errors on a frame that fails authentication (tampered, truncated below the tag, replayed) or on
    /// nonce exhaustion; the connection must then be dropped. Plaintext of frames that preceded the bad
    /// one stays in `out`.
    pub fn read_plaintext(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let before = out.len();
        while let Some(len) = complete_frame_len(&self.inbuf[self.pos..]) {
            // A frame shorter than the tag cannot be authentic; checked here because the plaintext
            // length below would underflow.
            let Some(plain_len) = len.checked_sub(TAG_LEN) else {
                return Err(Error::Decrypt);
            };
            let body = self.pos + LEN_PREFIX;
            let frame = &self.inbuf[body..body + len];
            // Decrypt straight into `out`: no intermediate buffer per frame.
            let start = out.len();
            out.resize(start + plain_len, 0);
            match self.state.read_message(frame, &mut out[start..]) {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    return Err(e.into());
                }
            }
            self.pos = body + len;
        }
        if self.pos == self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        }
        Ok(out.len() - before)
    }

    /// Encrypts `plaintext` (any length, split into [`MAX_PLAINTEXT`] chunks), appending the framed
    /// ciphertext to `out`. An empty `plaintext` appends nothing.
    ///
    /// Errors only on nonce exhaustion (after 2^64−1 messages); frames already appended by this call
    /// used up nonces and must still be sent before closing.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let frames = plaintext.len().div_ceil(MAX_PLAINTEXT);
        out.reserve(plaintext.len() + frames * (LEN_PREFIX + TAG_LEN));
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            let start = out.len();
            let body = start + LEN_PREFIX;
            out.resize(body + chunk.len() + TAG_LEN, 0);
            let n = match self.state.write_message(chunk, &mut out[body..]) {
                Ok(n) => n,
                Err(e) => {
                    out.truncate(start);
                    return Err(e.into());
                }
            };
            // n = chunk.len() + TAG_LEN ≤ MAX_FRAME by construction of the chunks.
            let Ok(len) = u16::try_from(n) else {
                out.truncate(start);
                return Err(Error::FrameTooLarge);
            };
            out.truncate(body + n);
            out[start..body].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// Number of ciphertext bytes buffered but not yet decrypted (a partial frame, normally).
    pub fn buffered_input(&self) -> usize {
        self.inbuf.len() - self.pos
    }

    /// Whether we were the handshake initiator.
    pub fn is_initiator(&self) -> bool {
        self.state.is_initiator()
    }
}

#[cfg(test)]
impl Transport {
    /// Test access to the raw session, e.g. to forge frames a peer could legally send.
    pub(crate) fn state_mut_for_test(&mut self) -> &mut snow::TransportState {
        &mut self.state
    }

    /// Test access to the input buffer's allocation size.
    pub(crate) fn inbuf_capacity_for_test(&self) -> usize {
        self.inbuf.capacity()
    }
}
