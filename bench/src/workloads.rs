//! The in-process workloads: clients built on the circuit-net library
//! (set-up latency, many concurrent circuits, many reservations) and the
//! ceilings (raw TCP copy, direct perf server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use circuit_net::protocols::perf;
use circuit_net::{relay_client, Connection, Keypair, Multiaddr, Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procfs::{self, RssSampler};
use crate::stats::{median, percentile};

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
/// How often a long workload prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Deadline of one dial or reservation (far above any healthy figure).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A progress line every [`PROGRESS_EVERY`] while a long loop runs.
struct Progress {
    start: Instant,
    next: Instant,
}

impl Progress {
    fn new() -> Progress {
        let start = Instant::now();
        Progress {
            start,
            next: start + PROGRESS_EVERY,
        }
    }

    /// Logs `line(seconds so far)` if the interval has passed since the last line.
    fn tick(&mut self, line: impl FnOnce(f64) -> String) {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + PROGRESS_EVERY;
            crate::log(line(self.start.elapsed().as_secs_f64()));
        }
    }
}

fn fresh_node() -> Node {
    Node::new(Keypair::generate_ed25519(), NodeConfig::default())
}

fn close_all(node: &Node) {
    for c in node.connections() {
        c.close();
    }
}

/// Set-up latency figures, milliseconds.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Fresh node → relayed connection up (TCP + Noise + yamux to the relay, CONNECT, Noise + yamux over the circuit).
    pub connect_ms: Vec<f64>,
    /// Fresh node → first perf byte back (connect + stream negotiation + 1-byte request).
    pub first_byte_ms: Vec<f64>,
}

/// `n` circuit set-ups to `target`, each from a fresh node (fresh key, fresh
/// TCP connection to the relay), one after another; two warm-ups not counted.
pub async fn setup_latency(target: &Multiaddr, n: usize) -> anyhow::Result<Setup> {
    let mut out = Setup {
        connect_ms: Vec::with_capacity(n),
        first_byte_ms: Vec::with_capacity(n),
    };
    for i in 0..n + 2 {
        let node = fresh_node();
        let t0 = Instant::now();
        let conn = tokio::time::timeout(STEP_TIMEOUT, node.dial(target))
            .await
            .context("dial timed out")??;
        let connect = t0.elapsed();
        let r = tokio::time::timeout(STEP_TIMEOUT, perf::run(&node, &conn, 1, 1))
            .await
            .context("perf timed out")??;
        let first = connect + r.upload_time + r.time_to_first_byte.unwrap_or(r.download_time);
        close_all(&node);
        if i >= 2 {
            out.connect_ms.push(connect.as_secs_f64() * 1e3);
            out.first_byte_ms.push(first.as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}

/// Figures of the concurrent-circuits workload.
#[derive(Debug, Clone)]
pub struct Concurrent {
    /// Circuits that moved their data.
    pub circuits: usize,
    /// Circuits that could not be opened or failed.
    pub failed: usize,
    /// First failure, if any.
    pub error: Option<String>,
    /// All bytes moved (both directions) / wall time, MiB/s.
    pub aggregate_mib_s: f64,
    /// Per-circuit rates (both directions / its own time), MiB/s, sorted.
    pub per_circuit_mib_s: Vec<f64>,
    /// Relay CPU seconds per relayed GiB during the transfer.
    pub cpu_s_per_gib: f64,
    /// Relay peak RSS during the transfer, MiB.
    pub rss_peak_mib: f64,
}

/// Opens `n` circuits to `target` (one fresh node each, 16 set-ups at a time),
/// then runs a perf of `bytes` each way on all of them at once.
pub async fn concurrent(
    target: &Multiaddr,
    relay_pid: u32,
    n: usize,
    bytes: u64,
) -> anyhow::Result<Concurrent> {
    let gate = Arc::new(Semaphore::new(16));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (gate, target) = (gate.clone(), target.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let node = fresh_node();
            let conn = tokio::time::timeout(STEP_TIMEOUT, node.dial(&target))
                .await
                .context("dial timed out")??;
            Ok::<(Node, Connection), anyhow::Error>((node, conn))
        });
    }
    let mut ready = Vec::with_capacity(n);
    let mut failed = 0;
    let mut error = None;
    let mut progress = Progress::new();
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|x| x) {
            Ok(x) => ready.push(x),
            Err(e) => {
                failed += 1;
                error.get_or_insert(format!("{e:#}"));
            }
        }
        progress.tick(|secs| {
            format!(
                "  {} of {n} circuits open, {failed} failed, {secs:.0} s",
                ready.len()
            )
        });
    }
    if ready.is_empty() {
        bail!("no circuit could be opened: {}", error.unwrap_or_default());
    }
    let cpu0 = procfs::cpu_secs(relay_pid)?;
    let sampler = RssSampler::start(relay_pid);
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    // Every circuit moves its bytes while all the others do: allow for an aggregate
    // as low as 4 MiB/s (slowness must not make a benchmark fail).
    let all = 2 * bytes * ready.len() as u64;
    let limit = STEP_TIMEOUT + Duration::from_secs(all / (4 << 20));
    for (node, conn) in ready {
        set.spawn(async move {
            let r = tokio::time::timeout(limit, perf::run(&node, &conn, bytes, bytes))
                .await
                .context("perf timed out")?
                .context("perf");
            close_all(&node);
            let r = r?;
            let moved = (r.uploaded + r.downloaded) as f64;
            Ok::<(f64, f64), anyhow::Error>((moved, moved / MIB / r.total.as_secs_f64()))
        });
    }
    let mut rates = Vec::new();
    let mut total = 0.0;
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|x| x) {
            Ok((moved, rate)) => {
                total += moved;
                rates.push(rate);
            }
            Err(e) => {
                failed += 1;
                error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_secs(relay_pid)? - cpu0;
    let rss_peak_mib = sampler.finish().await;
    rates.sort_by(f64::total_cmp);
    Ok(Concurrent {
        circuits: rates.len(),
        failed,
        error,
        aggregate_mib_s: total / MIB / wall,
        per_circuit_mib_s: rates,
        cpu_s_per_gib: if total > 0.0 {
            cpu / (total / GIB)
        } else {
            f64::NAN
        },
        rss_peak_mib,
    })
}

/// Figures of the many-reservations workload.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Reservations asked for.
    pub asked: usize,
    /// Reservations granted and held.
    pub held: usize,
    /// First failure, if any.
    pub error: Option<String>,
    /// Relay RSS before, MiB.
    pub rss_before_mib: f64,
    /// Relay RSS with all reservations held, MiB.
    pub rss_after_mib: f64,
    /// (after − before) / held, KiB.
    pub rss_per_reservation_kib: f64,
    /// Fresh node → reservation granted, ms (includes dialing the relay).
    pub reserve_ms: Vec<f64>,
    /// Time to make them all, s.
    pub wall_s: f64,
    /// Relay CPU seconds spent making them.
    pub cpu_s: f64,
}

/// Makes `n` reservations on the relay (one fresh node and TCP connection each,
/// `parallel` at a time), holds them all, measures the relay's RSS, then drops them.
pub async fn reservations(
    relay: &Multiaddr,
    relay_pid: u32,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Scale> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_mib = procfs::rss_mib(relay_pid)?;
    let cpu0 = procfs::cpu_secs(relay_pid)?;
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let (gate, relay) = (gate.clone(), relay.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let node = fresh_node();
            let t = Instant::now();
            let r = tokio::time::timeout(STEP_TIMEOUT, relay_client::reserve(&node, &relay))
                .await
                .context("reservation timed out")?;
            match r {
                Ok(_) => Ok((node, t.elapsed().as_secs_f64() * 1e3)),
                Err(e) => {
                    close_all(&node);
                    Err(anyhow::Error::from(e))
                }
            }
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut reserve_ms = Vec::with_capacity(n);
    let mut error = None;
    let mut failed = 0;
    // A progress line every few seconds: thousands of reservations on a slow relay take
    // minutes (js-libp2p's: ~160 ms of its CPU each).
    let mut progress = Progress::new();
    while let Some(r) = set.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|x| x) {
            Ok((node, ms)) => {
                held.push(node);
                reserve_ms.push(ms);
            }
            Err(e) => {
                failed += 1;
                error.get_or_insert(format!("{e:#}"));
            }
        }
        progress.tick(|secs| {
            format!(
                "  {} of {n} reservations held, {failed} failed, {secs:.0} s",
                held.len()
            )
        });
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = procfs::cpu_secs(relay_pid)? - cpu0;
    // Let the relay finish its bookkeeping (identify etc.) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_mib = procfs::rss_mib(relay_pid)?;
    let still_up = held
        .iter()
        .filter(|n| n.connections().iter().any(|c| !c.is_closed()))
        .count();
    for node in &held {
        close_all(node);
    }
    let count = still_up;
    Ok(Scale {
        asked: n,
        held: count,
        error,
        rss_before_mib,
        rss_after_mib,
        rss_per_reservation_kib: if count > 0 {
            (rss_after_mib - rss_before_mib) * 1024.0 / count as f64
        } else {
            f64::NAN
        },
        reserve_ms,
        wall_s,
        cpu_s,
    })
}

/// Raw TCP loopback copy of `bytes` (64 KiB writes, one connection), MiB/s.
pub async fn tcp_copy(bytes: u64) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<u64, std::io::Error>(got)
    });
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let got = reader.await??;
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        bail!("tcp copy: sent {bytes}, received {got}");
    }
    Ok(bytes as f64 / MIB / secs)
}

/// A direct (unrelayed) perf server of ours in this process, on loopback.
pub async fn direct_server() -> anyhow::Result<(Node, Multiaddr)> {
    let node = Node::builder(Keypair::generate_ed25519())
        .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
        .build()
        .await?;
    perf::enable(&node);
    let addr = node
        .listen_addrs()
        .into_iter()
        .next()
        .context("direct server has no listen address")?;
    Ok((node.clone(), node.full_addr(&addr)))
}

/// min / median / max of sorted rates, and min/median.
pub fn fairness(sorted: &[f64]) -> (f64, f64, f64, f64) {
    let min = sorted.first().copied().unwrap_or(f64::NAN);
    let max = sorted.last().copied().unwrap_or(f64::NAN);
    let med = median(sorted);
    (min, med, max, min / med)
}

/// p50 and p99.
pub fn p50_p99(v: &[f64]) -> (f64, f64) {
    (percentile(v, 0.50), percentile(v, 0.99))
}
