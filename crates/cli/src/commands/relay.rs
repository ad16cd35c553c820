//! `circuit relay`: the relay service, its config file, metrics and status page,
//! reload on SIGHUP and graceful shutdown on SIGTERM/SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use circuit_net::protocols::kad::{namespace_key, Kad, KadConfig, RELAY_NAMESPACE};
use circuit_net::protocols::{autonat, perf};
use circuit_net::{Multiaddr, Node};
use circuit_relay::Relay;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::config::{Addr, RelayFile, Rule};
use crate::output::{ev, Output};

/// Every option can also be set in the config file (`--config`), under the
/// same name with underscores (limits under `[limits]`, perf under `[perf]`, ACL lists under
/// `[acl.reserve]`/`[acl.connect]`); flags override the file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// TOML config file; SIGHUP re-reads it and applies its limits and ACL.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective config (file + flags + defaults) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on; repeat for several.
    /// [default: /ip4/0.0.0.0/tcp/4001, /ip4/0.0.0.0/tcp/4002/ws, /ip6/::/tcp/4001, /ip6/::/tcp/4002/ws]
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Multiaddr>,
    /// Identity key file [default: <data dir>/circuit/relay.key, created on first run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Public address to put in reservations instead of the listen addresses (repeatable),
    /// e.g. /ip4/7.7.7.7/tcp/4001 when behind port forwarding.
    #[arg(long, value_name = "ADDR")]
    announce: Vec<Multiaddr>,
    /// Serve Prometheus `/metrics` and the status page `/` on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
    /// Certificate chain (PEM) for secure WebSocket listeners, e.g. `--listen /ip4/0.0.0.0/tcp/443/tls/ws`
    /// (from an ACME client such as certbot: fullchain.pem).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (certbot: privkey.pem).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Join the DHT through this Kademlia peer (`…/p2p/<id>`; repeatable). Every relay is a
    /// Kademlia server.
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Provide the `/libp2p/relay` namespace in the DHT (re-provided before expiry), so that
    /// autorelay clients find this relay.
    #[arg(long)]
    advertise: bool,
    /// AutoNAT: also dial back requesters seen at private addresses (LANs, test beds).
    #[arg(long)]
    autonat_allow_private: bool,
    /// Serve a demo page on the WebSocket port(s) (plain HTTP GET; the same port still
    /// takes libp2p over WebSocket): js-libp2p in the browser reserves on this relay,
    /// shows its relay address, and pings or chats with any peer address.
    #[arg(long)]
    web: bool,
    /// Reservation lifetime, seconds [default: 3600].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    reservation_ttl: Option<u64>,
    /// Most reservations at once [default: 128].
    #[arg(long, value_name = "N")]
    max_reservations: Option<usize>,
    /// Most reservations from one IP address [default: 8].
    #[arg(long, value_name = "N")]
    max_reservations_per_ip: Option<usize>,
    /// Most circuits at once [default: 1024].
    #[arg(long, value_name = "N")]
    max_circuits: Option<usize>,
    /// Most circuits per peer (as source or as destination) [default: 16].
    #[arg(long, value_name = "N")]
    max_circuits_per_peer: Option<usize>,
    /// Longest life of a circuit, seconds (0 = no limit) [default: 120].
    #[arg(long, value_name = "SECS")]
    limit_duration: Option<u64>,
    /// Most bytes per direction of a circuit (0 = no limit) [default: 131072].
    #[arg(long, value_name = "BYTES")]
    limit_data: Option<u64>,
    /// No circuit limits at all (no Limit field is sent; go peers then treat circuits as normal connections).
    #[arg(long)]
    no_limit: bool,
    /// Copy buffer per circuit direction, bytes [default: 16384].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1024..=16 << 20))]
    buffer_size: Option<u64>,
    /// Most bytes of receive window all circuits together may grow by beyond 256 KiB per
    /// stream: circuits over long round trips need windows of bandwidth × round trip to
    /// run fast; this bounds what they can make the relay hold (0 = no growth)
    /// [default: 134217728, 128 MiB].
    #[arg(long, value_name = "BYTES")]
    window_budget: Option<u64>,
    /// Deadline for a hop request and its answer, seconds [default: 60].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    stream_timeout: Option<u64>,
    /// Deadline for reaching a CONNECT's target, seconds [default: 30].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: Option<u64>,
    /// Deadline of the Noise handshake, seconds [default: 15].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: Option<u64>,
    /// Deadline of each multistream-select negotiation, seconds [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    negotiation_timeout: Option<u64>,
    /// Most connections at once [default: 8192].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Most inbound connections in their handshake at once [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_pending_handshakes: Option<u64>,
    /// Only these may reserve: PeerId, IP or subnet (repeatable; replaces the file's list).
    #[arg(long, value_name = "RULE")]
    reserve_allow: Vec<Rule>,
    /// These may not reserve: PeerId, IP or subnet (repeatable; replaces the file's list).
    #[arg(long, value_name = "RULE")]
    reserve_deny: Vec<Rule>,
    /// Only these may open circuits (checked against the source; repeatable).
    #[arg(long, value_name = "RULE")]
    connect_allow: Vec<Rule>,
    /// These may not open circuits (checked against the source; repeatable).
    #[arg(long, value_name = "RULE")]
    connect_deny: Vec<Rule>,
    /// Do not serve perf (`/perf/1.0.0`) to clients.
    #[arg(long)]
    no_perf: bool,
    /// Most bytes a perf request may upload or ask back [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    perf_max_bytes: Option<u64>,
    /// Most perf requests served at once [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    perf_max_concurrent: Option<u64>,
    /// Print a status line (reservations, circuits, bytes) to stderr this often, seconds (0 = never) [default: 60].
    #[arg(long, value_name = "SECS")]
    status_interval: Option<u64>,
    /// On SIGTERM/SIGINT, how long open circuits may take to finish, seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    shutdown_drain: Option<u64>,
}

impl Args {
    /// The config file (if any) with the flags laid over it.
    fn effective(&self) -> anyhow::Result<RelayFile> {
        let mut f = match &self.config {
            Some(p) => RelayFile::load(p)?,
            None => RelayFile::default(),
        };
        if !self.listen.is_empty() {
            f.listen = self.listen.iter().cloned().map(Addr).collect();
        }
        if !self.announce.is_empty() {
            f.announce = self.announce.iter().cloned().map(Addr).collect();
        }
        if self.identity.is_some() {
            f.identity = self.identity.clone();
        }
        if self.metrics.is_some() {
            f.metrics = self.metrics;
        }
        if !self.bootstrap.is_empty() {
            f.bootstrap = self.bootstrap.iter().cloned().map(Addr).collect();
        }
        f.advertise |= self.advertise;
        f.autonat_allow_private |= self.autonat_allow_private;
        f.web |= self.web;
        if self.tls_cert.is_some() {
            f.tls_cert = self.tls_cert.clone();
            f.tls_key = self.tls_key.clone();
        }
        if self.no_perf {
            f.perf.enabled = false;
        }
        if let Some(v) = self.perf_max_bytes {
            f.perf.max_bytes = v;
        }
        if let Some(v) = self.perf_max_concurrent {
            f.perf.max_concurrent = usize::try_from(v).unwrap_or(usize::MAX);
        }
        let l = &mut f.limits;
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
        let usize_of = |v: Option<u64>| v.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
        set(&mut l.reservation_ttl, self.reservation_ttl);
        set(&mut l.max_reservations, self.max_reservations);
        set(&mut l.max_reservations_per_ip, self.max_reservations_per_ip);
        set(&mut l.max_circuits, self.max_circuits);
        set(&mut l.max_circuits_per_peer, self.max_circuits_per_peer);
        set(&mut l.limit_duration, self.limit_duration);
        set(&mut l.limit_data, self.limit_data);
        if self.no_limit {
            l.no_limit = true;
        }
        set(&mut l.buffer_size, usize_of(self.buffer_size));
        set(&mut l.window_budget, self.window_budget);
        set(&mut l.stream_timeout, self.stream_timeout);
        set(&mut l.connect_timeout, self.connect_timeout);
        set(&mut l.handshake_timeout, self.handshake_timeout);
        set(&mut l.negotiation_timeout, self.negotiation_timeout);
        set(&mut l.max_connections, usize_of(self.max_connections));
        set(
            &mut l.max_pending_handshakes,
            usize_of(self.max_pending_handshakes),
        );
        for (flag, list) in [
            (&self.reserve_allow, &mut f.acl.reserve.allow),
            (&self.reserve_deny, &mut f.acl.reserve.deny),
            (&self.connect_allow, &mut f.acl.connect.allow),
            (&self.connect_deny, &mut f.acl.connect.deny),
        ] {
            if !flag.is_empty() {
                *list = flag.clone();
            }
        }
        set(&mut f.status_interval, self.status_interval);
        set(&mut f.shutdown_drain, self.shutdown_drain);
        Ok(f)
    }
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let mut cfg = a.effective()?;
    if a.print_config {
        if cfg.identity.is_none() {
            cfg.identity = Some(super::data_dir().join("relay.key"));
        }
        if cfg.listen.is_empty() {
            cfg.listen = cfg.listen_addrs().into_iter().map(Addr).collect();
        }
        let text = cfg.to_toml();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        return Ok(ExitCode::SUCCESS);
    }
    let keypair = super::identity(cfg.identity.clone(), Some("relay.key"))?;
    let mut node_config = cfg.node_config();
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            node_config.tls_server = Some(
                circuit_net::tls::server_config(cert, key)
                    .with_context(|| "loading the TLS certificate and key (tls_cert, tls_key)")?,
            );
        }
        (None, None) => {}
        _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
    }
    let web_root = cfg.web.then(crate::web::demo_root);
    node_config.web = web_root.clone();
    let node = Node::new(keypair, node_config);
    let defaults = cfg.listen.is_empty();
    for addr in cfg.listen_addrs() {
        match node.listen(addr.clone()).await {
            Ok(_) => {}
            // A default IPv6 listener on a host without IPv6 is not fatal.
            Err(e) if defaults && addr.to_string().starts_with("/ip6") => {
                tracing::warn!(%addr, error = %e, "skipping listener")
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot listen on {addr} (port in use? pick another with --listen)")
                })
            }
        }
    }
    let relay = Relay::start(&node, cfg.relay_config());
    // Every relay is a Kademlia server and an AutoNAT server for its clients.
    let kad = Kad::start(&node, KadConfig::default());
    autonat::enable_server(&node, autonat_server_config(cfg.autonat_allow_private));
    if cfg.perf.enabled {
        let metrics = relay.clone();
        perf::serve(
            &node,
            perf::ServerLimits {
                max_bytes: cfg.perf.max_bytes,
                max_concurrent: cfg.perf.max_concurrent,
                observer: Some(Arc::new(move |o| metrics.metrics().perf(o))),
            },
        );
    }
    if !cfg.bootstrap.is_empty() || cfg.advertise {
        let bootstrap: Vec<Multiaddr> = cfg.bootstrap.iter().map(|a| a.0.clone()).collect();
        let advertise = cfg.advertise;
        let kad = kad.clone();
        tokio::spawn(async move {
            if !bootstrap.is_empty() {
                let n = kad.bootstrap(&bootstrap).await;
                tracing::info!(peers = n, "joined the DHT");
            }
            if advertise {
                let told = kad.provide(namespace_key(RELAY_NAMESPACE)).await;
                tracing::info!(
                    peers = told,
                    namespace = RELAY_NAMESPACE,
                    "advertised in the DHT"
                );
            }
        });
    }
    let addrs: Vec<String> = node
        .addresses()
        .iter()
        .map(|x| node.full_addr(x).to_string())
        .collect();
    if let Some(root) = &web_root {
        // The page learns the relay's own addresses from here.
        let info = json!({"peer_id": node.peer_id().to_string(), "addrs": addrs});
        root.set("/relay.json", info.to_string().into_bytes());
        for a in node
            .listen_addrs()
            .iter()
            .filter(|a| a.to_string().contains("/ws"))
        {
            if let Some(port) = a.iter().find_map(|p| match p {
                multiaddr::Protocol::Tcp(p) => Some(p),
                _ => None,
            }) {
                eprintln!("demo page on http://localhost:{port}/");
            }
        }
    }
    let metrics_addr = match cfg.metrics {
        Some(at) => Some(start_http(at, &node, &relay, addrs.clone()).await?),
        None => None,
    };
    if out.json {
        println!(
            "{}",
            ev(
                "listening",
                json!({"peer_id": node.peer_id().to_string(), "addrs": addrs, "metrics": metrics_addr.map(|a| a.to_string())})
            )
        );
    } else {
        println!("{}", node.peer_id());
        for x in &addrs {
            println!("{x}");
        }
        if let Some(m) = metrics_addr {
            eprintln!("metrics and status page on http://{m}/");
        }
    }
    let limit = cfg.limit();
    tracing::info!(peer_id = %node.peer_id(), limit = %circuit_net::relay_client::describe_limit(&limit), metrics = ?metrics_addr, aead = %circuit_proto::noise::aead::implementation(), "relay running");
    let status_every = cfg.status_interval;
    let status = async {
        if status_every == 0 {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(status_every)).await;
            let s = relay.stats();
            tracing::info!(
                connections = node.num_connections(),
                reservations = relay.num_reservations(),
                circuits = relay.num_circuits(),
                circuits_opened = s.circuits_opened.load(Ordering::Relaxed),
                circuits_refused = s.circuits_refused.load(Ordering::Relaxed),
                bytes_relayed = s.bytes_relayed.load(Ordering::Relaxed),
                window_budget_used = relay.window_budget().in_use(),
                "status"
            );
        }
    };
    tokio::pin!(status);
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            s = signals.next() => match s {
                Sig::Hup => reload(&a, &mut cfg, &relay),
                Sig::Stop(name) => {
                    tracing::info!(signal = name, "shutting down");
                    break;
                }
            },
            _ = &mut status => {}
        }
    }
    // Graceful shutdown: report not serving, stop accepting, go-away to every
    // peer, let circuits finish within the drain time, then close.
    relay.metrics().set_status(false);
    let drain = Duration::from_secs(cfg.shutdown_drain);
    let circuits = relay.num_circuits();
    tracing::info!(
        circuits,
        drain_secs = cfg.shutdown_drain,
        "stopped accepting; draining"
    );
    let cut = tokio::select! {
        n = node.shutdown(drain) => n,
        // A second signal ends the wait at once.
        _ = signals.next() => {
            tracing::warn!("second signal: closing now");
            node.shutdown(Duration::ZERO).await
        }
    };
    tracing::info!(connections_cut = cut, "shut down");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: re-read the file, lay the same flags over it, and apply limits and
/// ACL. Open circuits keep the limits they were opened with; a bad file keeps
/// the running config.
fn reload(a: &Args, cfg: &mut RelayFile, relay: &Relay) {
    let Some(path) = &a.config else {
        tracing::info!("SIGHUP: no --config file to reload");
        return;
    };
    let new = match a.effective() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: config not reloaded, keeping the running one");
            return;
        }
    };
    let mut fixed = Vec::new();
    if new.listen != cfg.listen {
        fixed.push("listen");
    }
    if new.announce != cfg.announce {
        fixed.push("announce");
    }
    if new.identity != cfg.identity {
        fixed.push("identity");
    }
    if new.metrics != cfg.metrics {
        fixed.push("metrics");
    }
    if new.perf != cfg.perf {
        fixed.push("perf");
    }
    let l = (&new.limits, &cfg.limits);
    if l.0.handshake_timeout != l.1.handshake_timeout
        || l.0.negotiation_timeout != l.1.negotiation_timeout
        || l.0.max_connections != l.1.max_connections
        || l.0.max_pending_handshakes != l.1.max_pending_handshakes
    {
        fixed.push(
            "node limits (handshake/negotiation timeouts, max connections, max pending handshakes)",
        );
    }
    if !fixed.is_empty() {
        tracing::warn!(
            keys = fixed.join(", "),
            "SIGHUP: these changes need a restart and were not applied"
        );
    }
    let mut rc = new.relay_config();
    rc.tap = relay.config().tap;
    relay.set_config(rc);
    let keep = (
        cfg.listen.clone(),
        cfg.announce.clone(),
        cfg.identity.clone(),
        cfg.metrics,
        cfg.perf.clone(),
    );
    let node_limits = cfg.limits.clone();
    *cfg = new;
    (
        cfg.listen,
        cfg.announce,
        cfg.identity,
        cfg.metrics,
        cfg.perf,
    ) = keep;
    cfg.limits.handshake_timeout = node_limits.handshake_timeout;
    cfg.limits.negotiation_timeout = node_limits.negotiation_timeout;
    cfg.limits.max_connections = node_limits.max_connections;
    cfg.limits.max_pending_handshakes = node_limits.max_pending_handshakes;
    tracing::info!(path = %path.display(), limit = %circuit_net::relay_client::describe_limit(&cfg.limit()), "config reloaded (limits and ACL)");
}

enum Sig {
    Hup,
    Stop(&'static str),
}

/// SIGHUP, SIGTERM and SIGINT as one stream.
struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
                term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.hup.recv() => Sig::Hup,
                _ = self.term.recv() => Sig::Stop("SIGTERM"),
                _ = tokio::signal::ctrl_c() => Sig::Stop("SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Sig::Stop("ctrl-c")
        }
    }
}

/// What the HTTP endpoint serves from.
struct Http {
    node: Node,
    relay: Relay,
    registry: Registry,
    addrs: Vec<String>,
    started: Instant,
}

/// Most HTTP connections served at once; the endpoint is for a scraper and a
/// browser or two, so a small bound keeps a misbehaving client cheap.
const MAX_HTTP_CONNECTIONS: usize = 32;

/// Binds the metrics/status address and serves it (hyper, HTTP/1.1) in the background.
async fn start_http(
    at: SocketAddr,
    node: &Node,
    relay: &Relay,
    addrs: Vec<String>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot serve metrics on {at}"))?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    relay.metrics().register(&mut registry);
    let state = Arc::new(Http {
        node: node.clone(),
        relay: relay.clone(),
        registry,
        addrs,
        started: Instant::now(),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // dropped: too many at once
            };
            let st = state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(st.respond(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                // Keep-alive is fine, but no connection lives forever.
                let _ = tokio::time::timeout(Duration::from_secs(120), conn).await;
            });
        }
    });
    Ok(bound)
}

fn response(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

impl Http {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                self.relay.refresh_metrics();
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => response(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(e) => response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("encoding failed: {e}\n"),
                    ),
                }
            }
            "/status.json" => response(
                StatusCode::OK,
                "application/json",
                self.status_json().to_string(),
            ),
            "/" => response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                self.status_page(),
            ),
            _ => response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    fn status_json(&self) -> serde_json::Value {
        let s = self.relay.stats();
        let refusals: Vec<_> = self
            .relay
            .metrics()
            .recent_refusals()
            .into_iter()
            .rev()
            .map(|r| {
                json!({
                    "unix_time": r.unix_time,
                    "request": r.request.as_str(),
                    "reason": r.reason,
                    "peer": r.peer.to_string(),
                    "ip": r.ip.map(|ip| ip.to_string()),
                })
            })
            .collect();
        json!({
            "peer_id": self.node.peer_id().to_string(),
            "addrs": self.addrs,
            "serving": self.relay.metrics().status(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "connections": self.node.num_connections(),
            "reservations": self.relay.num_reservations(),
            "circuits": self.relay.num_circuits(),
            "reservations_accepted": s.reservations_accepted.load(Ordering::Relaxed),
            "reservations_refused": s.reservations_refused.load(Ordering::Relaxed),
            "circuits_opened": s.circuits_opened.load(Ordering::Relaxed),
            "circuits_refused": s.circuits_refused.load(Ordering::Relaxed),
            "bytes_relayed": s.bytes_relayed.load(Ordering::Relaxed),
            "recent_refusals": refusals,
        })
    }

    /// The status page: everything rendered here (works with curl and without
    /// JavaScript); a small script refreshes the counts from `/status.json`.
    fn status_page(&self) -> String {
        let st = self.status_json();
        let id = esc(&self.node.peer_id().to_string());
        let mut addrs = String::new();
        for a in &self.addrs {
            let a = esc(a);
            addrs.push_str(&format!(
                "<li><code>{a}</code> <button type=\"button\" data-copy=\"{a}\">copy</button></li>\n"
            ));
        }
        let mut counts = String::new();
        for (key, label) in COUNTS {
            counts.push_str(&format!(
                "<tr><th>{label}</th><td id=\"count-{key}\">{}</td></tr>\n",
                st[key]
            ));
        }
        let mut refusals = String::new();
        if let Some(list) = st["recent_refusals"].as_array() {
            for r in list {
                refusals.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
                    r["unix_time"],
                    esc(r["request"].as_str().unwrap_or("")),
                    esc(r["reason"].as_str().unwrap_or("")),
                    esc(r["peer"].as_str().unwrap_or("")),
                    esc(r["ip"].as_str().unwrap_or("")),
                ));
            }
        }
        STATUS_PAGE
            .replace("{{peer_id}}", &id)
            .replace("{{addrs}}", &addrs)
            .replace("{{counts}}", &counts)
            .replace("{{refusals}}", &refusals)
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
    }
}

/// `/status.json` keys shown as live counts, with their labels.
const COUNTS: [(&str, &str); 9] = [
    ("connections", "Connections"),
    ("reservations", "Reservations"),
    ("circuits", "Circuits open"),
    ("reservations_accepted", "Reservations granted"),
    ("reservations_refused", "Reservations refused"),
    ("circuits_opened", "Circuits opened"),
    ("circuits_refused", "Circuits refused"),
    ("bytes_relayed", "Bytes relayed"),
    ("uptime_secs", "Uptime (s)"),
];

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STATUS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>circuit relay</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
code { font: 13px ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .2rem .8rem .2rem 0; }
td[id^=count-] { font-variant-numeric: tabular-nums; }
button { font-size: 12px; }
.muted { color: #777; }
</style>
</head>
<body>
<h1>circuit relay <span class="muted">v{{version}}</span></h1>
<h2>Peer ID</h2>
<p><code id="peer-id">{{peer_id}}</code> <button type="button" data-copy="{{peer_id}}">copy</button></p>
<h2>Addresses</h2>
<ul id="addrs">
{{addrs}}</ul>
<h2>Now <span class="muted" id="updated"></span></h2>
<table id="counts">
{{counts}}</table>
<h2>Recent refusals</h2>
<table id="refusals">
<thead><tr><th>time (unix)</th><th>request</th><th>reason</th><th>peer</th><th>ip</th></tr></thead>
<tbody>
{{refusals}}</tbody>
</table>
<p class="muted"><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a></p>
<script>
for (const b of document.querySelectorAll("button[data-copy]")) {
  b.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(b.dataset.copy); b.textContent = "copied"; }
    catch (e) { b.textContent = "select and copy"; }
    setTimeout(() => { b.textContent = "copy"; }, 1500);
  });
}
function cell(text, code) {
  const td = document.createElement("td");
  const el = code ? document.createElement("code") : td;
  el.textContent = text == null ? "" : String(text);
  if (code) td.appendChild(el);
  return td;
}
async function refresh() {
  try {
    const s = await (await fetch("/status.json", {cache: "no-store"})).json();
    for (const td of document.querySelectorAll("td[id^=count-]")) {
      const k = td.id.slice(6);
      if (k in s) td.textContent = String(s[k]);
    }
    const body = document.querySelector("#refusals tbody");
    body.replaceChildren(...s.recent_refusals.map(r => {
      const tr = document.createElement("tr");
      tr.append(cell(r.unix_time), cell(r.request), cell(r.reason), cell(r.peer, true), cell(r.ip));
      return tr;
    }));
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() + (s.serving ? "" : " (shutting down)");
  } catch (e) {
    document.getElementById("updated").textContent = "(relay unreachable)";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"##;

/// AutoNAT server settings: go-libp2p's limits; private dial-backs only when asked.
pub fn autonat_server_config(allow_private: bool) -> circuit_proto::autonat::ServerConfig {
    circuit_proto::autonat::ServerConfig {
        allow_private,
        ..Default::default()
    }
}
