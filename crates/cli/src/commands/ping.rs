//! `circuit ping`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use circuit_net::protocols::ping::Pinger;
use circuit_net::{Multiaddr, Node};
use serde_json::json;

use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Peer address (direct or `/p2p-circuit`).
    addr: Multiaddr,
    /// Number of pings.
    #[arg(short = 'c', long, default_value_t = 5)]
    count: u32,
    /// Seconds between pings.
    #[arg(short = 'i', long, default_value_t = 1.0)]
    interval: f64,
    /// Seconds to wait for each answer.
    #[arg(short = 'W', long, default_value_t = 5.0)]
    timeout: f64,
    /// Identity key file [default: a fresh key for this run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Extra trusted certificate(s) (PEM) for dialing secure WebSocket, e.g. a self-signed relay.
    #[arg(long, value_name = "FILE")]
    tls_trust: Option<PathBuf>,
    /// DHT peers to join to find a relay for the bare form `/p2p-circuit/p2p/<peer>` (repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let node = Node::new(
        super::identity(a.identity, None)?,
        super::peer_config(a.tls_trust.as_deref())?,
    );
    let conn = super::connect(&node, &a.addr, &a.bootstrap).await?;
    let peer = conn.peer();
    out.result(
        format!("PING {peer} via {}", conn.info().remote_addr),
        ev("connected", json!({"peer": peer.to_string(), "remote_addr": conn.info().remote_addr.to_string(), "relayed": conn.info().relayed})),
    );
    let mut pinger = Pinger::open(&node, &conn)
        .await
        .context("opening a ping stream")?;
    let mut rtts = Vec::new();
    for seq in 1..=a.count {
        match pinger.ping(Duration::from_secs_f64(a.timeout)).await {
            Ok(rtt) => {
                let ms = rtt.as_secs_f64() * 1e3;
                out.result(
                    format!("32 bytes from {peer}: seq={seq} time={ms:.3} ms"),
                    ev("pong", json!({"seq": seq, "rtt_ms": ms})),
                );
                rtts.push(ms);
            }
            Err(e) => {
                out.result(
                    format!("seq={seq}: {e}"),
                    ev("ping_failed", json!({"seq": seq, "error": e.to_string()})),
                );
                // The stream may be broken: open a new one for the next ping.
                match Pinger::open(&node, &conn).await {
                    Ok(p) => pinger = p,
                    Err(e) => {
                        out.result(
                            format!("cannot open a new ping stream: {e}"),
                            ev("error", json!({"error": e.to_string()})),
                        );
                        break;
                    }
                }
            }
        }
        if seq < a.count {
            tokio::time::sleep(Duration::from_secs_f64(a.interval)).await;
        }
    }
    pinger.close().await;
    let received = rtts.len() as u32;
    let loss = 100.0 * (a.count - received) as f64 / a.count.max(1) as f64;
    let (min, max) = rtts
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let avg = if rtts.is_empty() {
        0.0
    } else {
        rtts.iter().sum::<f64>() / rtts.len() as f64
    };
    let human = if rtts.is_empty() {
        format!(
            "--- {peer} ping statistics ---\n{} transmitted, 0 received, 100% packet loss",
            a.count
        )
    } else {
        format!("--- {peer} ping statistics ---\n{} transmitted, {received} received, {loss:.0}% packet loss\nrtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms", a.count)
    };
    out.result(human, ev("summary", json!({"transmitted": a.count, "received": received, "loss_percent": loss, "min_ms": if rtts.is_empty() {None} else {Some(min)}, "avg_ms": avg, "max_ms": if rtts.is_empty() {None} else {Some(max)}})));
    Ok(if received == a.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
