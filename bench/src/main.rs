//! `bench`: runs our relay, rust-libp2p's and js-libp2p's side by side on
//! loopback and measures the same workloads through each with the same
//! clients (perf protocol): single-circuit throughput (with our perf peers and
//! with rust-libp2p's), set-up latency, relay CPU per relayed GiB and RSS, many
//! concurrent circuits, many reservations; plus the ceilings (raw TCP copy,
//! direct perf, the AEAD floor). Writes a markdown table and JSON with the
//! ratios ours/theirs. See `bench/README.md`.
#![forbid(unsafe_code)]

mod aead;
mod peers;
mod procfs;
mod profile;
mod report;
mod stats;
mod wan;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use circuit_proto::noise::aead::Implementation;
use clap::Parser;

use peers::{Client, Kind, Programs, RelayLimits};
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
    /// Perf client and server sets of the single-circuit workload, comma-separated:
    /// ours (`circuit perf` → `circuit listen`), rust (rust-libp2p's perf client →
    /// rust-libp2p's perf server). The rust set also adds a direct rust-libp2p ceiling.
    #[arg(long, default_value = "ours,rust", value_delimiter = ',')]
    clients: Vec<String>,
    /// Bytes sealed and opened for the AEAD floor, in 65 519-byte frames
    /// [default: 256M; 16M with --quick].
    #[arg(long, value_parser = parse_size)]
    aead_size: Option<u64>,
    /// One-way delay of the relay's link in the wan workload, ms: each of the circuit's two
    /// hops then has a round trip of twice this.
    #[arg(long, default_value_t = 25)]
    wan_delay: u64,
    /// Bytes each way through each relay in the wan workload [default: 64M; 2M with --quick].
    #[arg(long, value_parser = parse_size)]
    wan_size: Option<u64>,
    /// Workloads to run, comma-separated: ceilings,throughput,setup,concurrent,scale,profile,wan
    /// (profile: `perf record` on each relay during a single-circuit transfer; needs `perf`.
    /// wan: one circuit through each relay behind a delay line, in network namespaces of the
    /// repository's test bed; needs root).
    #[arg(
        long,
        default_value = "ceilings,throughput,setup,concurrent,scale,profile,wan",
        value_delimiter = ','
    )]
    only: Vec<String>,
    /// Repository root (where target/ and interop/ are).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory to write the results in [default: <root>/bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Base name of the results files: <out>/<name>.md and <out>/<name>.json.
    #[arg(long, default_value = "latest", value_parser = parse_name)]
    name: String,
    /// Print only; write no results files.
    #[arg(long)]
    no_write: bool,
    /// Exit with status 1 if any workload failed (not for slowness: only errors).
    #[arg(long)]
    strict: bool,
    /// Run even if target/release/circuit is older than the sources (it measures the
    /// code as it was when last built).
    #[arg(long)]
    allow_stale: bool,
}

/// The newest `.rs`, `Cargo.toml` or `Cargo.lock` in or under `dirs` that is newer than
/// `bin`.
fn newer_source(bin: &std::path::Path, dirs: &[PathBuf]) -> Option<PathBuf> {
    fn walk(
        dir: &std::path::Path,
        since: std::time::SystemTime,
        best: &mut Option<(std::time::SystemTime, PathBuf)>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                if name != "target" && name != "node_modules" {
                    walk(&p, since, best);
                }
                continue;
            }
            let source = p.extension().is_some_and(|x| x == "rs")
                || name == "Cargo.toml"
                || name == "Cargo.lock";
            if let (true, Ok(m)) = (source, e.metadata().and_then(|m| m.modified())) {
                if m > since && best.as_ref().is_none_or(|(t, _)| m > *t) {
                    *best = Some((m, p));
                }
            }
        }
    }
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let mut best = None;
    for d in dirs {
        match std::fs::metadata(d).and_then(|m| m.modified()) {
            Ok(m) if d.is_file() && m > built => best = Some((m, d.clone())),
            _ => walk(d, built, &mut best),
        }
    }
    best.map(|(_, p)| p)
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

/// A results file base name: letters, digits, `-`, `_`, `.`; no path.
fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "bad name {s:?}: use letters, digits, '-', '_', '.' (a file name, not a path)"
        ))
    }
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
    clients: Vec<String>,
    aead_size: u64,
    wan_delay: u64,
    wan_size: u64,
    workloads: Vec<String>,
    /// Base name of the results files.
    name: String,
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
            clients: a.clients.clone(),
            aead_size: a.aead_size.unwrap_or(if q { 16 << 20 } else { 256 << 20 }),
            wan_delay: a.wan_delay,
            wan_size: a.wan_size.unwrap_or(if q { 2 << 20 } else { 64 << 20 }),
            workloads: a.only.clone(),
            name: a.name.clone(),
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

pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let cfg = Config::from(&args);
    // Before anything opens a file: the scale workloads need one descriptor per
    // reservation or circuit here and in the relay, and the processes started
    // below inherit the raised limit.
    let nofile = procfs::raise_nofile();
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
    // What the binary is built from (not the crates' tests, which cargo does not rebuild
    // it for).
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("src"))
        .collect();
    sources.push(root.join("Cargo.lock"));
    if let Some(newer) = newer_source(&progs.circuit, &sources) {
        let msg = format!(
            "{} is older than {}: the results would be those of the code as last built; \
             run `cargo build --release -p circuit-cli` first",
            progs.circuit.display(),
            newer.display()
        );
        if !args.allow_stale {
            anyhow::bail!("{msg} (or pass --allow-stale)");
        }
        log(format!("warning: {msg}"));
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
    let mut clients = Vec::new();
    for c in &cfg.clients {
        let Some(cl) = Client::parse(c) else {
            anyhow::bail!("unknown client set {c:?} (ours, rust)");
        };
        match progs.available(cl.needs()) {
            Ok(()) if !clients.contains(&cl) => clients.push(cl),
            Ok(()) => {}
            Err(e) => {
                log(format!("skipping the {} perf peers: {e}", cl.name()));
                report.note(format!("{} perf peers skipped: {e}", cl.name()));
            }
        }
    }
    match nofile {
        Ok((before, now)) => log(format!("open-file limit: {before} raised to {now}")),
        Err(e) => report.note(format!("could not raise the open-file limit: {e:#}")),
    }
    if let Some(lim) = procfs::nofile_limit() {
        let need = if cfg.runs("scale") {
            cfg.reservations
        } else {
            0
        }
        .max(if cfg.runs("concurrent") {
            cfg.circuits
        } else {
            0
        });
        if (lim as usize) < need + 256 {
            report.note(format!(
                "open-file limit {lim} (the hard limit) is below the {need} connections asked for: \
                 raise the hard limit (`ulimit -Hn`, or LimitNOFILE for a service)"
            ));
        }
    }
    log(format!("config: {cfg:?}; scratch dir {}", tmp.display()));
    let out = (!args.no_write).then(|| {
        args.out
            .clone()
            .unwrap_or_else(|| root.join("bench/results"))
    });
    if let Some(out) = &out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("creating the results directory {}", out.display()))?;
    }
    let started = Instant::now();

    if cfg.runs("ceilings") || cfg.runs("throughput") || cfg.runs("concurrent") {
        // Cheap (well under a second per 256 MiB), and the CPU rows are compared with it.
        aead_floor(&cfg, &mut report).await;
    }
    if cfg.runs("ceilings") {
        ceilings(&cfg, &progs, &clients, &mut report).await;
    }
    if cfg.runs("throughput") || cfg.runs("setup") || cfg.runs("concurrent") {
        transfers(&cfg, &progs, &kinds, &clients, &mut report).await;
    }
    if cfg.runs("scale") {
        scale(&cfg, &progs, &kinds, &mut report).await;
    }
    if cfg.runs("profile") {
        profile(&cfg, &progs, &kinds, &mut report, out.as_deref()).await;
    }
    if cfg.runs("wan") {
        wan(&cfg, &root, &progs, &kinds, &mut report).await;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.derive();

    let md = report.markdown();
    println!("{md}");
    if let Some(out) = &out {
        let (md_path, json_path) = (
            out.join(format!("{}.md", cfg.name)),
            out.join(format!("{}.json", cfg.name)),
        );
        std::fs::write(&md_path, &md)?;
        let json = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(&json_path, json + "\n")?;
        log(format!(
            "wrote {} and {}",
            md_path.display(),
            json_path.display()
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

/// Samples of the AEAD floor per implementation; the least is kept.
const AEAD_SAMPLES: usize = 5;

/// ChaCha20-Poly1305 seal + open of `--aead-size` bytes on one thread (see `aead.rs`),
/// with each implementation built in, [`AEAD_SAMPLES`] times each (interleaved). A floor is
/// a least cost, so each implementation's figure is its least CPU time: on a shared machine
/// a sample only ever comes out slower than the code is (a noisy neighbour once made one
/// sample 30 % slower). The fastest implementation's figure is the floor.
async fn aead_floor(cfg: &Config, report: &mut Report) {
    let size = cfg.aead_size;
    let imps = Implementation::available();
    log(format!(
        "ceilings: AEAD floor, seal + open of {} MiB, {AEAD_SAMPLES} times with each of {}",
        size >> 20,
        imps.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    ));
    let mut best: Vec<Option<aead::AeadFloor>> = vec![None; imps.len()];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); imps.len()];
    for _ in 0..AEAD_SAMPLES {
        for (i, &imp) in imps.iter().enumerate() {
            match tokio::task::spawn_blocking(move || aead::measure(size, aead::FRAME, imp)).await {
                Ok(Ok(f)) => {
                    samples[i].push(f.cpu_s_per_gib());
                    if best[i].is_none_or(|b| f.cpu_s_per_gib() < b.cpu_s_per_gib()) {
                        best[i] = Some(f);
                    }
                }
                Ok(Err(e)) => report.note(format!("AEAD floor with {imp}: {e:#}")),
                Err(e) => report.note(format!("AEAD floor with {imp}: {e}")),
            }
        }
    }
    let mut floor: Option<(aead::AeadFloor, Implementation)> = None;
    for (i, &imp) in imps.iter().enumerate() {
        let Some(f) = best[i] else { continue };
        log(format!(
            "AEAD {imp}: least of {} samples {:.3} s per GiB (all: {})",
            samples[i].len(),
            f.cpu_s_per_gib(),
            samples[i]
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        report.ceiling(
            &format!("aead_{}_s_per_gib", imp.name()),
            f.cpu_s_per_gib(),
            &samples[i],
        );
        if floor.is_none_or(|(b, _)| f.cpu_s_per_gib() < b.cpu_s_per_gib()) {
            floor = Some((f, imp));
        }
    }
    if let Some((f, imp)) = floor {
        report.ceiling("aead_s_per_gib", f.cpu_s_per_gib(), &[f.cpu_s_per_gib()]);
        report.ceiling(
            "aead_wall_s_per_gib",
            f.wall_s_per_gib(),
            &[f.wall_s_per_gib()],
        );
        report.note(format!(
            "AEAD floor: {imp} was the fastest ChaCha20-Poly1305 here (least of {AEAD_SAMPLES} samples); our relay uses {} (CIRCUIT_AEAD picks another)",
            circuit_proto::noise::aead::implementation()
        ));
    }
}

/// Raw TCP copy and direct perf: between two of our nodes (server in this
/// process, client `circuit perf` like the relayed runs) and, with the rust
/// client set, between rust-libp2p's perf client and server.
async fn ceilings(cfg: &Config, progs: &Programs, clients: &[Client], report: &mut Report) {
    log("ceilings: raw TCP copy");
    let mut tcp = Vec::new();
    for _ in 0..cfg.runs {
        match workloads::tcp_copy(cfg.size * 2).await {
            Ok(r) => tcp.push(r),
            Err(e) => report.note(format!("tcp copy: {e:#}")),
        }
    }
    report.ceiling("tcp_mib_s", median(&tcp), &tcp);
    for &client in clients {
        log(format!(
            "ceilings: direct perf, {} perf peers",
            client.name()
        ));
        let server = match client {
            Client::Ours => workloads::direct_server()
                .await
                .map(|(node, addr)| (Some(node), None, addr)),
            Client::Rust => peers::start_rust_server(progs, None)
                .await
                .map(|s| (None, Some(s.proc), s.addr)),
        };
        let (node, proc, addr) = match server {
            Ok(x) => x,
            Err(e) => {
                report.note(format!("direct perf server ({}): {e:#}", client.name()));
                continue;
            }
        };
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..cfg.runs {
            match peers::run_perf_client(progs, client, &addr, cfg.size).await {
                Ok(f) => {
                    up.push(f.up_mib_s);
                    down.push(f.down_mib_s);
                }
                Err(e) => report.note(format!("direct perf ({}): {e:#}", client.name())),
            }
        }
        report.ceiling(&client.key("direct_up_mib_s"), median(&up), &up);
        report.ceiling(&client.key("direct_down_mib_s"), median(&down), &down);
        if let Some(node) = node {
            node.shutdown(std::time::Duration::ZERO).await;
        }
        drop(proc);
    }
}

/// js-libp2p's `maxOutboundStopStreams` default (circuit relay server, per connection).
const JS_MAX_STOP_STREAMS: usize = 300;

/// Why circuits through rust-libp2p's relay fail when many are opened to one peer at once.
const RUST_STOP_CAP: &str = "rust-libp2p's relay negotiates at most 10 outbound stop streams per \
    connection at once (MAX_CONCURRENT_STREAMS_PER_CONNECTION in libp2p-relay 0.22, not configurable) \
    and drops the rest (\"Dropping outbound stream because we are at capacity\"): with 16 set-ups at a \
    time to one server, the CONNECTs of the dropped ones are never answered";

/// Throughput, set-up latency and concurrent circuits, with all relays (and
/// one perf server per relay) running at once so runs can alternate between them.
async fn transfers(
    cfg: &Config,
    progs: &Programs,
    kinds: &[Kind],
    clients: &[Client],
    report: &mut Report,
) {
    let lim = RelayLimits::for_workload(64, cfg.circuits);
    // Our server serves every workload here; rust-libp2p's only single-circuit throughput.
    let mut sets = vec![Client::Ours];
    if cfg.runs("throughput") && clients.contains(&Client::Rust) {
        sets.push(Client::Rust);
    }
    let mut up = Vec::new();
    for &k in kinds {
        let relay = match peers::start_relay(progs, k, lim).await {
            Ok(r) => r,
            Err(e) => {
                report.error(k, format!("{e:#}"));
                continue;
            }
        };
        let mut servers = BTreeMap::new();
        for &c in &sets {
            match peers::start_server(progs, &relay, c).await {
                Ok(s) => {
                    servers.insert(c, s);
                }
                Err(e) => report.error(k, format!("{e:#}")),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Ok(rss) = procfs::rss_mib(relay.proc.pid) {
            report.set(k, "rss_idle_mib", rss, &[rss]);
        }
        log(format!("{} relay at {}", k.name(), relay.addr));
        up.push((k, relay, servers));
    }

    if cfg.runs("throughput") {
        let mut samples: BTreeMap<(Kind, String), Vec<f64>> = BTreeMap::new();
        for run in 0..cfg.runs {
            for (k, relay, servers) in &up {
                for &client in clients {
                    let Some(server) = servers.get(&client) else {
                        continue;
                    };
                    log(format!(
                        "throughput run {}/{} via {}, {} perf peers",
                        run + 1,
                        cfg.runs,
                        k.name(),
                        client.name()
                    ));
                    let pid = relay.proc.pid;
                    let cpu0 = procfs::cpu_secs(pid);
                    let sampler = procfs::RssSampler::start(pid);
                    let r = peers::run_perf_client(progs, client, &server.addr, cfg.size).await;
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
                                samples.entry((*k, client.key(m))).or_default().push(v);
                            }
                        }
                        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => report.error(
                            *k,
                            format!("throughput ({} perf peers): {e:#}", client.name()),
                        ),
                    }
                }
            }
        }
        for ((k, m), v) in samples {
            report.set(k, &m, median(&v), &v);
        }
    }

    if cfg.runs("setup") {
        for (k, _, servers) in &up {
            let Some(server) = servers.get(&Client::Ours) else {
                continue;
            };
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
        if cfg.circuits > JS_MAX_STOP_STREAMS && up.iter().any(|(k, _, _)| *k == Kind::Js) {
            report.note(format!(
                "js-libp2p's relay allows {JS_MAX_STOP_STREAMS} outbound stop streams per connection \
                 (maxOutboundStopStreams) and all {} circuits go to one server: the rest fail on it",
                cfg.circuits
            ));
        }
        let mut samples: BTreeMap<(Kind, &str), Vec<f64>> = BTreeMap::new();
        let mut rust_cap_noted = false;
        for run in 0..cfg.runs {
            for (k, relay, servers) in &up {
                let Some(server) = servers.get(&Client::Ours) else {
                    continue;
                };
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
                            if *k == Kind::Rust
                                && !rust_cap_noted
                                && e.contains("did not answer CONNECT")
                            {
                                rust_cap_noted = true;
                                report.note(RUST_STOP_CAP.into());
                            }
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

/// Where each relay's CPU goes while it relays one circuit (our perf peers, `--size` each
/// way): `perf record` on the relay process, summed into categories, plus a flamegraph
/// written beside the results (`<name>-flame-<relay>.svg`).
async fn profile(
    cfg: &Config,
    progs: &Programs,
    kinds: &[Kind],
    report: &mut Report,
    out: Option<&std::path::Path>,
) {
    if let Err(e) = profile::available().await {
        report.note(format!("profile skipped: {e}"));
        return;
    }
    let lim = RelayLimits::for_workload(64, 16);
    for &k in kinds {
        if k == Kind::Js {
            report.note(
                "profile: js-libp2p's relay is not profiled (perf cannot name the functions of \
                 Node's JIT-compiled code)"
                    .into(),
            );
            continue;
        }
        log(format!(
            "profile: {} relay, {} MiB each way",
            k.name(),
            cfg.size >> 20
        ));
        let relay = match peers::start_relay(progs, k, lim).await {
            Ok(r) => r,
            Err(e) => {
                report.error(k, format!("profile: {e:#}"));
                continue;
            }
        };
        let server = match peers::start_server(progs, &relay, Client::Ours).await {
            Ok(s) => s,
            Err(e) => {
                report.error(k, format!("profile: {e:#}"));
                continue;
            }
        };
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let pid = relay.proc.pid;
        let data = progs.tmp.join(format!("profile-{}.data", k.name()));
        let rec = match profile::Recording::start(pid, &data).await {
            Ok(r) => r,
            Err(e) => {
                // A tool problem (no permission, say), not the relay's: a note, and no
                // point trying the next relay.
                report.note(format!("profile skipped: {e:#}"));
                return;
            }
        };
        let cpu0 = procfs::cpu_secs(pid);
        let run = peers::run_perf_client(progs, Client::Ours, &server.addr, cfg.size).await;
        let cpu1 = procfs::cpu_secs(pid);
        let stopped = rec.stop().await;
        if let Err(e) = run {
            report.error(k, format!("profile transfer: {e:#}"));
            continue;
        }
        let data = match stopped {
            Ok(d) => d,
            Err(e) => {
                report.note(format!("profile of the {} relay: {e:#}", k.name()));
                continue;
            }
        };
        let svg = out.map(|o| o.join(format!("{}-flame-{}.svg", cfg.name, k.name())));
        match profile::analyse(k.name(), &data, svg.as_deref()).await {
            Ok(mut p) => {
                if let (Ok(c0), Ok(c1)) = (cpu0, cpu1) {
                    let gib = (2 * cfg.size) as f64 / (1u64 << 30) as f64;
                    p.cpu_s_per_gib = Some((c1 - c0) / gib);
                }
                log(format!(
                    "profile: {} relay, {} samples; {}",
                    k.name(),
                    p.samples,
                    profile::CATEGORIES
                        .iter()
                        .zip(&p.categories)
                        .map(|(c, v)| format!("{c} {v:.1} %"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                report.profiles.push(p);
            }
            Err(e) => report.note(format!("profile of the {} relay: {e:#}", k.name())),
        }
        let _ = std::fs::remove_file(&data);
    }
}

/// One circuit through each relay over two delayed hops (see `wan.rs`), our perf peers.
async fn wan(
    cfg: &Config,
    root: &std::path::Path,
    progs: &Programs,
    kinds: &[Kind],
    report: &mut Report,
) {
    let delayline = root.join("target/release/circuit-delayline");
    if let Some(why) = wan::unavailable(root, &delayline) {
        report.note(format!("wan skipped: {why}"));
        return;
    }
    log(format!(
        "wan: test bed with a {} ms delay line on the relay's link",
        cfg.wan_delay
    ));
    let bed = match wan::Bed::up(root, &delayline, cfg.wan_delay, &progs.tmp).await {
        Ok(b) => b,
        Err(e) => {
            report.note(format!("wan skipped: {e:#}"));
            return;
        }
    };
    let lim = RelayLimits::for_workload(64, 16);
    for &k in kinds {
        log(format!(
            "wan: {} relay, {} MiB each way over two {} ms hops",
            k.name(),
            cfg.wan_size >> 20,
            2 * cfg.wan_delay
        ));
        let run = async {
            let relay = peers::start_relay_on(progs, k, lim, &bed.relay).await?;
            let server = peers::start_our_server(progs, &relay, &bed.server).await?;
            let f = peers::run_perf_client_on(
                progs,
                Client::Ours,
                &server.addr,
                cfg.wan_size,
                &bed.client,
            )
            .await?;
            let peak = procfs::status_kib(relay.proc.pid, "VmHWM")
                .ok()
                .map(|k| k as f64 / 1024.0);
            Ok::<_, anyhow::Error>((f, peak))
        };
        match run.await {
            Ok((f, peak)) => {
                report.set(k, "wan_up_mib_s", f.up_mib_s, &[]);
                report.set(k, "wan_down_mib_s", f.down_mib_s, &[]);
                if let Some(p) = peak {
                    report.set(k, "wan_rss_peak_mib", p, &[]);
                }
            }
            Err(e) => report.error(k, format!("wan: {e:#}")),
        }
    }
    drop(bed);
}

/// Many reservations held at once, one fresh relay each.
async fn scale(cfg: &Config, progs: &Programs, kinds: &[Kind], report: &mut Report) {
    let lim = RelayLimits::for_workload(cfg.reservations, 16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("x").is_err());
        assert_eq!(parse_name("scale"), Ok("scale".into()));
        assert_eq!(parse_name("run-2.a_b"), Ok("run-2.a_b".into()));
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(parse_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_and_quick_defaults() {
        let a = Args::try_parse_from(["bench"]).unwrap();
        let c = Config::from(&a);
        assert_eq!(c.clients, ["ours", "rust"]);
        assert_eq!(c.aead_size, 256 << 20);
        assert_eq!(c.name, "latest");
        let a = Args::try_parse_from(["bench", "--quick", "--clients", "rust", "--name", "scale"])
            .unwrap();
        let c = Config::from(&a);
        assert_eq!(c.clients, ["rust"]);
        assert_eq!(c.aead_size, 16 << 20);
        assert_eq!(c.name, "scale");
        assert!(Args::try_parse_from(["bench", "--name", "a/b"]).is_err());
    }
}
