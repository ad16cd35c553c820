//! Kademlia glue (`/ipfs/kad/1.0.0`): serves requests from the sans-IO core's
//! table and provider store, and drives its lookups over real streams.
//!
//! Peers enter the routing table when identify shows they serve Kademlia
//! (server mode) and have addresses; a node in client mode does not mount the
//! protocol, so others leave it out of their tables (as in go and rust).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use circuit_proto::kad::{
    self, InsertResult, KBucketsTable, KadPeer, ProviderStore, Query, QueryConfig, Republisher,
    Request, Response, StoreConfig,
};
use circuit_wire::pb::kad::Message;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::framed;
use crate::node::{Node, NodeEvent};

pub use circuit_proto::kad::{namespace_key, PROTOCOL, RELAY_NAMESPACE};

/// Settings of the Kademlia service.
#[derive(Debug, Clone)]
pub struct KadConfig {
    /// Serve requests (and so be put in others' tables). Public nodes and relays: on.
    pub server: bool,
    /// Lookup settings.
    pub query: QueryConfig,
    /// Deadline of one request to one peer (dial included).
    pub request_timeout: Duration,
    /// Provider records kept for others.
    pub store: StoreConfig,
    /// Re-provide our keys this often.
    pub republish: Duration,
}

impl Default for KadConfig {
    fn default() -> Self {
        KadConfig {
            server: true,
            query: QueryConfig::default(),
            request_timeout: Duration::from_secs(10),
            store: StoreConfig::default(),
            republish: kad::REPUBLISH_INTERVAL,
        }
    }
}

struct State {
    table: KBucketsTable,
    store: ProviderStore,
    republisher: Republisher,
}

/// A running Kademlia service. Cheap to clone.
#[derive(Clone)]
pub struct Kad {
    node: Node,
    config: KadConfig,
    state: Arc<Mutex<State>>,
}

impl Kad {
    /// Starts Kademlia on `node`: mounts the protocol in server mode, watches
    /// identify results to fill the table, and republishes what we provide.
    pub fn start(node: &Node, config: KadConfig) -> Kad {
        let state = State {
            table: KBucketsTable::new(node.peer_id()),
            store: ProviderStore::new(config.store),
            republisher: Republisher::new(config.republish),
        };
        let kad = Kad {
            node: node.clone(),
            config,
            state: Arc::new(Mutex::new(state)),
        };
        if kad.config.server {
            let k = kad.clone();
            node.handle(PROTOCOL, move |inc| {
                let k = k.clone();
                tokio::spawn(async move { k.serve(inc.stream, inc.connection.peer()).await });
            });
        }
        let k = kad.clone();
        let mut events = node.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Identified { peer, info }) => {
                        if info.protocols.iter().any(|p| p == PROTOCOL) {
                            k.add_peer(peer, &info.listen_addrs);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        // Holds the node weakly between ticks, so a dropped node is not kept alive.
        let (weak, config, state) = (node.downgrade(), kad.config.clone(), kad.state.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(node) = weak.upgrade().filter(|n| !n.is_shut_down()) else {
                    return;
                };
                let k = Kad {
                    node,
                    config: config.clone(),
                    state: state.clone(),
                };
                k.housekeeping_tick();
            }
        });
        kad
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of peers in the routing table.
    pub fn table_len(&self) -> usize {
        self.state().table.len()
    }

    /// Puts a Kademlia server into the table (direct, non-circuit addresses only).
    pub fn add_peer(&self, peer: PeerId, addrs: &[Multiaddr]) {
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| !circuit_wire::addr::is_circuit(a))
            .cloned()
            .collect();
        if addrs.is_empty() || peer == self.node.peer_id() {
            return;
        }
        let result = self
            .state()
            .table
            .insert_or_update(peer, &addrs, Instant::now());
        if let InsertResult::Pending { probe, .. } = result {
            // The bucket is full: the least recently seen entry keeps its place if it is alive.
            if self
                .node
                .connections_to(&probe)
                .iter()
                .any(|c| !c.is_closed())
            {
                self.state().table.mark_seen(&probe, Instant::now());
            }
        }
    }

    async fn serve(&self, mut stream: crate::Stream, source: PeerId) {
        // A stream may carry several requests, one after the other.
        loop {
            let read = framed::read_message_from::<Message, _>(&mut stream, kad::MAX_MESSAGE_SIZE);
            let msg = match tokio::time::timeout(Duration::from_secs(60), read).await {
                Ok(Ok((m, rest))) => {
                    stream.unread(rest);
                    m
                }
                // The client is done (rust-libp2p half-closes after its request): finish
                // our side too, so that the answer still in flight is not reset away.
                _ => {
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            let request = match Request::from_pb(&msg) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "bad kad request");
                    stream.reset();
                    return;
                }
            };
            let answer = {
                let mut st = self.state();
                let st = &mut *st;
                kad::handle_request(&st.table, &mut st.store, &source, &request, Instant::now())
            };
            match answer {
                Ok(Some(resp)) => {
                    if framed::write_message(&mut stream, &resp.to_pb())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(peer = %source, error = %e, "kad request refused");
                    stream.reset();
                    return;
                }
            }
        }
    }

    /// Expires table entries and provider records, and republishes our own records.
    fn housekeeping_tick(&self) {
        let now = Instant::now();
        let due = {
            let mut st = self.state();
            st.table.handle_timeout(now);
            st.store.handle_timeout(now);
            let mut due = Vec::new();
            while let Some(k) = st.republisher.poll_due(now) {
                due.push(k);
            }
            due
        };
        for key in due {
            let k = self.clone();
            tokio::spawn(async move {
                let n = k.announce(key).await;
                tracing::debug!(peers = n, "provider record republished");
            });
        }
    }

    /// Sends one request to `peer` (dialing it if needed) and reads the answer.
    pub async fn request(
        &self,
        peer: &KadPeer,
        request: &Request,
    ) -> Result<Option<Response>, String> {
        let fut = async {
            let conn = self
                .node
                .connect_peer(peer.id, &peer.addrs)
                .await
                .map_err(|e| e.to_string())?;
            let mut s = self
                .node
                .open_stream(&conn, PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            framed::write_message(&mut s, &request.to_pb())
                .await
                .map_err(|e| e.to_string())?;
            if !request.expects_response() {
                let _ = s.shutdown().await;
                return Ok(None);
            }
            let (m, _) = framed::read_message_from::<Message, _>(&mut s, kad::MAX_MESSAGE_SIZE)
                .await
                .map_err(|e| e.to_string())?;
            let _ = s.shutdown().await;
            Response::from_pb(&m, request.message_type())
                .map(Some)
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.config.request_timeout, fut)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    /// Drives a lookup to its end; returns it finished.
    pub async fn run(&self, mut query: Query) -> Query {
        let (tx, mut rx) = mpsc::channel::<(PeerId, Result<Response, String>)>(64);
        let mut in_flight = 0usize;
        loop {
            let now = Instant::now();
            while let Some((peer, req)) = query.poll_request(now) {
                in_flight += 1;
                let (k, tx) = (self.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = match k.request(&peer, &req).await {
                        Ok(Some(resp)) => Ok(resp),
                        Ok(None) => Err("no answer".to_string()),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send((peer.id, r)).await;
                });
            }
            if query.is_finished() || in_flight == 0 {
                query.finish();
                return query;
            }
            let deadline = query.poll_timeout().map(tokio::time::Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((peer, result)) = rx.recv() => {
                    in_flight -= 1;
                    match result {
                        Ok(resp) => {
                            query.handle_response(&peer, &resp, Instant::now());
                            // It answered: it is a live server.
                            if let Some(addrs) = self.node.connections_to(&peer).first().map(|c| vec![c.info().remote_addr.clone()]) {
                                let known = self.node.peer_info(&peer).map(|i| i.listen_addrs).unwrap_or_default();
                                self.add_peer(peer, if known.is_empty() { &addrs } else { &known });
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "kad request failed");
                            query.handle_failure(&peer);
                        }
                    }
                }
                _ = sleep => query.handle_timeout(Instant::now()),
            }
        }
    }

    /// Joins the DHT through `bootstrap` peers: dials them, adds those that serve
    /// Kademlia, then looks up our own id to fill the buckets near us. Returns the
    /// table size.
    pub async fn bootstrap(&self, bootstrap: &[Multiaddr]) -> usize {
        for addr in bootstrap {
            match self.node.dial(addr).await {
                Ok(conn) => match crate::protocols::identify::ask_now(&self.node, &conn).await {
                    Ok(info) if info.protocols.iter().any(|p| p == PROTOCOL) => {
                        let mut addrs = info.listen_addrs.clone();
                        addrs.push(circuit_wire::addr::split_p2p(addr).0);
                        self.add_peer(conn.peer(), &addrs);
                    }
                    Ok(_) => tracing::warn!(%addr, "bootstrap peer does not serve Kademlia"),
                    Err(e) => tracing::warn!(%addr, error = %e, "bootstrap peer did not identify"),
                },
                Err(e) => tracing::warn!(%addr, error = %e, "cannot reach bootstrap peer"),
            }
        }
        let q = kad::bootstrap_query(&self.state().table, self.config.query);
        self.run(q).await;
        self.table_len()
    }

    /// The closest peers to `key` the network knows.
    pub async fn find_node(&self, key: Vec<u8>) -> Vec<KadPeer> {
        let q = kad::find_node_query(&self.state().table, key, self.config.query);
        self.run(q).await.closest_peers()
    }

    /// Providers of `key` (the local store's included when we serve).
    pub async fn get_providers(&self, key: Vec<u8>) -> Vec<KadPeer> {
        let mut found: Vec<KadPeer> = self.state().store.provider_peers(&key, Instant::now());
        let q = kad::get_providers_query(&self.state().table, key, self.config.query);
        for p in self.run(q).await.providers() {
            if !found.iter().any(|f| f.id == p.id) {
                found.push(p.clone());
            }
        }
        found.retain(|p| p.id != self.node.peer_id());
        found
    }

    /// Announces that we provide `key`, now and every republish interval.
    /// Returns the number of peers that were told.
    pub async fn provide(&self, key: Vec<u8>) -> usize {
        self.state()
            .republisher
            .provide(key.clone(), Instant::now() + self.config.republish);
        self.announce(key).await
    }

    async fn announce(&self, key: Vec<u8>) -> usize {
        let addrs: Vec<Multiaddr> = self.node.advertised_addresses();
        if self.config.server {
            let me = self.node.peer_id();
            let _ = self.state().store.add(&key, me, &addrs, Instant::now());
        }
        let closest = self.find_node(key.clone()).await;
        let request = kad::add_provider_request(key, self.node.peer_id(), addrs);
        let mut told = 0;
        for peer in closest.iter().filter(|p| p.id != self.node.peer_id()) {
            if self.request(peer, &request).await.is_ok() {
                told += 1;
            }
        }
        told
    }
}
