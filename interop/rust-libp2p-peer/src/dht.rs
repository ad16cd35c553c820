//! `kad` and `autonat` modes: a rust-libp2p Kademlia server (`/ipfs/kad/1.0.0`)
//! and an AutoNAT v1 server (`/libp2p/autonat/1.0.0`), used to check that
//! circuit's own Kademlia and AutoNAT speak the same wire protocol.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt as _;
use libp2p::kad::store::{MemoryStore, RecordStore as _};
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use sha2::{Digest as _, Sha256};

use crate::{emit, identify_behaviour, trailing_peer_id, with_peer_id, IDLE_TIMEOUT};

/// Multihash code of sha2-256.
const MH_SHA2_256: u8 = 0x12;
/// Pause between `--find-providers` rounds while none has been found yet.
const FIND_RETRY: Duration = Duration::from_secs(2);

/// The DHT key of a namespace, computed like circuit's `namespace_key` and
/// go-libp2p's routing discovery: the multihash bytes `0x12 0x20 || sha256(ns)`.
pub fn namespace_key(namespace: &str) -> RecordKey {
    RecordKey::new(&namespace_key_bytes(namespace))
}

/// The raw multihash bytes behind [`namespace_key`].
pub fn namespace_key_bytes(namespace: &str) -> Vec<u8> {
    let digest = Sha256::digest(namespace.as_bytes());
    let mut mh = Vec::with_capacity(2 + digest.len());
    mh.push(MH_SHA2_256);
    mh.push(digest.len() as u8);
    mh.extend_from_slice(&digest);
    mh
}

/// Lower-case hex, for printing keys.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short name for a query result's kind, for `QUERY` lines.
fn query_kind(r: &QueryResult) -> &'static str {
    match r {
        QueryResult::Bootstrap(_) => "bootstrap",
        QueryResult::GetClosestPeers(_) => "get_closest_peers",
        QueryResult::GetProviders(_) => "get_providers",
        QueryResult::StartProviding(_) => "start_providing",
        QueryResult::RepublishProvider(_) => "republish_provider",
        QueryResult::GetRecord(_) => "get_record",
        QueryResult::PutRecord(_) => "put_record",
        QueryResult::RepublishRecord(_) => "republish_record",
    }
}

/// Behaviour of the `kad` mode.
#[derive(NetworkBehaviour)]
struct KadBehaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Behaviour of the `autonat` mode.
#[derive(NetworkBehaviour)]
struct AutonatBehaviour {
    autonat: autonat::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Starts every listener and waits until each has reported an address,
/// printing `LISTEN` lines; the caller prints `READY`.
async fn listen_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    listen: Vec<Multiaddr>,
) -> anyhow::Result<()> {
    let me = *swarm.local_peer_id();
    let mut pending = Vec::new();
    for addr in listen {
        let id = swarm
            .listen_on(addr.clone())
            .with_context(|| format!("listen on {addr}"))?;
        pending.push(id);
    }
    while !pending.is_empty() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                // Identify and Kademlia advertise external addresses.
                swarm.add_external_address(address.clone());
                emit(&format!("LISTEN {}", with_peer_id(address, me)));
                pending.retain(|id| *id != listener_id);
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                bail!("listener closed before it was ready: {reason:?}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// What the `kad` mode was asked to do.
pub struct KadArgs {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to bootstrap from (`…/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Namespace to provide.
    pub provide: Option<String>,
    /// Namespace whose providers to look up.
    pub find_providers: Option<String>,
}

/// State of the `kad` mode's event loop.
struct KadRun {
    me: PeerId,
    find_key: Option<RecordKey>,
    /// Providers already reported (or being dialed).
    providers: HashSet<PeerId>,
    /// Providers we dial to learn (and prove) their addresses.
    awaiting: HashSet<PeerId>,
    /// Remote address of a current connection, per peer.
    connected: HashMap<PeerId, Multiaddr>,
}

impl KadRun {
    /// A provider found by `get_providers`: print it with the address we reach
    /// it at. rust-libp2p does not surface provider addresses in its events, so
    /// we dial the provider while the query (which holds the addresses from the
    /// GET_PROVIDERS answer) is still running.
    fn found(&mut self, swarm: &mut Swarm<KadBehaviour>, peer: PeerId) {
        if peer == self.me || !self.providers.insert(peer) {
            return;
        }
        if let Some(addr) = self.connected.get(&peer) {
            emit(&format!("PROVIDER {peer} {addr}"));
            return;
        }
        self.awaiting.insert(peer);
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = swarm.dial(opts) {
            eprintln!("kad: cannot dial provider {peer}: {e}");
            self.awaiting.remove(&peer);
            emit(&format!("PROVIDER {peer}"));
        }
    }
}

/// `kad` mode: a Kademlia server that bootstraps, provides and finds providers.
pub async fn run_kad(args: KadArgs) -> anyhow::Result<()> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut cfg = kad::Config::new(kad::PROTOCOL_NAME);
            // Inbound ADD_PROVIDER records come to us as events (we store them
            // ourselves), so that we can print what peers announce.
            cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            cfg.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), cfg);
            // Loopback addresses are never "confirmed external", so force server mode.
            kad.set_mode(Some(kad::Mode::Server));
            KadBehaviour {
                kad,
                identify: identify_behaviour(key),
                ping: ping::Behaviour::new(ping::Config::new()),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    let me = *swarm.local_peer_id();
    emit(&format!("PEER {me}"));
    listen_all(&mut swarm, args.listen).await?;
    emit("READY");

    for addr in &args.bootstrap {
        let peer = trailing_peer_id(addr)
            .ok_or_else(|| anyhow!("--bootstrap {addr} must end with /p2p/<peer id>"))?;
        let transport: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        swarm.behaviour_mut().kad.add_address(&peer, transport);
    }
    // Provide / find only once bootstrapping has finished (at once without bootstrap peers).
    let mut bootstrap_query = if args.bootstrap.is_empty() {
        None
    } else {
        Some(swarm.behaviour_mut().kad.bootstrap().context("bootstrap")?)
    };
    let mut run = KadRun {
        me,
        find_key: args.find_providers.as_deref().map(namespace_key),
        providers: HashSet::new(),
        awaiting: HashSet::new(),
        connected: HashMap::new(),
    };
    let mut started = false;
    let mut retry = tokio::time::interval(FIND_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut find_running = false;

    loop {
        if !started && bootstrap_query.is_none() {
            started = true;
            if let Some(ns) = &args.provide {
                let key = namespace_key(ns);
                eprintln!("kad: providing {ns} (key {})", hex(key.as_ref()));
                swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(key)
                    .context("start_providing")?;
            }
            if let Some(key) = run.find_key.clone() {
                swarm.behaviour_mut().kad.get_providers(key);
                find_running = true;
            }
        }
        let ev = tokio::select! {
            ev = swarm.select_next_some() => ev,
            _ = retry.tick() => {
                // Look again until a provider shows up (records may land after we start).
                if started && !find_running && run.providers.is_empty() {
                    if let Some(key) = run.find_key.clone() {
                        swarm.behaviour_mut().kad.get_providers(key);
                        find_running = true;
                    }
                }
                continue;
            }
        };
        match ev {
            SwarmEvent::Behaviour(KadBehaviourEvent::Kad(e)) => match e {
                kad::Event::OutboundQueryProgressed {
                    id,
                    result,
                    step,
                    stats,
                } => {
                    if step.last {
                        // Per-request failures are only visible in these counters.
                        emit(&format!(
                            "QUERY {} requests={} successes={} failures={}",
                            query_kind(&result),
                            stats.num_requests(),
                            stats.num_successes(),
                            stats.num_failures()
                        ));
                    }
                    match result {
                        QueryResult::Bootstrap(r) => {
                            let done = match &r {
                                Ok(ok) => ok.num_remaining == 0,
                                Err(_) => true,
                            };
                            if Some(id) == bootstrap_query && (done || step.last) {
                                bootstrap_query = None;
                                let n: usize = swarm
                                    .behaviour_mut()
                                    .kad
                                    .kbuckets()
                                    .map(|b| b.num_entries())
                                    .sum();
                                match r {
                                    Ok(_) => emit(&format!("BOOTSTRAPPED {n}")),
                                    Err(e) => {
                                        eprintln!("kad: bootstrap failed: {e:?}");
                                        emit(&format!("BOOTSTRAP_FAILED {n}"));
                                    }
                                }
                            } else {
                                eprintln!("kad: bootstrap step: {r:?}");
                            }
                        }
                        QueryResult::StartProviding(r) | QueryResult::RepublishProvider(r) => {
                            match r {
                                Ok(ok) => emit(&format!("PROVIDING {}", hex(ok.key.as_ref()))),
                                Err(e) => emit(&format!("PROVIDE_FAILED {e:?}")),
                            }
                        }
                        QueryResult::GetProviders(r) => match r {
                            Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                                for p in providers {
                                    run.found(&mut swarm, p);
                                }
                                if step.last {
                                    find_running = false;
                                }
                            }
                            Ok(GetProvidersOk::FinishedWithNoAdditionalRecord {
                                closest_peers,
                            }) => {
                                eprintln!(
                                "kad: get_providers finished, {} found, closest {closest_peers:?}",
                                run.providers.len()
                            );
                                find_running = false;
                            }
                            Err(e) => {
                                eprintln!("kad: get_providers failed: {e:?}");
                                find_running = false;
                            }
                        },
                        other => eprintln!("kad: query result {other:?}"),
                    }
                }
                kad::Event::InboundRequest {
                    request:
                        kad::InboundRequest::AddProvider {
                            record: Some(record),
                        },
                } => {
                    let addrs: Vec<String> =
                        record.addresses.iter().map(|a| a.to_string()).collect();
                    emit(&format!(
                        "ADD_PROVIDER {} {} {}",
                        hex(record.key.as_ref()),
                        record.provider,
                        addrs.join(" ")
                    ));
                    if let Err(e) = swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                        eprintln!("kad: provider record not stored: {e:?}");
                    }
                }
                kad::Event::InboundRequest {
                    request:
                        kad::InboundRequest::GetProvider {
                            num_provider_peers, ..
                        },
                } => {
                    // The only hint rust-libp2p gives of who asked what: how many
                    // providers its answer carried.
                    emit(&format!("GET_PROVIDERS {num_provider_peers}"));
                }
                kad::Event::InboundRequest { request } => {
                    eprintln!("kad: inbound request {request:?}");
                }
                other => eprintln!("kad: {other:?}"),
            },
            SwarmEvent::Behaviour(KadBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // rust-libp2p learns a dialer's addresses only from identify.
                let speaks_kad = info.protocols.iter().any(|p| *p == kad::PROTOCOL_NAME);
                eprintln!(
                    "kad: identified {peer_id} (kad: {speaks_kad}) protocols {:?} addrs {:?}",
                    info.protocols, info.listen_addrs
                );
                if speaks_kad {
                    for a in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, a);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                eprintln!("kad: connected to {peer_id} at {addr}");
                run.connected.insert(peer_id, addr.clone());
                if run.awaiting.remove(&peer_id) {
                    emit(&format!("PROVIDER {peer_id} {addr}"));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    run.connected.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                eprintln!("kad: outgoing connection error to {peer_id:?}: {error}");
                if let Some(p) = peer_id {
                    if run.awaiting.remove(&p) {
                        // Found, but its addresses (if any) did not work.
                        emit(&format!("PROVIDER {p}"));
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                eprintln!("kad: incoming connection error: {error}");
            }
            _ => {}
        }
    }
}

/// `autonat` mode: an AutoNAT v1 server that dials back private addresses too
/// (everything in the tests is on loopback). With `probe` servers it is also a
/// client that asks exactly those servers about its own reachability.
pub async fn run_autonat(listen: Vec<Multiaddr>, probe: Vec<Multiaddr>) -> anyhow::Result<()> {
    let client = !probe.is_empty();
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| AutonatBehaviour {
            autonat: autonat::Behaviour::new(
                key.public().to_peer_id(),
                autonat::Config {
                    only_global_ips: false,
                    // Probe only the servers named with --probe, never other connected peers.
                    use_connected: false,
                    boot_delay: if client {
                        Duration::from_millis(500)
                    } else {
                        Duration::from_secs(15)
                    },
                    retry_interval: Duration::from_secs(2),
                    throttle_server_period: Duration::from_secs(1),
                    // Tests probe in bursts from one IP.
                    throttle_clients_global_max: 1000,
                    throttle_clients_peer_max: 100,
                    ..Default::default()
                },
            ),
            identify: identify_behaviour(key),
            ping: ping::Behaviour::new(ping::Config::new()),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    emit(&format!("PEER {}", swarm.local_peer_id()));
    listen_all(&mut swarm, listen).await?;
    for addr in probe {
        let peer = trailing_peer_id(&addr)
            .ok_or_else(|| anyhow!("--probe {addr} must end with /p2p/<peer id>"))?;
        swarm
            .behaviour_mut()
            .autonat
            .add_server(peer, Some(addr.clone()));
        swarm
            .dial(addr.clone())
            .with_context(|| format!("dial {addr}"))?;
    }
    emit("READY");
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(AutonatBehaviourEvent::Autonat(
                autonat::Event::InboundProbe(ev),
            )) => match ev {
                autonat::InboundProbeEvent::Request {
                    peer, addresses, ..
                } => {
                    let a: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
                    emit(&format!("PROBE_REQUEST {peer} {}", a.join(" ")));
                }
                autonat::InboundProbeEvent::Response { peer, address, .. } => {
                    emit(&format!("PROBE_OK {peer} {address}"));
                }
                autonat::InboundProbeEvent::Error { peer, error, .. } => {
                    emit(&format!("PROBE_ERROR {peer} {error:?}"));
                }
            },
            SwarmEvent::Behaviour(AutonatBehaviourEvent::Autonat(
                autonat::Event::StatusChanged { old, new },
            )) => {
                eprintln!("autonat: status {old:?} -> {new:?}");
                let s = match new {
                    autonat::NatStatus::Public(a) => format!("public {a}"),
                    autonat::NatStatus::Private => "private".to_string(),
                    autonat::NatStatus::Unknown => "unknown".to_string(),
                };
                emit(&format!("NAT_STATUS {s}"));
            }
            SwarmEvent::Behaviour(AutonatBehaviourEvent::Autonat(
                autonat::Event::OutboundProbe(ev),
            )) => match ev {
                autonat::OutboundProbeEvent::Request { peer, .. } => {
                    eprintln!("autonat: probing via {peer}");
                }
                autonat::OutboundProbeEvent::Response { peer, address, .. } => {
                    emit(&format!("PROBE_ANSWER {peer} {address}"));
                }
                autonat::OutboundProbeEvent::Error { peer, error, .. } => {
                    emit(&format!(
                        "PROBE_FAILED {} {error:?}",
                        peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
                    ));
                }
            },
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                eprintln!("autonat: connection with {peer_id} at {endpoint:?}");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                eprintln!("autonat: outgoing connection error to {peer_id:?}: {error}");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_key_is_sha256_multihash() {
        let k = namespace_key_bytes("/libp2p/relay");
        assert_eq!(k.len(), 34);
        assert_eq!(&k[..2], &[0x12, 0x20]);
        // `printf /libp2p/relay | sha256sum`
        assert_eq!(
            hex(&k[2..]),
            "245eebd20d2cd4c81b5d4ac27c73746279f436d62f3ef52c452a369e6ef7b610"
        );
        assert_ne!(k, namespace_key_bytes("/libp2p/relay2"));
        assert_eq!(namespace_key("/libp2p/relay").to_vec(), k);
    }
}
