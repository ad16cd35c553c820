//! Circuit relay v2 messages: building them and checking what peers send.
//!
//! Pure functions over the protobuf types; the relay service and the client
//! glue call these, so every refusal code and field-presence rule lives here.

use std::time::Duration;

use circuit_wire::pb::relay::{
    hop_message, stop_message, HopMessage, Limit as PbLimit, Peer, Reservation, Status, StopMessage,
};
use circuit_wire::record::Voucher;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

/// Hop protocol id.
pub const HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// Stop protocol id.
pub const STOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/stop";
/// Largest hop/stop message (go and rust use 4096).
pub const MAX_MESSAGE: usize = 4096;

/// Limits of one relayed connection. `None` in a field means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Longest life of the circuit.
    pub duration: Option<Duration>,
    /// Most bytes in each direction.
    pub data: Option<u64>,
}

impl Limit {
    /// No limit at all.
    pub const UNLIMITED: Limit = Limit {
        duration: None,
        data: None,
    };

    /// go-libp2p's default: 2 minutes, 128 KiB per direction.
    pub const GO_DEFAULT: Limit = Limit {
        duration: Some(Duration::from_secs(120)),
        data: Some(1 << 17),
    };

    /// Whether any limit applies.
    pub fn is_limited(&self) -> bool {
        self.duration.is_some() || self.data.is_some()
    }

    /// The wire form: `None` when unlimited, so that no `Limit` field is sent
    /// (go treats any connection with a `Limit` as limited).
    pub fn to_pb(&self) -> Option<PbLimit> {
        if !self.is_limited() {
            return None;
        }
        Some(PbLimit {
            duration: self
                .duration
                .map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32),
            data: self.data,
        })
    }

    /// Reads a peer's `Limit`; zeros mean "no limit of that kind".
    pub fn from_pb(pb: Option<&PbLimit>) -> Limit {
        match pb {
            None => Limit::UNLIMITED,
            Some(l) => Limit {
                duration: l
                    .duration
                    .filter(|d| *d > 0)
                    .map(|d| Duration::from_secs(d as u64)),
                data: l.data.filter(|d| *d > 0),
            },
        }
    }
}

/// A hop request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopRequest {
    /// Reserve a slot.
    Reserve,
    /// Open a circuit to `target`.
    Connect {
        /// The peer to reach.
        target: PeerId,
    },
}

/// Checks a hop message received by a relay. The error is the status to answer with.
pub fn parse_hop_request(msg: &HopMessage) -> Result<HopRequest, Status> {
    match msg.r#type.and_then(|t| hop_message::Type::try_from(t).ok()) {
        Some(hop_message::Type::Reserve) => Ok(HopRequest::Reserve),
        Some(hop_message::Type::Connect) => {
            let id = msg
                .peer
                .as_ref()
                .and_then(|p| p.id.as_ref())
                .ok_or(Status::MalformedMessage)?;
            let target = PeerId::from_bytes(id).map_err(|_| Status::MalformedMessage)?;
            Ok(HopRequest::Connect { target })
        }
        Some(hop_message::Type::Status) => Err(Status::UnexpectedMessage),
        None => Err(Status::MalformedMessage),
    }
}

/// `HopMessage{type=STATUS, status}` — a refusal (or a bare OK).
pub fn hop_status(status: Status) -> HopMessage {
    HopMessage {
        r#type: Some(hop_message::Type::Status as i32),
        status: Some(status as i32),
        ..Default::default()
    }
}

/// The relay's OK answer to RESERVE.
pub fn hop_reserve_ok(
    expire_unix: u64,
    addrs: &[Multiaddr],
    voucher: Option<Vec<u8>>,
    limit: Limit,
) -> HopMessage {
    HopMessage {
        r#type: Some(hop_message::Type::Status as i32),
        status: Some(Status::Ok as i32),
        reservation: Some(Reservation {
            expire: Some(expire_unix),
            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            voucher,
        }),
        limit: limit.to_pb(),
        peer: None,
    }
}

/// The relay's OK answer to CONNECT.
pub fn hop_connect_ok(limit: Limit) -> HopMessage {
    HopMessage {
        limit: limit.to_pb(),
        ..hop_status(Status::Ok)
    }
}

/// A client's RESERVE request.
pub fn hop_reserve() -> HopMessage {
    HopMessage {
        r#type: Some(hop_message::Type::Reserve as i32),
        ..Default::default()
    }
}

/// A client's CONNECT request.
pub fn hop_connect(target: &PeerId) -> HopMessage {
    HopMessage {
        r#type: Some(hop_message::Type::Connect as i32),
        peer: Some(Peer {
            id: Some(target.to_bytes()),
            addrs: Vec::new(),
        }),
        ..Default::default()
    }
}

/// The relay's CONNECT to the target, naming the source.
pub fn stop_connect(source: &PeerId, limit: Limit) -> StopMessage {
    StopMessage {
        r#type: Some(stop_message::Type::Connect as i32),
        peer: Some(Peer {
            id: Some(source.to_bytes()),
            addrs: Vec::new(),
        }),
        limit: limit.to_pb(),
        status: None,
    }
}

/// `StopMessage{type=STATUS, status}`.
pub fn stop_status(status: Status) -> StopMessage {
    StopMessage {
        r#type: Some(stop_message::Type::Status as i32),
        status: Some(status as i32),
        ..Default::default()
    }
}

/// A status code's name, for logs and errors.
pub fn status_name(code: Option<i32>) -> String {
    match code.and_then(|c| Status::try_from(c).ok()) {
        Some(s) => status_str(s).to_string(),
        None => format!("unknown status {code:?}"),
    }
}

/// The spec's name of a status code.
pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Unused => "UNUSED",
        Status::Ok => "OK",
        Status::ReservationRefused => "RESERVATION_REFUSED",
        Status::ResourceLimitExceeded => "RESOURCE_LIMIT_EXCEEDED",
        Status::PermissionDenied => "PERMISSION_DENIED",
        Status::ConnectionFailed => "CONNECTION_FAILED",
        Status::NoReservation => "NO_RESERVATION",
        Status::MalformedMessage => "MALFORMED_MESSAGE",
        Status::UnexpectedMessage => "UNEXPECTED_MESSAGE",
    }
}

/// Why a reservation answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// The relay said no.
    #[error("relay refused the reservation: {0}")]
    Refused(String),
    /// The answer is not a STATUS.
    #[error("unexpected answer type")]
    Unexpected,
    /// OK without a reservation.
    #[error("OK answer without a reservation")]
    MissingReservation,
    /// The expiry is already past.
    #[error("reservation already expired")]
    Expired,
    /// No usable address came with it.
    #[error("reservation carries no relay address")]
    NoAddresses,
    /// The voucher is present but does not check out.
    #[error("bad voucher: {0}")]
    BadVoucher(String),
}

/// A reservation the relay granted, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// Expiry, UNIX seconds.
    pub expire: u64,
    /// The relay's addresses (with `/p2p/<relay>`).
    pub addrs: Vec<Multiaddr>,
    /// The voucher, if the relay sent one (and it verified).
    pub voucher: Option<Voucher>,
    /// The relay's limit on circuits to us.
    pub limit: Limit,
}

/// Checks a relay's answer to our RESERVE (go-libp2p's client rules, plus voucher checking).
pub fn parse_reserve_response(
    msg: &HopMessage,
    relay: &PeerId,
    me: &PeerId,
    now_unix: u64,
) -> Result<Granted, ReserveError> {
    if msg.r#type != Some(hop_message::Type::Status as i32) {
        return Err(ReserveError::Unexpected);
    }
    if msg.status != Some(Status::Ok as i32) {
        return Err(ReserveError::Refused(status_name(msg.status)));
    }
    let rsv = msg
        .reservation
        .as_ref()
        .ok_or(ReserveError::MissingReservation)?;
    let expire = rsv.expire.ok_or(ReserveError::MissingReservation)?;
    if expire < now_unix {
        return Err(ReserveError::Expired);
    }
    // Bad addresses are skipped, as go does; ones naming another peer are dropped.
    let addrs: Vec<Multiaddr> = rsv
        .addrs
        .iter()
        .filter_map(|b| Multiaddr::try_from(b.clone()).ok())
        .filter(|a| match circuit_wire::addr::split_p2p(a).1 {
            Some(p) => p == *relay,
            None => true,
        })
        .map(|a| circuit_wire::addr::with_p2p(a, *relay))
        .collect();
    let voucher = match &rsv.voucher {
        None => None,
        Some(bytes) => {
            let v = Voucher::verify(bytes, relay, me)
                .map_err(|e| ReserveError::BadVoucher(e.to_string()))?;
            Some(v)
        }
    };
    Ok(Granted {
        expire,
        addrs,
        voucher,
        limit: Limit::from_pb(msg.limit.as_ref()),
    })
}

/// Checks a relay's answer to our CONNECT; Ok carries the circuit's limit.
pub fn parse_connect_response(msg: &HopMessage) -> Result<Limit, String> {
    if msg.r#type != Some(hop_message::Type::Status as i32) {
        return Err("unexpected answer type".into());
    }
    if msg.status != Some(Status::Ok as i32) {
        return Err(status_name(msg.status));
    }
    Ok(Limit::from_pb(msg.limit.as_ref()))
}

/// Checks the relay's stop CONNECT; the error is the status to answer with.
pub fn parse_stop_connect(msg: &StopMessage) -> Result<(PeerId, Limit), Status> {
    match msg
        .r#type
        .and_then(|t| stop_message::Type::try_from(t).ok())
    {
        Some(stop_message::Type::Connect) => {
            let id = msg
                .peer
                .as_ref()
                .and_then(|p| p.id.as_ref())
                .ok_or(Status::MalformedMessage)?;
            let src = PeerId::from_bytes(id).map_err(|_| Status::MalformedMessage)?;
            Ok((src, Limit::from_pb(msg.limit.as_ref())))
        }
        Some(stop_message::Type::Status) => Err(Status::UnexpectedMessage),
        None => Err(Status::MalformedMessage),
    }
}

/// Checks the target's answer on the stop stream.
pub fn parse_stop_response(msg: &StopMessage) -> Result<(), String> {
    if msg.r#type != Some(stop_message::Type::Status as i32) {
        return Err("unexpected answer type".into());
    }
    if msg.status != Some(Status::Ok as i32) {
        return Err(status_name(msg.status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p_identity::Keypair;
    use prost::Message;

    #[test]
    fn reserve_always_encodes_type_zero() {
        // RESERVE is 0: a default-suppressing encoder would drop it; js and rust then refuse.
        assert_eq!(hop_reserve().encode_to_vec(), vec![0x08, 0x00]);
        assert_eq!(
            stop_connect(&PeerId::random(), Limit::UNLIMITED).encode_to_vec()[..2],
            [0x08, 0x00]
        );
    }

    #[test]
    fn unlimited_sends_no_limit_field() {
        let m = hop_connect_ok(Limit::UNLIMITED);
        assert!(m.limit.is_none());
        let m = hop_connect_ok(Limit::GO_DEFAULT);
        assert_eq!(
            m.limit,
            Some(PbLimit {
                duration: Some(120),
                data: Some(131072)
            })
        );
        assert_eq!(
            Limit::from_pb(Some(&PbLimit {
                duration: Some(0),
                data: Some(0)
            })),
            Limit::UNLIMITED
        );
    }

    #[test]
    fn hop_requests_are_checked() {
        let target = PeerId::random();
        assert_eq!(parse_hop_request(&hop_reserve()), Ok(HopRequest::Reserve));
        assert_eq!(
            parse_hop_request(&hop_connect(&target)),
            Ok(HopRequest::Connect { target })
        );
        assert_eq!(
            parse_hop_request(&HopMessage::default()),
            Err(Status::MalformedMessage)
        );
        assert_eq!(
            parse_hop_request(&hop_status(Status::Ok)),
            Err(Status::UnexpectedMessage)
        );
        let mut bad = hop_connect(&target);
        bad.peer = Some(Peer {
            id: Some(vec![1, 2, 3]),
            addrs: vec![],
        });
        assert_eq!(parse_hop_request(&bad), Err(Status::MalformedMessage));
        bad.peer = None;
        assert_eq!(parse_hop_request(&bad), Err(Status::MalformedMessage));
    }

    #[test]
    fn reservation_with_voucher_roundtrip() {
        let relay_key = Keypair::generate_ed25519();
        let relay = relay_key.public().to_peer_id();
        let me = PeerId::random();
        let addr: Multiaddr = "/ip4/7.7.7.7/tcp/4001".parse().unwrap();
        let voucher = Voucher {
            relay,
            peer: me,
            expiration: 2000,
        }
        .sign(&relay_key)
        .unwrap();
        let msg = hop_reserve_ok(
            2000,
            std::slice::from_ref(&addr),
            Some(voucher),
            Limit::GO_DEFAULT,
        );
        let g = parse_reserve_response(&msg, &relay, &me, 1000).unwrap();
        assert_eq!(g.expire, 2000);
        assert_eq!(g.addrs, vec![circuit_wire::addr::with_p2p(addr, relay)]);
        assert_eq!(g.voucher.unwrap().peer, me);
        assert_eq!(g.limit, Limit::GO_DEFAULT);
        // Expired, refused, and a voucher for someone else.
        assert_eq!(
            parse_reserve_response(&msg, &relay, &me, 3000),
            Err(ReserveError::Expired)
        );
        assert!(
            matches!(parse_reserve_response(&hop_status(Status::ReservationRefused), &relay, &me, 0), Err(ReserveError::Refused(s)) if s == "RESERVATION_REFUSED")
        );
        assert!(matches!(
            parse_reserve_response(&msg, &relay, &PeerId::random(), 1000),
            Err(ReserveError::BadVoucher(_))
        ));
    }

    #[test]
    fn stop_messages_are_checked() {
        let src = PeerId::random();
        assert_eq!(
            parse_stop_connect(&stop_connect(&src, Limit::GO_DEFAULT)),
            Ok((src, Limit::GO_DEFAULT))
        );
        assert_eq!(
            parse_stop_connect(&stop_status(Status::Ok)),
            Err(Status::UnexpectedMessage)
        );
        assert_eq!(
            parse_stop_connect(&StopMessage::default()),
            Err(Status::MalformedMessage)
        );
        assert!(parse_stop_response(&stop_status(Status::Ok)).is_ok());
        assert_eq!(
            parse_stop_response(&stop_status(Status::ConnectionFailed)),
            Err("CONNECTION_FAILED".into())
        );
    }

    mod prop {
        use super::super::*;
        use circuit_wire::pb::relay::{HopMessage, StopMessage};
        use circuit_wire::pb::relay_v1::CircuitRelay;
        use proptest::prelude::*;
        use prost::Message;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever a peer sends on hop or stop, decoding and checking never panic,
            /// and a refusal is always one of the spec's request errors.
            #[test]
            fn hop_and_stop_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Ok(m) = HopMessage::decode(bytes.as_slice()) {
                    if let Err(s) = parse_hop_request(&m) {
                        prop_assert!(matches!(s, Status::MalformedMessage | Status::UnexpectedMessage));
                    }
                    let _ = parse_connect_response(&m);
                    let me = PeerId::random();
                    let _ = parse_reserve_response(&m, &me, &me, 0);
                }
                if let Ok(m) = StopMessage::decode(bytes.as_slice()) {
                    if let Err(s) = parse_stop_connect(&m) {
                        prop_assert!(matches!(s, Status::MalformedMessage | Status::UnexpectedMessage));
                    }
                    let _ = parse_stop_response(&m);
                }
                if let Ok(m) = CircuitRelay::decode(bytes.as_slice()) {
                    let _ = crate::relay_v1::parse_request(&m);
                    let _ = crate::relay_v1::parse_status(&m);
                }
            }

            /// A CONNECT for any peer survives encode → decode → check.
            #[test]
            fn connect_roundtrip(seed in any::<[u8; 32]>()) {
                let key = libp2p_identity::Keypair::ed25519_from_bytes(seed).unwrap();
                let target = key.public().to_peer_id();
                let m = HopMessage::decode(hop_connect(&target).encode_to_vec().as_slice()).unwrap();
                prop_assert_eq!(parse_hop_request(&m), Ok(HopRequest::Connect { target }));
            }
        }
    }
}
