//! Signed envelopes (libp2p RFC 0002).
//!
//! An envelope carries a payload signed by the key embedded in it. The
//! signature covers
//! `uvarint(len(domain)) || domain || uvarint(len(type)) || type || uvarint(len(payload)) || payload`;
//! the domain string is never sent, so a signature made for one purpose (e.g. a
//! relay voucher) cannot be replayed as another (e.g. a peer record).

use libp2p_identity::{Keypair, PublicKey};
use prost::Message;
use thiserror::Error;

use crate::pb;
use crate::varint;

/// Largest marshalled envelope accepted by [`SignedEnvelope::from_bytes`].
/// Peer records with dozens of addresses stay well below this.
pub const MAX_ENVELOPE_SIZE: usize = 64 * 1024;

/// Why an envelope could not be sealed, parsed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// The envelope is larger than [`MAX_ENVELOPE_SIZE`].
    #[error("envelope of {0} bytes is too large")]
    TooLarge(usize),
    /// The bytes are not an `Envelope` protobuf.
    #[error("malformed envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The envelope has no `public_key`.
    #[error("envelope has no public key")]
    MissingPublicKey,
    /// The embedded public key cannot be decoded.
    #[error("bad public key in envelope: {0}")]
    BadPublicKey(String),
    /// The signature does not verify for the expected domain.
    #[error("envelope signature is invalid")]
    BadSignature,
    /// The payload type is not the expected one.
    #[error("unexpected payload type {0:02x?}")]
    WrongPayloadType(Vec<u8>),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A signed envelope (not necessarily verified: see [`SignedEnvelope::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    /// The signer's public key.
    pub public_key: PublicKey,
    /// Payload type (a multicodec written as raw bytes, e.g. `03 01`).
    pub payload_type: Vec<u8>,
    /// The signed payload.
    pub payload: Vec<u8>,
    /// Signature over [`signing_input`].
    pub signature: Vec<u8>,
}

/// The bytes an envelope signature covers.
pub fn signing_input(domain: &str, payload_type: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + payload_type.len() + payload.len() + 3 * varint::MAX_LEN);
    for part in [domain.as_bytes(), payload_type, payload] {
        varint::encode_usize(part.len(), &mut out);
        out.extend_from_slice(part);
    }
    out
}

impl SignedEnvelope {
    /// Signs `payload` with `keypair` under `domain`.
    pub fn seal(
        keypair: &Keypair,
        domain: &str,
        payload_type: &[u8],
        payload: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let signature = keypair
            .sign(&signing_input(domain, payload_type, &payload))
            .map_err(|e| EnvelopeError::Signing(e.to_string()))?;
        Ok(SignedEnvelope {
            public_key: keypair.public(),
            payload_type: payload_type.to_vec(),
            payload,
            signature,
        })
    }

    /// Marshals the envelope (protobuf `Envelope`).
    pub fn to_bytes(&self) -> Vec<u8> {
        // The embedded key is the same PublicKey message libp2p-identity
        // encodes; decode it into our struct so prost nests it as field 1.
        let key_bytes = self.public_key.encode_protobuf();
        let public_key = pb::keys::PublicKey::decode(key_bytes.as_slice()).ok();
        pb::record::Envelope {
            public_key,
            payload_type: self.payload_type.clone(),
            payload: self.payload.clone(),
            signature: self.signature.clone(),
        }
        .encode_to_vec()
    }

    /// Parses a marshalled envelope **without** checking its signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_SIZE {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let env = pb::record::Envelope::decode(bytes)?;
        let key = env.public_key.ok_or(EnvelopeError::MissingPublicKey)?;
        let public_key = PublicKey::try_decode_protobuf(&key.encode_to_vec())
            .map_err(|e| EnvelopeError::BadPublicKey(e.to_string()))?;
        Ok(SignedEnvelope {
            public_key,
            payload_type: env.payload_type,
            payload: env.payload,
            signature: env.signature,
        })
    }

    /// Checks the signature for `domain`.
    pub fn verify(&self, domain: &str) -> Result<(), EnvelopeError> {
        let input = signing_input(domain, &self.payload_type, &self.payload);
        if self.public_key.verify(&input, &self.signature) {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature)
        }
    }

    /// Parses `bytes` and verifies the signature for `expected_domain`.
    ///
    /// Returns the signer's key, the payload type and the payload.
    pub fn open(
        bytes: &[u8],
        expected_domain: &str,
    ) -> Result<(PublicKey, Vec<u8>, Vec<u8>), EnvelopeError> {
        let env = Self::from_bytes(bytes)?;
        env.verify(expected_domain)?;
        Ok((env.public_key, env.payload_type, env.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signing_input_layout() {
        assert_eq!(
            signing_input("ab", &[0x03, 0x02], b"xyz"),
            [2, b'a', b'b', 2, 0x03, 0x02, 3, b'x', b'y', b'z']
        );
    }

    #[test]
    fn seal_open_roundtrip_all_key_types() {
        for k in [
            Keypair::generate_ed25519(),
            Keypair::generate_secp256k1(),
            Keypair::generate_ecdsa(),
        ] {
            let env =
                SignedEnvelope::seal(&k, "test-domain", &[0x03, 0x01], b"hello".to_vec()).unwrap();
            let bytes = env.to_bytes();
            assert_eq!(SignedEnvelope::from_bytes(&bytes).unwrap(), env);
            let (pk, ty, payload) = SignedEnvelope::open(&bytes, "test-domain").unwrap();
            assert_eq!(pk, k.public());
            assert_eq!(ty, [0x03, 0x01]);
            assert_eq!(payload, b"hello");
            // Domain separation.
            assert_eq!(
                SignedEnvelope::open(&bytes, "other-domain"),
                Err(EnvelopeError::BadSignature)
            );
        }
    }

    #[test]
    fn tampering_detected() {
        let k = Keypair::generate_ed25519();
        let env = SignedEnvelope::seal(&k, "d", &[1], b"payload".to_vec()).unwrap();
        let mut t = env.clone();
        t.payload[0] ^= 1;
        assert_eq!(t.verify("d"), Err(EnvelopeError::BadSignature));
        let mut t = env.clone();
        t.payload_type = vec![2];
        assert_eq!(t.verify("d"), Err(EnvelopeError::BadSignature));
        let mut t = env.clone();
        t.public_key = Keypair::generate_ed25519().public();
        assert_eq!(
            SignedEnvelope::open(&t.to_bytes(), "d"),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn wire_layout_matches_schema() {
        let k = Keypair::generate_ed25519();
        let env = SignedEnvelope::seal(&k, "d", &[0x03, 0x02], vec![0xaa]).unwrap();
        let bytes = env.to_bytes();
        // Field 1 (public key, 36 bytes: 08 01 12 20 <32>), then fields 2, 3, 5.
        assert_eq!(&bytes[..6], &[0x0a, 0x24, 0x08, 0x01, 0x12, 0x20]);
        assert_eq!(&bytes[38..45], &[0x12, 0x02, 0x03, 0x02, 0x1a, 0x01, 0xaa]);
        assert_eq!(&bytes[45..47], &[0x2a, 0x40]);
        assert_eq!(bytes.len(), 47 + 64);
    }

    #[test]
    fn missing_key_and_oversize() {
        let bytes = pb::record::Envelope {
            public_key: None,
            payload_type: vec![1],
            payload: vec![2],
            signature: vec![3],
        }
        .encode_to_vec();
        assert_eq!(
            SignedEnvelope::from_bytes(&bytes),
            Err(EnvelopeError::MissingPublicKey)
        );
        let big = vec![0u8; MAX_ENVELOPE_SIZE + 1];
        assert_eq!(
            SignedEnvelope::from_bytes(&big),
            Err(EnvelopeError::TooLarge(MAX_ENVELOPE_SIZE + 1))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(env) = SignedEnvelope::from_bytes(&data) {
                // Random bytes essentially never carry a valid signature.
                prop_assert!(env.verify("libp2p-relay-rsvp").is_err());
            }
        }

        #[test]
        fn mutated_envelope_never_panics(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let k = Keypair::generate_ed25519();
            let mut bytes = SignedEnvelope::seal(&k, "d", &[3, 2], b"payload".to_vec()).unwrap().to_bytes();
            let i = idx.index(bytes.len());
            let changed = bytes[i] != byte;
            bytes[i] = byte;
            let res = SignedEnvelope::open(&bytes, "d");
            if changed {
                // Any change either breaks parsing or the signature, except one
                // that keeps the decoded content identical (not possible for a
                // one-byte change in a canonical encoding with fixed lengths).
                prop_assert!(res.is_err());
            } else {
                prop_assert!(res.is_ok());
            }
        }
    }
}
