//! AutoNAT v1 glue (`/libp2p/autonat/1.0.0`): the server dials requesters back
//! on fresh connections; the client asks connected servers in turn and keeps
//! a public/private/unknown belief with a confidence (the sans-IO core decides).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circuit_proto::autonat::{self, Client, ClientConfig, NatStatus, Server, ServerConfig};
use circuit_wire::pb::autonat::Message;
use multiaddr::Multiaddr;
use rand::seq::SliceRandom;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::framed;
use crate::node::Node;

pub use circuit_proto::autonat::PROTOCOL;

/// Serves AutoNAT on `node`: dial-back requests are checked by the core (only the
/// requester's observed IP, rate limits, private ranges only if allowed) and the
/// remaining addresses are dialed on new connections.
pub fn enable_server(node: &Node, config: ServerConfig) {
    let server = Arc::new(Mutex::new(Server::new(config)));
    let weak = node.downgrade();
    node.handle(PROTOCOL, move |mut inc| {
        let Some(n) = weak.upgrade() else { return };
        let server = server.clone();
        tokio::spawn(async move {
            let peer = inc.connection.peer();
            let observed = inc.connection.info().remote_addr.clone();
            let read =
                framed::read_message_from::<Message, _>(&mut inc.stream, autonat::MAX_MESSAGE_SIZE);
            let msg = match tokio::time::timeout(Duration::from_secs(30), read).await {
                Ok(Ok((m, _))) => m,
                _ => return,
            };
            let decision = server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handle_request(&peer, &observed, &msg, Instant::now());
            let answer = match decision {
                Err(refusal) => {
                    tracing::debug!(%peer, reason = refusal.text, "autonat request refused");
                    refusal.to_message()
                }
                Ok(addrs) => {
                    let dial_timeout = server
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .config()
                        .dial_timeout;
                    let reached = tokio::time::timeout(dial_timeout, async {
                        for a in &addrs {
                            let target = circuit_wire::addr::with_p2p(a.clone(), peer);
                            if let Ok(conn) = n.dial_new(&target).await {
                                conn.close();
                                return Some(a.clone());
                            }
                        }
                        None
                    })
                    .await
                    .ok()
                    .flatten();
                    tracing::debug!(%peer, ?reached, tried = addrs.len(), "autonat dial-back");
                    server
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dial_outcome(reached.as_ref())
                }
            };
            if framed::write_message(&mut inc.stream, &answer)
                .await
                .is_ok()
            {
                let _ = inc.stream.shutdown().await;
            }
        });
    });
}

/// A running AutoNAT client: watch [`AutoNat::status`] for changes.
#[derive(Clone)]
pub struct AutoNat {
    status: watch::Receiver<(NatStatus, u8)>,
}

impl AutoNat {
    /// Starts probing in the background with `config` (go-libp2p's schedule by default).
    pub fn start(node: &Node, config: ClientConfig) -> AutoNat {
        let (tx, rx) = watch::channel((NatStatus::Unknown, 0u8));
        let node = node.clone();
        tokio::spawn(async move {
            let mut client = Client::new(config, Instant::now());
            loop {
                if tx.is_closed() {
                    return;
                }
                let now = Instant::now();
                if let Some(change) = client.handle_timeout(now) {
                    tracing::info!(from = ?change.old, to = ?change.new, "reachability");
                }
                let mut servers: Vec<_> = node
                    .connections()
                    .into_iter()
                    .filter(|c| !c.info().relayed)
                    .map(|c| c.peer())
                    .filter(|p| {
                        node.peer_info(p)
                            .map(|i| i.protocols.iter().any(|x| x == PROTOCOL))
                            .unwrap_or(false)
                    })
                    .collect();
                servers.sort();
                servers.dedup();
                servers.shuffle(&mut rand::thread_rng());
                // No server connected yet (identify still running, say): keep the probe due
                // instead of letting the core push it out by a whole retry interval.
                let chosen = if servers.is_empty() {
                    None
                } else {
                    client.poll_probe(now, servers)
                };
                if let Some(server) = chosen {
                    let result = probe(&node, server, config.request_timeout).await;
                    let now = Instant::now();
                    let change = match result {
                        Ok(r) => client.handle_response(&server, r, now),
                        Err(e) => {
                            tracing::debug!(%server, error = %e, "autonat probe failed");
                            client.handle_failure(&server, now)
                        }
                    };
                    if let Some(change) = change {
                        tracing::info!(from = ?change.old, to = ?change.new, "reachability changed");
                    }
                    let _ = tx.send((client.status().clone(), client.confidence()));
                    continue;
                }
                let _ = tx.send_if_modified(|cur| {
                    let new = (client.status().clone(), client.confidence());
                    if *cur != new {
                        *cur = new;
                        true
                    } else {
                        false
                    }
                });
                // Wake at the core's next deadline, or soon if servers may appear meanwhile.
                let wait = client
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait.clamp(Duration::from_millis(50), Duration::from_secs(1)))
                    .await;
            }
        });
        AutoNat { status: rx }
    }

    /// The current belief and its confidence.
    pub fn status(&self) -> (NatStatus, u8) {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<(NatStatus, u8)> {
        self.status.clone()
    }
}

/// Our addresses worth asking about: direct listen/announce addresses plus what
/// peers observed of us.
fn candidates(node: &Node) -> Vec<Multiaddr> {
    let mut v: Vec<Multiaddr> = node
        .addresses()
        .into_iter()
        .filter(|a| !circuit_wire::addr::is_circuit(a))
        .collect();
    for c in node.connections() {
        if let Some(o) = node.peer_info(&c.peer()).and_then(|i| i.observed_addr) {
            if !circuit_wire::addr::is_circuit(&o) && !v.contains(&o) {
                v.push(o);
            }
        }
    }
    v
}

async fn probe(
    node: &Node,
    server: libp2p_identity::PeerId,
    timeout: Duration,
) -> Result<Result<Multiaddr, autonat::ResponseError>, String> {
    let fut = async {
        let conn = node
            .connections_to(&server)
            .into_iter()
            .find(|c| !c.info().relayed)
            .ok_or("server disconnected")?;
        let mut s = node
            .open_stream(&conn, PROTOCOL)
            .await
            .map_err(|e| e.to_string())?;
        let request = autonat::dial_request(&node.peer_id(), &candidates(node));
        framed::write_message(&mut s, &request)
            .await
            .map_err(|e| e.to_string())?;
        let (m, _) = framed::read_message_from::<Message, _>(&mut s, autonat::MAX_MESSAGE_SIZE)
            .await
            .map_err(|e| e.to_string())?;
        autonat::parse_dial_response(&m).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}
