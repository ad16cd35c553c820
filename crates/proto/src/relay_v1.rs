//! Circuit relay v1 (`/libp2p/circuit/relay/0.1.0`) messages: one protocol for
//! hop, stop and can-hop; the message type decides the role. Old go/js/rust
//! peers speak it; there are no reservations, and our relay applies the same
//! circuit limits as v2.

use circuit_wire::pb::relay_v1::{CircuitRelay, Peer, Status, Type};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

/// Protocol id.
pub const PROTOCOL: &str = "/libp2p/circuit/relay/0.1.0";
/// Largest message (go-libp2p-circuit used 4096).
pub const MAX_MESSAGE: usize = 4096;

/// A checked v1 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Relay `src` to `dst`.
    Hop {
        /// The initiator as it claims to be.
        src: PeerId,
        /// Where to.
        dst: PeerId,
    },
    /// A relayed connection from `src` to `dst` (us).
    Stop {
        /// The initiator.
        src: PeerId,
        /// The destination (should be us).
        dst: PeerId,
    },
    /// Are you a relay?
    CanHop,
}

fn peer_of(p: Option<&Peer>) -> Option<PeerId> {
    p.and_then(|p| PeerId::from_bytes(&p.id).ok())
}

/// Checks a message; the error is the status to answer with.
pub fn parse_request(m: &CircuitRelay) -> Result<Request, Status> {
    match m.r#type.and_then(|t| Type::try_from(t).ok()) {
        Some(Type::Hop) => {
            let src = peer_of(m.src_peer.as_ref()).ok_or(Status::HopSrcMultiaddrInvalid)?;
            let dst = peer_of(m.dst_peer.as_ref()).ok_or(Status::HopDstMultiaddrInvalid)?;
            Ok(Request::Hop { src, dst })
        }
        Some(Type::Stop) => {
            let src = peer_of(m.src_peer.as_ref()).ok_or(Status::StopSrcMultiaddrInvalid)?;
            let dst = peer_of(m.dst_peer.as_ref()).ok_or(Status::StopDstMultiaddrInvalid)?;
            Ok(Request::Stop { src, dst })
        }
        Some(Type::CanHop) => Ok(Request::CanHop),
        _ => Err(Status::MalformedMessage),
    }
}

fn peer(id: &PeerId, addrs: &[Multiaddr]) -> Peer {
    Peer {
        id: id.to_bytes(),
        addrs: addrs.iter().map(|a| a.to_vec()).collect(),
    }
}

/// A HOP request from `src` (with its addresses) to `dst`.
pub fn hop(src: &PeerId, src_addrs: &[Multiaddr], dst: &PeerId) -> CircuitRelay {
    CircuitRelay {
        r#type: Some(Type::Hop as i32),
        src_peer: Some(peer(src, src_addrs)),
        dst_peer: Some(peer(dst, &[])),
        code: None,
    }
}

/// The STOP the relay forwards to the destination: the HOP's peers, unchanged.
pub fn stop_from(hop: &CircuitRelay) -> CircuitRelay {
    CircuitRelay {
        r#type: Some(Type::Stop as i32),
        ..hop.clone()
    }
}

/// `{type=STATUS, code}`.
pub fn status(code: Status) -> CircuitRelay {
    CircuitRelay {
        r#type: Some(Type::Status as i32),
        code: Some(code as i32),
        src_peer: None,
        dst_peer: None,
    }
}

/// The status code of an answer: `Ok(())` for SUCCESS, else the code (or MALFORMED if not a STATUS).
pub fn parse_status(m: &CircuitRelay) -> Result<(), i32> {
    if m.r#type != Some(Type::Status as i32) {
        return Err(Status::MalformedMessage as i32);
    }
    match m.code {
        Some(c) if c == Status::Success as i32 => Ok(()),
        Some(c) => Err(c),
        None => Err(Status::MalformedMessage as i32),
    }
}

/// A code's name, for errors and logs.
pub fn code_name(code: i32) -> String {
    match Status::try_from(code) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("status {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn hop_and_stop_roundtrip_and_checks() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let h = hop(&a, &["/ip4/1.2.3.4/tcp/1".parse().unwrap()], &b);
        let back = CircuitRelay::decode(h.encode_to_vec().as_slice()).unwrap();
        assert_eq!(parse_request(&back), Ok(Request::Hop { src: a, dst: b }));
        assert_eq!(
            parse_request(&stop_from(&back)),
            Ok(Request::Stop { src: a, dst: b })
        );
        let mut bad = h.clone();
        bad.dst_peer = Some(Peer {
            id: vec![1, 2],
            addrs: vec![],
        });
        assert_eq!(parse_request(&bad), Err(Status::HopDstMultiaddrInvalid));
        assert_eq!(
            parse_request(&CircuitRelay::default()),
            Err(Status::MalformedMessage)
        );
        assert_eq!(
            parse_request(&status(Status::Success)),
            Err(Status::MalformedMessage)
        );
        assert_eq!(parse_status(&status(Status::Success)), Ok(()));
        assert_eq!(parse_status(&status(Status::HopNoConnToDst)), Err(260));
        assert_eq!(code_name(260), "HopNoConnToDst");
    }

    #[test]
    fn can_hop_bytes() {
        // type=CAN_HOP (4), nothing else.
        let m = CircuitRelay {
            r#type: Some(Type::CanHop as i32),
            ..Default::default()
        };
        assert_eq!(m.encode_to_vec(), vec![0x08, 0x04]);
        assert_eq!(parse_request(&m), Ok(Request::CanHop));
    }
}
