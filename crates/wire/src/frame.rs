//! Length-prefixed protobuf framing: `uvarint(len) || message`, one message per
//! frame, as used by relay v2 (hop/stop), identify and friends.
//!
//! Relay streams switch to raw circuit bytes right after the final STATUS
//! frame, so [`FrameDecoder`] never interprets bytes past the frame it returns:
//! [`FrameDecoder::take_remaining`] hands every byte after the last frame back
//! to the caller.

use crate::varint::{self, VarintError};
use thiserror::Error;

/// Maximum frame size used by relay v2 in go- and rust-libp2p.
pub const RELAY_MAX_MESSAGE_SIZE: usize = 4096;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The length prefix announces more than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length (saturated to `u64`).
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("bad length prefix: {0}")]
    BadVarint(#[from] VarintError),
    /// The frame body is not a valid protobuf message of the expected type.
    #[error("bad protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Appends `uvarint(len(msg)) || msg` to `out`.
pub fn encode<M: prost::Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(varint::encoded_len(len as u64) + len);
    varint::encode_usize(len, out);
    // Encoding into a Vec cannot run out of space (it grows), so the only error
    // prost can report here is impossible; fall back to nothing rather than panic.
    let _ = msg.encode(out);
}

/// Encodes `msg` as a single frame in a fresh vector.
pub fn encode_to_vec<M: prost::Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    out
}

/// Decodes a frame body (without its length prefix) as message `M`.
pub fn decode_message<M: prost::Message + Default>(frame: &[u8]) -> Result<M, FrameError> {
    Ok(M::decode(frame)?)
}

/// Parses one frame at the start of `buf` without copying.
///
/// Returns `Ok(Some((body, consumed)))` with `consumed` = prefix + body length,
/// `Ok(None)` when more bytes are needed, and an error as soon as the prefix is
/// known to announce more than `max` bytes (before any body arrives).
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((len, n)) = varint::decode_u64(buf)? else {
        return Ok(None);
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    // Bounded by `max` above, so the conversion and addition cannot overflow.
    let end = n + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[n..end], end)))
}

/// Incremental decoder of length-prefixed frames.
///
/// Feed received bytes with [`push`](Self::push), pull complete frames with
/// [`next_frame`](Self::next_frame). Frames larger than `max` are rejected as
/// soon as their prefix is seen; the decoder never reserves space for a body
/// before it has arrived, so its memory is what the caller pushed.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`; consumed bytes are dropped lazily so
    /// that pulling many small frames does not shift the buffer each time.
    pos: usize,
}

impl FrameDecoder {
    /// A decoder accepting frame bodies of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The configured maximum frame body size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Number of received bytes not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Returns the next complete frame body, `Ok(None)` if more bytes are needed.
    ///
    /// An error is sticky: the offending prefix stays in the buffer, so calling
    /// again returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match split_frame(&self.buf[self.pos..], self.max)? {
            Some((body, consumed)) => {
                let body = body.to_vec();
                self.pos += consumed;
                Ok(Some(body))
            }
            None => Ok(None),
        }
    }

    /// Pulls the next frame and decodes it as `M`.
    pub fn next_message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            Some(frame) => decode_message(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// To be called when the stream has ended: `Err(Truncated)` if a partial
    /// frame is buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffered_len() == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }

    /// Consumes the decoder, returning every byte after the last returned frame
    /// (for example the start of a relayed connection after a STATUS frame).
    pub fn take_remaining(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::relay::{hop_message, HopMessage, Peer};
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint::encode_usize(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reserve_keeps_type_zero_on_the_wire() {
        let msg = HopMessage {
            r#type: Some(hop_message::Type::Reserve as i32),
            ..Default::default()
        };
        // `08 00` = field 1 varint 0; the length prefix is 2.
        assert_eq!(encode_to_vec(&msg), [0x02, 0x08, 0x00]);
        let back: HopMessage = decode_message(&[0x08, 0x00]).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn message_then_raw_bytes() {
        let msg = HopMessage {
            r#type: Some(hop_message::Type::Connect as i32),
            peer: Some(Peer {
                id: Some(vec![1, 2, 3]),
                addrs: vec![],
            }),
            ..Default::default()
        };
        let mut wire = encode_to_vec(&msg);
        wire.extend_from_slice(b"\x13/multistream/1.0.0\n");
        let mut d = FrameDecoder::new(RELAY_MAX_MESSAGE_SIZE);
        d.push(&wire);
        let got: HopMessage = d.next_message().unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(d.take_remaining(), b"\x13/multistream/1.0.0\n");
    }

    #[test]
    fn too_large_rejected_from_prefix_alone() {
        let mut d = FrameDecoder::new(4096);
        d.push(&[0x81, 0x20]); // 4097
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: 4097,
                max: 4096
            })
        );
        // Sticky.
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::new(4096);
        d.push(&[0x80, 0x20]); // exactly 4096: waits for the body
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn bad_varint_and_protobuf() {
        let mut d = FrameDecoder::new(usize::MAX);
        d.push(&[0xff; 11]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::BadVarint(VarintError::Overflow))
        );
        let err = decode_message::<HopMessage>(&[0x0a, 0x05, 0x01]).unwrap_err();
        assert!(matches!(err, FrameError::Protobuf(_)));
    }

    #[test]
    fn empty_frame_and_finish() {
        let mut d = FrameDecoder::new(10);
        assert_eq!(d.finish(), Ok(()));
        d.push(&[0x00, 0x01]);
        assert_eq!(d.next_frame(), Ok(Some(vec![])));
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    proptest! {
        #[test]
        fn chunking_is_irrelevant(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..50),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for b in &bodies {
                wire.extend(frame(b));
            }
            // The tail is raw data after the last frame; it must start with a
            // byte that does not complete a frame, so give it a huge prefix.
            let mut raw = vec![0xff, 0xff, 0x7f];
            raw.extend_from_slice(&tail);
            wire.extend_from_slice(&raw);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();

            let mut d = FrameDecoder::new(1000);
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.push(&wire[w[0]..w[1]]);
                while got.len() < bodies.len() {
                    match d.next_frame() {
                        Ok(Some(f)) => got.push(f),
                        Ok(None) => break,
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    }
                }
            }
            prop_assert_eq!(&got, &bodies);
            prop_assert_eq!(d.take_remaining(), raw);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..600) {
            let mut d = FrameDecoder::new(max);
            d.push(&data);
            let mut total = 0;
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= max);
                        total += f.len();
                        let _ = decode_message::<HopMessage>(&f);
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len, .. }) => {
                        prop_assert!(len > max as u64);
                        break;
                    }
                    Err(_) => break,
                }
            }
            prop_assert!(total <= data.len());
        }

        #[test]
        fn oversize_rejected_before_body(len in 4097u64..u64::MAX, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = FrameDecoder::new(4096);
            let mut wire = Vec::new();
            varint::encode_u64(len, &mut wire);
            let prefix_len = wire.len();
            wire.extend_from_slice(&body);
            d.push(&wire[..prefix_len]);
            // Error with only the prefix buffered: nothing is reserved for the body.
            prop_assert_eq!(d.buffered_len(), prefix_len);
            prop_assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len, max: 4096 }));
        }
    }
}
