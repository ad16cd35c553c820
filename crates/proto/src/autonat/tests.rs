//! Tests of the AutoNAT v1 core: one per server rule, the client's confidence
//! rules and schedule, and hostile bytes.

use std::time::{Duration, Instant};

use circuit_wire::pb::autonat::{
    Dial, DialResponse, Message, MessageType, PeerInfo, ResponseStatus,
};
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;
use proptest::prelude::*;
use prost::Message as _;

use super::*;

fn peer(i: u8) -> PeerId {
    let mut seed = [7u8; 32];
    seed[0] = i;
    match Keypair::ed25519_from_bytes(seed) {
        Ok(k) => k.public().to_peer_id(),
        Err(e) => panic!("test key: {e}"),
    }
}

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn request(from: &PeerId, addrs: &[&str]) -> Message {
    let addrs: Vec<Multiaddr> = addrs.iter().map(|a| ma(a)).collect();
    dial_request(from, &addrs)
}

const OBSERVED: &str = "/ip4/8.8.8.8/tcp/51234";

// ---------------------------------------------------------------- messages

#[test]
fn dial_request_round_trip_and_presence() {
    let me = peer(1);
    let m = request(&me, &["/ip4/8.8.8.8/tcp/4001", "/ip4/192.168.1.2/tcp/4001"]);
    let body = m.encode_to_vec();
    // proto2: type DIAL = 0 is on the wire (field 1, varint 0).
    assert_eq!(&body[..2], &[0x08, 0x00]);
    let back = parse_dial_request(&decode(&body).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(back.peer, me);
    assert_eq!(back.addrs.len(), 2);
}

#[test]
fn dial_request_fits_rust_limit() {
    let me = peer(1);
    let many: Vec<Multiaddr> = (0..200)
        .map(|i| ma(&format!("/ip6/2001:4860::{i:x}/tcp/{}/ws", 4000 + i)))
        .collect();
    let m = dial_request(&me, &many);
    assert!(m.encoded_len() <= MAX_SEND_SIZE, "{}", m.encoded_len());
    let n = m
        .dial
        .as_ref()
        .and_then(|d| d.peer.as_ref())
        .map_or(0, |p| p.addrs.len());
    assert!(n > 10, "as many as fit are kept ({n})");
}

#[test]
fn responses_round_trip_and_ok_carries_status_zero() {
    let a = ma("/ip4/8.8.8.8/tcp/4001");
    let ok = dial_response_ok(&a);
    let body = ok.encode_to_vec();
    // status = OK = 0 is present inside the nested DialResponse: field 1 = 0.
    assert!(body.windows(2).any(|w| w == [0x08, 0x00]));
    assert_eq!(
        parse_dial_response(&decode(&body).unwrap_or_else(|e| panic!("{e}"))),
        Ok(Ok(a))
    );
    for e in [
        ResponseError::DialError,
        ResponseError::DialRefused,
        ResponseError::BadRequest,
        ResponseError::InternalError,
    ] {
        let m = dial_response_error(e, "why");
        assert_eq!(m.dial_response.as_ref().and_then(|r| r.addr.as_ref()), None);
        assert_eq!(parse_dial_response(&m), Ok(Err(e)));
    }
}

#[test]
fn malformed_responses_are_errors() {
    let wrong_type = Message {
        r#type: Some(MessageType::Dial as i32),
        ..Default::default()
    };
    assert_eq!(
        parse_dial_response(&wrong_type),
        Err(Error::UnexpectedType(Some(0)))
    );
    let missing = Message {
        r#type: Some(MessageType::DialResponse as i32),
        ..Default::default()
    };
    assert_eq!(parse_dial_response(&missing), Err(Error::MalformedResponse));
    let ok_without_addr = Message {
        r#type: Some(MessageType::DialResponse as i32),
        dial_response: Some(DialResponse {
            status: Some(ResponseStatus::Ok as i32),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        parse_dial_response(&ok_without_addr),
        Err(Error::MalformedResponse)
    );
    let unknown_status = Message {
        r#type: Some(MessageType::DialResponse as i32),
        dial_response: Some(DialResponse {
            status: Some(7),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        parse_dial_response(&unknown_status),
        Err(Error::MalformedResponse)
    );
    let error_with_addr = Message {
        r#type: Some(MessageType::DialResponse as i32),
        dial_response: Some(DialResponse {
            status: Some(ResponseStatus::EDialError as i32),
            addr: Some(ma("/ip4/1.1.1.1/tcp/1").to_vec()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        parse_dial_response(&error_with_addr),
        Err(Error::MalformedResponse)
    );
    assert!(matches!(decode(&[0x0a, 0xff]), Err(Error::Decode(_))));
}

// ---------------------------------------------------------------- server rules

fn refused(r: Result<Vec<Multiaddr>, Refusal>) -> Refusal {
    match r {
        Err(r) => r,
        Ok(a) => panic!("expected a refusal, got {a:?}"),
    }
}

#[test]
fn server_dials_only_the_observed_ip() {
    let t0 = Instant::now();
    let mut s = Server::default();
    let p = peer(1);
    let m = request(
        &p,
        &[
            "/ip4/192.168.1.2/tcp/4001",
            "/ip4/8.8.8.8/tcp/4001/ws",
            "/ip6/2001:4860::1/tcp/4002",
        ],
    );
    let got = s
        .handle_request(&p, &ma(OBSERVED), &m, t0)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(
        got,
        vec![
            ma("/ip4/8.8.8.8/tcp/4001"),
            ma("/ip4/8.8.8.8/tcp/4001/ws"),
            ma("/ip4/8.8.8.8/tcp/4002"),
        ],
        "every IP is replaced by the observed one, duplicates dropped"
    );
    for a in &got {
        assert!(a.to_string().starts_with("/ip4/8.8.8.8/"));
    }
}

#[test]
fn server_skips_undialable_candidates() {
    let t0 = Instant::now();
    let mut s = Server::default();
    let p = peer(1);
    let other = peer(2);
    let m = request(
        &p,
        &[
            "/dns4/example.com/tcp/4001",
            "/ip4/8.8.8.8/udp/4001/quic-v1",
            &format!("/ip4/8.8.8.8/tcp/4001/p2p/{}/p2p-circuit", peer(3)),
            &format!("/ip4/8.8.8.8/tcp/4001/p2p/{other}"),
            &format!("/ip4/8.8.8.8/tcp/4005/p2p/{p}"),
        ],
    );
    let got = s
        .handle_request(&p, &ma(OBSERVED), &m, t0)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(got, vec![ma(&format!("/ip4/8.8.8.8/tcp/4005/p2p/{p}"))]);
    // Nothing dialable at all → refused.
    let m = request(
        &p,
        &["/dns4/example.com/tcp/4001", "/ip4/8.8.8.8/udp/1/quic-v1"],
    );
    let r = refused(s.handle_request(&p, &ma(OBSERVED), &m, t0));
    assert_eq!(r.error, ResponseError::DialRefused);
    assert_eq!(r.text, "no dialable addresses");
}

#[test]
fn server_bounds_the_address_count() {
    let t0 = Instant::now();
    let mut s = Server::default();
    let p = peer(1);
    let many: Vec<String> = (0..40)
        .map(|i| format!("/ip4/1.2.3.4/tcp/{}", 5000 + i))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let got = s
        .handle_request(&p, &ma(OBSERVED), &request(&p, &refs), t0)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(got.len(), ServerConfig::default().max_addrs);
}

#[test]
fn server_refuses_bad_requests() {
    let t0 = Instant::now();
    let mut s = Server::default();
    let p = peer(1);
    let obs = ma(OBSERVED);
    // Peer id differs from the connection's.
    let r = refused(s.handle_request(&p, &obs, &request(&peer(2), &["/ip4/1.1.1.1/tcp/1"]), t0));
    assert_eq!(
        (r.error, r.text),
        (ResponseError::BadRequest, "peer id mismatch")
    );
    // Missing peer info.
    let m = Message {
        r#type: Some(MessageType::Dial as i32),
        dial: Some(Dial { peer: None }),
        ..Default::default()
    };
    let r = refused(s.handle_request(&p, &obs, &m, t0));
    assert_eq!(
        (r.error, r.text),
        (ResponseError::BadRequest, "missing peer info")
    );
    // Garbage id.
    let m = Message {
        r#type: Some(MessageType::Dial as i32),
        dial: Some(Dial {
            peer: Some(PeerInfo {
                id: Some(vec![1, 2, 3]),
                addrs: vec![],
            }),
        }),
        ..Default::default()
    };
    assert_eq!(
        refused(s.handle_request(&p, &obs, &m, t0)).error,
        ResponseError::BadRequest
    );
    // Wrong type.
    let m = dial_response_error(ResponseError::DialError, "x");
    assert_eq!(
        refused(s.handle_request(&p, &obs, &m, t0)).error,
        ResponseError::BadRequest
    );
    // None of these counted against the rate limit.
    assert_eq!(s.requests_in_window(), 0);
}

#[test]
fn server_refuses_relayed_requesters() {
    let t0 = Instant::now();
    let mut s = Server::new(ServerConfig {
        allow_private: true,
        ..ServerConfig::default()
    });
    let p = peer(1);
    let obs = ma(&format!(
        "/ip4/8.8.8.8/tcp/4001/p2p/{}/p2p-circuit",
        peer(9)
    ));
    let r = refused(s.handle_request(&p, &obs, &request(&p, &["/ip4/1.1.1.1/tcp/1"]), t0));
    assert_eq!(r.error, ResponseError::DialRefused);
}

#[test]
fn server_refuses_private_observed_ips_unless_allowed() {
    let t0 = Instant::now();
    let p = peer(1);
    let m = request(&p, &["/ip4/10.0.0.5/tcp/4001"]);
    for obs in [
        "/ip4/10.0.0.5/tcp/1",
        "/ip4/192.168.0.9/tcp/1",
        "/ip4/172.20.1.1/tcp/1",
        "/ip4/100.64.3.3/tcp/1",
        "/ip4/127.0.0.1/tcp/1",
        "/ip6/::1/tcp/1",
        "/ip6/fd00::1/tcp/1",
        "/ip6/fe80::1/tcp/1",
        "/ip6/::ffff:10.0.0.1/tcp/1",
    ] {
        let mut s = Server::default();
        let r = refused(s.handle_request(&p, &ma(obs), &m, t0));
        assert_eq!(r.error, ResponseError::DialRefused, "{obs}");
        let mut lan = Server::new(ServerConfig {
            allow_private: true,
            ..ServerConfig::default()
        });
        let got = lan
            .handle_request(&p, &ma(obs), &m, t0)
            .unwrap_or_else(|r| panic!("{obs}: {r:?}"));
        assert_eq!(got.len(), 1, "{obs}");
    }
    assert!(is_global_ip(
        &"8.8.8.8".parse().unwrap_or_else(|e| panic!("{e}"))
    ));
    assert!(is_global_ip(
        &"2606:4700::1111".parse().unwrap_or_else(|e| panic!("{e}"))
    ));
}

#[test]
fn server_rate_limits_per_peer_and_globally() {
    let t0 = Instant::now();
    let cfg = ServerConfig::default();
    let mut s = Server::new(cfg);
    let obs = ma(OBSERVED);
    let p = peer(1);
    let m = request(&p, &["/ip4/1.1.1.1/tcp/1"]);
    for _ in 0..cfg.max_per_peer {
        assert!(s.handle_request(&p, &obs, &m, t0).is_ok());
    }
    let r = refused(s.handle_request(&p, &obs, &m, t0 + Duration::from_secs(1)));
    assert_eq!(
        (r.error, r.text),
        (ResponseError::DialRefused, "too many dials")
    );
    assert_eq!(s.poll_timeout(), Some(t0 + cfg.period));
    // A new period resets the peer's count.
    assert!(s.handle_request(&p, &obs, &m, t0 + cfg.period).is_ok());

    // Global: max_total requests from distinct peers, then refusals for anyone.
    let t1 = t0 + cfg.period * 3;
    let mut s = Server::new(cfg);
    for i in 0..cfg.max_total {
        let q = peer(10 + i as u8);
        assert!(s
            .handle_request(&q, &obs, &request(&q, &["/ip4/1.1.1.1/tcp/1"]), t1)
            .is_ok());
    }
    let fresh = peer(200);
    let r = refused(s.handle_request(&fresh, &obs, &request(&fresh, &["/ip4/1.1.1.1/tcp/1"]), t1));
    assert_eq!(r.text, "too many dials");
    assert!(s
        .handle_request(
            &fresh,
            &obs,
            &request(&fresh, &["/ip4/1.1.1.1/tcp/1"]),
            t1 + cfg.period
        )
        .is_ok());
}

#[test]
fn server_builds_the_outcome() {
    let s = Server::default();
    let a = ma("/ip4/8.8.8.8/tcp/4001");
    assert_eq!(parse_dial_response(&s.dial_outcome(Some(&a))), Ok(Ok(a)));
    assert_eq!(
        parse_dial_response(&s.dial_outcome(None)),
        Ok(Err(ResponseError::DialError))
    );
    let refusal = Refusal::new(ResponseError::DialRefused, "no");
    let m = refusal.to_message();
    assert_eq!(
        m.dial_response.and_then(|r| r.status_text),
        Some("no".into())
    );
}

// ---------------------------------------------------------------- client

fn pub_addr() -> Multiaddr {
    ma("/ip4/8.8.8.8/tcp/4001")
}

#[test]
fn client_goes_private_on_first_dial_error_then_gains_confidence() {
    let t0 = Instant::now();
    let mut c = Client::new(ClientConfig::default(), t0);
    assert_eq!(c.status(), &NatStatus::Unknown);
    let ch = c.observe(Observation::Private, t0);
    assert_eq!(
        ch,
        Some(StatusChange {
            old: NatStatus::Unknown,
            new: NatStatus::Private
        })
    );
    assert_eq!(c.confidence(), 0);
    for want in [1, 2, 3, 3] {
        assert_eq!(c.observe(Observation::Private, t0), None);
        assert_eq!(c.confidence(), want, "capped at 3");
    }
}

#[test]
fn client_public_flips_at_once_but_private_needs_confidence_to_drain() {
    let t0 = Instant::now();
    let mut c = Client::new(ClientConfig::default(), t0);
    // Private, confident.
    for _ in 0..4 {
        c.observe(Observation::Private, t0);
    }
    assert_eq!((c.status(), c.confidence()), (&NatStatus::Private, 3));
    // One public answer is proof: flip now, confidence 0.
    let ch = c.observe(Observation::Public(pub_addr()), t0);
    assert_eq!(ch.map(|c| c.new), Some(NatStatus::Public(pub_addr())));
    assert_eq!(c.confidence(), 0);
    // Build up public confidence to 2.
    c.observe(Observation::Public(pub_addr()), t0);
    c.observe(Observation::Public(pub_addr()), t0);
    assert_eq!(c.confidence(), 2);
    // Two private answers only drain it…
    assert_eq!(c.observe(Observation::Private, t0), None);
    assert_eq!(c.observe(Observation::Private, t0), None);
    assert!(c.status().is_public());
    assert_eq!(c.confidence(), 0);
    // …the third flips.
    let ch = c.observe(Observation::Private, t0);
    assert_eq!(ch.map(|c| c.new), Some(NatStatus::Private));
}

#[test]
fn client_unknown_answers_drain_then_flip_to_unknown() {
    let t0 = Instant::now();
    let mut c = Client::new(ClientConfig::default(), t0);
    c.observe(Observation::Private, t0);
    c.observe(Observation::Private, t0);
    assert_eq!(c.confidence(), 1);
    assert_eq!(c.observe(Observation::Unknown, t0), None);
    assert_eq!(c.status(), &NatStatus::Private);
    let ch = c.observe(Observation::Unknown, t0);
    assert_eq!(ch.map(|c| c.new), Some(NatStatus::Unknown));
    // Refusals are unknown, dial errors private, OK public.
    assert_eq!(
        Observation::from_result(Err(ResponseError::DialRefused)),
        Observation::Unknown
    );
    assert_eq!(
        Observation::from_result(Err(ResponseError::InternalError)),
        Observation::Unknown
    );
    assert_eq!(
        Observation::from_result(Err(ResponseError::DialError)),
        Observation::Private
    );
    assert_eq!(
        Observation::from_result(Ok(pub_addr())),
        Observation::Public(pub_addr())
    );
}

#[test]
fn client_new_public_address_is_not_a_status_change() {
    let t0 = Instant::now();
    let mut c = Client::new(ClientConfig::default(), t0);
    c.observe(Observation::Public(pub_addr()), t0);
    let other = ma("/ip4/8.8.4.4/tcp/4001");
    assert_eq!(c.observe(Observation::Public(other.clone()), t0), None);
    assert_eq!(c.status(), &NatStatus::Public(other));
    assert_eq!(c.confidence(), 1);
}

#[test]
fn client_schedule_throttle_and_timeouts() {
    let t0 = Instant::now();
    let cfg = ClientConfig {
        throttle_server_period: Duration::from_secs(120),
        ..ClientConfig::default()
    };
    let mut c = Client::new(cfg, t0);
    let (a, b) = (peer(1), peer(2));
    // Boot delay.
    assert_eq!(c.poll_timeout(), Some(t0 + cfg.boot_delay));
    assert_eq!(c.poll_probe(t0, [a, b]), None);
    let t1 = t0 + cfg.boot_delay;
    assert_eq!(c.poll_probe(t1, [a, b]), Some(a));
    // One probe at a time.
    assert_eq!(c.poll_probe(t1, [a, b]), None);
    assert_eq!(c.poll_timeout(), Some(t1 + cfg.request_timeout));
    // An answer from a server not asked is ignored.
    assert_eq!(
        c.handle_response(&b, Err(ResponseError::DialError), t1),
        None
    );
    assert_eq!(c.in_flight(), Some(&a));
    let ch = c.handle_response(&a, Err(ResponseError::DialError), t1);
    assert_eq!(ch.map(|c| c.new), Some(NatStatus::Private));
    // Not confident: retry interval; `a` is throttled so `b` is asked.
    let t2 = t1 + cfg.retry_interval;
    assert_eq!(c.poll_timeout(), Some(t2));
    assert_eq!(c.poll_probe(t2 - Duration::from_secs(1), [a, b]), None);
    assert_eq!(c.poll_probe(t2, [a, b]), Some(b));
    // It never answers: the deadline turns into an unknown observation.
    assert_eq!(
        c.handle_timeout(t2 + cfg.request_timeout - Duration::from_secs(1)),
        None
    );
    assert_eq!(c.in_flight(), Some(&b));
    let ch = c.handle_timeout(t2 + cfg.request_timeout);
    assert_eq!(
        ch.map(|c| c.new),
        Some(NatStatus::Unknown),
        "confidence was 0"
    );
    assert_eq!(c.in_flight(), None);
    // Due again after the retry interval, but the only server, b, was asked
    // within the throttle period: nobody is asked, the probe waits another
    // retry interval.
    let t3 = t2 + cfg.request_timeout + cfg.retry_interval;
    assert_eq!(c.poll_timeout(), Some(t3));
    let t3 = t3 - Duration::from_secs(1);
    c.probe_now(t3);
    assert_eq!(c.poll_probe(t3, [b]), None, "b was asked 119 s ago");
    assert_eq!(c.poll_timeout(), Some(t3 + cfg.retry_interval));
    assert_eq!(c.poll_probe(t3 + cfg.retry_interval, [b]), Some(b));
}

#[test]
fn client_refreshes_slowly_once_confident_and_reprobes_on_new_address() {
    let t0 = Instant::now();
    let cfg = ClientConfig::default();
    let mut c = Client::new(cfg, t0);
    for _ in 0..4 {
        c.observe(Observation::Private, t0);
    }
    assert_eq!(c.confidence(), 3);
    assert_eq!(c.poll_timeout(), Some(t0 + cfg.refresh_interval));
    c.on_new_address(t0);
    assert_eq!(c.confidence(), 2);
    assert_eq!(c.poll_timeout(), Some(t0 + cfg.retry_interval));
    c.probe_now(t0);
    assert_eq!(c.poll_timeout(), Some(t0));
}

#[test]
fn client_failure_of_the_asked_server_is_unknown() {
    let t0 = Instant::now();
    let cfg = ClientConfig {
        boot_delay: Duration::ZERO,
        ..ClientConfig::default()
    };
    let mut c = Client::new(cfg, t0);
    c.observe(Observation::Public(pub_addr()), t0);
    c.observe(Observation::Public(pub_addr()), t0);
    let t1 = t0 + cfg.retry_interval;
    let s = c.poll_probe(t1, [peer(1)]).unwrap_or_else(|| panic!("due"));
    assert_eq!(c.handle_failure(&peer(2), t1), None, "not the asked server");
    assert_eq!(c.handle_failure(&s, t1), None);
    assert_eq!(c.confidence(), 0);
    assert!(c.status().is_public());
}

// ---------------------------------------------------------------- hostile input

proptest! {
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let t0 = Instant::now();
        let mut s = Server::new(ServerConfig { allow_private: true, ..ServerConfig::default() });
        if let Ok(m) = decode(&body) {
            let _ = parse_dial_response(&m);
            if let Ok(addrs) = s.handle_request(&peer(1), &ma(OBSERVED), &m, t0) {
                prop_assert!(!addrs.is_empty() && addrs.len() <= 16);
                for a in addrs {
                    prop_assert!(a.to_string().starts_with("/ip4/8.8.8.8/tcp/"));
                }
            }
        }
    }

    #[test]
    fn random_candidates_only_ever_yield_the_observed_ip(
        addrs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 0..20),
        a in any::<u8>(), b in any::<u16>(),
    ) {
        let t0 = Instant::now();
        let p = peer(1);
        let mut m = dial_request(&p, &[]);
        if let Some(info) = m.dial.as_mut().and_then(|d| d.peer.as_mut()) {
            info.addrs = addrs;
            // Plus one well-formed candidate with an arbitrary IP and port.
            info.addrs.push(ma(&format!("/ip4/{a}.{a}.{a}.{a}/tcp/{b}")).to_vec());
        }
        let mut s = Server::default();
        let got = s.handle_request(&p, &ma(OBSERVED), &m, t0);
        let got = got.map_err(|r| TestCaseError::fail(format!("{r:?}")))?;
        for x in got {
            prop_assert!(x.to_string().starts_with("/ip4/8.8.8.8/tcp/"));
        }
    }
}
