//! `circuit listen`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use circuit_net::protocols::perf;
use circuit_net::relay_client::{self, ReservationEvent};
use circuit_net::{Multiaddr, Node, NodeEvent};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::PIPE_PROTOCOL;
use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Relay to reserve on: `<addr>/p2p/<relay id>`; repeat for several.
    #[arg(long, value_name = "ADDR", required = true)]
    relay: Vec<Multiaddr>,
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
    let keypair = super::identity(a.identity, Some("peer.key"))?;
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
    let mut kept = Vec::new();
    for r in &a.relay {
        if circuit_wire::addr::split_p2p(r).1.is_none() {
            anyhow::bail!("relay address {r} has no /p2p/<relay id> at its end");
        }
        let k = relay_client::keep_reservation(&node, r.clone());
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
        kept.push(k);
    }
    let mut events = node.events();
    let me = node.clone();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let NodeEvent::ConnectionEstablished(info) = e {
                if info.relayed && info.direction == circuit_net::Direction::Inbound {
                    out.event(
                        format!("relayed connection from {} via {}", info.peer, info.remote_addr),
                        ev("inbound", json!({"peer": info.peer.to_string(), "remote_addr": info.remote_addr.to_string()})),
                    );
                }
            }
        }
        drop(me);
    });
    tokio::signal::ctrl_c().await.ok();
    drop(kept);
    Ok(ExitCode::SUCCESS)
}
