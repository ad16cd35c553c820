//! A small app embedding circuit as a library: a "shout" service reachable through a relay.
//!
//! ```sh
//! cargo run -p circuit-examples -- serve /ip4/127.0.0.1/tcp/4001/p2p/<relay id>
//! # prints /ip4/…/p2p/<relay>/p2p-circuit/p2p/<self>
//! cargo run -p circuit-examples -- shout /ip4/…/p2p-circuit/p2p/<server id> "hello"
//! # prints HELLO
//! ```
//!
//! `serve` reserves a slot on the relay and answers streams of its own protocol
//! (`/example/shout/1.0.0`: reads a line, writes it back upper-cased); `shout` dials
//! the relayed address and opens one such stream.

use anyhow::{bail, Context};
use circuit_net::relay_client;
use circuit_net::{Keypair, Multiaddr, Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOL: &str = "/example/shout/1.0.0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let node = Node::new(Keypair::generate_ed25519(), NodeConfig::default());
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", relay] => {
            let relay: Multiaddr = relay.parse().context("relay address")?;
            node.handle(PROTOCOL, |mut incoming| {
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    // Bounded read: a line of at most 4 KiB, ended by EOF.
                    let _ = (&mut incoming.stream)
                        .take(4096)
                        .read_to_end(&mut line)
                        .await;
                    let _ = incoming.stream.write_all(&line.to_ascii_uppercase()).await;
                    let _ = incoming.stream.shutdown().await;
                });
            });
            let reservation = relay_client::reserve(&node, &relay)
                .await
                .context("reserving on the relay")?;
            for addr in &reservation.circuit_addrs {
                println!("{addr}");
            }
            // Keep it alive (refreshed before expiry) until Ctrl-C.
            let _kept = relay_client::keep_reservation(&node, relay);
            tokio::signal::ctrl_c().await?;
        }
        ["shout", addr, text] => {
            let addr: Multiaddr = addr.parse().context("peer address")?;
            let mut stream = node.dial_stream(&addr, PROTOCOL).await.context("dialing")?;
            stream.write_all(text.as_bytes()).await?;
            stream.shutdown().await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            println!("{answer}");
        }
        _ => bail!("usage: circuit-examples serve <relay addr> | shout <peer addr> <text>"),
    }
    Ok(())
}
