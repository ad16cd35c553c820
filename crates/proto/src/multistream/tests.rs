use super::*;
use proptest::prelude::*;

const HEADER: [u8; 20] = [
    0x13, 0x2f, 0x6d, 0x75, 0x6c, 0x74, 0x69, 0x73, 0x74, 0x72, 0x65, 0x61, 0x6d, 0x2f, 0x31, 0x2e,
    0x30, 0x2e, 0x30, 0x0a,
];

fn msg(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(text.as_bytes(), &mut out);
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn out_of_dialer(d: &mut Dialer) -> Vec<u8> {
    let mut out = Vec::new();
    d.poll_transmit(&mut out);
    out
}

fn out_of_listener(l: &mut Listener) -> Vec<u8> {
    let mut out = Vec::new();
    l.poll_transmit(&mut out);
    out
}

#[test]
fn byte_exact_messages() {
    assert_eq!(msg(PROTOCOL), HEADER);
    assert_eq!(msg("na"), [0x03, 0x6e, 0x61, 0x0a]);
    assert_eq!(msg("/noise"), b"\x07/noise\n");
}

#[test]
fn listener_sends_header_immediately() {
    let mut l = Listener::new(strings(&["/noise"]));
    assert_eq!(out_of_listener(&mut l), HEADER);
    // Nothing more until the dialer speaks.
    assert_eq!(out_of_listener(&mut l), b"");
}

#[test]
fn dialer_sends_header_and_first_proposal_at_once() {
    let mut d = Dialer::new(strings(&["/noise", "/tls/1.0.0"]), false);
    let mut want = HEADER.to_vec();
    want.extend(msg("/noise"));
    assert_eq!(out_of_dialer(&mut d), want);
    assert_eq!(d.selected(), None);
}

#[test]
fn dialer_walks_proposals_after_na() {
    let mut d = Dialer::new(strings(&["/a", "/b", "/c"]), false);
    out_of_dialer(&mut d);
    let mut input = HEADER.to_vec();
    input.extend(msg("na"));
    d.handle_input(&input).unwrap();
    assert_eq!(out_of_dialer(&mut d), msg("/b"));
    d.handle_input(&msg("na")).unwrap();
    assert_eq!(out_of_dialer(&mut d), msg("/c"));
    let mut echo = msg("/c");
    echo.extend_from_slice(b"app");
    d.handle_input(&echo).unwrap();
    assert!(d.is_confirmed());
    assert_eq!(d.selected(), Some("/c"));
    assert_eq!(d.take_leftover(), b"app");
    // Later input goes straight to the leftover.
    d.handle_input(b"more").unwrap();
    assert_eq!(d.take_leftover(), b"more");
}

#[test]
fn dialer_all_refused() {
    let mut d = Dialer::new(strings(&["/a", "/b"]), false);
    let mut input = HEADER.to_vec();
    input.extend(msg("na"));
    input.extend(msg("na"));
    assert_eq!(d.handle_input(&input), Err(Error::NotSupported));
    assert_eq!(d.error(), Some(&Error::NotSupported));
    // Sticky.
    assert_eq!(d.handle_input(b""), Err(Error::NotSupported));
    assert_eq!(d.selected(), None);
}

#[test]
fn empty_dialer_fails() {
    let mut d = Dialer::new(vec![], true);
    assert_eq!(out_of_dialer(&mut d), b"");
    assert_eq!(d.handle_input(&HEADER), Err(Error::NotSupported));
    assert_eq!(d.selected(), None);
}

#[test]
fn lazy_dialer_with_pipelined_data() {
    let mut d = Dialer::new(strings(&["/noise"]), true);
    assert_eq!(d.selected(), Some("/noise"));
    assert!(!d.is_confirmed());
    let mut wire = out_of_dialer(&mut d);
    wire.extend_from_slice(b"\x00\x20noise-msg-1....................");

    let mut l = Listener::new(strings(&["/yamux/1.0.0", "/noise"]));
    l.handle_input(&wire).unwrap();
    assert_eq!(l.selected(), Some("/noise"));
    assert_eq!(
        l.take_leftover(),
        b"\x00\x20noise-msg-1...................."
    );

    let mut back = out_of_listener(&mut l);
    let mut want = HEADER.to_vec();
    want.extend(msg("/noise"));
    assert_eq!(back, want);
    back.extend_from_slice(b"reply");
    // Feed the answer one byte at a time.
    for b in &back {
        d.handle_input(std::slice::from_ref(b)).unwrap();
    }
    assert!(d.is_confirmed());
    assert_eq!(d.selected(), Some("/noise"));
    assert_eq!(d.take_leftover(), b"reply");
}

#[test]
fn lazy_dialer_refused() {
    let mut d = Dialer::new(strings(&["/noise"]), true);
    let mut wire = out_of_dialer(&mut d);
    wire.extend_from_slice(b"pipelined garbage for the listener");
    let mut l = Listener::new(strings(&["/tls/1.0.0"]));
    // The listener answers na; the pipelined bytes then fail to parse as a
    // message, which is fine: the stream gets reset.
    let _ = l.handle_input(&wire);
    assert_eq!(l.selected(), None);
    let back = out_of_listener(&mut l);
    let mut want = HEADER.to_vec();
    want.extend(msg("na"));
    assert_eq!(back, want);
    assert_eq!(d.handle_input(&back), Err(Error::NotSupported));
    assert_eq!(d.selected(), None);
    assert!(!d.is_confirmed());
}

#[test]
fn header_mismatch() {
    let mut d = Dialer::new(strings(&["/noise"]), false);
    assert_eq!(
        d.handle_input(&msg("/multistream/2.0.0")),
        Err(Error::BadHeader)
    );
    let mut l = Listener::new(strings(&["/noise"]));
    assert_eq!(l.handle_input(&msg("/noise")), Err(Error::BadHeader));
    // Header without the newline inside its length.
    let mut bad = HEADER.to_vec();
    bad[19] = b'x';
    let mut l = Listener::new(strings(&["/noise"]));
    assert!(matches!(l.handle_input(&bad), Err(Error::Malformed(_))));
}

#[test]
fn ls_lists_supported_protocols() {
    let mut l = Listener::new(strings(&["/a", "/bc"]));
    out_of_listener(&mut l);
    let mut input = HEADER.to_vec();
    input.extend(msg("ls"));
    l.handle_input(&input).unwrap();
    assert_eq!(
        out_of_listener(&mut l),
        [0x0a, 0x03, b'/', b'a', b'\n', 0x04, b'/', b'b', b'c', b'\n', b'\n']
    );
    // Negotiation continues after ls.
    l.handle_input(&msg("/bc")).unwrap();
    assert_eq!(l.selected(), Some("/bc"));
    assert_eq!(out_of_listener(&mut l), msg("/bc"));
}

#[test]
fn ls_answer_is_bounded() {
    let many: Vec<String> = (0..2000).map(|i| format!("/protocol/{i:05}")).collect();
    let mut l = Listener::new(many);
    out_of_listener(&mut l);
    let mut input = HEADER.to_vec();
    input.extend(msg("ls"));
    l.handle_input(&input).unwrap();
    let out = out_of_listener(&mut l);
    let (body, n) = read_message(&out).unwrap().unwrap();
    assert_eq!(n, out.len());
    assert!(body.len() < MAX_MESSAGE_LEN);
}

#[test]
fn over_long_message_rejected_from_prefix() {
    let mut l = Listener::new(strings(&["/noise"]));
    // 16384 = 80 80 01: rejected with only three bytes seen.
    assert_eq!(
        l.handle_input(&[0x80, 0x80, 0x01]),
        Err(Error::MessageTooLarge)
    );
    let mut d = Dialer::new(strings(&["/noise"]), false);
    d.handle_input(&HEADER).unwrap();
    assert_eq!(d.handle_input(&[0xff, 0xff]), Ok(()));
    assert_eq!(d.handle_input(&[0x7f]), Err(Error::MessageTooLarge));
    // Exactly the maximum is accepted as a length (then waits for the body).
    let mut l = Listener::new(strings(&["/noise"]));
    assert_eq!(l.handle_input(&[0xff, 0x7f]), Ok(()));
    assert_eq!(l.inbuf.len(), 2);
}

#[test]
fn non_minimal_and_empty_messages() {
    let mut l = Listener::new(strings(&["/noise"]));
    assert!(matches!(
        l.handle_input(&[0x80, 0x00]),
        Err(Error::Malformed(_))
    ));
    let mut l = Listener::new(strings(&["/noise"]));
    assert!(matches!(l.handle_input(&[0x00]), Err(Error::Malformed(_))));
}

#[test]
fn too_many_attempts() {
    let mut l = Listener::new(strings(&["/noise"]));
    let mut input = HEADER.to_vec();
    for i in 0..MAX_ATTEMPTS {
        input.extend(msg(&format!("/nope/{i}")));
    }
    l.handle_input(&input).unwrap();
    let out = out_of_listener(&mut l);
    assert_eq!(out.len(), HEADER.len() + 4 * MAX_ATTEMPTS);
    assert_eq!(l.handle_input(&msg("/nope")), Err(Error::TooManyAttempts));
    // Even a supported one is too late now.
    assert_eq!(l.handle_input(&msg("/noise")), Err(Error::TooManyAttempts));
}

#[test]
fn unexpected_messages_to_listener() {
    let mut l = Listener::new(strings(&["/noise"]));
    let mut input = HEADER.to_vec();
    input.extend(msg("na"));
    assert!(matches!(l.handle_input(&input), Err(Error::Malformed(_))));
    let mut l = Listener::new(strings(&["/noise"]));
    let mut input = HEADER.to_vec();
    input.extend_from_slice(&HEADER);
    assert!(matches!(l.handle_input(&input), Err(Error::Malformed(_))));
}

#[test]
fn dialer_rejects_wrong_echo() {
    let mut d = Dialer::new(strings(&["/noise"]), false);
    let mut input = HEADER.to_vec();
    input.extend(msg("/tls/1.0.0"));
    assert!(matches!(d.handle_input(&input), Err(Error::Malformed(_))));
}

/// Runs a dialer and a listener against each other, delivering bytes in
/// chunks of the given sizes (cycled), with application data sent by each
/// side as soon as it may.
fn run_pair(
    dialer: Vec<String>,
    lazy: bool,
    listener: Vec<String>,
    chunks: &[usize],
    d_app: &[u8],
    l_app: &[u8],
) -> (Dialer, Listener, Vec<u8>, Vec<u8>) {
    let mut d = Dialer::new(dialer, lazy);
    let mut l = Listener::new(listener);
    let (mut d2l, mut l2d) = (Vec::new(), Vec::new());
    let (mut d_sent_app, mut l_sent_app) = (false, false);
    let (mut d_got, mut l_got) = (Vec::new(), Vec::new());
    let mut k = 0;
    let mut next_chunk = || {
        k += 1;
        chunks
            .get(k % chunks.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1)
    };
    for _ in 0..10_000 {
        d.poll_transmit(&mut d2l);
        if !d_sent_app && d.selected().is_some() {
            d2l.extend_from_slice(d_app);
            d_sent_app = true;
        }
        l.poll_transmit(&mut l2d);
        if !l_sent_app && l.selected().is_some() {
            l2d.extend_from_slice(l_app);
            l_sent_app = true;
        }
        if d2l.is_empty() && l2d.is_empty() {
            break;
        }
        let n = next_chunk().min(d2l.len());
        let part: Vec<u8> = d2l.drain(..n).collect();
        if l.handle_input(&part).is_err() {
            break;
        }
        let n = next_chunk().min(l2d.len());
        let part: Vec<u8> = l2d.drain(..n).collect();
        if d.handle_input(&part).is_err() {
            break;
        }
        d_got.extend(d.take_leftover());
        l_got.extend(l.take_leftover());
    }
    d_got.extend(d.take_leftover());
    l_got.extend(l.take_leftover());
    (d, l, d_got, l_got)
}

proptest! {
    #[test]
    fn negotiation_survives_any_chunking(
        chunks in proptest::collection::vec(1usize..40, 1..20),
        lazy in any::<bool>(),
        d_app in proptest::collection::vec(any::<u8>(), 0..100),
        l_app in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let (d, l, d_got, l_got) = run_pair(
            strings(&["/x/1", "/y/2", "/noise"]),
            lazy,
            strings(&["/yamux/1.0.0", "/noise"]),
            &chunks,
            &d_app,
            &l_app,
        );
        prop_assert_eq!(d.selected(), Some("/noise"));
        prop_assert!(d.is_confirmed());
        prop_assert_eq!(l.selected(), Some("/noise"));
        prop_assert_eq!(d_got, l_app);
        prop_assert_eq!(l_got, d_app);
    }

    #[test]
    fn lazy_single_protocol_any_chunking(
        chunks in proptest::collection::vec(1usize..40, 1..20),
        d_app in proptest::collection::vec(any::<u8>(), 0..100),
        l_app in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let (d, l, d_got, l_got) = run_pair(
            strings(&["/noise"]),
            true,
            strings(&["/noise"]),
            &chunks,
            &d_app,
            &l_app,
        );
        prop_assert!(d.is_confirmed());
        prop_assert_eq!(l.selected(), Some("/noise"));
        prop_assert_eq!(d_got, l_app);
        prop_assert_eq!(l_got, d_app);
    }

    #[test]
    fn random_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
        with_header in any::<bool>(),
    ) {
        let mut input = if with_header { HEADER.to_vec() } else { Vec::new() };
        input.extend_from_slice(&data);
        let at = cut.index(input.len() + 1);
        let mut l = Listener::new(strings(&["/noise", "/yamux/1.0.0"]));
        let mut d = Dialer::new(strings(&["/noise", "/tls/1.0.0"]), false);
        let mut dl = Dialer::new(strings(&["/noise"]), true);
        for part in [&input[..at], &input[at..]] {
            let _ = l.handle_input(part);
            let _ = d.handle_input(part);
            let _ = dl.handle_input(part);
        }
        let mut sink = Vec::new();
        l.poll_transmit(&mut sink);
        d.poll_transmit(&mut sink);
        // Internal buffers stay bounded by one message.
        prop_assert!(l.inbuf.len() <= MAX_MESSAGE_LEN + 2);
        prop_assert!(d.inbuf.len() <= MAX_MESSAGE_LEN + 2);
        // Output is bounded too: at most one answer per input message.
        prop_assert!(sink.len() <= 2 * HEADER.len() + 4 * MAX_ATTEMPTS + 16 + input.len());
    }
}
