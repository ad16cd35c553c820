//! multistream-select as the listener of a connection or stream: whatever the
//! peer sends, it selects only a protocol it supports, its output stays bounded,
//! and an error is final.
#![no_main]

use circuit_proto::multistream::{self, Listener};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let supported = vec!["/noise".to_string(), "/yamux/1.0.0".to_string()];
    let mut l = Listener::new(supported.clone());
    let mut out = Vec::new();
    l.poll_transmit(&mut out);
    for chunk in circuit_fuzz::chunks(input) {
        let r = l.handle_input(chunk);
        l.poll_transmit(&mut out);
        if r.is_err() {
            assert!(l.error().is_some());
            assert!(l.handle_input(b"\x07/noise\n").is_err(), "error not final");
            break;
        }
        if let Some(p) = l.selected() {
            assert!(supported.iter().any(|s| s == p), "selected unsupported {p}");
            let _ = l.take_leftover();
            break;
        }
    }
    // At most MAX_ATTEMPTS answers of at most one message each, plus the header and the echo.
    assert!(out.len() <= (multistream::MAX_ATTEMPTS + 2) * (multistream::MAX_MESSAGE_LEN + 3));
});
