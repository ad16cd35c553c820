//! The AutoNAT server's decision: whom to dial back, where, and how often.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use circuit_wire::pb::autonat::Message;
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

use super::{dial_response_error, dial_response_ok, parse_dial_request, ResponseError};

/// Most address entries read from one request before filtering.
pub(crate) const MAX_ADDRS_READ: usize = 64;

/// Server limits (defaults are go-libp2p's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Dial back requesters whose observed IP is not global (RFC 1918,
    /// CGNAT, loopback, link-local, ULA, …). Off by default: in production a
    /// private observed address means the requester is on our LAN and a
    /// dial-back proves nothing about the internet. Test beds and LANs turn
    /// it on.
    pub allow_private: bool,
    /// Most addresses dialed per request (go: 16).
    pub max_addrs: usize,
    /// Most requests per peer per period (go: 3).
    pub max_per_peer: u32,
    /// Most requests in total per period (go: 30).
    pub max_total: u32,
    /// Rate-limit period (go: 1 min, plus jitter that we leave to the caller).
    pub period: Duration,
    /// How long the glue should try the dial-backs (go: 15 s).
    pub dial_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow_private: false,
            max_addrs: 16,
            max_per_peer: 3,
            max_total: 30,
            period: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(15),
        }
    }
}

/// A refused request: the error status and text to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub error: ResponseError,
    /// The human-readable reason (sent as `statusText`).
    pub text: &'static str,
}

impl Refusal {
    /// A refusal.
    pub const fn new(error: ResponseError, text: &'static str) -> Refusal {
        Refusal { error, text }
    }

    /// The DIAL_RESPONSE to send.
    pub fn to_message(&self) -> Message {
        dial_response_error(self.error, self.text)
    }
}

/// The AutoNAT server core: request checks, address selection and rate
/// limits. One per node.
#[derive(Debug, Clone)]
pub struct Server {
    config: ServerConfig,
    window_start: Option<Instant>,
    per_peer: HashMap<PeerId, u32>,
    total: u32,
}

impl Server {
    /// A server with `config`.
    pub fn new(config: ServerConfig) -> Server {
        Server {
            config,
            window_start: None,
            per_peer: HashMap::new(),
            total: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Decides on a DIAL request from `remote`, whose connection to us comes
    /// from `observed`. Returns the addresses to dial back (non-empty, at most
    /// `max_addrs`), or the refusal to send. Rules, in order:
    ///
    /// 1. the message must be a DIAL with a parsable peer id equal to `remote`
    ///    (else `E_BAD_REQUEST`);
    /// 2. `observed` must not be relayed, must start with an IP, and that IP
    ///    must be global unless `allow_private` (else `E_DIAL_REFUSED`);
    /// 3. each candidate must be `/ip4|ip6/…/tcp/…` (what we can dial), carry
    ///    no `/p2p-circuit` and no `/p2p/` of another peer; its IP is replaced
    ///    by the observed one — we never dial any other IP, and like go and
    ///    rust we still try the ports it asked for; duplicates are dropped
    ///    (none left: `E_DIAL_REFUSED`);
    /// 4. rate limits: `max_per_peer` per peer and `max_total` overall per
    ///    `period` (else `E_DIAL_REFUSED "too many dials"`). Only requests that
    ///    get this far count, as in go.
    pub fn handle_request(
        &mut self,
        remote: &PeerId,
        observed: &Multiaddr,
        msg: &Message,
        now: Instant,
    ) -> Result<Vec<Multiaddr>, Refusal> {
        let req = parse_dial_request(msg)?;
        if req.peer != *remote {
            return Err(Refusal::new(ResponseError::BadRequest, "peer id mismatch"));
        }
        if observed.iter().any(|p| p == Protocol::P2pCircuit) {
            return Err(Refusal::new(
                ResponseError::DialRefused,
                "refusing to dial back over a relayed connection",
            ));
        }
        let observed_ip = match observed.iter().next() {
            Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
            Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
            _ => {
                return Err(Refusal::new(
                    ResponseError::DialRefused,
                    "observed address has no IP",
                ))
            }
        };
        if !self.config.allow_private && !is_global_ip(&observed_ip) {
            return Err(Refusal::new(
                ResponseError::DialRefused,
                "refusing to dial a non-public address",
            ));
        }
        let addrs = self.select_addrs(remote, observed_ip, &req.addrs);
        if addrs.is_empty() {
            return Err(Refusal::new(
                ResponseError::DialRefused,
                "no dialable addresses",
            ));
        }
        self.check_rate(remote, now)?;
        Ok(addrs)
    }

    fn select_addrs(
        &self,
        remote: &PeerId,
        observed_ip: IpAddr,
        requested: &[Multiaddr],
    ) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = Vec::new();
        for a in requested {
            if out.len() >= self.config.max_addrs {
                break;
            }
            let mut parts = a.iter();
            if !matches!(parts.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_))) {
                continue;
            }
            if !matches!(parts.next(), Some(Protocol::Tcp(_))) {
                continue;
            }
            let acceptable = a.iter().all(|p| match p {
                Protocol::P2pCircuit => false,
                Protocol::P2p(id) => id == *remote,
                _ => true,
            });
            if !acceptable {
                continue;
            }
            let mut rewritten = Multiaddr::empty();
            rewritten.push(match observed_ip {
                IpAddr::V4(ip) => Protocol::Ip4(ip),
                IpAddr::V6(ip) => Protocol::Ip6(ip),
            });
            for p in a.iter().skip(1) {
                rewritten.push(p);
            }
            if !out.contains(&rewritten) {
                out.push(rewritten);
            }
        }
        out
    }

    fn check_rate(&mut self, remote: &PeerId, now: Instant) -> Result<(), Refusal> {
        let expired = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.config.period);
        if expired {
            self.window_start = Some(now);
            self.per_peer.clear();
            self.total = 0;
        }
        let count = self.per_peer.get(remote).copied().unwrap_or(0);
        if count >= self.config.max_per_peer || self.total >= self.config.max_total {
            return Err(Refusal::new(ResponseError::DialRefused, "too many dials"));
        }
        self.per_peer.insert(*remote, count + 1);
        self.total += 1;
        Ok(())
    }

    /// The answer once the glue has dialed: OK with the address that worked,
    /// or `E_DIAL_ERROR` if none did.
    pub fn dial_outcome(&self, connected: Option<&Multiaddr>) -> Message {
        match connected {
            Some(a) => dial_response_ok(a),
            None => dial_response_error(ResponseError::DialError, "dial failed"),
        }
    }

    /// When the rate-limit window ends (counters reset on the next request
    /// after it; nothing needs to happen at that instant).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.window_start.map(|s| s + self.config.period)
    }

    /// Requests counted in the current window.
    pub fn requests_in_window(&self) -> u32 {
        self.total
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new(ServerConfig::default())
    }
}

/// Whether `ip` is globally routable: not unspecified, loopback, private
/// (RFC 1918), shared/CGNAT (100.64/10), link-local, documentation, benchmark,
/// reserved, broadcast, multicast, ULA (fc00::/7), or an IPv4-mapped address of
/// one of those.
pub fn is_global_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global_ip(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}
