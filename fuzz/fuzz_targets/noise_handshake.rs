//! Noise XX handshake input. The first input byte picks the role:
//! even — we are the responder and the input is the initiator's messages 1 and 3;
//! odd — we are the initiator (message 1 sent) and the input is message 2.
//! Forged input must never complete a handshake (message 2 and 3 carry an
//! identity signature that random bytes cannot make), and never panic.
#![no_main]

use circuit_proto::noise::{self, Handshake, Stage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&role, rest)) = input.split_first() else {
        return;
    };
    let id = circuit_fuzz::identity();
    let mut hs = if role % 2 == 0 {
        Handshake::responder(&id, noise::Config::yamux())
    } else {
        Handshake::initiator(&id, None, noise::Config::yamux())
    }
    .expect("handshake state");
    let mut out = Vec::new();
    hs.poll_transmit(&mut out);
    for chunk in circuit_fuzz::chunks(rest) {
        if hs.handle_input(chunk).is_err() {
            assert!(hs.handle_input(&[0]).is_err(), "failed handshake accepted more input");
            return;
        }
        hs.poll_transmit(&mut out);
    }
    assert!(
        !matches!(hs.stage(), Stage::Finished | Stage::Flushing),
        "a forged handshake completed"
    );
    assert!(hs.into_transport().is_err());
});
