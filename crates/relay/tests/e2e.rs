//! End to end on loopback: our relay, our listener, our dialer — in one process.

use std::time::Duration;

use circuit_net::protocols::{perf, ping::Pinger};
use circuit_net::relay_client;
use circuit_net::{Keypair, Multiaddr, Node, NodeConfig};
use circuit_proto::relay::Limit;
use circuit_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

async fn node(listen: &[&str]) -> Node {
    let mut b = Node::builder(Keypair::generate_ed25519()).config(NodeConfig::default());
    for l in listen {
        b = b.listen_on(l.parse().unwrap());
    }
    b.build().await.unwrap()
}

async fn relay(config: RelayConfig) -> (Node, Relay, Multiaddr, Multiaddr) {
    let n = node(&["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]).await;
    let r = Relay::start(&n, config);
    let addrs = n.listen_addrs();
    let tcp = n.full_addr(&addrs[0]);
    let ws = n.full_addr(&addrs[1]);
    (n, r, tcp, ws)
}

#[tokio::test]
async fn direct_connection_ping_and_perf() {
    init_logs();
    let a = node(&["/ip4/127.0.0.1/tcp/0"]).await;
    perf::enable(&a);
    let b = node(&[]).await;
    let addr = a.full_addr(&a.listen_addrs()[0]);
    let conn = b.dial(&addr).await.unwrap();
    assert_eq!(conn.peer(), a.peer_id());
    let mut p = Pinger::open(&b, &conn).await.unwrap();
    for _ in 0..3 {
        let rtt = p.ping(Duration::from_secs(5)).await.unwrap();
        assert!(rtt < Duration::from_secs(5));
    }
    let r = perf::run(&b, &conn, 3 << 20, 5 << 20).await.unwrap();
    assert_eq!(r.downloaded, 5 << 20);
    // Identify ran in the background: a knows b's protocols.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = b.peer_info(&a.peer_id()).expect("identify result");
    assert!(
        info.protocols.iter().any(|p| p == perf::PROTOCOL),
        "{:?}",
        info.protocols
    );
}

#[tokio::test]
async fn bounded_perf_server_refuses_too_large_and_too_many() {
    init_logs();
    let a = node(&["/ip4/127.0.0.1/tcp/0"]).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    perf::serve(
        &a,
        perf::ServerLimits {
            max_bytes: 1 << 20,
            max_concurrent: 1,
            observer: Some(std::sync::Arc::new(move |o: &perf::Outcome| {
                log.lock().unwrap().push(*o)
            })),
        },
    );
    let b = node(&[]).await;
    let conn = b.dial(&a.full_addr(&a.listen_addrs()[0])).await.unwrap();
    // Within the bound: served in full.
    let r = perf::run(&b, &conn, 1 << 20, 1 << 20).await.unwrap();
    assert_eq!((r.uploaded, r.downloaded), (1 << 20, 1 << 20));
    // Asking back more than the bound, or uploading more: the stream is reset.
    assert!(perf::run(&b, &conn, 0, (1 << 20) + 1).await.is_err());
    assert!(perf::run(&b, &conn, 2 << 20, 0).await.is_err());
    // One at a time: a second request while one is being served is refused.
    let mut slow = b.open_stream(&conn, perf::PROTOCOL).await.unwrap();
    slow.write_all(&1u64.to_be_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(perf::run(&b, &conn, 0, 1).await.is_err());
    slow.shutdown().await.unwrap();
    let mut back = Vec::new();
    slow.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, [0u8]);
    // ... and served again once it is done.
    tokio::time::sleep(Duration::from_millis(100)).await;
    perf::run(&b, &conn, 0, 1).await.unwrap();
    // A client that uploads part and resets: failed, with what did arrive counted.
    let mut gone = b.open_stream(&conn, perf::PROTOCOL).await.unwrap();
    gone.write_all(&0u64.to_be_bytes()).await.unwrap();
    gone.write_all(&vec![7u8; 300_000]).await.unwrap();
    gone.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gone.reset();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcomes = seen.lock().unwrap().clone();
    assert_eq!(
        outcomes.last(),
        Some(&perf::Outcome::Failed {
            received: 300_000,
            sent: 0
        })
    );
    // The refused upload counts what it got: past the bound.
    assert!(
        matches!(outcomes[2], perf::Outcome::TooLarge { received } if received > 1 << 20),
        "{:?}",
        outcomes[2]
    );
    let labels: Vec<&str> = seen.lock().unwrap().iter().map(|o| o.label()).collect();
    assert_eq!(
        labels,
        [
            "served",
            "too_large",
            "too_large",
            "busy",
            "served",
            "served",
            "failed"
        ],
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn relayed_pipe_both_ways_over_tcp_and_ws() {
    init_logs();
    let (_rn, relay, tcp, ws) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    for relay_addr in [tcp.clone(), ws.clone()] {
        let listener = node(&[]).await;
        listener.handle("/test/echo/1.0.0", |mut inc| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = inc.stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    inc.stream.write_all(&buf[..n]).await.unwrap();
                }
                inc.stream.shutdown().await.unwrap();
            });
        });
        let r = relay_client::reserve(&listener, &relay_addr).await.unwrap();
        assert!(r.granted.voucher.is_some(), "our relay signs vouchers");
        assert!(r.granted.limit == Limit::UNLIMITED);
        let circuit = r.circuit_addrs[0].clone();
        assert!(circuit.to_string().contains("/p2p-circuit/p2p/"));

        let dialer = node(&[]).await;
        let conn = dialer.dial(&circuit).await.unwrap();
        assert_eq!(conn.peer(), listener.peer_id());
        assert!(conn.info().relayed);
        assert!(conn
            .info()
            .remote_addr
            .to_string()
            .ends_with("/p2p-circuit"));
        let mut s = dialer.open_stream(&conn, "/test/echo/1.0.0").await.unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 31 + 7) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(&mut s);
        let send = async {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert_eq!(got.len(), data.len());
        assert!(got == data);
    }
    assert_eq!(relay.num_reservations(), 2);
}

#[tokio::test]
async fn refusals_no_reservation_and_full() {
    init_logs();
    let (_rn, _relay, tcp, _) = relay(RelayConfig {
        max_reservations: 1,
        ..Default::default()
    })
    .await;
    let a = node(&[]).await;
    relay_client::reserve(&a, &tcp).await.unwrap();
    let b = node(&[]).await;
    let err = relay_client::reserve(&b, &tcp).await.unwrap_err();
    assert!(err.to_string().contains("RESERVATION_REFUSED"), "{err}");
    let mut circuit = tcp.clone();
    circuit.push(multiaddr::Protocol::P2pCircuit);
    circuit.push(multiaddr::Protocol::P2p(b.peer_id()));
    let err = a.dial(&circuit).await.unwrap_err();
    assert!(err.to_string().contains("NO_RESERVATION"), "{err}");
}

#[tokio::test]
async fn kept_reservation_is_refreshed_before_it_expires() {
    init_logs();
    let (_rn, relay, tcp, _) = relay(RelayConfig {
        reservation_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let listener = node(&[]).await;
    let kept = relay_client::keep_reservation(&listener, tcp.clone());
    let mut events = kept.events();
    // Three accepted reservations within 5 s: the first and two refreshes (TTL 2 s, refresh at 3/4).
    let mut accepted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while accepted < 3 {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(relay_client::ReservationEvent::Accepted(_))) => accepted += 1,
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            other => panic!("only {accepted} reservations within 6 s: {other:?}"),
        }
    }
    // Still reachable after the first reservation's expiry.
    let mut circuit = tcp.clone();
    circuit.push(multiaddr::Protocol::P2pCircuit);
    circuit.push(multiaddr::Protocol::P2p(listener.peer_id()));
    let dialer = node(&[]).await;
    let conn = dialer.dial(&circuit).await.unwrap();
    assert!(conn.info().relayed);
    // The relay's default limit travels with the relayed connection.
    assert_eq!(conn.info().limit, Limit::GO_DEFAULT);
    assert!(relay.num_reservations() >= 1);
    // Our announced addresses include the circuit address while the reservation holds.
    assert!(listener
        .addresses()
        .iter()
        .any(|a| a.to_string().contains("/p2p-circuit")));
    drop(kept);
}

#[tokio::test]
async fn dns_dial_and_refused_protocol() {
    init_logs();
    let a = node(&["/ip4/127.0.0.1/tcp/0"]).await;
    let port = a.listen_addrs()[0].iter().find_map(|p| match p {
        multiaddr::Protocol::Tcp(p) => Some(p),
        _ => None,
    });
    let addr: Multiaddr = format!("/dns4/localhost/tcp/{}/p2p/{}", port.unwrap(), a.peer_id())
        .parse()
        .unwrap();
    let b = node(&[]).await;
    let conn = b.dial(&addr).await.unwrap();
    assert_eq!(conn.peer(), a.peer_id());
    // Optimistic negotiation: the refusal surfaces on the first read.
    let mut s = b.open_stream(&conn, "/not/served/1.0.0").await.unwrap();
    let mut buf = [0u8; 8];
    let err = s.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("negotiation"), "{err}");
    // The confirmed variant reports it at once.
    assert!(b
        .open_stream_confirmed(&conn, "/not/served/1.0.0")
        .await
        .is_err());
    // And the connection still works.
    let mut p = Pinger::open(&b, &conn).await.unwrap();
    p.ping(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn relay_v1_circuit_without_reservation() {
    init_logs();
    let (_rn, _relay, tcp, _) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    // v1 has no reservations: a v1-only listener only needs a connection to the relay.
    let listener = node(&[]).await;
    listener.unhandle(circuit_proto::relay::STOP_PROTOCOL);
    listener.handle("/test/echo/1.0.0", |mut inc| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = inc.stream.read(&mut buf).await {
                if n == 0 || inc.stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = inc.stream.shutdown().await;
        });
    });
    listener.dial(&tcp).await.unwrap();
    let dialer = node(&[]).await;
    let relay_conn = dialer.dial(&tcp).await.unwrap();
    let conn = relay_client::connect_via_v1(&dialer, &relay_conn, listener.peer_id())
        .await
        .unwrap();
    assert!(conn.info().relayed);
    let mut s = dialer.open_stream(&conn, "/test/echo/1.0.0").await.unwrap();
    s.write_all(b"over relay v1").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"over relay v1");
    // A peer the relay has no connection to.
    let err = relay_client::connect_via_v1(&dialer, &relay_conn, circuit_net::PeerId::random())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HopNoConnToDst"), "{err}");
    // A v2 peer without a reservation is not reachable through v1 either.
    let v2_peer = node(&[]).await;
    v2_peer.dial(&tcp).await.unwrap();
    let err = relay_client::connect_via_v1(&dialer, &relay_conn, v2_peer.peer_id())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HopNoConnToDst"), "{err}");
}
