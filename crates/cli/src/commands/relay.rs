//! `circuit relay`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use circuit_net::{Multiaddr, Node, NodeConfig};
use circuit_proto::relay::Limit;
use circuit_relay::{Relay, RelayConfig};
use serde_json::json;

use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; repeat for several.
    /// [default: /ip4/0.0.0.0/tcp/4001, /ip4/0.0.0.0/tcp/4002/ws, /ip6/::/tcp/4001, /ip6/::/tcp/4002/ws]
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Multiaddr>,
    /// Identity key file [default: <data dir>/circuit/relay.key, created on first run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Public address to put in reservations instead of the listen addresses (repeatable),
    /// e.g. /ip4/7.7.7.7/tcp/4001 when behind port forwarding.
    #[arg(long, value_name = "ADDR")]
    announce: Vec<Multiaddr>,
    /// Reservation lifetime, seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    reservation_ttl: u64,
    /// Most reservations at once.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_reservations: usize,
    /// Most reservations from one IP address.
    #[arg(long, default_value_t = 8, value_name = "N")]
    max_reservations_per_ip: usize,
    /// Most circuits at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_circuits: usize,
    /// Most circuits per peer (as source or as destination).
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_circuits_per_peer: usize,
    /// Longest life of a circuit, seconds (0 = no limit).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    limit_duration: u64,
    /// Most bytes per direction of a circuit (0 = no limit).
    #[arg(long, default_value_t = 131072, value_name = "BYTES")]
    limit_data: u64,
    /// No circuit limits at all (no Limit field is sent; go peers then treat circuits as normal connections).
    #[arg(long)]
    no_limit: bool,
    /// Print a status line (reservations, circuits, bytes) to stderr this often, seconds (0 = never).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    status_interval: u64,
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let keypair = super::identity(a.identity, Some("relay.key"))?;
    let listen: Vec<Multiaddr> = if a.listen.is_empty() {
        [
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/0.0.0.0/tcp/4002/ws",
            "/ip6/::/tcp/4001",
            "/ip6/::/tcp/4002/ws",
        ]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
    } else {
        a.listen.clone()
    };
    let node = Node::new(
        keypair,
        NodeConfig {
            announce: a.announce.clone(),
            relay_client: false,
            ..Default::default()
        },
    );
    for addr in &listen {
        match node.listen(addr.clone()).await {
            Ok(_) => {}
            // A default IPv6 listener on a host without IPv6 is not fatal.
            Err(e) if a.listen.is_empty() && addr.to_string().starts_with("/ip6") => {
                tracing::warn!(%addr, error = %e, "skipping listener")
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot listen on {addr} (port in use? pick another with --listen)")
                })
            }
        }
    }
    let limit = if a.no_limit {
        Limit::UNLIMITED
    } else {
        Limit {
            duration: (a.limit_duration > 0).then(|| Duration::from_secs(a.limit_duration)),
            data: (a.limit_data > 0).then_some(a.limit_data),
        }
    };
    let config = RelayConfig {
        reservation_ttl: Duration::from_secs(a.reservation_ttl.max(1)),
        max_reservations: a.max_reservations,
        max_reservations_per_ip: a.max_reservations_per_ip,
        max_circuits: a.max_circuits,
        max_circuits_per_peer: a.max_circuits_per_peer,
        limit,
        ..Default::default()
    };
    let relay = Relay::start(&node, config);
    let addrs: Vec<String> = node
        .addresses()
        .iter()
        .map(|x| node.full_addr(x).to_string())
        .collect();
    if out.json {
        println!(
            "{}",
            ev(
                "listening",
                json!({"peer_id": node.peer_id().to_string(), "addrs": addrs})
            )
        );
    } else {
        println!("{}", node.peer_id());
        for x in &addrs {
            println!("{x}");
        }
    }
    tracing::info!(peer_id = %node.peer_id(), limit = %circuit_net::relay_client::describe_limit(&limit), "relay running");
    let status = async {
        if a.status_interval == 0 {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(a.status_interval)).await;
            let s = relay.stats();
            tracing::info!(
                connections = node.num_connections(),
                reservations = relay.num_reservations(),
                circuits = relay.num_circuits(),
                circuits_opened = s.circuits_opened.load(Ordering::Relaxed),
                circuits_refused = s.circuits_refused.load(Ordering::Relaxed),
                bytes_relayed = s.bytes_relayed.load(Ordering::Relaxed),
                "status"
            );
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        _ = status => {}
    }
    tracing::info!("shutting down");
    Ok(ExitCode::SUCCESS)
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}
