//! The client side of circuit relay v2: reserving a slot on a relay, keeping it,
//! accepting circuits (stop protocol) and dialing through a relay (hop CONNECT).
//!
//! A relayed connection is a hop or stop stream used as a raw channel: Noise and
//! yamux run end to end over it, so the relay only sees ciphertext.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circuit_proto::relay::{self as core, Granted, Limit};
use circuit_proto::relay_v1 as v1;
use circuit_wire::addr::{self as waddr, CircuitAddr};
use circuit_wire::pb::relay::{HopMessage, Status, StopMessage};
use circuit_wire::pb::relay_v1::{CircuitRelay, Status as V1Status};
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::connection::{Connection, Direction};
use crate::framed;
use crate::node::{DialError, Node};

pub use circuit_proto::relay::{HOP_PROTOCOL, STOP_PROTOCOL};

/// How long we wait for a relay's answer on hop or stop streams.
pub const RELAY_IO_TIMEOUT: Duration = Duration::from_secs(30);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The remote address of a relayed connection: `<relay conn remote addr>/p2p/<relay>/p2p-circuit`.
fn circuit_remote_addr(relay_conn: &Connection) -> Multiaddr {
    let mut a = waddr::with_p2p(relay_conn.info().remote_addr.clone(), relay_conn.peer());
    a.push(Protocol::P2pCircuit);
    a
}

/// A reservation held on a relay.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The relay.
    pub relay: PeerId,
    /// What the relay granted.
    pub granted: Granted,
    /// Our addresses through this relay: `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<self>`.
    pub circuit_addrs: Vec<Multiaddr>,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// Could not reach the relay.
    #[error("{0}")]
    Dial(#[from] DialError),
    /// The relay answered, but not with a usable reservation.
    #[error("{0}")]
    Refused(#[from] core::ReserveError),
    /// The exchange failed.
    #[error("reservation exchange: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends one RESERVE to the relay at `relay_addr` (which must end in `/p2p/<relay>`).
pub async fn reserve(node: &Node, relay_addr: &Multiaddr) -> Result<Reservation, ReserveError> {
    let conn = node.dial(relay_addr).await?;
    reserve_on(node, &conn).await
}

/// Sends one RESERVE on an existing connection to a relay.
pub async fn reserve_on(node: &Node, conn: &Connection) -> Result<Reservation, ReserveError> {
    if conn.info().relayed {
        return Err(ReserveError::Io(std::io::Error::other(
            "cannot reserve over a relayed connection",
        )));
    }
    let relay = conn.peer();
    let mut s = node.open_stream(conn, HOP_PROTOCOL).await?;
    let exchange = async {
        framed::write_message(&mut s, &core::hop_reserve()).await?;
        framed::read_message::<HopMessage>(&mut s, core::MAX_MESSAGE).await
    };
    let answer = tokio::time::timeout(RELAY_IO_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "relay did not answer RESERVE")
        })??;
    let _ = s.shutdown().await;
    let granted = core::parse_reserve_response(&answer, &relay, &node.peer_id(), now_unix())?;
    if granted.addrs.is_empty() {
        return Err(core::ReserveError::NoAddresses.into());
    }
    let circuit_addrs = granted
        .addrs
        .iter()
        .map(|a| {
            let mut c = a.clone();
            c.push(Protocol::P2pCircuit);
            c.push(Protocol::P2p(node.peer_id()));
            c
        })
        .collect();
    Ok(Reservation {
        relay,
        granted,
        circuit_addrs,
    })
}

/// Events of a kept reservation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReservationEvent {
    /// A reservation was made or refreshed.
    Accepted(Box<Reservation>),
    /// The reservation failed or was lost; we retry after `retry_in`.
    Failed {
        /// The relay address.
        relay_addr: Multiaddr,
        /// Why.
        error: String,
        /// Next attempt.
        retry_in: Duration,
    },
}

/// A reservation kept alive in the background: refreshed before expiry,
/// re-made after the connection to the relay is lost. Dropping it stops that.
pub struct KeptReservation {
    stop: Arc<AtomicBool>,
    events: broadcast::Sender<ReservationEvent>,
    /// Subscribed before the task started, for the first [`KeptReservation::events`] call.
    first: std::sync::Mutex<Option<broadcast::Receiver<ReservationEvent>>>,
}

impl KeptReservation {
    /// Subscribes to its events. The first call gets every event since the start (a
    /// reservation granted before the caller subscribed is not missed); later calls get
    /// the events from then on.
    pub fn events(&self) -> broadcast::Receiver<ReservationEvent> {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        first.unwrap_or_else(|| self.events.subscribe())
    }
}

impl Drop for KeptReservation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Keeps a reservation on `relay_addr`; our circuit addresses are added to the
/// node's addresses while it holds, and removed when it ends.
pub fn keep_reservation(node: &Node, relay_addr: Multiaddr) -> KeptReservation {
    let stop = Arc::new(AtomicBool::new(false));
    let (events, first) = broadcast::channel(64);
    let kept = KeptReservation {
        stop: stop.clone(),
        events: events.clone(),
        first: std::sync::Mutex::new(Some(first)),
    };
    let node = node.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        let mut current: Vec<Multiaddr> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match reserve(&node, &relay_addr).await {
                Ok(r) => {
                    backoff = Duration::from_secs(1);
                    for a in &current {
                        if !r.circuit_addrs.contains(a) {
                            node.remove_address(a);
                        }
                    }
                    // Announce without our own /p2p suffix, as listen addresses are.
                    current = r
                        .circuit_addrs
                        .iter()
                        .map(|a| waddr::split_p2p(a).0)
                        .collect();
                    for a in &current {
                        node.add_address(a.clone());
                    }
                    let _ = events.send(ReservationEvent::Accepted(Box::new(r.clone())));
                    // Refresh at 3/4 of the remaining lifetime (as rust-libp2p), never sooner than 1 s.
                    let left = r.granted.expire.saturating_sub(now_unix());
                    let wait = Duration::from_secs((left * 3 / 4).max(1));
                    let conn = node
                        .connections_to(&r.relay)
                        .into_iter()
                        .find(|c| !c.info().relayed);
                    let deadline = tokio::time::Instant::now() + wait;
                    loop {
                        if stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        if conn.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
                            tracing::info!(relay = %r.relay, "connection to relay lost; reserving again");
                            break;
                        }
                        tokio::time::sleep(
                            Duration::from_millis(250).min(deadline - tokio::time::Instant::now()),
                        )
                        .await;
                    }
                }
                Err(e) => {
                    for a in current.drain(..) {
                        node.remove_address(&a);
                    }
                    tracing::warn!(relay = %relay_addr, error = %e, retry_in = ?backoff, "reservation failed");
                    let _ = events.send(ReservationEvent::Failed {
                        relay_addr: relay_addr.clone(),
                        error: e.to_string(),
                        retry_in: backoff,
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        for a in current.drain(..) {
            node.remove_address(&a);
        }
    });
    kept
}

/// Dials `target` through a relay, as described by a parsed circuit address.
pub(crate) async fn dial_circuit(
    node: &Node,
    addr: &Multiaddr,
    c: CircuitAddr,
) -> Result<Connection, DialError> {
    if c.target == node.peer_id() {
        return Err(DialError::BadAddress {
            addr: addr.clone(),
            reason: "that is our own peer id".into(),
        });
    }
    let relay_conn = match (&c.relay_addr, c.relay) {
        (Some(ra), Some(relay)) => node.dial(&waddr::with_p2p(ra.clone(), relay)).await?,
        (None, Some(relay)) => node
            .connections_to(&relay)
            .into_iter()
            .find(|x| !x.info().relayed)
            .ok_or_else(|| DialError::BadAddress { addr: addr.clone(), reason: format!("no address known for relay {relay}: give its transport address before /p2p/{relay}") })?,
        _ => {
            // The bare form: try relays we are connected to that serve hop.
            let relays: Vec<Connection> = node
                .connections()
                .into_iter()
                .filter(|x| !x.info().relayed && node.peer_info(&x.peer()).map(|i| i.protocols.iter().any(|p| p == HOP_PROTOCOL)).unwrap_or(false))
                .collect();
            let mut last = None;
            for rc in relays {
                match connect_via(node, &rc, c.target).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| DialError::BadAddress { addr: addr.clone(), reason: "no relay known: name one (<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>)".into() }));
        }
    };
    connect_via(node, &relay_conn, c.target).await
}

/// Opens a circuit to `target` through the relay on `relay_conn` and upgrades it.
pub async fn connect_via(
    node: &Node,
    relay_conn: &Connection,
    target: PeerId,
) -> Result<Connection, DialError> {
    let relay = relay_conn.peer();
    let mut s = node.open_stream(relay_conn, HOP_PROTOCOL).await?;
    let exchange = async {
        framed::write_message(&mut s, &core::hop_connect(&target)).await?;
        framed::read_message::<HopMessage>(&mut s, core::MAX_MESSAGE).await
    };
    let answer = match tokio::time::timeout(RELAY_IO_TIMEOUT, exchange).await {
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "relay did not answer CONNECT",
            )
            .into())
        }
        // The relay does not speak v2 hop: an old relay may still speak v1.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(%relay, "relay lacks v2 hop; trying circuit relay v1");
            return connect_via_v1(node, relay_conn, target).await;
        }
        Ok(r) => r?,
    };
    let limit = match core::parse_connect_response(&answer) {
        Ok(limit) => limit,
        // A v1-only target has no reservation but may still be reachable with v1.
        Err(status) if status == "NO_RESERVATION" => {
            drop(s);
            return match connect_via_v1(node, relay_conn, target).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    tracing::debug!(%relay, %target, error = %e, "relay v1 fallback failed too");
                    Err(DialError::RelayRefused {
                        relay,
                        target,
                        status,
                    })
                }
            };
        }
        Err(status) => {
            return Err(DialError::RelayRefused {
                relay,
                target,
                status,
            })
        }
    };
    tracing::debug!(%relay, %target, ?limit, "circuit open; upgrading");
    upgrade_circuit(
        node,
        s,
        relay_conn,
        Direction::Outbound,
        Some(target),
        limit,
    )
    .await
    .map_err(|source| DialError::Upgrade {
        addr: circuit_remote_addr(relay_conn),
        source,
    })
}

/// Opens a circuit relay v1 HOP to `target` through the relay on `relay_conn` and upgrades it.
pub async fn connect_via_v1(
    node: &Node,
    relay_conn: &Connection,
    target: PeerId,
) -> Result<Connection, DialError> {
    let relay = relay_conn.peer();
    let mut s = node.open_stream(relay_conn, v1::PROTOCOL).await?;
    let our_addrs: Vec<Multiaddr> = node
        .addresses()
        .into_iter()
        .filter(|a| !waddr::is_circuit(a))
        .collect();
    let exchange = async {
        framed::write_message(&mut s, &v1::hop(&node.peer_id(), &our_addrs, &target)).await?;
        framed::read_message::<CircuitRelay>(&mut s, v1::MAX_MESSAGE).await
    };
    let answer = tokio::time::timeout(RELAY_IO_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "relay did not answer HOP")
        })??;
    v1::parse_status(&answer).map_err(|code| DialError::RelayRefused {
        relay,
        target,
        status: v1::code_name(code),
    })?;
    upgrade_circuit(
        node,
        s,
        relay_conn,
        Direction::Outbound,
        Some(target),
        Limit::UNLIMITED,
    )
    .await
    .map_err(|source| DialError::Upgrade {
        addr: circuit_remote_addr(relay_conn),
        source,
    })
}

/// The destination side of relay v1: a STOP from a relay is an inbound circuit.
async fn handle_v1(
    node: &Node,
    mut s: crate::connection::Stream,
    relay_conn: &Connection,
) -> Result<(), String> {
    let msg = tokio::time::timeout(
        RELAY_IO_TIMEOUT,
        framed::read_message::<CircuitRelay>(&mut s, v1::MAX_MESSAGE),
    )
    .await
    .map_err(|_| "relay sent nothing".to_string())?
    .map_err(|e| format!("reading v1 message: {e}"))?;
    let refuse = |code: V1Status| v1::status(code);
    let src = match v1::parse_request(&msg) {
        Ok(v1::Request::Stop { src, dst })
            if dst == node.peer_id() && !relay_conn.info().relayed =>
        {
            src
        }
        Ok(v1::Request::Stop { .. }) => {
            let _ = framed::write_message(&mut s, &refuse(V1Status::StopDstMultiaddrInvalid)).await;
            return Err("v1 STOP for another peer or over a relayed connection".into());
        }
        Ok(_) => {
            let _ = framed::write_message(&mut s, &refuse(V1Status::HopCantSpeakRelay)).await;
            return Ok(());
        }
        Err(code) => {
            let _ = framed::write_message(&mut s, &refuse(code)).await;
            return Err(format!("bad v1 message: {}", v1::code_name(code as i32)));
        }
    };
    framed::write_message(&mut s, &v1::status(V1Status::Success))
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(relay = %relay_conn.peer(), %src, "accepting v1 circuit");
    upgrade_circuit(
        node,
        s,
        relay_conn,
        Direction::Inbound,
        None,
        Limit::UNLIMITED,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

pub(crate) fn install_stop(node: &Node) {
    let weak = node.downgrade();
    node.handle(v1::PROTOCOL, move |inc| {
        let Some(n) = weak.upgrade() else { return };
        tokio::spawn(async move {
            let relay_conn = inc.connection.clone();
            if let Err(e) = handle_v1(&n, inc.stream, &relay_conn).await {
                tracing::info!(relay = %relay_conn.peer(), error = %e, "incoming v1 circuit failed");
            }
        });
    });
    let weak = node.downgrade();
    node.handle(STOP_PROTOCOL, move |inc| {
        let Some(n) = weak.upgrade() else { return };
        tokio::spawn(async move {
            let relay_conn = inc.connection.clone();
            if let Err(e) = handle_stop(&n, inc.stream, &relay_conn).await {
                tracing::info!(relay = %relay_conn.peer(), error = %e, "incoming circuit failed");
            }
        });
    });
}

async fn handle_stop(
    node: &Node,
    mut s: crate::connection::Stream,
    relay_conn: &Connection,
) -> Result<(), String> {
    if relay_conn.info().relayed {
        let _ = framed::write_message(&mut s, &core::stop_status(Status::PermissionDenied)).await;
        return Err("stop over a relayed connection refused".into());
    }
    let msg = tokio::time::timeout(
        RELAY_IO_TIMEOUT,
        framed::read_message::<StopMessage>(&mut s, core::MAX_MESSAGE),
    )
    .await
    .map_err(|_| "relay sent no CONNECT".to_string())?
    .map_err(|e| format!("reading CONNECT: {e}"))?;
    let (src, limit) = match core::parse_stop_connect(&msg) {
        Ok(x) => x,
        Err(status) => {
            let _ = framed::write_message(&mut s, &core::stop_status(status)).await;
            return Err(format!("bad stop message: {}", core::status_str(status)));
        }
    };
    framed::write_message(&mut s, &core::stop_status(Status::Ok))
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(relay = %relay_conn.peer(), %src, ?limit, "accepting circuit");
    upgrade_circuit(node, s, relay_conn, Direction::Inbound, None, limit)
        .await
        .map(|c| {
            if c.peer() != src {
                tracing::warn!(claimed = %src, actual = %c.peer(), "circuit source differs from the peer the relay named");
            }
        })
        .map_err(|e| e.to_string())
}

/// Runs the connection upgrade (Noise, yamux) over a hop or stop stream that became a
/// circuit; the relay path is the remote address, on both ends.
async fn upgrade_circuit(
    node: &Node,
    stream: crate::connection::Stream,
    relay_conn: &Connection,
    direction: Direction,
    expected: Option<PeerId>,
    limit: Limit,
) -> Result<Connection, crate::upgrade::UpgradeError> {
    let remote = circuit_remote_addr(relay_conn);
    let local = relay_conn.info().local_addr.clone();
    node.upgrade(
        Box::new(stream),
        local,
        remote,
        direction,
        expected,
        Some(limit),
    )
    .await
}

/// A limit in words, for logs and CLI output.
pub fn describe_limit(limit: &Limit) -> String {
    match (limit.duration, limit.data) {
        (None, None) => "unlimited".into(),
        (d, b) => format!(
            "{}{}",
            d.map(|d| format!("{}s ", d.as_secs())).unwrap_or_default(),
            b.map(|b| format!("{b} bytes/direction"))
                .unwrap_or_default()
        ),
    }
}
