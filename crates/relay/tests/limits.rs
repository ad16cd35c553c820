//! Limits and refusals of the relay, end to end on loopback through
//! circuit_net's client API (and raw hop/stop messages where the API hides
//! what went over the wire).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circuit_net::relay_client::{self, ReserveError, HOP_PROTOCOL, STOP_PROTOCOL};
use circuit_net::{framed, DialError, Node};
use circuit_proto::relay::{self as core, Limit};
use circuit_relay::RelayConfig;
use circuit_wire::pb::relay::{HopMessage, Status, StopMessage};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status name of a refused circuit dial, or a panic naming what happened instead.
fn refused_status(r: Result<circuit_net::Connection, DialError>) -> String {
    match r {
        Err(DialError::RelayRefused { status, .. }) => status,
        Err(e) => panic!("expected a relay refusal, got error: {e}"),
        Ok(c) => panic!("expected a relay refusal, got a connection to {}", c.peer()),
    }
}

/// The status name of a refused reservation.
fn refused_reservation(r: Result<relay_client::Reservation, ReserveError>) -> String {
    match r {
        Err(ReserveError::Refused(core::ReserveError::Refused(status))) => status,
        Err(e) => panic!("expected a refused reservation, got error: {e}"),
        Ok(_) => panic!("expected a refused reservation, got one"),
    }
}

#[tokio::test]
async fn data_limit_closes_the_circuit_on_both_sides() {
    init_logs();
    const LIMIT: u64 = 64 * 1024;
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        limit: Limit {
            duration: None,
            data: Some(LIMIT),
        },
        ..Default::default()
    })
    .await;
    let (listener, logs, circuit) = reserved_listener(&relay_addr).await;
    let dialer = node(&[]).await;
    let conn = within(5.0, "dial circuit", dialer.dial(&circuit))
        .await
        .unwrap();
    let mut s = dialer.open_stream(&conn, ECHO).await.unwrap();
    let full: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + 3) as u8).collect();
    // A first small round trip, so that the listener's side of the circuit (its Noise
    // handshake and its echo handler) is up before the bulk data hits the limit.
    let first = &full[..1024];
    s.write_all(first).await.unwrap();
    let mut echo = vec![0u8; first.len()];
    within(5.0, "first echo", s.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(echo, first);
    let payload = &full[first.len()..];
    let (write_res, (got, read_res)) = within(8.0, "send 1 MiB over a 64 KiB circuit", async {
        let (mut rd, mut wr) = tokio::io::split(&mut s);
        let send = async {
            wr.write_all(payload).await?;
            wr.shutdown().await
        };
        let recv = async {
            let mut got = Vec::new();
            let r = rd.read_to_end(&mut got).await;
            (got, r)
        };
        tokio::join!(send, recv)
    })
    .await;
    // The dialer noticed: its write failed, or its read failed or ended short.
    assert!(
        write_res.is_err() || read_res.is_err(),
        "dialer saw no error (write {write_res:?}, read {read_res:?})"
    );
    // Not more application data than the limit got back (Noise and yamux add overhead).
    assert!((got.len() as u64) < LIMIT, "echoed {} bytes", got.len());
    assert!(got[..] == payload[..got.len()], "echoed bytes differ");
    wait_until(3.0, "dialer's relayed connection closed", || {
        conn.is_closed()
    })
    .await;

    // The listener noticed too: its stream ended short, and its connection is gone.
    wait_until(3.0, "listener echo handler ended", || {
        logs.lock().unwrap().first().and_then(|l| l.end).is_some()
    })
    .await;
    {
        let logs = logs.lock().unwrap();
        assert!((logs[0].received.len() as u64) < LIMIT);
        assert!(logs[0].received[..] == full[..logs[0].received.len()]);
        assert!(
            matches!(logs[0].end, Some(Err(_))),
            "listener stream should fail, not end cleanly: {:?}",
            logs[0].end
        );
    }
    let dialer_id = dialer.peer_id();
    wait_until(3.0, "listener dropped the relayed connection", || {
        listener.connections_to(&dialer_id).is_empty()
    })
    .await;

    wait_until(3.0, "relay counted the limited circuit", || {
        relay.stats().circuits_limited.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(relay.stats().circuits_opened.load(Ordering::Relaxed), 1);
    wait_until(2.0, "circuit released", || relay.num_circuits() == 0).await;
    // Each direction forwarded at most the limit.
    assert!(relay.stats().bytes_relayed.load(Ordering::Relaxed) <= 2 * LIMIT);
    fresh_client_pings(&relay_addr).await;
}

#[tokio::test]
async fn duration_limit_closes_an_idle_circuit() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        limit: Limit {
            duration: Some(Duration::from_secs(1)),
            data: None,
        },
        ..Default::default()
    })
    .await;
    let (listener, logs, circuit) = reserved_listener(&relay_addr).await;
    let dialer = node(&[]).await;
    let conn = within(5.0, "dial circuit", dialer.dial(&circuit))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut s = dialer.open_stream(&conn, ECHO).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    within(2.0, "echo", s.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"hello");

    // Idle; half way through the limit the circuit still stands.
    tokio::time::sleep(Duration::from_millis(400).saturating_sub(t0.elapsed())).await;
    assert!(!conn.is_closed(), "closed before its duration limit");

    wait_until(3.0, "dialer's relayed connection closed", || {
        conn.is_closed()
    })
    .await;
    // The relay's clock started before `t0` (at CONNECT), so allow some slack below 1 s.
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "closed after {:?}",
        t0.elapsed()
    );
    let mut rest = Vec::new();
    let r = within(2.0, "dialer stream ends", s.read_to_end(&mut rest)).await;
    assert!(r.is_err(), "the dialer's stream must fail, got {r:?}");
    let dialer_id = dialer.peer_id();
    wait_until(3.0, "listener dropped the relayed connection", || {
        listener.connections_to(&dialer_id).is_empty()
            && logs.lock().unwrap().first().and_then(|l| l.end).is_some()
    })
    .await;
    assert!(matches!(logs.lock().unwrap()[0].end, Some(Err(_))));
    wait_until(2.0, "relay counted the limited circuit", || {
        relay.stats().circuits_limited.load(Ordering::Relaxed) == 1
    })
    .await;
    fresh_client_pings(&relay_addr).await;
}

#[tokio::test]
async fn reservations_full_and_per_ip_are_refused() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        max_reservations: 1,
        ..Default::default()
    })
    .await;
    let a = node(&[]).await;
    relay_client::reserve(&a, &relay_addr).await.unwrap();
    let b = node(&[]).await;
    let status = refused_reservation(relay_client::reserve(&b, &relay_addr).await);
    assert_eq!(status, "RESERVATION_REFUSED");
    // A refresh by the holder is not a new reservation: still accepted when full.
    relay_client::reserve(&a, &relay_addr).await.unwrap();
    assert_eq!(relay.num_reservations(), 1);
    assert_eq!(
        relay.stats().reservations_refused.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        relay.stats().reservations_accepted.load(Ordering::Relaxed),
        2
    );

    // Per IP: every test client comes from 127.0.0.1.
    relay.set_config(RelayConfig {
        max_reservations: 100,
        max_reservations_per_ip: 1,
        ..Default::default()
    });
    let status = refused_reservation(relay_client::reserve(&b, &relay_addr).await);
    assert_eq!(status, "RESERVATION_REFUSED");
    assert_eq!(
        relay.stats().reservations_refused.load(Ordering::Relaxed),
        2
    );
    fresh_client_pings(&relay_addr).await;
}

#[tokio::test]
async fn connect_without_reservation_is_refused() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig::default()).await;
    // The target is even connected to the relay, but holds no reservation.
    let target = node(&[]).await;
    target.dial(&relay_addr).await.unwrap();
    let dialer = node(&[]).await;
    let status = refused_status(
        dialer
            .dial(&circuit_addr(&relay_addr, &target.peer_id()))
            .await,
    );
    assert_eq!(status, "NO_RESERVATION");
    // Two refusals: the v2 CONNECT, then the dialer's v1 fallback (a v2 target without a
    // reservation is not reachable through v1 either).
    assert_eq!(relay.stats().circuits_refused.load(Ordering::Relaxed), 2);
    assert_eq!(relay.stats().circuits_opened.load(Ordering::Relaxed), 0);
    assert_eq!(relay.num_circuits(), 0);
    fresh_client_pings(&relay_addr).await;
}

#[tokio::test]
async fn expired_reservation_is_refused() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        reservation_ttl: Duration::from_secs(1),
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    let t0 = Instant::now();
    let (listener, _logs, circuit) = reserved_listener(&relay_addr).await;
    // While it is live, the reservation works.
    let d1 = node(&[]).await;
    let c1 = within(2.0, "dial while reserved", d1.dial(&circuit))
        .await
        .unwrap();
    assert_eq!(c1.peer(), listener.peer_id());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "setup too slow for the test's premise"
    );
    c1.close();

    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed())).await;
    // The listener's connection to the relay is still up: only the clock ended it.
    let relay_id = relay_addr
        .iter()
        .find_map(|p| match p {
            multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .unwrap();
    assert!(!listener.connections_to(&relay_id).is_empty());
    let d2 = node(&[]).await;
    let status = refused_status(d2.dial(&circuit).await);
    assert_eq!(status, "NO_RESERVATION");
    assert!(relay.stats().circuits_refused.load(Ordering::Relaxed) >= 1);
    fresh_client_pings(&relay_addr).await;
}

#[tokio::test]
async fn per_peer_circuit_limit_is_enforced_and_released() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        max_circuits_per_peer: 1,
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    let (listener, _logs, circuit) = reserved_listener(&relay_addr).await;
    let d1 = node(&[]).await;
    let c1 = within(3.0, "first circuit", d1.dial(&circuit))
        .await
        .unwrap();
    assert_eq!(relay.num_circuits(), 1);

    // The listener (destination) is at its limit: a second source is refused…
    let d2 = node(&[]).await;
    let status = refused_status(d2.dial(&circuit).await);
    assert_eq!(status, "RESOURCE_LIMIT_EXCEEDED");
    // …and so is a second circuit from the first source (to a reserved, idle peer).
    let (other, _, other_circuit) = reserved_listener(&relay_addr).await;
    let status = refused_status(d1.dial(&other_circuit).await);
    assert_eq!(status, "RESOURCE_LIMIT_EXCEEDED");
    assert_eq!(relay.stats().circuits_refused.load(Ordering::Relaxed), 2);

    // Ending the first circuit frees the slot.
    c1.close();
    wait_until(3.0, "circuit released", || relay.num_circuits() == 0).await;
    let c2 = within(3.0, "circuit after release", d2.dial(&circuit))
        .await
        .unwrap();
    assert_eq!(c2.peer(), listener.peer_id());
    let c3 = within(3.0, "first source, other target", d1.dial(&other_circuit))
        .await
        .unwrap();
    assert_eq!(c3.peer(), other.peer_id());
    assert_eq!(relay.num_circuits(), 2);
}

/// Replaces `node`'s stop handler by one that records the relay's StopMessage
/// and accepts (without upgrading: this test only looks at the messages).
fn record_stop(node: &Node) -> Arc<Mutex<Vec<StopMessage>>> {
    let seen: Arc<Mutex<Vec<StopMessage>>> = Arc::default();
    let s2 = seen.clone();
    node.unhandle(STOP_PROTOCOL);
    node.handle(STOP_PROTOCOL, move |mut inc| {
        let seen = s2.clone();
        tokio::spawn(async move {
            if let Ok(m) =
                framed::read_message::<StopMessage>(&mut inc.stream, core::MAX_MESSAGE).await
            {
                seen.lock().unwrap().push(m);
                let _ =
                    framed::write_message(&mut inc.stream, &core::stop_status(Status::Ok)).await;
                // Hold the circuit open until the dialer ends it.
                let mut sink = Vec::new();
                let _ = inc.stream.read_to_end(&mut sink).await;
            }
        });
    });
    seen
}

/// One raw hop exchange on a fresh stream of `conn`.
async fn hop_exchange(node: &Node, conn: &circuit_net::Connection, req: &HopMessage) -> HopMessage {
    within(5.0, "hop exchange", async {
        let mut s = node.open_stream(conn, HOP_PROTOCOL).await.unwrap();
        framed::write_message(&mut s, req).await.unwrap();
        framed::read_message::<HopMessage>(&mut s, core::MAX_MESSAGE)
            .await
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn limit_is_absent_when_unlimited_and_exact_when_configured() {
    init_logs();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    let listener = node(&[]).await;
    let stops = record_stop(&listener);
    let dialer = node(&[]).await;
    let dconn = dialer.dial(&relay_addr).await.unwrap();
    let lconn = listener.dial(&relay_addr).await.unwrap();

    let configured = Limit {
        duration: Some(Duration::from_secs(90)),
        data: Some(12345),
    };
    for (round, limit) in [Limit::UNLIMITED, configured].into_iter().enumerate() {
        relay.set_config(RelayConfig {
            limit,
            ..Default::default()
        });
        // Through the client API: the reservation tells the limit.
        let r = relay_client::reserve_on(&listener, &lconn).await.unwrap();
        assert_eq!(r.granted.limit, limit);
        // On the wire: no Limit field at all when unlimited (go would mark the
        // connection limited otherwise), the exact values when configured.
        let raw = hop_exchange(&listener, &lconn, &core::hop_reserve()).await;
        assert_eq!(raw.status, Some(Status::Ok as i32));
        let connect = hop_exchange(&dialer, &dconn, &core::hop_connect(&listener.peer_id())).await;
        assert_eq!(core::parse_connect_response(&connect), Ok(limit));
        wait_until(3.0, "stop message recorded", || {
            stops.lock().unwrap().len() == round + 1
        })
        .await;
        let stop = stops.lock().unwrap()[round].clone();
        let (src, stop_limit) = core::parse_stop_connect(&stop).unwrap();
        assert_eq!(src, dialer.peer_id());
        assert_eq!(stop_limit, limit);
        if limit.is_limited() {
            for pb in [raw.limit, connect.limit, stop.limit] {
                let pb = pb.expect("limit present");
                assert_eq!(pb.duration, Some(90));
                assert_eq!(pb.data, Some(12345));
            }
        } else {
            assert!(raw.limit.is_none(), "{:?}", raw.limit);
            assert!(connect.limit.is_none(), "{:?}", connect.limit);
            assert!(stop.limit.is_none(), "{:?}", stop.limit);
        }
    }
    assert_eq!(relay.stats().circuits_opened.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn hop_over_a_relayed_connection_is_denied() {
    init_logs();
    let (_r1n, _r1, r1_addr) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        ..Default::default()
    })
    .await;
    // A second relay, reachable only through the first.
    let (r2n, r2, _) = relay(RelayConfig::default()).await;
    let circuit = within(5.0, "reserve", relay_client::reserve(&r2n, &r1_addr))
        .await
        .unwrap()
        .circuit_addrs[0]
        .clone();
    let dialer = node(&[]).await;
    let conn = within(5.0, "dial circuit", dialer.dial(&circuit))
        .await
        .unwrap();
    assert!(conn.info().relayed);
    assert_eq!(conn.peer(), r2n.peer_id());
    // Relaying over a relayed connection would chain circuits: refused.
    let answer = hop_exchange(&dialer, &conn, &core::hop_reserve()).await;
    assert_eq!(answer.status, Some(Status::PermissionDenied as i32));
    assert_eq!(r2.num_reservations(), 0);
    assert_eq!(r2.stats().reservations_accepted.load(Ordering::Relaxed), 0);
}
