//! The relay-wide window budget, through a real circuit whose source hop has a round trip:
//! the dialer reaches the relay through a delaying TCP proxy (20 ms each way), so the relay
//! measures a 40 ms round trip on that connection and grows the relayed stream's window
//! for an upload — from the budget, by at most what it holds, and gives it all back when
//! the circuit ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use circuit_net::protocols::perf;
use circuit_net::relay_client;
use circuit_net::Multiaddr;
use circuit_proto::relay::Limit;
use circuit_relay::{Relay, RelayConfig};
use multiaddr::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{node, relay};

const ONE_WAY: Duration = Duration::from_millis(20);
const INITIAL_WINDOW: u64 = 256 * 1024;

/// Copies `from` to `to`, each chunk `delay` after it was read (a delay line: order kept,
/// at most 256 chunks of 64 KiB in flight).
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A TCP proxy on loopback to `target` that delays everything by `delay` each way.
async fn delay_proxy(target: SocketAddr, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((a, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(b) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = (a.set_nodelay(true), b.set_nodelay(true));
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                tokio::join!(delayed_copy(ar, bw, delay), delayed_copy(br, aw, delay));
            });
        }
    });
    addr
}

fn tcp_socket(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::new(ip.unwrap(), port.unwrap())
}

struct Run {
    /// Most of the budget in use at any sample during the upload.
    peak: u64,
    refused: u64,
    relay: Relay,
}

/// Uploads `bytes` from a dialer 20 ms (one way) from the relay to a listener next to it,
/// sampling the relay's window budget meanwhile; returns once the circuit is closed.
async fn upload_through_long_hop(window_budget: u64, bytes: u64) -> Run {
    let (relay_node, relay, relay_addr) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        window_budget,
        ..RelayConfig::default()
    })
    .await;
    let proxy = delay_proxy(tcp_socket(&relay_addr), ONE_WAY).await;

    let listener = node(&[]).await;
    perf::enable(&listener);
    let r = relay_client::reserve(&listener, &relay_addr).await.unwrap();
    assert!(r.granted.limit == Limit::UNLIMITED);

    let dialer = node(&[]).await;
    let via_proxy: Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}/p2p-circuit/p2p/{}",
        proxy.port(),
        relay_node.peer_id(),
        listener.peer_id()
    )
    .parse()
    .unwrap();
    let conn = dialer.dial(&via_proxy).await.unwrap();
    assert!(conn.info().relayed);

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, relay) = (peak.clone(), done.clone(), relay.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(relay.window_budget().in_use(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let result = perf::run(&dialer, &conn, bytes, 0).await.unwrap();
    assert_eq!(result.uploaded, bytes);
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    // The circuit ends with the dialer's connection: every granted byte comes back.
    conn.close();
    let t0 = Instant::now();
    while relay.num_circuits() > 0 || relay.window_budget().in_use() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "circuit closed? {} open; budget still in use: {}",
            relay.num_circuits(),
            relay.window_budget().in_use()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = relay.window_budget().refused();
    Run {
        peak: peak.load(Ordering::Relaxed),
        refused,
        relay,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_hop_windows_grow_from_the_budget_and_give_it_back() {
    let run = upload_through_long_hop(128 << 20, 48 << 20).await;
    // 256 KiB per 40 ms round trip is 6.4 MiB/s: the upload is window-bound, so the window
    // grows (a doubling at least) — and all of that growth came from the budget.
    assert!(
        run.peak >= INITIAL_WINDOW,
        "the relayed window never grew: peak budget use {}",
        run.peak
    );
    // One window grew (the upload's), within the relay's 16 MiB cap per stream.
    assert!(run.peak <= (16 << 20) - INITIAL_WINDOW, "{}", run.peak);
    assert_eq!(run.refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_holds_windows_back_and_is_counted() {
    let budget = 100 * 1024;
    let run = upload_through_long_hop(budget, 16 << 20).await;
    assert!(run.peak <= budget, "budget overdrawn: {}", run.peak);
    assert!(run.refused > 0, "no growth was refused");
    // And the relay's metrics say so.
    run.relay.refresh_metrics();
    let mut registry = prometheus_client::registry::Registry::default();
    run.relay.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert_eq!(
        value("circuit_relay_window_budget_limit_bytes"),
        budget as f64
    );
    assert_eq!(value("circuit_relay_window_budget_used_bytes"), 0.0);
    assert_eq!(
        value("circuit_relay_window_budget_refused_total"),
        run.refused as f64
    );
}
