//! Deterministic tests of the Kademlia core: keys, buckets, lookups, the
//! provider store, server answers, a simulated 50-node network with a fake
//! clock, and decoding of hostile bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use circuit_wire::pb::kad::{Message, MessageType, Peer};
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;
use proptest::prelude::*;
use prost::Message as _;

use super::*;

fn peer(i: u32) -> PeerId {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    seed[31] = 1;
    match Keypair::ed25519_from_bytes(seed) {
        Ok(k) => k.public().to_peer_id(),
        Err(e) => panic!("test key: {e}"),
    }
}

fn addr(i: u32) -> Multiaddr {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
    format!("/ip4/{ip}/tcp/4001")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------- keys

#[test]
fn sha256_known_vectors() {
    assert_eq!(
        hex::encode(sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex::encode(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn relay_namespace_key_matches_go_routing_discovery() {
    let key = namespace_key(RELAY_NAMESPACE);
    assert_eq!(
        hex::encode(&key),
        "1220245eebd20d2cd4c81b5d4ac27c73746279f436d62f3ef52c452a369e6ef7b610"
    );
    assert_eq!(
        hex::encode(Key::from_bytes(&key).as_bytes()),
        "ebb9b770c32cd2a0ec64e7312e4c5b65579a63a5b6550de8570aedf0a14b7eef"
    );
    let cid = namespace_cid(RELAY_NAMESPACE);
    assert_eq!(&cid[..4], &[0x01, 0x55, 0x12, 0x20]);
    assert_eq!(&cid[2..], &key[..]);
}

#[test]
fn distance_and_bucket_index() {
    let a = Key::from_hash([0u8; 32]);
    let mut top = [0u8; 32];
    top[0] = 0x80;
    let mut low = [0u8; 32];
    low[31] = 1;
    let mut mid = [0u8; 32];
    mid[1] = 0x10; // bit 8*30 + 4 from the bottom = 244
    assert_eq!(a.distance(&a).bucket_index(), None);
    assert_eq!(a.distance(&Key::from_hash(top)).bucket_index(), Some(255));
    assert_eq!(a.distance(&Key::from_hash(low)).bucket_index(), Some(0));
    assert_eq!(a.distance(&Key::from_hash(mid)).bucket_index(), Some(244));
    // XOR is symmetric and ordered as a big-endian integer.
    let b = Key::from_hash(top);
    let c = Key::from_hash(low);
    assert_eq!(b.distance(&c), c.distance(&b));
    assert!(a.distance(&c) < a.distance(&b));
}

// ---------------------------------------------------------------- k-buckets

/// `n` peers that all land in bucket 255 of `local` (half of all ids do).
fn peers_in_top_bucket(local: &PeerId, n: usize) -> Vec<PeerId> {
    let lk = Key::from_peer(local);
    (1000..)
        .map(peer)
        .filter(|p| lk.distance(&Key::from_peer(p)).bucket_index() == Some(255))
        .take(n)
        .collect()
}

#[test]
fn bucket_fills_then_pends_then_is_full() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::new(local);
    assert_eq!(t.insert_or_update(local, &[], t0), InsertResult::SelfEntry);
    let ps = peers_in_top_bucket(&local, K_VALUE + 2);
    for (i, p) in ps.iter().take(K_VALUE).enumerate() {
        let now = t0 + Duration::from_secs(i as u64);
        assert_eq!(
            t.insert_or_update(*p, &[addr(1)], now),
            InsertResult::Inserted
        );
    }
    assert_eq!(t.bucket(255).len(), K_VALUE);
    let now = t0 + Duration::from_secs(100);
    match t.insert_or_update(ps[K_VALUE], &[], now) {
        InsertResult::Pending { probe, deadline } => {
            assert_eq!(probe, ps[0], "the least recently seen peer is probed");
            assert_eq!(deadline, now + DEFAULT_PENDING_TIMEOUT);
        }
        other => panic!("expected pending, got {other:?}"),
    }
    assert_eq!(t.pending(255).map(|e| e.peer), Some(ps[K_VALUE]));
    assert_eq!(
        t.insert_or_update(ps[K_VALUE + 1], &[], now),
        InsertResult::Full
    );
    assert_eq!(t.len(), K_VALUE);
    assert_eq!(t.poll_timeout(), Some(now + DEFAULT_PENDING_TIMEOUT));
}

#[test]
fn update_moves_to_most_recent_and_merges_addrs() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::new(local);
    let ps = peers_in_top_bucket(&local, 3);
    for p in &ps {
        t.insert_or_update(*p, &[addr(1)], t0);
    }
    assert_eq!(
        t.insert_or_update(ps[0], &[addr(2)], t0),
        InsertResult::Updated
    );
    let order: Vec<PeerId> = t.bucket(255).iter().map(|e| e.peer).collect();
    assert_eq!(order, vec![ps[1], ps[2], ps[0]]);
    assert_eq!(
        t.get(&ps[0]).map(|e| e.addrs.clone()),
        Some(vec![addr(2), addr(1)])
    );
}

#[test]
fn unresponsive_lru_is_replaced_after_pending_timeout() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::new(local);
    let ps = peers_in_top_bucket(&local, K_VALUE + 1);
    for p in ps.iter().take(K_VALUE) {
        t.insert_or_update(*p, &[], t0);
    }
    let now = t0 + Duration::from_secs(5);
    t.insert_or_update(ps[K_VALUE], &[], now);
    // Not yet due.
    assert!(t.handle_timeout(now + Duration::from_secs(59)).is_empty());
    let applied = t.handle_timeout(now + DEFAULT_PENDING_TIMEOUT);
    assert_eq!(
        applied,
        vec![Applied {
            inserted: ps[K_VALUE],
            evicted: Some(ps[0])
        }]
    );
    assert!(!t.contains(&ps[0]));
    assert!(t.contains(&ps[K_VALUE]));
    assert_eq!(t.pending(255), None);
    assert_eq!(t.len(), K_VALUE);
}

#[test]
fn responsive_lru_keeps_its_slot() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::new(local);
    let ps = peers_in_top_bucket(&local, K_VALUE + 1);
    for p in ps.iter().take(K_VALUE) {
        t.insert_or_update(*p, &[], t0);
    }
    let now = t0 + Duration::from_secs(5);
    t.insert_or_update(ps[K_VALUE], &[], now);
    assert!(t.mark_seen(&ps[0], now + Duration::from_secs(1)));
    assert!(t.handle_timeout(now + DEFAULT_PENDING_TIMEOUT).is_empty());
    assert!(t.contains(&ps[0]));
    assert!(!t.contains(&ps[K_VALUE]));
    assert_eq!(t.pending(255), None, "the pending entry is dropped");
}

#[test]
fn removal_promotes_pending_at_once() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::new(local);
    let ps = peers_in_top_bucket(&local, K_VALUE + 1);
    for p in ps.iter().take(K_VALUE) {
        t.insert_or_update(*p, &[], t0);
    }
    t.insert_or_update(ps[K_VALUE], &[], t0);
    let (removed, applied) = t.remove(&ps[3]).unwrap_or_else(|| panic!("present"));
    assert_eq!(removed.peer, ps[3]);
    assert_eq!(
        applied,
        Some(Applied {
            inserted: ps[K_VALUE],
            evicted: None
        })
    );
    assert!(t.contains(&ps[K_VALUE]));
    assert_eq!(t.len(), K_VALUE);
    assert!(t.remove(&ps[3]).is_none());
}

#[test]
fn closest_is_sorted_by_distance() {
    let local = peer(0);
    let t0 = Instant::now();
    let mut t = KBucketsTable::with_config(local, 200, DEFAULT_PENDING_TIMEOUT);
    for i in 1..300 {
        t.insert_or_update(peer(i), &[], t0);
    }
    let target = Key::from_bytes(b"some key");
    let got: Vec<PeerId> = t.closest(&target, 10).iter().map(|e| e.peer).collect();
    let mut all: Vec<PeerId> = t.iter().map(|e| e.peer).collect();
    all.sort_by_key(|p| Key::from_peer(p).distance(&target));
    assert_eq!(got, all[..10].to_vec());
    // Buckets respect k even with many peers: no bucket exceeds 200 and every
    // entry sits in the bucket of its distance.
    for i in 0..256 {
        for e in t.bucket(i) {
            assert_eq!(t.bucket_index(&e.key), Some(i));
        }
    }
}

// ---------------------------------------------------------------- messages

#[test]
fn find_node_request_wire_bytes() {
    let req = Request::FindNode {
        key: vec![0xaa, 0xbb],
    };
    // type=FIND_NODE(4) as field 1, key as field 2; proto3: nothing else.
    assert_eq!(req.encode(), vec![0x08, 0x04, 0x12, 0x02, 0xaa, 0xbb]);
    assert_eq!(Request::decode(&req.encode()), Ok(req));
}

#[test]
fn requests_and_responses_round_trip() {
    let p = KadPeer {
        id: peer(1),
        addrs: vec![addr(1), addr(2)],
        connection: ConnectionType::Connected,
    };
    let reqs = vec![
        Request::FindNode { key: vec![1, 2, 3] },
        Request::GetProviders {
            key: namespace_key(RELAY_NAMESPACE),
        },
        add_provider_request(namespace_key(RELAY_NAMESPACE), peer(1), vec![addr(1)]),
        Request::Ping,
        Request::GetValue { key: vec![9] },
    ];
    for r in reqs {
        assert_eq!(Request::decode(&r.encode()).as_ref(), Ok(&r));
    }
    let resps = vec![
        (
            Response::FindNode {
                closer_peers: vec![p.clone()],
            },
            MessageType::FindNode,
        ),
        (
            Response::GetProviders {
                closer_peers: vec![p.clone()],
                provider_peers: vec![p.clone()],
            },
            MessageType::GetProviders,
        ),
        (Response::Pong, MessageType::Ping),
    ];
    for (r, ty) in resps {
        assert_eq!(Response::decode(&r.encode(), ty).as_ref(), Ok(&r));
    }
}

#[test]
fn malformed_messages_are_errors() {
    assert!(matches!(
        Request::decode(&[0xff, 0xff]),
        Err(Error::Decode(_))
    ));
    let m = Message {
        r#type: 42,
        ..Default::default()
    };
    assert_eq!(Request::from_pb(&m), Err(Error::UnknownType(42)));
    let m = Message {
        r#type: MessageType::PutValue as i32,
        ..Default::default()
    };
    assert_eq!(
        Request::from_pb(&m),
        Err(Error::Unsupported(MessageType::PutValue))
    );
    let m = Message {
        r#type: MessageType::GetProviders as i32,
        key: vec![0; MAX_KEY_LEN + 1],
        ..Default::default()
    };
    assert_eq!(
        Request::from_pb(&m),
        Err(Error::KeyTooLong(MAX_KEY_LEN + 1))
    );
    // ADD_PROVIDER whose only provider has a garbage id.
    let m = Message {
        r#type: MessageType::AddProvider as i32,
        key: vec![1],
        provider_peers: vec![Peer {
            id: vec![1, 2, 3],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(Request::from_pb(&m), Err(Error::NoProvider));
    // A response of the wrong type.
    let body = Response::Pong.encode();
    assert_eq!(
        Response::decode(&body, MessageType::FindNode),
        Err(Error::UnexpectedType {
            expected: MessageType::FindNode,
            got: MessageType::Ping
        })
    );
}

#[test]
fn bad_peer_entries_are_skipped_not_fatal() {
    let good = KadPeer::new(peer(1), vec![addr(1)]).to_pb();
    let mut bad_addr = KadPeer::new(peer(2), vec![addr(2)]).to_pb();
    bad_addr.addrs.insert(0, vec![0xff, 0xff, 0xff]);
    let m = Message {
        r#type: MessageType::FindNode as i32,
        closer_peers: vec![
            Peer {
                id: vec![0; 5],
                ..Default::default()
            },
            good,
            bad_addr,
        ],
        ..Default::default()
    };
    match Response::from_pb(&m, MessageType::FindNode) {
        Ok(Response::FindNode { closer_peers }) => {
            assert_eq!(closer_peers.len(), 2);
            assert_eq!(closer_peers[0].id, peer(1));
            assert_eq!(closer_peers[1].addrs, vec![addr(2)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn big_responses_are_trimmed_under_the_send_limit() {
    let long: Multiaddr = "/dns4/a-very-long-host-name-for-padding.example.com/tcp/4001/ws"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let peers: Vec<KadPeer> = (0..K_VALUE as u32)
        .map(|i| KadPeer::new(peer(i), vec![long.clone(); 8]))
        .collect();
    let r = Response::GetProviders {
        closer_peers: peers.clone(),
        provider_peers: peers,
    };
    let body = r.encode();
    assert!(body.len() <= MAX_SEND_SIZE, "{} bytes", body.len());
    match Response::decode(&body, MessageType::GetProviders) {
        Ok(Response::GetProviders {
            closer_peers,
            provider_peers,
        }) => {
            assert!(!closer_peers.is_empty());
            assert!(closer_peers.len() < K_VALUE, "trimmed");
            assert_eq!(closer_peers[0].id, peer(0), "nearest peers are kept");
            assert_eq!(provider_peers.len(), K_VALUE, "providers are kept first");
            assert!(closer_peers[0].addrs.len() <= MAX_ADDRS_PER_PEER);
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- store

#[test]
fn provider_records_expire() {
    let t0 = Instant::now();
    let mut s = ProviderStore::new(StoreConfig::default());
    let key = namespace_key(RELAY_NAMESPACE);
    assert_eq!(s.add(&key, peer(1), &[addr(1)], t0), Ok(AddOutcome::Added));
    assert_eq!(s.poll_timeout(), Some(t0 + PROVIDER_RECORD_TTL));
    let later = t0 + Duration::from_secs(3600);
    assert_eq!(s.add(&key, peer(1), &[], later), Ok(AddOutcome::Renewed));
    assert_eq!(s.providers(&key, later)[0].addrs, vec![addr(1)], "kept");
    assert_eq!(s.poll_timeout(), Some(later + PROVIDER_RECORD_TTL));
    assert_eq!(s.providers(&key, t0 + PROVIDER_RECORD_TTL).len(), 1);
    let gone = later + PROVIDER_RECORD_TTL;
    assert!(s.providers(&key, gone).is_empty());
    assert_eq!(s.purge_expired(gone), 1);
    assert!(s.is_empty());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn per_key_bound_keeps_the_closest_providers() {
    let t0 = Instant::now();
    let cfg = StoreConfig {
        max_per_key: 4,
        ..StoreConfig::default()
    };
    let mut s = ProviderStore::new(cfg);
    let key = b"k".to_vec();
    let target = Key::from_bytes(&key);
    let mut ps: Vec<PeerId> = (1..=10).map(peer).collect();
    for p in &ps {
        let _ = s.add(&key, *p, &[], t0);
        assert!(s.len() <= 4);
    }
    ps.sort_by_key(|p| Key::from_peer(p).distance(&target));
    let mut kept: Vec<PeerId> = s.providers(&key, t0).iter().map(|r| r.provider).collect();
    kept.sort_by_key(|p| Key::from_peer(p).distance(&target));
    assert_eq!(kept, ps[..4].to_vec());
    // The farthest of all is refused outright.
    assert_eq!(s.add(&key, ps[9], &[], t0), Err(Error::StoreFull));
}

#[test]
fn total_bound_and_key_length() {
    let t0 = Instant::now();
    let cfg = StoreConfig {
        max_records: 3,
        ..StoreConfig::default()
    };
    let mut s = ProviderStore::new(cfg);
    for i in 0..3u8 {
        assert_eq!(s.add(&[i], peer(1), &[], t0), Ok(AddOutcome::Added));
    }
    assert_eq!(s.add(&[9], peer(1), &[], t0), Err(Error::StoreFull));
    // Once the old ones expire there is room again.
    let later = t0 + PROVIDER_RECORD_TTL;
    assert_eq!(s.add(&[9], peer(1), &[], later), Ok(AddOutcome::Added));
    assert_eq!(s.len(), 1);
    assert_eq!(
        s.add(&[0; MAX_KEY_LEN + 1], peer(1), &[], t0),
        Err(Error::KeyTooLong(MAX_KEY_LEN + 1))
    );
}

#[test]
fn republisher_schedule() {
    let t0 = Instant::now();
    let mut r = Republisher::new(Duration::from_secs(100));
    assert_eq!(r.poll_timeout(), None);
    r.provide(b"a".to_vec(), t0);
    assert_eq!(r.poll_due(t0), Some(b"a".to_vec()));
    assert_eq!(r.poll_due(t0), None);
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(100)));
    assert_eq!(r.poll_due(t0 + Duration::from_secs(99)), None);
    let t1 = t0 + Duration::from_secs(100);
    assert_eq!(r.poll_due(t1), Some(b"a".to_vec()));
    r.reschedule(b"a", t1 + Duration::from_secs(5));
    assert_eq!(r.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    assert!(r.stop_providing(b"a"));
    assert_eq!(r.poll_due(t1 + Duration::from_secs(1000)), None);
}

// ---------------------------------------------------------------- server

#[test]
fn server_answers() {
    let t0 = Instant::now();
    let local = peer(0);
    let mut table = KBucketsTable::new(local);
    for i in 1..40 {
        table.insert_or_update(peer(i), &[addr(i)], t0);
    }
    let mut store = ProviderStore::default();
    let src = peer(5);
    let key = namespace_key(RELAY_NAMESPACE);

    // FIND_NODE never returns the requester, and returns the k closest.
    let resp = handle_request(
        &table,
        &mut store,
        &src,
        &Request::FindNode { key: key.clone() },
        t0,
    );
    match resp {
        Ok(Some(Response::FindNode { closer_peers })) => {
            assert_eq!(closer_peers.len(), K_VALUE);
            assert!(closer_peers.iter().all(|p| p.id != src));
            let target = Key::from_bytes(&key);
            let d: Vec<Distance> = closer_peers
                .iter()
                .map(|p| Key::from_peer(&p.id).distance(&target))
                .collect();
            assert!(d.windows(2).all(|w| w[0] < w[1]));
        }
        other => panic!("{other:?}"),
    }

    // ADD_PROVIDER for someone else is refused and stores nothing.
    let foreign = add_provider_request(key.clone(), peer(6), vec![addr(6)]);
    assert_eq!(
        handle_request(&table, &mut store, &src, &foreign, t0),
        Err(Error::ForeignProvider)
    );
    assert!(store.is_empty());

    // The sender's own announcement is stored, without a response.
    let own = add_provider_request(key.clone(), src, vec![]);
    assert_eq!(handle_request(&table, &mut store, &src, &own, t0), Ok(None));

    // GET_PROVIDERS returns it, with addresses from the table since the record
    // had none.
    let resp = handle_request(
        &table,
        &mut store,
        &peer(7),
        &Request::GetProviders { key: key.clone() },
        t0,
    );
    match resp {
        Ok(Some(Response::GetProviders {
            provider_peers,
            closer_peers,
        })) => {
            assert_eq!(provider_peers, vec![KadPeer::new(src, vec![addr(5)])]);
            assert_eq!(closer_peers.len(), K_VALUE);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        handle_request(&table, &mut store, &src, &Request::Ping, t0),
        Ok(Some(Response::Pong))
    );
}

// ---------------------------------------------------------------- query

fn kp(i: u32) -> KadPeer {
    KadPeer::new(peer(i), vec![addr(i)])
}

#[test]
fn query_respects_alpha_and_peer_timeouts() {
    let t0 = Instant::now();
    let cfg = QueryConfig {
        alpha: 3,
        num_results: 4,
        peer_timeout: Duration::from_secs(10),
        ..QueryConfig::default()
    };
    let seeds: Vec<KadPeer> = (1..=6).map(kp).collect();
    let mut q = Query::new(QueryKind::FindNode, b"x".to_vec(), peer(0), seeds, cfg);
    let first: Vec<PeerId> = std::iter::from_fn(|| q.poll_request(t0))
        .map(|(p, r)| {
            assert_eq!(r, Request::FindNode { key: b"x".to_vec() });
            p.id
        })
        .collect();
    assert_eq!(first.len(), 3, "α requests in flight");
    assert_eq!(q.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    // Before the deadline nothing more is sent.
    assert!(q.poll_request(t0 + Duration::from_secs(9)).is_none());
    // At the deadline the three are unresponsive and three more go out.
    let t1 = t0 + Duration::from_secs(10);
    let second: Vec<PeerId> = std::iter::from_fn(|| q.poll_request(t1))
        .map(|(p, _)| p.id)
        .collect();
    assert_eq!(second.len(), 3);
    for p in &first {
        assert_eq!(q.peer_state(p), Some(PeerState::Unresponsive));
    }
    // A late answer still counts.
    assert!(q.handle_response(
        &first[0],
        &Response::FindNode {
            closer_peers: vec![]
        },
        t1
    ));
    assert_eq!(q.peer_state(&first[0]), Some(PeerState::Succeeded));
    // An answer from a peer never asked is ignored.
    assert!(!q.handle_response(
        &peer(99),
        &Response::FindNode {
            closer_peers: vec![]
        },
        t1
    ));
    for p in &second {
        q.handle_response(
            p,
            &Response::FindNode {
                closer_peers: vec![],
            },
            t1,
        );
    }
    assert!(q.is_finished());
    assert_eq!(q.closest_peers().len(), 4);
    assert!(q.poll_request(t1).is_none());
    assert_eq!(q.poll_timeout(), None);
}

#[test]
fn query_finishes_when_k_closest_answered_and_skips_far_peers() {
    let t0 = Instant::now();
    let cfg = QueryConfig {
        alpha: 2,
        num_results: 3,
        ..QueryConfig::default()
    };
    let key = b"target".to_vec();
    let target = Key::from_bytes(&key);
    let mut ids: Vec<u32> = (1..=30).collect();
    ids.sort_by_key(|i| Key::from_peer(&peer(*i)).distance(&target));
    // Seeds: the 10 farthest; a response reveals the 3 closest.
    let far: Vec<KadPeer> = ids[20..].iter().map(|i| kp(*i)).collect();
    let near: Vec<KadPeer> = ids[..3].iter().map(|i| kp(*i)).collect();
    let mut q = Query::new(QueryKind::FindNode, key, peer(0), far, cfg);
    let mut asked = Vec::new();
    let mut step = 0;
    while !q.is_finished() {
        let reqs: Vec<KadPeer> = std::iter::from_fn(|| q.poll_request(t0))
            .map(|(p, _)| p)
            .collect();
        assert!(!reqs.is_empty(), "progress");
        for p in reqs {
            asked.push(p.id);
            let closer = if step == 0 { near.clone() } else { vec![] };
            step += 1;
            q.handle_response(
                &p.id,
                &Response::FindNode {
                    closer_peers: closer,
                },
                t0,
            );
        }
    }
    let got: Vec<PeerId> = q.closest_peers().iter().map(|p| p.id).collect();
    assert_eq!(got, near.iter().map(|p| p.id).collect::<Vec<_>>());
    // Once the near peers were known, the remaining far seeds were not asked.
    assert!(asked.len() < 3 + 10, "asked {}", asked.len());
}

#[test]
fn query_failures_and_self_are_skipped() {
    let t0 = Instant::now();
    let me = peer(0);
    let mut q = Query::new(
        QueryKind::GetProviders,
        b"k".to_vec(),
        me,
        vec![kp(0), kp(1)],
        QueryConfig::default(),
    );
    assert_eq!(q.num_candidates(), 1, "self is never a candidate");
    let (p, r) = q.poll_request(t0).unwrap_or_else(|| panic!("one request"));
    assert_eq!(r, Request::GetProviders { key: b"k".to_vec() });
    q.handle_failure(&p.id);
    assert_eq!(q.peer_state(&p.id), Some(PeerState::Failed));
    assert!(q.is_finished(), "nobody left to ask");
    assert!(q.closest_peers().is_empty());
}

#[test]
fn get_providers_stops_at_max_providers() {
    let t0 = Instant::now();
    let cfg = QueryConfig {
        max_providers: Some(1),
        ..QueryConfig::default()
    };
    let seeds: Vec<KadPeer> = (1..=5).map(kp).collect();
    let mut q = Query::new(QueryKind::GetProviders, b"k".to_vec(), peer(0), seeds, cfg);
    let (p, _) = q.poll_request(t0).unwrap_or_else(|| panic!("request"));
    q.handle_response(
        &p.id,
        &Response::GetProviders {
            closer_peers: vec![],
            provider_peers: vec![kp(42)],
        },
        t0,
    );
    assert!(q.is_finished());
    assert_eq!(q.providers(), &[kp(42)]);
}

// ---------------------------------------------------------------- simulation

struct Node {
    id: PeerId,
    table: KBucketsTable,
    store: ProviderStore,
    alive: bool,
}

struct Net {
    nodes: Vec<Node>,
    index: HashMap<PeerId, usize>,
    now: Instant,
    requests: usize,
}

impl Net {
    fn new(n: u32) -> Net {
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: peer(i),
                table: KBucketsTable::new(peer(i)),
                store: ProviderStore::default(),
                alive: true,
            })
            .collect();
        let index = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        Net {
            nodes,
            index,
            now: Instant::now(),
            requests: 0,
        }
    }

    /// Runs `q` for node `origin` to completion, every message going through
    /// the wire encoding. Dead nodes never answer, so their requests time out
    /// on the fake clock.
    fn run(&mut self, origin: usize, mut q: Query) -> Query {
        let origin_id = self.nodes[origin].id;
        for _ in 0..10_000 {
            if q.is_finished() {
                return q;
            }
            let reqs: Vec<(KadPeer, Request)> =
                std::iter::from_fn(|| q.poll_request(self.now)).collect();
            if reqs.is_empty() {
                match q.poll_timeout() {
                    Some(t) => {
                        assert!(t > self.now, "a timeout in the past would spin");
                        self.now = t;
                        q.handle_timeout(self.now);
                    }
                    None => return q,
                }
                continue;
            }
            for (p, req) in reqs {
                self.requests += 1;
                let body = req.encode();
                let Some(&j) = self.index.get(&p.id) else {
                    q.handle_failure(&p.id);
                    continue;
                };
                if !self.nodes[j].alive {
                    continue; // silence: the peer times out
                }
                let origin_addr = addr(self.index[&origin_id] as u32);
                let server = &mut self.nodes[j];
                // The server learns the requester (glue: identify says it is a
                // DHT server).
                server
                    .table
                    .insert_or_update(origin_id, &[origin_addr], self.now);
                let decoded = Request::decode(&body).unwrap_or_else(|e| panic!("{e}"));
                let resp = handle_request(
                    &server.table,
                    &mut server.store,
                    &origin_id,
                    &decoded,
                    self.now,
                )
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("lookups get answers"));
                let rbody = resp.encode();
                let resp =
                    Response::decode(&rbody, req.message_type()).unwrap_or_else(|e| panic!("{e}"));
                self.nodes[origin]
                    .table
                    .insert_or_update(p.id, &p.addrs, self.now);
                q.handle_response(&p.id, &resp, self.now);
            }
        }
        panic!("query did not finish");
    }

    fn bootstrap_all(&mut self) {
        let seed = self.nodes[0].id;
        for i in 1..self.nodes.len() {
            self.nodes[i]
                .table
                .insert_or_update(seed, &[addr(0)], self.now);
            let q = bootstrap_query(&self.nodes[i].table, QueryConfig::default());
            self.run(i, q);
        }
        // A second round spreads knowledge of late joiners.
        for i in 0..self.nodes.len() {
            let q = bootstrap_query(&self.nodes[i].table, QueryConfig::default());
            self.run(i, q);
        }
    }

    /// FIND_NODE walk to the key, then ADD_PROVIDER to the k closest.
    fn provide(&mut self, origin: usize, key: &[u8]) -> Vec<PeerId> {
        let q = find_node_query(
            &self.nodes[origin].table,
            key.to_vec(),
            QueryConfig::default(),
        );
        let q = self.run(origin, q);
        let me = self.nodes[origin].id;
        let req = add_provider_request(key.to_vec(), me, vec![addr(origin as u32)]);
        let body = req.encode();
        let mut stored = Vec::new();
        for p in q.closest_peers() {
            let j = self.index[&p.id];
            if !self.nodes[j].alive {
                continue;
            }
            let decoded = Request::decode(&body).unwrap_or_else(|e| panic!("{e}"));
            let server = &mut self.nodes[j];
            let r = handle_request(&server.table, &mut server.store, &me, &decoded, self.now);
            assert_eq!(r, Ok(None), "ADD_PROVIDER has no answer");
            stored.push(p.id);
        }
        stored
    }
}

#[test]
fn simulated_network_finds_a_provider() {
    let mut net = Net::new(50);
    net.bootstrap_all();
    for n in &net.nodes {
        assert!(n.table.len() >= 10, "{} knows only {}", n.id, n.table.len());
    }
    // Kill a few nodes: lookups must route around them via timeouts.
    for i in [7, 13, 21, 34] {
        net.nodes[i].alive = false;
    }
    let key = namespace_key(RELAY_NAMESPACE);
    let provider = 11;
    let stored = net.provide(provider, &key);
    assert!(stored.len() >= K_VALUE - 4, "stored on {}", stored.len());

    // The k closest live nodes (by brute force) hold the record.
    let target = Key::from_bytes(&key);
    let mut live: Vec<PeerId> = net
        .nodes
        .iter()
        .filter(|n| n.alive && n.id != net.nodes[provider].id)
        .map(|n| n.id)
        .collect();
    live.sort_by_key(|p| Key::from_peer(p).distance(&target));
    let holders = live[..10].iter().filter(|p| stored.contains(p)).count();
    assert!(holders >= 9, "only {holders} of the 10 closest hold it");

    let before = net.now;
    let seeker = 42;
    let q = get_providers_query(
        &net.nodes[seeker].table,
        key.clone(),
        QueryConfig {
            max_providers: Some(1),
            ..QueryConfig::default()
        },
    );
    let q = net.run(seeker, q);
    let found: Vec<PeerId> = q.providers().iter().map(|p| p.id).collect();
    assert_eq!(found, vec![net.nodes[provider].id]);
    assert_eq!(q.providers()[0].addrs, vec![addr(provider as u32)]);
    assert!(net.now >= before);

    // After the TTL, the records are gone network-wide.
    let later = net.now + PROVIDER_RECORD_TTL;
    for n in &mut net.nodes {
        n.store.handle_timeout(later);
        assert!(n.store.providers(&key, later).is_empty());
    }
}

#[test]
fn simulated_lookup_times_out_dead_peers() {
    let mut net = Net::new(30);
    net.bootstrap_all();
    for n in net.nodes.iter_mut().skip(1) {
        n.alive = false;
    }
    let start = net.now;
    let q = find_node_query(
        &net.nodes[0].table,
        b"anything".to_vec(),
        QueryConfig::default(),
    );
    let q = net.run(0, q);
    assert!(q.is_finished());
    assert!(q.closest_peers().is_empty());
    // Every wave of α dead peers costs one peer timeout on the fake clock.
    assert!(net.now >= start + DEFAULT_PEER_TIMEOUT);
}

// ---------------------------------------------------------------- hostile input

fn arb_peer() -> impl Strategy<Value = Peer> {
    (
        prop_oneof![
            Just(peer(1).to_bytes()),
            prop::collection::vec(any::<u8>(), 0..48)
        ],
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..4),
        any::<i32>(),
    )
        .prop_map(|(id, addrs, connection)| Peer {
            id,
            addrs,
            connection,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![0..6i32, any::<i32>()],
        prop::collection::vec(any::<u8>(), 0..100),
        prop::collection::vec(arb_peer(), 0..5),
        prop::collection::vec(arb_peer(), 0..5),
    )
        .prop_map(|(t, key, closer, prov)| Message {
            r#type: t,
            key,
            closer_peers: closer,
            provider_peers: prov,
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let t0 = Instant::now();
        let mut table = KBucketsTable::new(peer(0));
        table.insert_or_update(peer(2), &[addr(2)], t0);
        let mut store = ProviderStore::default();
        if let Ok(req) = Request::decode(&body) {
            let _ = handle_request(&table, &mut store, &peer(1), &req, t0);
        }
        for ty in [MessageType::FindNode, MessageType::GetProviders, MessageType::Ping, MessageType::GetValue] {
            let _ = Response::decode(&body, ty);
        }
    }

    #[test]
    fn random_messages_are_handled_or_refused(m in arb_message()) {
        let t0 = Instant::now();
        let mut table = KBucketsTable::new(peer(0));
        let mut store = ProviderStore::default();
        let body = m.encode_to_vec();
        match Request::decode(&body) {
            Ok(req) => {
                let out = handle_request(&table, &mut store, &peer(1), &req, t0);
                if let Ok(Some(resp)) = out {
                    // Whatever we answer must decode on the other side.
                    prop_assert!(Response::decode(&resp.encode(), req.message_type()).is_ok());
                }
                if let Request::AddProvider { providers, .. } = &req {
                    prop_assert!(providers.len() <= MAX_PEERS_PER_MESSAGE);
                }
                prop_assert!(store.len() <= 1);
            }
            Err(_) => prop_assert!(store.is_empty()),
        }
        // Feeding the same message to a running query as a response never
        // panics either, and never grows it past its bound.
        table.insert_or_update(peer(1), &[], t0);
        let mut q = Query::new(QueryKind::GetProviders, b"k".to_vec(), peer(0), vec![kp(1)], QueryConfig::default());
        if let Some((p, _)) = q.poll_request(t0) {
            if let Ok(resp) = Response::decode(&body, MessageType::GetProviders) {
                q.handle_response(&p.id, &resp, t0);
            }
        }
        prop_assert!(q.num_candidates() <= QueryConfig::default().max_candidates);
    }
}
