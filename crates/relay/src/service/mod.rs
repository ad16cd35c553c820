//! The hop protocol handler: RESERVE and CONNECT.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use circuit_net::framed;
use circuit_net::{Connection, IncomingStream, Node, NodeEvent, Stream};
use circuit_proto::relay::{self as core, HopRequest, HOP_PROTOCOL, STOP_PROTOCOL};
use circuit_proto::yamux::WindowBudget;
use circuit_wire::pb::relay::{HopMessage, Status, StopMessage};
use circuit_wire::record::Voucher;
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use tokio::io::AsyncWriteExt;

use crate::bridge::{bridge_counted, relayed_stream_limits, BridgeEnd};
use crate::config::RelayConfig;
use crate::metrics::{RelayMetrics, Request};
use crate::table::{ReservationTable, TableError};

mod v1;

/// Counters of the relay, for status lines and metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Reservations granted (incl. refreshes).
    pub reservations_accepted: AtomicU64,
    /// Reservations refused.
    pub reservations_refused: AtomicU64,
    /// Circuits opened.
    pub circuits_opened: AtomicU64,
    /// Circuits refused or failed before bridging.
    pub circuits_refused: AtomicU64,
    /// Circuits ended by a limit.
    pub circuits_limited: AtomicU64,
    /// Bytes relayed, both directions.
    pub bytes_relayed: AtomicU64,
}

struct Inner {
    node: Node,
    config: RwLock<RelayConfig>,
    table: Mutex<ReservationTable>,
    stats: RelayStats,
    metrics: RelayMetrics,
    /// Shared by every relayed stream: bounds their windows' growth together.
    window_budget: WindowBudget,
}

/// A running relay service. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Relay {
    /// Mounts the hop protocol on `node` and starts the housekeeping tasks.
    pub fn start(node: &Node, config: RelayConfig) -> Relay {
        let relay = Relay {
            inner: Arc::new(Inner {
                node: node.clone(),
                table: Mutex::new(ReservationTable::default()),
                stats: RelayStats::default(),
                metrics: RelayMetrics::new(),
                window_budget: WindowBudget::new(config.window_budget),
                config: RwLock::new(config),
            }),
        };
        relay.inner.metrics.set_status(true);
        let r = relay.clone();
        let r1 = relay.clone();
        node.handle(circuit_proto::relay_v1::PROTOCOL, move |inc| {
            let r = r1.clone();
            tokio::spawn(async move { r.handle_v1(inc).await });
        });
        node.handle(HOP_PROTOCOL, move |inc| {
            let r = r.clone();
            tokio::spawn(async move { r.handle_hop(inc).await });
        });
        // A reservation lives only as long as the connection it was made on.
        let r = relay.clone();
        let mut events = node.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::ConnectionClosed(info)) => {
                        let mut t = r.table();
                        let dropped = t.connection_closed(&info.peer, info.id);
                        r.inner.metrics.sync_table(&t);
                        drop(t);
                        if dropped {
                            tracing::info!(peer = %info.peer, "reservation dropped: its connection closed");
                        }
                    }
                    Ok(NodeEvent::ConnectionEstablished(info)) => {
                        r.inner.metrics.connection_established(&info)
                    }
                    Ok(NodeEvent::HandshakeFailed { stage, .. }) => {
                        r.inner.metrics.handshake_failed(stage)
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "relay lagged behind node events")
                    }
                    Err(_) => return,
                }
            }
        });
        // Holds the relay weakly between ticks, so a dropped relay is not kept alive.
        let weak = Arc::downgrade(&relay.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(inner) = weak.upgrade().filter(|i| !i.node.is_shut_down()) else {
                    return;
                };
                let r = Relay { inner };
                let mut t = r.table();
                let n = t.expire(Instant::now());
                r.inner.metrics.sync_table(&t);
                drop(t);
                if n > 0 {
                    tracing::info!(expired = n, "reservations expired");
                }
            }
        });
        relay
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ReservationTable> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the settings.
    pub fn config(&self) -> RelayConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces limits and timeouts; open circuits keep theirs (but the window budget's new
    /// limit applies to their growth from now on).
    pub fn set_config(&self, config: RelayConfig) {
        self.inner.window_budget.set_limit(config.window_budget);
        *self.inner.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Counters.
    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// The budget every relayed stream's window growth is taken from
    /// ([`RelayConfig::window_budget`]): what is granted now, and how often it ran out.
    pub fn window_budget(&self) -> &WindowBudget {
        &self.inner.window_budget
    }

    /// The metrics; add them to a registry with [`RelayMetrics::register`].
    pub fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    /// Brings the sampled series (live counts, connections per transport,
    /// memory, fds) up to date; call before encoding the registry.
    pub fn refresh_metrics(&self) {
        {
            let mut t = self.table();
            t.expire(Instant::now());
            self.inner.metrics.sync_table(&t);
        }
        let conns = self.inner.node.connections();
        self.inner
            .metrics
            .sync_connections(conns.iter().map(|c| c.info()));
        self.inner.metrics.sync_process();
        self.inner
            .metrics
            .sync_window_budget(&self.inner.window_budget);
    }

    /// Live reservations.
    pub fn num_reservations(&self) -> usize {
        self.table().num_reservations()
    }

    /// Open circuits.
    pub fn num_circuits(&self) -> usize {
        self.table().num_circuits()
    }

    /// The addresses we put in reservations: announced or listen addresses, with `/p2p/<relay>`.
    pub fn reservation_addrs(&self) -> Vec<Multiaddr> {
        let node = &self.inner.node;
        node.advertised_addresses()
            .into_iter()
            .map(|a| circuit_wire::addr::with_p2p(a, node.peer_id()))
            .collect()
    }

    async fn handle_hop(&self, inc: IncomingStream) {
        let IncomingStream {
            mut stream,
            connection,
            ..
        } = inc;
        let peer = connection.peer();
        let cfg = self.config();
        let read = framed::read_message::<HopMessage>(&mut stream, core::MAX_MESSAGE);
        let msg = match tokio::time::timeout(cfg.stream_timeout, read).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "hop: malformed request");
                self.inner.metrics.refused(
                    Request::Unknown,
                    "malformed",
                    peer,
                    ip_of(&connection.info().remote_addr),
                );
                self.refuse(&mut stream, Status::MalformedMessage).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "hop: no request within the stream timeout");
                self.inner.metrics.refused(
                    Request::Unknown,
                    "timeout",
                    peer,
                    ip_of(&connection.info().remote_addr),
                );
                return;
            }
        };
        let req = match core::parse_hop_request(&msg) {
            Ok(r) => r,
            Err(status) => {
                tracing::info!(%peer, status = core::status_str(status), "hop: bad request");
                self.inner.metrics.refused(
                    Request::Unknown,
                    "bad_request",
                    peer,
                    ip_of(&connection.info().remote_addr),
                );
                self.refuse(&mut stream, status).await;
                return;
            }
        };
        let kind = match req {
            HopRequest::Reserve => Request::Reserve,
            HopRequest::Connect { .. } => Request::Connect,
        };
        if connection.info().relayed {
            tracing::info!(%peer, "hop: refused over a relayed connection");
            self.refused(
                kind,
                "relayed_connection",
                Status::PermissionDenied,
                &connection,
            );
            self.refuse(&mut stream, Status::PermissionDenied).await;
            return;
        }
        let ip = ip_of(&connection.info().remote_addr);
        let acl = match kind {
            Request::Reserve => &cfg.acl.reserve,
            _ => &cfg.acl.connect,
        };
        if !acl.permits(&peer, ip) {
            tracing::info!(%peer, ip = ?ip, request = kind.as_str(), "hop: refused by the ACL (permission denied)");
            self.refused(kind, "acl", Status::PermissionDenied, &connection);
            self.refuse(&mut stream, Status::PermissionDenied).await;
            return;
        }
        match req {
            HopRequest::Reserve => self.reserve(stream, &connection, &cfg).await,
            HopRequest::Connect { target } => self.connect(stream, &connection, target, &cfg).await,
        }
    }

    /// Counts a refusal: ours by `reason`, go-libp2p's by `status`.
    fn refused(&self, kind: Request, reason: &'static str, status: Status, conn: &Connection) {
        let m = &self.inner.metrics;
        m.refused(kind, reason, conn.peer(), ip_of(&conn.info().remote_addr));
        match kind {
            Request::Reserve => m.reservation_handled(status),
            Request::Connect => m.connection_handled(status),
            Request::Unknown => {}
        }
    }

    /// Refuses a CONNECT: counts it (stats and metrics), logs why once, answers `status`.
    async fn refuse_circuit(
        &self,
        stream: &mut Stream,
        src_conn: &Connection,
        target: &PeerId,
        reason: &'static str,
        status: Status,
        detail: &str,
    ) {
        self.inner
            .stats
            .circuits_refused
            .fetch_add(1, Ordering::Relaxed);
        self.refused(Request::Connect, reason, status, src_conn);
        tracing::info!(src = %src_conn.peer(), %target, reason, detail, "circuit refused");
        self.refuse(stream, status).await;
    }

    async fn refuse(&self, stream: &mut Stream, status: Status) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            framed::write_message(stream, &core::hop_status(status)),
        )
        .await;
        let _ = stream.shutdown().await;
    }

    async fn reserve(&self, mut stream: Stream, conn: &Connection, cfg: &RelayConfig) {
        let peer = conn.peer();
        let ip = ip_of(&conn.info().remote_addr);
        let result = {
            let mut t = self.table();
            let now = Instant::now();
            let renewal = t.has_reservation(&peer, now);
            let r = t.reserve(cfg, peer, ip, conn.id(), now);
            if r.is_ok() {
                self.inner.metrics.reservation_allowed(renewal);
            }
            self.inner.metrics.sync_table(&t);
            r
        };
        if let Err(e) = result {
            let (status, reason) = match e {
                TableError::Full => (Status::ReservationRefused, "table_full"),
                TableError::PerIp => (Status::ReservationRefused, "per_ip"),
                _ => (Status::ResourceLimitExceeded, "table_full"),
            };
            self.refused(Request::Reserve, reason, status, conn);
            self.inner
                .stats
                .reservations_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, reason = %e, "reservation refused");
            self.refuse(&mut stream, status).await;
            return;
        }
        let expire = now_unix() + cfg.reservation_ttl.as_secs();
        let node = &self.inner.node;
        let voucher = if cfg.vouchers {
            Voucher {
                relay: node.peer_id(),
                peer,
                expiration: expire,
            }
            .sign(node.keypair())
            .ok()
        } else {
            None
        };
        let answer = core::hop_reserve_ok(expire, &self.reservation_addrs(), voucher, cfg.limit);
        match tokio::time::timeout(
            cfg.stream_timeout,
            framed::write_message(&mut stream, &answer),
        )
        .await
        {
            Ok(Ok(())) => {
                self.inner.metrics.reservation_handled(Status::Ok);
                self.inner
                    .stats
                    .reservations_accepted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, expire, "reservation accepted");
                let _ = stream.shutdown().await;
            }
            _ => {
                tracing::info!(%peer, "reservation answer could not be sent");
                stream.reset();
            }
        }
    }

    async fn connect(
        &self,
        mut src_stream: Stream,
        src_conn: &Connection,
        target: PeerId,
        cfg: &RelayConfig,
    ) {
        let src = src_conn.peer();
        let admitted = {
            let mut t = self.table();
            let r = t.open_circuit(cfg, src, target, Instant::now());
            self.inner.metrics.sync_table(&t);
            r
        };
        if let Err(e) = admitted {
            let (status, reason) = match e {
                TableError::NoReservation => (Status::NoReservation, "no_reservation"),
                TableError::CircuitsPerPeer => (Status::ResourceLimitExceeded, "circuits_per_peer"),
                _ => (Status::ResourceLimitExceeded, "circuits_full"),
            };
            self.refuse_circuit(
                &mut src_stream,
                src_conn,
                &target,
                reason,
                status,
                &e.to_string(),
            )
            .await;
            return;
        }
        // From here on the circuit is counted: release it on every path.
        let _guard = CircuitGuard {
            relay: self.clone(),
            src,
            dst: target,
        };
        let node = &self.inner.node;
        let Some(dst_conn) = node
            .connections_to(&target)
            .into_iter()
            .find(|c| !c.info().relayed)
        else {
            let why = "target has a reservation but no live connection";
            self.refuse_circuit(
                &mut src_stream,
                src_conn,
                &target,
                "target_not_connected",
                Status::ConnectionFailed,
                why,
            )
            .await;
            return;
        };
        let stop = async {
            let mut s = node
                .open_stream(&dst_conn, STOP_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            framed::write_message(&mut s, &core::stop_connect(&src, cfg.limit))
                .await
                .map_err(|e| e.to_string())?;
            let answer = framed::read_message::<StopMessage>(&mut s, core::MAX_MESSAGE)
                .await
                .map_err(|e| e.to_string())?;
            core::parse_stop_response(&answer)?;
            Ok::<Stream, String>(s)
        };
        let dst_stream = match tokio::time::timeout(cfg.connect_timeout, stop).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = format!("target refused or stop protocol failed: {e}");
                self.refuse_circuit(
                    &mut src_stream,
                    src_conn,
                    &target,
                    "target_refused",
                    Status::ConnectionFailed,
                    &why,
                )
                .await;
                return;
            }
            Err(_) => {
                let why = "target did not answer in time";
                self.refuse_circuit(
                    &mut src_stream,
                    src_conn,
                    &target,
                    "target_timeout",
                    Status::ConnectionFailed,
                    why,
                )
                .await;
                return;
            }
        };
        if let Err(e) =
            framed::write_message(&mut src_stream, &core::hop_connect_ok(cfg.limit)).await
        {
            tracing::info!(%src, %target, error = %e, "circuit failed: source went away");
            return;
        }
        self.run_circuit(src, target, src_stream, dst_stream, cfg)
            .await;
    }

    /// Bridges an admitted, answered circuit until it ends; counts and logs it.
    async fn run_circuit(
        &self,
        src: PeerId,
        target: PeerId,
        src_stream: Stream,
        dst_stream: Stream,
        cfg: &RelayConfig,
    ) {
        self.inner.metrics.connection_handled(Status::Ok);
        self.inner.metrics.circuit_opened();
        self.inner
            .stats
            .circuits_opened
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%src, %target, limit = ?cfg.limit, "circuit open");
        let limits = relayed_stream_limits(&self.inner.window_budget);
        src_stream.set_limits(limits.clone());
        dst_stream.set_limits(limits);
        let started = Instant::now();
        let m = &self.inner.metrics;
        let total = &self.inner.stats.bytes_relayed;
        let go_total = m.data_transferred.inner();
        let stats = bridge_counted(
            src_stream,
            dst_stream,
            cfg.limit,
            cfg.buffer_size,
            &[total, go_total, m.bytes_src_to_dst.inner()],
            &[total, go_total, m.bytes_dst_to_src.inner()],
            cfg.tap.as_ref(),
        )
        .await;
        let end = match stats.end {
            BridgeEnd::Done => "done",
            BridgeEnd::DataLimit => "data_limit",
            BridgeEnd::DurationLimit => "duration_limit",
            BridgeEnd::Error => "error",
        };
        m.circuit_closed(started.elapsed().as_secs_f64(), end);
        if matches!(stats.end, BridgeEnd::DataLimit | BridgeEnd::DurationLimit) {
            self.inner
                .stats
                .circuits_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(%src, %target, end = ?stats.end, up = stats.src_to_dst, down = stats.dst_to_src, secs = started.elapsed().as_secs_f64(), "circuit closed");
    }
}

struct CircuitGuard {
    relay: Relay,
    src: PeerId,
    dst: PeerId,
}

impl Drop for CircuitGuard {
    fn drop(&mut self) {
        let mut t = self.relay.table();
        t.close_circuit(self.src, self.dst);
        self.relay.inner.metrics.sync_table(&t);
    }
}
