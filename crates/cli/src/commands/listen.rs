//! `circuit listen`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use circuit_net::autorelay::{Autorelay, AutorelayConfig, AutorelayEvent};
use circuit_net::protocols::autonat::AutoNat;
use circuit_net::protocols::kad::{Kad, KadConfig};
use circuit_net::protocols::perf;
use circuit_net::relay_client::{self, ReservationEvent};
use circuit_net::{Multiaddr, Node, NodeEvent};
use circuit_proto::autonat::NatStatus;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::PIPE_PROTOCOL;
use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Relay to reserve on: `<addr>/p2p/<relay id>`; repeat for several. With --autorelay
    /// these are candidates like the discovered ones.
    #[arg(long, value_name = "ADDR", required_unless_present = "autorelay")]
    relay: Vec<Multiaddr>,
    /// Find relays by ourselves: AutoNAT decides whether we are reachable; if not, relays
    /// are found in the DHT (`/libp2p/relay` providers) and among connected peers, measured
    /// by ping, and the fastest few are reserved on, kept and replaced when lost.
    #[arg(long)]
    autorelay: bool,
    /// DHT peers to join (`…/p2p/<id>`; repeatable), for --autorelay.
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
    /// How many relays autorelay keeps.
    #[arg(long, default_value_t = 3, value_name = "N")]
    relays: usize,
    /// Also listen directly here (AutoNAT tests whether it is reachable) [default with
    /// --autorelay: /ip4/0.0.0.0/tcp/0].
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Multiaddr>,
    /// Act as private without asking AutoNAT (a host known to be unreachable).
    #[arg(long, requires = "autorelay")]
    force_private: bool,
    /// Stay connected to this peer (`…/p2p/<id>`; repeatable, redialed when lost): it
    /// learns our relay addresses by identify push as they change.
    #[arg(long, value_name = "ADDR")]
    peer: Vec<Multiaddr>,
    /// Identity key file [default: <data dir>/circuit/peer.key, created on first run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Extra trusted certificate(s) (PEM) for dialing secure WebSocket, e.g. a self-signed relay.
    #[arg(long, value_name = "FILE")]
    tls_trust: Option<PathBuf>,
    /// Echo pipe streams back instead of joining them to stdin/stdout (for tests, like `nc -l -e cat`).
    #[arg(long)]
    echo: bool,
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let keypair = super::identity(a.identity.clone(), Some("peer.key"))?;
    let node = Node::new(keypair, super::peer_config(a.tls_trust.as_deref())?);
    perf::enable(&node);
    let pipe_taken = Arc::new(AtomicBool::new(false));
    let echo = a.echo;
    node.handle(PIPE_PROTOCOL, move |inc| {
        let peer = inc.connection.peer();
        if echo {
            tokio::spawn(async move {
                let (r, w) = tokio::io::split(inc.stream);
                match super::pump(r, w).await {
                    Ok(n) => out.event(
                        format!("pipe from {peer} closed: echoed {n} bytes"),
                        ev("pipe_closed", json!({"peer": peer.to_string(), "bytes": n})),
                    ),
                    Err(e) => out.event(
                        format!("pipe from {peer} failed: {e}"),
                        ev(
                            "pipe_failed",
                            json!({"peer": peer.to_string(), "error": e.to_string()}),
                        ),
                    ),
                }
            });
            return;
        }
        // Like `nc -l`: stdin/stdout serve one stream.
        if pipe_taken.swap(true, Ordering::SeqCst) {
            tracing::warn!(%peer, "pipe refused: stdin/stdout already joined to another stream");
            let mut s = inc.stream;
            s.reset();
            return;
        }
        out.event(
            format!("pipe opened by {peer}"),
            ev("pipe_opened", json!({"peer": peer.to_string()})),
        );
        tokio::spawn(async move {
            let (r, w) = tokio::io::split(inc.stream);
            let up = super::pump(tokio::io::stdin(), w);
            let down = async {
                let mut stdout = tokio::io::stdout();
                let n = super::pump(r, &mut stdout).await;
                let _ = stdout.flush().await;
                n
            };
            let (sent, received) = tokio::join!(up, down);
            out.event(
                format!("pipe from {peer} closed"),
                ev(
                    "pipe_closed",
                    json!({"peer": peer.to_string(), "sent": sent.ok(), "received": received.ok()}),
                ),
            );
        });
    });
    let listen: Vec<Multiaddr> = match (a.listen.is_empty(), a.autorelay) {
        (false, _) => a.listen.clone(),
        (true, true) => vec!["/ip4/0.0.0.0/tcp/0".parse()?],
        (true, false) => Vec::new(),
    };
    for addr in &listen {
        node.listen(addr.clone())
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
    }
    for r in &a.relay {
        if circuit_wire::addr::split_p2p(r).1.is_none() {
            anyhow::bail!("relay address {r} has no /p2p/<relay id> at its end");
        }
    }
    let mut kept = Vec::new();
    if a.autorelay {
        start_autorelay(&node, &a, out).await;
    } else {
        for r in &a.relay {
            kept.push(keep_static(&node, r.clone(), out));
        }
    }
    let mut events = node.events();
    let me = node.clone();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            match e {
                NodeEvent::ConnectionEstablished(info)
                    if info.relayed && info.direction == circuit_net::Direction::Inbound =>
                {
                    out.event(
                        format!("relayed connection from {} via {}", info.peer, info.remote_addr),
                        ev("inbound", json!({"peer": info.peer.to_string(), "remote_addr": info.remote_addr.to_string()})),
                    );
                }
                // What peers tell us of themselves (identify and identify push), for scripts.
                NodeEvent::Identified { peer, info } if out.json => {
                    let addrs: Vec<String> =
                        info.listen_addrs.iter().map(|a| a.to_string()).collect();
                    eprintln!(
                        "{}",
                        ev(
                            "identified",
                            json!({"peer": peer.to_string(), "listen_addrs": addrs, "protocols": info.protocols})
                        )
                    );
                }
                _ => {}
            }
        }
        drop(me);
    });
    for p in a.peer.clone() {
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                match node.dial(&p).await {
                    Ok(conn) => conn.closed().await,
                    Err(e) => {
                        tracing::warn!(peer = %p, error = %e, "cannot reach --peer; retrying")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
    }
    tokio::signal::ctrl_c().await.ok();
    drop(kept);
    Ok(ExitCode::SUCCESS)
}

/// Keeps a reservation on a relay given on the command line and reports it.
fn keep_static(node: &Node, relay: Multiaddr, out: Output) -> relay_client::KeptReservation {
    let k = relay_client::keep_reservation(node, relay);
    let mut events = k.events();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            match e {
                ReservationEvent::Accepted(r) => {
                    let addrs: Vec<String> =
                        r.circuit_addrs.iter().map(|a| a.to_string()).collect();
                    if out.json {
                        eprintln!(
                            "{}",
                            ev(
                                "reserved",
                                json!({"relay": r.relay.to_string(), "addrs": addrs, "expire": r.granted.expire, "limit": relay_client::describe_limit(&r.granted.limit), "voucher": r.granted.voucher.is_some()})
                            )
                        );
                    } else {
                        for a in addrs {
                            eprintln!("{a}");
                        }
                    }
                }
                ReservationEvent::Failed {
                    relay_addr,
                    error,
                    retry_in,
                } => {
                    out.event(
                        format!("reservation on {relay_addr} failed: {error} (retrying in {}s)", retry_in.as_secs()),
                        ev("reservation_failed", json!({"relay": relay_addr.to_string(), "error": error, "retry_in_secs": retry_in.as_secs()})),
                    );
                }
                _ => {}
            }
        }
    });
    k
}

/// AutoNAT + DHT discovery + latency choice; reports every change on stderr.
async fn start_autorelay(node: &Node, a: &Args, out: Output) {
    let kad = Kad::start(
        node,
        KadConfig {
            server: false,
            ..Default::default()
        },
    );
    let started = std::time::Instant::now();
    let autonat = AutoNat::start(
        node,
        circuit_proto::autonat::ClientConfig {
            // Ask as soon as servers are connected: the bootstrap peers are dialed first.
            boot_delay: std::time::Duration::from_millis(500),
            retry_interval: std::time::Duration::from_secs(5),
            // A server may be asked again after 15 s (go: 90 s): with few servers known
            // at start, one failed probe must not leave us unknown for long.
            throttle_server_period: std::time::Duration::from_secs(15),
            ..Default::default()
        },
    );
    let config = AutorelayConfig {
        chooser: circuit_proto::autorelay::ChooserConfig {
            want: a.relays.max(1),
            ..Default::default()
        },
        static_relays: a.relay.clone(),
        force_private: a.force_private,
        ..Default::default()
    };
    let bootstrap = a.bootstrap.clone();
    let node2 = node.clone();
    let kad2 = kad.clone();
    // Join the DHT first so that AutoNAT has servers and discovery has a table.
    let n = kad2.bootstrap(&bootstrap).await;
    tracing::info!(peers = n, "joined the DHT");
    // Also ask the static relays (they serve AutoNAT).
    for r in &a.relay {
        let _ = node2.dial(r).await;
    }
    let ar = Autorelay::start(node, Some(kad), Some(autonat), config);
    let mut events = ar.events();
    tokio::spawn(async move {
        let _keep = ar;
        let mut first_addr = true;
        while let Ok(e) = events.recv().await {
            match e {
                AutorelayEvent::Reachability(s) => {
                    let name = match &s {
                        NatStatus::Public(_) => "public",
                        NatStatus::Private => "private",
                        NatStatus::Unknown => "unknown",
                    };
                    out.event(
                        format!("reachability: {name}"),
                        ev(
                            "reachability",
                            json!({"status": name, "secs": started.elapsed().as_secs_f64()}),
                        ),
                    );
                }
                AutorelayEvent::Measured { relay, rtt } => {
                    let ms = rtt.as_secs_f64() * 1e3;
                    out.event(
                        format!("relay candidate {relay}: rtt {ms:.1} ms"),
                        ev(
                            "relay_measured",
                            json!({"relay": relay.to_string(), "rtt_ms": ms}),
                        ),
                    );
                }
                AutorelayEvent::RelayChosen { relay, rtt, addrs } => {
                    let ms = rtt.map(|r| r.as_secs_f64() * 1e3);
                    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    if out.json {
                        eprintln!(
                            "{}",
                            ev(
                                "relay_chosen",
                                json!({"relay": relay.to_string(), "rtt_ms": ms, "addrs": list, "secs": started.elapsed().as_secs_f64()})
                            )
                        );
                    } else {
                        eprintln!(
                            "relay chosen {relay} (rtt {} ms)",
                            ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "?".into())
                        );
                        for x in list {
                            eprintln!("{x}");
                        }
                    }
                    if first_addr {
                        first_addr = false;
                        tracing::info!(
                            secs = started.elapsed().as_secs_f64(),
                            "first relay address"
                        );
                    }
                }
                AutorelayEvent::RelayDropped { relay, reason } => {
                    out.event(
                        format!("relay dropped {relay}: {reason}"),
                        ev(
                            "relay_dropped",
                            json!({"relay": relay.to_string(), "reason": reason}),
                        ),
                    );
                }
                AutorelayEvent::AddressesChanged(addrs) => {
                    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    if out.json {
                        eprintln!(
                            "{}",
                            ev(
                                "addresses",
                                json!({"addrs": list, "secs": started.elapsed().as_secs_f64()})
                            )
                        );
                    }
                }
                _ => {}
            }
        }
    });
}
