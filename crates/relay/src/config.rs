//! Settings of the relay service.

use std::net::IpAddr;
use std::time::Duration;

use circuit_proto::relay::Limit;
use ipnet::IpNet;
use libp2p_identity::PeerId;

use crate::bridge::Tap;

/// Limits and timeouts of the relay. Defaults follow go-libp2p's relay service.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long a reservation lasts (refreshes restart it).
    pub reservation_ttl: Duration,
    /// Most reservations at once.
    pub max_reservations: usize,
    /// Most reservations from one IP address.
    pub max_reservations_per_ip: usize,
    /// Most circuits at once, all peers together.
    pub max_circuits: usize,
    /// Most circuits per peer (as source and as destination, counted separately).
    pub max_circuits_per_peer: usize,
    /// The limit of each circuit; [`Limit::UNLIMITED`] sends no `Limit` at all.
    pub limit: Limit,
    /// Copy buffer per circuit direction.
    pub buffer_size: usize,
    /// Most bytes of receive window all relayed streams together may grow by beyond their
    /// initial 256 KiB each. A circuit over a long round trip needs a window of its
    /// bandwidth × round trip to run fast (12.5 MiB for 250 MiB/s over 50 ms); this bounds
    /// what such circuits can make the relay hold when their far sides stop reading. 0
    /// keeps every window at 256 KiB.
    pub window_budget: u64,
    /// Deadline for reading a request and writing its answer.
    pub stream_timeout: Duration,
    /// Deadline for opening the stop stream and getting the target's answer.
    pub connect_timeout: Duration,
    /// Sign reservation vouchers.
    pub vouchers: bool,
    /// Who may reserve and who may open circuits.
    pub acl: Acl,
    /// Sees every chunk forwarded on circuits opened from now on (tests, diagnostics); `None` costs nothing.
    pub tap: Option<Tap>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            reservation_ttl: Duration::from_secs(3600),
            max_reservations: 128,
            max_reservations_per_ip: 8,
            max_circuits: 1024,
            max_circuits_per_peer: 16,
            limit: Limit::GO_DEFAULT,
            buffer_size: 16 * 1024,
            window_budget: 128 * 1024 * 1024,
            stream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            vouchers: true,
            acl: Acl::default(),
            tap: None,
        }
    }
}

/// One ACL entry: a peer, or an IP subnet (a single address is a /32 or /128).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRule {
    /// Matches this PeerId.
    Peer(PeerId),
    /// Matches a connection whose remote IP is in this subnet.
    Net(IpNet),
}

impl AclRule {
    fn matches(&self, peer: &PeerId, ip: Option<IpAddr>) -> bool {
        match self {
            AclRule::Peer(p) => p == peer,
            AclRule::Net(n) => ip.map(|ip| n.contains(&ip)).unwrap_or(false),
        }
    }
}

impl std::str::FromStr for AclRule {
    type Err = String;

    /// `12D3KooW…` (a PeerId), `10.0.0.0/8`, `2001:db8::/32`, or a bare IP address.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(AclRule::Net(n.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AclRule::Net(IpNet::from(ip)));
        }
        if let Ok(p) = s.parse::<PeerId>() {
            return Ok(AclRule::Peer(p));
        }
        Err(format!(
            "{s:?} is neither a PeerId nor an IP address or subnet (like 10.0.0.0/8)"
        ))
    }
}

impl std::fmt::Display for AclRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AclRule::Peer(p) => write!(f, "{p}"),
            AclRule::Net(n) => write!(f, "{n}"),
        }
    }
}

/// Allow and deny lists for one kind of request.
///
/// A request is refused when it matches any `deny` rule, or when `allow` is not
/// empty and it matches none of its rules. Empty lists let everyone in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclList {
    /// If not empty, only these may.
    pub allow: Vec<AclRule>,
    /// These may not (checked first).
    pub deny: Vec<AclRule>,
}

impl AclList {
    /// Whether `peer`, connected from `ip`, passes the list.
    pub fn permits(&self, peer: &PeerId, ip: Option<IpAddr>) -> bool {
        if self.deny.iter().any(|r| r.matches(peer, ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|r| r.matches(peer, ip))
    }
}

/// The relay's access control: reservations and connects are checked separately.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Who may RESERVE (checked against the reserving peer and its connection's IP).
    pub reserve: AclList,
    /// Who may CONNECT (checked against the source peer and its connection's IP).
    pub connect: AclList,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_deny_wins_and_allow_restricts() {
        let a = PeerId::random();
        let b = PeerId::random();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let open = AclList::default();
        assert!(open.permits(&a, None));
        let l = AclList {
            allow: vec![
                "10.0.0.0/8".parse().unwrap(),
                a.to_string().parse().unwrap(),
            ],
            deny: vec!["10.1.2.3".parse().unwrap()],
        };
        assert!(l.permits(&b, ip("10.9.9.9")));
        assert!(!l.permits(&b, ip("10.1.2.3")));
        assert!(
            !l.permits(&a, ip("10.1.2.3")),
            "deny wins over an allowed peer"
        );
        assert!(l.permits(&a, ip("192.0.2.1")));
        assert!(!l.permits(&b, ip("192.0.2.1")));
        assert!(!l.permits(&b, None));
        let v6 = AclList {
            allow: vec![],
            deny: vec!["2001:db8::/32".parse().unwrap()],
        };
        assert!(!v6.permits(&a, ip("2001:db8::1")));
        assert!(v6.permits(&a, ip("2001:db9::1")));
        assert!("nonsense".parse::<AclRule>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<AclRule>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
