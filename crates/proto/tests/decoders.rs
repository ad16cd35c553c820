//! Property tests of every decoder that reads peer input, through the public
//! APIs only: varint and frame decoding, the relay v2 hop/stop and v1
//! messages, identify (with its signed peer record), Kademlia (decode and
//! handle), AutoNAT (decode and the server's checks), the Noise handshake and
//! transport input, yamux headers and sessions, and multistream-select.
//!
//! Each property says two things: the decoder never panics whatever arrives,
//! and what it accepts is consistent (it re-encodes to the same thing, or it
//! is bounded by the limit it promises, or an error is sticky).
//!
//! Case count: `CIRCUIT_PROPTEST_CASES` (default 256 per decoder, so CI stays
//! fast). The long mode is ≥ 100 000 cases per decoder:
//!
//! ```sh
//! CIRCUIT_PROPTEST_CASES=100000 cargo test -p circuit-proto --test decoders --release
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use circuit_proto::kad::{self, KBucketsTable, ProviderStore, StoreConfig};
use circuit_proto::multistream;
use circuit_proto::noise::{self, Handshake};
use circuit_proto::yamux::{self, Header, Mode, Session, HEADER_LEN};
use circuit_proto::{autonat, relay, relay_v1};
use circuit_wire::frame::{self, FrameDecoder, FrameError};
use circuit_wire::pb;
use circuit_wire::varint;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use multiaddr::Multiaddr;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

/// Cases per property: `CIRCUIT_PROPTEST_CASES`, else a CI-sized default.
fn cases() -> u32 {
    std::env::var("CIRCUIT_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a failure of a 100 000-case run must not take forever.
        max_shrink_iters: 4096,
        // Tests live in `tests/`: no `lib.rs` to anchor a regressions file to.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One identity for every Noise case: generating keys is not what is tested.
fn identity() -> &'static Keypair {
    static K: OnceLock<Keypair> = OnceLock::new();
    K.get_or_init(Keypair::generate_ed25519)
}

/// Arbitrary bytes, biased towards the shapes decoders care about: empty,
/// short, protobuf-like tag/length runs, and long varint continuation runs.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..max),
        1 => vec(prop_oneof![Just(0x80u8), Just(0xffu8), Just(0x08u8), Just(0x12u8)], 0..max.min(64)),
    ]
}

/// `data` cut into pieces at the given points (any chunking of a byte stream).
fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if data.is_empty() {
                0
            } else {
                c % (data.len() + 1)
            }
        })
        .collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain([data.len()]) {
        out.push(data[prev..p].to_vec());
        prev = p;
    }
    out
}

/// A length-delimited frame around `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint::encode_usize(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A structurally plausible HopMessage: any type number (known or not), any
/// peer bytes, optional fields present or not.
fn hop_message() -> impl Strategy<Value = pb::relay::HopMessage> {
    (
        proptest::option::of(-2i32..6),
        proptest::option::of((vec(any::<u8>(), 0..48), vec(vec(any::<u8>(), 0..24), 0..3))),
        proptest::option::of((
            any::<u64>(),
            vec(vec(any::<u8>(), 0..24), 0..3),
            proptest::option::of(vec(any::<u8>(), 0..64)),
        )),
        proptest::option::of((
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
        )),
        proptest::option::of(prop_oneof![
            Just(0i32),
            Just(100),
            Just(200),
            Just(204),
            Just(270),
            Just(400),
            Just(401),
            -5i32..500
        ]),
    )
        .prop_map(|(ty, peer, rsv, limit, status)| pb::relay::HopMessage {
            r#type: ty,
            peer: peer.map(|(id, addrs)| pb::relay::Peer {
                id: Some(id),
                addrs,
            }),
            reservation: rsv.map(|(expire, addrs, voucher)| pb::relay::Reservation {
                expire: Some(expire),
                addrs,
                voucher,
            }),
            limit: limit.map(|(duration, data)| pb::relay::Limit { duration, data }),
            status,
        })
}

/// A HopMessage whose peer id is a real one (so the parser gets past the id check).
fn hop_with_real_peer() -> impl Strategy<Value = pb::relay::HopMessage> {
    (hop_message(), any::<bool>()).prop_map(|(mut m, keep)| {
        if keep {
            let id = PeerId::random().to_bytes();
            m.peer = Some(pb::relay::Peer {
                id: Some(id),
                addrs: m.peer.map(|p| p.addrs).unwrap_or_default(),
            });
        }
        m
    })
}

proptest! {
    #![proptest_config(config())]

    // ----- varint and length-delimited frames ------------------------------------

    /// A decoded varint is at most 10 bytes, inside the input, and minimal: it
    /// re-encodes to exactly the bytes it was read from.
    #[test]
    fn varint_decode(buf in bytes(16)) {
        match varint::decode_u64(&buf) {
            Ok(Some((v, n))) => {
                prop_assert!((1..=varint::MAX_LEN).contains(&n) && n <= buf.len());
                let mut re = Vec::new();
                varint::encode_u64(v, &mut re);
                prop_assert_eq!(&re[..], &buf[..n]);
                prop_assert_eq!(varint::encoded_len(v), n);
            }
            Ok(None) => prop_assert!(buf.len() < varint::MAX_LEN, "incomplete at {} bytes", buf.len()),
            Err(_) => {}
        }
    }

    /// The streaming frame decoder gives the same frames and the same verdict
    /// however the stream is chunked, never a frame over its maximum, and never
    /// holds more than what was pushed.
    #[test]
    fn frame_decoder_chunking(data in bytes(700), cuts in vec(any::<usize>(), 0..8), max in 0usize..300) {
        // Whole buffer at once, with the stateless splitter.
        let mut whole = Vec::new();
        let mut rest = &data[..];
        let whole_err = loop {
            match frame::split_frame(rest, max) {
                Ok(Some((body, used))) => {
                    prop_assert!(body.len() <= max);
                    prop_assert!(used > body.len() && used <= rest.len());
                    whole.push(body.to_vec());
                    rest = &rest[used..];
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // Chunked, with the decoder.
        let mut dec = FrameDecoder::new(max);
        let mut got = Vec::new();
        let mut err: Option<FrameError> = None;
        let mut pushed = 0;
        'outer: for c in chunks(&data, &cuts) {
            pushed += c.len();
            dec.push(&c);
            prop_assert!(dec.buffered_len() <= pushed);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.len() <= max);
                        got.push(f);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Sticky: asking again gives the same error.
                        prop_assert_eq!(dec.next_frame(), Err(e.clone()));
                        err = Some(e);
                        break 'outer;
                    }
                }
            }
        }
        if err.is_none() {
            prop_assert_eq!(&got, &whole);
            prop_assert_eq!(whole_err.is_some(), false, "splitter failed ({:?}) where the decoder waits", whole_err);
            prop_assert_eq!(dec.finish().is_ok(), rest.is_empty());
        } else {
            // The decoder stops at the first bad prefix; the splitter reaches it too.
            prop_assert!(whole_err.is_some());
            prop_assert!(got.len() <= whole.len());
            prop_assert_eq!(&got[..], &whole[..got.len()]);
        }
    }

    // ----- relay v2: hop and stop ------------------------------------------------

    /// Any bytes on a hop or stop stream: decoding and every parser return, and
    /// a refused request carries one of the spec's request errors.
    #[test]
    fn relay_hop_stop_bytes(body in bytes(600)) {
        let mut dec = FrameDecoder::new(relay::MAX_MESSAGE);
        dec.push(&framed(&body));
        if let Ok(Some(m)) = dec.next_message::<pb::relay::HopMessage>() {
            check_hop(&m)?;
        }
        if let Ok(m) = pb::relay::StopMessage::decode(body.as_slice()) {
            check_stop(&m)?;
        }
    }

    /// Structured hop messages (known and unknown types and statuses, real and
    /// bogus peer ids): the same, and an accepted request survives a
    /// re-encode/decode with the same meaning.
    #[test]
    fn relay_hop_structured(m in hop_with_real_peer()) {
        check_hop(&m)?;
        // Through the length-delimited framing the relay reads it with.
        let mut dec = FrameDecoder::new(relay::MAX_MESSAGE);
        dec.push(&frame::encode_to_vec(&m));
        if m.encoded_len() <= relay::MAX_MESSAGE {
            prop_assert_eq!(dec.next_message::<pb::relay::HopMessage>().ok().flatten(), Some(m.clone()));
        } else {
            prop_assert!(dec.next_frame().is_err(), "oversize frame accepted");
        }
        // The stop side sees the same fields under its own type numbers.
        let stop = pb::relay::StopMessage {
            r#type: m.r#type,
            peer: m.peer.clone(),
            limit: m.limit,
            status: m.status,
        };
        check_stop(&stop)?;
    }

    // ----- relay v1 --------------------------------------------------------------

    /// Relay v1 (`CircuitRelay`): parsing any message returns, a refusal is a v1
    /// status code, and `parse_status` only succeeds on SUCCESS.
    #[test]
    fn relay_v1_bytes(body in bytes(600)) {
        if let Ok(m) = pb::relay_v1::CircuitRelay::decode(body.as_slice()) {
            let _ = relay_v1::parse_request(&m);
            if relay_v1::parse_status(&m).is_ok() {
                prop_assert_eq!(m.code, Some(pb::relay_v1::Status::Success as i32));
            }
            let _ = relay_v1::code_name(m.code.unwrap_or(-1));
        }
    }

    // ----- identify --------------------------------------------------------------

    /// Identify: the message decodes or not; the fields a receiver interprets
    /// (public key, multiaddrs, signed peer record) never panic, and a peer
    /// record that verifies re-encodes to a record that verifies too.
    #[test]
    fn identify_bytes(body in bytes(1200)) {
        if let Ok(m) = pb::identify::Identify::decode(body.as_slice()) {
            check_identify(&m)?;
        }
    }

    /// Identify with plausible fields (random key bytes, random addresses,
    /// random envelopes) so the inner decoders get exercised, not just prost.
    #[test]
    fn identify_structured(
        key in proptest::option::of(bytes(80)),
        addrs in vec(bytes(40), 0..4),
        observed in proptest::option::of(bytes(40)),
        record in proptest::option::of(bytes(300)),
        protocols in vec("[ -~]{0,40}", 0..4),
    ) {
        let m = pb::identify::Identify {
            public_key: key,
            listen_addrs: addrs,
            protocols,
            observed_addr: observed,
            protocol_version: Some("ipfs/0.1.0".into()),
            agent_version: None,
            signed_peer_record: record,
        };
        check_identify(&m)?;
    }

    // ----- Kademlia ---------------------------------------------------------------

    /// Kademlia: decoding any body as a request or as a response of each type
    /// returns; decoded requests stay within the limits, and handling them
    /// (as a server with a small table and store) returns and keeps the store
    /// bounded.
    #[test]
    fn kad_decode_and_handle(body in bytes(1500), expected in 0i32..7) {
        let now = Instant::now();
        if let Ok(req) = kad::Request::decode(&body) {
            let source = PeerId::random();
            let table = KBucketsTable::new(PeerId::random());
            let mut store = ProviderStore::new(StoreConfig { max_records: 4, max_per_key: 2, ..StoreConfig::default() });
            let _ = kad::handle_request(&table, &mut store, &source, &req, now);
            let _ = kad::handle_request(&table, &mut store, &source, &req, now);
            // Re-encoding what we accepted decodes to the same request.
            prop_assert_eq!(kad::Request::decode(&req.encode()).ok(), Some(req));
        }
        if let Ok(ty) = pb::kad::MessageType::try_from(expected) {
            if let Ok(resp) = kad::Response::decode(&body, ty) {
                prop_assert!(resp.closer_peers().len() <= kad::MAX_PEERS_PER_MESSAGE);
                for p in resp.closer_peers() {
                    prop_assert!(p.addrs.len() <= kad::MAX_ADDRS_PER_PEER);
                }
            }
        }
    }

    /// Kademlia with well-formed envelopes around hostile contents: any type,
    /// long keys, providers with bogus or real ids.
    #[test]
    fn kad_structured(
        ty in -1i32..12,
        key in bytes(120),
        peers in vec((any::<bool>(), vec(bytes(30), 0..20), proptest::option::of(-1i32..6)), 0..70),
    ) {
        let source = PeerId::random();
        let msg = pb::kad::Message {
            r#type: ty,
            key,
            provider_peers: peers.iter().map(|(real, addrs, conn)| pb::kad::Peer {
                id: if *real { source.to_bytes() } else { addrs.first().cloned().unwrap_or_default() },
                addrs: addrs.clone(),
                connection: conn.unwrap_or(0),
            }).collect(),
            closer_peers: peers.iter().map(|(_, addrs, _)| pb::kad::Peer {
                id: PeerId::random().to_bytes(),
                addrs: addrs.clone(),
                connection: 0,
            }).collect(),
            ..Default::default()
        };
        let body = msg.encode_to_vec();
        let table = KBucketsTable::new(PeerId::random());
        let mut store = ProviderStore::new(StoreConfig { max_records: 2, max_per_key: 2, ..StoreConfig::default() });
        if let Ok(req) = kad::Request::decode(&body) {
            let _ = kad::handle_request(&table, &mut store, &source, &req, Instant::now());
        }
        if let Ok(t) = pb::kad::MessageType::try_from(ty) {
            let _ = kad::Response::decode(&body, t);
        }
    }

    // ----- AutoNAT -----------------------------------------------------------------

    /// AutoNAT: any body decodes or not; a server handling it (public and
    /// private-allowed, over a direct and a relayed observed address) answers
    /// with at most `max_addrs` addresses to dial, none of them relayed.
    #[test]
    fn autonat_bytes(body in bytes(1200)) {
        if let Ok(m) = autonat::decode(&body) {
            check_autonat(&m)?;
        }
    }

    /// AutoNAT with a well-formed DIAL from the right peer and hostile addresses.
    #[test]
    fn autonat_structured(addrs in vec(bytes(40), 0..24), ty in proptest::option::of(-1i32..4)) {
        let peer = PeerId::random();
        let m = pb::autonat::Message {
            r#type: ty,
            dial: Some(pb::autonat::Dial {
                peer: Some(pb::autonat::PeerInfo { id: Some(peer.to_bytes()), addrs }),
            }),
            dial_response: None,
        };
        check_autonat(&m)?;
        let _ = autonat::parse_dial_response(&m);
    }

    // ----- Noise ---------------------------------------------------------------------

    /// The Noise handshake payload: any bytes decode or not, and the fields a
    /// peer interprets (identity key, muxer list) never panic.
    #[test]
    fn noise_payload_bytes(body in bytes(600)) {
        if let Ok(p) = pb::noise::NoiseHandshakePayload::decode(body.as_slice()) {
            if let Some(k) = &p.identity_key {
                let _ = PublicKey::try_decode_protobuf(k);
            }
            let _ = p.extensions.map(|e| e.stream_muxers.len());
        }
    }

    /// A responder fed arbitrary bytes as message 1 (and then more as message
    /// 3), split anywhere: it errs or waits, never panics, never finishes.
    #[test]
    fn noise_responder_input(data in bytes(300), cuts in vec(any::<usize>(), 0..4), more in bytes(200)) {
        let mut hs = Handshake::responder(identity(), noise::Config::yamux()).expect("responder");
        let mut out = Vec::new();
        let mut failed = false;
        for c in chunks(&data, &cuts).into_iter().chain([more]) {
            if hs.handle_input(&c).is_err() {
                failed = true;
                // Poisoned from here on.
                prop_assert!(hs.handle_input(b"x").is_err());
                break;
            }
            hs.poll_transmit(&mut out);
        }
        // Message 3 must carry a valid identity signature: random bytes never do.
        prop_assert!(failed || !matches!(hs.stage(), noise::Stage::Finished | noise::Stage::Flushing));
        prop_assert!(out.len() <= 2 + noise::MAX_FRAME);
    }

    /// A real handshake whose message 2 or 3 is tampered with (one byte flipped,
    /// truncated or extended) fails on the receiving side; untouched, it completes.
    #[test]
    fn noise_tampered_handshake(which in 0usize..2, pos in any::<usize>(), flip in 1u8..=255, mode in 0u8..3) {
        let other = Keypair::generate_ed25519();
        let mut init = Handshake::initiator(&other, None, noise::Config::yamux()).expect("initiator");
        let mut resp = Handshake::responder(identity(), noise::Config::yamux()).expect("responder");
        let mut m1 = Vec::new();
        init.poll_transmit(&mut m1);
        resp.handle_input(&m1).expect("message 1");
        let mut m2 = Vec::new();
        resp.poll_transmit(&mut m2);
        // Flip a byte, truncate, or insert a byte inside the frame (fixing its
        // 2-byte length prefix, so the frame is complete but wrong).
        let tamper = |m: &mut Vec<u8>| match mode {
            0 => { let i = pos % m.len(); m[i] ^= flip; }
            1 => m.truncate(pos % m.len()),
            _ => {
                let i = 2 + pos % (m.len() - 1);
                m.insert(i, flip);
                let len = u16::from_be_bytes([m[0], m[1]]).wrapping_add(1);
                m[..2].copy_from_slice(&len.to_be_bytes());
            }
        };
        if which == 0 {
            tamper(&mut m2);
            let r = init.handle_input(&m2);
            // A message cut short (or made longer by its prefix) waits for more;
            // it must never be taken as message 2.
            prop_assert!(r.is_err() || init.stage() == noise::Stage::AwaitingMessage2, "tampered message 2 accepted");
            return Ok(());
        }
        init.handle_input(&m2).expect("message 2");
        let mut m3 = Vec::new();
        init.poll_transmit(&mut m3);
        tamper(&mut m3);
        let r = resp.handle_input(&m3);
        prop_assert!(r.is_err() || resp.stage() == noise::Stage::AwaitingMessage3, "tampered message 3 accepted");
    }

    /// A finished transport fed arbitrary ciphertext: decryption fails or
    /// waits; it never yields plaintext the peer did not seal.
    #[test]
    fn noise_transport_input(data in bytes(400), cuts in vec(any::<usize>(), 0..4)) {
        let (mut t, _) = transport_pair();
        let mut out = Vec::new();
        for c in chunks(&data, &cuts) {
            t.handle_input(&c);
            match t.read_plaintext(&mut out) {
                Ok(_) => prop_assert!(out.is_empty(), "forged plaintext accepted"),
                Err(_) => break,
            }
        }
    }

    // ----- yamux ---------------------------------------------------------------------

    /// Any 12 bytes as a yamux header: a header that decodes re-encodes to the same bytes.
    #[test]
    fn yamux_header(b in any::<[u8; HEADER_LEN]>()) {
        if let Ok(h) = Header::decode(&b) {
            prop_assert_eq!(h.encode(), b);
        }
    }

    /// A yamux session fed arbitrary input (random headers with plausible
    /// types, lengths and flags, and raw bytes), split anywhere: it errs or
    /// keeps going, its stream count stays within `max_streams`, an error is
    /// sticky, and its output per call stays bounded.
    #[test]
    fn yamux_session_input(
        frames in vec((0u8..2, 0u8..5, 0u16..16, 0u32..12, prop_oneof![0u32..64, any::<u32>()], vec(any::<u8>(), 0..48)), 0..24),
        raw in bytes(64),
        cuts in vec(any::<usize>(), 0..6),
        server in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for (ver, ty, flags, id, len, payload) in frames {
            input.push(ver);
            input.push(ty);
            input.extend_from_slice(&flags.to_be_bytes());
            input.extend_from_slice(&id.to_be_bytes());
            let n = if ty == 0 { (payload.len() as u32).min(len) } else { len };
            input.extend_from_slice(&n.to_be_bytes());
            if ty == 0 {
                input.extend_from_slice(&payload[..n as usize]);
            }
        }
        input.extend_from_slice(&raw);
        let cfg = yamux::Config { max_streams: 8, max_ack_backlog: 4, ..yamux::Config::default() };
        let mut s = Session::new(if server { Mode::Server } else { Mode::Client }, cfg);
        let now = Instant::now();
        let mut out = Vec::new();
        for c in chunks(&input, &cuts) {
            let r = s.handle_input(&c, now);
            while let Some(ev) = s.poll_event() {
                if let yamux::Event::Readable(id) = ev {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.stream_read(id, &mut buf) {
                        if n == 0 { break; }
                    }
                }
            }
            prop_assert!(s.num_streams() <= 8);
            out.clear();
            s.poll_transmit(&mut out, 1 << 20);
            if r.is_err() {
                prop_assert!(s.handle_input(b"\0", now).is_err(), "error not sticky");
                break;
            }
        }
        s.handle_timeout(now + Duration::from_secs(120));
    }

    // ----- multistream-select ------------------------------------------------------

    /// The listener fed arbitrary bytes (and proposals of plausible shape),
    /// split anywhere: it selects only a supported protocol, answers at most
    /// `MAX_ATTEMPTS` times, and an error is sticky.
    #[test]
    fn multistream_listener(
        proposals in vec(prop_oneof![Just("/noise".to_string()), Just("ls".to_string()), "[ -~]{0,30}"], 0..24),
        raw in bytes(100),
        header in any::<bool>(),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let mut input = Vec::new();
        if header {
            multistream::encode_message(multistream::PROTOCOL.as_bytes(), &mut input);
        }
        for p in &proposals {
            multistream::encode_message(p.as_bytes(), &mut input);
        }
        input.extend_from_slice(&raw);
        let supported = vec!["/noise".to_string(), "/yamux/1.0.0".to_string()];
        let mut l = multistream::Listener::new(supported.clone());
        let mut out = Vec::new();
        for c in chunks(&input, &cuts) {
            let r = l.handle_input(&c);
            l.poll_transmit(&mut out);
            if r.is_err() {
                prop_assert!(l.error().is_some());
                prop_assert!(l.handle_input(b"\x03na\n").is_err(), "error not sticky");
                break;
            }
            if let Some(p) = l.selected() {
                prop_assert!(supported.iter().any(|s| s == p));
                break;
            }
        }
        // Per-chunk answer count is loose; the byte volume is the real bound.
        let refusals = out.windows(4).filter(|w| w == b"\x03na\n").count();
        prop_assert!(refusals <= multistream::MAX_ATTEMPTS, "{} refusals", refusals);
        prop_assert!(out.len() <= (multistream::MAX_ATTEMPTS + 2) * (multistream::MAX_MESSAGE_LEN + 3));
        let _ = l.take_leftover();
    }

    /// The dialer fed arbitrary answers: it selects only what it proposed.
    #[test]
    fn multistream_dialer(raw in bytes(200), lazy in any::<bool>(), cuts in vec(any::<usize>(), 0..6), echo in any::<bool>()) {
        let mut input = Vec::new();
        if echo {
            multistream::encode_message(multistream::PROTOCOL.as_bytes(), &mut input);
            multistream::encode_message(b"/noise", &mut input);
        }
        input.extend_from_slice(&raw);
        let mut d = multistream::Dialer::new(vec!["/noise".into(), "/tls/1.0.0".into()], lazy);
        let mut out = Vec::new();
        d.poll_transmit(&mut out);
        for c in chunks(&input, &cuts) {
            if d.handle_input(&c).is_err() {
                prop_assert!(d.error().is_some());
                break;
            }
            d.poll_transmit(&mut out);
        }
        if let Some(p) = d.selected() {
            prop_assert!(p == "/noise" || p == "/tls/1.0.0");
        }
        if echo && d.is_confirmed() {
            prop_assert_eq!(d.selected(), Some("/noise"));
        }
    }
}

fn check_hop(m: &pb::relay::HopMessage) -> Result<(), TestCaseError> {
    use pb::relay::Status;
    match relay::parse_hop_request(m) {
        Ok(relay::HopRequest::Connect { target }) => {
            // Accepted only with a peer id that really parses.
            let id = m.peer.as_ref().and_then(|p| p.id.as_deref());
            prop_assert_eq!(id.and_then(|b| PeerId::from_bytes(b).ok()), Some(target));
        }
        Ok(_) => {}
        Err(s) => prop_assert!(
            matches!(s, Status::MalformedMessage | Status::UnexpectedMessage),
            "{:?}",
            s
        ),
    }
    let _ = relay::parse_connect_response(m);
    let me = PeerId::random();
    let _ = relay::parse_reserve_response(m, &me, &me, 0);
    let _ = relay::status_name(m.status);
    Ok(())
}

fn check_stop(m: &pb::relay::StopMessage) -> Result<(), TestCaseError> {
    use pb::relay::Status;
    if let Err(s) = relay::parse_stop_connect(m) {
        prop_assert!(
            matches!(s, Status::MalformedMessage | Status::UnexpectedMessage),
            "{:?}",
            s
        );
    }
    if relay::parse_stop_response(m).is_ok() {
        prop_assert_eq!(m.status, Some(Status::Ok as i32));
    }
    Ok(())
}

fn check_identify(m: &pb::identify::Identify) -> Result<(), TestCaseError> {
    if let Some(k) = &m.public_key {
        let _ = PublicKey::try_decode_protobuf(k);
    }
    for a in m.listen_addrs.iter().chain(m.observed_addr.iter()) {
        if let Ok(addr) = Multiaddr::try_from(a.clone()) {
            prop_assert_eq!(&addr.to_vec(), a);
        }
    }
    if let Some(r) = &m.signed_peer_record {
        let _ = circuit_wire::envelope::SignedEnvelope::from_bytes(r);
        // Random bytes never carry a valid signature.
        prop_assert!(circuit_wire::record::PeerRecord::verify(r).is_err());
    }
    Ok(())
}

fn check_autonat(m: &pb::autonat::Message) -> Result<(), TestCaseError> {
    let _ = autonat::parse_dial_request(m);
    let _ = autonat::parse_dial_response(m);
    let remote = m
        .dial
        .as_ref()
        .and_then(|d| d.peer.as_ref())
        .and_then(|p| p.id.as_deref())
        .and_then(|b| PeerId::from_bytes(b).ok())
        .unwrap_or_else(PeerId::random);
    let direct: Multiaddr = "/ip4/8.8.8.8/tcp/4001".parse().expect("addr");
    let relayed: Multiaddr = "/ip4/8.8.8.8/tcp/4001/p2p-circuit".parse().expect("addr");
    for allow_private in [false, true] {
        let cfg = autonat::ServerConfig {
            allow_private,
            max_addrs: 4,
            ..autonat::ServerConfig::default()
        };
        let mut server = autonat::Server::new(cfg);
        if let Ok(addrs) = server.handle_request(&remote, &direct, m, Instant::now()) {
            prop_assert!(
                !addrs.is_empty() && addrs.len() <= 4,
                "{} addrs",
                addrs.len()
            );
            for a in &addrs {
                prop_assert!(
                    !a.iter().any(|p| p == multiaddr::Protocol::P2pCircuit),
                    "{}",
                    a
                );
            }
        }
        prop_assert!(server
            .handle_request(&remote, &relayed, m, Instant::now())
            .is_err());
    }
    Ok(())
}

/// A finished pair of Noise transports (initiator, responder) with no data sent.
fn transport_pair() -> (noise::Transport, noise::Transport) {
    let other = Keypair::generate_ed25519();
    let mut init = Handshake::initiator(&other, None, noise::Config::yamux()).expect("initiator");
    let mut resp = Handshake::responder(identity(), noise::Config::yamux()).expect("responder");
    let mut buf = Vec::new();
    init.poll_transmit(&mut buf);
    resp.handle_input(&buf).expect("message 1");
    buf.clear();
    resp.poll_transmit(&mut buf);
    init.handle_input(&buf).expect("message 2");
    buf.clear();
    init.poll_transmit(&mut buf);
    resp.handle_input(&buf).expect("message 3");
    buf.clear();
    resp.poll_transmit(&mut buf);
    let (ti, _) = init.into_transport().expect("initiator transport");
    let (tr, _) = resp.into_transport().expect("responder transport");
    (tr, ti)
}
