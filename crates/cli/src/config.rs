//! The relay's config file (TOML): listen/announce addresses, identity, limits,
//! ACL, metrics address. Every key is also a `circuit relay` flag of the same
//! name (`max_circuits` ↔ `--max-circuits`); flags override the file.
//!
//! Unknown keys and bad values are errors naming the key and its line: the
//! structs deny unknown fields, and values are checked while deserializing (not
//! afterwards) so that toml's error carries the value's span.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use circuit_net::upgrade::UpgradeTimeouts;
use circuit_net::{Multiaddr, NodeConfig};
use circuit_proto::relay::Limit;
use circuit_relay::{Acl, AclList, AclRule, RelayConfig};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid (syntax, unknown key, bad value); the message names key and line.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending line.
        message: String,
    },
}

/// The default listen addresses.
pub const DEFAULT_LISTEN: [&str; 4] = [
    "/ip4/0.0.0.0/tcp/4001",
    "/ip4/0.0.0.0/tcp/4002/ws",
    "/ip6/::/tcp/4001",
    "/ip6/::/tcp/4002/ws",
];

/// A multiaddr in the file: a string, checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr(pub Multiaddr);

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Multiaddr::from_str(&s)
            .map(Addr)
            .map_err(|e| serde::de::Error::custom(format!("bad multiaddr {s:?}: {e}")))
    }
}

/// An ACL rule in the file: a PeerId, an IP address or a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub AclRule);

impl FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(Rule)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A count or duration that must be at least 1.
fn at_least_one<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: Deserialize<'de> + PartialOrd + From<u8>,
{
    let v = T::deserialize(d)?;
    if v < T::from(1) {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(v)
}

/// Copy buffer sizes: 1 KiB to 16 MiB.
fn buffer_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if !(1024..=16 << 20).contains(&v) {
        return Err(serde::de::Error::custom(
            "must be between 1024 and 16777216 bytes",
        ));
    }
    Ok(v)
}

/// The whole file. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayFile {
    /// Addresses to listen on.
    pub listen: Vec<Addr>,
    /// Public addresses to put in reservations instead of the listen addresses.
    pub announce: Vec<Addr>,
    /// Identity key file (created on first run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// Where to serve `/metrics` and the status page (`127.0.0.1:9464`); none = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Certificate chain (PEM) for secure WebSocket listeners (`/tls/ws`, `/wss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Kademlia peers to join the DHT through (any libp2p Kademlia network).
    pub bootstrap: Vec<Addr>,
    /// Provide the `/libp2p/relay` namespace in the DHT so autorelay clients find us.
    pub advertise: bool,
    /// AutoNAT: also dial back requesters whose observed address is private
    /// (LANs and test beds; off on the internet, where it proves nothing).
    pub autonat_allow_private: bool,
    /// Serve the demo page to plain HTTP `GET`s on the WebSocket port(s).
    pub web: bool,
    /// Status line to stderr every this many seconds (0 = never).
    pub status_interval: u64,
    /// On SIGTERM/SIGINT, how long open circuits may take to finish, seconds.
    pub shutdown_drain: u64,
    /// Limits of the relay and the node.
    pub limits: Limits,
    /// The perf service (`/perf/1.0.0`) offered to clients.
    pub perf: PerfFile,
    /// Who may reserve and who may connect.
    pub acl: AclFile,
}

/// `[perf]`: clients can measure their link to the relay with the perf protocol
/// (`circuit perf <relay address>`, or any libp2p perf client). Bounded, since it makes
/// the relay send what anyone asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfFile {
    /// Serve `/perf/1.0.0` at all.
    pub enabled: bool,
    /// Most bytes one request may upload, and most it may ask back; larger requests are
    /// reset.
    pub max_bytes: u64,
    /// Most requests served at once; more are reset.
    #[serde(deserialize_with = "at_least_one")]
    pub max_concurrent: usize,
}

impl Default for PerfFile {
    fn default() -> Self {
        PerfFile {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            max_concurrent: 2,
        }
    }
}

impl Default for RelayFile {
    fn default() -> Self {
        RelayFile {
            listen: Vec::new(),
            announce: Vec::new(),
            identity: None,
            metrics: None,
            tls_cert: None,
            tls_key: None,
            bootstrap: Vec::new(),
            advertise: false,
            autonat_allow_private: false,
            web: false,
            status_interval: 60,
            shutdown_drain: 10,
            limits: Limits::default(),
            perf: PerfFile::default(),
            acl: AclFile::default(),
        }
    }
}

/// `[limits]`. Defaults follow go-libp2p's relay service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Reservation lifetime, seconds.
    #[serde(deserialize_with = "at_least_one")]
    pub reservation_ttl: u64,
    /// Most reservations at once.
    pub max_reservations: usize,
    /// Most reservations from one IP address.
    pub max_reservations_per_ip: usize,
    /// Most circuits at once.
    pub max_circuits: usize,
    /// Most circuits per peer (as source or destination).
    pub max_circuits_per_peer: usize,
    /// Longest life of a circuit, seconds (0 = no limit).
    pub limit_duration: u64,
    /// Most bytes per direction of a circuit (0 = no limit).
    pub limit_data: u64,
    /// No circuit limits at all (no Limit field is sent).
    pub no_limit: bool,
    /// Copy buffer per circuit direction, bytes.
    #[serde(deserialize_with = "buffer_size")]
    pub buffer_size: usize,
    /// Most bytes of receive window all relayed streams together may grow by beyond
    /// their initial 256 KiB (circuits over long round trips need large windows to run
    /// fast; this bounds what they can make the relay hold). 0 = no growth.
    pub window_budget: u64,
    /// Deadline for reading a hop request and writing its answer, seconds.
    #[serde(deserialize_with = "at_least_one")]
    pub stream_timeout: u64,
    /// Deadline for reaching the target of a CONNECT (stop protocol), seconds.
    #[serde(deserialize_with = "at_least_one")]
    pub connect_timeout: u64,
    /// Deadline of the Noise handshake, seconds.
    #[serde(deserialize_with = "at_least_one")]
    pub handshake_timeout: u64,
    /// Deadline of each multistream-select negotiation, seconds.
    #[serde(deserialize_with = "at_least_one")]
    pub negotiation_timeout: u64,
    /// Most connections at once.
    #[serde(deserialize_with = "at_least_one")]
    pub max_connections: usize,
    /// Most inbound connections in their handshake at once.
    #[serde(deserialize_with = "at_least_one")]
    pub max_pending_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let r = RelayConfig::default();
        let n = NodeConfig::default();
        Limits {
            reservation_ttl: r.reservation_ttl.as_secs(),
            max_reservations: r.max_reservations,
            max_reservations_per_ip: r.max_reservations_per_ip,
            max_circuits: r.max_circuits,
            max_circuits_per_peer: r.max_circuits_per_peer,
            limit_duration: 120,
            limit_data: 128 * 1024,
            no_limit: false,
            buffer_size: r.buffer_size,
            window_budget: r.window_budget,
            stream_timeout: r.stream_timeout.as_secs(),
            connect_timeout: r.connect_timeout.as_secs(),
            handshake_timeout: n.timeouts.handshake.as_secs(),
            negotiation_timeout: n.timeouts.negotiation.as_secs(),
            max_connections: n.max_connections,
            max_pending_handshakes: n.max_pending_handshakes,
        }
    }
}

/// `[acl]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclFile {
    /// `[acl.reserve]`: who may reserve.
    pub reserve: AclListFile,
    /// `[acl.connect]`: who may open circuits (checked against the source).
    pub connect: AclListFile,
}

/// Allow and deny lists: deny wins; a non-empty allow list admits only its matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclListFile {
    /// If not empty, only these (PeerIds, IPs, subnets).
    pub allow: Vec<Rule>,
    /// Never these.
    pub deny: Vec<Rule>,
}

impl AclListFile {
    fn to_list(&self) -> AclList {
        AclList {
            allow: self.allow.iter().map(|r| r.0.clone()).collect(),
            deny: self.deny.iter().map(|r| r.0.clone()).collect(),
        }
    }
}

impl RelayFile {
    /// Parses TOML text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<RelayFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<RelayFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The effective listen addresses (the defaults when none are set).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        if self.listen.is_empty() {
            DEFAULT_LISTEN
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect()
        } else {
            self.listen.iter().map(|a| a.0.clone()).collect()
        }
    }

    /// The circuit limit sent to peers and enforced by the bridge.
    pub fn limit(&self) -> Limit {
        let l = &self.limits;
        if l.no_limit {
            Limit::UNLIMITED
        } else {
            Limit {
                duration: (l.limit_duration > 0).then(|| Duration::from_secs(l.limit_duration)),
                data: (l.limit_data > 0).then_some(l.limit_data),
            }
        }
    }

    /// The relay service's settings (what SIGHUP reloads).
    pub fn relay_config(&self) -> RelayConfig {
        let l = &self.limits;
        RelayConfig {
            reservation_ttl: Duration::from_secs(l.reservation_ttl.max(1)),
            max_reservations: l.max_reservations,
            max_reservations_per_ip: l.max_reservations_per_ip,
            max_circuits: l.max_circuits,
            max_circuits_per_peer: l.max_circuits_per_peer,
            limit: self.limit(),
            buffer_size: l.buffer_size,
            window_budget: l.window_budget,
            stream_timeout: Duration::from_secs(l.stream_timeout.max(1)),
            connect_timeout: Duration::from_secs(l.connect_timeout.max(1)),
            acl: Acl {
                reserve: self.acl.reserve.to_list(),
                connect: self.acl.connect.to_list(),
            },
            ..RelayConfig::default()
        }
    }

    /// The node's settings (fixed for the life of the process).
    pub fn node_config(&self) -> NodeConfig {
        let l = &self.limits;
        NodeConfig {
            announce: self.announce.iter().map(|a| a.0.clone()).collect(),
            relay_client: false,
            timeouts: UpgradeTimeouts {
                negotiation: Duration::from_secs(l.negotiation_timeout.max(1)),
                handshake: Duration::from_secs(l.handshake_timeout.max(1)),
            },
            max_connections: l.max_connections.max(1),
            max_pending_handshakes: l.max_pending_handshakes.max(1),
            yamux: yamux_for(l),
            ..NodeConfig::default()
        }
    }

    /// The effective config as TOML, every key present.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// Yamux settings for the relay's connections: every circuit is a stream on the
/// connection to each of its two peers, so the per-connection stream cap must not be
/// what refuses circuits that `max_circuits_per_peer` allows (with room for the
/// peer's own streams: identify, ping, reservations).
fn yamux_for(l: &Limits) -> circuit_proto::yamux::Config {
    let d = circuit_proto::yamux::Config::default();
    circuit_proto::yamux::Config {
        max_streams: d
            .max_streams
            .max(l.max_circuits_per_peer.saturating_mul(2) + 64),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_cap_follows_circuits_per_peer() {
        let mut c = RelayFile::default();
        assert_eq!(c.node_config().yamux.max_streams, 1024);
        c.limits.max_circuits_per_peer = 5000;
        assert_eq!(c.node_config().yamux.max_streams, 10_064);
    }

    fn parse(s: &str) -> Result<RelayFile, String> {
        RelayFile::parse(s, Path::new("relay.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_the_defaults_and_printing_round_trips() {
        let d = parse("").unwrap();
        assert_eq!(d, RelayFile::default());
        let mut f = RelayFile {
            listen: vec![Addr("/ip4/127.0.0.1/tcp/0".parse().unwrap())],
            metrics: Some("127.0.0.1:9464".parse().unwrap()),
            ..RelayFile::default()
        };
        f.acl.connect.deny = vec!["10.0.0.0/8".parse().unwrap()];
        f.limits.max_circuits = 7;
        assert_eq!(parse(&f.to_toml()).unwrap(), f);
        let rc = f.relay_config();
        assert_eq!(rc.max_circuits, 7);
        assert!(!rc.acl.connect.permits(
            &libp2p_identity::PeerId::random(),
            Some("10.1.1.1".parse().unwrap())
        ));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let e = parse("listen = []\n\n[limits]\nmax_circuit = 3\n").unwrap_err();
        assert!(e.contains("max_circuit") && e.contains("line 4"), "{e}");
        let e = parse("[limits]\nmax_circuits = -1\n").unwrap_err();
        assert!(e.contains("max_circuits") && e.contains("line 2"), "{e}");
        let e = parse("\n[limits]\nreservation_ttl = 0\n").unwrap_err();
        assert!(
            e.contains("reservation_ttl") && e.contains("line 3") && e.contains("at least 1"),
            "{e}"
        );
        let e = parse("listen = [\"/ip4/1.2.3.4/tcp/x\"]\n").unwrap_err();
        assert!(
            e.contains("listen") && e.contains("line 1") && e.contains("multiaddr"),
            "{e}"
        );
        let e = parse("[acl.reserve]\nallow = [\"not-a-peer\"]\n").unwrap_err();
        assert!(e.contains("allow") && e.contains("line 2"), "{e}");
        let e = parse("metrics = \"localhost\"\n").unwrap_err();
        assert!(e.contains("metrics") && e.contains("line 1"), "{e}");
    }
}
