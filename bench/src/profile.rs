//! The `profile` workload: where a relay spends its CPU while it relays one circuit.
//!
//! `perf record` (Debian's `linux-perf`) samples the relay process with DWARF call graphs
//! during a single-circuit transfer with our perf peers; `perf report` gives the flat
//! profile, which is summed into a few categories (the AEAD, the kernel, memory copies, the
//! allocator, the rest) so relays written in different languages compare line by line; and
//! `perf script`, folded by `inferno`, becomes a flamegraph SVG beside the results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Sampling rate, Hz: about 3 000 samples for a second of a busy core, and a prime, so the
/// sampling does not beat against the runtime's periodic work.
const FREQ: &str = "997";
/// Stack bytes copied per sample for DWARF unwinding (our binary and rust-libp2p's have no
/// frame pointers).
const STACK: &str = "dwarf,16384";
/// Rows of the top-symbols table.
pub const TOP: usize = 12;

/// The categories, in table order.
pub const CATEGORIES: &[&str] = &[
    "AEAD (ChaCha20-Poly1305)",
    "kernel (sockets, TCP, scheduling, page faults)",
    "memory copies and fills (libc)",
    "allocator (malloc/free)",
    "everything else (the relay's own code, runtime, libraries)",
];

/// One relay's profile.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Profile {
    /// The relay (`ours`, `rust-libp2p`, …).
    pub relay: String,
    /// Samples taken.
    pub samples: u64,
    /// Relay CPU seconds per relayed GiB during the profiled transfer (with the sampling's
    /// own cost, so a little above the throughput workload's figure).
    pub cpu_s_per_gib: Option<f64>,
    /// Share of the samples (percent) per entry of [`CATEGORIES`], in that order.
    pub categories: Vec<f64>,
    /// The most sampled functions: (percent, library, function).
    pub top: Vec<(f64, String, String)>,
    /// The flamegraph's file name (beside the results), if one was written.
    pub flamegraph: Option<String>,
}

/// Whether `perf` can be run here; the error says how to get it.
pub async fn available() -> Result<(), String> {
    match Command::new("perf")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`perf --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "`perf` not found ({e}): install it (Debian: apt install linux-perf)"
        )),
    }
}

/// A `perf record` attached to a process.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts sampling process `pid` into `data`.
    pub async fn start(pid: u32, data: &Path) -> anyhow::Result<Recording> {
        let mut child = Command::new("perf")
            // cpu-clock (a software event, so also where the machine exposes no hardware
            // counters): each sample's period is nanoseconds of CPU.
            .args(["record", "-q", "-e", "cpu-clock", "-F", FREQ])
            .args(["--call-graph", STACK, "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf record")?;
        // perf needs a moment to attach; one that cannot (no permission) exits at once.
        tokio::time::sleep(Duration::from_millis(400)).await;
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output().await?;
            bail!(
                "perf record exited at once ({status}): {} (as non-root, perf needs \
                 kernel.perf_event_paranoid <= 1)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Recording {
            child,
            data: data.to_path_buf(),
        })
    }

    /// Stops sampling (SIGINT, so perf writes its file out) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<PathBuf> {
        let pid = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .context("perf record has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)
            .context("stopping perf record")?;
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("perf record did not stop within 60 s")??;
        // perf exits with the signal's status after a clean stop; the file is what counts.
        if !self.data.exists() {
            bail!("perf record wrote no data ({status})");
        }
        Ok(self.data)
    }
}

async fn perf_output(args: &[&str], data: &Path) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .args(args)
        .arg("-i")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running perf {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "perf {} failed ({}): {}",
            args[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads a recording: the flat profile (categories, top functions) and, with `svg`, a
/// flamegraph written there.
pub async fn analyse(relay: &str, data: &Path, svg: Option<&Path>) -> anyhow::Result<Profile> {
    let flat = perf_output(
        &[
            "report",
            "--stdio",
            "-q",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "dso,sym",
            "--percent-limit",
            "0",
        ],
        data,
    )
    .await?;
    let rows = parse_report(&flat);
    if rows.is_empty() {
        bail!("perf report found no samples (was the relay busy?)");
    }
    let mut p = summarise(relay, &rows);
    let script = perf_output(&["script", "--no-inline"], data).await?;
    let (folded, samples) = fold(&script)?;
    p.samples = samples;
    if let Some(svg) = svg {
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("{relay} relay: one circuit, CPU samples");
        opts.count_name = "ns of CPU".into();
        let file =
            std::fs::File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
        inferno::flamegraph::from_lines(&mut opts, folded.lines(), std::io::BufWriter::new(file))
            .context("drawing the flamegraph")?;
        p.flamegraph = svg.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    Ok(p)
}

/// Folds `perf script` output into flamegraph stacks (each weighed by its samples' period:
/// nanoseconds of CPU for `cpu-clock`); returns them and the number of samples.
fn fold(script: &str) -> anyhow::Result<(String, u64)> {
    use inferno::collapse::Collapse;
    let mut folded = Vec::new();
    let mut opts = inferno::collapse::perf::Options::default();
    opts.nthreads = 1;
    inferno::collapse::perf::Folder::from(opts)
        .collapse(script.as_bytes(), &mut folded)
        .context("folding perf script output")?;
    let folded = String::from_utf8_lossy(&folded).into_owned();
    // Each sample starts with an unindented header line; its stack lines are indented.
    let samples = script
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .count() as u64;
    Ok((folded, samples))
}

/// One line of `perf report --sort dso,sym`: percent, library, function, kernel or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pct: f64,
    dso: String,
    sym: String,
    kernel: bool,
}

/// Parses `perf report --stdio -q --sort dso,sym -g none` lines such as
/// `     5.29%  [kernel.kallsyms]  [k] _copy_from_iter` or
/// `     0.42%  circuit            [.] <A as B>::poll`.
pub fn parse_report(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let rest = rest.trim_start();
            let (dso, rest) = rest.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            let (kind, sym) = rest.split_once(' ').unwrap_or((rest, ""));
            if !(kind.starts_with('[') && kind.ends_with(']')) {
                return None;
            }
            Some(Row {
                pct,
                dso: dso.to_string(),
                sym: sym.trim().to_string(),
                kernel: kind == "[k]" || dso.starts_with("[kernel"),
            })
        })
        .collect()
}

/// The category (index into [`CATEGORIES`]) of one function.
fn category(r: &Row) -> usize {
    let sym = r.sym.to_ascii_lowercase();
    let dso = r.dso.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| sym.contains(w));
    if dso.starts_with("libcrypto") || has(&["chacha", "poly1305", "aead", "evp_"]) {
        0
    } else if r.kernel {
        1
    } else if has(&["memmove", "memcpy", "memset"]) {
        2
    } else if has(&[
        "malloc",
        "free",
        "realloc",
        "calloc",
        "_int_",
        "__rust_alloc",
        "__rdl_",
        "__rg_",
    ]) {
        3
    } else {
        4
    }
}

/// Unresolved addresses (a library without symbols, such as libcrypto) count as one
/// function per library.
fn display_sym(r: &Row) -> String {
    if r.sym.starts_with("0x") || r.sym.is_empty() {
        "(addresses without symbols)".into()
    } else {
        r.sym.clone()
    }
}

/// Sums the flat profile into categories and top functions.
pub fn summarise(relay: &str, rows: &[Row]) -> Profile {
    let mut cats = vec![0.0; CATEGORIES.len()];
    let mut funcs: BTreeMap<(String, String), f64> = BTreeMap::new();
    for r in rows {
        cats[category(r)] += r.pct;
        *funcs.entry((r.dso.clone(), display_sym(r))).or_default() += r.pct;
    }
    let mut top: Vec<(f64, String, String)> =
        funcs.into_iter().map(|((d, s), p)| (p, d, s)).collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.truncate(TOP);
    Profile {
        relay: relay.into(),
        categories: cats,
        top,
        ..Profile::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
    55.81%  libcrypto.so.3     [.] 0x0000000000268761
     5.29%  [kernel.kallsyms]  [k] _copy_from_iter
     3.81%  libc.so.6          [.] __memmove_avx512_unaligned_erms
     2.11%  circuit            [.] <circuit_net::connection::Driver as core::future::future::Future>::poll
     1.00%  libcrypto.so.3     [.] 0x00000000001389c7
     0.85%  libc.so.6          [.] malloc
     0.42%  circuit            [.] ring_core_0_17_14__chacha20_poly1305_seal_avx2
     0.40%  rust-libp2p-peer   [.] chacha20::backends::avx2::Backend::gen_ks_blocks
     0.21%  [vdso]             [.] __vdso_clock_gettime
garbage line
";

    #[test]
    fn flat_profile_parses_and_sums_into_categories() {
        let rows = parse_report(REPORT);
        assert_eq!(rows.len(), 9);
        assert_eq!(
            rows[3],
            Row {
                pct: 2.11,
                dso: "circuit".into(),
                sym: "<circuit_net::connection::Driver as core::future::future::Future>::poll"
                    .into(),
                kernel: false,
            }
        );
        assert!(rows[1].kernel && !rows[0].kernel);
        let p = summarise("ours", &rows);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(p.categories[0], 55.81 + 1.00 + 0.42 + 0.40), "{p:?}");
        assert!(close(p.categories[1], 5.29), "{p:?}");
        assert!(close(p.categories[2], 3.81), "{p:?}");
        assert!(close(p.categories[3], 0.85), "{p:?}");
        assert!(close(p.categories[4], 2.11 + 0.21), "{p:?}");
        // libcrypto's unresolved addresses are one entry, first.
        assert_eq!(p.top[0].1, "libcrypto.so.3");
        assert_eq!(p.top[0].2, "(addresses without symbols)");
        assert!(close(p.top[0].0, 56.81));
        assert_eq!(p.top[1].2, "_copy_from_iter");
    }

    #[test]
    fn perf_script_stacks_fold_with_their_counts() {
        let script = "\
circuit 100 1.000: 1001001 cpu-clock:
\t7f01 EVP_EncryptUpdate (/usr/lib/libcrypto.so.3)
\t5501 circuit_net::connection::Driver::poll (/bin/circuit)

circuit 100 1.001: 1001001 cpu-clock:
\t7f01 EVP_EncryptUpdate (/usr/lib/libcrypto.so.3)
\t5501 circuit_net::connection::Driver::poll (/bin/circuit)

circuit 100 1.002: 1001001 cpu-clock:
\tffff _copy_to_iter ([kernel.kallsyms])

";
        let (folded, n) = fold(script).unwrap();
        assert_eq!(n, 3, "{folded}");
        // Weighed by period (CPU nanoseconds), callers first.
        assert!(
            folded.contains("circuit_net::connection::Driver::poll;EVP_EncryptUpdate 2002002"),
            "{folded}"
        );
        assert!(folded.contains("_copy_to_iter 1001001"), "{folded}");
    }
}
