//! Kademlia as a DHT server sees it: decode a request body and handle it
//! against a routing table and a provider store that persist across the
//! messages of one input (frames of a stream), so ADD_PROVIDER floods meet
//! the store's limits. Also decodes the body as each response type.
#![no_main]

use std::time::{Duration, Instant};

use circuit_proto::kad::{self, KBucketsTable, ProviderStore, StoreConfig};
use circuit_wire::frame::FrameDecoder;
use circuit_wire::pb::kad::MessageType;
use libfuzzer_sys::fuzz_target;
use libp2p_identity::PeerId;

fuzz_target!(|input: &[u8]| {
    let local = circuit_fuzz::identity().public().to_peer_id();
    let source = PeerId::from_bytes(&[0, 4, 1, 2, 3, 4]).unwrap_or(local);
    let table = KBucketsTable::new(local);
    let config = StoreConfig {
        max_records: 8,
        max_per_key: 4,
        ..StoreConfig::default()
    };
    let mut store = ProviderStore::new(config);
    let mut now = Instant::now();
    let mut dec = FrameDecoder::new(kad::MAX_MESSAGE_SIZE);
    for chunk in circuit_fuzz::chunks(input) {
        dec.push(chunk);
        loop {
            let body = match dec.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => return,
            };
            if let Ok(req) = kad::Request::decode(&body) {
                if let Ok(Some(resp)) = kad::handle_request(&table, &mut store, &source, &req, now) {
                    let _ = resp.encode();
                }
                assert_eq!(kad::Request::decode(&req.encode()).ok(), Some(req));
            }
            for ty in [MessageType::FindNode, MessageType::GetProviders, MessageType::AddProvider, MessageType::Ping] {
                if let Ok(resp) = kad::Response::decode(&body, ty) {
                    assert!(resp.closer_peers().len() <= kad::MAX_PEERS_PER_MESSAGE);
                }
            }
            now += Duration::from_secs(60);
        }
    }
});
