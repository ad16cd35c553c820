//! The AutoNAT client: when to probe, whom to ask, and what the answers mean.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::ResponseError;

/// Our reachability as the client currently believes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NatStatus {
    /// Not enough evidence yet.
    #[default]
    Unknown,
    /// Servers could not dial us back: we are behind a NAT or firewall.
    Private,
    /// A server dialed us back at this address.
    Public(Multiaddr),
}

impl NatStatus {
    /// Whether this is [`NatStatus::Public`].
    pub fn is_public(&self) -> bool {
        matches!(self, NatStatus::Public(_))
    }
}

/// What one probe said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Dialed back at this address.
    Public(Multiaddr),
    /// Dialed and failed (`E_DIAL_ERROR`).
    Private,
    /// No evidence: refused, bad request, internal error, or the request
    /// itself failed or timed out.
    Unknown,
}

impl Observation {
    /// The meaning of a server's answer. Only `E_DIAL_ERROR` counts as
    /// private: go before v0.20 answered relayed requests with it too, but a
    /// refusal never says anything about our reachability.
    pub fn from_result(result: Result<Multiaddr, ResponseError>) -> Observation {
        match result {
            Ok(a) => Observation::Public(a),
            Err(ResponseError::DialError) => Observation::Private,
            Err(_) => Observation::Unknown,
        }
    }
}

/// A change of [`NatStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Before.
    pub old: NatStatus,
    /// After.
    pub new: NatStatus,
}

/// Client schedule and confidence (defaults are go-libp2p's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Delay before the first probe (go: 15 s).
    pub boot_delay: Duration,
    /// Next probe while not confident (go: 90 s).
    pub retry_interval: Duration,
    /// Next probe once confident (go: 15 min).
    pub refresh_interval: Duration,
    /// Don't ask the same server again within this (go: 90 s).
    pub throttle_server_period: Duration,
    /// How long a server has to answer (go: 30 s).
    pub request_timeout: Duration,
    /// Highest confidence (go and rust: 3).
    pub confidence_max: u8,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            boot_delay: Duration::from_secs(15),
            retry_interval: Duration::from_secs(90),
            refresh_interval: Duration::from_secs(15 * 60),
            throttle_server_period: Duration::from_secs(90),
            request_timeout: Duration::from_secs(30),
            confidence_max: 3,
        }
    }
}

/// The client core. Confidence rules (go-libp2p's `recordObservation`):
///
/// - **Public** while not public: switch at once, confidence 0 (one server
///   reaching us is proof). While public: confidence + 1 (the address is
///   updated if it differs).
/// - **Private** while not private: confidence − 1 if above 0, otherwise
///   switch to private with confidence 0 — so a confident public status
///   survives up to `confidence` contrary answers. While private: + 1.
/// - **Unknown**: confidence − 1 if above 0, otherwise the status becomes
///   unknown.
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
    status: NatStatus,
    confidence: u8,
    next_probe: Instant,
    /// Server asked and when (for the throttle).
    asked: HashMap<PeerId, Instant>,
    /// The probe in flight: server and deadline.
    in_flight: Option<(PeerId, Instant)>,
}

impl Client {
    /// A client whose first probe is due `boot_delay` after `now`.
    pub fn new(config: ClientConfig, now: Instant) -> Client {
        Client {
            config,
            status: NatStatus::Unknown,
            confidence: 0,
            next_probe: now + config.boot_delay,
            asked: HashMap::new(),
            in_flight: None,
        }
    }

    /// The current belief.
    pub fn status(&self) -> &NatStatus {
        &self.status
    }

    /// Confidence in it, 0..=`confidence_max`.
    pub fn confidence(&self) -> u8 {
        self.confidence
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// If a probe is due and none is in flight, picks the first of `servers`
    /// (in the caller's order: shuffle for randomness) not asked within
    /// `throttle_server_period`, and marks the probe as sent to it. The glue
    /// then sends [`super::dial_request`] to that server. With no eligible
    /// server the probe is retried after `retry_interval`.
    pub fn poll_probe(
        &mut self,
        now: Instant,
        servers: impl IntoIterator<Item = PeerId>,
    ) -> Option<PeerId> {
        if self.in_flight.is_some() || now < self.next_probe {
            return None;
        }
        let throttle = self.config.throttle_server_period;
        self.asked
            .retain(|_, t| now.saturating_duration_since(*t) < throttle);
        let chosen = servers.into_iter().find(|s| !self.asked.contains_key(s));
        match chosen {
            Some(s) => {
                self.asked.insert(s, now);
                self.in_flight = Some((s, now + self.config.request_timeout));
                Some(s)
            }
            None => {
                self.next_probe = now + self.config.retry_interval;
                None
            }
        }
    }

    /// Feeds the answer of `server` to the probe in flight. An answer from
    /// another server than the one asked is ignored.
    pub fn handle_response(
        &mut self,
        server: &PeerId,
        result: Result<Multiaddr, ResponseError>,
        now: Instant,
    ) -> Option<StatusChange> {
        if self.in_flight.map(|(s, _)| s) != Some(*server) {
            return None;
        }
        self.in_flight = None;
        self.observe(Observation::from_result(result), now)
    }

    /// The probe to `server` failed (stream error, bad message, dial failure):
    /// an unknown observation.
    pub fn handle_failure(&mut self, server: &PeerId, now: Instant) -> Option<StatusChange> {
        if self.in_flight.map(|(s, _)| s) != Some(*server) {
            return None;
        }
        self.in_flight = None;
        self.observe(Observation::Unknown, now)
    }

    /// Expires the probe in flight if its deadline passed (an unknown
    /// observation); the glue should drop that stream.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<StatusChange> {
        match self.in_flight {
            Some((_, deadline)) if deadline <= now => {
                self.in_flight = None;
                self.observe(Observation::Unknown, now)
            }
            _ => None,
        }
    }

    /// Applies one observation (see the type docs) and schedules the next
    /// probe: `refresh_interval` once confident, `retry_interval` otherwise.
    pub fn observe(&mut self, obs: Observation, now: Instant) -> Option<StatusChange> {
        let old = self.status.clone();
        match obs {
            Observation::Public(addr) => {
                if self.status.is_public() {
                    self.raise();
                    self.status = NatStatus::Public(addr);
                } else {
                    self.status = NatStatus::Public(addr);
                    self.confidence = 0;
                }
            }
            Observation::Private => {
                if self.status == NatStatus::Private {
                    self.raise();
                } else if self.confidence > 0 {
                    self.confidence -= 1;
                } else {
                    self.status = NatStatus::Private;
                }
            }
            Observation::Unknown => {
                if self.confidence > 0 {
                    self.confidence -= 1;
                } else {
                    self.status = NatStatus::Unknown;
                }
            }
        }
        let interval = if self.confidence >= self.config.confidence_max {
            self.config.refresh_interval
        } else {
            self.config.retry_interval
        };
        self.next_probe = now + interval;
        // A new public address is not a change of reachability.
        let changed = match (&old, &self.status) {
            (NatStatus::Public(_), NatStatus::Public(_)) => false,
            (a, b) => a != b,
        };
        changed.then(|| StatusChange {
            old,
            new: self.status.clone(),
        })
    }

    fn raise(&mut self) {
        if self.confidence < self.config.confidence_max {
            self.confidence += 1;
        }
    }

    /// Our addresses changed: unless public, lower the confidence by one and
    /// probe within `retry_interval` (a new address may be reachable).
    pub fn on_new_address(&mut self, now: Instant) {
        if !self.status.is_public() {
            self.confidence = self.confidence.saturating_sub(1);
            self.next_probe = self.next_probe.min(now + self.config.retry_interval);
        }
    }

    /// Probe as soon as possible (e.g. a new server connected while unknown).
    pub fn probe_now(&mut self, now: Instant) {
        self.next_probe = self.next_probe.min(now);
    }

    /// When the next probe is due, or the probe in flight expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.in_flight {
            Some((_, deadline)) => Some(deadline),
            None => Some(self.next_probe),
        }
    }

    /// The server being asked, if a probe is in flight.
    pub fn in_flight(&self) -> Option<&PeerId> {
        self.in_flight.as_ref().map(|(s, _)| s)
    }
}
