//! Kademlia keys and the XOR metric.
//!
//! Every key — a peer id or a provider key — is placed in the 256-bit keyspace
//! as `sha256(bytes)`, and distance is the XOR of two such hashes read as a
//! big-endian unsigned integer (kad-dht spec; go and rust do the same).

use std::fmt;

use libp2p_identity::PeerId;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// SHA-256 of `data`.
///
/// Uses the SHA-256 that `snow` (already our Noise dependency) ships, so the
/// crate gains no new dependency for it.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // The default resolver is compiled with SHA-256 (snow's default features,
    // which Noise needs too), so this branch is always taken.
    if let Some(mut h) = DefaultResolver.resolve_hash(&snow::params::HashChoice::SHA256) {
        h.input(data);
        h.result(&mut out);
    }
    out
}

/// A point in the Kademlia keyspace: `sha256` of the preimage bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

impl Key {
    /// The keyspace point of arbitrary key bytes (e.g. a provider key).
    pub fn from_bytes(preimage: &[u8]) -> Key {
        Key(sha256(preimage))
    }

    /// The keyspace point of a peer: sha256 of its multihash bytes.
    pub fn from_peer(peer: &PeerId) -> Key {
        Key::from_bytes(&peer.to_bytes())
    }

    /// A key from an already computed hash (tests, random-walk targets).
    pub fn from_hash(hash: [u8; 32]) -> Key {
        Key(hash)
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The XOR distance of two keys, ordered as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Distance(pub [u8; 32]);

impl Distance {
    /// The k-bucket index for this distance: `255 - leading_zeros`, so bucket
    /// `i` holds distances in `[2^i, 2^(i+1))`. `None` for distance zero (self).
    pub fn bucket_index(&self) -> Option<usize> {
        let mut zeros = 0usize;
        for b in &self.0 {
            if *b == 0 {
                zeros += 8;
            } else {
                zeros += b.leading_zeros() as usize;
                return Some(255 - zeros);
            }
        }
        None
    }
}

/// Multicodec of SHA2-256 in a multihash.
const MH_SHA2_256: u8 = 0x12;
/// Multicodec `raw`, the CID codec go-libp2p's routing discovery uses.
const CODEC_RAW: u8 = 0x55;

/// The DHT provider key of a discovery namespace, as go-libp2p's
/// `RoutingDiscovery` computes it: the **multihash** `sha2-256(namespace)`,
/// i.e. `0x12 0x20 || sha256(ns)`. (go wraps it in a CIDv1 raw and js in a
/// CIDv0, but DHT provider keys are the multihash, so both land here.)
pub fn namespace_key(namespace: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(34);
    key.push(MH_SHA2_256);
    key.push(32);
    key.extend_from_slice(&sha256(namespace.as_bytes()));
    key
}

/// The CIDv1 (codec raw) bytes of a namespace, `0x01 0x55 || multihash` — what
/// pre-2020 go DHTs used as the key, and what go logs as the CID.
pub fn namespace_cid(namespace: &str) -> Vec<u8> {
    let mut cid = vec![0x01, CODEC_RAW];
    cid.extend_from_slice(&namespace_key(namespace));
    cid
}

/// The namespace relays advertise under (v1-era autorelay).
pub const RELAY_NAMESPACE: &str = "/libp2p/relay";
