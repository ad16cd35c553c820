//! `rust-libp2p-peer`: an interop test peer for circuit's integration tests.
//!
//! It is built on the real rust-libp2p 0.57 stack so that circuit's own relay
//! implementation can be exercised against an independent implementation.
//! Three modes share one stdout contract (see README.md):
//!
//! * `relay`  — a circuit relay v2 server (hop) that also serves identify and ping;
//! * `listen` — reserves a slot on a relay and serves ping, identify and the
//!   `/circuit/pipe/1.0.0` echo protocol over relayed connections;
//! * `dial`   — connects (usually through a relay), pings, and round-trips a
//!   deterministic byte pattern through the echo protocol;
//! * `kad`    — a Kademlia server (`/ipfs/kad/1.0.0`) that bootstraps, provides
//!   and finds providers of a namespace key;
//! * `autonat` — an AutoNAT v1 server that also dials back private addresses;
//! * `perf`   — the perf protocol (`/perf/1.0.0`), client or server (direct, or
//!   reserved on a relay and served over circuits).
//!
//! Every event is one line on stdout, flushed immediately; diagnostics go to
//! stderr (set `RUST_LOG` for libp2p's own tracing output).

#![forbid(unsafe_code)]

mod dht;
mod perf;

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};

/// The echo protocol served by `listen` and used by `dial`.
const PIPE_PROTOCOL: StreamProtocol = StreamProtocol::new("/circuit/pipe/1.0.0");
/// Identify `protocolVersion` string (the conventional libp2p value).
const IDENTIFY_PROTOCOL_VERSION: &str = "/ipfs/0.1.0";
/// Idle connections are kept for a long time so that slow tests never see a
/// connection vanish between steps.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound of a whole `dial` run, as fixed by the test-peer contract.
const DIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for `dial --bytes`: the dialer holds the expected and the
/// received data in memory, so the size must be bounded before allocating.
const MAX_DIAL_BYTES: usize = 256 * 1024 * 1024;
/// Read buffer size for the echo loops.
pub(crate) const CHUNK: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "rust-libp2p-peer",
    version,
    about = "rust-libp2p interop test peer for circuit"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Run a circuit relay v2 server (hop) that also serves identify and ping.
    Relay {
        /// Address to listen on (repeatable), e.g. /ip4/127.0.0.1/tcp/0 or /ip4/127.0.0.1/tcp/0/ws.
        #[arg(long = "listen", required = true)]
        listen: Vec<Multiaddr>,
        /// Per-circuit byte limit (both directions together); 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        max_circuit_bytes: u64,
        /// Per-circuit duration limit in seconds.
        #[arg(long, default_value_t = 3600)]
        max_circuit_secs: u32,
        /// Maximum number of concurrent reservations.
        #[arg(long, default_value_t = 1024)]
        max_reservations: usize,
        /// Maximum number of circuits at once.
        #[arg(long, default_value_t = 1024)]
        max_circuits: usize,
        /// Maximum number of circuits of one peer (as source or destination).
        #[arg(long, default_value_t = 256)]
        max_circuits_per_peer: usize,
        /// Yamux streams per connection (rust-libp2p's default is 512; all circuits to
        /// one destination are streams on its one connection). At most 4096: yamux's
        /// 1 GiB connection window must cover 256 KiB per stream.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=4096))]
        max_streams: u16,
    },
    /// Reserve a slot on a relay and serve ping, identify and the echo protocol.
    Listen {
        /// The relay's address including `/p2p/<relay id>`.
        #[arg(long)]
        relay: Multiaddr,
    },
    /// Connect to a peer (usually via a circuit address), ping it, and echo-test it.
    Dial {
        /// `<relay addr>/p2p/<R>/p2p-circuit/p2p/<A>` or a direct address.
        addr: Multiaddr,
        /// Number of pattern bytes to send through `/circuit/pipe/1.0.0`.
        #[arg(long, default_value_t = 65536)]
        bytes: usize,
        /// Number of pings to report before the echo test.
        #[arg(long, default_value_t = 3)]
        pings: u32,
    },
    /// Run a Kademlia server (`/ipfs/kad/1.0.0`, server mode) with identify and ping.
    Kad {
        /// Address to listen on (repeatable).
        #[arg(long = "listen", required = true)]
        listen: Vec<Multiaddr>,
        /// Peer to bootstrap from, `<addr>/p2p/<id>` (repeatable).
        #[arg(long = "bootstrap")]
        bootstrap: Vec<Multiaddr>,
        /// Provide this namespace (key: multihash of sha256 of the string).
        #[arg(long, value_name = "NAMESPACE")]
        provide: Option<String>,
        /// Look up providers of this namespace, printing `PROVIDER` lines.
        #[arg(long, value_name = "NAMESPACE")]
        find_providers: Option<String>,
    },
    /// Run an AutoNAT v1 server that dials back private (loopback) addresses too.
    Autonat {
        /// Address to listen on (repeatable).
        #[arg(long = "listen", required = true)]
        listen: Vec<Multiaddr>,
        /// Also be a client: ask this AutoNAT server (`<addr>/p2p/<id>`, repeatable)
        /// about our reachability, printing `PROBE_ANSWER`/`PROBE_FAILED`/`NAT_STATUS`.
        #[arg(long = "probe")]
        probe: Vec<Multiaddr>,
    },
    /// Perf protocol (`/perf/1.0.0`): `--server` serves it, otherwise measure against ADDR.
    Perf {
        /// The server's address, ending with `/p2p/<id>` (client mode); a circuit
        /// address (`<relay>/p2p-circuit/p2p/<id>`) is dialed through the relay.
        #[arg(required_unless_present = "server", conflicts_with = "server")]
        addr: Option<Multiaddr>,
        /// Serve the perf protocol.
        #[arg(long)]
        server: bool,
        /// Address to listen on in server mode (repeatable)
        /// [default: /ip4/127.0.0.1/tcp/0 unless --relay is given].
        #[arg(long = "listen", conflicts_with = "addr")]
        listen: Vec<Multiaddr>,
        /// Server mode: also reserve on this relay (`<addr>/p2p/<relay id>`) and serve
        /// perf over circuits through it; prints `RESERVED <circuit addr>`.
        #[arg(long, conflicts_with = "addr")]
        relay: Option<Multiaddr>,
        /// Bytes to upload (client).
        #[arg(long, default_value_t = 0)]
        upload: u64,
        /// Bytes to download (client).
        #[arg(long, default_value_t = 0)]
        download: u64,
        /// Client: give up after this many seconds (connect and transfer).
        #[arg(long, default_value_t = DIAL_TIMEOUT.as_secs(), conflicts_with = "server")]
        timeout: u64,
    },
}

/// Behaviour of the relay server.
#[derive(NetworkBehaviour)]
struct RelayBehaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Behaviour shared by the `listen` and `dial` modes.
#[derive(NetworkBehaviour)]
pub(crate) struct PeerBehaviour {
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
}

/// Writes one contract line to stdout and flushes it immediately, because the
/// test harness reads the lines while the process keeps running.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the harness has gone away; nothing useful is left to do.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The deterministic test pattern of the contract: `byte[i] = (i * 31 + 7) % 251`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + 7) % 251) as u8)
        .collect()
}

/// Returns the peer ID of the trailing `/p2p/<id>` component, if any.
pub(crate) fn trailing_peer_id(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last()? {
        Protocol::P2p(id) => Some(id),
        _ => None,
    }
}

/// Appends `/p2p/<peer>` unless the address already ends with a `/p2p` component.
pub(crate) fn with_peer_id(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr,
        _ => addr.with(Protocol::P2p(peer)),
    }
}

/// Identify behaviour with a recognisable agent version.
pub(crate) fn identify_behaviour(key: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
            .with_agent_version(format!("rust-libp2p-peer/{}", env!("CARGO_PKG_VERSION"))),
    )
}

/// Relay configuration for tests: the given limits, generous counts, and no
/// rate limiters (tests reserve and connect in quick bursts from one IP).
fn relay_config(l: &RelayLimits) -> relay::Config {
    relay::Config {
        max_reservations: l.max_reservations,
        max_reservations_per_peer: 64,
        reservation_duration: Duration::from_secs(3600),
        reservation_rate_limiters: Vec::new(),
        max_circuits: l.max_circuits,
        max_circuits_per_peer: l.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(u64::from(l.max_circuit_secs)),
        max_circuit_bytes: l.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
}

/// The `relay` mode's limits, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RelayLimits {
    max_circuit_bytes: u64,
    max_circuit_secs: u32,
    max_reservations: usize,
    max_circuits: usize,
    max_circuits_per_peer: usize,
    max_streams: u16,
}

/// Yamux configured for `max_streams` streams per connection (≤ 4096, checked by the CLI).
fn yamux_config(max_streams: u16) -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(usize::from(max_streams));
    c
}

/// Builds the swarm used by `listen` and `dial`: TCP and WebSocket transports
/// plus the relay client transport, all secured with Noise and muxed with Yamux.
pub(crate) async fn build_peer_swarm(
    ping_interval: Duration,
) -> anyhow::Result<Swarm<PeerBehaviour>> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| PeerBehaviour {
            relay_client,
            identify: identify_behaviour(key),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
            stream: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// `relay` mode: listen, advertise the listen addresses as external addresses
/// (rust-libp2p puts exactly those into reservations, and clients reject a
/// reservation without addresses), then serve forever.
async fn run_relay(listen: Vec<Multiaddr>, limits: RelayLimits) -> anyhow::Result<()> {
    let streams = limits.max_streams;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            move || yamux_config(streams),
        )?
        .with_websocket(noise::Config::new, move || yamux_config(streams))
        .await?
        .with_behaviour(|key| RelayBehaviour {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay_config(&limits)),
            identify: identify_behaviour(key),
            ping: ping::Behaviour::new(ping::Config::new()),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();

    let me = *swarm.local_peer_id();
    emit(&format!("PEER {me}"));

    let mut pending = Vec::new();
    for addr in listen {
        let id = swarm
            .listen_on(addr.clone())
            .with_context(|| format!("listen on {addr}"))?;
        pending.push(id);
    }

    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                swarm.add_external_address(address.clone());
                emit(&format!("LISTEN {}", with_peer_id(address, me)));
                let before = pending.len();
                pending.retain(|id| *id != listener_id);
                // READY once every requested listener has reported an address.
                if before != pending.len() && pending.is_empty() {
                    emit("READY");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if pending.contains(&listener_id) {
                    bail!("listener closed before it was ready: {reason:?}");
                }
                eprintln!("relay: listener {listener_id:?} closed: {reason:?}");
            }
            SwarmEvent::ListenerError { error, .. } => {
                eprintln!("relay: listener error: {error}");
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(ev)) => {
                eprintln!("relay: {ev:?}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                eprintln!("relay: connection from {peer_id} at {:?}", endpoint);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                eprintln!("relay: incoming connection error: {error}");
            }
            _ => {}
        }
    }
}

/// Serves one `/circuit/pipe/1.0.0` stream: echo every byte as it arrives
/// until the remote half-closes, then close our side. Returns the byte count.
async fn echo_stream(mut stream: libp2p::Stream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        // Flush per chunk so the echo really flows "as it arrives".
        stream.flush().await?;
        total += n as u64;
    }
    stream.close().await?;
    Ok(total)
}

/// `listen` mode: reserve on the relay, then serve until killed.
async fn run_listen(relay_addr: Multiaddr) -> anyhow::Result<()> {
    let relay_peer = trailing_peer_id(&relay_addr)
        .ok_or_else(|| anyhow!("--relay address must end with /p2p/<relay peer id>"))?;

    let mut swarm = build_peer_swarm(Duration::from_secs(15)).await?;
    let me = *swarm.local_peer_id();

    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(PIPE_PROTOCOL)
        .map_err(|e| anyhow!("register {PIPE_PROTOCOL}: {e}"))?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            tokio::spawn(async move {
                match echo_stream(stream).await {
                    Ok(total) => emit(&format!("PIPE {total}")),
                    Err(e) => eprintln!("listen: pipe with {peer} failed: {e}"),
                }
            });
        }
    });

    emit(&format!("PEER {me}"));
    let circuit_listener = swarm
        .listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .context("listen on relay circuit address")?;

    let mut reserved = false;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => {
                if relay_peer_id == relay_peer && !reserved {
                    reserved = true;
                    emit(&format!(
                        "RESERVED {}",
                        relay_addr
                            .clone()
                            .with(Protocol::P2pCircuit)
                            .with(Protocol::P2p(me))
                    ));
                } else {
                    eprintln!(
                        "listen: reservation on {relay_peer_id} accepted (renewal={renewal})"
                    );
                }
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(ev)) => {
                eprintln!("listen: relay client: {ev:?}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            } => {
                // We only listen on the circuit address, so every inbound
                // connection is a relayed one.
                eprintln!("listen: inbound from {peer_id} via {send_back_addr}");
                emit(&format!("INBOUND {peer_id}"));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if listener_id == circuit_listener => {
                bail!("relay listener closed: {reason:?}");
            }
            SwarmEvent::ListenerError { error, .. } => {
                eprintln!("listen: listener error: {error}");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if !reserved && peer_id == Some(relay_peer) {
                    bail!("cannot connect to relay: {error}");
                }
                eprintln!("listen: outgoing connection error to {peer_id:?}: {error}");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                eprintln!("listen: connection to {peer_id} closed: {cause:?}");
            }
            _ => {}
        }
    }
}

/// Opens `/circuit/pipe/1.0.0` to `peer`, sends the pattern while reading the
/// echo concurrently (sequential write-then-read would deadlock once flow
/// control windows fill), half-closes, and checks the echo byte for byte.
async fn pipe_roundtrip(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    len: usize,
) -> anyhow::Result<()> {
    let stream = control
        .open_stream(peer, PIPE_PROTOCOL)
        .await
        .map_err(|e| anyhow!("open {PIPE_PROTOCOL}: {e}"))?;
    let (mut reader, mut writer) = stream.split();
    let data = pattern(len);

    let write = async {
        writer.write_all(&data).await.context("write")?;
        // close() on a yamux stream is a half-close: it sends FIN, reading goes on.
        writer.close().await.context("half-close")?;
        anyhow::Ok(())
    };
    let read = async {
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await.context("read")?;
            if n == 0 {
                break;
            }
            if got.len() + n > len {
                bail!("echo longer than sent: more than {len} bytes");
            }
            got.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(got)
    };
    let (w, r) = futures::join!(write, read);
    w?;
    let got = r?;
    if got.len() != len {
        bail!("echo short: got {} of {len} bytes", got.len());
    }
    if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
        bail!("echo mismatch at byte {i}");
    }
    Ok(())
}

/// `dial` mode: connect, ping, echo-test. Returns once the echo is verified.
async fn run_dial(addr: Multiaddr, bytes: usize, pings: u32) -> anyhow::Result<()> {
    if bytes > MAX_DIAL_BYTES {
        bail!("--bytes {bytes} exceeds the maximum of {MAX_DIAL_BYTES}");
    }
    // A short ping interval makes the requested pings happen back to back.
    let mut swarm = build_peer_swarm(Duration::from_millis(100)).await?;
    let control = swarm.behaviour().stream.new_control();

    let expected = trailing_peer_id(&addr);
    let opts = match expected {
        Some(peer) => DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build(),
        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
    };
    swarm.dial(opts).with_context(|| format!("dial {addr}"))?;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1);
    let mut target: Option<PeerId> = None;
    let mut pings_seen: u32 = 0;
    let mut pipe_started = false;
    let mut control = Some(control);

    // Starts the echo test once connected and all pings are reported.
    let mut maybe_start_pipe = |target: PeerId, pings_seen: u32, pipe_started: &mut bool| {
        if *pipe_started || pings_seen < pings {
            return;
        }
        if let Some(control) = control.take() {
            *pipe_started = true;
            let tx = done_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(pipe_roundtrip(control, target, bytes).await).await;
            });
        }
    };

    loop {
        tokio::select! {
            res = done_rx.recv() => {
                return res.unwrap_or_else(|| Err(anyhow!("echo task vanished")));
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    eprintln!("dial: connected to {peer_id} via {:?}", endpoint);
                    let wanted = expected.is_none_or(|p| p == peer_id);
                    if target.is_none() && wanted && endpoint.is_dialer() {
                        target = Some(peer_id);
                        emit(&format!("CONNECTED {peer_id}"));
                        maybe_start_pipe(peer_id, pings_seen, &mut pipe_started);
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    if target.is_none() && (expected.is_none() || peer_id == expected) {
                        bail!("connect failed: {error}");
                    }
                    eprintln!("dial: outgoing connection error to {peer_id:?}: {error}");
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                    let Some(t) = target else { continue };
                    if peer != t || pings_seen >= pings {
                        continue;
                    }
                    match result {
                        Ok(rtt) => {
                            pings_seen += 1;
                            emit(&format!("PING {:.3}", rtt.as_secs_f64() * 1000.0));
                            maybe_start_pipe(t, pings_seen, &mut pipe_started);
                        }
                        Err(e) => bail!("ping failed: {e}"),
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, num_established, .. } => {
                    eprintln!("dial: connection to {peer_id} closed: {cause:?}");
                    if Some(peer_id) == target && num_established == 0 {
                        bail!("connection to {peer_id} closed: {cause:?}");
                    }
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(ev)) => {
                    eprintln!("dial: relay client: {ev:?}");
                }
                _ => {}
            }
        }
    }
}

/// Installs a stderr tracing subscriber when `RUST_LOG` is set, so that
/// interop failures can be debugged with libp2p's own logs.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// Formats an `ERROR` line; the message is collapsed to one line because some
/// libp2p errors (e.g. multi-address dial failures) span several lines.
fn error_line(e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    format!(
        "ERROR {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Maps a long-running mode's result to an exit code, printing `ERROR` on failure.
fn exit_code(res: anyhow::Result<()>) -> i32 {
    match res {
        Ok(()) => 0,
        Err(e) => {
            emit(&error_line(&e));
            1
        }
    }
}

/// Resolves on SIGTERM or SIGINT, so that `relay`/`listen` end with exit 0
/// when the harness stops them (as the js peer does).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // Without a SIGTERM handler the default action (terminate) still applies.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() {
    init_logging();
    let cli = Cli::parse();
    let code = match cli.mode {
        Mode::Relay {
            listen,
            max_circuit_bytes,
            max_circuit_secs,
            max_reservations,
            max_circuits,
            max_circuits_per_peer,
            max_streams,
        } => {
            let limits = RelayLimits {
                max_circuit_bytes,
                max_circuit_secs,
                max_reservations,
                max_circuits,
                max_circuits_per_peer,
                max_streams,
            };
            tokio::select! {
                res = run_relay(listen, limits) => exit_code(res),
                _ = shutdown_signal() => 0,
            }
        }
        Mode::Listen { relay } => {
            tokio::select! {
                res = run_listen(relay) => exit_code(res),
                _ = shutdown_signal() => 0,
            }
        }
        Mode::Kad {
            listen,
            bootstrap,
            provide,
            find_providers,
        } => {
            let args = dht::KadArgs {
                listen,
                bootstrap,
                provide,
                find_providers,
            };
            tokio::select! {
                res = dht::run_kad(args) => exit_code(res),
                _ = shutdown_signal() => 0,
            }
        }
        Mode::Autonat { listen, probe } => {
            tokio::select! {
                res = dht::run_autonat(listen, probe) => exit_code(res),
                _ = shutdown_signal() => 0,
            }
        }
        Mode::Perf {
            server: true,
            listen,
            relay,
            ..
        } => {
            let listen = perf::server_listen_addrs(listen, relay.is_some());
            tokio::select! {
                res = perf::run_server(listen, relay) => exit_code(res),
                _ = shutdown_signal() => 0,
            }
        }
        Mode::Perf {
            addr,
            upload,
            download,
            timeout,
            ..
        } => {
            let limit = Duration::from_secs(timeout);
            let res = match addr {
                Some(addr) => {
                    match tokio::time::timeout(limit, perf::run_client(addr, upload, download))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(anyhow!("timeout")),
                    }
                }
                None => Err(anyhow!("perf needs ADDR or --server")),
            };
            exit_code(res)
        }
        Mode::Dial { addr, bytes, pings } => {
            let started = Instant::now();
            match tokio::time::timeout(DIAL_TIMEOUT, run_dial(addr, bytes, pings)).await {
                Ok(Ok(())) => {
                    eprintln!("dial: done in {:?}", started.elapsed());
                    emit(&format!("ECHO OK {bytes}"));
                    0
                }
                Ok(Err(e)) => {
                    emit(&error_line(&e));
                    1
                }
                Err(_) => {
                    emit("ERROR timeout");
                    2
                }
            }
        }
    };
    // Exit directly: background tasks (swarm connections) must not keep us alive.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_follows_contract_formula() {
        let p = pattern(600);
        assert_eq!(p.len(), 600);
        assert_eq!(p[0], 7);
        assert_eq!(p[1], 38);
        assert_eq!(p[8], 4); // 255 % 251: the modulus really applies
                             // Period of the pattern is 251 since gcd(31, 251) = 1.
        assert_eq!(p[0..100], p[251..351]);
        assert!(p.iter().all(|b| *b < 251));
    }

    #[test]
    fn pattern_does_not_overflow_for_large_indices() {
        let p = pattern(1 << 20);
        let i = (1usize << 20) - 1;
        assert_eq!(p[i] as u64, (i as u64 * 31 + 7) % 251);
    }

    #[test]
    fn trailing_peer_id_extracts_target_of_circuit_addr() {
        let r = PeerId::random();
        let a = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{r}/p2p-circuit/p2p/{a}")
            .parse()
            .unwrap();
        assert_eq!(trailing_peer_id(&addr), Some(a));
        let relay: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/ws/p2p/{r}")
            .parse()
            .unwrap();
        assert_eq!(trailing_peer_id(&relay), Some(r));
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(trailing_peer_id(&bare), None);
    }

    #[test]
    fn with_peer_id_appends_only_once() {
        let p = PeerId::random();
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/1/ws".parse().unwrap();
        let once = with_peer_id(bare, p);
        assert_eq!(once.to_string(), format!("/ip4/127.0.0.1/tcp/1/ws/p2p/{p}"));
        assert_eq!(with_peer_id(once.clone(), p), once);
    }

    #[test]
    fn relay_config_lifts_rate_limits_and_keeps_given_limits() {
        let c = relay_config(&RelayLimits {
            max_circuit_bytes: 0,
            max_circuit_secs: 3600,
            max_reservations: 7,
            max_circuits: 2000,
            max_circuits_per_peer: 1500,
            max_streams: 4096,
        });
        assert!(c.reservation_rate_limiters.is_empty());
        assert!(c.circuit_src_rate_limiters.is_empty());
        assert_eq!(c.max_circuit_bytes, 0);
        assert_eq!(c.max_circuit_duration, Duration::from_secs(3600));
        assert_eq!(c.max_reservations, 7);
        assert_eq!(c.max_circuits, 2000);
        assert_eq!(c.max_circuits_per_peer, 1500);
    }

    #[test]
    fn yamux_config_accepts_the_largest_allowed_stream_count() {
        // yamux panics when the streams' default windows exceed its 1 GiB connection
        // window; 4096 (the CLI's upper bound) × 256 KiB is exactly 1 GiB.
        let _ = yamux_config(4096);
        let _ = yamux_config(1);
    }

    #[test]
    fn cli_parses_relay_circuit_and_stream_limits() {
        let c = Cli::try_parse_from([
            "p",
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--max-circuits",
            "1100",
            "--max-circuits-per-peer",
            "1050",
            "--max-streams",
            "1200",
        ])
        .unwrap();
        match c.mode {
            Mode::Relay {
                max_circuits,
                max_circuits_per_peer,
                max_streams,
                max_reservations,
                ..
            } => {
                assert_eq!(max_circuits, 1100);
                assert_eq!(max_circuits_per_peer, 1050);
                assert_eq!(max_streams, 1200);
                assert_eq!(max_reservations, 1024);
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c = Cli::try_parse_from(["p", "relay", "--listen", "/ip4/127.0.0.1/tcp/0"]).unwrap();
        match c.mode {
            Mode::Relay {
                max_circuits,
                max_circuits_per_peer,
                max_streams,
                ..
            } => assert_eq!(
                (max_circuits, max_circuits_per_peer, max_streams),
                (1024, 256, 512)
            ),
            other => panic!("wrong mode {other:?}"),
        }
        for bad in ["0", "4097"] {
            let r = Cli::try_parse_from([
                "p",
                "relay",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--max-streams",
                bad,
            ]);
            assert!(r.is_err(), "--max-streams {bad} accepted");
        }
    }

    #[test]
    fn cli_parses_perf_relay_and_timeout() {
        let relay = format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", PeerId::random());
        let c = Cli::try_parse_from(["p", "perf", "--server", "--relay", &relay]).unwrap();
        match c.mode {
            Mode::Perf {
                server: true,
                relay: Some(r),
                listen,
                ..
            } => {
                assert_eq!(r.to_string(), relay);
                assert!(listen.is_empty());
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c =
            Cli::try_parse_from(["p", "perf", "/ip4/127.0.0.1/tcp/1", "--timeout", "300"]).unwrap();
        match c.mode {
            Mode::Perf {
                timeout, server, ..
            } => {
                assert_eq!(timeout, 300);
                assert!(!server);
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c = Cli::try_parse_from(["p", "perf", "/ip4/127.0.0.1/tcp/1"]).unwrap();
        assert!(matches!(c.mode, Mode::Perf { timeout: 60, .. }));
        // --relay and --listen belong to the server, --timeout to the client.
        assert!(
            Cli::try_parse_from(["p", "perf", "/ip4/127.0.0.1/tcp/1", "--relay", &relay]).is_err()
        );
        assert!(Cli::try_parse_from([
            "p",
            "perf",
            "/ip4/127.0.0.1/tcp/1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["p", "perf", "--server", "--timeout", "5"]).is_err());
        assert!(Cli::try_parse_from(["p", "perf", "--server", "--relay", "not-an-addr"]).is_err());
    }

    #[test]
    fn error_line_is_a_single_line() {
        let e = anyhow!("first\nsecond\t third").context("dial");
        assert_eq!(error_line(&e), "ERROR dial: first second third");
    }

    #[test]
    fn cli_parses_all_modes() {
        let c = Cli::try_parse_from([
            "p",
            "relay",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
            "--max-circuit-bytes",
            "100",
        ])
        .unwrap();
        match c.mode {
            Mode::Relay {
                listen,
                max_circuit_bytes,
                max_circuit_secs,
                ..
            } => {
                assert_eq!(listen.len(), 2);
                assert_eq!(max_circuit_bytes, 100);
                assert_eq!(max_circuit_secs, 3600);
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c = Cli::try_parse_from(["p", "dial", "/ip4/127.0.0.1/tcp/5"]).unwrap();
        match c.mode {
            Mode::Dial { bytes, pings, .. } => {
                assert_eq!(bytes, 65536);
                assert_eq!(pings, 3);
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c = Cli::try_parse_from([
            "p",
            "kad",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/1",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/2",
            "--find-providers",
            "/libp2p/relay",
        ])
        .unwrap();
        match c.mode {
            Mode::Kad {
                bootstrap,
                provide,
                find_providers,
                ..
            } => {
                assert_eq!(bootstrap.len(), 2);
                assert_eq!(provide, None);
                assert_eq!(find_providers.as_deref(), Some("/libp2p/relay"));
            }
            other => panic!("wrong mode {other:?}"),
        }
        let c = Cli::try_parse_from(["p", "perf", "--server"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Perf {
                server: true,
                addr: None,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["p", "perf"]).is_err());
        assert!(Cli::try_parse_from(["p", "perf", "/ip4/127.0.0.1/tcp/1", "--server"]).is_err());
        assert!(Cli::try_parse_from(["p", "autonat"]).is_err());
        assert!(Cli::try_parse_from(["p", "relay"]).is_err());
        assert!(Cli::try_parse_from(["p", "listen", "--relay", "not-an-addr"]).is_err());
    }
}
