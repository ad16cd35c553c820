//! `bench`: runs our relay, rust-libp2p's and js-libp2p's side by side on
//! loopback and measures the same workloads through each with the same
//! clients (perf protocol): single-circuit throughput, set-up latency, relay
//! CPU per relayed GiB and RSS, many concurrent circuits, many reservations;
//! plus the ceilings (raw TCP copy, direct perf). Writes a markdown table
//! and JSON with the ratios ours/theirs. See `bench/README.md`.
#![forbid(unsafe_code)]

mod peers;
mod procfs;
mod report;
mod stats;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use peers::{Kind, Programs, RelayLimits};
use report::{RelayResult, Report};
use stats::median;

/// Relay benchmark harness (see bench/README.md).
#[derive(Parser, Debug, Clone)]
#[command(name = "bench")]
struct Args {
    /// Small sizes and counts: a smoke run of every workload in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Repetitions of the throughput and concurrency workloads (the median is reported)
    /// [default: 3; 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// Bytes each way for single-circuit throughput (suffixes K, M, G)
    /// [default: 256M; 8M with --quick].
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Circuit set-ups sampled for the latency percentiles [default: 50; 10 with --quick].
    #[arg(long)]
    setups: Option<usize>,
    /// Concurrent circuits [default: 100; 8 with --quick].
    #[arg(long)]
    circuits: Option<usize>,
    /// Bytes each way per concurrent circuit [default: 4M; 256K with --quick].
    #[arg(long, value_parser = parse_size)]
    circuit_size: Option<u64>,
    /// Reservations held at once in the scale workload [default: 10000; 50 with --quick].
    /// Needs about that many open files in this process and in the relay (see `ulimit -n`).
    #[arg(long)]
    reservations: Option<usize>,
    /// Reservations being made at the same time in the scale workload.
    #[arg(long, default_value_t = 32)]
    reservation_parallel: usize,
    /// Relays to compare, comma-separated: ours,rust,js.
    #[arg(long, default_value = "ours,rust,js", value_delimiter = ',')]
    relays: Vec<String>,
    /// Workloads to run, comma-separated: ceilings,throughput,setup,concurrent,scale.
    #[arg(
        long,
        default_value = "ceilings,throughput,setup,concurrent,scale",
        value_delimiter = ','
    )]
    only: Vec<String>,
    /// Repository root (where target/ and interop/ are).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where to write latest.md and latest.json [default: <root>/bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only; write no results files.
    #[arg(long)]
    no_write: bool,
    /// Exit with status 1 if any workload failed (not for slowness: only errors).
    #[arg(long)]
    strict: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size {s:?}"))
}

/// The settings in force after `--quick` defaults are applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    quick: bool,
    runs: usize,
    size: u64,
    setups: usize,
    circuits: usize,
    circuit_size: u64,
    reservations: usize,
    reservation_parallel: usize,
    relays: Vec<String>,
    workloads: Vec<String>,
}

impl Config {
    fn from(a: &Args) -> Config {
        let q = a.quick;
        Config {
            quick: q,
            runs: a.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            size: a.size.unwrap_or(if q { 8 << 20 } else { 256 << 20 }),
            setups: a.setups.unwrap_or(if q { 10 } else { 50 }).max(1),
            circuits: a.circuits.unwrap_or(if q { 8 } else { 100 }).max(1),
            circuit_size: a
                .circuit_size
                .unwrap_or(if q { 256 << 10 } else { 4 << 20 }),
            reservations: a.reservations.unwrap_or(if q { 50 } else { 10_000 }).max(1),
            reservation_parallel: a.reservation_parallel,
            relays: a.relays.clone(),
            workloads: a.only.clone(),
        }
    }

    fn runs(&self, w: &str) -> bool {
        self.workloads.iter().any(|x| x == w)
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run(args))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let cfg = Config::from(&args);
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let root = root.canonicalize().unwrap_or(root);
    let tmp = std::env::temp_dir().join(format!("circuit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let progs = Programs {
        circuit: root.join("target/release/circuit"),
        rust_peer: root.join("interop/rust-libp2p-peer/target/release/rust-libp2p-peer"),
        js_peer: root.join("interop/js/run-peer.sh"),
        tmp: tmp.clone(),
    };
    if let Err(e) = progs.available(Kind::Ours) {
        anyhow::bail!("{e}: build it with `cargo build --release -p circuit-cli`");
    }
    let mut report = Report::new(cfg.clone());
    let mut kinds = Vec::new();
    for r in &cfg.relays {
        let Some(k) = Kind::parse(r) else {
            anyhow::bail!("unknown relay {r:?} (ours, rust, js)");
        };
        match progs.available(k) {
            Ok(()) => kinds.push(k),
            Err(e) => {
                log(format!("skipping the {} relay: {e}", k.name()));
                report.note(format!("{} relay skipped: {e}", k.name()));
            }
        }
    }
    for k in &kinds {
        report.relays.insert(*k, RelayResult::default());
    }
    if let Some(lim) = procfs::nofile_limit() {
        if cfg.runs("scale") && (lim as usize) < cfg.reservations + 256 {
            report.note(format!(
                "open-file limit {lim} is below the {} reservations asked for: raise it with `ulimit -n`",
                cfg.reservations
            ));
        }
    }
    log(format!("config: {cfg:?}; scratch dir {}", tmp.display()));
    let started = Instant::now();

    if cfg.runs("ceilings") {
        ceilings(&cfg, &progs, &mut report).await;
    }
    if cfg.runs("throughput") || cfg.runs("setup") || cfg.runs("concurrent") {
        transfers(&cfg, &progs, &kinds, &mut report).await;
    }
    if cfg.runs("scale") {
        scale(&cfg, &progs, &kinds, &mut report).await;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();

    let md = report.markdown();
    println!("{md}");
    if !args.no_write {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| root.join("bench/results"));
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("latest.md"), &md)?;
        let json = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(out.join("latest.json"), json + "\n")?;
        log(format!(
            "wrote {0}/latest.md and {0}/latest.json",
            out.display()
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let failed = report.has_errors();
    Ok(if failed && args.strict {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// Raw TCP copy and a direct perf between two of our nodes (server in this
/// process, client `circuit perf` like the relayed runs).
async fn ceilings(cfg: &Config, progs: &Programs, report: &mut Report) {
    log("ceilings: raw TCP copy");
    let mut tcp = Vec::new();
    for _ in 0..cfg.runs {
        match workloads::tcp_copy(cfg.size * 2).await {
            Ok(r) => tcp.push(r),
            Err(e) => report.note(format!("tcp copy: {e:#}")),
        }
    }
    report.ceiling("tcp_mib_s", median(&tcp), &tcp);
    log("ceilings: direct perf");
    match workloads::direct_server().await {
        Ok((node, addr)) => {
            let (mut up, mut down) = (Vec::new(), Vec::new());
            for _ in 0..cfg.runs {
                match peers::run_perf_client(progs, &addr, cfg.size).await {
                    Ok(f) => {
                        up.push(f.up_mib_s);
                        down.push(f.down_mib_s);
                    }
                    Err(e) => report.note(format!("direct perf: {e:#}")),
                }
            }
            report.ceiling("direct_up_mib_s", median(&up), &up);
            report.ceiling("direct_down_mib_s", median(&down), &down);
            node.shutdown(std::time::Duration::ZERO).await;
        }
        Err(e) => report.note(format!("direct perf server: {e:#}")),
    }
}

/// Throughput, set-up latency and concurrent circuits, with all relays (and
/// one perf server per relay) running at once so runs can alternate between them.
async fn transfers(cfg: &Config, progs: &Programs, kinds: &[Kind], report: &mut Report) {
    let lim = RelayLimits {
        reservations: 64,
        circuits: cfg.circuits,
    };
    let mut up = Vec::new();
    for &k in kinds {
        let started = async {
            let relay = peers::start_relay(progs, k, lim).await?;
            let server = peers::start_server(progs, &relay).await?;
            Ok::<_, anyhow::Error>((relay, server))
        };
        match started.await {
            Ok((relay, server)) => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if let Ok(rss) = procfs::rss_mib(relay.proc.pid) {
                    report.set(k, "rss_idle_mib", rss, &[rss]);
                }
                log(format!("{} relay at {}", k.name(), relay.addr));
                up.push((k, relay, server));
            }
            Err(e) => report.error(k, format!("{e:#}")),
        }
    }

    if cfg.runs("throughput") {
        let mut samples: BTreeMap<(Kind, &str), Vec<f64>> = BTreeMap::new();
        for run in 0..cfg.runs {
            for (k, relay, server) in &up {
                log(format!(
                    "throughput run {}/{} via {}",
                    run + 1,
                    cfg.runs,
                    k.name()
                ));
                let pid = relay.proc.pid;
                let cpu0 = procfs::cpu_secs(pid);
                let sampler = procfs::RssSampler::start(pid);
                let r = peers::run_perf_client(progs, &server.addr, cfg.size).await;
                let cpu1 = procfs::cpu_secs(pid);
                let peak = sampler.finish().await;
                match (r, cpu0, cpu1) {
                    (Ok(f), Ok(c0), Ok(c1)) => {
                        let gib = (2 * cfg.size) as f64 / (1u64 << 30) as f64;
                        for (m, v) in [
                            ("up_mib_s", f.up_mib_s),
                            ("down_mib_s", f.down_mib_s),
                            ("cpu_s_per_gib", (c1 - c0) / gib),
                            ("rss_peak_mib", peak),
                            ("client_connect_ms", f.connect_ms),
                        ] {
                            samples.entry((*k, m)).or_default().push(v);
                        }
                    }
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        report.error(*k, format!("throughput: {e:#}"))
                    }
                }
            }
        }
        for ((k, m), v) in samples {
            report.set(k, m, median(&v), &v);
        }
    }

    if cfg.runs("setup") {
        for (k, _, server) in &up {
            log(format!("{} set-ups via {}", cfg.setups, k.name()));
            match workloads::setup_latency(&server.addr, cfg.setups).await {
                Ok(s) => {
                    let (c50, c99) = workloads::p50_p99(&s.connect_ms);
                    let (f50, f99) = workloads::p50_p99(&s.first_byte_ms);
                    report.set(*k, "connect_p50_ms", c50, &s.connect_ms);
                    report.set(*k, "connect_p99_ms", c99, &[]);
                    report.set(*k, "setup_p50_ms", f50, &s.first_byte_ms);
                    report.set(*k, "setup_p99_ms", f99, &[]);
                }
                Err(e) => report.error(*k, format!("set-up latency: {e:#}")),
            }
        }
    }

    if cfg.runs("concurrent") {
        let mut samples: BTreeMap<(Kind, &str), Vec<f64>> = BTreeMap::new();
        for run in 0..cfg.runs {
            for (k, relay, server) in &up {
                log(format!(
                    "{} concurrent circuits, run {}/{} via {}",
                    cfg.circuits,
                    run + 1,
                    cfg.runs,
                    k.name()
                ));
                match workloads::concurrent(
                    &server.addr,
                    relay.proc.pid,
                    cfg.circuits,
                    cfg.circuit_size,
                )
                .await
                {
                    Ok(c) => {
                        if let Some(e) = &c.error {
                            report.error(
                                *k,
                                format!("concurrent: {} circuits failed, first: {e}", c.failed),
                            );
                        }
                        let (min, med, max, fair) = workloads::fairness(&c.per_circuit_mib_s);
                        for (m, v) in [
                            ("conc_ok", c.circuits as f64),
                            ("conc_agg_mib_s", c.aggregate_mib_s),
                            ("conc_min_mib_s", min),
                            ("conc_median_mib_s", med),
                            ("conc_max_mib_s", max),
                            ("conc_fairness", fair),
                            ("conc_cpu_s_per_gib", c.cpu_s_per_gib),
                            ("conc_rss_peak_mib", c.rss_peak_mib),
                        ] {
                            samples.entry((*k, m)).or_default().push(v);
                        }
                    }
                    Err(e) => report.error(*k, format!("concurrent: {e:#}")),
                }
            }
        }
        for ((k, m), v) in samples {
            report.set(k, m, median(&v), &v);
        }
    }
    // Dropping the processes kills them (kill_on_drop).
    drop(up);
}

/// Many reservations held at once, one fresh relay each.
async fn scale(cfg: &Config, progs: &Programs, kinds: &[Kind], report: &mut Report) {
    let lim = RelayLimits {
        reservations: cfg.reservations + 16,
        circuits: 16,
    };
    for &k in kinds {
        log(format!(
            "{} reservations on the {} relay",
            cfg.reservations,
            k.name()
        ));
        let relay = match peers::start_relay(progs, k, lim).await {
            Ok(r) => r,
            Err(e) => {
                report.error(k, format!("scale: {e:#}"));
                continue;
            }
        };
        match workloads::reservations(
            &relay.addr,
            relay.proc.pid,
            cfg.reservations,
            cfg.reservation_parallel,
        )
        .await
        {
            Ok(s) => {
                if let Some(e) = &s.error {
                    report.error(
                        k,
                        format!(
                            "scale: {} of {} reservations held; first failure: {e}",
                            s.held, s.asked
                        ),
                    );
                }
                let (p50, p99) = workloads::p50_p99(&s.reserve_ms);
                report.set(k, "scale_held", s.held as f64, &[]);
                report.set(
                    k,
                    "scale_rss_mib",
                    s.rss_after_mib,
                    &[s.rss_before_mib, s.rss_after_mib],
                );
                report.set(k, "scale_rss_per_res_kib", s.rss_per_reservation_kib, &[]);
                report.set(k, "scale_reserve_p50_ms", p50, &[]);
                report.set(k, "scale_reserve_p99_ms", p99, &[]);
                report.set(
                    k,
                    "scale_cpu_ms_per_res",
                    s.cpu_s * 1e3 / s.reserve_ms.len().max(1) as f64,
                    &[],
                );
                report.set(k, "scale_wall_s", s.wall_s, &[]);
            }
            Err(e) => report.error(k, format!("scale: {e:#}")),
        }
        drop(relay);
        // Give the kernel a moment to tear the sockets down before the next relay.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
