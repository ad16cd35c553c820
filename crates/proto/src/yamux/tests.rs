//! Tests: two sessions wired back to back, plus byte-level checks.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// Client and server sessions plus a transport that moves bytes in `chunk`-sized pieces.
struct Pair {
    c: Session,
    s: Session,
    now: Instant,
    chunk: usize,
    max: usize,
}

impl Pair {
    fn new(chunk: usize) -> Pair {
        Pair::with_configs(chunk, Config::default(), Config::default())
    }

    fn with_configs(chunk: usize, c: Config, s: Config) -> Pair {
        Pair {
            c: Session::new(Mode::Client, c),
            s: Session::new(Mode::Server, s),
            now: Instant::now(),
            chunk,
            max: 64 * 1024,
        }
    }

    /// Shuttles bytes both ways until neither side has anything to send.
    fn pump(&mut self) {
        loop {
            let a = transfer(&mut self.c, &mut self.s, self.chunk, self.max, self.now);
            let b = transfer(&mut self.s, &mut self.c, self.chunk, self.max, self.now);
            if a + b == 0 {
                break;
            }
        }
    }
}

fn transfer(from: &mut Session, to: &mut Session, chunk: usize, max: usize, now: Instant) -> usize {
    let mut out = Vec::new();
    let n = from.poll_transmit(&mut out, max);
    assert_eq!(n, out.len());
    // Alternate borrowed and owned input, so every test exercises both paths (owned
    // input hands large payloads over as shared pieces).
    for (i, piece) in out.chunks(chunk.max(1)).enumerate() {
        if i % 2 == 0 {
            to.handle_input(piece, now).expect("peer input is valid");
        } else {
            let owned = bytes::BytesMut::from(piece);
            to.handle_input_owned(owned, now)
                .expect("peer input is valid");
        }
    }
    n
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Reads everything currently available; returns the bytes and whether EOF was seen.
fn read_available(s: &mut Session, id: StreamId) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.stream_read(id, &mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(StreamError::WouldBlock) => return (all, false),
            Err(e) => panic!("unexpected read error {e:?}"),
        }
    }
}

/// Decodes a sequence of whole frames into (header, payload length) pairs.
fn frames(mut bytes: &[u8]) -> Vec<Header> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let h = Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        let body = if h.frame_type == FrameType::Data {
            h.length as usize
        } else {
            0
        };
        bytes = &bytes[HEADER_LEN + body..];
        v.push(h);
    }
    v
}

#[test]
fn header_bytes_match_spec() {
    let h = Header::window_update(1, 0, Flags::SYN);
    assert_eq!(
        h.encode().to_vec(),
        hex::decode("000100010000000100000000").unwrap()
    );
    assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    let ping_ack = Header::ping(Flags::ACK, 0xdead_beef);
    assert_eq!(hex::encode(ping_ack.encode()), "0002000200000000deadbeef");
    // A fresh client stream announces itself with exactly that Window Update.
    let mut c = Session::new(Mode::Client, Config::default());
    assert_eq!(c.open_stream().unwrap(), 1);
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out, 1024), 12);
    assert_eq!(hex::encode(&out), "000100010000000100000000");
}

#[test]
fn server_ids_are_even_client_ids_odd() {
    let mut p = Pair::new(7);
    assert_eq!(p.c.open_stream().unwrap(), 1);
    assert_eq!(p.c.open_stream().unwrap(), 3);
    assert_eq!(p.s.open_stream().unwrap(), 2);
    assert_eq!(p.s.open_stream().unwrap(), 4);
    p.pump();
    assert_eq!(
        events(&mut p.s),
        vec![Event::InboundStream(1), Event::InboundStream(3)]
    );
    assert_eq!(
        events(&mut p.c),
        vec![Event::InboundStream(2), Event::InboundStream(4)]
    );
}

#[test]
fn open_accept_and_bidirectional_data_one_byte_chunks() {
    let mut p = Pair::new(1);
    let id = p.c.open_stream().unwrap();
    assert_eq!(p.c.stream_write(id, b"hello").unwrap(), 5);
    p.pump();
    assert_eq!(
        events(&mut p.s),
        vec![Event::InboundStream(id), Event::Readable(id)]
    );
    assert_eq!(read_available(&mut p.s, id), (b"hello".to_vec(), false));
    assert_eq!(p.s.stream_write(id, b"world!").unwrap(), 6);
    p.pump();
    assert_eq!(events(&mut p.c), vec![Event::Readable(id)]);
    assert_eq!(read_available(&mut p.c, id), (b"world!".to_vec(), false));
}

#[test]
fn syn_rides_on_first_data_frame() {
    let mut c = Session::new(Mode::Client, Config::default());
    let id = c.open_stream().unwrap();
    c.stream_write(id, b"abc").unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 1024);
    assert_eq!(
        frames(&out),
        vec![Header::data(id, 3, Flags::SYN)],
        "one Data frame with SYN, no separate Window Update"
    );
}

#[test]
fn fin_half_close_both_ways() {
    let mut p = Pair::new(5);
    let id = p.c.open_stream().unwrap();
    p.c.stream_write(id, b"request").unwrap();
    p.c.stream_finish(id);
    assert_eq!(p.c.stream_write(id, b"x"), Err(StreamError::Closed));
    p.pump();
    events(&mut p.s);
    assert_eq!(read_available(&mut p.s, id), (b"request".to_vec(), true));
    // Half-closed: the server can still answer.
    p.s.stream_write(id, b"response").unwrap();
    p.s.stream_finish(id);
    p.pump();
    assert_eq!(read_available(&mut p.c, id), (b"response".to_vec(), true));
    p.c.stream_release(id);
    p.s.stream_release(id);
    p.pump();
    assert_eq!(p.c.num_streams(), 0);
    assert_eq!(p.s.num_streams(), 0);
}

#[test]
fn release_after_finish_still_delivers_buffered_data() {
    let mut p = Pair::new(1000);
    let id = p.c.open_stream().unwrap();
    p.pump();
    let data = vec![7u8; 100_000];
    assert_eq!(p.s.stream_write(id, &data).unwrap(), data.len());
    p.s.stream_finish(id);
    p.s.stream_release(id);
    p.pump();
    assert_eq!(read_available(&mut p.c, id), (data, true));
    // The server keeps the stream until the client's side ends too.
    assert_eq!(p.s.num_streams(), 1);
    p.c.stream_finish(id);
    p.pump();
    assert_eq!(p.s.num_streams(), 0);
}

#[test]
fn release_without_finish_resets() {
    let mut p = Pair::new(3);
    let id = p.c.open_stream().unwrap();
    p.c.stream_write(id, b"x").unwrap();
    p.pump();
    events(&mut p.s);
    p.s.stream_release(id);
    assert_eq!(p.s.num_streams(), 0);
    p.pump();
    assert!(events(&mut p.c).contains(&Event::StreamReset(id)));
}

#[test]
fn reset_is_seen_by_peer() {
    let mut p = Pair::new(2);
    let id = p.c.open_stream().unwrap();
    p.c.stream_write(id, b"data").unwrap();
    p.pump();
    events(&mut p.s);
    p.s.stream_reset(id);
    assert_eq!(p.s.stream_read(id, &mut [0; 8]), Err(StreamError::Reset));
    p.pump();
    let ev = events(&mut p.c);
    assert!(ev.contains(&Event::StreamReset(id)), "{ev:?}");
    assert_eq!(p.c.stream_read(id, &mut [0; 8]), Err(StreamError::Reset));
    assert_eq!(p.c.stream_write(id, b"more"), Err(StreamError::Reset));
    p.c.stream_release(id);
    p.s.stream_release(id);
    assert_eq!((p.c.num_streams(), p.s.num_streams()), (0, 0));
    // Data racing with the reset is discarded without error.
    assert_eq!(p.c.stream_read(id, &mut [0; 8]), Err(StreamError::Unknown));
}

#[test]
fn reset_before_announcement_sends_nothing() {
    let mut c = Session::new(Mode::Client, Config::default());
    let id = c.open_stream().unwrap();
    c.stream_reset(id);
    c.stream_release(id);
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out, 1024), 0);
    assert_eq!(c.num_streams(), 0);
}

#[test]
fn flow_control_blocks_at_window_until_reader_reads() {
    let cfg = Config {
        max_send_buffer: 1024 * 1024,
        ..Config::default()
    };
    let mut p = Pair::with_configs(4096, cfg, Config::default());
    let id = p.c.open_stream().unwrap();
    let data: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(p.c.stream_write(id, &data).unwrap(), data.len());
    p.pump();
    // Exactly one window's worth crossed.
    assert_eq!(p.c.stream_send_buffered(id), data.len() - 256 * 1024);
    let mut got = vec![0u8; 64 * 1024];
    assert_eq!(p.s.stream_read(id, &mut got).unwrap(), 64 * 1024);
    let mut out = Vec::new();
    assert_eq!(
        p.s.poll_transmit(&mut out, 1 << 20),
        0,
        "no update below half"
    );
    let mut received = got.clone();
    assert_eq!(p.s.stream_read(id, &mut got).unwrap(), 64 * 1024);
    received.extend_from_slice(&got);
    p.pump(); // window update for 128 KiB, then 128 KiB more data
    assert_eq!(p.c.stream_send_buffered(id), data.len() - 384 * 1024);
    while received.len() < data.len() {
        let (chunk, eof) = read_available(&mut p.s, id);
        assert!(!eof);
        received.extend_from_slice(&chunk);
        p.pump();
    }
    assert_eq!(received, data);
}

#[test]
fn writer_blocks_on_full_buffer_and_gets_writable() {
    let mut p = Pair::new(65536);
    let id = p.c.open_stream().unwrap();
    let big = vec![1u8; 256 * 1024];
    assert_eq!(p.c.stream_write(id, &big).unwrap(), big.len());
    p.pump(); // fills the peer's window entirely
    assert_eq!(p.c.stream_write(id, &big).unwrap(), big.len());
    assert_eq!(p.c.stream_write(id, b"x"), Err(StreamError::WouldBlock));
    p.pump();
    assert!(
        events(&mut p.c).is_empty(),
        "window is closed, nothing moves"
    );
    assert_eq!(p.c.stream_send_buffered(id), big.len());
    // Reader consumes; Window Update unblocks; transmission frees buffer => Writable.
    let (got, _) = read_available(&mut p.s, id);
    assert_eq!(got.len(), big.len());
    p.pump();
    assert_eq!(events(&mut p.c), vec![Event::Writable(id)]);
    assert_eq!(p.c.stream_write(id, b"x"), Ok(1));
}

#[test]
fn partial_write_reports_writable_later() {
    let cfg = Config {
        max_send_buffer: 10,
        ..Config::default()
    };
    let mut p = Pair::with_configs(100, cfg, Config::default());
    let id = p.c.open_stream().unwrap();
    assert_eq!(p.c.stream_write(id, &[0u8; 25]), Ok(10));
    p.pump();
    assert_eq!(events(&mut p.c), vec![Event::Writable(id)]);
    assert_eq!(p.c.stream_write(id, &[0u8; 5]), Ok(5));
    p.pump();
    assert!(
        events(&mut p.c).is_empty(),
        "no flood without a blocked write"
    );
}

#[test]
fn ping_pong_reports_rtt() {
    let mut p = Pair::new(1);
    let t0 = p.now;
    p.c.ping(t0);
    p.now = t0 + Duration::from_millis(5);
    p.pump();
    assert_eq!(
        events(&mut p.c),
        vec![Event::Pong {
            rtt: Duration::from_millis(5)
        }]
    );
    assert!(events(&mut p.s).is_empty());
}

#[test]
fn pong_with_wrong_value_is_ignored() {
    let mut c = Session::new(Mode::Client, Config::default());
    let now = Instant::now();
    c.ping(now);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 100);
    let sent = frames(&out)[0];
    let wrong = Header::ping(Flags::ACK, sent.length.wrapping_add(1)).encode();
    c.handle_input(&wrong, now).unwrap();
    assert_eq!(c.poll_event(), None);
    c.handle_input(&Header::ping(Flags::ACK, sent.length).encode(), now)
        .unwrap();
    assert!(matches!(c.poll_event(), Some(Event::Pong { .. })));
}

#[test]
fn go_away_refuses_new_streams_but_keeps_old_ones() {
    let mut p = Pair::new(3);
    let id = p.c.open_stream().unwrap();
    p.pump();
    p.c.go_away(GO_AWAY_NORMAL);
    assert_eq!(p.c.open_stream(), Err(Error::GoneAway));
    p.pump();
    assert!(events(&mut p.s).contains(&Event::GoAway(GO_AWAY_NORMAL)));
    assert_eq!(p.s.open_stream(), Err(Error::GoneAway));
    // The existing stream still works.
    p.s.stream_write(id, b"still here").unwrap();
    p.pump();
    assert_eq!(read_available(&mut p.c, id).0, b"still here");
    p.s.go_away(GO_AWAY_NORMAL);
    p.pump();
    assert!(!p.c.is_closed(), "a stream is still open");
    p.c.stream_finish(id);
    p.s.stream_finish(id);
    p.pump();
    p.c.stream_release(id);
    p.s.stream_release(id);
    assert!(p.c.is_closed() && p.s.is_closed());
}

#[test]
fn inbound_syn_after_our_go_away_is_reset() {
    let mut p = Pair::new(16);
    p.s.go_away(GO_AWAY_NORMAL);
    let id = p.c.open_stream().unwrap(); // before the Go Away arrives
    p.c.stream_write(id, b"hi").unwrap();
    p.pump();
    let ev = events(&mut p.c);
    assert!(ev.contains(&Event::StreamReset(id)), "{ev:?}");
    assert_eq!(p.s.num_streams(), 0);
}

#[test]
fn too_many_streams_are_reset() {
    let scfg = Config {
        max_streams: 2,
        ..Config::default()
    };
    let mut p = Pair::with_configs(9, Config::default(), scfg);
    let ids: Vec<_> = (0..3).map(|_| p.c.open_stream().unwrap()).collect();
    for &id in &ids {
        p.c.stream_write(id, b"payload").unwrap();
    }
    p.pump();
    let inbound: Vec<_> = events(&mut p.s)
        .into_iter()
        .filter(|e| matches!(e, Event::InboundStream(_)))
        .collect();
    assert_eq!(
        inbound,
        vec![Event::InboundStream(ids[0]), Event::InboundStream(ids[1])]
    );
    let ev = events(&mut p.c);
    assert!(ev.contains(&Event::StreamReset(ids[2])), "{ev:?}");
    assert!(!ev.contains(&Event::StreamReset(ids[0])));
    assert_eq!(
        p.c.stream_read(ids[2], &mut [0; 4]),
        Err(StreamError::Reset)
    );
}

#[test]
fn ack_backlog_limits_unacked_outbound_streams() {
    let ccfg = Config {
        max_ack_backlog: 2,
        ..Config::default()
    };
    let mut p = Pair::with_configs(12, ccfg, Config::default());
    p.c.open_stream().unwrap();
    p.c.open_stream().unwrap();
    assert_eq!(p.c.open_stream(), Err(Error::AckBacklogFull));
    p.pump(); // server ACKs both
    assert!(p.c.open_stream().is_ok());
}

#[test]
fn malformed_header_is_a_protocol_error_with_go_away() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let bad_version = [1u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
    assert_eq!(
        s.handle_input(&bad_version, now),
        Err(Error::Protocol(ProtocolError::UnsupportedVersion(1)))
    );
    assert!(s.is_closed());
    let mut out = Vec::new();
    s.poll_transmit(&mut out, 100);
    assert_eq!(hex::encode(&out), "000300000000000000000001");
    assert!(s.handle_input(&[0], now).is_err(), "stays failed");

    let mut s = Session::new(Mode::Server, Config::default());
    let bad_type = [0u8, 9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
    // Split mid-header: the error surfaces once the header is complete.
    assert_eq!(s.handle_input(&bad_type[..5], now), Ok(()));
    assert_eq!(
        s.handle_input(&bad_type[5..], now),
        Err(Error::Protocol(ProtocolError::UnknownFrameType(9)))
    );
}

#[test]
fn syn_with_wrong_parity_or_duplicate_is_rejected() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let own_parity = Header::window_update(2, 0, Flags::SYN).encode();
    assert_eq!(
        s.handle_input(&own_parity, now),
        Err(Error::Protocol(ProtocolError::InvalidStreamId(2)))
    );
    let mut s = Session::new(Mode::Server, Config::default());
    let syn = Header::window_update(1, 0, Flags::SYN).encode();
    s.handle_input(&syn, now).unwrap();
    assert_eq!(
        s.handle_input(&syn, now),
        Err(Error::Protocol(ProtocolError::DuplicateStream(1)))
    );
}

#[test]
fn data_beyond_window_is_a_protocol_error() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let mut input = Header::data(1, 200 * 1024, Flags::SYN).encode().to_vec();
    input.extend(std::iter::repeat_n(0u8, 200 * 1024));
    s.handle_input(&input, now).unwrap();
    // 56 KiB left; one byte more is too much (no read happened, so no update was granted).
    let over = Header::data(1, 56 * 1024 + 1, Flags::NONE).encode();
    assert_eq!(
        s.handle_input(&over, now),
        Err(Error::Protocol(ProtocolError::WindowExceeded {
            stream: 1,
            len: 56 * 1024 + 1,
            window: 56 * 1024
        }))
    );
    let mut out = Vec::new();
    s.poll_transmit(&mut out, 1000);
    assert_eq!(frames(&out), vec![Header::go_away(GO_AWAY_PROTOCOL_ERROR)]);
    assert_eq!(s.poll_event(), Some(Event::InboundStream(1)));
    assert_eq!(s.poll_event(), Some(Event::Readable(1)));
    assert_eq!(s.poll_event(), Some(Event::StreamReset(1)));
}

#[test]
fn data_exactly_filling_the_window_is_accepted() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let mut input = Header::data(1, DEFAULT_WINDOW, Flags::SYN)
        .encode()
        .to_vec();
    input.resize(HEADER_LEN + DEFAULT_WINDOW as usize, 3);
    s.handle_input(&input, now).unwrap();
    // Zero-length data is fine even with the window at 0.
    s.handle_input(&Header::data(1, 0, Flags::NONE).encode(), now)
        .unwrap();
    let mut buf = vec![0u8; DEFAULT_WINDOW as usize + 10];
    assert_eq!(s.stream_read(1, &mut buf), Ok(DEFAULT_WINDOW as usize));
    assert!(buf[..DEFAULT_WINDOW as usize].iter().all(|&b| b == 3));
    let mut out = Vec::new();
    s.poll_transmit(&mut out, 1000);
    assert_eq!(
        frames(&out),
        vec![Header::window_update(1, DEFAULT_WINDOW, Flags::ACK)],
        "ACK rides on the window update that returns the consumed window"
    );
}

#[test]
fn data_for_unknown_stream_is_discarded() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let mut input = Header::data(5, 3, Flags::NONE).encode().to_vec();
    input.extend_from_slice(b"xyz");
    // A valid frame follows and must still parse.
    input.extend_from_slice(&Header::ping(Flags::SYN, 42).encode());
    s.handle_input(&input, now).unwrap();
    assert_eq!(s.num_streams(), 0);
    let mut out = Vec::new();
    s.poll_transmit(&mut out, 100);
    assert_eq!(frames(&out), vec![Header::ping(Flags::ACK, 42)]);
}

#[test]
fn busy_streams_interleave_fairly() {
    let cfg = Config {
        max_frame_payload: 16 * 1024,
        ..Config::default()
    };
    let mut c = Session::new(Mode::Client, cfg);
    let a = c.open_stream().unwrap();
    let b = c.open_stream().unwrap();
    c.stream_write(a, &[1u8; 200 * 1024]).unwrap();
    c.stream_write(b, &[2u8; 200 * 1024]).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 128 * 1024);
    let ids: Vec<_> = frames(&out)
        .into_iter()
        .filter(|h| h.frame_type == FrameType::Data)
        .map(|h| h.stream_id)
        .collect();
    assert!(ids.len() >= 6, "{ids:?}");
    for pair in ids.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {ids:?}");
    }
    assert!(out.len() <= 128 * 1024 + HEADER_LEN + 16 * 1024);
}

#[test]
fn control_frames_go_before_bulk_data() {
    let mut c = Session::new(Mode::Client, Config::default());
    let a = c.open_stream().unwrap();
    c.stream_write(a, &[1u8; 100 * 1024]).unwrap();
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 20 * 1024);
    c.ping(Instant::now());
    out.clear();
    c.poll_transmit(&mut out, 20 * 1024);
    assert_eq!(frames(&out)[0].frame_type, FrameType::Ping);
}

#[test]
fn poll_transmit_respects_max() {
    let mut c = Session::new(Mode::Client, Config::default());
    let a = c.open_stream().unwrap();
    c.stream_write(a, &[1u8; 100 * 1024]).unwrap();
    let mut out = Vec::new();
    let n = c.poll_transmit(&mut out, 5000);
    assert_eq!(n, 5000, "data frame is fitted to the room left");
    let n2 = c.poll_transmit(&mut out, 5000);
    assert_eq!(n2, 0, "out is already full");
}

#[test]
fn keepalive_pings_when_idle_and_times_out() {
    let cfg = Config {
        keepalive_interval: Some(Duration::from_secs(10)),
        ..Config::default()
    };
    let mut c = Session::new(Mode::Client, cfg);
    let t0 = Instant::now();
    c.handle_timeout(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    c.handle_timeout(t0 + Duration::from_secs(10));
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 100);
    assert_eq!(frames(&out), vec![Header::ping(Flags::SYN, 1)]);
    // Input postpones the timeout.
    c.handle_input(&[], t0 + Duration::from_secs(15)).unwrap();
    c.handle_timeout(t0 + Duration::from_secs(20));
    assert!(!c.is_closed());
    c.handle_timeout(t0 + Duration::from_secs(25));
    assert!(c.is_closed());
    assert_eq!(c.error(), Some(&Error::KeepaliveTimeout));
}

#[test]
fn larger_configured_window_is_announced_with_syn() {
    let cfg = Config {
        initial_window: 1024 * 1024,
        ..Config::default()
    };
    let mut p = Pair::with_configs(1 << 16, Config::default(), cfg);
    let id = p.s.open_stream().unwrap();
    let mut out = Vec::new();
    p.s.poll_transmit(&mut out, 1000);
    assert_eq!(
        frames(&out),
        vec![Header::window_update(id, 768 * 1024, Flags::SYN)]
    );
    p.c.handle_input(&out, p.now).unwrap();
    let mut ccfg_data = vec![0u8; 900 * 1024];
    ccfg_data[0] = 9;
    let mut sent = 0;
    while sent < ccfg_data.len() {
        sent += p.c.stream_write(id, &ccfg_data[sent..]).unwrap_or(0);
        p.pump();
    }
    assert_eq!(read_available(&mut p.s, id).0, ccfg_data);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_chunking_delivers_exact_bytes(
        writes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40_000), 1..16),
        chunk in 1usize..5000,
        max in 1usize..100_000,
        read_size in 1usize..70_000,
    ) {
        let mut p = Pair::new(chunk);
        p.max = max;
        let a = p.c.open_stream().unwrap();
        let b = p.c.open_stream().unwrap();
        let expected: Vec<u8> = writes.concat();
        let mut queue: Vec<&[u8]> = writes.iter().map(|w| w.as_slice()).collect();
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; read_size];
        let mut finished = false;
        let mut eof = (false, false);
        for _ in 0..100_000 {
            // Write the same bytes on two streams.
            if let Some(w) = queue.first_mut() {
                let wa = p.c.stream_write(a, w).unwrap_or(0);
                // Stream b gets exactly what a took, so both see the same sequence.
                let mut done = 0;
                while done < wa {
                    match p.c.stream_write(b, &w[done..wa]) {
                        Ok(n) => done += n,
                        Err(StreamError::WouldBlock) => p.pump(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                *w = &w[wa..];
                if w.is_empty() { queue.remove(0); }
            } else if !finished {
                p.c.stream_finish(a);
                p.c.stream_finish(b);
                finished = true;
            }
            p.pump();
            for (id, got, eof) in [(a, &mut got_a, &mut eof.0), (b, &mut got_b, &mut eof.1)] {
                loop {
                    match p.s.stream_read(id, &mut buf) {
                        Ok(0) => { *eof = true; break }
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(StreamError::WouldBlock) => break,
                        Err(StreamError::Unknown) => break, // not yet announced
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            if eof == (true, true) { break; }
        }
        prop_assert!(eof.0 && eof.1);
        prop_assert_eq!(&got_a, &expected);
        prop_assert_eq!(&got_b, &expected);
    }
}

#[test]
fn ping_flood_answers_are_bounded() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let input: Vec<u8> = (0..1000u32)
        .flat_map(|v| Header::ping(Flags::SYN, v).encode())
        .collect();
    s.handle_input(&input, now).unwrap();
    let mut out = Vec::new();
    s.poll_transmit(&mut out, usize::MAX);
    let answers = frames(&out);
    assert_eq!(answers.len(), 64);
    assert_eq!(answers[5], Header::ping(Flags::ACK, 5));
    // Once sent, new pings are answered again.
    s.handle_input(&Header::ping(Flags::SYN, 7777).encode(), now)
        .unwrap();
    out.clear();
    s.poll_transmit(&mut out, usize::MAX);
    assert_eq!(frames(&out), vec![Header::ping(Flags::ACK, 7777)]);
}

#[test]
fn refused_stream_flood_ends_the_session() {
    let now = Instant::now();
    let cfg = Config {
        max_streams: 1,
        ..Config::default()
    };
    let mut s = Session::new(Mode::Server, cfg);
    let mut result = Ok(());
    for i in 0..5000u32 {
        result = s.handle_input(
            &Header::window_update(2 * i + 1, 0, Flags::SYN).encode(),
            now,
        );
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(Error::Protocol(ProtocolError::RefusedStreamFlood))
    );
    assert!(s.is_closed());
}

#[test]
fn fin_and_rst_on_window_update_frames_like_go_yamux() {
    let now = Instant::now();
    let mut s = Session::new(Mode::Server, Config::default());
    let mut input = Header::window_update(1, 0, Flags::SYN).encode().to_vec();
    input.extend_from_slice(&Header::data(1, 2, Flags::NONE).encode());
    input.extend_from_slice(b"ok");
    input.extend_from_slice(&Header::window_update(1, 0, Flags::FIN).encode());
    input.extend_from_slice(&Header::window_update(3, 0, Flags::SYN).encode());
    input.extend_from_slice(&Header::window_update(3, 0, Flags::RST).encode());
    s.handle_input(&input, now).unwrap();
    assert_eq!(read_available(&mut s, 1), (b"ok".to_vec(), true));
    assert_eq!(s.stream_read(3, &mut [0; 4]), Err(StreamError::Reset));
}

#[test]
fn fin_travels_alone_after_the_last_data() {
    // js-libp2p's yamux discards the payload of a Data frame flagged FIN, so the FIN
    // must come in a frame of its own (a Window Update, as go-yamux sends it).
    let mut c = Session::new(Mode::Client, Config::default());
    let id = c.open_stream().unwrap();
    c.stream_write(id, b"last words").unwrap();
    c.stream_finish(id);
    let mut out = Vec::new();
    c.poll_transmit(&mut out, 1 << 20);
    assert_eq!(
        frames(&out),
        vec![
            Header::data(id, 10, Flags::SYN),
            Header::window_update(id, 0, Flags::FIN)
        ]
    );
}

#[test]
fn bounded_transmit_never_exceeds_max_and_loses_nothing() {
    // Frames built for Noise messages of 65519 plaintext bytes: control frames and data of
    // two streams must be split across calls without ever overshooting, and arrive intact.
    let mut p = Pair::new(usize::MAX);
    let a = p.c.open_stream().unwrap();
    let b = p.c.open_stream().unwrap();
    let da: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let db: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    p.c.stream_write(a, &da).unwrap();
    p.c.stream_write(b, &db).unwrap();
    p.c.stream_finish(b);
    p.c.ping(p.now);
    let max = 65535 - 16;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut b_done = false;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let mut out = Vec::new();
        // Start mid-buffer, as the driver does after the Noise length prefix.
        out.extend_from_slice(&[0, 0]);
        let n = p.c.poll_transmit_bounded(&mut out, 2 + max);
        assert!(out.len() <= 2 + max, "overshoot: {}", out.len());
        if n == 0 {
            break;
        }
        p.s.handle_input(&out[2..], p.now).unwrap();
        transfer(&mut p.s, &mut p.c, usize::MAX, 1 << 20, p.now);
        while let Some(ev) = p.s.poll_event() {
            if let Event::InboundStream(id) = ev {
                assert!(id == a || id == b);
                seen.push(id);
            }
        }
        if seen.contains(&a) {
            let (x, _) = read_available(&mut p.s, a);
            got_a.extend_from_slice(&x);
        }
        if seen.contains(&b) && !b_done {
            let (y, eof) = read_available(&mut p.s, b);
            got_b.extend_from_slice(&y);
            b_done |= eof;
        }
    }
    assert_eq!(got_a, da);
    assert_eq!(got_b, db);
    assert!(b_done);
    assert!(!p.c.wants_transmit());
}

#[test]
fn default_data_frames_fill_one_noise_message() {
    let mut c = Session::new(Mode::Client, Config::default());
    let a = c.open_stream().unwrap();
    c.stream_write(a, &[7u8; 200 * 1024]).unwrap();
    let mut out = Vec::new();
    c.poll_transmit_bounded(&mut out, 65535 - 16);
    // SYN rides on the data frame: one frame, exactly filling the message.
    let hs = frames(&out);
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_eq!(out.len(), 65535 - 16);
    assert!(c.wants_transmit());
}

#[test]
fn chunk_read_and_write_move_data_between_sessions() {
    // A relay's view: data arriving on one session's stream is moved as chunks into another
    // session's stream, with window updates and backpressure as for byte reads and writes.
    let mut a = Pair::new(usize::MAX);
    let mut b = Pair::with_configs(
        usize::MAX,
        Config {
            max_send_buffer: 64 * 1024,
            ..Config::default()
        },
        Config::default(),
    );
    let ia = a.c.open_stream().unwrap();
    let ib = b.c.open_stream().unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut fed = 0;
    let mut got = Vec::new();
    let mut held: Option<Chunk> = None;
    let mut a_fin_sent = false;
    let mut b_fin_sent = false;
    for _ in 0..10_000 {
        if fed < data.len() {
            if let Ok(n) = a.c.stream_write(ia, &data[fed..]) {
                fed += n;
            }
        } else if !a_fin_sent {
            a.c.stream_finish(ia);
            a_fin_sent = true;
        }
        a.pump();
        // Move chunks a.s → b.c without copying.
        loop {
            let chunk = match held.take() {
                Some(c) => c,
                None => match a.s.stream_read_chunk(ia, 20_000) {
                    Ok(c) if c.is_empty() => {
                        if !b_fin_sent {
                            b.c.stream_finish(ib);
                            b_fin_sent = true;
                        }
                        break;
                    }
                    Ok(c) => {
                        assert!(c.len() <= 20_000);
                        c
                    }
                    Err(StreamError::WouldBlock) => break,
                    Err(e) => panic!("{e:?}"),
                },
            };
            match b.c.stream_write_chunk(ib, chunk) {
                Ok(()) => {}
                Err((StreamError::WouldBlock, c)) => {
                    assert!(b.c.stream_send_buffered(ib) <= 64 * 1024);
                    held = Some(c);
                    break;
                }
                Err((e, _)) => panic!("{e:?}"),
            }
        }
        b.pump();
        let (x, eof) = read_available(&mut b.s, ib);
        got.extend_from_slice(&x);
        if eof {
            break;
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data);
}

/// Moves `total` bytes client → server: per exchange the client writes at most `write_step`
/// bytes, the server reads at most `read_step` bytes and the clock advances `step` (so a
/// ping's round trip is `step`). Returns the sum of the window deltas the server announced.
fn stream_with_reader(
    total: usize,
    step: Duration,
    max_window: u32,
    write_step: usize,
    read_step: usize,
) -> u64 {
    stream_with_reader_rate(total, step, max_window, write_step, read_step, None)
}

/// [`stream_with_reader`], with the server's stream window sized for `rate` bytes per second
/// ([`StreamLimits::window_rate`]) when given.
fn stream_with_reader_rate(
    total: usize,
    step: Duration,
    max_window: u32,
    write_step: usize,
    read_step: usize,
    rate: Option<u32>,
) -> u64 {
    let limits = rate.map(rate_limits);
    stream_with_reader_limits(total, step, max_window, write_step, read_step, limits)
}

/// Limits that size a stream's window for `rate` bytes per second.
fn rate_limits(rate: u32) -> StreamLimits {
    StreamLimits {
        window_rate: Some(rate),
        ..StreamLimits::default()
    }
}

/// [`stream_with_reader`], with `limits` on the server's stream.
fn stream_with_reader_limits(
    total: usize,
    step: Duration,
    max_window: u32,
    write_step: usize,
    read_step: usize,
    mut limits: Option<StreamLimits>,
) -> u64 {
    let cfg = Config {
        max_receive_window: max_window,
        ..Config::default()
    };
    // A send buffer large enough that the window, not the buffer, limits the sender.
    let client = Config {
        max_send_buffer: 32 << 20,
        ..Config::default()
    };
    let mut p = Pair::with_configs(usize::MAX, client, cfg);
    let id = p.c.open_stream().unwrap();
    let data = vec![5u8; total];
    let (mut fed, mut got, mut deltas) = (0, 0, 0u64);
    let mut buf = vec![0u8; read_step];
    for _ in 0..100_000 {
        if fed < total {
            let end = fed.saturating_add(write_step).min(total);
            fed += p.c.stream_write(id, &data[fed..end]).unwrap_or(0);
        }
        transfer(&mut p.c, &mut p.s, usize::MAX, 1 << 20, p.now);
        if let Some(l) = limits.take() {
            // Known to the server from the first exchange on.
            p.s.stream_set_limits(id, l);
        }
        if let Ok(n) = p.s.stream_read(id, &mut buf) {
            got += n;
        }
        let mut out = Vec::new();
        p.s.poll_transmit(&mut out, 1 << 20);
        for h in frames(&out) {
            if h.frame_type == FrameType::WindowUpdate {
                deltas += u64::from(h.length);
            }
        }
        p.c.handle_input(&out, p.now).unwrap();
        p.now += step;
        if got == total {
            break;
        }
    }
    assert_eq!(got, total);
    deltas
}

#[test]
fn receive_window_grows_for_a_fast_reader_up_to_the_maximum() {
    // Fast (no time passes) and the reader keeps up: the window doubles up to 4 MiB, so the
    // server announces more window than the data it received needs.
    let total = 16 << 20;
    let deltas = stream_with_reader(total, Duration::ZERO, 4 << 20, usize::MAX, 1 << 24);
    assert!(
        deltas > total as u64 + (2 << 20),
        "window did not grow: {deltas} announced for {total}"
    );
    // ... and never beyond the maximum: at most (max − initial) extra.
    assert!(deltas <= total as u64 + (4 << 20), "{deltas}");
    // A window-bound stream on a slow link (10 ms per exchange, i.e. a 10 ms RTT once
    // measured) grows too: a window per round trip is what window-bound looks like.
    let deltas = stream_with_reader(
        total,
        Duration::from_millis(10),
        4 << 20,
        usize::MAX,
        1 << 24,
    );
    assert!(deltas > total as u64 + (2 << 20), "{deltas}");
}

#[test]
fn receive_window_stays_for_slow_senders_and_lagging_readers() {
    let total = 4 << 20;
    let initial = u64::from(DEFAULT_WINDOW);
    // The sender trickles 16 KiB per 10 ms round trip: far below a window per round trip.
    // Only the first window, which looks like a burst, may count as fast (one doubling).
    let ms10 = Duration::from_millis(10);
    let deltas = stream_with_reader(total, ms10, 16 << 20, 16 * 1024, 1 << 24);
    assert!(
        deltas <= total as u64 + initial,
        "grew for a slow sender: {deltas}"
    );
    // The reader takes 16 KiB per round trip while the sender could send all: data piles
    // up in the receive buffer, and the window must not grow (that memory is ours).
    let deltas = stream_with_reader(1 << 20, ms10, 16 << 20, usize::MAX, 16 * 1024);
    assert!(
        deltas <= (1 << 20) + initial,
        "grew for a lagging reader: {deltas}"
    );
    // Tuning off (max = initial): no growth even when fast.
    let deltas = stream_with_reader(total, Duration::ZERO, DEFAULT_WINDOW, usize::MAX, 1 << 24);
    assert!(deltas <= total as u64, "grew with tuning off: {deltas}");
    // A reader that never reads: the sender is held to the initial window.
    let mut p = Pair::new(usize::MAX);
    let id = p.c.open_stream().unwrap();
    let big = vec![1u8; 1 << 20];
    let mut fed = 0;
    for _ in 0..50 {
        fed += p.c.stream_write(id, &big[fed..]).unwrap_or(0);
        p.pump();
    }
    assert_eq!(
        fed - p.c.stream_send_buffered(id),
        DEFAULT_WINDOW as usize,
        "only the initial window may be in flight"
    );
}

#[test]
fn window_rate_sizes_the_window_to_the_measured_round_trip() {
    let total = 16 << 20;
    let initial = u64::from(DEFAULT_WINDOW);
    let rate = 64 << 20;
    // A zero round trip (loopback, as far as the clock can tell): a fast, window-bound
    // reader that would grow to the 4 MiB maximum stays at the initial window.
    let deltas = stream_with_reader_rate(
        total,
        Duration::ZERO,
        4 << 20,
        usize::MAX,
        1 << 24,
        Some(rate),
    );
    assert!(
        deltas <= total as u64,
        "grew on a zero round trip: {deltas}"
    );
    // A 10 ms round trip: 64 MiB/s needs 671 088 bytes of window; it grows that far (past
    // one doubling) and no further.
    let ms10 = Duration::from_millis(10);
    let bdp = 671_088;
    let deltas = stream_with_reader_rate(total, ms10, 4 << 20, usize::MAX, 1 << 24, Some(rate));
    assert!(
        deltas > total as u64 + initial,
        "did not grow to the rate: {deltas}"
    );
    assert!(
        deltas <= total as u64 + bdp - initial,
        "grew past the rate: {deltas}"
    );
    // The per-stream maximum still caps it: 64 MiB/s over 10 ms is more than 512 KiB.
    let deltas = stream_with_reader_rate(total, ms10, 512 << 10, usize::MAX, 1 << 24, Some(rate));
    assert!(deltas <= total as u64 + (512 << 10) - initial, "{deltas}");
    // Without a rate the same stream grows to the maximum (the control).
    let deltas = stream_with_reader_rate(total, ms10, 4 << 20, usize::MAX, 1 << 24, None);
    assert!(deltas > total as u64 + bdp, "{deltas}");
}

/// A stream that is read fast (the window grows), then slowly (16 KiB per 10 ms exchange):
/// returns the bytes left buffered at the reader at the end of the slow phase, and what the
/// stream still holds of the window budget in `limits`, if any.
fn buffered_after_slowdown(mut limits: Option<StreamLimits>) -> (usize, Option<u64>) {
    let budget = limits.as_ref().and_then(|l| l.window_budget.clone());
    let server = Config {
        max_receive_window: 4 << 20,
        ..Config::default()
    };
    let client = Config {
        max_send_buffer: 64 << 20,
        ..Config::default()
    };
    let mut p = Pair::with_configs(usize::MAX, client, server);
    let id = p.c.open_stream().unwrap();
    let data = vec![9u8; 48 << 20];
    let (mut fed, mut got) = (0, 0);
    let mut buf = vec![0u8; 1 << 24];
    for i in 0..400 {
        fed += p.c.stream_write(id, &data[fed..]).unwrap_or(0);
        transfer(&mut p.c, &mut p.s, usize::MAX, 1 << 22, p.now);
        if let Some(l) = limits.take() {
            p.s.stream_set_limits(id, l);
        }
        let want = if i < 12 { buf.len() } else { 16 * 1024 };
        if let Ok(n) = p.s.stream_read(id, &mut buf[..want]) {
            got += n;
        }
        let mut out = Vec::new();
        p.s.poll_transmit(&mut out, 1 << 22);
        p.c.handle_input(&out, p.now).unwrap();
        p.now += Duration::from_millis(10);
    }
    let buffered = fed - p.c.stream_send_buffered(id) - got;
    (buffered, budget.map(|b| b.in_use()))
}

#[test]
fn rate_sized_window_shrinks_back_while_its_reader_lags() {
    // Control: a plain window grown while the reader was fast stays grown, and a slow
    // reader then keeps all of it filled.
    let (plain, _) = buffered_after_slowdown(None);
    assert!(plain > 2 << 20, "control did not grow: {plain}");
    // Rate-sized (64 MiB/s over the 10 ms round trip: 671 088 bytes): halved per window
    // read while the reader lags, back to the initial 256 KiB.
    let (sized, _) = buffered_after_slowdown(Some(rate_limits(64 << 20)));
    assert!(sized <= 256 * 1024, "still holding {sized} bytes");
    // The growth it took from a budget is given back as the window shrinks, while the
    // stream is still open.
    let budget = WindowBudget::new(64 << 20);
    let (sized, held) = buffered_after_slowdown(Some(StreamLimits {
        window_budget: Some(budget.clone()),
        ..rate_limits(64 << 20)
    }));
    assert!(sized <= 256 * 1024, "still holding {sized} bytes");
    assert_eq!(held, Some(0), "budget not given back");
    assert_eq!(budget.refused(), 0);
}

#[test]
fn window_budget_bounds_growth_and_is_given_back() {
    let total = 16 << 20;
    let ms10 = Duration::from_millis(10);
    let with_budget = |b: &WindowBudget| StreamLimits {
        window_budget: Some(b.clone()),
        ..rate_limits(1 << 30)
    };
    // Control: 1 GiB/s over a 10 ms round trip wants 10 MiB of window; 4 MiB is the cap.
    let run = |limits| stream_with_reader_limits(total, ms10, 4 << 20, usize::MAX, 1 << 24, limits);
    let deltas = run(Some(rate_limits(1 << 30)));
    assert!(
        deltas > total as u64 + (2 << 20),
        "control did not grow: {deltas}"
    );
    // A 1 MiB budget: the window grows, by at most that much.
    let budget = WindowBudget::new(1 << 20);
    let deltas = run(Some(with_budget(&budget)));
    assert!(deltas > total as u64, "did not grow at all: {deltas}");
    assert!(
        deltas <= total as u64 + (1 << 20),
        "grew past the budget: {deltas}"
    );
    assert_eq!(
        budget.in_use(),
        0,
        "the session is gone, yet budget is held"
    );
    // Another stream holds the whole budget: no growth at all, and the refusal is counted.
    let mut other = budget::BudgetShare::new(budget.clone());
    assert_eq!(other.grow(1 << 20), 1 << 20);
    let refused = budget.refused();
    let deltas = run(Some(with_budget(&budget)));
    assert!(deltas <= total as u64, "grew without budget: {deltas}");
    assert!(budget.refused() > refused);
    drop(other);
    assert_eq!(budget.in_use(), 0);
    // A reset stream gives its share back at once (its buffers are gone).
    let client = Config {
        max_send_buffer: 32 << 20,
        ..Config::default()
    };
    let mut p = Pair::with_configs(usize::MAX, client, Config::default());
    let id = p.c.open_stream().unwrap();
    let data = vec![7u8; 32 << 20];
    let mut buf = vec![0u8; 1 << 24];
    let mut fed = 0;
    for i in 0..50 {
        fed += p.c.stream_write(id, &data[fed..]).unwrap_or(0);
        transfer(&mut p.c, &mut p.s, usize::MAX, 1 << 20, p.now);
        if i == 0 {
            p.s.stream_set_limits(id, with_budget(&budget));
        }
        while matches!(p.s.stream_read(id, &mut buf), Ok(n) if n > 0) {}
        transfer(&mut p.s, &mut p.c, usize::MAX, 1 << 20, p.now);
        p.now += ms10;
    }
    assert!(budget.in_use() > 0, "the window never grew");
    p.c.stream_reset(id);
    p.pump();
    assert_eq!(budget.in_use(), 0, "reset stream still holds budget");
}

#[test]
fn per_stream_send_buffer_cap_blocks_writes_beyond_it() {
    let mut p = Pair::new(usize::MAX);
    let id = p.c.open_stream().unwrap();
    let other = p.c.open_stream().unwrap();
    p.c.stream_set_limits(
        id,
        StreamLimits {
            max_send_buffer: Some(10_000),
            ..StreamLimits::default()
        },
    );
    let data = vec![1u8; 1 << 20];
    // Nothing transmitted yet: the buffer takes up to the cap, then blocks.
    assert_eq!(p.c.stream_write(id, &data).unwrap(), 10_000);
    assert_eq!(p.c.stream_write(id, &data), Err(StreamError::WouldBlock));
    // A whole chunk is refused when it does not fit a non-empty buffer.
    let chunk = Chunk::owned(bytes::BytesMut::from(&data[..5_000]));
    assert!(matches!(
        p.c.stream_write_chunk(id, chunk),
        Err((StreamError::WouldBlock, _))
    ));
    // Other streams keep the session's 256 KiB.
    assert_eq!(p.c.stream_write(other, &data).unwrap(), 256 * 1024);
    // Once sent, there is room again (and the writer is told).
    p.pump();
    assert!(events(&mut p.c).contains(&Event::Writable(id)));
    assert_eq!(p.c.stream_write(id, &data).unwrap(), 10_000);
}

#[test]
fn per_stream_window_cap_bounds_growth() {
    let mut p = Pair::new(usize::MAX);
    let id = p.c.open_stream().unwrap();
    p.c.stream_write(id, b"x").unwrap();
    p.pump();
    p.s.stream_set_limits(
        id,
        StreamLimits {
            max_window: Some(512 * 1024),
            ..StreamLimits::default()
        },
    );
    let data = vec![3u8; 8 << 20];
    let (mut fed, mut got, mut deltas) = (0, 1, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    got -= p.s.stream_read(id, &mut buf).unwrap();
    assert_eq!(got, 0);
    while got < data.len() {
        fed += p.c.stream_write(id, &data[fed..]).unwrap_or(0);
        transfer(&mut p.c, &mut p.s, usize::MAX, 1 << 20, p.now);
        while let Ok(n) = p.s.stream_read(id, &mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        let mut out = Vec::new();
        p.s.poll_transmit(&mut out, 1 << 20);
        for h in frames(&out) {
            if h.frame_type == FrameType::WindowUpdate {
                deltas += u64::from(h.length);
            }
        }
        p.c.handle_input(&out, p.now).unwrap();
    }
    // Grown from 256 KiB to the 512 KiB cap, no further.
    assert!(deltas > (8 << 20) + 1, "{deltas}");
    assert!(deltas <= (8 << 20) + 1 + 256 * 1024, "{deltas}");
}

#[test]
fn owned_input_hands_large_payloads_over_without_copy() {
    let now = Instant::now();
    let mut c = Session::new(Mode::Client, Config::default());
    let mut s = Session::new(Mode::Server, Config::default());
    let id = c.open_stream().unwrap();
    let big = vec![7u8; 20_000];
    let small = vec![8u8; 100];
    assert_eq!(c.stream_write(id, &big).unwrap(), big.len());
    let mut wire = Vec::new();
    c.poll_transmit(&mut wire, 1 << 20);
    assert_eq!(c.stream_write(id, &small).unwrap(), small.len());
    c.poll_transmit(&mut wire, 1 << 20);
    let input = bytes::BytesMut::from(&wire[..]);
    let (lo, hi) = (
        input.as_ptr() as usize,
        input.as_ptr() as usize + input.len(),
    );
    s.handle_input_owned(input, now).unwrap();
    // The large payload is a piece of the input buffer itself; the small one a copy.
    let first = s.stream_read_chunk(id, usize::MAX).unwrap();
    assert_eq!(&first[..], &big[..]);
    assert!(first.is_shared());
    let at = first.as_ptr() as usize;
    assert!(lo <= at && at < hi, "payload was copied");
    let second = s.stream_read_chunk(id, usize::MAX).unwrap();
    assert_eq!(&second[..], &small[..]);
    assert!(!second.is_shared());
    let at = second.as_ptr() as usize;
    assert!(!(lo <= at && at < hi));
}
