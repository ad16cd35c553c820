//! A yamux session fed arbitrary (already decrypted) input, as a relay's
//! connection driver feeds it: it fails or goes on, never holds more streams
//! than its limit, an error is final, and reading every readable stream and
//! draining its output keep working.
#![no_main]

use std::time::{Duration, Instant};

use circuit_proto::yamux::{Config, Event, Mode, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let config = Config {
        max_streams: 16,
        max_ack_backlog: 8,
        ..Config::default()
    };
    let mut s = Session::new(if mode % 2 == 0 { Mode::Server } else { Mode::Client }, config);
    let now = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Open a stream of our own too, so ACK/RST/window paths for our ids are reachable.
    let _ = s.open_stream();
    for chunk in circuit_fuzz::chunks(rest) {
        let r = s.handle_input(chunk, now);
        while let Some(ev) = s.poll_event() {
            if let Event::Readable(id) = ev {
                while let Ok(n) = s.stream_read(id, &mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.stream_write(id, b"pong");
            }
        }
        assert!(s.num_streams() <= 16 + 1);
        out.clear();
        s.poll_transmit(&mut out, 1 << 20);
        if r.is_err() {
            assert!(s.handle_input(&[0; 12], now).is_err(), "error not final");
            return;
        }
    }
    s.handle_timeout(now + Duration::from_secs(300));
    out.clear();
    s.poll_transmit(&mut out, 1 << 20);
});
