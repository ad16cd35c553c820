//! Autorelay: when AutoNAT says we are private, find relays (DHT providers of
//! `/libp2p/relay`, connected peers that serve hop, configured ones), measure
//! their round-trip time, reserve on the fastest few, keep those reservations,
//! replace lost ones, and announce our `/p2p-circuit` addresses (identify push
//! goes out whenever they change). The choice itself is the sans-IO chooser in
//! `circuit_proto::autorelay`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use circuit_proto::autonat::NatStatus;
use circuit_proto::autorelay::{Action, Chooser, ChooserConfig};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use tokio::sync::broadcast;

use crate::node::Node;
use crate::protocols::autonat::AutoNat;
use crate::protocols::kad::{namespace_key, Kad, RELAY_NAMESPACE};
use crate::protocols::ping::Pinger;
use crate::relay_client::{self, KeptReservation, ReservationEvent, HOP_PROTOCOL};

/// Settings of autorelay.
#[derive(Debug, Clone)]
pub struct AutorelayConfig {
    /// The chooser's settings (how many relays, hysteresis).
    pub chooser: ChooserConfig,
    /// Relays given by the user (`…/p2p/<relay>`): candidates like the discovered ones.
    pub static_relays: Vec<Multiaddr>,
    /// Look for relays this often while private.
    pub discovery_interval: Duration,
    /// Pings per RTT measurement (the smallest counts).
    pub ping_samples: u32,
    /// Act as if AutoNAT said private (for hosts known to be unreachable).
    pub force_private: bool,
}

impl Default for AutorelayConfig {
    fn default() -> Self {
        AutorelayConfig {
            chooser: ChooserConfig::default(),
            static_relays: Vec::new(),
            discovery_interval: Duration::from_secs(30),
            ping_samples: 3,
            force_private: false,
        }
    }
}

/// What autorelay does, for logs and UIs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AutorelayEvent {
    /// AutoNAT's belief changed.
    Reachability(NatStatus),
    /// A relay was measured.
    Measured {
        /// The relay.
        relay: PeerId,
        /// Its round-trip time.
        rtt: Duration,
    },
    /// A reservation holds on this relay.
    RelayChosen {
        /// The relay.
        relay: PeerId,
        /// Its round-trip time.
        rtt: Option<Duration>,
        /// Our addresses through it.
        addrs: Vec<Multiaddr>,
    },
    /// A relay was dropped (lost, refused, or replaced by a faster one).
    RelayDropped {
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: String,
    },
    /// Our relay addresses now.
    AddressesChanged(Vec<Multiaddr>),
}

/// A running autorelay. Dropping it does not stop it; it lives as long as the node's tasks.
pub struct Autorelay {
    events: broadcast::Sender<AutorelayEvent>,
    /// Subscribed before the task started, for the first [`Autorelay::events`] call.
    first: std::sync::Mutex<Option<broadcast::Receiver<AutorelayEvent>>>,
}

impl Autorelay {
    /// Subscribes to its events. The first call gets every event since the start (relays
    /// chosen before the caller subscribed are not missed); later calls get the events
    /// from then on.
    pub fn events(&self) -> broadcast::Receiver<AutorelayEvent> {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        first.unwrap_or_else(|| self.events.subscribe())
    }

    /// Starts autorelay on `node`, using `kad` for discovery (if any) and `autonat`
    /// for reachability (if none, or with `force_private`, it acts as private).
    pub fn start(
        node: &Node,
        kad: Option<Kad>,
        autonat: Option<AutoNat>,
        config: AutorelayConfig,
    ) -> Autorelay {
        let (events, first) = broadcast::channel(256);
        let a = Autorelay {
            events: events.clone(),
            first: std::sync::Mutex::new(Some(first)),
        };
        let node = node.clone();
        tokio::spawn(async move { run(node, kad, autonat, config, events).await });
        a
    }
}

enum Msg {
    Accepted(PeerId, Vec<Multiaddr>),
    Failed(PeerId, String),
}

async fn run(
    node: Node,
    kad: Option<Kad>,
    autonat: Option<AutoNat>,
    config: AutorelayConfig,
    events: broadcast::Sender<AutorelayEvent>,
) {
    let mut chooser = Chooser::new(config.chooser);
    // Known addresses of candidates.
    let mut addrs: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    let mut kept: HashMap<PeerId, KeptReservation> = HashMap::new();
    let mut circuit_addrs: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(64);
    let mut last_status: Option<NatStatus> = None;
    let mut next_discovery = tokio::time::Instant::now();
    loop {
        if node.is_shut_down() {
            // Dropping the keepers withdraws the reservations.
            return;
        }
        // Reachability.
        let status = match (&autonat, config.force_private) {
            (_, true) | (None, _) => NatStatus::Private,
            (Some(a), false) => a.status().0,
        };
        if last_status.as_ref() != Some(&status) {
            let _ = events.send(AutorelayEvent::Reachability(status.clone()));
            last_status = Some(status.clone());
            if status.is_public() && !kept.is_empty() {
                // Reachable directly: relays are not needed.
                for (relay, _) in kept.drain() {
                    let _ = events.send(AutorelayEvent::RelayDropped {
                        relay,
                        reason: "we are publicly reachable".into(),
                    });
                }
                circuit_addrs.clear();
                let _ = events.send(AutorelayEvent::AddressesChanged(Vec::new()));
            }
        }
        let private = matches!(status, NatStatus::Private);

        if private && tokio::time::Instant::now() >= next_discovery {
            next_discovery = tokio::time::Instant::now() + config.discovery_interval;
            discover(&node, kad.as_ref(), &config, &mut chooser, &mut addrs).await;
            // Measure the new ones.
            for peer in chooser.unmeasured() {
                match measure(
                    &node,
                    &peer,
                    addrs.get(&peer).cloned().unwrap_or_default(),
                    config.ping_samples,
                )
                .await
                {
                    Ok(rtt) => {
                        chooser.record_rtt(&peer, rtt);
                        tracing::info!(relay = %peer, rtt_ms = rtt.as_secs_f64() * 1e3, "relay candidate measured");
                        let _ = events.send(AutorelayEvent::Measured { relay: peer, rtt });
                    }
                    Err(e) => {
                        tracing::debug!(relay = %peer, error = %e, "relay candidate unreachable");
                        chooser.unreachable(&peer, Instant::now());
                    }
                }
            }
        }

        if private {
            while let Some(action) = chooser.poll_action(Instant::now()) {
                match action {
                    Action::Reserve(peer) => {
                        let Some(addr) = relay_addr(&node, &peer, &addrs) else {
                            chooser.reservation_failed(&peer, Instant::now());
                            continue;
                        };
                        tracing::info!(relay = %peer, rtt_ms = chooser.rtt(&peer).map(|r| r.as_secs_f64() * 1e3), "reserving");
                        let k = relay_client::keep_reservation(&node, addr);
                        let mut ev = k.events();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            while let Ok(e) = ev.recv().await {
                                let m = match e {
                                    ReservationEvent::Accepted(r) => {
                                        Msg::Accepted(peer, r.circuit_addrs.clone())
                                    }
                                    ReservationEvent::Failed { error, .. } => {
                                        Msg::Failed(peer, error)
                                    }
                                };
                                let failed = matches!(m, Msg::Failed(..));
                                if tx.send(m).await.is_err() || failed {
                                    return;
                                }
                            }
                        });
                        kept.insert(peer, k);
                    }
                    Action::Release(peer) => {
                        kept.remove(&peer);
                        circuit_addrs.remove(&peer);
                        let _ = events.send(AutorelayEvent::RelayDropped {
                            relay: peer,
                            reason: "replaced by a faster relay".into(),
                        });
                        let _ = events.send(AutorelayEvent::AddressesChanged(
                            circuit_addrs.values().flatten().cloned().collect(),
                        ));
                    }
                }
            }
        }

        // Wait for a reservation outcome, a status change, or the next tick.
        tokio::select! {
            Some(m) = rx.recv() => match m {
                Msg::Accepted(peer, new_addrs) => {
                    if !kept.contains_key(&peer) {
                        continue;
                    }
                    chooser.reservation_accepted(&peer);
                    let changed = circuit_addrs.get(&peer) != Some(&new_addrs);
                    circuit_addrs.insert(peer, new_addrs.clone());
                    if changed {
                        let _ = events.send(AutorelayEvent::RelayChosen { relay: peer, rtt: chooser.rtt(&peer), addrs: new_addrs });
                        let _ = events.send(AutorelayEvent::AddressesChanged(circuit_addrs.values().flatten().cloned().collect()));
                    }
                }
                Msg::Failed(peer, error) => {
                    // Dropping the keeper stops its retries and withdraws its addresses.
                    kept.remove(&peer);
                    chooser.reservation_failed(&peer, Instant::now());
                    if circuit_addrs.remove(&peer).is_some() {
                        let _ = events.send(AutorelayEvent::AddressesChanged(circuit_addrs.values().flatten().cloned().collect()));
                    }
                    let _ = events.send(AutorelayEvent::RelayDropped { relay: peer, reason: error });
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Collects candidates: configured relays, connected peers that serve hop, DHT providers.
async fn discover(
    node: &Node,
    kad: Option<&Kad>,
    config: &AutorelayConfig,
    chooser: &mut Chooser,
    addrs: &mut HashMap<PeerId, Vec<Multiaddr>>,
) {
    let mut found: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
    for a in &config.static_relays {
        if let (transport, Some(peer)) = circuit_wire::addr::split_p2p(a) {
            found.push((peer, vec![transport]));
        }
    }
    for c in node.connections().into_iter().filter(|c| !c.info().relayed) {
        if let Some(info) = node.peer_info(&c.peer()) {
            if info.protocols.iter().any(|p| p == HOP_PROTOCOL) {
                let mut a: Vec<Multiaddr> = info.listen_addrs.clone();
                a.push(c.info().remote_addr.clone());
                found.push((c.peer(), a));
            }
        }
    }
    if let Some(kad) = kad {
        for p in kad.get_providers(namespace_key(RELAY_NAMESPACE)).await {
            found.push((p.id, p.addrs));
        }
        // Few relays advertise in the DHT (js stopped in 2024, go's autorelay doesn't
        // look there): a random walk meets more peers, and any of them whose identify
        // lists the hop protocol is a candidate.
        let target: [u8; 32] = rand::random();
        for p in kad.find_node(target.to_vec()).await {
            let serves_hop = node
                .peer_info(&p.id)
                .map(|i| i.protocols.iter().any(|x| x == HOP_PROTOCOL))
                .unwrap_or(false);
            if serves_hop {
                found.push((p.id, p.addrs));
            }
        }
    }
    for (peer, a) in found {
        if peer == node.peer_id() {
            continue;
        }
        let entry = addrs.entry(peer).or_default();
        for x in a.into_iter().filter(|x| !circuit_wire::addr::is_circuit(x)) {
            let x = circuit_wire::addr::split_p2p(&x).0;
            if !entry.contains(&x) {
                entry.push(x);
            }
        }
        if !chooser.is_candidate(&peer) {
            tracing::debug!(relay = %peer, "relay candidate found");
            chooser.add_candidate(peer);
        }
    }
}

/// The address to reserve on: the one of an existing direct connection, else the first known.
fn relay_addr(
    node: &Node,
    peer: &PeerId,
    addrs: &HashMap<PeerId, Vec<Multiaddr>>,
) -> Option<Multiaddr> {
    let a = node
        .connections_to(peer)
        .into_iter()
        .find(|c| !c.info().relayed && c.info().direction == crate::Direction::Outbound)
        .map(|c| c.info().remote_addr.clone())
        .or_else(|| {
            // A loopback address only helps when the relay is on this host.
            let v = addrs.get(peer)?;
            v.iter()
                .find(|a| !crate::node::is_loopback(a))
                .or_else(|| v.first())
                .cloned()
        })?;
    Some(circuit_wire::addr::with_p2p(a, *peer))
}

/// Connects to a candidate and returns the smallest of a few ping round trips.
async fn measure(
    node: &Node,
    peer: &PeerId,
    addrs: Vec<Multiaddr>,
    samples: u32,
) -> Result<Duration, String> {
    let conn = node
        .connect_peer(*peer, &addrs)
        .await
        .map_err(|e| e.to_string())?;
    let mut pinger = Pinger::open(node, &conn).await.map_err(|e| e.to_string())?;
    let mut best = Duration::MAX;
    for _ in 0..samples.max(1) {
        let rtt = pinger
            .ping(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        best = best.min(rtt);
    }
    pinger.close().await;
    Ok(best)
}
