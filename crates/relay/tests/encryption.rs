//! The relay only ever forwards ciphertext: a marker sent dialer → relay →
//! listener over a relayed connection never appears in the bytes the relay
//! copies, while the listener gets it intact.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use circuit_proto::relay::Limit;
use circuit_relay::{bridge_tapped, BridgeEnd, Direction, RelayConfig, Tap};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes the relay forwarded, per direction.
#[derive(Default)]
struct Seen {
    up: Vec<u8>,
    down: Vec<u8>,
    chunks: usize,
}

fn recording_tap() -> (Tap, Arc<Mutex<Seen>>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = seen.clone();
    let tap = Tap::new(move |dir, chunk| {
        let mut g = s2.lock().unwrap();
        g.chunks += 1;
        match dir {
            Direction::SrcToDst => g.up.extend_from_slice(chunk),
            Direction::DstToSrc => g.down.extend_from_slice(chunk),
        }
    });
    (tap, seen)
}

/// Positive control: the same tap and search do find a marker when the bridge
/// carries plaintext, so the end-to-end test below cannot pass by a blind tap.
#[tokio::test]
async fn tap_and_search_find_plaintext_marker() {
    let marker = random_32();
    let (tap, seen) = recording_tap();
    let (mut a, src) = tokio::io::duplex(1 << 16);
    let (mut b, dst) = tokio::io::duplex(1 << 16);
    let counter = AtomicU64::new(0);
    let peers = async move {
        let payload = marker.repeat(64);
        a.write_all(&payload).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(got, payload);
    };
    let (stats, ()) = tokio::join!(
        bridge_tapped(src, dst, Limit::UNLIMITED, 1000, &counter, Some(&tap)),
        peers
    );
    assert_eq!(stats.end, BridgeEnd::Done);
    let g = seen.lock().unwrap();
    assert_eq!(g.up.len(), 64 * 32);
    assert!(contains(&g.up, &marker));
    assert_eq!(counter.load(Ordering::Relaxed), 64 * 32);
}

#[tokio::test]
async fn relay_forwards_only_ciphertext() {
    init_logs();
    let marker = random_32();
    let payload = marker.repeat(2048); // 64 KiB
    let (tap, seen) = recording_tap();
    let (_rn, relay, relay_addr) = relay(RelayConfig {
        limit: Limit::UNLIMITED,
        tap: Some(tap),
        ..Default::default()
    })
    .await;
    let (listener, logs, circuit) = reserved_listener(&relay_addr).await;

    let dialer = node(&[]).await;
    let conn = within(5.0, "dial circuit", dialer.dial(&circuit))
        .await
        .unwrap();
    assert!(conn.info().relayed);
    assert_eq!(conn.peer(), listener.peer_id());
    let mut s = dialer.open_stream(&conn, ECHO).await.unwrap();
    let echoed = within(10.0, "echo 64 KiB", echo_through(&mut s, &payload)).await;

    // The application saw its plaintext, both at the listener and back at the dialer.
    assert!(echoed == payload, "echo differs from what was sent");
    wait_until(3.0, "listener echo handler finished", || {
        logs.lock().unwrap().first().and_then(|l| l.end).is_some()
    })
    .await;
    {
        let logs = logs.lock().unwrap();
        assert_eq!(logs.len(), 1);
        assert!(logs[0].received == payload, "listener got something else");
        assert!(contains(&logs[0].received, &marker));
    }

    // The relay forwarded at least the payload each way (plus Noise and yamux
    // overhead, the handshake, identify) — so the tap really saw the circuit…
    let g = seen.lock().unwrap();
    assert!(
        g.up.len() >= payload.len(),
        "tap saw only {} bytes up",
        g.up.len()
    );
    assert!(
        g.down.len() >= payload.len(),
        "tap saw only {} bytes down",
        g.down.len()
    );
    assert!(g.chunks > 2);
    assert!(
        relay.stats().bytes_relayed.load(Ordering::Relaxed) >= (g.up.len() + g.down.len()) as u64
    );
    // …but never the marker, nor even half of it, in either direction.
    for (name, bytes) in [("up", &g.up), ("down", &g.down)] {
        assert!(
            !contains(bytes, &marker),
            "marker in relayed bytes ({name})"
        );
        for half in marker.chunks(16) {
            assert!(
                !contains(bytes, half),
                "half marker in relayed bytes ({name})"
            );
        }
    }
    // Sanity on the search itself: the relayed bytes start with the plaintext
    // multistream header of the end-to-end upgrade, which it must find.
    assert!(contains(&g.up, b"/multistream/1.0.0\n"));
    assert!(contains(&g.up, b"/noise\n"));
}
