//! Bad input against a running node with the relay mounted: raw TCP bytes
//! before and during the upgrade, malformed hop requests on a real yamux
//! stream, stalled peers, a dial that names the wrong peer id. After each, a
//! fresh client must still be served (ping works).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use circuit_net::relay_client::HOP_PROTOCOL;
use circuit_net::upgrade::{Stage, UpgradeError};
use circuit_net::{framed, Connection, DialError, Keypair, Multiaddr, Node, NodeEvent, Stream};
use circuit_proto::noise;
use circuit_proto::relay::{self as core, Limit};
use circuit_relay::{Relay, RelayConfig};
use circuit_wire::pb::relay::{hop_message, HopMessage, Peer, Status};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// The relay under attack: short upgrade deadlines and a short hop stream timeout.
async fn target_relay() -> (Node, Relay, Multiaddr, std::net::SocketAddr) {
    let (n, r, addr) = relay_with(
        short_timeouts(),
        RelayConfig {
            stream_timeout: Duration::from_millis(800),
            limit: Limit::UNLIMITED,
            ..Default::default()
        },
    )
    .await;
    let sock = tcp_socket_addr(&addr);
    (n, r, addr, sock)
}

fn tcp_socket_addr(addr: &Multiaddr) -> std::net::SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            multiaddr::Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            multiaddr::Protocol::Tcp(n) => port = Some(n),
            _ => {}
        }
    }
    std::net::SocketAddr::new(ip.unwrap(), port.unwrap())
}

/// How a raw socket ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// Orderly FIN.
    Eof,
    /// Reset or other error.
    Error,
}

/// Reads until the node closes the socket; fails the test after `secs`.
async fn read_until_closed(sock: &mut TcpStream, secs: f64) -> (Vec<u8>, Closed) {
    within(secs, "node closes the socket", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => return (got, Closed::Eof),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, Closed::Error),
            }
        }
    })
    .await
}

/// Waits for the node's `HandshakeFailed` for the connection from local port `port`.
async fn handshake_failed(
    events: &mut broadcast::Receiver<NodeEvent>,
    port: u16,
) -> (Stage, String) {
    within(3.0, "HandshakeFailed event", async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::HandshakeFailed {
                    remote_addr,
                    stage,
                    error,
                }) if remote_addr
                    .iter()
                    .any(|p| p == multiaddr::Protocol::Tcp(port)) =>
                {
                    return (stage, error)
                }
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
}

/// A multistream-select message: varint length, text, newline.
fn ms(text: &str) -> Vec<u8> {
    let len = text.len() + 1;
    assert!(len < 128);
    let mut v = vec![len as u8];
    v.extend_from_slice(text.as_bytes());
    v.push(b'\n');
    v
}

#[tokio::test]
async fn garbage_before_multistream_is_dropped() {
    init_logs();
    let (node, _r, addr, sock_addr) = target_relay().await;
    let mut events = node.events();
    let mut sock = TcpStream::connect(sock_addr).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let t0 = Instant::now();
    let mut garbage = b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec();
    garbage.extend((0..200u32).map(|i| (i * 37 + 11) as u8));
    sock.write_all(&garbage).await.unwrap();
    let (_, _) = read_until_closed(&mut sock, 3.0).await;
    // Dropped for the garbage itself, not by the negotiation deadline.
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "took {:?}",
        t0.elapsed()
    );
    let (stage, error) = handshake_failed(&mut events, port).await;
    assert_eq!(stage, Stage::SecurityNegotiation, "{error}");
    assert_eq!(node.num_connections(), 0);
    fresh_client_pings(&addr).await;
}

#[tokio::test]
async fn truncated_multistream_frame_then_eof_is_dropped() {
    init_logs();
    let (node, _r, addr, sock_addr) = target_relay().await;
    let mut events = node.events();
    let mut sock = TcpStream::connect(sock_addr).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    // The header announces 19 bytes; only 12 come, then our write side closes.
    let whole = ms("/multistream/1.0.0");
    sock.write_all(&whole[..13]).await.unwrap();
    sock.shutdown().await.unwrap();
    let (got, _) = read_until_closed(&mut sock, 3.0).await;
    // Whatever the node said, it never agreed to a protocol.
    assert!(!contains(&got, b"/noise\n"));
    let (stage, error) = handshake_failed(&mut events, port).await;
    assert_eq!(stage, Stage::SecurityNegotiation, "{error}");
    fresh_client_pings(&addr).await;
}

#[tokio::test]
async fn endless_unsupported_proposals_are_cut_off() {
    init_logs();
    let (_node, _r, addr, sock_addr) = target_relay().await;
    let mut sock = TcpStream::connect(sock_addr).await.unwrap();
    let header = ms("/multistream/1.0.0");
    sock.write_all(&header).await.unwrap();
    let mut echo = vec![0u8; header.len()];
    within(2.0, "header", sock.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(echo, header);
    // One proposal at a time, each answered, until the node gives up on us
    // (one at a time: a close with our unread bytes pending would be a TCP
    // reset that can swallow the node's last answers).
    let na = ms("na");
    let mut answers = 0;
    for i in 0..100 {
        if sock.write_all(&ms(&format!("/nope/{i}"))).await.is_err() {
            break;
        }
        let mut got = vec![0u8; na.len()];
        match within(2.0, "answer to a proposal", sock.read_exact(&mut got)).await {
            Ok(_) => {
                assert_eq!(got, na, "proposal {i}");
                answers += 1;
            }
            Err(_) => break,
        }
    }
    assert!(answers >= 1, "the node answered no `na` at all");
    assert!(
        answers <= circuit_proto::multistream::MAX_ATTEMPTS,
        "{answers} `na` answers"
    );
    let (rest, _) = read_until_closed(&mut sock, 2.0).await;
    assert!(rest.is_empty(), "{rest:?}");
    fresh_client_pings(&addr).await;
}

#[tokio::test]
async fn stalled_clients_are_dropped_while_others_are_served() {
    init_logs();
    let (node, _r, addr, sock_addr) = target_relay().await;
    let negotiation = node.config().timeouts.negotiation;
    let handshake = node.config().timeouts.handshake;
    let mut events = node.events();

    // One client connects and sends nothing at all…
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(sock_addr).await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // …another gets through multistream and stalls inside the Noise handshake.
    let mut in_noise = TcpStream::connect(sock_addr).await.unwrap();
    let noise_port = in_noise.local_addr().unwrap().port();
    let mut hello = ms("/multistream/1.0.0");
    hello.extend(ms("/noise"));
    in_noise.write_all(&hello).await.unwrap();
    let mut answer = vec![0u8; hello.len()];
    within(2.0, "multistream answer", in_noise.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, hello, "the node accepts /noise");
    let t1 = Instant::now();

    // Meanwhile a good client is served.
    fresh_client_pings(&addr).await;
    let served_at = t0.elapsed();
    if served_at < negotiation {
        // The silent socket is still open: the good client was served meanwhile.
        let mut b = [0u8; 64];
        loop {
            match silent.try_read(&mut b) {
                Ok(0) => panic!("silent client dropped before the deadline ({served_at:?})"),
                Ok(_) => continue, // the node's multistream header
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("silent client: {e}"),
            }
        }
    }

    let (_, _) = read_until_closed(&mut silent, 4.0).await;
    let silent_after = t0.elapsed();
    let (_, _) = read_until_closed(&mut in_noise, 4.0).await;
    let noise_after = t1.elapsed();
    // Dropped by the deadlines, not earlier (a little slack for timer granularity).
    let slack = Duration::from_millis(50);
    assert!(
        silent_after + slack >= negotiation,
        "silent dropped after {silent_after:?}"
    );
    assert!(
        noise_after + slack >= handshake,
        "noise staller dropped after {noise_after:?}"
    );

    // One HandshakeFailed per staller, naming the stage it stalled in.
    let mut stages = [None, None];
    within(3.0, "HandshakeFailed events", async {
        while stages.iter().any(Option::is_none) {
            if let NodeEvent::HandshakeFailed {
                remote_addr, stage, ..
            } = events.recv().await.unwrap()
            {
                for (i, port) in [silent_port, noise_port].into_iter().enumerate() {
                    if remote_addr
                        .iter()
                        .any(|p| p == multiaddr::Protocol::Tcp(port))
                    {
                        stages[i] = Some(stage);
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(
        stages,
        [Some(Stage::SecurityNegotiation), Some(Stage::Noise)]
    );
    fresh_client_pings(&addr).await;
}

/// A client connection to the relay and a fresh hop stream on it.
async fn hop_stream(addr: &Multiaddr) -> (Node, Connection, Stream) {
    let c = node(&[]).await;
    let conn = c.dial(addr).await.unwrap();
    let s = c.open_stream(&conn, HOP_PROTOCOL).await.unwrap();
    (c, conn, s)
}

/// Reads the relay's one answer on a hop stream, then expects the stream to end.
async fn answer_then_end(s: &mut Stream) -> Option<HopMessage> {
    within(3.0, "hop answer", async {
        let answer = framed::read_message::<HopMessage>(s, core::MAX_MESSAGE)
            .await
            .ok();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
        answer
    })
    .await
}

fn status_of(m: &Option<HopMessage>) -> Option<Status> {
    let m = m.as_ref()?;
    assert_eq!(m.r#type, Some(hop_message::Type::Status as i32));
    m.status.and_then(|s| Status::try_from(s).ok())
}

#[tokio::test]
async fn malformed_hop_requests_are_answered_and_the_node_keeps_serving() {
    init_logs();
    let (_node, relay, addr, _) = target_relay().await;

    // (raw bytes on the hop stream, close our side after?, expected answer)
    let mut oversized = Vec::new();
    circuit_wire::varint::encode_u64(1 << 20, &mut oversized);
    oversized.extend_from_slice(&[0x08; 100]);
    let mut over_by_one = Vec::new();
    circuit_wire::varint::encode_u64(core::MAX_MESSAGE as u64 + 1, &mut over_by_one);
    let garbage_pb = {
        let mut v = vec![6u8];
        v.extend_from_slice(&[0xff; 6]);
        v
    };
    let status_req = circuit_wire::frame::encode_to_vec(&core::hop_status(Status::Ok));
    let bad_peer = circuit_wire::frame::encode_to_vec(&HopMessage {
        r#type: Some(hop_message::Type::Connect as i32),
        peer: Some(Peer {
            id: Some(b"not a peer id".to_vec()),
            addrs: Vec::new(),
        }),
        ..Default::default()
    });
    let no_type = circuit_wire::frame::encode_to_vec(&HopMessage::default());
    let unknown_type = circuit_wire::frame::encode_to_vec(&HopMessage {
        r#type: Some(7),
        ..Default::default()
    });
    let cases: Vec<(&str, Vec<u8>, bool, Status)> = vec![
        (
            "truncated varint then EOF",
            vec![0x85],
            true,
            Status::MalformedMessage,
        ),
        (
            "truncated body then EOF",
            vec![10, 8, 1, 18],
            true,
            Status::MalformedMessage,
        ),
        (
            "oversized length prefix",
            oversized,
            false,
            Status::MalformedMessage,
        ),
        (
            "length prefix MAX+1",
            over_by_one,
            false,
            Status::MalformedMessage,
        ),
        (
            "non-terminating varint",
            vec![0xff; 11],
            false,
            Status::MalformedMessage,
        ),
        (
            "garbage protobuf",
            garbage_pb,
            false,
            Status::MalformedMessage,
        ),
        (
            "STATUS as request",
            status_req,
            false,
            Status::UnexpectedMessage,
        ),
        (
            "CONNECT with a bad peer id",
            bad_peer,
            false,
            Status::MalformedMessage,
        ),
        ("no type", no_type, false, Status::MalformedMessage),
        (
            "unknown type",
            unknown_type,
            false,
            Status::MalformedMessage,
        ),
    ];
    for (name, bytes, close, want) in cases {
        let (c, conn, mut s) = hop_stream(&addr).await;
        s.write_all(&bytes).await.unwrap();
        if close {
            s.shutdown().await.unwrap();
        }
        // The oversized cases get their answer while the announced body never
        // comes: proof the relay judged the prefix, not a buffered body (had it
        // waited for the body, the stream timeout would end it with no answer).
        let answer = answer_then_end(&mut s).await;
        assert_eq!(status_of(&answer), Some(want), "{name}: {answer:?}");
        // The connection that carried the bad stream is still fine.
        let mut p = circuit_net::protocols::ping::Pinger::open(&c, &conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: ping stream: {e}"));
        p.ping(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{name}: ping: {e}"));
    }
    assert_eq!(relay.num_reservations(), 0);
    assert_eq!(relay.num_circuits(), 0);
    assert_eq!(relay.stats().circuits_opened.load(Ordering::Relaxed), 0);
    fresh_client_pings(&addr).await;
}

#[tokio::test]
async fn silent_hop_stream_is_closed_after_the_stream_timeout() {
    init_logs();
    let (_node, relay, addr, _) = target_relay().await;
    let timeout = relay.config().stream_timeout;
    let (_c, conn, mut s) = hop_stream(&addr).await;
    let t0 = Instant::now();
    let answer = answer_then_end(&mut s).await;
    assert!(answer.is_none(), "no request, yet an answer: {answer:?}");
    assert!(
        t0.elapsed() + Duration::from_millis(50) >= timeout,
        "ended after {:?}",
        t0.elapsed()
    );
    assert!(
        !conn.is_closed(),
        "only the stream ends, not the connection"
    );
    fresh_client_pings(&addr).await;
}

#[tokio::test]
async fn dial_with_wrong_peer_id_fails_with_mismatch() {
    init_logs();
    let (node, _r, addr, _) = target_relay().await;
    let other = Keypair::generate_ed25519().public().to_peer_id();
    let (transport, _) = circuit_wire::addr::split_p2p(&addr);
    let wrong = circuit_wire::addr::with_p2p(transport, other);
    let c = common::node(&[]).await;
    let err = within(5.0, "dial wrong id", c.dial(&wrong))
        .await
        .unwrap_err();
    match &err {
        DialError::Upgrade {
            source: UpgradeError::Noise(noise::Error::PeerIdMismatch { expected, actual }),
            ..
        } => {
            assert_eq!(*expected, other);
            assert_eq!(*actual, node.peer_id());
        }
        e => panic!("expected a peer id mismatch, got: {e}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("peer ID mismatch"), "{msg}");
    assert!(
        msg.contains(&other.to_string()) && msg.contains(&node.peer_id().to_string()),
        "{msg}"
    );
    assert_eq!(c.num_connections(), 0);
    // The same client, with the right id, gets in.
    fresh_client_pings(&addr).await;
    let conn = c.dial(&addr).await.unwrap();
    assert_eq!(conn.peer(), node.peer_id());
}
