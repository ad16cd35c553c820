//! The Noise transport phase: length-framed ChaChaPoly messages after the handshake.
//!
//! The AEAD is done here on the Noise `Split()` keys rather than through snow's
//! `TransportState`: owning the cipher lets us pick the fastest ChaCha20-Poly1305 there is
//! (see [`super::aead`]: OpenSSL's libcrypto by default, `ring` otherwise; both well ahead of
//! the RustCrypto one snow resolves by default) and open and seal *in place* — decrypting
//! inside the input buffer and encrypting inside the output buffer — where snow's API copies
//! every message once more. The wire format is unchanged: `Noise_XX_25519_ChaChaPoly_SHA256`
//! transport messages, nonce = 32 zero bits || 64-bit little-endian counter, empty AD.

use std::ops::Range;

use bytes::{Buf, BytesMut};

use super::aead::{Aead, Implementation};
use super::{Error, LEN_PREFIX, MAX_PLAINTEXT, TAG_LEN};

/// A read that found less than this many bytes is a sign of an idle connection: the input
/// buffer is then released once empty (see [`Transport::release_if_idle`]), and the next
/// read is a small one (see [`Transport::read_space`]).
const IDLE_READ: usize = 4 * 1024;

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

/// One direction's cipher state: key and message counter.
struct CipherState {
    key: Aead,
    nonce: u64,
}

impl CipherState {
    fn new(imp: Implementation, key: &[u8; 32], seal: bool) -> CipherState {
        CipherState {
            key: Aead::with_implementation(imp, key, seal),
            nonce: 0,
        }
    }

    /// The counter for the next message, advancing it. Like snow, the last counter value
    /// (2^64 − 1) is reserved and never used.
    fn next_nonce(&mut self) -> Result<u64, Error> {
        if self.nonce == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        let n = self.nonce;
        self.nonce += 1;
        Ok(n)
    }
}

/// An established Noise session: encrypts outgoing bytes and decrypts incoming frames.
///
/// Sans-IO. Two ways to use it:
/// - simple: feed ciphertext with [`Transport::handle_input`], drain plaintext with
///   [`Transport::read_plaintext`], produce ciphertext with [`Transport::encrypt`];
/// - zero-copy (the connection driver's hot path): receive straight into
///   [`Transport::input_buf`] (+ [`Transport::note_input`]), decrypt in place with
///   [`Transport::decrypt_buffered`] and take the decrypted frames, as an owned buffer the
///   plaintext can be split out of, with [`Transport::take_decrypted`]; build outgoing
///   frames in place with [`Transport::begin_frame`] / [`Transport::seal_frame`] or
///   [`Transport::seal_in_place`].
pub struct Transport {
    send: CipherState,
    recv: CipherState,
    initiator: bool,
    /// Input buffer; `inbuf[start..]` is buffered ciphertext not yet decrypted, bytes before
    /// `start` are decrypted frames (handed out, or to be taken with
    /// [`Transport::take_decrypted`]); the spare capacity is room for the next read. It only
    /// grows to fit one partial frame plus one read.
    inbuf: BytesMut,
    start: usize,
    /// Length of `inbuf` before [`Transport::input_space`] zero-filled room after it.
    space_base: Option<usize>,
    /// Size of the latest read into the buffer; small reads mark an idle connection.
    last_input: usize,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("initiator", &self.initiator)
            .field("buffered_input", &self.buffered_input())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Wraps the keys of a finished handshake (`k1`, `k2` of Noise's `Split()`: the initiator
    /// sends with `k1`, the responder with `k2`); `leftover` is ciphertext that arrived with the
    /// last handshake message (pipelined transport frames).
    pub(crate) fn new(initiator: bool, k1: &[u8; 32], k2: &[u8; 32], leftover: Vec<u8>) -> Self {
        Transport::with_implementation(super::aead::implementation(), initiator, k1, k2, leftover)
    }

    /// Like [`Transport::new`] with a given AEAD implementation.
    pub(crate) fn with_implementation(
        imp: Implementation,
        initiator: bool,
        k1: &[u8; 32],
        k2: &[u8; 32],
        leftover: Vec<u8>,
    ) -> Self {
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        let last_input = leftover.len();
        Transport {
            send: CipherState::new(imp, send, true),
            recv: CipherState::new(imp, recv, false),
            initiator,
            inbuf: BytesMut::from(&leftover[..]),
            start: 0,
            space_base: None,
            last_input,
        }
    }

    /// Makes room for at least `want` more bytes after the buffered ones: drops decrypted
    /// frames from the front, then lets `BytesMut` reuse the allocation (moving at most one
    /// partial frame, ≤ 65537 bytes, to its front) or allocate a new one of at least
    /// `grow_to` bytes when pieces split off the old one are still alive.
    fn reserve_input(&mut self, want: usize, grow_to: usize) {
        if let Some(base) = self.space_base.take() {
            self.inbuf.truncate(base);
        }
        if self.inbuf.capacity() - self.inbuf.len() >= want {
            return;
        }
        if self.start > 0 {
            self.inbuf.advance(self.start);
            self.start = 0;
        }
        let len = self.inbuf.len();
        self.inbuf.reserve(want.max(grow_to.saturating_sub(len)));
    }

    /// Raw ciphertext bytes from the wire (any split), buffered until [`Transport::read_plaintext`]
    /// or [`Transport::decrypt_next`].
    ///
    /// Drain complete frames after each call: the buffer then holds at most one partial frame
    /// (≤ 65537 bytes) plus the latest input.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.reserve_input(data.len(), 0);
        self.inbuf.extend_from_slice(data);
        self.last_input = data.len();
    }

    /// The input buffer, with room for at least `busy_want` more bytes when the latest read
    /// was at least 4 KiB or a partial frame is buffered (4 KiB otherwise; a newly allocated
    /// buffer gets twice that, so reads can be larger and partial frames move less often).
    /// Append ciphertext to it straight from the socket (e.g. with
    /// `tokio_util::io::poll_read_buf`, which fills the spare capacity without zeroing it),
    /// then call [`Transport::note_input`]. A connection that only receives the odd small
    /// message never allocates a frame-sized buffer; one read that fills the small space
    /// switches it to large reads.
    pub fn input_buf(&mut self, busy_want: usize) -> &mut BytesMut {
        let want = if self.last_input >= IDLE_READ || self.buffered_input() > 0 {
            busy_want
        } else {
            IDLE_READ
        };
        self.reserve_input(want, want.saturating_mul(2));
        &mut self.inbuf
    }

    /// Records that `n` bytes were appended to [`Transport::input_buf`].
    pub fn note_input(&mut self, n: usize) {
        self.last_input = n;
    }

    /// Zero-filled free space of at least `want` bytes to receive ciphertext into directly;
    /// report how much was written with [`Transport::commit_input`]. (The driver uses
    /// [`Transport::input_buf`], which needs no zeroing.)
    pub fn input_space(&mut self, want: usize) -> &mut [u8] {
        self.reserve_input(want, want.saturating_mul(2));
        let base = self.inbuf.len();
        self.inbuf.resize(base + want, 0);
        self.space_base = Some(base);
        &mut self.inbuf[base..]
    }

    /// Whether the next read is best made small (the latest read was small and nothing is
    /// buffered): a caller can then read into a small buffer of its own (on the stack, say)
    /// and feed it with [`Transport::handle_input`], so a connection that only receives the odd
    /// small message allocates no more than that message.
    pub fn prefers_small_read(&self) -> bool {
        self.last_input < IDLE_READ && self.buffered_input() == 0
    }

    /// Marks `n` bytes written into [`Transport::input_space`] as received (clamped to the
    /// space there is).
    pub fn commit_input(&mut self, n: usize) {
        let Some(base) = self.space_base.take() else {
            return;
        };
        let n = n.min(self.inbuf.len() - base);
        self.inbuf.truncate(base + n);
        self.last_input = n;
    }

    /// Decrypts the next complete frame in place and returns its plaintext (possibly empty),
    /// or `None` when no complete frame is buffered.
    ///
    /// Errors on a frame that fails authentication (tampered, truncated below the tag,
    /// replayed) or on nonce exhaustion; the connection must then be dropped.
    pub fn decrypt_next(&mut self) -> Result<Option<&[u8]>, Error> {
        if let Some(base) = self.space_base.take() {
            self.inbuf.truncate(base);
        }
        let Some(len) = complete_frame_len(&self.inbuf[self.start..]) else {
            return Ok(None);
        };
        let body = self.start + LEN_PREFIX;
        // The frame is consumed whatever happens: after an error the connection is dead anyway.
        self.start = body + len;
        if len < TAG_LEN {
            // Shorter than the tag: cannot be authentic.
            return Err(Error::Decrypt);
        }
        let nonce = self.recv.next_nonce()?;
        let frame = &mut self.inbuf[body..body + len];
        match self.recv.key.open(nonce, frame) {
            Ok(plain) => Ok(Some(plain)),
            Err(_) => Err(Error::Decrypt),
        }
    }

    /// Decrypts in place every complete frame buffered and appends the positions of their
    /// plaintexts to `ranges`; get the bytes with [`Transport::plaintext`], or take them all
    /// with [`Transport::take_decrypted`]. The positions stay valid until the next call that
    /// feeds input, takes the decrypted frames or releases the buffer. Lets a driver decrypt
    /// without holding a lock, then hand the plaintext over under it.
    ///
    /// Errors like [`Transport::decrypt_next`]; ranges of the frames before the bad one are
    /// still appended.
    pub fn decrypt_buffered(&mut self, ranges: &mut Vec<Range<usize>>) -> Result<(), Error> {
        loop {
            let body = self.start + LEN_PREFIX;
            match self.decrypt_next()? {
                Some(p) => {
                    let n = p.len();
                    ranges.push(body..body + n);
                }
                None => return Ok(()),
            }
        }
    }

    /// Plaintext at a position reported by [`Transport::decrypt_buffered`] (empty if the
    /// position is stale and out of bounds).
    pub fn plaintext(&self, range: Range<usize>) -> &[u8] {
        self.inbuf.get(range).unwrap_or(&[])
    }

    /// Splits the decrypted frames off the front of the input buffer and returns them: the
    /// positions from [`Transport::decrypt_buffered`] index into the returned buffer, whose
    /// plaintext can then be split into owned pieces without copying. The allocation stays
    /// shared until every piece is dropped; meanwhile a read that needs room allocates anew.
    pub fn take_decrypted(&mut self) -> BytesMut {
        let taken = self.inbuf.split_to(self.start);
        self.start = 0;
        taken
    }

    /// Decrypts every complete frame buffered, appending the plaintext to `out`; returns the number of
    /// plaintext bytes appended (0 if no complete frame is buffered yet).
    ///
    /// Errors on a frame that fails authentication (tampered, truncated below the tag, replayed) or on
    /// nonce exhaustion; the connection must then be dropped. Plaintext of frames that preceded the bad
    /// one stays in `out`.
    pub fn read_plaintext(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let before = out.len();
        while let Some(plain) = self.decrypt_next()? {
            out.extend_from_slice(plain);
        }
        self.release_if_idle();
        Ok(out.len() - before)
    }

    /// Frees the input buffer when it holds nothing and the latest read was small, so an idle
    /// connection does not pin a frame-sized buffer (the next large read allocates it again).
    /// Returns whether it was freed.
    pub fn release_if_idle(&mut self) -> bool {
        if self.space_base.is_none() && self.start == self.inbuf.len() {
            self.start = 0;
            self.inbuf.clear();
            if self.last_input < IDLE_READ && self.inbuf.capacity() > 0 {
                self.inbuf = BytesMut::new();
                return true;
            }
        }
        false
    }

    /// Starts an outgoing frame at the end of `out`: appends the two length bytes (filled in by
    /// [`Transport::seal_frame`]) and returns the frame's start offset. Append at most
    /// [`MAX_PLAINTEXT`] plaintext bytes to `out`, then call `seal_frame(out, start)`.
    pub fn begin_frame(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        start
    }

    /// Encrypts in place the frame begun at `start` by [`Transport::begin_frame`] (its plaintext
    /// is everything in `out` after the length bytes), appends the tag and writes the length.
    ///
    /// Errors if the plaintext exceeds [`MAX_PLAINTEXT`] or on nonce exhaustion; `out` is then
    /// truncated back to `start`.
    pub fn seal_frame(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), Error> {
        if out.len() < start + LEN_PREFIX {
            out.truncate(start);
            return Err(Error::FrameTooLarge);
        }
        out.extend_from_slice(&[0u8; TAG_LEN]);
        let res = self.seal_in_place(&mut out[start..]);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    /// Encrypts one frame laid out in place as `length (2 bytes) || plaintext || tag space (16
    /// bytes)`: the plaintext is encrypted where it is, and the tag and the length are written
    /// into their slots. This lets a caller lay out several frames in one buffer (while holding
    /// a lock, say) and seal them afterwards, in order.
    ///
    /// Errors if the plaintext exceeds [`MAX_PLAINTEXT`] or the slice is shorter than the length
    /// and tag slots (nothing is changed then), or on nonce exhaustion.
    pub fn seal_in_place(&mut self, frame: &mut [u8]) -> Result<(), Error> {
        self.seal_in_place_parts(frame, std::iter::empty())
    }

    /// Like [`Transport::seal_in_place`], for a frame whose plaintext is partly elsewhere:
    /// each of `parts` — (offset into the plaintext, bytes), in order, not overlapping — is
    /// encrypted from its source into its place in `frame` (see [`Aead::seal_parts`]), so a
    /// payload buffered elsewhere is read once, by the cipher, rather than copied in first.
    ///
    /// Errors like `seal_in_place`, and with [`Error::Seal`] for parts out of place (the
    /// nonce is then used up: the connection must end).
    pub fn seal_in_place_parts<'p>(
        &mut self,
        frame: &mut [u8],
        parts: impl IntoIterator<Item = (usize, &'p [u8])>,
    ) -> Result<(), Error> {
        let Some(plain_len) = frame.len().checked_sub(LEN_PREFIX + TAG_LEN) else {
            return Err(Error::FrameTooLarge);
        };
        if plain_len > MAX_PLAINTEXT {
            return Err(Error::FrameTooLarge);
        }
        let nonce = self.send.next_nonce()?;
        let (len_slot, rest) = frame.split_at_mut(LEN_PREFIX);
        let (plain, tag_slot) = rest.split_at_mut(plain_len);
        let tag = self
            .send
            .key
            .seal_parts(nonce, plain, parts)
            .map_err(|_| Error::Seal)?;
        tag_slot.copy_from_slice(&tag);
        // plain_len + TAG_LEN ≤ MAX_FRAME = u16::MAX, checked above.
        len_slot.copy_from_slice(&((plain_len + TAG_LEN) as u16).to_be_bytes());
        Ok(())
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
            let start = self.begin_frame(out);
            out.extend_from_slice(chunk);
            self.seal_frame(out, start)?;
        }
        Ok(())
    }

    /// Number of ciphertext bytes buffered but not yet decrypted (a partial frame, normally).
    pub fn buffered_input(&self) -> usize {
        self.space_base.unwrap_or(self.inbuf.len()) - self.start
    }

    /// Whether we were the handshake initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// The ChaCha20-Poly1305 implementation this session seals and opens with.
    pub fn aead_implementation(&self) -> Implementation {
        self.send.key.implementation()
    }
}

#[cfg(test)]
impl Transport {
    /// Test access to the input buffer's allocation size.
    pub(crate) fn inbuf_capacity_for_test(&self) -> usize {
        self.inbuf.capacity()
    }

    /// Test access to the send counter, e.g. to exercise nonce exhaustion.
    pub(crate) fn set_send_nonce_for_test(&mut self, n: u64) {
        self.send.nonce = n;
    }
}
