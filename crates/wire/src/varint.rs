//! Unsigned LEB128 varints as used by multiformats (`unsigned-varint` spec).
//!
//! Every length prefix on the wire (multistream messages, relay/identify frames,
//! multiaddr codes, envelope signing input) uses this encoding. The decoder is
//! strict: at most [`MAX_LEN`] bytes, no overflow of `u64`, and minimal encoding
//! only (a trailing `0x00` continuation byte is rejected), matching the
//! multiformats spec and the `unsigned-varint` crate used by rust-libp2p.

use thiserror::Error;

/// Maximum encoded length of a `u64` varint (ceil(64 / 7) = 10 bytes).
pub const MAX_LEN: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VarintError {
    /// The value does not fit in a `u64` (more than 10 bytes, or bits beyond 64).
    #[error("varint overflows u64")]
    Overflow,
    /// The value was encoded with superfluous trailing zero groups.
    #[error("varint is not minimally encoded")]
    NotMinimal,
}

/// Appends the varint encoding of `v` to `out`.
pub fn encode_u64(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        // Low 7 bits with the continuation flag; truncation is intended.
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the varint encoding of a `usize` (a length) to `out`.
pub fn encode_usize(v: usize, out: &mut Vec<u8>) {
    encode_u64(v as u64, out);
}

/// Number of bytes [`encode_u64`] writes for `v`.
pub fn encoded_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Decodes a varint from the start of `buf`.
///
/// Returns `Ok(Some((value, bytes_consumed)))`, or `Ok(None)` when `buf` ends
/// before the varint does (the caller should wait for more bytes). At most
/// [`MAX_LEN`] bytes are ever inspected, so a stream of `0xff` bytes fails fast.
pub fn decode_u64(buf: &[u8]) -> Result<Option<(u64, usize)>, VarintError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_LEN) {
        let group = u64::from(b & 0x7f);
        if i == MAX_LEN - 1 && group > 1 {
            // The 10th byte may only carry bit 63.
            return Err(VarintError::Overflow);
        }
        value |= group << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(VarintError::NotMinimal);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_LEN {
        Err(VarintError::Overflow)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_u64(v, &mut out);
        out
    }

    #[test]
    fn known_answers() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        // Multiaddr codes from basics.md §6.
        assert_eq!(enc(421), [0xa5, 0x03]);
        assert_eq!(enc(290), [0xa2, 0x02]);
        assert_eq!(enc(273), [0x91, 0x02]);
        assert_eq!(enc(477), [0xdd, 0x03]);
        assert_eq!(enc(461), [0xcd, 0x03]);
        assert_eq!(enc(16383), [0xff, 0x7f]);
        assert_eq!(enc(u64::MAX).len(), 10);
        assert_eq!(*enc(u64::MAX).last().unwrap(), 0x01);
    }

    #[test]
    fn decode_edge_cases() {
        assert_eq!(decode_u64(&[]), Ok(None));
        assert_eq!(decode_u64(&[0x80]), Ok(None));
        assert_eq!(decode_u64(&[0xac, 0x02, 0xff]), Ok(Some((300, 2))));
        assert_eq!(decode_u64(&[0x80, 0x00]), Err(VarintError::NotMinimal));
        assert_eq!(
            decode_u64(&[0x81, 0x80, 0x00]),
            Err(VarintError::NotMinimal)
        );
        assert_eq!(decode_u64(&[0xff; 10]), Err(VarintError::Overflow));
        assert_eq!(decode_u64(&[0xff; 11]), Err(VarintError::Overflow));
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(decode_u64(&max), Ok(Some((u64::MAX, 10))));
        max[9] = 0x02;
        assert_eq!(decode_u64(&max), Err(VarintError::Overflow));
        // Nine continuation bytes: still undecided, may complete with the 10th.
        assert_eq!(decode_u64(&[0xff; 9]), Ok(None));
    }

    proptest! {
        #[test]
        fn roundtrip(v in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = enc(v);
            prop_assert_eq!(buf.len(), encoded_len(v));
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(decode_u64(&buf), Ok(Some((v, n))));
            // Every strict prefix asks for more bytes.
            for cut in 0..n {
                prop_assert_eq!(decode_u64(&buf[..cut]), Ok(None));
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..16)) {
            match decode_u64(&buf) {
                Ok(Some((v, n))) => {
                    prop_assert!(n <= MAX_LEN);
                    // Strict decoding means re-encoding gives the same bytes.
                    prop_assert_eq!(enc(v), buf[..n].to_vec());
                }
                Ok(None) => prop_assert!(buf.len() < MAX_LEN),
                Err(_) => {}
            }
        }
    }
}
