//! Prometheus metrics of the relay (prometheus-client).
//!
//! Two sets of series:
//! - go-libp2p's relay-service series, under their exact names and labels
//!   (`libp2p_relaysvc_*`, from go-libp2p's `p2p/protocol/circuitv2/relay/metrics.go`),
//!   so go-libp2p's relay-service Grafana dashboard works unchanged;
//! - our own (`circuit_*`, `process_*`) for what theirs lacks: live gauges,
//!   refusals by the exact check that refused, bytes per direction, connections
//!   per transport, handshake failures per stage, memory and file descriptors.
//!
//! Every label value is created up front, so every series exists (at 0) from
//! the start: dashboards that subtract two series (`opened - closed`) work on a
//! fresh relay, and a scrape shows every name.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use circuit_net::upgrade::Stage;
use circuit_net::ConnectionInfo;
use circuit_proto::yamux::WindowBudget;
use circuit_wire::pb::relay::Status;
use libp2p_identity::PeerId;
use multiaddr::Protocol;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::table::ReservationTable;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// How many recent refusals are kept for the status page.
pub const RECENT_REFUSALS: usize = 32;

/// Which request a refusal answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// RESERVE.
    Reserve,
    /// CONNECT.
    Connect,
    /// A hop message we could not read or parse, so of no known kind.
    Unknown,
}

impl Request {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Reserve => "reserve",
            Request::Connect => "connect",
            Request::Unknown => "unknown",
        }
    }
}

/// The `reason` label values of `circuit_relay_refusals_total`, per request kind.
pub const REFUSAL_REASONS: &[(Request, &str)] = &[
    (Request::Reserve, "acl"),
    (Request::Reserve, "relayed_connection"),
    (Request::Reserve, "table_full"),
    (Request::Reserve, "per_ip"),
    (Request::Connect, "acl"),
    (Request::Connect, "relayed_connection"),
    (Request::Connect, "no_reservation"),
    (Request::Connect, "circuits_full"),
    (Request::Connect, "circuits_per_peer"),
    (Request::Connect, "target_not_connected"),
    (Request::Connect, "target_refused"),
    (Request::Connect, "target_timeout"),
    (Request::Unknown, "malformed"),
    (Request::Unknown, "bad_request"),
    (Request::Unknown, "timeout"),
];

/// One refused request, for the status page.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// Which request.
    pub request: Request,
    /// The check that refused it (a `circuit_relay_refusals_total` reason).
    pub reason: &'static str,
    /// Who asked.
    pub peer: PeerId,
    /// From where, if known.
    pub ip: Option<IpAddr>,
}

/// go-libp2p's request status label: `ok`, `rejected` or `error`.
fn go_status(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::ReservationRefused
        | Status::ResourceLimitExceeded
        | Status::PermissionDenied
        | Status::NoReservation
        | Status::MalformedMessage => "rejected",
        Status::UnexpectedMessage | Status::ConnectionFailed => "error",
        _ => "unknown",
    }
}

/// go-libp2p's rejection reason label for a rejected status.
fn go_reason(status: Status) -> &'static str {
    match status {
        Status::ReservationRefused => "ip constraint violation",
        Status::ResourceLimitExceeded => "resource limit exceeded",
        Status::PermissionDenied => "permission denied",
        Status::NoReservation => "no reservation",
        Status::MalformedMessage => "malformed message",
        _ => "unknown",
    }
}

const GO_STATUSES: [&str; 3] = ["ok", "rejected", "error"];
const GO_REASONS: [&str; 5] = [
    "ip constraint violation",
    "resource limit exceeded",
    "permission denied",
    "no reservation",
    "malformed message",
];
const TRANSPORTS: [&str; 3] = ["tcp", "ws", "relayed"];
const STAGES: [&str; 4] = [
    "security_negotiation",
    "noise",
    "muxer_negotiation",
    "stream_negotiation",
];
const CIRCUIT_ENDS: [&str; 4] = ["done", "data_limit", "duration_limit", "error"];

/// The `stage` label of a handshake failure.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::SecurityNegotiation => "security_negotiation",
        Stage::Noise => "noise",
        Stage::MuxerNegotiation => "muxer_negotiation",
        Stage::StreamNegotiation => "stream_negotiation",
    }
}

/// The `transport` label of a connection.
pub fn transport_label(info: &ConnectionInfo) -> &'static str {
    if info.relayed {
        "relayed"
    } else if info
        .remote_addr
        .iter()
        .chain(info.local_addr.iter())
        .any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
    {
        "ws"
    } else {
        "tcp"
    }
}

/// The relay's metrics. Cheap to update (atomics); register them with [`RelayMetrics::register`].
#[derive(Debug)]
pub struct RelayMetrics {
    status: Gauge,
    reservations: Family<Labels, Counter>,
    reservation_status: Family<Labels, Counter>,
    reservation_rejections: Family<Labels, Counter>,
    connections: Family<Labels, Counter>,
    connection_status: Family<Labels, Counter>,
    connection_rejections: Family<Labels, Counter>,
    connection_duration: Histogram,
    pub(crate) data_transferred: Counter,

    reservations_active: Gauge,
    circuits_active: Gauge,
    refusals: Family<Labels2, Counter>,
    circuits_closed: Family<Labels, Counter>,
    relayed_bytes: Family<Labels, Counter>,
    pub(crate) bytes_src_to_dst: Counter,
    pub(crate) bytes_dst_to_src: Counter,
    window_budget_used: Gauge,
    window_budget_limit: Gauge,
    window_budget_refused: Counter,
    transport_connections: Family<Labels, Counter>,
    transport_connections_active: Family<Labels, Gauge>,
    handshake_failures: Family<Labels, Counter>,
    perf_requests: Family<Labels, Counter>,
    perf_bytes: Family<Labels, Counter>,
    resident_memory: Gauge,
    open_fds: Gauge,

    recent: Mutex<VecDeque<Refusal>>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    /// Fresh metrics with every label value present at zero.
    pub fn new() -> Self {
        // Circuits last seconds to the 2-minute default limit, or hours without limits.
        let buckets = [
            0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        let relayed_bytes: Family<Labels, Counter> = Family::default();
        let bytes_src_to_dst = relayed_bytes
            .get_or_create(&[("direction", "src_to_dst")])
            .clone();
        let bytes_dst_to_src = relayed_bytes
            .get_or_create(&[("direction", "dst_to_src")])
            .clone();
        let m = RelayMetrics {
            status: Gauge::default(),
            reservations: Family::default(),
            reservation_status: Family::default(),
            reservation_rejections: Family::default(),
            connections: Family::default(),
            connection_status: Family::default(),
            connection_rejections: Family::default(),
            connection_duration: Histogram::new(buckets),
            data_transferred: Counter::default(),
            reservations_active: Gauge::default(),
            circuits_active: Gauge::default(),
            refusals: Family::default(),
            circuits_closed: Family::default(),
            relayed_bytes,
            bytes_src_to_dst,
            bytes_dst_to_src,
            window_budget_used: Gauge::default(),
            window_budget_limit: Gauge::default(),
            window_budget_refused: Counter::default(),
            transport_connections: Family::default(),
            transport_connections_active: Family::default(),
            handshake_failures: Family::default(),
            perf_requests: Family::default(),
            perf_bytes: Family::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_REFUSALS)),
        };
        for t in ["opened", "renewed", "closed"] {
            let _ = m.reservations.get_or_create(&[("type", t)]);
        }
        for t in ["opened", "closed"] {
            let _ = m.connections.get_or_create(&[("type", t)]);
        }
        for s in GO_STATUSES {
            let _ = m.reservation_status.get_or_create(&[("status", s)]);
            let _ = m.connection_status.get_or_create(&[("status", s)]);
        }
        for r in GO_REASONS {
            let _ = m.reservation_rejections.get_or_create(&[("reason", r)]);
            let _ = m.connection_rejections.get_or_create(&[("reason", r)]);
        }
        for (req, reason) in REFUSAL_REASONS {
            let _ = m
                .refusals
                .get_or_create(&[("request", req.as_str()), ("reason", reason)]);
        }
        for e in CIRCUIT_ENDS {
            let _ = m.circuits_closed.get_or_create(&[("end", e)]);
        }
        for t in TRANSPORTS {
            let _ = m.transport_connections.get_or_create(&[("transport", t)]);
            let _ = m
                .transport_connections_active
                .get_or_create(&[("transport", t)]);
        }
        for s in STAGES {
            let _ = m.handshake_failures.get_or_create(&[("stage", s)]);
        }
        for o in circuit_net::protocols::perf::Outcome::LABELS {
            let _ = m.perf_requests.get_or_create(&[("outcome", o)]);
        }
        for d in ["received", "sent"] {
            let _ = m.perf_bytes.get_or_create(&[("direction", d)]);
        }
        m
    }

    /// Adds every series to `registry` (go-libp2p's under `libp2p_relaysvc_`,
    /// ours under `circuit_` and `process_`).
    pub fn register(&self, registry: &mut Registry) {
        {
            let go = registry.sub_registry_with_prefix("libp2p_relaysvc");
            go.register("status", "Relay Status", self.status.clone());
            go.register(
                "reservations",
                "Relay Reservation Request",
                self.reservations.clone(),
            );
            go.register(
                "reservation_request_response_status",
                "Relay Reservation Request Response Status",
                self.reservation_status.clone(),
            );
            go.register(
                "reservation_rejections",
                "Relay Reservation Rejected Reason",
                self.reservation_rejections.clone(),
            );
            go.register(
                "connections",
                "Relay Connection Total",
                self.connections.clone(),
            );
            go.register(
                "connection_request_response_status",
                "Relay Connection Request Status",
                self.connection_status.clone(),
            );
            go.register(
                "connection_rejections",
                "Relay Connection Rejected Reason",
                self.connection_rejections.clone(),
            );
            go.register_with_unit(
                "connection_duration",
                "Relay Connection Duration",
                Unit::Seconds,
                self.connection_duration.clone(),
            );
            go.register_with_unit(
                "data_transferred",
                "Bytes Transferred Total",
                Unit::Bytes,
                self.data_transferred.clone(),
            );
        }
        {
            let ours = registry.sub_registry_with_prefix("circuit_relay");
            ours.register(
                "reservations_active",
                "Live reservations",
                self.reservations_active.clone(),
            );
            ours.register(
                "circuits_active",
                "Open circuits",
                self.circuits_active.clone(),
            );
            ours.register(
                "refusals",
                "Refused hop requests by request kind and the check that refused them",
                self.refusals.clone(),
            );
            ours.register(
                "circuits_closed",
                "Circuits ended, by how (done, data_limit, duration_limit, error)",
                self.circuits_closed.clone(),
            );
            ours.register_with_unit(
                "relayed",
                "Bytes forwarded on circuits, per direction (src_to_dst: from the dialer)",
                Unit::Bytes,
                self.relayed_bytes.clone(),
            );
            ours.register_with_unit(
                "window_budget_used",
                "Receive window granted to relayed streams beyond their initial 256 KiB (see limits.window_budget)",
                Unit::Bytes,
                self.window_budget_used.clone(),
            );
            ours.register_with_unit(
                "window_budget_limit",
                "limits.window_budget: most receive window all relayed streams together may grow by",
                Unit::Bytes,
                self.window_budget_limit.clone(),
            );
            ours.register(
                "window_budget_refused",
                "Window growths of relayed streams cut short or refused because the budget was spent",
                self.window_budget_refused.clone(),
            );
        }
        {
            let node = registry.sub_registry_with_prefix("circuit");
            node.register(
                "connections",
                "Connections established, by transport",
                self.transport_connections.clone(),
            );
            node.register(
                "connections_active",
                "Open connections, by transport",
                self.transport_connections_active.clone(),
            );
            node.register(
                "handshake_failures",
                "Inbound handshakes that failed, by stage",
                self.handshake_failures.clone(),
            );
            node.register(
                "perf_requests",
                "Perf (/perf/1.0.0) requests, by outcome (served; refused: busy, too_large; failed)",
                self.perf_requests.clone(),
            );
            node.register_with_unit(
                "perf",
                "Bytes of perf requests, received (uploads) and sent (answers)",
                Unit::Bytes,
                self.perf_bytes.clone(),
            );
        }
        let process = registry.sub_registry_with_prefix("process");
        process.register_with_unit(
            "resident_memory",
            "Resident set size (VmRSS)",
            Unit::Bytes,
            self.resident_memory.clone(),
        );
        process.register("open_fds", "Open file descriptors", self.open_fds.clone());
    }

    /// Counts a perf request that ended (the perf server's observer).
    pub fn perf(&self, outcome: &circuit_net::protocols::perf::Outcome) {
        self.perf_requests
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
        let (received, sent) = outcome.bytes();
        self.perf_bytes
            .get_or_create(&[("direction", "received")])
            .inc_by(received);
        self.perf_bytes
            .get_or_create(&[("direction", "sent")])
            .inc_by(sent);
    }

    /// Sets `libp2p_relaysvc_status` (1 while serving, 0 once shutting down).
    pub fn set_status(&self, serving: bool) {
        self.status.set(i64::from(serving));
    }

    /// Whether `libp2p_relaysvc_status` says serving.
    pub fn status(&self) -> bool {
        self.status.get() == 1
    }

    pub(crate) fn reservation_allowed(&self, renewal: bool) {
        let t = if renewal { "renewed" } else { "opened" };
        self.reservations.get_or_create(&[("type", t)]).inc();
    }

    pub(crate) fn reservation_handled(&self, status: Status) {
        let s = go_status(status);
        self.reservation_status
            .get_or_create(&[("status", s)])
            .inc();
        if s == "rejected" {
            self.reservation_rejections
                .get_or_create(&[("reason", go_reason(status))])
                .inc();
        }
    }

    pub(crate) fn connection_handled(&self, status: Status) {
        let s = go_status(status);
        self.connection_status.get_or_create(&[("status", s)]).inc();
        if s == "rejected" {
            self.connection_rejections
                .get_or_create(&[("reason", go_reason(status))])
                .inc();
        }
    }

    pub(crate) fn circuit_opened(&self) {
        self.connections.get_or_create(&[("type", "opened")]).inc();
    }

    pub(crate) fn circuit_closed(&self, secs: f64, end: &'static str) {
        self.connections.get_or_create(&[("type", "closed")]).inc();
        self.connection_duration.observe(secs);
        self.circuits_closed.get_or_create(&[("end", end)]).inc();
    }

    pub(crate) fn refused(
        &self,
        request: Request,
        reason: &'static str,
        peer: PeerId,
        ip: Option<IpAddr>,
    ) {
        self.refusals
            .get_or_create(&[("request", request.as_str()), ("reason", reason)])
            .inc();
        let mut q = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= RECENT_REFUSALS {
            q.pop_front();
        }
        q.push_back(Refusal {
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            request,
            reason,
            peer,
            ip,
        });
    }

    /// The last [`RECENT_REFUSALS`] refusals, oldest first.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn connection_established(&self, info: &ConnectionInfo) {
        self.transport_connections
            .get_or_create(&[("transport", transport_label(info))])
            .inc();
    }

    pub(crate) fn handshake_failed(&self, stage: Stage) {
        self.handshake_failures
            .get_or_create(&[("stage", stage_label(stage))])
            .inc();
    }

    /// Brings the table-derived series up to date; call with the table locked
    /// after anything that may have added or removed reservations or circuits.
    pub(crate) fn sync_window_budget(&self, budget: &WindowBudget) {
        self.window_budget_used
            .set(i64::try_from(budget.in_use()).unwrap_or(i64::MAX));
        self.window_budget_limit
            .set(i64::try_from(budget.limit()).unwrap_or(i64::MAX));
        // The budget keeps the count; the counter mirrors it (it only ever grows).
        self.window_budget_refused
            .inner()
            .fetch_max(budget.refused(), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sync_table(&self, table: &ReservationTable) {
        self.reservations_active
            .set(i64::try_from(table.num_reservations()).unwrap_or(i64::MAX));
        self.circuits_active
            .set(i64::try_from(table.num_circuits()).unwrap_or(i64::MAX));
        // `closed` follows the table's own count of ended reservations (expired,
        // or gone with their connection), so opened - closed is the live count.
        let closed = self.reservations.get_or_create(&[("type", "closed")]);
        let ended = table.reservations_ended();
        let seen = closed.get();
        if ended > seen {
            closed.inc_by(ended - seen);
        }
    }

    pub(crate) fn sync_connections<'a>(&self, conns: impl Iterator<Item = &'a ConnectionInfo>) {
        let mut counts = [0i64; 3];
        for c in conns {
            let t = transport_label(c);
            if let Some(i) = TRANSPORTS.iter().position(|x| *x == t) {
                counts[i] += 1;
            }
        }
        for (t, n) in TRANSPORTS.iter().zip(counts) {
            self.transport_connections_active
                .get_or_create(&[("transport", t)])
                .set(n);
        }
    }

    pub(crate) fn sync_process(&self) {
        if let Some(rss) = resident_memory() {
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(d.count()).unwrap_or(i64::MAX));
        }
    }
}

/// VmRSS from /proc/self/status, in bytes (Linux; `None` elsewhere).
fn resident_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &RelayMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn go_names_and_labels_exist_from_the_start() {
        let m = RelayMetrics::new();
        let s = scrape(&m);
        for line in [
            "libp2p_relaysvc_status 0",
            "libp2p_relaysvc_reservations_total{type=\"opened\"} 0",
            "libp2p_relaysvc_reservations_total{type=\"closed\"} 0",
            "libp2p_relaysvc_reservation_request_response_status_total{status=\"ok\"} 0",
            "libp2p_relaysvc_reservation_rejections_total{reason=\"permission denied\"} 0",
            "libp2p_relaysvc_connections_total{type=\"opened\"} 0",
            "libp2p_relaysvc_connection_request_response_status_total{status=\"error\"} 0",
            "libp2p_relaysvc_connection_rejections_total{reason=\"no reservation\"} 0",
            "libp2p_relaysvc_connection_duration_seconds_count 0",
            "libp2p_relaysvc_data_transferred_bytes_total 0",
            "circuit_relay_relayed_bytes_total{direction=\"src_to_dst\"} 0",
            "circuit_relay_refusals_total{request=\"connect\",reason=\"acl\"} 0",
            "circuit_handshake_failures_total{stage=\"noise\"} 0",
            "circuit_connections_active{transport=\"ws\"} 0",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
    }

    #[test]
    fn statuses_map_like_go_libp2p() {
        let m = RelayMetrics::new();
        m.reservation_handled(Status::ReservationRefused);
        m.connection_handled(Status::ConnectionFailed);
        m.connection_handled(Status::Ok);
        m.refused(Request::Connect, "acl", PeerId::random(), None);
        let s = scrape(&m);
        assert!(s.contains(
            "libp2p_relaysvc_reservation_rejections_total{reason=\"ip constraint violation\"} 1"
        ));
        assert!(s.contains(
            "libp2p_relaysvc_connection_request_response_status_total{status=\"error\"} 1"
        ));
        assert!(
            s.contains("libp2p_relaysvc_connection_request_response_status_total{status=\"ok\"} 1")
        );
        assert!(s.contains("circuit_relay_refusals_total{request=\"connect\",reason=\"acl\"} 1"));
        assert_eq!(m.recent_refusals().len(), 1);
        for _ in 0..RECENT_REFUSALS + 5 {
            m.refused(Request::Reserve, "per_ip", PeerId::random(), None);
        }
        assert_eq!(m.recent_refusals().len(), RECENT_REFUSALS);
    }
}
