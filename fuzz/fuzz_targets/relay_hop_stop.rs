//! What a relay and its clients parse from hop and stop streams (v2) and from
//! v1 streams: framed protobufs, then the request/response checks. A refused
//! request carries one of the spec's request errors; an accepted CONNECT names
//! a peer id that really parses.
#![no_main]

use circuit_proto::{relay, relay_v1};
use circuit_wire::frame::FrameDecoder;
use circuit_wire::pb::relay::{HopMessage, Status, StopMessage};
use circuit_wire::pb::relay_v1::CircuitRelay;
use libfuzzer_sys::fuzz_target;
use libp2p_identity::PeerId;

fuzz_target!(|input: &[u8]| {
    let me = circuit_fuzz::identity().public().to_peer_id();
    let mut dec = FrameDecoder::new(relay::MAX_MESSAGE);
    for chunk in circuit_fuzz::chunks(input) {
        dec.push(chunk);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            if let Ok(m) = circuit_wire::frame::decode_message::<HopMessage>(&frame) {
                match relay::parse_hop_request(&m) {
                    Ok(relay::HopRequest::Connect { target }) => {
                        let id = m.peer.as_ref().and_then(|p| p.id.as_deref());
                        assert_eq!(id.and_then(|b| PeerId::from_bytes(b).ok()), Some(target));
                    }
                    Ok(relay::HopRequest::Reserve) => {}
                    Err(s) => assert!(matches!(s, Status::MalformedMessage | Status::UnexpectedMessage)),
                }
                let _ = relay::parse_connect_response(&m);
                let _ = relay::parse_reserve_response(&m, &me, &me, 0);
            }
            if let Ok(m) = circuit_wire::frame::decode_message::<StopMessage>(&frame) {
                if let Err(s) = relay::parse_stop_connect(&m) {
                    assert!(matches!(s, Status::MalformedMessage | Status::UnexpectedMessage));
                }
                let _ = relay::parse_stop_response(&m);
            }
            if let Ok(m) = circuit_wire::frame::decode_message::<CircuitRelay>(&frame) {
                let _ = relay_v1::parse_request(&m);
                let _ = relay_v1::parse_status(&m);
            }
        }
    }
});
