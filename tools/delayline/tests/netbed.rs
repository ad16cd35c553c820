//! Proves the NAT test bed (`tests/netbed/netbed.sh`): brings it up, checks that the NATs
//! isolate their hosts, that masquerading works, and that each relay's delay line gives it
//! the configured round-trip time; always tears it down again.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables) or `iptables`. Without them it skips
//! with a message, unless `CI=true`, where it fails.
//!
//! Sockets are made inside the bed's namespaces by short-lived threads that `setns` first
//! (a socket belongs to the namespace it was created in, whatever thread uses it later),
//! so the test needs no tools inside the namespaces (no ping, nc or python).

use circuit_delayline::tap::{enter_netns, netns_path};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PREFIX: &str = "cbt-";
const DELAYS_MS: [u64; 4] = [5, 15, 30, 60];
const PORT: u16 = 7000;
const REFUSE_TIMEOUT: Duration = Duration::from_millis(1500);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/netbed/netbed.sh")
}

/// PATH with the sbin directories, where `ip`, `nft` and `iptables` live.
fn path_env() -> String {
    let base = std::env::var("PATH").unwrap_or_default();
    format!("{base}:/usr/local/sbin:/usr/sbin:/sbin")
}

fn have(tool: &str) -> bool {
    path_env()
        .split(':')
        .any(|dir| !dir.is_empty() && Path::new(dir).join(tool).is_file())
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if !have("ip") {
        return Err("`ip` not found (Debian package iproute2)".into());
    }
    if !have("nft") && !have("iptables") {
        return Err("neither `nft` nor `iptables` found (Debian package nftables)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun missing".into());
    }
    Ok(())
}

/// The bed; dropping it (also while unwinding from a failed assertion) runs `down`.
struct Bed {
    hosts: HashMap<String, String>,
}

impl Bed {
    fn run(action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .arg(action)
            .env("PATH", path_env())
            .env("CB_PREFIX", PREFIX)
            .env("CB_DELAYS", DELAYS_MS.map(|d| d.to_string()).join(" "))
            .env("CB_DELAYLINE", env!("CARGO_BIN_EXE_circuit-delayline"))
            .output()
            .expect("run netbed.sh")
    }

    fn up() -> Bed {
        // A bed left over from a killed run would make "up" a no-op on stale state.
        Self::run("down");
        // From here on, any panic tears the bed down (the guard exists before "up").
        let mut bed = Bed {
            hosts: HashMap::new(),
        };
        let out = Self::run("up");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "netbed.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = format!(
            "/run/circuit-netbed/{}/hosts.env",
            PREFIX.trim_end_matches('-')
        );
        let text = std::fs::read_to_string(&state).expect("read hosts.env");
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                bed.hosts
                    .insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        bed
    }

    fn get(&self, key: &str) -> String {
        self.hosts
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from hosts.env"))
            .clone()
    }

    fn ip(&self, key: &str) -> Ipv4Addr {
        self.get(key).parse().expect("an IPv4 address")
    }

    /// `ip -n NS ARGS…`, asserting success.
    fn ip_cmd(&self, ns: &str, args: &[&str]) {
        let out = Command::new("ip")
            .env("PATH", path_env())
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let out = Self::run("down");
        if !out.status.success() {
            eprintln!("netbed.sh down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        enter_netns(&path).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A TCP server in `ns` that answers every connection with the peer address it saw.
fn serve_peer_addr(ns: &str) {
    let listener = in_netns(ns, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind in netns")
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.to_string().as_bytes());
            }
        }
    });
}

/// Connects from inside `ns`; returns the stream and the time `connect` took (one RTT).
fn connect_from(ns: &str, to: Ipv4Addr) -> std::io::Result<(TcpStream, Duration)> {
    let to = SocketAddr::new(IpAddr::V4(to), PORT);
    in_netns(ns, move || {
        let start = Instant::now();
        let s = TcpStream::connect_timeout(&to, REFUSE_TIMEOUT)?;
        Ok((s, start.elapsed()))
    })
}

/// The address the server at `to` saw for a connection made from `ns`.
fn seen_by(ns: &str, to: Ipv4Addr) -> SocketAddr {
    let (mut s, _) =
        connect_from(ns, to).unwrap_or_else(|e| panic!("{ns} cannot connect to {to}:{PORT}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read peer address");
    text.parse().expect("a socket address")
}

fn assert_unreachable(ns: &str, to: Ipv4Addr, why: &str) {
    if let Ok((s, _)) = connect_from(ns, to) {
        panic!(
            "{ns} reached {to}:{PORT} ({why}); local {:?}",
            s.local_addr()
        );
    }
}

/// Smallest connect time over a few tries (after one warm-up that also resolves ARP):
/// the minimum is what the path costs; the rest is scheduling noise.
fn rtt(ns: &str, to: Ipv4Addr) -> Duration {
    let mut best = Duration::MAX;
    for i in 0..6 {
        let (_, took) =
            connect_from(ns, to).unwrap_or_else(|e| panic!("{ns} cannot connect to {to}: {e}"));
        if i > 0 {
            best = best.min(took);
        }
    }
    best
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn netbed_isolates_nats_masquerades_and_delays_each_relay() {
    if let Err(why) = prerequisites() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("netbed test cannot run in CI: {why}");
        }
        eprintln!("SKIPPED: netbed test: {why}");
        return;
    }
    let started = Instant::now();
    let bed = Bed::up();

    let pubhost = bed.get("CB_PUBHOST_NS");
    let dht = bed.get("CB_DHT_NS");
    let (nat1, nat2) = (bed.get("CB_NAT1_NS"), bed.get("CB_NAT2_NS"));
    let (rtr1, rtr2) = (bed.get("CB_RTR1_NS"), bed.get("CB_RTR2_NS"));
    let (nat1_ip, nat2_ip) = (bed.ip("CB_NAT1_ADDR"), bed.ip("CB_NAT2_ADDR"));
    let (rtr1_pub, rtr2_pub) = (bed.ip("CB_RTR1_PUBLIC_ADDR"), bed.ip("CB_RTR2_PUBLIC_ADDR"));
    let relays: Vec<(String, Ipv4Addr, u64)> = bed
        .get("CB_RELAYS")
        .split_whitespace()
        .map(|r| {
            let n = r.trim_start_matches('r');
            let delay: u64 = bed.get(&format!("CB_R{n}_DELAY_MS")).parse().unwrap();
            (
                bed.get(&format!("CB_R{n}_NS")),
                bed.ip(&format!("CB_R{n}_ADDR")),
                delay,
            )
        })
        .collect();
    assert_eq!(
        relays.iter().map(|r| r.2).collect::<Vec<_>>(),
        DELAYS_MS,
        "hosts.env must carry the configured delays"
    );

    for ns in [&pubhost, &dht, &nat1, &nat2] {
        serve_peer_addr(ns);
    }
    for (ns, _, _) in &relays {
        serve_peer_addr(ns);
    }

    // (a) Isolation. First the controls: the listeners are there and reachable where the
    // network allows, so a failure below means "blocked", not "broken bed".
    let seen = seen_by(&pubhost, relays[0].1);
    assert_eq!(
        seen.ip(),
        bed.ip("CB_PUBHOST_ADDR"),
        "public hosts are not NATed"
    );
    seen_by(&nat1, bed.ip("CB_PUBHOST_ADDR"));
    seen_by(&nat2, bed.ip("CB_DHT_ADDR"));
    seen_by(&nat1, nat1_ip); // nat1's own listener is up (from inside)
    seen_by(&nat2, nat2_ip);

    // The public segment has no route to the inside ranges...
    assert_unreachable(&pubhost, nat1_ip, "no route to a NAT's inside");
    assert_unreachable(&pubhost, nat2_ip, "no route to a NAT's inside");
    assert_unreachable(&relays[0].0, nat1_ip, "no route to a NAT's inside");
    // ...the routers forward nothing inbound (no port forwarding)...
    assert_unreachable(&pubhost, rtr1_pub, "router 1 has no port forward");
    assert_unreachable(&nat2, rtr1_pub, "router 1 has no port forward");
    assert_unreachable(&nat1, rtr2_pub, "router 2 has no port forward");
    // ...the NATed hosts cannot reach each other's inside addresses...
    assert_unreachable(&nat1, nat2_ip, "nat1 -> nat2 inside, no route");
    assert_unreachable(&nat2, nat1_ip, "nat2 -> nat1 inside, no route");
    // ...and even a host that routes to the inside through the router is dropped there:
    // the router's forward filter only passes what the inside started.
    bed.ip_cmd(
        &pubhost,
        &["route", "add", "10.77.1.0/24", "via", &rtr1_pub.to_string()],
    );
    bed.ip_cmd(
        &pubhost,
        &["route", "add", "10.77.2.0/24", "via", &rtr2_pub.to_string()],
    );
    bed.ip_cmd(
        &rtr1,
        &["route", "add", "10.77.2.0/24", "via", &rtr2_pub.to_string()],
    );
    bed.ip_cmd(
        &rtr2,
        &["route", "add", "10.77.1.0/24", "via", &rtr1_pub.to_string()],
    );
    assert_unreachable(&pubhost, nat1_ip, "routed via router 1, must be filtered");
    assert_unreachable(&pubhost, nat2_ip, "routed via router 2, must be filtered");
    assert_unreachable(&nat1, nat2_ip, "routed router to router, must be filtered");
    assert_unreachable(&nat2, nat1_ip, "routed router to router, must be filtered");
    bed.ip_cmd(&pubhost, &["route", "del", "10.77.1.0/24"]);
    bed.ip_cmd(&pubhost, &["route", "del", "10.77.2.0/24"]);
    bed.ip_cmd(&rtr1, &["route", "del", "10.77.2.0/24"]);
    bed.ip_cmd(&rtr2, &["route", "del", "10.77.1.0/24"]);

    // (b) Outbound works, and the relays see the router's public address (MASQUERADE).
    for (ns, addr, _) in &relays {
        let seen = seen_by(&nat1, *addr);
        assert_eq!(seen.ip(), IpAddr::V4(rtr1_pub), "{ns} saw nat1 as {seen}");
        let seen = seen_by(&nat2, *addr);
        assert_eq!(seen.ip(), IpAddr::V4(rtr2_pub), "{ns} saw nat2 as {seen}");
    }
    let seen = seen_by(&nat1, bed.ip("CB_DHT_ADDR"));
    assert_eq!(seen.ip(), IpAddr::V4(rtr1_pub));

    // (c) Delays. A delay line never delivers early, so RTT >= 2 x one-way is exact; the
    // upper bound is generous (busy 2-core machine) and the ordering is the real claim.
    let base = rtt(&pubhost, bed.ip("CB_DHT_ADDR"));
    eprintln!("RTT pubhost -> dht (no delay line): {:.2} ms", ms(base));
    assert!(
        base < Duration::from_millis(20),
        "undelayed path took {base:?}"
    );
    let mut from_nat = Vec::new();
    for (ns, addr, delay) in &relays {
        let floor = Duration::from_millis(2 * delay);
        let ceil = floor + Duration::from_millis(40);
        let n = rtt(&nat1, *addr);
        let p = rtt(&pubhost, *addr);
        eprintln!(
            "RTT to {ns} (one-way {delay} ms): from nat1 {:.2} ms, from pubhost {:.2} ms",
            ms(n),
            ms(p)
        );
        for (from, got) in [("nat1", n), ("pubhost", p)] {
            assert!(
                got >= floor && got <= ceil,
                "RTT {from} -> {ns} = {got:?}, want {floor:?}..={ceil:?}"
            );
        }
        from_nat.push(n);
    }
    assert!(
        from_nat.windows(2).all(|w| w[0] < w[1]),
        "relay RTTs must follow the configured delays: {from_nat:?}"
    );
    // Relay to relay crosses both delay lines: the delay applies to all of a relay's traffic.
    let (first, last) = (&relays[0], &relays[relays.len() - 1]);
    let r2r = rtt(&first.0, last.1);
    eprintln!("RTT {} -> {}: {:.2} ms", first.0, last.0, ms(r2r));
    assert!(
        r2r >= Duration::from_millis(2 * (first.2 + last.2)),
        "{r2r:?}"
    );

    drop(bed);
    let leftovers = Command::new("ip")
        .env("PATH", path_env())
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let leftovers = String::from_utf8_lossy(&leftovers.stdout);
    assert!(
        !leftovers.lines().any(|l| l.starts_with(PREFIX)),
        "down left namespaces behind: {leftovers}"
    );
    eprintln!("netbed test took {:?}", started.elapsed());
}
