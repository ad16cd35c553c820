//! One module per subcommand; shared helpers here.

pub mod dht;
pub mod dial;
pub mod listen;
pub mod perf;
pub mod ping;
pub mod relay;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use circuit_net::Keypair;
use serde_json::json;

use crate::output::Output;

/// The pipe protocol: a byte stream joined to stdin/stdout.
pub const PIPE_PROTOCOL: &str = "/circuit/pipe/1.0.0";

/// `$XDG_DATA_HOME/circuit` or `~/.local/share/circuit`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("circuit");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/share/circuit");
    }
    PathBuf::from(".circuit")
}

/// Loads (or creates) the identity at `path`, else at `default_name` in the data dir;
/// with neither, a fresh ephemeral key.
pub fn identity(path: Option<PathBuf>, default_name: Option<&str>) -> anyhow::Result<Keypair> {
    let path = match (path, default_name) {
        (Some(p), _) => p,
        (None, Some(name)) => data_dir().join(name),
        (None, None) => return Ok(Keypair::generate_ed25519()),
    };
    let (kp, created) = circuit_wire::keys::load_or_create_identity(&path)
        .with_context(|| format!("identity file {}", path.display()))?;
    if created {
        tracing::info!(path = %path.display(), "created a new identity");
    }
    Ok(kp)
}

/// Node settings for the peer-side commands: `--tls-trust` adds certificates
/// (PEM) to the roots used to dial secure WebSocket (e.g. a self-signed relay).
pub fn peer_config(tls_trust: Option<&std::path::Path>) -> anyhow::Result<circuit_net::NodeConfig> {
    let mut cfg = circuit_net::NodeConfig::default();
    if let Some(path) = tls_trust {
        let certs = circuit_net::tls::load_certs(path).context("--tls-trust")?;
        cfg.tls_client = circuit_net::tls::client_config(&certs).context("--tls-trust")?;
    }
    Ok(cfg)
}

/// Connects to `addr`. The bare form `/p2p-circuit/p2p/<peer>` names no relay: with
/// `bootstrap` peers we join the DHT, find relays (providers of `/libp2p/relay`) and
/// try a circuit through each until one reaches the peer.
pub async fn connect(
    node: &circuit_net::Node,
    addr: &circuit_net::Multiaddr,
    bootstrap: &[circuit_net::Multiaddr],
) -> anyhow::Result<circuit_net::Connection> {
    let bare = matches!(circuit_wire::addr::parse_circuit(addr), Ok(Some(c)) if c.relay.is_none());
    if !bare || bootstrap.is_empty() {
        return node.dial(addr).await.with_context(|| {
            if bare {
                format!("dialing {addr}: no relay named; give --bootstrap <dht peer> to find one")
            } else {
                format!("dialing {addr}")
            }
        });
    }
    let Ok(Some(target)) = circuit_wire::addr::parse_circuit(addr).map(|c| c.map(|c| c.target))
    else {
        anyhow::bail!("bad address {addr}");
    };
    use circuit_net::protocols::kad::{namespace_key, Kad, KadConfig, RELAY_NAMESPACE};
    let kad = Kad::start(
        node,
        KadConfig {
            server: false,
            ..Default::default()
        },
    );
    kad.bootstrap(bootstrap).await;
    let relays = kad.get_providers(namespace_key(RELAY_NAMESPACE)).await;
    let mut errors = Vec::new();
    for relay in &relays {
        for a in relay
            .addrs
            .iter()
            .filter(|a| !circuit_wire::addr::is_circuit(a))
        {
            let relay_addr = circuit_wire::addr::with_p2p(a.clone(), relay.id);
            let attempt = async {
                let conn = node.dial(&relay_addr).await?;
                circuit_net::relay_client::connect_via(node, &conn, target).await
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{relay_addr}: {e}")),
            }
        }
    }
    anyhow::bail!(
        "no relay reached {target} ({} relays found in the DHT){}",
        relays.len(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(": {}", errors.join("; "))
        }
    )
}

/// `circuit id`.
pub fn id(path: Option<PathBuf>, out: Output) -> anyhow::Result<ExitCode> {
    let kp = identity(path, Some("peer.key"))?;
    let id = kp.public().to_peer_id();
    out.result(id.to_string(), json!({"peer_id": id.to_string()}));
    Ok(ExitCode::SUCCESS)
}

/// Copies `from` into `to` until EOF, then half-closes `to`; returns the byte count.
pub async fn pump<R, W>(mut from: R, mut to: W) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
    }
    to.shutdown().await?;
    Ok(total)
}
