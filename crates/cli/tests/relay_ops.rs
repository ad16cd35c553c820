//! Running a relay in production, as separate `circuit` processes on loopback:
//! the config file, `/metrics` against the dashboard in `deploy/`, the status
//! page, SIGHUP reload without dropping circuits, graceful shutdown on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

mod common;
use common::{circuit, tmp, Proc};

const T: Duration = Duration::from_secs(30);

struct Relay {
    proc: Proc,
    peer_id: String,
    tcp: String,
    metrics: String,
}

/// Starts `circuit --json relay` on loopback with a metrics endpoint on a free port.
fn relay(extra: &[&str]) -> Relay {
    let mut args = vec!["--json", "relay", "--metrics", "127.0.0.1:0"];
    if !extra.contains(&"--status-interval") {
        args.extend_from_slice(&["--status-interval", "0"]);
    }
    args.extend_from_slice(extra);
    if !extra.contains(&"--listen") && !extra.contains(&"--config") {
        args.extend_from_slice(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    }
    let mut proc = Proc::spawn("circuit relay", &circuit(), &args);
    let line = proc.expect_line("\"listening\"", false, T);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let peer_id = v["peer_id"].as_str().unwrap().to_string();
    let tcp = v["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/ws"))
        .expect("a TCP address")
        .to_string();
    let metrics = v["metrics"].as_str().expect("metrics address").to_string();
    Relay {
        proc,
        peer_id,
        tcp,
        metrics,
    }
}

/// A plain HTTP/1.1 GET; returns (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The value of the sample line `series` (name with labels) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `circuit listen --echo` reserving on `relay`; returns it and its circuit address.
fn listener(relay_tcp: &str) -> (Proc, String) {
    let mut p = Proc::spawn(
        "circuit listen",
        &circuit(),
        &["--json", "listen", "--relay", relay_tcp, "--echo"],
    );
    let line = p.expect_line("\"reserved\"", true, T);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["addrs"][0].as_str().unwrap().to_string();
    assert!(addr.contains("/p2p-circuit/p2p/"), "{addr}");
    (p, addr)
}

/// `circuit dial` with stdin/stdout held open: an interactive circuit.
struct Dial {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<Vec<u8>>,
}

impl Dial {
    fn open(addr: &str) -> Dial {
        let mut child = Command::new(circuit())
            .args(["dial", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Dial { child, stdin, out }
    }

    /// Sends `data` and waits for the same bytes to come back.
    fn echo(&mut self, data: &[u8]) {
        let si = self.stdin.as_mut().unwrap();
        si.write_all(data).unwrap();
        si.flush().unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + T;
        while got.len() < data.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            got.extend(self.out.recv_timeout(left).expect("echo did not come back"));
        }
        assert_eq!(got, data);
    }

    /// Closes stdin; waits for a clean exit.
    fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        let deadline = Instant::now() + T;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "dial did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dial {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Metric names used in the queries of a Grafana dashboard: identifiers with
/// our or go-libp2p's prefixes (functions, labels and keywords have none).
fn dashboard_metric_names(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        out.extend(x.as_str().map(str::to_string));
                    } else {
                        walk(x, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut exprs);
    let mut names = Vec::new();
    for e in exprs {
        // Drop label matchers' quoted values, then split into identifiers.
        let mut plain = String::new();
        let mut in_quote = false;
        for c in e.chars() {
            if c == '"' {
                in_quote = !in_quote;
            } else if !in_quote {
                plain.push(c);
            }
        }
        for tok in plain.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if ["libp2p_", "circuit_", "process_"]
                .iter()
                .any(|p| tok.starts_with(p))
                && !names.contains(&tok.to_string())
            {
                names.push(tok.to_string());
            }
        }
    }
    names
}

#[test]
fn status_line_reports_reservations_circuits_and_window_budget() {
    let mut r = relay(&["--status-interval", "1"]);
    let (_l, circuit_addr) = listener(&r.tcp);
    let mut dial = Dial::open(&circuit_addr);
    dial.echo(b"through the relay\n");
    let line = r.proc.expect_with(
        "a status line with the reservation and the circuit",
        true,
        T,
        |l| {
            l.contains("\"status\"")
                && l.contains("\"circuits\":1")
                && l.contains("\"reservations\":1")
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert!(f["connections"].as_u64().unwrap() >= 2, "{line}");
    assert!(f["bytes_relayed"].as_u64().unwrap() >= 2 * 18, "{line}");
    // Loopback: the relayed windows never grow, so none of the budget is in use.
    assert_eq!(f["window_budget_used"].as_u64(), Some(0), "{line}");
}

#[test]
fn every_metric_in_the_dashboard_is_on_a_running_relays_metrics() {
    let dashboard = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana-relay.json"),
    )
    .unwrap();
    let names = dashboard_metric_names(&dashboard);
    // go-libp2p's relay-service dashboard queries these nine series; ours must too.
    for go in [
        "libp2p_relaysvc_status",
        "libp2p_relaysvc_reservations_total",
        "libp2p_relaysvc_reservation_request_response_status_total",
        "libp2p_relaysvc_reservation_rejections_total",
        "libp2p_relaysvc_connections_total",
        "libp2p_relaysvc_connection_request_response_status_total",
        "libp2p_relaysvc_connection_rejections_total",
        "libp2p_relaysvc_connection_duration_seconds_sum",
        "libp2p_relaysvc_data_transferred_bytes_total",
    ] {
        assert!(names.iter().any(|n| n == go), "dashboard lacks {go}");
    }
    assert!(names.len() >= 15, "{names:?}");
    let r = relay(&[]);
    let (code, scrape) = get(&r.metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(
        scrape.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let missing: Vec<_> = names
        .iter()
        .filter(|n| {
            !scrape
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        })
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:?}\n{scrape}");
    assert_eq!(sample(&scrape, "libp2p_relaysvc_status"), Some(1.0));
    assert_eq!(get(&r.metrics, "/nope").0, 404);
}

#[test]
fn status_page_shows_identity_and_counts_follow_a_reservation() {
    let r = relay(&[]);
    let (code, page) = get(&r.metrics, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains(&format!("<code id=\"peer-id\">{}</code>", r.peer_id)),
        "{page}"
    );
    assert!(page.contains(&r.tcp), "address in the served HTML");
    assert!(page.contains("data-copy=") && page.contains("<script>"));
    assert!(
        page.contains("<td id=\"count-reservations\">0</td>"),
        "{page}"
    );

    let (_l, circuit_addr) = listener(&r.tcp);
    assert!(circuit_addr.starts_with(&r.tcp));
    let status = || -> serde_json::Value {
        serde_json::from_str(&get(&r.metrics, "/status.json").1).unwrap()
    };
    wait_for("the reservation in /status.json", T, || {
        status()["reservations"] == 1
    });
    let (_, page) = get(&r.metrics, "/");
    assert!(
        page.contains("<td id=\"count-reservations\">1</td>"),
        "{page}"
    );
    let (_, scrape) = get(&r.metrics, "/metrics");
    assert_eq!(
        sample(
            &scrape,
            "libp2p_relaysvc_reservations_total{type=\"opened\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "libp2p_relaysvc_reservation_request_response_status_total{status=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "circuit_relay_reservations_active"),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "circuit_connections_active{transport=\"tcp\"}"),
        Some(1.0)
    );
    assert!(sample(&scrape, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
}

#[test]
fn relay_serves_bounded_perf_and_counts_it() {
    let r = relay(&["--perf-max-bytes", "1048576"]);
    let perf = |args: &[&str]| {
        let mut all = vec!["perf", r.tcp.as_str()];
        all.extend_from_slice(args);
        Command::new(circuit()).args(&all).output().unwrap()
    };
    let ok = perf(&["--upload", "1M", "--download", "1M"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("download 1048576 bytes"));
    let refused = perf(&["--download", "2M"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--perf-max-bytes"), "{err}");
    let (_, scrape) = get(&r.metrics, "/metrics");
    assert_eq!(
        sample(&scrape, "circuit_perf_requests_total{outcome=\"served\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "circuit_perf_requests_total{outcome=\"too_large\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "circuit_perf_bytes_total{direction=\"sent\"}"),
        Some(1048576.0)
    );
    // Off: the protocol is not offered.
    let off = relay(&["--no-perf"]);
    let out = Command::new(circuit())
        .args(["perf", off.tcp.as_str(), "--download", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn config_file_errors_name_key_and_line_and_flags_override_the_file() {
    let bad = tmp("bad.toml");
    std::fs::write(
        &bad,
        "listen = [\"/ip4/127.0.0.1/tcp/0\"]\n\n[limits]\nmax_circuit = 3\n",
    )
    .unwrap();
    let out = Command::new(circuit())
        .args(["relay", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_circuit") && err.contains("line 4"),
        "{err}"
    );

    std::fs::write(&bad, "[acl.connect]\ndeny = [\"10.0.0.0/33\"]\n").unwrap();
    let out = Command::new(circuit())
        .args(["relay", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deny") && err.contains("line 2"), "{err}");

    let good = tmp("good.toml");
    std::fs::write(&good, "[limits]\nmax_circuits = 7\nmax_reservations = 9\n").unwrap();
    let out = Command::new(circuit())
        .args([
            "relay",
            "--print-config",
            "--max-reservations",
            "5",
            "--window-budget",
            "1048576",
            "--config",
        ])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        v["limits"]["max_circuits"].as_integer(),
        Some(7),
        "from the file"
    );
    assert_eq!(
        v["limits"]["max_reservations"].as_integer(),
        Some(5),
        "flag beats file"
    );
    assert_eq!(
        v["limits"]["limit_data"].as_integer(),
        Some(131072),
        "default"
    );
    assert_eq!(
        v["limits"]["window_budget"].as_integer(),
        Some(1048576),
        "flag"
    );
    // The printed config is itself a valid config file.
    std::fs::write(&good, &text).unwrap();
    let again = Command::new(circuit())
        .args(["relay", "--print-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
    let _ = std::fs::remove_file(bad);
    let _ = std::fs::remove_file(good);
}

#[test]
fn sighup_applies_a_new_acl_without_dropping_open_circuits() {
    let cfg = tmp("relay.toml");
    let key = tmp("relay.key");
    let base = format!(
        "listen = [\"/ip4/127.0.0.1/tcp/0\"]\nidentity = {:?}\n",
        key.display().to_string()
    );
    std::fs::write(&cfg, &base).unwrap();
    let mut r = relay(&["--config", cfg.to_str().unwrap()]);
    let (_l, circuit_addr) = listener(&r.tcp);
    let mut dial = Dial::open(&circuit_addr);
    dial.echo(b"before the reload\n");

    std::fs::write(
        &cfg,
        format!("{base}\n[acl.connect]\ndeny = [\"127.0.0.0/8\"]\n"),
    )
    .unwrap();
    r.proc.signal("HUP");
    r.proc.expect_line("config reloaded", true, T);

    // The open circuit goes on under the new config...
    dial.echo(b"after the reload\n");
    // ...while a new circuit from a denied address is refused.
    let out = Command::new(circuit())
        .args(["ping", &circuit_addr, "-c", "1"])
        .env("XDG_DATA_HOME", tmp("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    let (_, scrape) = get(&r.metrics, "/metrics");
    assert_eq!(
        sample(
            &scrape,
            "circuit_relay_refusals_total{request=\"connect\",reason=\"acl\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "libp2p_relaysvc_connection_rejections_total{reason=\"permission denied\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "circuit_relay_circuits_active"), Some(1.0));
    dial.echo(b"still here\n");
    assert_eq!(dial.finish(), 0);

    // A broken file is refused and the running config stays.
    std::fs::write(&cfg, format!("{base}\n[limits]\nmax_circuits = \"many\"\n")).unwrap();
    r.proc.signal("HUP");
    r.proc.expect_line("config not reloaded", true, T);
    assert!(r.proc.running());
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(key);
}

#[test]
fn sigterm_drains_open_circuits_exits_zero_and_clients_come_back_after_a_restart() {
    let key = tmp("relay.key");
    let key_s = key.to_str().unwrap().to_string();
    let mut r = relay(&["--identity", &key_s, "--shutdown-drain", "20"]);
    let (mut l, circuit_addr) = listener(&r.tcp);
    let mut dial = Dial::open(&circuit_addr);
    dial.echo(b"hello before SIGTERM\n");

    r.proc.signal("TERM");
    r.proc.expect_line("stopped accepting; draining", true, T);
    // Not accepting any more: the TCP port is closed.
    let port = r.tcp.split('/').nth(4).unwrap().to_string();
    wait_for("the listener to close", Duration::from_secs(5), || {
        TcpStream::connect(format!("127.0.0.1:{port}")).is_err()
    });
    // Draining: the relay reports not serving and the open circuit still works.
    let (_, scrape) = get(&r.metrics, "/metrics");
    assert_eq!(sample(&scrape, "libp2p_relaysvc_status"), Some(0.0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.proc.running(), "exited while a circuit was still open");
    dial.echo(b"still relayed while draining\n");
    // The circuit ends; the relay then exits 0 well before the drain deadline.
    assert_eq!(dial.finish(), 0);
    let started = Instant::now();
    assert_eq!(r.proc.wait(Duration::from_secs(10)), 0);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Same identity, same port: back in service, and the listener re-reserves by itself.
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let r2 = relay(&["--identity", &key_s, "--listen", &listen]);
    assert_eq!(r2.peer_id, r.peer_id);
    l.expect_line("\"reserved\"", true, T);
    let mut dial = Dial::open(&circuit_addr);
    dial.echo(b"hello after the restart\n");
    assert_eq!(dial.finish(), 0);
    let _ = std::fs::remove_file(key);
}
