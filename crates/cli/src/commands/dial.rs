//! `circuit dial`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use circuit_net::{Multiaddr, Node};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::PIPE_PROTOCOL;
use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to: `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>` or a direct `…/p2p/<peer>`.
    addr: Multiaddr,
    /// Identity key file [default: a fresh key for this run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Extra trusted certificate(s) (PEM) for dialing secure WebSocket, e.g. a self-signed relay.
    #[arg(long, value_name = "FILE")]
    tls_trust: Option<PathBuf>,
    /// DHT peers to join to find a relay for the bare form `/p2p-circuit/p2p/<peer>` (repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Protocol to open instead of the pipe protocol.
    #[arg(long, default_value = PIPE_PROTOCOL)]
    protocol: String,
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let node = Node::new(
        super::identity(a.identity, None)?,
        super::peer_config(a.tls_trust.as_deref())?,
    );
    let conn = super::connect(&node, &a.addr, &a.bootstrap).await?;
    out.event(
        format!("connected to {} via {}", conn.peer(), conn.info().remote_addr),
        ev("connected", json!({"peer": conn.peer().to_string(), "remote_addr": conn.info().remote_addr.to_string(), "relayed": conn.info().relayed})),
    );
    let stream = node
        .open_stream(&conn, &a.protocol)
        .await
        .with_context(|| format!("opening {}", a.protocol))?;
    let (r, w) = tokio::io::split(stream);
    let up = super::pump(tokio::io::stdin(), w);
    let down = async {
        let mut stdout = tokio::io::stdout();
        let n = super::pump(r, &mut stdout).await;
        let _ = stdout.flush().await;
        n
    };
    let (sent, received) = tokio::join!(up, down);
    let sent = sent.context("sending")?;
    let received = received.context("receiving")?;
    out.event(
        format!("done: sent {sent} bytes, received {received} bytes"),
        ev("done", json!({"sent": sent, "received": received})),
    );
    Ok(ExitCode::SUCCESS)
}
