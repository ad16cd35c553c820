//! Nodes that come and go must not leave memory behind in the process that made
//! them: a long-running app (or a soak test) creates and drops many nodes and
//! connections. Rounds as in the relay soak: a new listener reserves on an
//! in-process relay, a new dialer reaches it over a circuit and echoes data, both
//! shut down. The process's live heap (counted by a wrapping allocator) after many
//! rounds must stay at the level after the warm-up, and no tasks may be left.

mod common;

#[path = "common/live_heap.rs"]
mod live_heap;

use std::time::Duration;

use circuit_net::protocols::autonat;
use circuit_net::protocols::kad::{Kad, KadConfig};
use circuit_net::relay_client;
use circuit_relay::RelayConfig;
use common::*;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn round(relay_addr: &circuit_net::Multiaddr, n: usize) {
    let listener = node(&[]).await;
    serve_echo(&listener);
    // Services that keep a clone of the node in a handler or an event task.
    let _kad = Kad::start(&listener, KadConfig::default());
    autonat::enable_server(&listener, Default::default());
    let r = relay_client::reserve(&listener, relay_addr).await.unwrap();
    let dialer = node(&[]).await;
    let conn = dialer
        .dial(&circuit_addr(relay_addr, &listener.peer_id()))
        .await
        .unwrap();
    let s = dialer.open_stream(&conn, ECHO).await.unwrap();
    let got = echo_through(s, &vec![0x5a; n]).await;
    assert_eq!(got.len(), n);
    drop(r);
    conn.close();
    dialer.shutdown(Duration::ZERO).await;
    listener.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_come_and_go_leave_no_memory_behind() {
    init_logs();
    let cfg = RelayConfig {
        limit: circuit_proto::relay::Limit::UNLIMITED,
        ..RelayConfig::default()
    };
    let (_relay_node, _relay, addr) = relay(cfg).await;
    for i in 0..40 {
        within(20.0, "warm-up round", round(&addr, 1024 + i * 4096)).await;
    }
    // Two equal stretches of rounds: allocator warm-up shows in the first, a leak in
    // both; the second one's growth is what is kept per round.
    let rounds: usize = std::env::var("CHURN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rss = Vec::new();
    let mut tasks = Vec::new();
    let mut heap = Vec::new();
    for stretch in 0..3 {
        if stretch > 0 {
            // Three workers at once, as in the relay soak.
            let mut workers = tokio::task::JoinSet::new();
            for w in 0..3 {
                let addr = addr.clone();
                workers.spawn(async move {
                    for i in (w..rounds).step_by(3) {
                        let n = 1024 + (i * 7919) % (512 * 1024);
                        within(20.0, "round", round(&addr, n)).await;
                    }
                });
            }
            while let Some(r) = workers.join_next().await {
                r.expect("worker");
            }
        }
        // Background loops of departed nodes notice within a second (Kademlia's tick).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rss.push(rss_kib());
        heap.push(live_heap::live_bytes() / 1024);
        tasks.push(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        );
    }
    let per_round = ((heap[2] - heap[1]).max(0) * 1024) as f64 / rounds as f64;
    eprintln!("churn: live heap {heap:?} KiB");
    eprintln!("churn: RSS {rss:?} KiB and tasks alive {tasks:?} after 0, {rounds}, {} rounds: {per_round:.0} B of live heap kept per round in the second stretch", 2 * rounds);
    assert!(
        tasks[2] <= tasks[1] + 10,
        "tasks left running by departed nodes: {tasks:?}"
    );
    // Live heap, not RSS: glibc keeps freed memory in its arenas, so RSS grows for a
    // while without a leak (measured: RSS +1–3 KiB per round, live heap flat).
    assert!(
        per_round < 512.0,
        "{per_round:.0} B of live heap kept per round (live heap {heap:?} KiB, RSS {rss:?} KiB)"
    );
}
