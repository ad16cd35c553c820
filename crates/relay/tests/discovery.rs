//! Kademlia, AutoNAT and autorelay in one process on loopback: relays advertise
//! themselves in a small DHT, a node that considers itself private finds them,
//! reserves on the wanted number and announces its circuit addresses by identify push.

use std::time::Duration;

use circuit_net::autorelay::{Autorelay, AutorelayConfig, AutorelayEvent};
use circuit_net::protocols::autonat::{self, AutoNat};
use circuit_net::protocols::kad::{namespace_key, Kad, KadConfig, RELAY_NAMESPACE};
use circuit_net::{Keypair, Multiaddr, Node, NodeConfig};
use circuit_proto::autonat::{ClientConfig, NatStatus, ServerConfig};
use circuit_proto::autorelay::ChooserConfig;
use circuit_relay::{Relay, RelayConfig};

async fn node(listen: bool) -> Node {
    let n = Node::new(Keypair::generate_ed25519(), NodeConfig::default());
    if listen {
        n.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
    }
    n
}

fn full(n: &Node) -> Multiaddr {
    n.full_addr(&n.listen_addrs()[0])
}

fn private_loopback_server() -> ServerConfig {
    ServerConfig {
        allow_private: true,
        ..Default::default()
    }
}

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_found_in_the_dht_reserved_on_and_announced() {
    let dht = node(true).await;
    let _dht_kad = Kad::start(&dht, KadConfig::default());
    let mut relays = Vec::new();
    for _ in 0..4 {
        let r = node(true).await;
        let _relay = Relay::start(&r, RelayConfig::default());
        let kad = Kad::start(&r, KadConfig::default());
        assert!(kad.bootstrap(&[full(&dht)]).await >= 1);
        assert!(
            kad.provide(namespace_key(RELAY_NAMESPACE)).await >= 1,
            "provider record stored nowhere"
        );
        relays.push((r, kad));
    }

    // A peer that knows the private node before it gets relay addresses.
    let watcher = node(true).await;

    let private = node(true).await;
    let kad = Kad::start(
        &private,
        KadConfig {
            server: false,
            ..Default::default()
        },
    );
    kad.bootstrap(&[full(&dht)]).await;
    let providers = kad.get_providers(namespace_key(RELAY_NAMESPACE)).await;
    assert_eq!(
        providers.len(),
        4,
        "all four relays found as providers: {providers:?}"
    );
    let conn = private.dial(&full(&watcher)).await.unwrap();
    assert_eq!(conn.peer(), watcher.peer_id());

    let ar = Autorelay::start(
        &private,
        Some(kad),
        None,
        AutorelayConfig {
            chooser: ChooserConfig {
                want: 3,
                ..Default::default()
            },
            force_private: true,
            ..Default::default()
        },
    );
    let mut events = ar.events();
    let mut chosen = std::collections::HashSet::new();
    within(20, "three relays chosen", async {
        while chosen.len() < 3 {
            if let Ok(AutorelayEvent::RelayChosen { relay, addrs, .. }) = events.recv().await {
                assert!(addrs
                    .iter()
                    .all(|a| a.to_string().contains("/p2p-circuit/p2p/")));
                chosen.insert(relay);
            }
        }
    })
    .await;
    let relay_ids: Vec<_> = relays.iter().map(|(r, _)| r.peer_id()).collect();
    assert!(chosen.iter().all(|c| relay_ids.contains(c)));
    assert_eq!(
        private
            .addresses()
            .iter()
            .filter(|a| a.to_string().contains("/p2p-circuit"))
            .count(),
        3
    );

    // The watcher learnt them by identify push, without asking.
    within(10, "identify push of the relay addresses", async {
        loop {
            let n = watcher
                .peer_info(&private.peer_id())
                .map(|i| {
                    i.listen_addrs
                        .iter()
                        .filter(|a| a.to_string().contains("/p2p-circuit"))
                        .count()
                })
                .unwrap_or(0);
            if n == 3 {
                return;
            }

            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Someone else reaches the private node through one of them.
    let dialer = node(false).await;
    let addr = private
        .addresses()
        .into_iter()
        .find(|a| a.to_string().contains("/p2p-circuit"))
        .unwrap();
    let c = dialer.dial(&private.full_addr(&addr)).await.unwrap();
    assert_eq!(c.peer(), private.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_finds_a_reachable_node_public() {
    let server = node(true).await;
    autonat::enable_server(&server, private_loopback_server());
    let client = node(true).await;
    let status = AutoNat::start(
        &client,
        ClientConfig {
            boot_delay: Duration::from_millis(100),
            ..Default::default()
        },
    );
    client.dial(&full(&server)).await.unwrap();
    let mut w = status.watch();
    within(10, "public", async {
        loop {
            if matches!(w.borrow().0, NatStatus::Public(_)) {
                return;
            }
            w.changed().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_server_refuses_private_requesters_by_default() {
    let server = node(true).await;
    autonat::enable_server(&server, ServerConfig::default());
    let client = node(true).await;
    let status = AutoNat::start(
        &client,
        ClientConfig {
            boot_delay: Duration::from_millis(100),
            ..Default::default()
        },
    );
    client.dial(&full(&server)).await.unwrap();
    // A loopback requester is refused (dial-backs to private addresses prove nothing):
    // the client stays unknown rather than deciding public or private.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status.status().0, NatStatus::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_that_do_not_advertise_are_found_by_a_random_walk() {
    let dht = node(true).await;
    let _dht_kad = Kad::start(&dht, KadConfig::default());
    let mut relays = Vec::new();
    for _ in 0..2 {
        let r = node(true).await;
        let _relay = Relay::start(&r, RelayConfig::default());
        // In the DHT, but not providing /libp2p/relay.
        let kad = Kad::start(&r, KadConfig::default());
        kad.bootstrap(&[full(&dht)]).await;
        relays.push((r, kad));
    }
    let private = node(true).await;
    let kad = Kad::start(
        &private,
        KadConfig {
            server: false,
            ..Default::default()
        },
    );
    kad.bootstrap(&[full(&dht)]).await;
    assert!(
        kad.get_providers(namespace_key(RELAY_NAMESPACE))
            .await
            .is_empty(),
        "nobody advertises here"
    );
    let ar = Autorelay::start(
        &private,
        Some(kad),
        None,
        AutorelayConfig {
            chooser: ChooserConfig {
                want: 2,
                ..Default::default()
            },
            force_private: true,
            discovery_interval: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let mut events = ar.events();
    let mut chosen = std::collections::HashSet::new();
    within(20, "both relays found without DHT records", async {
        while chosen.len() < 2 {
            if let Ok(AutorelayEvent::RelayChosen { relay, .. }) = events.recv().await {
                chosen.insert(relay);
            }
        }
    })
    .await;
    for (r, _) in &relays {
        assert!(chosen.contains(&r.peer_id()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_address_stays_advertised_across_refreshes_and_is_withdrawn_and_pushed_at_the_end() {
    let relay_node = node(true).await;
    let _relay = Relay::start(
        &relay_node,
        RelayConfig {
            reservation_ttl: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let watcher = node(true).await;
    let private = node(false).await;
    private.dial(&full(&watcher)).await.unwrap();
    let kept = circuit_net::relay_client::keep_reservation(&private, full(&relay_node));
    let has_circuit = |n: &Node| {
        n.addresses()
            .iter()
            .any(|a| a.to_string().contains("/p2p-circuit"))
    };
    within(10, "first reservation", async {
        while !has_circuit(&private) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // TTL 2 s, refreshed at 3/4 of it: over 5 s several refreshes happen, and the
    // address must never drop out in between (sampled every 10 ms).
    let start = tokio::time::Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(5) {
        assert!(
            has_circuit(&private),
            "relay address gone during a refresh after {:?}",
            start.elapsed()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(samples > 100);
    within(10, "watcher sees the relay address", async {
        while !watcher
            .peer_info(&private.peer_id())
            .map(|i| {
                i.listen_addrs
                    .iter()
                    .any(|a| a.to_string().contains("/p2p-circuit"))
            })
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The reservation ends: the address is withdrawn and the change pushed.
    drop(kept);
    within(10, "relay address withdrawn", async {
        while has_circuit(&private) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within(10, "withdrawal pushed to the watcher", async {
        while watcher
            .peer_info(&private.peer_id())
            .map(|i| {
                i.listen_addrs
                    .iter()
                    .any(|a| a.to_string().contains("/p2p-circuit"))
            })
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_before_the_first_subscription_are_not_missed() {
    // A subscriber that comes late (a busy machine) still sees what happened first.
    let r = node(true).await;
    let _relay = Relay::start(&r, RelayConfig::default());
    let private = node(false).await;
    let kept = circuit_net::relay_client::keep_reservation(&private, full(&r));
    let ar = Autorelay::start(
        &private,
        None,
        None,
        AutorelayConfig {
            static_relays: vec![full(&r)],
            force_private: true,
            ..Default::default()
        },
    );
    // Both have done their work by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ev = kept.events();
    within(5, "the reservation's Accepted", async {
        loop {
            if let Ok(circuit_net::relay_client::ReservationEvent::Accepted(_)) = ev.recv().await {
                return;
            }
        }
    })
    .await;
    let mut ev = ar.events();
    within(5, "autorelay's RelayChosen", async {
        loop {
            if let Ok(AutorelayEvent::RelayChosen { .. }) = ev.recv().await {
                return;
            }
        }
    })
    .await;
}
