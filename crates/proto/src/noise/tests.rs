//! In-memory tests of the Noise handshake and transport.

use circuit_wire::pb::noise::{NoiseExtensions, NoiseHandshakePayload};
use libp2p_identity::{Keypair, PeerId};
use prost::Message as _;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::handshake::{signed_payload, static_key_message};
use super::*;

/// libp2p-identity's own RSA-2048 PKCS#8 test key (it cannot generate RSA keys itself).
const RSA_2048_PK8: &[u8] = include_bytes!("testdata/rsa-2048.pk8");

fn rsa_keypair() -> Keypair {
    let mut der = RSA_2048_PK8.to_vec();
    Keypair::rsa_from_pkcs8(&mut der).expect("fixture is a valid RSA key")
}

/// Moves everything `from` wants to send into `to`, in chunks of sizes drawn from `rng`
/// (`max_chunk == 1` means byte by byte).
fn shuttle(
    from: &mut Handshake,
    to: &mut Handshake,
    rng: &mut StdRng,
    max_chunk: usize,
) -> Result<usize, Error> {
    let mut wire = Vec::new();
    let n = from.poll_transmit(&mut wire);
    for piece in chunks(&wire, rng, max_chunk) {
        to.handle_input(piece)?;
    }
    Ok(n)
}

/// Splits `data` into pieces of random length in `1..=max_chunk`.
fn chunks<'a>(data: &'a [u8], rng: &mut StdRng, max_chunk: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=max_chunk.min(rest.len()));
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// Runs a handshake to completion, returning the error of whichever side fails first.
/// Both ends of a finished handshake: (initiator, responder).
type Established = ((Transport, Outcome), (Transport, Outcome));

fn run(
    mut init: Handshake,
    mut resp: Handshake,
    rng: &mut StdRng,
    max_chunk: usize,
) -> Result<Established, Error> {
    for _ in 0..10 {
        if init.is_finished() && resp.is_finished() {
            break;
        }
        shuttle(&mut init, &mut resp, rng, max_chunk)?;
        shuttle(&mut resp, &mut init, rng, max_chunk)?;
    }
    Ok((init.into_transport()?, resp.into_transport()?))
}

fn pair(
    init_key: &Keypair,
    resp_key: &Keypair,
    init_cfg: Config,
    resp_cfg: Config,
    seed: u64,
    max_chunk: usize,
) -> Result<Established, Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let init = Handshake::initiator(init_key, Some(resp_key.public().to_peer_id()), init_cfg)?;
    let resp = Handshake::responder(resp_key, resp_cfg)?;
    run(init, resp, &mut rng, max_chunk)
}

/// Sends `data` from `a` to `b` through the wire in random chunks and returns what `b` decrypted.
fn send(
    a: &mut Transport,
    b: &mut Transport,
    data: &[u8],
    rng: &mut StdRng,
    max_chunk: usize,
) -> Vec<u8> {
    let mut wire = Vec::new();
    a.encrypt(data, &mut wire).unwrap();
    let mut got = Vec::new();
    for piece in chunks(&wire, rng, max_chunk) {
        b.handle_input(piece);
        b.read_plaintext(&mut got).unwrap();
    }
    assert_eq!(b.buffered_input(), 0);
    got
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[test]
fn handshake_and_data_both_ways_with_any_chunking() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    for (seed, max_chunk) in [(1, 1), (2, 7), (3, 100), (4, 70_000)] {
        let ((mut ti, oi), (mut tr, or)) =
            pair(&a, &b, Config::yamux(), Config::yamux(), seed, max_chunk).unwrap();
        assert_eq!(oi.remote_peer, b.public().to_peer_id());
        assert_eq!(oi.remote_key, b.public());
        assert_eq!(or.remote_peer, a.public().to_peer_id());
        assert_eq!(or.remote_key, a.public());
        assert!(ti.is_initiator() && !tr.is_initiator());

        let mut rng = StdRng::seed_from_u64(seed + 100);
        let small = b"hello over noise".to_vec();
        assert_eq!(send(&mut ti, &mut tr, &small, &mut rng, max_chunk), small);
        assert_eq!(send(&mut tr, &mut ti, &small, &mut rng, max_chunk), small);
        // Large chunking only for the big payload: 1-byte pieces of 1 MiB is slow for no extra value.
        let big = pattern(1 << 20);
        let big_chunk = max_chunk.max(4096);
        assert_eq!(send(&mut ti, &mut tr, &big, &mut rng, big_chunk), big);
        assert_eq!(send(&mut tr, &mut ti, &big, &mut rng, big_chunk), big);
    }
}

#[test]
fn large_message_is_split_into_max_frames() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        5,
        1000,
    )
    .unwrap();
    let data = pattern(2 * MAX_PLAINTEXT + 10);
    let mut wire = Vec::new();
    ti.encrypt(&data, &mut wire).unwrap();
    assert_eq!(wire.len(), data.len() + 3 * (2 + 16));
    assert_eq!(&wire[..2], &(MAX_FRAME as u16).to_be_bytes());
    let second = 2 + MAX_FRAME;
    assert_eq!(&wire[second..second + 2], &(MAX_FRAME as u16).to_be_bytes());
    let third = 2 * (2 + MAX_FRAME);
    assert_eq!(&wire[third..third + 2], &26u16.to_be_bytes());
    tr.handle_input(&wire);
    let mut out = Vec::new();
    assert_eq!(tr.read_plaintext(&mut out).unwrap(), data.len());
    assert_eq!(out, data);
}

#[test]
fn empty_messages() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        6,
        50,
    )
    .unwrap();
    // Encrypting nothing sends nothing.
    let mut wire = Vec::new();
    ti.encrypt(&[], &mut wire).unwrap();
    assert!(wire.is_empty());
    // A peer may still send a tag-only frame (empty plaintext): it decrypts to zero bytes, and the
    // data after it still decrypts (nonces stay in step).
    let mut frame = Vec::new();
    let start = ti.begin_frame(&mut frame);
    ti.seal_frame(&mut frame, start).unwrap();
    assert_eq!(frame.len(), 2 + TAG_LEN);
    assert_eq!(frame[..2], (TAG_LEN as u16).to_be_bytes());
    ti.encrypt(b"after", &mut frame).unwrap();
    tr.handle_input(&frame);
    let mut out = Vec::new();
    assert_eq!(tr.read_plaintext(&mut out).unwrap(), 5);
    assert_eq!(out, b"after");
    // Nothing buffered: reading again yields nothing.
    assert_eq!(tr.read_plaintext(&mut out).unwrap(), 0);
}

#[test]
fn pipelined_data_after_message_3_is_kept() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let mut init = Handshake::initiator(&a, None, Config::default()).unwrap();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    assert_eq!(init.stage(), Stage::AwaitingMessage2);
    assert_eq!(resp.stage(), Stage::AwaitingMessage1);

    let mut wire = Vec::new();
    init.poll_transmit(&mut wire);
    resp.handle_input(&wire).unwrap();
    assert_eq!(resp.stage(), Stage::AwaitingMessage3);
    wire.clear();
    resp.poll_transmit(&mut wire);
    init.handle_input(&wire).unwrap();
    assert_eq!(init.stage(), Stage::Flushing);
    assert!(!init.is_finished());
    assert!(matches!(
        init_into_transport_err(&a, &b),
        Error::NotFinished(Stage::AwaitingMessage2)
    ));

    // Initiator sends msg 3 and immediately pipelines two transport frames in the same write.
    wire.clear();
    init.poll_transmit(&mut wire);
    assert!(init.is_finished());
    assert_eq!(init.stage(), Stage::Finished);
    let (mut ti, oi) = init.into_transport().unwrap();
    assert_eq!(oi.muxer, None);
    ti.encrypt(b"early ", &mut wire).unwrap();
    ti.encrypt(b"data", &mut wire).unwrap();
    // Also a partial third frame, to check partial frames survive the handover too.
    let mut third = Vec::new();
    ti.encrypt(b"!", &mut third).unwrap();
    wire.extend_from_slice(&third[..5]);

    resp.handle_input(&wire).unwrap();
    assert!(resp.is_finished());
    let (mut tr, or) = resp.into_transport().unwrap();
    assert_eq!(or.remote_peer, a.public().to_peer_id());
    assert_eq!(tr.buffered_input(), wire.len() - first_frame_total(&wire));
    let mut out = Vec::new();
    assert_eq!(tr.read_plaintext(&mut out).unwrap(), 10);
    assert_eq!(out, b"early data");
    assert_eq!(tr.buffered_input(), 5);
    tr.handle_input(&third[5..]);
    tr.read_plaintext(&mut out).unwrap();
    assert_eq!(out, b"early data!");
}

/// Length of the first frame (msg 3) on the wire including its prefix.
fn first_frame_total(wire: &[u8]) -> usize {
    2 + usize::from(u16::from_be_bytes([wire[0], wire[1]]))
}

fn init_into_transport_err(a: &Keypair, b: &Keypair) -> Error {
    let hs = Handshake::initiator(a, Some(b.public().to_peer_id()), Config::default()).unwrap();
    hs.into_transport().unwrap_err()
}

#[test]
fn data_after_handshake_on_initiator_side_is_kept() {
    // The responder answers msg 3 instantly with data; if the initiator's glue still feeds the
    // handshake, those bytes reach the transport.
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let mut rng = StdRng::seed_from_u64(9);
    let mut init = Handshake::initiator(&a, None, Config::default()).unwrap();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    shuttle(&mut init, &mut resp, &mut rng, 10).unwrap();
    shuttle(&mut resp, &mut init, &mut rng, 10).unwrap();
    shuttle(&mut init, &mut resp, &mut rng, 10).unwrap();
    let (mut tr, _) = resp.into_transport().unwrap();
    let mut wire = Vec::new();
    tr.encrypt(b"pong", &mut wire).unwrap();
    init.handle_input(&wire).unwrap();
    let (mut ti, _) = init.into_transport().unwrap();
    let mut out = Vec::new();
    ti.read_plaintext(&mut out).unwrap();
    assert_eq!(out, b"pong");
}

#[test]
fn all_identity_key_types_authenticate() {
    let keys = [
        Keypair::generate_ed25519(),
        Keypair::generate_secp256k1(),
        Keypair::generate_ecdsa(),
        rsa_keypair(),
    ];
    for (i, a) in keys.iter().enumerate() {
        let b = &keys[(i + 1) % keys.len()];
        let ((mut ti, oi), (mut tr, or)) =
            pair(a, b, Config::default(), Config::default(), i as u64, 300).unwrap();
        assert_eq!(
            oi.remote_peer,
            b.public().to_peer_id(),
            "key type {:?}",
            b.key_type()
        );
        assert_eq!(
            or.remote_peer,
            a.public().to_peer_id(),
            "key type {:?}",
            a.key_type()
        );
        let mut rng = StdRng::seed_from_u64(i as u64);
        assert_eq!(send(&mut ti, &mut tr, b"x", &mut rng, 3), b"x");
    }
    // RSA peer IDs are sha256 multihashes (`Qm…`), exercising the long-key path.
    assert!(rsa_keypair()
        .public()
        .to_peer_id()
        .to_base58()
        .starts_with("Qm"));
}

#[test]
fn peer_id_mismatch_is_rejected() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let other = PeerId::random();
    let mut rng = StdRng::seed_from_u64(11);
    let init = Handshake::initiator(&a, Some(other), Config::default()).unwrap();
    let resp = Handshake::responder(&b, Config::default()).unwrap();
    match run(init, resp, &mut rng, 64) {
        Err(Error::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, other);
            assert_eq!(actual, b.public().to_peer_id());
        }
        other => panic!("expected PeerIdMismatch, got {:?}", other.map(|_| ())),
    }
}

/// Runs a handshake where the responder sends a payload built by `forge`; returns the initiator's
/// verdict.
fn forged_responder(
    forge: impl FnOnce(&[u8], &[String]) -> Result<Vec<u8>, Error>,
) -> Result<(), Error> {
    let a = Keypair::generate_ed25519();
    let mut rng = StdRng::seed_from_u64(12);
    let init = Handshake::initiator(&a, None, Config::default()).unwrap();
    let resp = Handshake::new(false, None, Vec::new(), forge).unwrap();
    run(init, resp, &mut rng, 64).map(|_| ())
}

#[test]
fn tampered_signature_is_rejected() {
    let b = Keypair::generate_ed25519();
    let err = forged_responder(|static_pub, muxers| {
        let mut bytes = signed_payload(&b, static_pub, muxers)?;
        let mut msg = NoiseHandshakePayload::decode(&bytes[..]).unwrap();
        if let Some(sig) = msg.identity_sig.as_mut() {
            sig[0] ^= 1;
        }
        bytes = msg.encode_to_vec();
        Ok(bytes)
    })
    .unwrap_err();
    assert!(matches!(err, Error::BadSignature), "{err:?}");
}

#[test]
fn signature_over_another_static_key_is_rejected() {
    // A valid signature, but over a different X25519 key than the one used in the handshake.
    let b = Keypair::generate_ed25519();
    let err =
        forged_responder(|_static_pub, muxers| signed_payload(&b, &[7u8; 32], muxers)).unwrap_err();
    assert!(matches!(err, Error::BadSignature), "{err:?}");
}

#[test]
fn signature_by_another_identity_is_rejected() {
    let b = Keypair::generate_ed25519();
    let c = Keypair::generate_ed25519();
    let err = forged_responder(|static_pub, _| {
        let msg = NoiseHandshakePayload {
            identity_key: Some(b.public().encode_protobuf()),
            identity_sig: Some(c.sign(&static_key_message(static_pub)).unwrap()),
            extensions: None,
        };
        Ok(msg.encode_to_vec())
    })
    .unwrap_err();
    assert!(matches!(err, Error::BadSignature), "{err:?}");
}

#[test]
fn missing_identity_and_bad_payloads_are_rejected() {
    let err = forged_responder(|_, _| Ok(Vec::new())).unwrap_err();
    assert!(matches!(err, Error::MissingIdentity), "{err:?}");

    let b = Keypair::generate_ed25519();
    let err = forged_responder(|static_pub, _| {
        let msg = NoiseHandshakePayload {
            identity_key: Some(b.public().encode_protobuf()),
            identity_sig: None,
            extensions: None,
        };
        let _ = static_pub;
        Ok(msg.encode_to_vec())
    })
    .unwrap_err();
    assert!(matches!(err, Error::MissingIdentity), "{err:?}");

    let err = forged_responder(|static_pub, _| {
        let msg = NoiseHandshakePayload {
            identity_key: Some(vec![0x08, 0x01, 0x12, 0x03, 1, 2, 3]),
            identity_sig: Some(b.sign(&static_key_message(static_pub)).unwrap()),
            extensions: None,
        };
        Ok(msg.encode_to_vec())
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidKey(_)), "{err:?}");

    // Field 1 announced with a length running past the end: not a protobuf.
    let err = forged_responder(|_, _| Ok(vec![0x0a, 0x50, 1])).unwrap_err();
    assert!(matches!(err, Error::BadPayload(_)), "{err:?}");
}

#[test]
fn tampered_handshake_message_is_rejected_and_poisons() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let mut init = Handshake::initiator(&a, None, Config::default()).unwrap();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    let mut wire = Vec::new();
    init.poll_transmit(&mut wire);
    resp.handle_input(&wire).unwrap();
    wire.clear();
    resp.poll_transmit(&mut wire);
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    assert!(matches!(init.handle_input(&wire), Err(Error::Decrypt)));
    assert_eq!(init.stage(), Stage::Failed);
    assert!(!init.is_finished());
    assert!(matches!(init.handle_input(b"x"), Err(Error::Poisoned)));
    let mut out = Vec::new();
    assert_eq!(init.poll_transmit(&mut out), 0);
}

#[test]
fn truncated_handshake_message_is_malformed() {
    let b = Keypair::generate_ed25519();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    // Msg 1 must hold a 32-byte ephemeral key.
    let err = resp.handle_input(&[0, 3, 1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::Malformed), "{err:?}");
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        13,
        1000,
    )
    .unwrap();
    let mut wire = Vec::new();
    ti.encrypt(b"first", &mut wire).unwrap();
    let first_len = wire.len();
    ti.encrypt(b"secret", &mut wire).unwrap();
    wire[first_len + 4] ^= 1;
    tr.handle_input(&wire);
    let mut out = Vec::new();
    assert!(matches!(tr.read_plaintext(&mut out), Err(Error::Decrypt)));
    // The authentic frame before the bad one was delivered; nothing of the bad one.
    assert_eq!(out, b"first");

    // A frame shorter than the tag can never be authentic.
    let ((_, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        14,
        1000,
    )
    .unwrap();
    tr.handle_input(&[0, 3, 1, 2, 3]);
    assert!(matches!(
        tr.read_plaintext(&mut Vec::new()),
        Err(Error::Decrypt)
    ));
}

#[test]
fn replayed_frame_is_rejected() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        15,
        1000,
    )
    .unwrap();
    let mut wire = Vec::new();
    ti.encrypt(b"once", &mut wire).unwrap();
    let mut out = Vec::new();
    tr.handle_input(&wire);
    tr.read_plaintext(&mut out).unwrap();
    tr.handle_input(&wire);
    assert!(matches!(tr.read_plaintext(&mut out), Err(Error::Decrypt)));
}

#[test]
fn muxer_negotiation() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let cfg = |m: &[&str]| Config {
        muxers: m.iter().map(|s| s.to_string()).collect(),
    };

    // Both offer yamux.
    let ((_, oi), (_, or)) = pair(&a, &b, Config::yamux(), Config::yamux(), 20, 50).unwrap();
    assert_eq!(oi.muxer.as_deref(), Some(YAMUX_PROTOCOL));
    assert_eq!(or.muxer.as_deref(), Some(YAMUX_PROTOCOL));
    assert_eq!(oi.remote_muxers, vec![YAMUX_PROTOCOL.to_string()]);
    assert_eq!(or.remote_muxers, vec![YAMUX_PROTOCOL.to_string()]);

    // The initiator's preference wins over the responder's order.
    let ((_, oi), (_, or)) = pair(
        &a,
        &b,
        cfg(&["/yamux/1.0.0", "/mplex/6.7.0"]),
        cfg(&["/mplex/6.7.0", "/yamux/1.0.0"]),
        21,
        50,
    )
    .unwrap();
    assert_eq!(oi.muxer.as_deref(), Some("/yamux/1.0.0"));
    assert_eq!(or.muxer.as_deref(), Some("/yamux/1.0.0"));
    let ((_, oi), (_, or)) = pair(
        &a,
        &b,
        cfg(&["/mplex/6.7.0", "/yamux/1.0.0"]),
        cfg(&["/yamux/1.0.0", "/mplex/6.7.0"]),
        22,
        50,
    )
    .unwrap();
    assert_eq!(oi.muxer.as_deref(), Some("/mplex/6.7.0"));
    assert_eq!(or.muxer.as_deref(), Some("/mplex/6.7.0"));

    // Either side offering none: no inlined muxer, both agree on falling back.
    for (ci, cr) in [
        (Config::yamux(), Config::default()),
        (Config::default(), Config::yamux()),
    ] {
        let ((_, oi), (_, or)) = pair(&a, &b, ci.clone(), cr.clone(), 23, 50).unwrap();
        assert_eq!(oi.muxer, None);
        assert_eq!(or.muxer, None);
        assert_eq!(oi.remote_muxers, cr.muxers);
        assert_eq!(or.remote_muxers, ci.muxers);
    }

    // Both offer, no overlap: the spec requires failing (the initiator detects it first).
    let err = pair(&a, &b, cfg(&["/mplex/6.7.0"]), Config::yamux(), 24, 50).unwrap_err();
    assert!(matches!(err, Error::NoCommonMuxer { .. }), "{err:?}");
}

#[test]
fn responder_detects_no_common_muxer_too() {
    // An initiator that ignores overlap (forged payload) still gets rejected by our responder.
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let mut rng = StdRng::seed_from_u64(25);
    let mut init = Handshake::new(true, None, Vec::new(), |static_pub, _| {
        let mut msg =
            NoiseHandshakePayload::decode(&signed_payload(&a, static_pub, &[])?[..]).unwrap();
        msg.extensions = Some(NoiseExtensions {
            webtransport_certhashes: Vec::new(),
            stream_muxers: vec!["/mplex/6.7.0".into()],
        });
        Ok(msg.encode_to_vec())
    })
    .unwrap();
    let mut resp = Handshake::responder(&b, Config::yamux()).unwrap();
    shuttle(&mut init, &mut resp, &mut rng, 9).unwrap();
    shuttle(&mut resp, &mut init, &mut rng, 9).unwrap();
    let err = shuttle(&mut init, &mut resp, &mut rng, 9).unwrap_err();
    assert!(matches!(err, Error::NoCommonMuxer { .. }), "{err:?}");
}

#[test]
fn oversized_frame_length_does_not_allocate() {
    // A maximal length prefix with only a few body bytes: buffered, nothing reserved for the rest.
    let ((_, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        30,
        1000,
    )
    .unwrap();
    tr.handle_input(&[0xff, 0xff, 1, 2, 3]);
    let mut out = Vec::new();
    assert_eq!(tr.read_plaintext(&mut out).unwrap(), 0);
    assert_eq!(out.capacity(), 0);
    assert_eq!(tr.buffered_input(), 5);
    assert!(tr.inbuf_capacity_for_test() < 1024);

    let b = Keypair::generate_ed25519();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    resp.handle_input(&[0xff, 0xff, 1, 2, 3]).unwrap();
    assert_eq!(resp.stage(), Stage::AwaitingMessage1);
    assert!(resp.inbuf_capacity_for_test() < 1024);
}

#[test]
fn input_buffer_is_compacted() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        31,
        1000,
    )
    .unwrap();
    // Stream many frames with a partial frame always pending: capacity must stay bounded.
    let mut rng = StdRng::seed_from_u64(31);
    let mut pending = Vec::new();
    let mut got = Vec::new();
    let mut sent = Vec::new();
    for i in 0..2000 {
        let msg = pattern(1000 + i % 500);
        ti.encrypt(&msg, &mut pending).unwrap();
        sent.extend_from_slice(&msg);
        let cut = rng.gen_range(1..=pending.len());
        tr.handle_input(&pending[..cut]);
        pending.drain(..cut);
        tr.read_plaintext(&mut got).unwrap();
        assert!(
            tr.inbuf_capacity_for_test() <= 64 * 1024,
            "capacity grew: {}",
            tr.inbuf_capacity_for_test()
        );
    }
    tr.handle_input(&pending);
    tr.read_plaintext(&mut got).unwrap();
    assert_eq!(got, sent);
}

#[test]
fn oversized_payload_fails_early() {
    let a = Keypair::generate_ed25519();
    let muxers = vec!["m".repeat(1000); 70];
    let err = Handshake::initiator(&a, None, Config { muxers }).unwrap_err();
    assert!(matches!(err, Error::FrameTooLarge), "{err:?}");
}

#[test]
fn message_1_has_empty_payload_and_stage_names() {
    let a = Keypair::generate_ed25519();
    let mut init = Handshake::initiator(&a, None, Config::yamux()).unwrap();
    let mut wire = Vec::new();
    assert_eq!(init.poll_transmit(&mut wire), 2 + 32);
    // Exactly the ephemeral key: no payload, no extensions.
    assert_eq!(&wire[..2], &32u16.to_be_bytes());
    assert_eq!(init.poll_transmit(&mut wire), 0);
    assert_eq!(
        init.stage().to_string(),
        "waiting for message 2 from responder"
    );
    assert_eq!(
        Stage::AwaitingMessage1.to_string(),
        "waiting for message 1 from initiator"
    );
    assert_eq!(
        Stage::AwaitingMessage3.to_string(),
        "waiting for message 3 from initiator"
    );
}

#[test]
fn error_is_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
    assert_send_sync::<Handshake>();
    assert_send_sync::<Transport>();
}

#[test]
fn finished_handshake_bounds_extra_input() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let mut rng = StdRng::seed_from_u64(40);
    let mut init = Handshake::initiator(&a, None, Config::default()).unwrap();
    let mut resp = Handshake::responder(&b, Config::default()).unwrap();
    shuttle(&mut init, &mut resp, &mut rng, 64).unwrap();
    shuttle(&mut resp, &mut init, &mut rng, 64).unwrap();
    shuttle(&mut init, &mut resp, &mut rng, 64).unwrap();
    assert!(resp.is_finished());
    let chunk = vec![0u8; MAX_FRAME];
    let mut accepted = 0;
    let err = loop {
        match resp.handle_input(&chunk) {
            Ok(()) => accepted += chunk.len(),
            Err(e) => break e,
        }
        assert!(accepted <= 8 * MAX_FRAME, "no bound enforced");
    };
    assert!(matches!(err, Error::BufferFull), "{err:?}");
    // The bound is not a failure of the handshake itself: the transport gets what was accepted.
    let (tr, _) = resp.into_transport().unwrap();
    assert_eq!(tr.buffered_input(), accepted);
}

/// Runs a bare `Noise_XX_25519_ChaChaPoly_SHA256` handshake between two snow states (no libp2p
/// payloads) and returns them finished: (initiator, responder).
fn snow_pair() -> (snow::HandshakeState, snow::HandshakeState) {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(&ki.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m, mut p) = (vec![0u8; MAX_FRAME], vec![0u8; MAX_FRAME]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    assert!(i.is_handshake_finished() && r.is_handshake_finished());
    (i, r)
}

#[test]
fn transport_interoperates_with_snow_transport_state() {
    // Our transport, with each built-in AEAD implementation, against snow's reference
    // TransportState (RustCrypto), both roles, both directions, sizes up to a maximal frame:
    // proves nonce layout, key order and framing match what every snow-based peer
    // (rust-libp2p) speaks.
    for (&imp, ours_is_initiator) in crate::noise::aead::Implementation::available()
        .iter()
        .flat_map(|imp| [(imp, true), (imp, false)])
    {
        let (mut i, mut r) = snow_pair();
        let (ours_hs, theirs_hs) = if ours_is_initiator {
            (&mut i, r)
        } else {
            (&mut r, i)
        };
        let (k1, k2) = ours_hs.dangerously_get_raw_split();
        let mut ours = Transport::with_implementation(imp, ours_is_initiator, &k1, &k2, Vec::new());
        assert_eq!(ours.aead_implementation(), imp);
        let mut theirs = theirs_hs.into_transport_mode().unwrap();
        for len in [0usize, 1, 1000, MAX_PLAINTEXT] {
            let msg = pattern(len);
            // ours → theirs
            let mut wire = Vec::new();
            let start = ours.begin_frame(&mut wire);
            wire.extend_from_slice(&msg);
            ours.seal_frame(&mut wire, start).unwrap();
            assert_eq!(wire.len(), 2 + len + TAG_LEN);
            let mut plain = vec![0u8; MAX_FRAME];
            let n = theirs.read_message(&wire[2..], &mut plain).unwrap();
            assert_eq!(&plain[..n], &msg[..]);
            // theirs → ours, received through the zero-copy input path
            let mut frame = vec![0u8; MAX_FRAME];
            let n = theirs.write_message(&msg, &mut frame).unwrap();
            let mut wire = (n as u16).to_be_bytes().to_vec();
            wire.extend_from_slice(&frame[..n]);
            let space = ours.input_space(wire.len());
            space[..wire.len()].copy_from_slice(&wire);
            ours.commit_input(wire.len());
            assert_eq!(ours.decrypt_next().unwrap(), Some(&msg[..]));
            assert_eq!(ours.decrypt_next().unwrap(), None);
        }
    }
}

/// A responder transport and `frames` messages (sizes from `size`) its initiator
/// encrypted for it: (responder, wire bytes, plaintext sent, the rng for more choices).
fn encrypted_frames(
    seed: u64,
    frames: usize,
    size: impl Fn(usize, &mut StdRng) -> usize,
) -> (Transport, Vec<u8>, Vec<u8>, StdRng) {
    let ((mut ti, _), (tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        seed,
        1000,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for i in 0..frames {
        let msg = pattern(size(i, &mut rng));
        ti.encrypt(&msg, &mut wire).unwrap();
        sent.extend_from_slice(&msg);
    }
    (tr, wire, sent, rng)
}

#[test]
fn zero_copy_input_handles_many_frames_per_read_and_partial_frames() {
    let (mut tr, wire, sent, mut rng) = encrypted_frames(40, 300, |i, rng| {
        rng.gen_range(0..=if i % 7 == 0 { MAX_PLAINTEXT } else { 3000 })
    });
    let mut got = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let space = tr.input_space(64 * 1024);
        assert!(space.len() >= 64 * 1024);
        let n = rng.gen_range(1..=space.len()).min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        tr.commit_input(n);
        rest = &rest[n..];
        while let Some(p) = tr.decrypt_next().unwrap() {
            got.extend_from_slice(p);
        }
        // One partial frame plus a read at most: the buffer stays bounded.
        assert!(tr.inbuf_capacity_for_test() <= 4 * (MAX_FRAME + 2));
    }
    assert_eq!(got, sent);
    assert_eq!(tr.buffered_input(), 0);
}

#[test]
fn idle_input_buffer_is_released_and_busy_one_kept() {
    let ((mut ti, _), (mut tr, _)) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        41,
        1000,
    )
    .unwrap();
    let mut wire = Vec::new();
    ti.encrypt(&pattern(MAX_PLAINTEXT), &mut wire).unwrap();
    let space = tr.input_space(wire.len());
    space[..wire.len()].copy_from_slice(&wire);
    tr.commit_input(wire.len());
    assert!(tr.decrypt_next().unwrap().is_some());
    // A large read: the buffer is the hot path's, kept.
    assert!(!tr.release_if_idle());
    assert!(tr.inbuf_capacity_for_test() >= MAX_FRAME);
    // A small read (a keep-alive ping): freed once drained.
    wire.clear();
    ti.encrypt(b"ping", &mut wire).unwrap();
    let space = tr.input_space(64 * 1024);
    space[..wire.len()].copy_from_slice(&wire);
    tr.commit_input(wire.len());
    assert_eq!(tr.decrypt_next().unwrap(), Some(&b"ping"[..]));
    assert!(tr.release_if_idle());
    assert_eq!(tr.inbuf_capacity_for_test(), 0);
    // And it still works afterwards.
    wire.clear();
    ti.encrypt(b"again", &mut wire).unwrap();
    tr.handle_input(&wire);
    let mut out = Vec::new();
    tr.read_plaintext(&mut out).unwrap();
    assert_eq!(out, b"again");
}

#[test]
fn send_nonce_exhaustion_is_an_error_and_emits_nothing() {
    let ((mut ti, _), _) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        42,
        1000,
    )
    .unwrap();
    ti.set_send_nonce_for_test(u64::MAX - 1);
    let mut wire = Vec::new();
    ti.encrypt(b"last", &mut wire).unwrap();
    let len = wire.len();
    assert!(matches!(
        ti.encrypt(b"one too many", &mut wire),
        Err(Error::NonceExhausted)
    ));
    assert_eq!(wire.len(), len);
}

#[test]
fn oversized_plaintext_is_refused_by_seal_frame() {
    let ((mut ti, _), _) = pair(
        &Keypair::generate_ed25519(),
        &Keypair::generate_ed25519(),
        Config::default(),
        Config::default(),
        43,
        1000,
    )
    .unwrap();
    let mut out = vec![9u8; 3];
    let start = ti.begin_frame(&mut out);
    out.extend_from_slice(&pattern(MAX_PLAINTEXT + 1));
    assert!(matches!(
        ti.seal_frame(&mut out, start),
        Err(Error::FrameTooLarge)
    ));
    assert_eq!(out, vec![9u8; 3]);
}

#[test]
fn decrypted_frames_are_taken_whole_and_split_without_copy() {
    let (mut tr, wire, sent, mut rng) =
        encrypted_frames(41, 200, |_, rng| rng.gen_range(1..=MAX_PLAINTEXT));
    let mut got = Vec::new();
    // Pieces kept alive across reads, as a slow stream would: the next reads must not
    // overwrite them.
    let mut held: std::collections::VecDeque<bytes::BytesMut> = Default::default();
    let mut ranges = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() || !held.is_empty() {
        if !rest.is_empty() {
            let buf = tr.input_buf(64 * 1024);
            let spare = buf.capacity() - buf.len();
            assert!(spare >= 4 * 1024);
            let n = rng.gen_range(1..=spare).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            tr.note_input(n);
            rest = &rest[n..];
            assert!(tr.inbuf_capacity_for_test() <= 4 * (MAX_FRAME + 2));
        }
        ranges.clear();
        tr.decrypt_buffered(&mut ranges).unwrap();
        let mut frames = tr.take_decrypted();
        let base = frames.as_ptr() as usize;
        let mut pos = 0;
        for r in ranges.drain(..) {
            bytes::Buf::advance(&mut frames, r.start - pos);
            let piece = frames.split_to(r.len());
            assert_eq!(piece.as_ptr() as usize, base + r.start, "no copy");
            pos = r.end;
            held.push_back(piece);
        }
        // Consume some of what is held (up to all of it at the end).
        let keep = if rest.is_empty() {
            0
        } else {
            rng.gen_range(0..4)
        };
        while held.len() > keep {
            got.extend_from_slice(&held.pop_front().unwrap());
        }
    }
    assert_eq!(got.len(), sent.len());
    assert!(got == sent);
    assert_eq!(tr.buffered_input(), 0);
}
