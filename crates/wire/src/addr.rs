//! Multiaddr helpers for `/p2p` and `/p2p-circuit` addresses (relay v2 §9).

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use thiserror::Error;

/// A parsed relayed address `[<relay_addr>][/p2p/<relay>]/p2p-circuit/p2p/<target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitAddr {
    /// Transport address of the relay, without `/p2p` (None if not given).
    pub relay_addr: Option<Multiaddr>,
    /// The relay's peer id (None for the bare `/p2p-circuit/p2p/<target>` form).
    pub relay: Option<PeerId>,
    /// The peer reached through the relay.
    pub target: PeerId,
}

/// Why a `/p2p-circuit` address is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    /// More than one `/p2p-circuit` (nested relays are unsupported).
    #[error("multiple /p2p-circuit components are not supported")]
    MultipleCircuits,
    /// Nothing, or something other than exactly `/p2p/<target>`, after `/p2p-circuit`.
    #[error("expected exactly /p2p/<target> after /p2p-circuit")]
    MissingTarget,
    /// The relay part has a transport address but no `/p2p/<relay>` at its end.
    #[error("relay address must end with /p2p/<relay id>")]
    MissingRelayId,
    /// The relay part has a `/p2p` component that is not the last one.
    #[error("unexpected /p2p component inside the relay address")]
    BadShape,
}

/// Whether `addr` contains a `/p2p-circuit` component.
pub fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Parses a relayed address; `Ok(None)` if it has no `/p2p-circuit`.
///
/// Accepted shapes: `<addr>/p2p/R/p2p-circuit/p2p/A`, `/p2p/R/p2p-circuit/p2p/A`
/// and `/p2p-circuit/p2p/A`. The listener form `<addr>/p2p/R/p2p-circuit`
/// (no target) is an error here; append the target with [`with_p2p`] first.
pub fn parse_circuit(addr: &Multiaddr) -> Result<Option<CircuitAddr>, AddrError> {
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    let mut circuits = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, Protocol::P2pCircuit));
    let Some((at, _)) = circuits.next() else {
        return Ok(None);
    };
    if circuits.next().is_some() {
        return Err(AddrError::MultipleCircuits);
    }
    let target = match &parts[at + 1..] {
        [Protocol::P2p(id)] => *id,
        _ => return Err(AddrError::MissingTarget),
    };
    let left = &parts[..at];
    let (transport, relay) = match left.split_last() {
        None => (&[][..], None),
        Some((Protocol::P2p(id), rest)) => (rest, Some(*id)),
        Some(_) => return Err(AddrError::MissingRelayId),
    };
    if transport.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(AddrError::BadShape);
    }
    let relay_addr = if transport.is_empty() {
        None
    } else {
        Some(transport.iter().cloned().collect())
    };
    Ok(Some(CircuitAddr {
        relay_addr,
        relay,
        target,
    }))
}

impl CircuitAddr {
    /// Rebuilds the multiaddr this was parsed from.
    pub fn to_multiaddr(&self) -> Multiaddr {
        let mut out = self.relay_addr.clone().unwrap_or_else(Multiaddr::empty);
        if let Some(relay) = self.relay {
            out.push(Protocol::P2p(relay));
        }
        out.push(Protocol::P2pCircuit);
        out.push(Protocol::P2p(self.target));
        out
    }
}

/// Appends `/p2p/<peer>` unless `addr` already ends with exactly that.
///
/// An address ending with a *different* `/p2p` still gets the new one
/// appended (that is the circuit listener case `.../p2p/R/p2p-circuit` →
/// `.../p2p-circuit/p2p/A`, and otherwise yields an address that
/// [`parse_circuit`]/dialers reject rather than one silently retargeted).
pub fn with_p2p(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) if id == peer => addr,
        _ => addr.with(Protocol::P2p(peer)),
    }
}

/// Splits a trailing `/p2p/<id>` off `addr`.
pub fn split_p2p(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut rest = addr.clone();
    match rest.pop() {
        Some(Protocol::P2p(id)) => (rest, Some(id)),
        _ => (addr.clone(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids() -> (PeerId, PeerId) {
        (PeerId::random(), PeerId::random())
    }

    #[test]
    fn full_form() {
        let (r, a) = ids();
        let ma: Multiaddr = format!("/ip4/1.2.3.4/tcp/4001/p2p/{r}/p2p-circuit/p2p/{a}")
            .parse()
            .unwrap();
        let c = parse_circuit(&ma).unwrap().unwrap();
        assert_eq!(
            c,
            CircuitAddr {
                relay_addr: Some("/ip4/1.2.3.4/tcp/4001".parse().unwrap()),
                relay: Some(r),
                target: a
            }
        );
        assert_eq!(c.to_multiaddr(), ma);
        assert!(is_circuit(&ma));
    }

    #[test]
    fn relay_id_only_and_bare_forms() {
        let (r, a) = ids();
        let ma: Multiaddr = format!("/p2p/{r}/p2p-circuit/p2p/{a}").parse().unwrap();
        let c = parse_circuit(&ma).unwrap().unwrap();
        assert_eq!((c.relay_addr, c.relay, c.target), (None, Some(r), a));
        let ma: Multiaddr = format!("/p2p-circuit/p2p/{a}").parse().unwrap();
        let c = parse_circuit(&ma).unwrap().unwrap();
        assert_eq!((c.relay_addr, c.relay, c.target), (None, None, a));
    }

    #[test]
    fn errors_and_non_circuit() {
        let (r, a) = ids();
        let p = |s: String| parse_circuit(&s.parse().unwrap());
        assert_eq!(p(format!("/ip4/1.2.3.4/tcp/1/p2p/{r}")), Ok(None));
        assert_eq!(
            p(format!("/p2p/{r}/p2p-circuit/p2p/{a}/p2p-circuit/p2p/{r}")),
            Err(AddrError::MultipleCircuits)
        );
        assert_eq!(
            p(format!("/ip4/1.2.3.4/tcp/1/p2p/{r}/p2p-circuit")),
            Err(AddrError::MissingTarget)
        );
        assert_eq!(
            p(format!("/p2p/{r}/p2p-circuit/ip4/1.2.3.4/tcp/1/p2p/{a}")),
            Err(AddrError::MissingTarget)
        );
        assert_eq!(
            p(format!("/ip4/1.2.3.4/tcp/1/p2p-circuit/p2p/{a}")),
            Err(AddrError::MissingRelayId)
        );
        assert_eq!(
            p(format!(
                "/p2p/{a}/ip4/1.2.3.4/tcp/1/p2p/{r}/p2p-circuit/p2p/{a}"
            )),
            Err(AddrError::BadShape)
        );
    }

    #[test]
    fn with_and_split_p2p() {
        let (r, a) = ids();
        let base: Multiaddr = "/ip4/1.2.3.4/tcp/4001".parse().unwrap();
        let with = with_p2p(base.clone(), r);
        assert_eq!(with.to_string(), format!("/ip4/1.2.3.4/tcp/4001/p2p/{r}"));
        // Idempotent.
        assert_eq!(with_p2p(with.clone(), r), with);
        assert_eq!(split_p2p(&with), (base.clone(), Some(r)));
        assert_eq!(split_p2p(&base), (base.clone(), None));
        // Listener form gets the target appended.
        let listen = with.with(Protocol::P2pCircuit);
        let full = with_p2p(listen, a);
        assert_eq!(parse_circuit(&full).unwrap().unwrap().target, a);
    }

    fn component() -> impl Strategy<Value = Protocol<'static>> {
        // A few fixed peer ids keep the search space small enough to hit
        // interesting shapes often.
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Protocol::Ip4(b.into())),
            any::<u16>().prop_map(Protocol::Tcp),
            Just(Protocol::Ws("/".into())),
            "[a-z]{1,8}".prop_map(|s| Protocol::Dns4(s.into())),
            Just(Protocol::P2pCircuit),
            Just(Protocol::P2pCircuit),
            prop::sample::select(peers).prop_map(Protocol::P2p),
        ]
    }

    proptest! {
        #[test]
        fn parse_circuit_random(parts in proptest::collection::vec(component(), 0..7)) {
            let ma: Multiaddr = parts.into_iter().collect();
            match parse_circuit(&ma) {
                Ok(Some(c)) => prop_assert_eq!(&c.to_multiaddr(), &ma),
                Ok(None) => prop_assert!(!is_circuit(&ma)),
                Err(_) => prop_assert!(is_circuit(&ma)),
            }
            // Binary round trip of whatever we built stays parseable the same way.
            let again = Multiaddr::try_from(ma.to_vec()).unwrap();
            prop_assert_eq!(parse_circuit(&again), parse_circuit(&ma));
        }

        #[test]
        fn split_then_with_restores(parts in proptest::collection::vec(component(), 0..6)) {
            let ma: Multiaddr = parts.into_iter().collect();
            let (rest, id) = split_p2p(&ma);
            match id {
                Some(id) => {
                    prop_assert_eq!(rest.with(Protocol::P2p(id)), ma.clone());
                    // Already ends with /p2p/id: with_p2p leaves it alone.
                    prop_assert_eq!(with_p2p(ma.clone(), id), ma);
                }
                None => prop_assert_eq!(rest, ma),
            }
        }
    }
}
