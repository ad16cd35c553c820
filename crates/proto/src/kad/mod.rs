//! Kademlia (`/ipfs/kad/1.0.0`), as much as relay discovery needs: the routing
//! table, iterative FIND_NODE / GET_PROVIDERS lookups, a provider store, and the
//! server's answers — all sans-IO.
//!
//! The glue owns the streams: it frames [`Request`]/[`Response`] bodies with
//! `circuit_wire::frame` (at most [`MAX_MESSAGE_SIZE`] in), feeds inbound
//! requests to [`handle_request`], drives each [`Query`] with
//! `poll_request`/`handle_response`/`handle_failure`/`handle_timeout`, and
//! sleeps until the earliest `poll_timeout` of the table, the store, the
//! republisher and the queries. Nothing here reads a clock.
//!
//! Keys: a peer is placed at `sha256(peer id bytes)`, a provider key at
//! `sha256(key bytes)`; a namespace's provider key is [`namespace_key`].

mod kbucket;
mod key;
mod protocol;
mod query;
mod store;

#[cfg(test)]
mod tests;

use std::time::Instant;

use circuit_wire::pb::kad::MessageType;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use thiserror::Error;

pub use kbucket::{Applied, Entry, InsertResult, KBucketsTable, DEFAULT_PENDING_TIMEOUT};
pub use key::{namespace_cid, namespace_key, sha256, Distance, Key, RELAY_NAMESPACE};
pub use protocol::{ConnectionType, KadPeer, Request, Response};
pub use query::{PeerState, Query, QueryConfig, QueryKind, DEFAULT_PEER_TIMEOUT};
pub use store::{
    AddOutcome, ProviderRecord, ProviderStore, Republisher, StoreConfig, PROVIDER_RECORD_TTL,
    REPUBLISH_INTERVAL,
};

/// The protocol id.
pub const PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// Bucket size and replication factor (all implementations: 20).
pub const K_VALUE: usize = 20;
/// Lookup parallelism α (rust-libp2p's 3; go uses 10; both interoperate).
pub const ALPHA_VALUE: usize = 3;
/// Largest message we accept. go allows 4 MiB, rust 16 KiB; 64 KiB takes any
/// sane response of 20 peers with their addresses and stays cheap to buffer.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Largest message we send: rust-libp2p refuses anything over 16 KiB.
pub const MAX_SEND_SIZE: usize = 16 * 1024;
/// Longest key accepted (go-libp2p-kad-dht refuses keys of 80 bytes or more
/// for providers; a multihash is 34).
pub const MAX_KEY_LEN: usize = 80;
/// Most addresses kept or sent per peer.
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// Most peer entries read from one list of a message.
pub const MAX_PEERS_PER_MESSAGE: usize = 64;

/// Errors of the Kademlia core. None is fatal to the node; the glue resets the
/// stream that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The body is not a valid `Message`.
    #[error("bad kad message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// `type` is not a known message type.
    #[error("unknown kad message type {0}")]
    UnknownType(i32),
    /// A known type we do not serve (PUT_VALUE) or that is not a response.
    #[error("unsupported kad message type {0:?}")]
    Unsupported(MessageType),
    /// A response of another type than the request.
    #[error("expected a {expected:?} response, got {got:?}")]
    UnexpectedType {
        /// The request's type.
        expected: MessageType,
        /// What came back.
        got: MessageType,
    },
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key of {0} bytes is too long")]
    KeyTooLong(usize),
    /// ADD_PROVIDER without a provider entry with a valid peer id.
    #[error("ADD_PROVIDER without a provider")]
    NoProvider,
    /// ADD_PROVIDER whose providers are all other peers than the sender.
    #[error("ADD_PROVIDER for another peer than the sender")]
    ForeignProvider,
    /// The provider store is full (per key or in total).
    #[error("provider store full")]
    StoreFull,
}

/// The peers closest to `key` that the table knows, excluding `exclude` (the
/// requester: it does not need itself), nearest first, at most k.
pub fn closer_peers(table: &KBucketsTable, key: &[u8], exclude: &PeerId) -> Vec<KadPeer> {
    table
        .closest(&Key::from_bytes(key), K_VALUE + 1)
        .into_iter()
        .filter(|e| e.peer != *exclude)
        .take(K_VALUE)
        .map(Entry::to_kad_peer)
        .collect()
}

/// The server role: the answer to `request` from `source`, if the request
/// has one (ADD_PROVIDER has none).
///
/// - FIND_NODE / GET_VALUE: the k closest known peers to `sha256(key)`.
/// - GET_PROVIDERS: live providers of `key` (addresses filled in from the
///   table when the record has none) plus closer peers.
/// - ADD_PROVIDER: stores the entries whose id is `source` (a peer may only
///   announce itself); others are ignored, and if none is the sender the
///   result is [`Error::ForeignProvider`].
/// - PING: answered with PING.
pub fn handle_request(
    table: &KBucketsTable,
    store: &mut ProviderStore,
    source: &PeerId,
    request: &Request,
    now: Instant,
) -> Result<Option<Response>, Error> {
    match request {
        Request::FindNode { key } => Ok(Some(Response::FindNode {
            closer_peers: closer_peers(table, key, source),
        })),
        Request::GetValue { key } => Ok(Some(Response::GetValue {
            closer_peers: closer_peers(table, key, source),
        })),
        Request::GetProviders { key } => {
            let provider_peers = store
                .provider_peers(key, now)
                .into_iter()
                .map(|mut p| {
                    if p.addrs.is_empty() {
                        if let Some(e) = table.get(&p.id) {
                            p.addrs = e.addrs.clone();
                        }
                    }
                    p
                })
                .collect();
            Ok(Some(Response::GetProviders {
                closer_peers: closer_peers(table, key, source),
                provider_peers,
            }))
        }
        Request::AddProvider { key, providers } => {
            let mine = providers
                .iter()
                .find(|p| p.id == *source)
                .ok_or(Error::ForeignProvider)?;
            store.add(key, *source, &mine.addrs, now)?;
            Ok(None)
        }
        Request::Ping => Ok(Some(Response::Pong)),
    }
}

/// The ADD_PROVIDER request announcing `local` (with `addrs`) for `key`.
pub fn add_provider_request(key: Vec<u8>, local: PeerId, addrs: Vec<Multiaddr>) -> Request {
    Request::AddProvider {
        key,
        providers: vec![KadPeer::new(local, addrs)],
    }
}

/// A FIND_NODE walk towards `key`, seeded with the table's k closest.
pub fn find_node_query(table: &KBucketsTable, key: Vec<u8>, config: QueryConfig) -> Query {
    let seeds = seeds(table, &key, config.num_results);
    Query::new(QueryKind::FindNode, key, *table.local_peer(), seeds, config)
}

/// The bootstrap walk: FIND_NODE of our own id, which fills the buckets near
/// us (the glue inserts every peer that answers).
pub fn bootstrap_query(table: &KBucketsTable, config: QueryConfig) -> Query {
    find_node_query(table, table.local_peer().to_bytes(), config)
}

/// A GET_PROVIDERS walk towards `key`, seeded with the table's k closest.
pub fn get_providers_query(table: &KBucketsTable, key: Vec<u8>, config: QueryConfig) -> Query {
    let seeds = seeds(table, &key, config.num_results);
    Query::new(
        QueryKind::GetProviders,
        key,
        *table.local_peer(),
        seeds,
        config,
    )
}

fn seeds(table: &KBucketsTable, key: &[u8], n: usize) -> Vec<KadPeer> {
    table
        .closest(&Key::from_bytes(key), n.max(1))
        .into_iter()
        .map(Entry::to_kad_peer)
        .collect()
}
