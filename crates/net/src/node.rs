//! The [`Node`]: owns the identity, the listeners, the live connections and the
//! protocol handlers; dials direct and relayed addresses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use circuit_proto::relay::Limit;
use circuit_proto::yamux;
use circuit_wire::addr::{self as waddr};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use multiaddr::{Multiaddr, Protocol};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::Instrument;

use crate::connection::{Connection, ConnectionInfo, Direction, Stream};
use crate::transport::{self, BoxedIo, Listener, RawConnection};
use crate::upgrade::{self, Stage, UpgradeError, UpgradeTimeouts};

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `agentVersion` sent in identify.
    pub agent_version: String,
    /// Deadlines of the upgrade stages.
    pub timeouts: UpgradeTimeouts,
    /// Deadline for a TCP/WebSocket connect.
    pub dial_timeout: Duration,
    /// Most connections at once; further inbound ones are dropped at accept.
    pub max_connections: usize,
    /// Most inbound connections in their handshake at once.
    pub max_pending_handshakes: usize,
    /// Most inbound streams per connection waiting for protocol negotiation.
    pub max_negotiating_streams: usize,
    /// yamux settings of every connection.
    pub yamux: yamux::Config,
    /// Addresses to announce instead of the listen addresses (e.g. a public IP behind port forwarding).
    pub announce: Vec<Multiaddr>,
    /// Accept relayed connections (serve the stop protocol).
    pub relay_client: bool,
    /// Certificate and key for secure WebSocket listeners (`/tls/ws`, `/wss`).
    pub tls_server: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Trust for dialing secure WebSocket (Mozilla roots by default).
    pub tls_client: std::sync::Arc<rustls::ClientConfig>,
    /// Files served to plain HTTP `GET`s on WebSocket listeners (a demo page); none = off.
    pub web: Option<std::sync::Arc<crate::web::WebRoot>>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            agent_version: format!("circuit/{}", env!("CARGO_PKG_VERSION")),
            timeouts: UpgradeTimeouts::default(),
            dial_timeout: Duration::from_secs(10),
            max_connections: 8192,
            max_pending_handshakes: 256,
            max_negotiating_streams: 64,
            yamux: yamux::Config::default(),
            announce: Vec::new(),
            relay_client: true,
            tls_server: None,
            tls_client: crate::tls::default_client_config(),
            web: None,
        }
    }
}

/// A stream a peer opened to us, with its negotiated protocol.
pub struct IncomingStream {
    /// The stream.
    pub stream: Stream,
    /// The protocol agreed.
    pub protocol: String,
    /// The connection it came on.
    pub connection: Connection,
}

/// A protocol handler: called once per inbound stream; spawn work, don't block.
pub type Handler = Arc<dyn Fn(IncomingStream) + Send + Sync>;

/// What happens on a node, for applications and services.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection is up.
    ConnectionEstablished(ConnectionInfo),
    /// A connection ended.
    ConnectionClosed(ConnectionInfo),
    /// Identify told us about a peer.
    Identified {
        /// Who.
        peer: PeerId,
        /// What.
        info: PeerInfo,
    },
    /// A handshake with an inbound connection failed.
    HandshakeFailed {
        /// The remote address.
        remote_addr: Multiaddr,
        /// The stage.
        stage: Stage,
        /// Why.
        error: String,
    },
}

/// What we know of a peer (from identify).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Its listen addresses.
    pub listen_addrs: Vec<Multiaddr>,
    /// Protocols it serves.
    pub protocols: Vec<String>,
    /// Our address as it sees it.
    pub observed_addr: Option<Multiaddr>,
    /// Its agent version.
    pub agent_version: Option<String>,
    /// Sequence number of the newest signed peer record seen from it: identify
    /// answers and pushes can arrive out of order, and an older one must not win.
    pub record_seq: u64,
}

/// Errors of dialing and stream opening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The address is not one we can dial.
    #[error("bad address {addr}: {reason}")]
    BadAddress {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Transport failure (connect refused, DNS, WebSocket).
    #[error("connect to {addr}: {source}")]
    Transport {
        /// The address.
        addr: Multiaddr,
        /// Why.
        source: transport::TransportError,
    },
    /// TCP/WebSocket connect timed out.
    #[error("connect to {0}: timed out")]
    Timeout(Multiaddr),
    /// The upgrade failed.
    #[error("upgrade with {addr}: {source}")]
    Upgrade {
        /// The address.
        addr: Multiaddr,
        /// Why.
        source: UpgradeError,
    },
    /// The relay refused or failed the circuit.
    #[error("relay {relay} refused the circuit to {target}: {status}")]
    RelayRefused {
        /// The relay.
        relay: PeerId,
        /// The peer we wanted.
        target: PeerId,
        /// The status name.
        status: String,
    },
    /// Anything on an established connection.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) struct Inner {
    pub(crate) keypair: Keypair,
    pub(crate) peer_id: PeerId,
    pub(crate) config: RwLock<NodeConfig>,
    handlers: RwLock<HashMap<String, Handler>>,
    connections: Mutex<HashMap<PeerId, Vec<Connection>>>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    extra_addrs: Mutex<Vec<Multiaddr>>,
    peers: Mutex<HashMap<PeerId, PeerInfo>>,
    /// `None` after [`Node::shutdown`]: receivers then see the channel closed, which ends
    /// the tasks that follow the node's events (and the node clones they hold).
    events: Mutex<Option<broadcast::Sender<NodeEvent>>>,
    handshakes: Arc<Semaphore>,
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A libp2p node. Cheap to clone; all clones are the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// A reference to a [`Node`] that does not keep it alive: what a protocol handler
/// registered on a node should hold of it ([`Node::downgrade`]). A handler holding a
/// `Node` clone makes a cycle (node → handler → node), and the node, its peers and
/// connection state are never freed after the last outside clone goes.
#[derive(Clone)]
pub struct WeakNode {
    inner: std::sync::Weak<Inner>,
}

impl WeakNode {
    /// The node, if it is still alive.
    pub fn upgrade(&self) -> Option<Node> {
        self.inner.upgrade().map(|inner| Node { inner })
    }
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    keypair: Keypair,
    config: NodeConfig,
    listen: Vec<Multiaddr>,
}

impl NodeBuilder {
    /// Starts from an identity with default settings.
    pub fn new(keypair: Keypair) -> Self {
        NodeBuilder {
            keypair,
            config: NodeConfig::default(),
            listen: Vec::new(),
        }
    }

    /// Replaces the settings.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an address to listen on (`/ip4/0.0.0.0/tcp/4001`, `…/ws`; port 0 picks one).
    pub fn listen_on(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Creates the node, binds its listeners and starts its built-in services
    /// (identify, identify push, ping; the stop protocol when `relay_client` is set).
    pub async fn build(self) -> Result<Node, DialError> {
        let node = Node::new(self.keypair, self.config);
        for addr in self.listen {
            node.listen(addr).await?;
        }
        Ok(node)
    }
}

impl Node {
    /// A node with no listeners yet.
    pub fn new(keypair: Keypair, config: NodeConfig) -> Node {
        let (events, _) = broadcast::channel(1024);
        let peer_id = keypair.public().to_peer_id();
        let handshakes = Arc::new(Semaphore::new(config.max_pending_handshakes));
        let relay_client = config.relay_client;
        let node = Node {
            inner: Arc::new(Inner {
                keypair,
                peer_id,
                config: RwLock::new(config),
                handlers: RwLock::new(HashMap::new()),
                connections: Mutex::new(HashMap::new()),
                listen_addrs: Mutex::new(Vec::new()),
                extra_addrs: Mutex::new(Vec::new()),
                peers: Mutex::new(HashMap::new()),
                events: Mutex::new(Some(events)),
                handshakes,
                listeners: Mutex::new(Vec::new()),
            }),
        };
        crate::protocols::identify::install(&node);
        crate::protocols::ping::install(&node);
        if relay_client {
            crate::relay_client::install_stop(&node);
        }
        node
    }

    /// Starts a builder.
    pub fn builder(keypair: Keypair) -> NodeBuilder {
        NodeBuilder::new(keypair)
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Our identity key pair.
    pub fn keypair(&self) -> &Keypair {
        &self.inner.keypair
    }

    /// A copy of the settings.
    pub fn config(&self) -> NodeConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Subscribes to node events.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        match &*self.inner.events.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.subscribe(),
            // Shut down: a receiver that is closed at once.
            None => broadcast::channel(1).1,
        }
    }

    pub(crate) fn emit(&self, ev: NodeEvent) {
        if let Some(tx) = &*self.inner.events.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(ev);
        }
    }

    /// Whether [`Node::shutdown`] was called: background loops of services built on the
    /// node (Kademlia housekeeping, autorelay) end when they see it.
    pub fn is_shut_down(&self) -> bool {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// A reference that does not keep this node alive (see [`WeakNode`]).
    pub fn downgrade(&self) -> WeakNode {
        WeakNode {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Registers a protocol handler (replaces an earlier one for the same id). A handler
    /// that needs the node should capture [`Node::downgrade`], not a clone: handlers live
    /// in the node, so a clone would keep it alive forever. [`Node::shutdown`] removes
    /// all handlers.
    pub fn handle(&self, protocol: &str, handler: impl Fn(IncomingStream) + Send + Sync + 'static) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(protocol.to_string(), Arc::new(handler));
    }

    /// Removes a protocol handler.
    pub fn unhandle(&self, protocol: &str) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(protocol);
    }

    /// Protocols we serve, sorted.
    pub fn protocols(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Binds a listener and starts accepting; returns the bound addresses
    /// (the real port; `0.0.0.0`/`::` expanded to interface addresses), without `/p2p`.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Vec<Multiaddr>, DialError> {
        let cfg = self.config();
        let mut listener = Listener::bind(&addr, cfg.tls_server)
            .await
            .map_err(|source| DialError::Transport {
                addr: addr.clone(),
                source,
            })?;
        listener.set_web(cfg.web);
        let bound = expand_unspecified(listener.local_addr());
        self.inner
            .listen_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(bound.iter().cloned());
        let node = self.clone();
        let span = tracing::info_span!("listener", addr = %listener.local_addr());
        let task = tokio::spawn(async move { node.accept_loop(listener).await }.instrument(span));
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(bound)
    }

    /// Stops accepting connections: closes every listener (their ports are freed).
    pub fn stop_listening(&self) {
        for t in self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Graceful shutdown: stop accepting, tell every peer (yamux go-away: no new
    /// streams, running ones go on), wait until the connections end or `drain`
    /// passes, then close what is left. Returns the number of connections that
    /// were still open at the deadline.
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.stop_listening();
        for c in self.connections() {
            c.go_away();
        }
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline {
            if self.connections().iter().all(|c| c.num_streams() == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self
            .connections()
            .iter()
            .filter(|c| c.num_streams() > 0)
            .count();
        for c in self.connections() {
            c.close();
        }
        // Handlers may hold clones of this node (or of things that hold it): dropping
        // them breaks such cycles, so the node is freed with its last outside clone.
        // Closing the event channel ends the tasks that follow it (Kademlia, the relay
        // service, autorelay), and with them the clones they hold; events after this
        // (the closing connections' own) are not delivered.
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        left
    }

    /// Addresses we can be reached at: the announced ones if any, else the listen
    /// addresses; plus extra ones (relay circuit addresses). Without `/p2p/<self>`.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        let announce = self.config().announce;
        let mut v = if announce.is_empty() {
            self.listen_addrs()
        } else {
            announce
        };
        for a in self
            .inner
            .extra_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        v
    }

    /// The addresses worth giving to others (reservations, DHT records): like
    /// [`Self::addresses`], without circuit addresses, and without loopback ones
    /// when the host has any other (a peer elsewhere cannot use 127.0.0.1).
    pub fn advertised_addresses(&self) -> Vec<Multiaddr> {
        let direct: Vec<Multiaddr> = self
            .addresses()
            .into_iter()
            .filter(|a| !waddr::is_circuit(a))
            .collect();
        let routable: Vec<Multiaddr> = direct.iter().filter(|a| !is_loopback(a)).cloned().collect();
        if routable.is_empty() {
            direct
        } else {
            routable
        }
    }

    /// The bound listen addresses.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.inner
            .listen_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds an address to those we announce (e.g. a relay circuit address); pushes identify.
    pub fn add_address(&self, addr: Multiaddr) {
        {
            let mut v = self
                .inner
                .extra_addrs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if v.contains(&addr) {
                return;
            }
            v.push(addr);
        }
        crate::protocols::identify::push_all(self);
    }

    /// Removes an announced address; pushes identify.
    pub fn remove_address(&self, addr: &Multiaddr) {
        let removed = {
            let mut v = self
                .inner
                .extra_addrs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = v.len();
            v.retain(|a| a != addr);
            before != v.len()
        };
        if removed {
            crate::protocols::identify::push_all(self);
        }
    }

    /// What identify told us about `peer`.
    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
    }

    pub(crate) fn set_peer_info(&self, peer: PeerId, info: PeerInfo) {
        // Only for connected peers: an answer that arrives after the last connection
        // closed would otherwise stay forever.
        let connected = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&peer);
        if !connected {
            return;
        }
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, info.clone());
        self.emit(NodeEvent::Identified { peer, info });
    }

    /// Live connections to `peer`, direct ones first.
    pub fn connections_to(&self, peer: &PeerId) -> Vec<Connection> {
        let mut v: Vec<Connection> = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .map(|v| v.iter().filter(|c| !c.is_closed()).cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.info().relayed);
        v
    }

    /// All live connections.
    pub fn connections(&self) -> Vec<Connection> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .filter(|c| !c.is_closed())
            .cloned()
            .collect()
    }

    /// Number of live connections.
    pub fn num_connections(&self) -> usize {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    async fn accept_loop(self, listener: Listener) {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let cfg = self.config();
            if self.num_connections() >= cfg.max_connections {
                tracing::warn!(%remote, limit = cfg.max_connections, "connection refused: max_connections reached");
                continue;
            }
            let permit = match self.inner.handshakes.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    tracing::warn!(%remote, limit = cfg.max_pending_handshakes, "connection refused: too many handshakes in progress");
                    continue;
                }
            };
            let node = self.clone();
            let up = listener.upgrader();
            let span = tracing::debug_span!("inbound", %remote);
            tokio::spawn(
                async move {
                    let _permit = permit;
                    let deadline = cfg.timeouts.handshake + cfg.timeouts.negotiation * 2;
                    let raw = match tokio::time::timeout(deadline, transport::accept_upgrade(tcp, up)).await {
                        Ok(Ok(raw)) => raw,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "transport upgrade failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("websocket handshake timed out");
                            return;
                        }
                    };
                    let remote_addr = raw.remote_addr.clone();
                    if let Err(e) = node.upgrade(raw.io, raw.local_addr, raw.remote_addr, Direction::Inbound, None, None).await {
                        tracing::info!(%remote_addr, stage = %e.stage(), error = %e, "inbound handshake failed");
                        node.emit(NodeEvent::HandshakeFailed { remote_addr, stage: e.stage(), error: e.to_string() });
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Secures and multiplexes a raw channel and registers the connection.
    pub(crate) async fn upgrade(
        &self,
        mut io: BoxedIo,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        direction: Direction,
        expected: Option<PeerId>,
        relay_limit: Option<Limit>,
    ) -> Result<Connection, UpgradeError> {
        let cfg = self.config();
        let secured = upgrade::secure(
            &mut io,
            &self.inner.keypair,
            direction == Direction::Outbound,
            expected,
            cfg.timeouts,
        )
        .await?;
        let info = ConnectionInfo {
            id: 0,
            peer: secured.outcome.remote_peer,
            remote_key: secured.outcome.remote_key.clone(),
            remote_addr,
            local_addr,
            direction,
            relayed: relay_limit.is_some(),
            limit: relay_limit.unwrap_or(Limit::UNLIMITED),
        };
        let (tx, rx) = mpsc::channel(cfg.max_negotiating_streams);
        let (conn, driver) = Connection::new(
            io,
            secured.transport,
            secured.plaintext,
            info,
            cfg.yamux.clone(),
            tx,
        );
        let peer = conn.peer();
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default()
            .push(conn.clone());
        tracing::debug!(%peer, remote = %conn.info().remote_addr, relayed = conn.info().relayed, ?direction, "connection established");
        self.emit(NodeEvent::ConnectionEstablished(conn.info().clone()));

        let node = self.clone();
        let c2 = conn.clone();
        let span = tracing::debug_span!("conn", %peer, id = conn.id());
        tokio::spawn(
            async move {
                driver.await;
                node.remove_connection(&c2);
            }
            .instrument(span.clone()),
        );
        let node = self.clone();
        tokio::spawn(node.inbound_streams(rx).instrument(span));
        crate::protocols::identify::ask(self, &conn);
        Ok(conn)
    }

    fn remove_connection(&self, conn: &Connection) {
        let peer = conn.peer();
        {
            let mut map = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(v) = map.get_mut(&peer) {
                v.retain(|c| c.id() != conn.id());
                if v.is_empty() {
                    map.remove(&peer);
                    // What identify told us goes with the last connection: a relay meets
                    // many peers once, and must not keep them all.
                    self.inner
                        .peers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&peer);
                }
            }
        }
        tracing::debug!(%peer, id = conn.id(), "connection closed");
        self.emit(NodeEvent::ConnectionClosed(conn.info().clone()));
    }

    async fn inbound_streams(self, mut rx: mpsc::Receiver<Stream>) {
        let timeout = self.config().timeouts.negotiation;
        while let Some(mut stream) = rx.recv().await {
            let node = self.clone();
            tokio::spawn(async move {
                let supported = node.protocols();
                match upgrade::select_listener(
                    &mut stream,
                    supported,
                    Stage::StreamNegotiation,
                    timeout,
                )
                .await
                {
                    Ok((protocol, leftover)) => {
                        stream.unread(leftover);
                        let handler = node
                            .inner
                            .handlers
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&protocol)
                            .cloned();
                        if let Some(h) = handler {
                            let connection = stream.connection().clone();
                            h(IncomingStream {
                                stream,
                                protocol,
                                connection,
                            });
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "inbound stream negotiation failed"),
                }
            });
        }
    }

    /// Dials an address: direct (`/ip4/…/tcp/N[/ws][/p2p/ID]`) or relayed
    /// (`<relay addr>/p2p/R/p2p-circuit/p2p/A`). Reuses a live connection to a known peer.
    pub async fn dial(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        self.dial_with(addr, true).await
    }

    /// Dials a direct address over a new connection even if one to that peer exists
    /// (AutoNAT dial-backs must prove a fresh inbound path).
    pub async fn dial_new(&self, addr: &Multiaddr) -> Result<Connection, DialError> {
        self.dial_with(addr, false).await
    }

    async fn dial_with(&self, addr: &Multiaddr, reuse: bool) -> Result<Connection, DialError> {
        let bad = |reason: String| DialError::BadAddress {
            addr: addr.clone(),
            reason,
        };
        if let Some(c) = waddr::parse_circuit(addr).map_err(|e| bad(e.to_string()))? {
            // Boxed: dialing a circuit dials its relay first (async recursion).
            return Box::pin(crate::relay_client::dial_circuit(self, addr, c)).await;
        }
        let (taddr, peer) = waddr::split_p2p(addr);
        if let Some(p) = peer {
            if p == self.peer_id() {
                return Err(bad("that is our own peer id".into()));
            }
            if let Some(c) = self
                .connections_to(&p)
                .into_iter()
                .find(|c| reuse && !c.info().relayed)
            {
                return Ok(c);
            }
        }
        let cfg = self.config();
        let raw: RawConnection =
            match tokio::time::timeout(cfg.dial_timeout, transport::dial(&taddr, &cfg.tls_client))
                .await
            {
                Ok(Ok(raw)) => raw,
                Ok(Err(source)) => {
                    return Err(DialError::Transport {
                        addr: addr.clone(),
                        source,
                    })
                }
                Err(_) => return Err(DialError::Timeout(addr.clone())),
            };
        self.upgrade(
            raw.io,
            raw.local_addr,
            raw.remote_addr,
            Direction::Outbound,
            peer,
            None,
        )
        .await
        .map_err(|source| DialError::Upgrade {
            addr: addr.clone(),
            source,
        })
    }

    /// A direct connection to `peer`: the live one if any, else the first of its
    /// direct (non-circuit) `addrs` that can be dialed.
    pub async fn connect_peer(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<Connection, DialError> {
        if let Some(c) = self
            .connections_to(&peer)
            .into_iter()
            .find(|c| !c.info().relayed)
        {
            return Ok(c);
        }
        let mut last = None;
        for a in addrs.iter().filter(|a| !waddr::is_circuit(a)) {
            match self.dial(&waddr::with_p2p(a.clone(), peer)).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DialError::BadAddress {
            addr: waddr::with_p2p(Multiaddr::empty(), peer),
            reason: "no direct address known".into(),
        }))
    }

    /// Opens a stream on `conn` and negotiates `protocol` on it.
    ///
    /// Negotiation is optimistic (multistream-select "V1Lazy", as go and rust peers do):
    /// the proposal goes out with the first application bytes, saving a round trip; the
    /// peer's answer is checked on the first read, which fails if it refused.
    pub async fn open_stream(
        &self,
        conn: &Connection,
        protocol: &str,
    ) -> Result<Stream, DialError> {
        let mut s = conn.open_raw_stream()?;
        let mut dialer = circuit_proto::multistream::Dialer::new(vec![protocol.to_string()], true);
        let mut out = Vec::new();
        dialer.poll_transmit(&mut out);
        tokio::io::AsyncWriteExt::write_all(&mut s, &out).await?;
        s.expect_confirmation(dialer);
        Ok(s)
    }

    /// Opens a stream and waits until the peer confirms `protocol` (one round trip more
    /// than [`Self::open_stream`], but a refusal shows up here).
    pub async fn open_stream_confirmed(
        &self,
        conn: &Connection,
        protocol: &str,
    ) -> Result<Stream, DialError> {
        let mut s = conn.open_raw_stream()?;
        let timeout = self.config().timeouts.negotiation;
        let (_, leftover) =
            upgrade::select_dialer(&mut s, &[protocol], Stage::StreamNegotiation, timeout)
                .await
                .map_err(|source| DialError::Upgrade {
                    addr: conn.info().remote_addr.clone(),
                    source,
                })?;
        s.unread(leftover);
        Ok(s)
    }

    /// Dials `addr` (if needed) and opens a stream with `protocol`.
    pub async fn dial_stream(&self, addr: &Multiaddr, protocol: &str) -> Result<Stream, DialError> {
        let conn = self.dial(addr).await?;
        self.open_stream(&conn, protocol).await
    }

    /// The public key of a connected peer.
    pub fn remote_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.connections_to(peer)
            .first()
            .map(|c| c.info().remote_key.clone())
    }

    /// Adds `/p2p/<self>` to an address.
    pub fn full_addr(&self, addr: &Multiaddr) -> Multiaddr {
        waddr::with_p2p(addr.clone(), self.peer_id())
    }
}

/// Whether the address is on the loopback interface (127.0.0.0/8, ::1).
pub fn is_loopback(addr: &Multiaddr) -> bool {
    matches!(addr.iter().next(), Some(Protocol::Ip4(ip)) if ip.is_loopback())
        || matches!(addr.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_loopback())
}

/// Expands `0.0.0.0` / `::` to the host's interface addresses of that family.
pub fn expand_unspecified(addr: &Multiaddr) -> Vec<Multiaddr> {
    let mut it = addr.iter();
    let first = it.next();
    let v6 = match first {
        Some(Protocol::Ip4(ip)) if ip.is_unspecified() => false,
        Some(Protocol::Ip6(ip)) if ip.is_unspecified() => true,
        _ => return vec![addr.clone()],
    };
    let rest: Vec<Protocol<'_>> = it.collect();
    let mut out = Vec::new();
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let ip = iface.ip();
            if ip.is_ipv6() != v6 {
                continue;
            }
            // Link-local IPv6 needs a scope id that multiaddrs cannot carry.
            if let std::net::IpAddr::V6(v6ip) = ip {
                if (v6ip.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
            }
            let mut m = Multiaddr::empty();
            m.push(match ip {
                std::net::IpAddr::V4(a) => Protocol::Ip4(a),
                std::net::IpAddr::V6(a) => Protocol::Ip6(a),
            });
            for p in &rest {
                m.push(p.clone());
            }
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    if out.is_empty() {
        out.push(addr.clone());
    }
    out
}
