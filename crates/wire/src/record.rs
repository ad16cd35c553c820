//! Signed records carried in envelopes: peer records (RFC 0003, identify
//! field 8) and relay v2 reservation vouchers.

use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;
use prost::Message;
use thiserror::Error;

use crate::envelope::{EnvelopeError, SignedEnvelope};
use crate::keys::{peer_id_from_bytes, PeerIdError};
use crate::pb;

/// Envelope domain of peer records.
pub const PEER_RECORD_DOMAIN: &str = "libp2p-peer-record";
/// Payload type of peer records: multicodec 0x0301 as two raw bytes.
pub const PEER_RECORD_PAYLOAD_TYPE: [u8; 2] = [0x03, 0x01];
/// Envelope domain of relay reservation vouchers.
pub const VOUCHER_DOMAIN: &str = "libp2p-relay-rsvp";
/// Payload type of vouchers: multicodec 0x0302 as two raw bytes (not a varint).
pub const VOUCHER_PAYLOAD_TYPE: [u8; 2] = [0x03, 0x02];

/// Why a record could not be signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The envelope itself is bad (parse or signature).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The envelope's payload type is not the record's.
    #[error("unexpected payload type {0:02x?}")]
    WrongPayloadType(Vec<u8>),
    /// The payload is not the record's protobuf.
    #[error("malformed record: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A required field is absent.
    #[error("record lacks field `{0}`")]
    MissingField(&'static str),
    /// A peer id field is invalid.
    #[error("bad peer id in record: {0}")]
    BadPeerId(#[from] PeerIdError),
    /// The signing key does not belong to the peer the record is about.
    #[error("record signed by {signer}, expected {expected}")]
    WrongSigner {
        /// Peer id of the key that signed.
        signer: Box<PeerId>,
        /// Peer id the record names (or the caller expects).
        expected: Box<PeerId>,
    },
    /// The voucher is for another peer.
    #[error("voucher is for {actual}, expected {expected}")]
    WrongPeer {
        /// Peer id in the voucher.
        actual: Box<PeerId>,
        /// Peer id the caller expects.
        expected: Box<PeerId>,
    },
}

/// A peer record: the addresses a peer claims, signed by that peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer the record is about (and signed by).
    pub peer_id: PeerId,
    /// Sequence number; a higher one supersedes a lower one.
    pub seq: u64,
    /// The peer's addresses.
    pub addrs: Vec<Multiaddr>,
}

impl PeerRecord {
    /// Encodes the record payload (protobuf `PeerRecord`).
    pub fn to_payload(&self) -> Vec<u8> {
        pb::record::PeerRecord {
            peer_id: self.peer_id.to_bytes(),
            seq: self.seq,
            addresses: self
                .addrs
                .iter()
                .map(|a| pb::record::peer_record::AddressInfo {
                    multiaddr: a.to_vec(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Signs the record into marshalled envelope bytes. `keypair` must be the
    /// key of `peer_id`.
    pub fn sign(&self, keypair: &Keypair) -> Result<Vec<u8>, RecordError> {
        let signer = keypair.public().to_peer_id();
        if signer != self.peer_id {
            return Err(RecordError::WrongSigner {
                signer: Box::new(signer),
                expected: Box::new(self.peer_id),
            });
        }
        let env = SignedEnvelope::seal(
            keypair,
            PEER_RECORD_DOMAIN,
            &PEER_RECORD_PAYLOAD_TYPE,
            self.to_payload(),
        )?;
        Ok(env.to_bytes())
    }

    /// Opens marshalled envelope bytes holding a peer record, checking the
    /// signature, payload type and that the signer is the record's peer.
    ///
    /// Addresses that do not parse are skipped (as go-libp2p does) rather than
    /// failing the whole record.
    pub fn verify(bytes: &[u8]) -> Result<PeerRecord, RecordError> {
        let (key, ty, payload) = SignedEnvelope::open(bytes, PEER_RECORD_DOMAIN)?;
        if ty != PEER_RECORD_PAYLOAD_TYPE {
            return Err(RecordError::WrongPayloadType(ty));
        }
        let msg = pb::record::PeerRecord::decode(payload.as_slice())?;
        let peer_id = peer_id_from_bytes(&msg.peer_id)?;
        let signer = key.to_peer_id();
        if signer != peer_id {
            return Err(RecordError::WrongSigner {
                signer: Box::new(signer),
                expected: Box::new(peer_id),
            });
        }
        let addrs = msg
            .addresses
            .into_iter()
            .filter_map(|a| Multiaddr::try_from(a.multiaddr).ok())
            .collect();
        Ok(PeerRecord {
            peer_id,
            seq: msg.seq,
            addrs,
        })
    }
}

/// A relay v2 reservation voucher: the relay vouches that `peer` holds a
/// reservation until `expiration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voucher {
    /// The relay (and signer).
    pub relay: PeerId,
    /// The peer holding the reservation.
    pub peer: PeerId,
    /// Expiry, UNIX seconds.
    pub expiration: u64,
}

impl Voucher {
    /// Canonical payload: fields 1, 2, 3 in order, nothing else.
    pub fn to_payload(&self) -> Vec<u8> {
        pb::relay::Voucher {
            relay: Some(self.relay.to_bytes()),
            peer: Some(self.peer.to_bytes()),
            expiration: Some(self.expiration),
        }
        .encode_to_vec()
    }

    /// Signs the voucher into marshalled envelope bytes (for
    /// `Reservation.voucher`). `keypair` must be the relay's key.
    pub fn sign(&self, keypair: &Keypair) -> Result<Vec<u8>, RecordError> {
        let signer = keypair.public().to_peer_id();
        if signer != self.relay {
            return Err(RecordError::WrongSigner {
                signer: Box::new(signer),
                expected: Box::new(self.relay),
            });
        }
        let env = SignedEnvelope::seal(
            keypair,
            VOUCHER_DOMAIN,
            &VOUCHER_PAYLOAD_TYPE,
            self.to_payload(),
        )?;
        Ok(env.to_bytes())
    }

    /// Opens a voucher envelope: the signature must verify, the signer must be
    /// `expected_relay` and equal the voucher's relay, and the voucher's peer
    /// must be `expected_peer`. Expiry is left to the caller (no clock here).
    pub fn verify(
        bytes: &[u8],
        expected_relay: &PeerId,
        expected_peer: &PeerId,
    ) -> Result<Voucher, RecordError> {
        let (key, ty, payload) = SignedEnvelope::open(bytes, VOUCHER_DOMAIN)?;
        if ty != VOUCHER_PAYLOAD_TYPE {
            return Err(RecordError::WrongPayloadType(ty));
        }
        let signer = key.to_peer_id();
        if signer != *expected_relay {
            return Err(RecordError::WrongSigner {
                signer: Box::new(signer),
                expected: Box::new(*expected_relay),
            });
        }
        let msg = pb::relay::Voucher::decode(payload.as_slice())?;
        let relay = peer_id_from_bytes(&msg.relay.ok_or(RecordError::MissingField("relay"))?)?;
        let peer = peer_id_from_bytes(&msg.peer.ok_or(RecordError::MissingField("peer"))?)?;
        let expiration = msg
            .expiration
            .ok_or(RecordError::MissingField("expiration"))?;
        if relay != signer {
            return Err(RecordError::WrongSigner {
                signer: Box::new(signer),
                expected: Box::new(relay),
            });
        }
        if peer != *expected_peer {
            return Err(RecordError::WrongPeer {
                actual: Box::new(peer),
                expected: Box::new(*expected_peer),
            });
        }
        Ok(Voucher {
            relay,
            peer,
            expiration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voucher(relay: &Keypair, peer: PeerId) -> Voucher {
        Voucher {
            relay: relay.public().to_peer_id(),
            peer,
            expiration: 1_700_000_000,
        }
    }

    #[test]
    fn voucher_sign_verify() {
        let relay = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let v = voucher(&relay, peer);
        let bytes = v.sign(&relay).unwrap();
        let env = SignedEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!(env.payload_type, [0x03, 0x02]);
        assert_eq!(
            Voucher::verify(&bytes, &relay.public().to_peer_id(), &peer),
            Ok(v)
        );
    }

    #[test]
    fn voucher_payload_is_canonical() {
        let relay = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let v = voucher(&relay, peer);
        let p = v.to_payload();
        let r = v.relay.to_bytes();
        let a = peer.to_bytes();
        let mut want = vec![0x0a, r.len() as u8];
        want.extend_from_slice(&r);
        want.extend_from_slice(&[0x12, a.len() as u8]);
        want.extend_from_slice(&a);
        want.push(0x18);
        crate::varint::encode_u64(1_700_000_000, &mut want);
        assert_eq!(p, want);
    }

    #[test]
    fn tampered_voucher_rejected() {
        let relay = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let bytes = voucher(&relay, peer).sign(&relay).unwrap();
        let mut env = SignedEnvelope::from_bytes(&bytes).unwrap();
        // Extend the expiration by changing the last payload byte.
        let last = env.payload.len() - 1;
        env.payload[last] ^= 0x01;
        let err = Voucher::verify(&env.to_bytes(), &relay.public().to_peer_id(), &peer);
        assert_eq!(err, Err(RecordError::Envelope(EnvelopeError::BadSignature)));
    }

    #[test]
    fn wrong_relay_signer_rejected() {
        let relay = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let peer = PeerId::random();
        // sign() refuses to sign someone else's voucher…
        let v = voucher(&relay, peer);
        assert!(matches!(
            v.sign(&mallory),
            Err(RecordError::WrongSigner { .. })
        ));
        // …and a hand-sealed one is rejected on verify.
        let env = SignedEnvelope::seal(
            &mallory,
            VOUCHER_DOMAIN,
            &VOUCHER_PAYLOAD_TYPE,
            v.to_payload(),
        )
        .unwrap()
        .to_bytes();
        assert!(matches!(
            Voucher::verify(&env, &relay.public().to_peer_id(), &peer),
            Err(RecordError::WrongSigner { .. })
        ));
        // Signed by mallory naming mallory as relay, but we expected `relay`.
        let mv = voucher(&mallory, peer);
        let bytes = mv.sign(&mallory).unwrap();
        assert!(matches!(
            Voucher::verify(&bytes, &relay.public().to_peer_id(), &peer),
            Err(RecordError::WrongSigner { .. })
        ));
    }

    #[test]
    fn voucher_for_other_peer_or_domain_rejected() {
        let relay = Keypair::generate_ed25519();
        let peer = PeerId::random();
        let v = voucher(&relay, peer);
        let bytes = v.sign(&relay).unwrap();
        let other = PeerId::random();
        assert_eq!(
            Voucher::verify(&bytes, &v.relay, &other),
            Err(RecordError::WrongPeer {
                actual: Box::new(peer),
                expected: Box::new(other)
            })
        );
        // Same payload signed under the peer-record domain does not verify.
        let env = SignedEnvelope::seal(
            &relay,
            PEER_RECORD_DOMAIN,
            &VOUCHER_PAYLOAD_TYPE,
            v.to_payload(),
        )
        .unwrap()
        .to_bytes();
        assert_eq!(
            Voucher::verify(&env, &v.relay, &peer),
            Err(RecordError::Envelope(EnvelopeError::BadSignature))
        );
    }

    #[test]
    fn peer_record_roundtrip_and_checks() {
        let k = Keypair::generate_ed25519();
        let rec = PeerRecord {
            peer_id: k.public().to_peer_id(),
            seq: 42,
            addrs: vec![
                "/ip4/1.2.3.4/tcp/4001".parse().unwrap(),
                "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
            ],
        };
        let bytes = rec.sign(&k).unwrap();
        let env = SignedEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!(env.payload_type, [0x03, 0x01]);
        assert_eq!(PeerRecord::verify(&bytes), Ok(rec.clone()));

        // Someone else's key signing a record naming `k`'s peer id.
        let other = Keypair::generate_ed25519();
        assert!(rec.sign(&other).is_err());
        let forged = SignedEnvelope::seal(
            &other,
            PEER_RECORD_DOMAIN,
            &PEER_RECORD_PAYLOAD_TYPE,
            rec.to_payload(),
        )
        .unwrap()
        .to_bytes();
        assert!(matches!(
            PeerRecord::verify(&forged),
            Err(RecordError::WrongSigner { .. })
        ));
        // A voucher is not a peer record.
        let v = voucher(&k, PeerId::random()).sign(&k).unwrap();
        assert!(PeerRecord::verify(&v).is_err());
    }
}
