//! `circuit dht`: a plain Kademlia + AutoNAT server (a DHT bootstrap node).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use circuit_net::protocols::autonat;
use circuit_net::protocols::kad::{Kad, KadConfig};
use circuit_net::{Multiaddr, Node, NodeConfig};
use serde_json::json;

use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; repeat for several [default: /ip4/0.0.0.0/tcp/4003].
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Multiaddr>,
    /// Identity key file [default: <data dir>/circuit/dht.key, created on first run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Other Kademlia peers to join (`…/p2p/<id>`; repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Public address to announce instead of the listen addresses (repeatable).
    #[arg(long, value_name = "ADDR")]
    announce: Vec<Multiaddr>,
    /// AutoNAT: also dial back requesters seen at private addresses (LANs, test beds).
    #[arg(long)]
    autonat_allow_private: bool,
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let keypair = super::identity(a.identity, Some("dht.key"))?;
    let node = Node::new(
        keypair,
        NodeConfig {
            announce: a.announce.clone(),
            relay_client: false,
            ..Default::default()
        },
    );
    let listen = if a.listen.is_empty() {
        vec!["/ip4/0.0.0.0/tcp/4003".parse()?]
    } else {
        a.listen
    };
    for addr in listen {
        node.listen(addr.clone())
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
    }
    let kad = Kad::start(&node, KadConfig::default());
    autonat::enable_server(
        &node,
        super::relay::autonat_server_config(a.autonat_allow_private),
    );
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
    if !a.bootstrap.is_empty() {
        let n = kad.bootstrap(&a.bootstrap).await;
        tracing::info!(peers = n, "joined the DHT");
    }
    tokio::signal::ctrl_c().await.ok();
    Ok(ExitCode::SUCCESS)
}
