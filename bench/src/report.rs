//! The results: a markdown table with the ratios ours/theirs, and JSON.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::peers::Kind;
use crate::profile::{Profile, CATEGORIES};
use crate::Config;

/// Figures of one relay.
#[derive(Debug, Default, Clone)]
pub struct RelayResult {
    /// Reported figure per metric key (a median where there were several runs).
    pub figures: BTreeMap<String, f64>,
    /// The samples behind each figure.
    pub samples: BTreeMap<String, Vec<f64>>,
    /// What went wrong.
    pub errors: Vec<String>,
}

/// One row of the table.
struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

const fn m(key: &'static str, label: &'static str, unit: &'static str, hib: bool) -> Metric {
    Metric {
        key,
        label,
        unit,
        higher_is_better: hib,
    }
}

/// The rows, in table order. Labels with `{N}` get the configured count.
const METRICS: &[Metric] = &[
    m(
        "up_mib_s",
        "single circuit (our perf peers): upload",
        "MiB/s",
        true,
    ),
    m(
        "down_mib_s",
        "single circuit (our perf peers): download",
        "MiB/s",
        true,
    ),
    m(
        "cpu_s_per_gib",
        "relay CPU per relayed GiB (single circuit, our perf peers)",
        "s",
        false,
    ),
    m(
        "cpu_per_aead",
        "relay CPU per relayed GiB / AEAD floor (single circuit, our perf peers; target ≤ 1.5)",
        "×",
        false,
    ),
    m(
        "rs_up_mib_s",
        "single circuit (rust-libp2p perf peers): upload",
        "MiB/s",
        true,
    ),
    m(
        "rs_down_mib_s",
        "single circuit (rust-libp2p perf peers): download",
        "MiB/s",
        true,
    ),
    m(
        "rs_cpu_s_per_gib",
        "relay CPU per relayed GiB (single circuit, rust-libp2p perf peers)",
        "s",
        false,
    ),
    m(
        "rs_cpu_per_aead",
        "relay CPU per relayed GiB / AEAD floor (single circuit, rust-libp2p perf peers; target ≤ 1.5)",
        "×",
        false,
    ),
    m(
        "rss_idle_mib",
        "relay RSS idle (1 reservation)",
        "MiB",
        false,
    ),
    m(
        "rss_peak_mib",
        "relay RSS peak during single-circuit transfer (our perf peers)",
        "MiB",
        false,
    ),
    m(
        "rs_rss_peak_mib",
        "relay RSS peak during single-circuit transfer (rust-libp2p perf peers)",
        "MiB",
        false,
    ),
    m(
        "connect_p50_ms",
        "circuit connect p50 (fresh node → relayed conn up)",
        "ms",
        false,
    ),
    m("connect_p99_ms", "circuit connect p99", "ms", false),
    m(
        "setup_p50_ms",
        "time to first perf byte p50 (fresh node → first byte)",
        "ms",
        false,
    ),
    m("setup_p99_ms", "time to first perf byte p99", "ms", false),
    m(
        "conc_ok",
        "{N} concurrent circuits: circuits completed",
        "",
        true,
    ),
    m(
        "conc_agg_mib_s",
        "{N} concurrent circuits: aggregate",
        "MiB/s",
        true,
    ),
    m(
        "conc_min_mib_s",
        "{N} concurrent: per-circuit min",
        "MiB/s",
        true,
    ),
    m(
        "conc_median_mib_s",
        "{N} concurrent: per-circuit median",
        "MiB/s",
        true,
    ),
    m(
        "conc_max_mib_s",
        "{N} concurrent: per-circuit max",
        "MiB/s",
        true,
    ),
    m(
        "conc_fairness",
        "{N} concurrent: fairness min/median",
        "",
        true,
    ),
    m(
        "conc_cpu_s_per_gib",
        "{N} concurrent: relay CPU per relayed GiB",
        "s",
        false,
    ),
    m(
        "conc_cpu_per_aead",
        "{N} concurrent: relay CPU per relayed GiB / AEAD floor",
        "×",
        false,
    ),
    m(
        "conc_rss_peak_mib",
        "{N} concurrent: relay RSS peak",
        "MiB",
        false,
    ),
    m("scale_held", "{R} reservations: held", "", true),
    m("scale_rss_mib", "{R} reservations: relay RSS", "MiB", false),
    m(
        "scale_rss_per_res_kib",
        "{R} reservations: relay RSS per reservation",
        "KiB",
        false,
    ),
    m(
        "scale_reserve_p50_ms",
        "{R} reservations: reserve p50 (fresh node)",
        "ms",
        false,
    ),
    m(
        "scale_reserve_p99_ms",
        "{R} reservations: reserve p99",
        "ms",
        false,
    ),
    m(
        "scale_cpu_ms_per_res",
        "{R} reservations: relay CPU per reservation",
        "ms",
        false,
    ),
    m(
        "wan_up_mib_s",
        "one circuit over two {W} ms hops (our perf peers): upload",
        "MiB/s",
        true,
    ),
    m(
        "wan_down_mib_s",
        "one circuit over two {W} ms hops: download",
        "MiB/s",
        true,
    ),
    m(
        "wan_rss_peak_mib",
        "relay RSS peak, one circuit over two {W} ms hops",
        "MiB",
        false,
    ),
];

/// Ceiling rows: key, label, unit.
const CEILINGS: &[(&str, &str, &str)] = &[
    (
        "tcp_mib_s",
        "raw TCP loopback copy (one connection, 64 KiB writes)",
        "MiB/s",
    ),
    (
        "direct_up_mib_s",
        "direct perf ours ↔ ours (Noise + yamux, no relay): upload",
        "MiB/s",
    ),
    (
        "direct_down_mib_s",
        "direct perf ours ↔ ours: download",
        "MiB/s",
    ),
    (
        "rs_direct_up_mib_s",
        "direct perf rust-libp2p ↔ rust-libp2p (Noise + yamux, no relay): upload",
        "MiB/s",
    ),
    (
        "rs_direct_down_mib_s",
        "direct perf rust-libp2p ↔ rust-libp2p: download",
        "MiB/s",
    ),
    (
        "aead_s_per_gib",
        "AEAD floor: seal+open s per GiB (the fastest ChaCha20-Poly1305 built in, one thread, 65 519-byte frames; thread CPU time, least of 5 samples)",
        "s",
    ),
    (
        "aead_openssl_s_per_gib",
        "AEAD seal+open s per GiB with OpenSSL's libcrypto (EVP; our relay's default)",
        "s",
    ),
    (
        "aead_ring_s_per_gib",
        "AEAD seal+open s per GiB with ring",
        "s",
    ),
    (
        "aead_wall_s_per_gib",
        "AEAD floor, wall time (the same, including time off the core)",
        "s",
    ),
];

/// Rows derived from others: (key, relay CPU per relayed GiB it divides by the AEAD floor).
const PER_AEAD: &[(&str, &str)] = &[
    ("cpu_per_aead", "cpu_s_per_gib"),
    ("rs_cpu_per_aead", "rs_cpu_s_per_gib"),
    ("conc_cpu_per_aead", "conc_cpu_s_per_gib"),
];

/// Relayed/direct ratio lines: perf peer set, relayed key prefix, direct key prefix.
const RELAYED_DIRECT: &[(&str, &str)] =
    &[("our perf peers", ""), ("rust-libp2p perf peers", "rs_")];

/// Everything measured in one run.
pub struct Report {
    config: Config,
    /// Per relay, in the order ours, rust-libp2p, js-libp2p.
    pub relays: BTreeMap<Kind, RelayResult>,
    ceilings: BTreeMap<String, (f64, Vec<f64>)>,
    notes: Vec<String>,
    /// Wall time of the whole run, s.
    pub elapsed_s: f64,
    date: String,
    machine: String,
    command: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started: other work on the machine skews it.
    load_start: String,
    /// The profile workload's findings, one per relay profiled.
    pub profiles: Vec<Profile>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cmd_output(prog: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(prog).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// A figure with a sensible number of digits; `—` for none.
fn fmt(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let a = v.abs();
            if v.fract() == 0.0 || a >= 100.0 {
                format!("{v:.0}")
            } else if a >= 10.0 {
                format!("{v:.1}")
            } else if a >= 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            }
        }
        _ => "—".into(),
    }
}

impl Report {
    /// An empty report for `config`.
    pub fn new(config: Config) -> Report {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let kernel = cmd_output("uname", &["-sr"]).unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default();
        let args: Vec<String> = std::env::args().skip(1).collect();
        Report {
            config,
            relays: BTreeMap::new(),
            ceilings: BTreeMap::new(),
            notes: Vec::new(),
            elapsed_s: 0.0,
            date: cmd_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            machine: format!("{cores} cores ({cpu}), {kernel}"),
            command: format!("cargo run --release -p circuit-bench -- {}", args.join(" ")),
            load_start: loadavg(),
            profiles: Vec::new(),
        }
    }

    /// Records a note shown under the table.
    pub fn note(&mut self, s: String) {
        eprintln!("[bench] note: {s}");
        self.notes.push(s);
    }

    /// Records a ceiling figure.
    pub fn ceiling(&mut self, key: &str, v: f64, samples: &[f64]) {
        self.ceilings.insert(key.into(), (v, samples.to_vec()));
    }

    /// Records a figure of relay `k`.
    pub fn set(&mut self, k: Kind, key: &str, v: f64, samples: &[f64]) {
        let r = self.relays.entry(k).or_default();
        r.figures.insert(key.into(), v);
        if !samples.is_empty() {
            r.samples.insert(key.into(), samples.to_vec());
        }
    }

    /// Records a failure of relay `k`.
    pub fn error(&mut self, k: Kind, e: String) {
        eprintln!("[bench] {}: error: {e}", k.name());
        self.relays.entry(k).or_default().errors.push(e);
    }

    /// Adds the figures computed from others: each relay CPU per relayed GiB
    /// divided by the AEAD floor (seal + open per GiB), where both were measured.
    pub fn derive(&mut self) {
        let Some(floor) = self
            .ceilings
            .get("aead_s_per_gib")
            .map(|c| c.0)
            .filter(|f| f.is_finite() && *f > 0.0)
        else {
            return;
        };
        for r in self.relays.values_mut() {
            for (key, cpu) in PER_AEAD {
                if let Some(c) = r.figures.get(*cpu).copied().filter(|c| c.is_finite()) {
                    r.figures.insert((*key).into(), c / floor);
                }
            }
        }
    }

    /// Whether anything failed.
    pub fn has_errors(&self) -> bool {
        self.relays.values().any(|r| !r.errors.is_empty())
    }

    fn fig(&self, k: Kind, key: &str) -> Option<f64> {
        self.relays.get(&k)?.figures.get(key).copied()
    }

    fn ratio(&self, key: &str, theirs: Kind) -> Option<f64> {
        let (a, b) = (self.fig(Kind::Ours, key)?, self.fig(theirs, key)?);
        (a.is_finite() && b.is_finite() && b != 0.0).then(|| a / b)
    }

    fn label(&self, m: &Metric) -> String {
        m.label
            .replace("{N}", &self.config.circuits.to_string())
            .replace("{R}", &self.config.reservations.to_string())
            .replace("{W}", &(2 * self.config.wan_delay).to_string())
    }

    fn others(&self) -> Vec<Kind> {
        self.relays
            .keys()
            .copied()
            .filter(|k| *k != Kind::Ours)
            .collect()
    }

    /// The results as markdown.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        s += &if c.name == "latest" {
            "# Relay benchmark: latest run\n\n".to_string()
        } else {
            format!("# Relay benchmark: {}\n\n", c.name)
        };
        s += &format!(
            "{}; {}; the run took {:.0} s.\n\n",
            self.date, self.machine, self.elapsed_s
        );
        s += &format!(
            "Load average (1/5/15 min) at the start: {}; at the end: {}.\n\n",
            self.load_start,
            loadavg()
        );
        s += &format!("Command: `{}`\n\n", self.command);
        s += &self.settings_line();
        s += "All relays on loopback (except in the WAN rows) with limits lifted; the same clients and servers for every relay: for single-circuit \
              throughput our perf peers (`circuit perf` process → `circuit listen`) and rust-libp2p's (`rust-libp2p-peer perf` \
              → `rust-libp2p-peer perf --server --relay`), in-process circuit-net clients → `circuit listen` otherwise. \
              Ratios are ours/theirs: above 1 is better for \"higher\" rows, below 1 for \"lower\" rows.\n\n";
        let others = self.others();
        s += "| figure | better | ours |";
        for k in &others {
            s += &format!(" {} |", k.name());
        }
        for k in &others {
            s += &format!(" ours/{} |", k.name());
        }
        s += "\n|---|---|---|";
        for _ in 0..others.len() * 2 {
            s += "---|";
        }
        s += "\n";
        for m in METRICS {
            if self.relays.values().all(|r| !r.figures.contains_key(m.key)) {
                continue;
            }
            let unit = if m.unit.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.unit)
            };
            s += &format!(
                "| {}{unit} | {} | {} |",
                self.label(m),
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
                fmt(self.fig(Kind::Ours, m.key))
            );
            for k in &others {
                s += &format!(" {} |", fmt(self.fig(*k, m.key)));
            }
            for k in &others {
                s += &format!(" {} |", fmt(self.ratio(m.key, *k)));
            }
            s += "\n";
        }
        if !self.ceilings.is_empty() {
            s += "\n## Ceilings (same run)\n\n| figure | value | unit |\n|---|---|---|\n";
            for (key, label, unit) in CEILINGS {
                if let Some((v, _)) = self.ceilings.get(*key) {
                    s += &format!("| {label} | {} | {unit} |\n", fmt(Some(*v)));
                }
            }
            s += &self.relayed_direct_lines();
        }
        s += &self.profile_section();
        let mut problems = self.notes.clone();
        for (k, r) in &self.relays {
            problems.extend(r.errors.iter().map(|e| format!("{}: {e}", k.name())));
        }
        if !problems.is_empty() {
            s += "\n## Notes and errors\n\n";
            for p in problems {
                s += &format!("- {p}\n");
            }
        }
        s
    }

    /// What was run, with the settings of those workloads only.
    fn settings_line(&self) -> String {
        let c = &self.config;
        let mib = |b: u64| format!("{} MiB", b as f64 / (1u64 << 20) as f64);
        let ran = |w: &str| c.workloads.iter().any(|x| x == w);
        let mut parts = vec![format!("Workloads: {}.", c.workloads.join(", "))];
        if ran("throughput") {
            parts.push(format!(
                "Single circuit: {} each way, median of {} runs, perf peers: {}.",
                mib(c.size),
                c.runs,
                c.clients.join(", ")
            ));
        }
        if ran("setup") {
            parts.push(format!("Set-up: {} fresh set-ups.", c.setups));
        }
        if ran("concurrent") {
            parts.push(format!(
                "Concurrent: {} circuits × {} each way, median of {} runs.",
                c.circuits,
                mib(c.circuit_size),
                c.runs
            ));
        }
        if ran("scale") {
            parts.push(format!(
                "Scale: {} reservations, {} being made at a time.",
                c.reservations, c.reservation_parallel
            ));
        }
        if ran("wan") {
            parts.push(format!(
                "WAN: {} each way through a relay whose link has a {} ms one-way delay line \
                 (two hops of {} ms round trip), our perf peers behind NAT, in network namespaces.",
                mib(c.wan_size),
                c.wan_delay,
                2 * c.wan_delay
            ));
        }
        if ran("ceilings") || ran("throughput") || ran("concurrent") {
            parts.push(format!(
                "AEAD floor: {} sealed and opened.",
                mib(c.aead_size)
            ));
        }
        parts.join(" ") + "\n\n"
    }

    /// "Relayed / direct" lines: each perf peer set's relayed rate through each
    /// relay over the same set's direct rate.
    fn relayed_direct_lines(&self) -> String {
        let mut s = String::new();
        let direct = |k: &str| self.ceilings.get(k).map(|x| x.0);
        for (set, p) in RELAYED_DIRECT {
            for what in ["upload", "download"] {
                let short = &what[..if what == "upload" { 2 } else { 4 }];
                let key = format!("{p}{short}_mib_s");
                let dkey = format!("{p}direct_{short}_mib_s");
                let Some(d) = direct(&dkey) else { continue };
                if self.relays.values().all(|r| !r.figures.contains_key(&key)) {
                    continue;
                }
                s += &format!("\nRelayed / direct, {set} ({what}):");
                for k in self.relays.keys() {
                    s += &format!(" {} {};", k.name(), fmt(self.fig(*k, &key).map(|v| v / d)));
                }
                s.pop();
                s += ".\n";
            }
        }
        s
    }

    /// The profile workload's tables: CPU by category per relay (share, and seconds per
    /// relayed GiB), then each relay's most sampled functions and its flamegraph.
    fn profile_section(&self) -> String {
        let ps = &self.profiles;
        if ps.is_empty() {
            return String::new();
        }
        let mut s = format!(
            "\n## Where the relay's CPU goes (profile, same run)\n\n`perf record -e cpu-clock -F 997 --call-graph dwarf` on \
             each relay while our perf peers move {} MiB each way through it; shares of the relay's \
             samples, and the same as seconds per relayed GiB (the relay's CPU during the profiled \
             transfer, sampling included, times the share).\n\n| category |",
            self.config.size >> 20
        );
        for p in ps {
            s += &format!(" {} (%) | {} (s per GiB) |", p.relay, p.relay);
        }
        s += "\n|---|";
        s += &"---|---|".repeat(ps.len());
        s += "\n";
        for (i, c) in CATEGORIES.iter().enumerate() {
            s += &format!("| {c} |");
            for p in ps {
                let share = p.categories.get(i).copied();
                let secs = share.zip(p.cpu_s_per_gib).map(|(v, c)| v / 100.0 * c);
                s += &format!(" {} | {} |", fmt(share), fmt(secs));
            }
            s += "\n";
        }
        s += "| all (samples) |";
        for p in ps {
            s += &format!(" 100 ({}) | {} |", p.samples, fmt(p.cpu_s_per_gib));
        }
        s += "\n";
        for p in ps {
            s += &format!("\nMost sampled functions, {} relay", p.relay);
            if let Some(f) = &p.flamegraph {
                s += &format!(" (flamegraph: [{f}]({f}))");
            }
            s += ":\n\n| % | library | function |\n|---|---|---|\n";
            for (pct, dso, sym) in &p.top {
                let sym: String = sym.replace('|', "\\|").chars().take(100).collect();
                s += &format!("| {} | {dso} | `{sym}` |\n", fmt(Some(*pct)));
            }
        }
        s
    }

    /// The results as JSON.
    pub fn json(&self) -> Value {
        let mut relays = serde_json::Map::new();
        for (k, r) in &self.relays {
            relays.insert(
                k.name().into(),
                json!({"figures": r.figures, "samples": r.samples, "errors": r.errors}),
            );
        }
        let mut ratios = serde_json::Map::new();
        for k in self.others() {
            let mut per = serde_json::Map::new();
            for m in METRICS {
                if let Some(r) = self.ratio(m.key, k) {
                    per.insert(m.key.into(), json!(r));
                }
            }
            ratios.insert(format!("ours/{}", k.name()), Value::Object(per));
        }
        let metrics: Vec<Value> = METRICS
            .iter()
            .map(|m| json!({"key": m.key, "label": self.label(m), "unit": m.unit, "higher_is_better": m.higher_is_better}))
            .collect();
        let ceilings: BTreeMap<&String, Value> = self
            .ceilings
            .iter()
            .map(|(k, (v, s))| (k, json!({"value": v, "samples": s})))
            .collect();
        json!({
            "date": self.date,
            "machine": self.machine,
            "load_start": self.load_start,
            "load_end": loadavg(),
            "command": self.command,
            "elapsed_s": self.elapsed_s,
            "config": self.config,
            "metrics": metrics,
            "relays": relays,
            "ratios": ratios,
            "ceilings": ceilings,
            "notes": self.notes,
            "profiles": self.profiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            quick: true,
            runs: 1,
            size: 1 << 20,
            setups: 1,
            circuits: 1000,
            circuit_size: 1 << 20,
            reservations: 10,
            reservation_parallel: 1,
            relays: vec!["ours".into(), "rust".into()],
            clients: vec!["ours".into(), "rust".into()],
            aead_size: 1 << 20,
            wan_delay: 25,
            wan_size: 1 << 20,
            workloads: vec!["throughput".into()],
            name: "latest".into(),
        }
    }

    #[test]
    fn wan_rows_name_the_round_trip_of_each_hop() {
        let mut c = config();
        c.workloads = vec!["wan".into()];
        c.wan_delay = 30;
        let mut r = Report::new(c);
        r.set(Kind::Ours, "wan_up_mib_s", 30.0, &[]);
        r.set(Kind::Rust, "wan_up_mib_s", 20.0, &[]);
        let md = r.markdown();
        let row = md
            .lines()
            .find(|l| l.contains("one circuit over two 60 ms hops"))
            .unwrap_or_else(|| panic!("no wan row in {md}"));
        assert!(row.contains("| 30 | 20 | 1.50 |"), "{row}");
        assert!(md.contains("30 ms one-way delay line"), "{md}");
    }

    #[test]
    fn cpu_rows_are_divided_by_the_aead_floor() {
        let mut r = Report::new(config());
        r.set(Kind::Ours, "cpu_s_per_gib", 1.2, &[1.2]);
        r.set(Kind::Ours, "rs_cpu_s_per_gib", 1.5, &[1.5]);
        r.set(Kind::Rust, "cpu_s_per_gib", 3.0, &[3.0]);
        r.set(Kind::Ours, "conc_cpu_s_per_gib", f64::NAN, &[]);
        // No floor measured: nothing derived.
        r.derive();
        assert_eq!(r.fig(Kind::Ours, "cpu_per_aead"), None);
        r.ceiling("aead_s_per_gib", 0.6, &[0.6]);
        r.derive();
        assert_eq!(r.fig(Kind::Ours, "cpu_per_aead"), Some(2.0));
        assert_eq!(r.fig(Kind::Ours, "rs_cpu_per_aead"), Some(2.5));
        assert_eq!(r.fig(Kind::Rust, "cpu_per_aead"), Some(5.0));
        assert_eq!(r.fig(Kind::Rust, "rs_cpu_per_aead"), None);
        assert_eq!(r.fig(Kind::Ours, "conc_cpu_per_aead"), None);
        assert_eq!(r.ratio("cpu_per_aead", Kind::Rust), Some(0.4));
        let md = r.markdown();
        assert!(md.starts_with("# Relay benchmark: latest run\n"), "{md}");
        // Only the settings of the workloads that ran.
        assert!(md.contains("Single circuit: 1 MiB each way"), "{md}");
        assert!(!md.contains("Scale:") && !md.contains("Set-up:"), "{md}");
        assert!(
            md.contains("| relay CPU per relayed GiB / AEAD floor (single circuit, our perf peers; target ≤ 1.5) (×) | lower | 2 | 5 | 0.400 |"),
            "{md}"
        );
        assert!(md.contains("| AEAD floor: seal+open s per GiB"), "{md}");
        let j = r.json();
        assert_eq!(j["relays"]["ours"]["figures"]["cpu_per_aead"], 2.0);
        assert_eq!(j["ratios"]["ours/rust-libp2p"]["cpu_per_aead"], 0.4);
    }

    #[test]
    fn relayed_over_direct_for_both_perf_peer_sets() {
        let mut r = Report::new(config());
        r.ceiling("direct_up_mib_s", 400.0, &[]);
        r.ceiling("direct_down_mib_s", 500.0, &[]);
        r.ceiling("rs_direct_up_mib_s", 200.0, &[]);
        r.set(Kind::Ours, "up_mib_s", 200.0, &[]);
        r.set(Kind::Rust, "up_mib_s", 100.0, &[]);
        r.set(Kind::Ours, "down_mib_s", 250.0, &[]);
        r.set(Kind::Ours, "rs_up_mib_s", 150.0, &[]);
        r.set(Kind::Rust, "rs_up_mib_s", 50.0, &[]);
        let md = r.markdown();
        assert!(
            md.contains(
                "Relayed / direct, our perf peers (upload): ours 0.500; rust-libp2p 0.250."
            ),
            "{md}"
        );
        assert!(
            md.contains("Relayed / direct, our perf peers (download): ours 0.500; rust-libp2p —."),
            "{md}"
        );
        assert!(
            md.contains(
                "Relayed / direct, rust-libp2p perf peers (upload): ours 0.750; rust-libp2p 0.250."
            ),
            "{md}"
        );
        // No direct rust-libp2p download ceiling: no line for it.
        assert!(!md.contains("rust-libp2p perf peers (download)"), "{md}");
        assert!(md.contains("| single circuit (rust-libp2p perf peers): upload (MiB/s) | higher | 150 | 50 | 3 |"), "{md}");
        assert!(md.contains("| direct perf rust-libp2p ↔ rust-libp2p (Noise + yamux, no relay): upload | 200 | MiB/s |"), "{md}");
    }
}
