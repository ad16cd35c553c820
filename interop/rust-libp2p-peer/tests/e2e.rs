//! End-to-end tests of the test-peer contract: real `relay`, `listen` and
//! `dial` processes of this binary talking to each other on loopback.
//!
//! Run with `cargo test --release --manifest-path interop/rust-libp2p-peer/Cargo.toml`
//! (`--release` reuses the release build of the dependencies).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rust-libp2p-peer");
const STEP: Duration = Duration::from_secs(30);

/// A spawned peer whose stdout lines arrive on a channel; killed on drop.
struct Peer {
    child: Child,
    lines: Receiver<String>,
    name: &'static str,
}

impl Peer {
    fn spawn(name: &'static str, args: &[&str]) -> Peer {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn test peer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            lines: rx,
            name,
        }
    }

    /// Next stdout line, failing the test after `STEP` or on EOF.
    fn line(&self) -> String {
        match self.lines.recv_timeout(STEP) {
            Ok(l) => {
                eprintln!("[{}] {l}", self.name);
                l
            }
            Err(RecvTimeoutError::Timeout) => panic!("{}: no output within {STEP:?}", self.name),
            Err(RecvTimeoutError::Disconnected) => panic!("{}: stdout closed", self.name),
        }
    }

    /// Next line, which must start with `prefix `; returns the rest.
    fn expect(&self, prefix: &str) -> String {
        let l = self.line();
        match l.strip_prefix(prefix) {
            Some(rest) => rest.trim_start().to_string(),
            None => panic!("{}: expected `{prefix} ...`, got `{l}`", self.name),
        }
    }

    /// Collects every remaining line until the process exits (bounded).
    fn finish(mut self, limit: Duration) -> (Vec<String>, ExitStatus) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit in {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = Vec::new();
        // The reader thread ends at EOF, which follows the exit closely.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            eprintln!("[{}] {l}", self.name);
            out.push(l);
        }
        (out, status)
    }
}

impl Peer {
    /// Sends SIGTERM and returns the exit status (bounded wait).
    fn terminate(self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        self.finish(Duration::from_secs(10)).1
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a relay on TCP and WebSocket; returns it with its (tcp, ws) addresses.
fn start_relay(extra: &[&str]) -> (Peer, String, String) {
    let mut args = vec![
        "relay",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0/ws",
    ];
    args.extend_from_slice(extra);
    let relay = Peer::spawn("relay", &args);
    let id = relay.expect("PEER");
    let mut tcp = None;
    let mut ws = None;
    loop {
        let l = relay.line();
        if l == "READY" {
            break;
        }
        let addr = l
            .strip_prefix("LISTEN ")
            .unwrap_or_else(|| panic!("unexpected relay line `{l}`"));
        assert!(
            addr.starts_with("/ip4/127.0.0.1/tcp/"),
            "non-loopback address {addr}"
        );
        assert!(
            addr.ends_with(&format!("/p2p/{id}")),
            "address lacks /p2p/<id>: {addr}"
        );
        assert!(!addr.contains("/tcp/0/"), "port not resolved: {addr}");
        if addr.contains("/ws/") {
            ws = Some(addr.to_string());
        } else {
            tcp = Some(addr.to_string());
        }
    }
    (
        relay,
        tcp.expect("tcp LISTEN line"),
        ws.expect("ws LISTEN line"),
    )
}

/// Starts a listener on `relay_addr`; returns it with its id and circuit address.
fn start_listener(relay_addr: &str) -> (Peer, String, String) {
    let l = Peer::spawn("listen", &["listen", "--relay", relay_addr]);
    let id = l.expect("PEER");
    let circuit = l.expect("RESERVED");
    assert_eq!(circuit, format!("{relay_addr}/p2p-circuit/p2p/{id}"));
    (l, id, circuit)
}

/// Runs a dial to completion and checks the full success transcript.
fn dial_ok(addr: &str, target: &str, bytes: usize, pings: usize) {
    let d = Peer::spawn(
        "dial",
        &[
            "dial",
            addr,
            "--bytes",
            &bytes.to_string(),
            "--pings",
            &pings.to_string(),
        ],
    );
    let (out, status) = d.finish(Duration::from_secs(70));
    assert!(status.success(), "dial failed: {status:?} {out:?}");
    assert_eq!(
        out.first().map(String::as_str),
        Some(format!("CONNECTED {target}").as_str())
    );
    let rtts: Vec<f64> = out
        .iter()
        .filter_map(|l| l.strip_prefix("PING "))
        .map(|r| r.parse().expect("PING rtt is a float"))
        .collect();
    assert_eq!(rtts.len(), pings, "{out:?}");
    assert!(rtts.iter().all(|r| *r >= 0.0 && *r < 10_000.0), "{rtts:?}");
    assert_eq!(
        out.last().map(String::as_str),
        Some(format!("ECHO OK {bytes}").as_str())
    );
    assert_eq!(out.len(), pings + 2, "unexpected extra lines: {out:?}");
}

/// The listener reports the relayed connection and the echoed byte count.
fn expect_inbound_and_pipe(listener: &Peer, bytes: usize) {
    let mut inbound = false;
    loop {
        let l = listener.line();
        if l.starts_with("INBOUND ") {
            inbound = true;
        } else if let Some(n) = l.strip_prefix("PIPE ") {
            assert_eq!(n, bytes.to_string());
            break;
        } else {
            panic!("unexpected listener line `{l}`");
        }
    }
    assert!(inbound, "no INBOUND line before PIPE");
}

#[test]
fn tcp_relay_tcp_listener_echoes_one_mib() {
    let (relay, tcp, _ws) = start_relay(&[]);
    let (listener, id, circuit) = start_listener(&tcp);
    dial_ok(&circuit, &id, 1 << 20, 3);
    expect_inbound_and_pipe(&listener, 1 << 20);
    // SIGTERM ends the long-running modes cleanly.
    assert_eq!(listener.terminate().code(), Some(0));
    assert_eq!(relay.terminate().code(), Some(0));
}

#[test]
fn ws_listener_reachable_via_tcp_and_ws_circuits() {
    let (_relay, tcp, ws) = start_relay(&[]);
    let (listener, id, ws_circuit) = start_listener(&ws);
    assert!(ws_circuit.contains("/ws/p2p/"));
    // Through the relay's WebSocket address as printed in RESERVED...
    dial_ok(&ws_circuit, &id, 1 << 20, 2);
    expect_inbound_and_pipe(&listener, 1 << 20);
    // ...and through its TCP address: the reservation is per peer, not per transport.
    dial_ok(&format!("{tcp}/p2p-circuit/p2p/{id}"), &id, 4096, 1);
    expect_inbound_and_pipe(&listener, 4096);
}

#[test]
fn relay_byte_limit_cuts_the_echo() {
    // rust-libp2p counts both directions together against max_circuit_bytes.
    let (_relay, tcp, _ws) = start_relay(&["--max-circuit-bytes", "100000"]);
    let (_listener, _id, circuit) = start_listener(&tcp);
    let d = Peer::spawn(
        "dial",
        &["dial", &circuit, "--bytes", "1048576", "--pings", "1"],
    );
    let (out, status) = d.finish(Duration::from_secs(70));
    assert_eq!(status.code(), Some(1), "{out:?}");
    assert!(out.iter().any(|l| l.starts_with("CONNECTED ")), "{out:?}");
    assert!(
        out.last().is_some_and(|l| l.starts_with("ERROR ")),
        "{out:?}"
    );
    assert!(!out.iter().any(|l| l.starts_with("ECHO OK")), "{out:?}");
}

#[test]
fn dial_to_closed_port_reports_error() {
    // Bind and drop a listener to get a loopback port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let d = Peer::spawn("dial", &["dial", &format!("/ip4/127.0.0.1/tcp/{port}")]);
    let (out, status) = d.finish(Duration::from_secs(70));
    assert_eq!(status.code(), Some(1), "{out:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("ERROR "), "{out:?}");
}

/// Value of a numeric field of the perf client's JSON line.
fn json_field(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).expect("field end");
    rest[..end].parse().expect("a number")
}

#[test]
fn perf_server_reserves_on_relay_and_serves_over_the_circuit() {
    let (_relay, tcp, _ws) = start_relay(&["--max-circuits", "8", "--max-streams", "1024"]);
    let server = Peer::spawn("perf server", &["perf", "--server", "--relay", &tcp]);
    let id = server.expect("PEER");
    // --relay alone: no direct listener, so no LISTEN line.
    let circuit = server.expect("RESERVED");
    assert_eq!(circuit, format!("{tcp}/p2p-circuit/p2p/{id}"));
    assert_eq!(server.line(), "READY");

    let (up, down) = (3 << 20, 1 << 20);
    let client = Peer::spawn(
        "perf client",
        &[
            "perf",
            &circuit,
            "--upload",
            &up.to_string(),
            "--download",
            &down.to_string(),
            "--timeout",
            "120",
        ],
    );
    let (out, status) = client.finish(Duration::from_secs(130));
    assert!(status.success(), "perf client failed: {status:?} {out:?}");
    let line = out.last().expect("a result line");
    assert_eq!(json_field(line, "upload_bytes"), up as f64);
    assert_eq!(json_field(line, "download_bytes"), down as f64);
    for k in ["upload_mib_s", "download_mib_s", "connect_ms"] {
        let v = json_field(line, k);
        assert!(v.is_finite() && v > 0.0, "{k} = {v} in {line}");
    }
    let total = json_field(line, "total_secs");
    let parts = json_field(line, "upload_secs") + json_field(line, "download_secs");
    assert!(parts <= total + 1e-6, "{line}");
    // The server counted the same bytes.
    let served = server.expect("PERF");
    assert!(served.ends_with(&format!(" {up} {down}")), "{served}");
}
