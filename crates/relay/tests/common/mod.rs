//! Helpers shared by the relay's integration tests: nodes on loopback, a relay,
//! an echo protocol, a ping check, and the bounded waits every test uses so a
//! hang fails fast instead of stalling the suite.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circuit_net::protocols::ping::Pinger;
use circuit_net::relay_client;
use circuit_net::upgrade::UpgradeTimeouts;
use circuit_net::{Keypair, Multiaddr, Node, NodeConfig};
use circuit_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The echo protocol the listener serves in these tests.
pub const ECHO: &str = "/test/echo/1.0.0";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Short upgrade deadlines, so stalled peers are dropped within a test's time budget.
pub fn short_timeouts() -> NodeConfig {
    NodeConfig {
        timeouts: UpgradeTimeouts {
            negotiation: Duration::from_millis(800),
            handshake: Duration::from_millis(800),
        },
        dial_timeout: Duration::from_secs(3),
        ..NodeConfig::default()
    }
}

pub async fn node_with(config: NodeConfig, listen: &[&str]) -> Node {
    let mut b = Node::builder(Keypair::generate_ed25519()).config(config);
    for l in listen {
        b = b.listen_on(l.parse().unwrap());
    }
    b.build().await.unwrap()
}

pub async fn node(listen: &[&str]) -> Node {
    node_with(NodeConfig::default(), listen).await
}

/// A relay node on loopback TCP; returns it, the service and its full TCP address.
pub async fn relay_with(node_cfg: NodeConfig, config: RelayConfig) -> (Node, Relay, Multiaddr) {
    let n = node_with(node_cfg, &["/ip4/127.0.0.1/tcp/0"]).await;
    let r = Relay::start(&n, config);
    let tcp = n.full_addr(&n.listen_addrs()[0]);
    (n, r, tcp)
}

pub async fn relay(config: RelayConfig) -> (Node, Relay, Multiaddr) {
    relay_with(NodeConfig::default(), config).await
}

/// What an echo handler saw on one stream.
#[derive(Debug, Default, Clone)]
pub struct EchoLog {
    /// Every byte received, in order.
    pub received: Vec<u8>,
    /// How the stream ended: `None` while running, `Some(Ok(()))` at a clean EOF,
    /// `Some(Err(kind))` when a read or write failed.
    pub end: Option<Result<(), std::io::ErrorKind>>,
}

/// Serves [`ECHO`] on `node`: echoes every byte, logging what it saw per stream.
pub fn serve_echo(node: &Node) -> Arc<Mutex<Vec<EchoLog>>> {
    let logs: Arc<Mutex<Vec<EchoLog>>> = Arc::default();
    let l2 = logs.clone();
    node.handle(ECHO, move |mut inc| {
        let logs = l2.clone();
        let idx = {
            let mut g = logs.lock().unwrap();
            g.push(EchoLog::default());
            g.len() - 1
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let end = loop {
                let n = match inc.stream.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) => break Err(e.kind()),
                };
                logs.lock().unwrap()[idx]
                    .received
                    .extend_from_slice(&buf[..n]);
                if let Err(e) = inc.stream.write_all(&buf[..n]).await {
                    break Err(e.kind());
                }
            };
            if end.is_ok() {
                let _ = inc.stream.shutdown().await;
            }
            logs.lock().unwrap()[idx].end = Some(end);
        });
    });
    logs
}

/// Fails the test if `f` takes longer than `secs`.
pub async fn within<T>(secs: f64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs_f64(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {secs} s"),
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after `secs`.
pub async fn wait_until(secs: f64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A brand-new client dials `addr` and pings it: proof the node still serves.
pub async fn fresh_client_pings(addr: &Multiaddr) {
    within(5.0, "fresh client ping", async {
        let c = node(&[]).await;
        let conn = c.dial(addr).await.expect("fresh client dials");
        let mut p = Pinger::open(&c, &conn).await.expect("ping stream");
        p.ping(Duration::from_secs(3)).await.expect("ping answered");
        conn.close();
    })
    .await
}

/// A listener holding a reservation on the relay at `relay_addr`, serving [`ECHO`];
/// returns it, its echo logs and its circuit address.
pub async fn reserved_listener(
    relay_addr: &Multiaddr,
) -> (Node, Arc<Mutex<Vec<EchoLog>>>, Multiaddr) {
    let listener = node(&[]).await;
    let logs = serve_echo(&listener);
    let r = within(5.0, "reserve", relay_client::reserve(&listener, relay_addr))
        .await
        .expect("reservation granted");
    let circuit = r.circuit_addrs[0].clone();
    (listener, logs, circuit)
}

/// The circuit address of `target` through the relay at `relay_addr` (no reservation implied).
pub fn circuit_addr(relay_addr: &Multiaddr, target: &circuit_net::PeerId) -> Multiaddr {
    let mut a = relay_addr.clone();
    a.push(multiaddr::Protocol::P2pCircuit);
    a.push(multiaddr::Protocol::P2p(*target));
    a
}

/// 32 bytes unlikely to repeat across runs (no `rand` dependency here): the
/// std hasher's per-process random keys, mixed with the clock.
pub fn random_32() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes `payload` on `s` and half-closes while reading the echo to the end;
/// returns what came back.
pub async fn echo_through<S>(s: S, payload: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(s);
    let send = async {
        wr.write_all(payload).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    };
    tokio::join!(send, recv).1
}
