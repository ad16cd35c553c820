//! Figures of a process from `/proc`: CPU seconds, resident memory, and a
//! background sampler for the peak resident set during a workload.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds used so far by process `pid` (all its threads).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces:
    // count fields from the last ')'. After it come field 3 (state) onwards,
    // so utime (field 14) and stime (field 15) are at indexes 11 and 12.
    let rest = match stat.rfind(')') {
        Some(i) => &stat[i + 1..],
        None => bail!("unexpected /proc/{pid}/stat"),
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() < 13 {
        bail!("short /proc/{pid}/stat");
    }
    let utime: f64 = f[11].parse().context("utime")?;
    let stime: f64 = f[12].parse().context("stime")?;
    Ok((utime + stime) / clk_tck())
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let n = v.trim().trim_end_matches("kB").trim();
            return n
                .parse()
                .with_context(|| format!("{field} in /proc/{pid}/status"));
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// Resident set size of `pid`, MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kib(pid, "VmRSS")? as f64 / 1024.0)
}

/// Samples `VmRSS` of a process every few milliseconds until stopped and keeps
/// the largest value (VmHWM cannot be reset, so it would also cover earlier workloads).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(status_kib(pid, "VmRSS").unwrap_or(0)));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(k) = status_kib(pid, "VmRSS") {
                    p.fetch_max(k, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler {
            stop,
            peak_kib,
            task,
        }
    }

    /// Stops sampling; returns the peak, MiB.
    pub async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Raises this process's soft limit on open files to its hard limit and returns
/// (soft before, soft now). The scale workloads hold one socket per reservation or
/// circuit here and one in the relay; the relays and servers we start inherit the
/// raised limit. An unlimited hard limit is capped at `fs.nr_open`, the most the
/// kernel accepts.
pub fn raise_nofile() -> anyhow::Result<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let before = cur.current.unwrap_or(u64::MAX);
    let hard = match cur.maximum {
        Some(h) => h,
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20),
    };
    if before >= hard {
        return Ok((before, before));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: cur.maximum,
        },
    )
    .with_context(|| format!("setrlimit(RLIMIT_NOFILE, {hard})"))?;
    Ok((before, hard))
}

/// The soft limit on open files of this process (inherited by the peers we start).
pub fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_soft_limit_is_raised_to_the_hard_limit() {
        let (_, now) = raise_nofile().unwrap();
        let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(l.current, Some(now));
        if let Some(hard) = l.maximum {
            assert_eq!(now, hard);
        }
        // /proc/self/limits reads the same figure.
        assert_eq!(nofile_limit(), Some(now));
        // Raising again changes nothing.
        assert_eq!(raise_nofile().unwrap(), (now, now));
    }

    #[test]
    fn cpu_and_rss_of_this_process() {
        let me = std::process::id();
        let c0 = cpu_secs(me).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_secs(me).unwrap() >= c0);
        let rss = rss_mib(me).unwrap();
        assert!(rss > 0.0 && rss < 1e6, "{rss}");
        assert!(cpu_secs(u32::MAX).is_err());
    }
}
