//! `perf` mode: the libp2p perf protocol (`/perf/1.0.0`) by hand on
//! `libp2p-stream`. The client writes the download size as a big-endian u64,
//! uploads, half-closes, then reads to EOF; the server reads the size, drains
//! the upload, sends the requested bytes and closes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{relay, Multiaddr, PeerId, StreamProtocol};

use crate::{build_peer_swarm, emit, trailing_peer_id, with_peer_id, PeerBehaviourEvent, CHUNK};

/// The perf protocol id.
const PERF_PROTOCOL: StreamProtocol = StreamProtocol::new("/perf/1.0.0");

/// Serves one perf stream; returns (received, sent).
async fn serve(mut stream: libp2p::Stream) -> std::io::Result<(u64, u64)> {
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).await?;
    let to_send = u64::from_be_bytes(size);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    // Sent in fixed chunks: the requested size is never allocated.
    let zeros = vec![0u8; CHUNK];
    let mut left = to_send;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&zeros[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    Ok((received, to_send))
}

/// The direct listen addresses of `perf --server`: those given, else
/// `/ip4/127.0.0.1/tcp/0` unless the server is reached through a relay only.
pub fn server_listen_addrs(listen: Vec<Multiaddr>, relayed: bool) -> Vec<Multiaddr> {
    if listen.is_empty() && !relayed {
        vec![Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
            .with(Protocol::Tcp(0))]
    } else {
        listen
    }
}

/// `perf --server [--relay R]`: listen (and reserve on R) and serve perf streams
/// until killed. `READY` follows the last `LISTEN` and the `RESERVED` line.
pub async fn run_server(listen: Vec<Multiaddr>, relay: Option<Multiaddr>) -> anyhow::Result<()> {
    let relay_peer = match &relay {
        Some(r) => Some(
            trailing_peer_id(r)
                .ok_or_else(|| anyhow!("--relay address must end with /p2p/<relay peer id>"))?,
        ),
        None => None,
    };
    let mut swarm = build_peer_swarm(Duration::from_secs(15)).await?;
    let me = *swarm.local_peer_id();
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(PERF_PROTOCOL)
        .map_err(|e| anyhow!("register {PERF_PROTOCOL}: {e}"))?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            tokio::spawn(async move {
                match serve(stream).await {
                    Ok((up, down)) => emit(&format!("PERF {peer} {up} {down}")),
                    Err(e) => eprintln!("perf: stream with {peer} failed: {e}"),
                }
            });
        }
    });
    emit(&format!("PEER {me}"));
    let mut pending = Vec::new();
    for addr in listen {
        pending.push(
            swarm
                .listen_on(addr.clone())
                .with_context(|| format!("listen on {addr}"))?,
        );
    }
    let circuit_listener = match &relay {
        Some(r) => Some(
            swarm
                .listen_on(r.clone().with(Protocol::P2pCircuit))
                .context("listen on the relay's circuit address")?,
        ),
        None => None,
    };
    let mut reserved = relay.is_none();
    let mut ready = false;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } if Some(listener_id) != circuit_listener => {
                emit(&format!("LISTEN {}", with_peer_id(address, me)));
                pending.retain(|id| *id != listener_id);
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) if Some(relay_peer_id) == relay_peer && !reserved => {
                reserved = true;
                if let Some(r) = &relay {
                    let circuit = r.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(me));
                    emit(&format!("RESERVED {circuit}"));
                }
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(ev)) => {
                eprintln!("perf: relay client: {ev:?}");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. }
                if !reserved && peer_id.is_some() && peer_id == relay_peer =>
            {
                bail!("cannot connect to the relay: {error}");
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                bail!("listener closed: {reason:?}");
            }
            _ => {}
        }
        if !ready && reserved && pending.is_empty() {
            ready = true;
            emit("READY");
        }
    }
}

/// Timings of one perf exchange, measured like `circuit perf` does.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Exchange {
    uploaded: u64,
    downloaded: u64,
    /// From opening the stream to the half-close after the upload.
    upload_secs: f64,
    /// From the half-close to EOF.
    download_secs: f64,
    /// From opening the stream to EOF.
    total_secs: f64,
}

/// MiB/s, 0 for an empty or instant transfer.
fn mib_s(bytes: u64, secs: f64) -> f64 {
    if bytes == 0 || secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / secs / (1u64 << 20) as f64
    }
}

/// The client's JSON result line. It starts with the fields the interop tests
/// match (`"upload_bytes":N`); the rest are named like `circuit --json perf`'s.
fn result_line(x: &Exchange, connect_ms: f64) -> String {
    format!(
        "{{\"upload_bytes\":{},\"download_bytes\":{},\"total_secs\":{},\"connect_ms\":{},\"upload_secs\":{},\"upload_mib_s\":{},\"download_secs\":{},\"download_mib_s\":{}}}",
        x.uploaded,
        x.downloaded,
        x.total_secs,
        connect_ms,
        x.upload_secs,
        mib_s(x.uploaded, x.upload_secs),
        x.download_secs,
        mib_s(x.downloaded, x.download_secs),
    )
}

/// Runs one perf exchange on a new stream.
async fn exchange(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> anyhow::Result<Exchange> {
    let started = Instant::now();
    let mut stream = control
        .open_stream(peer, PERF_PROTOCOL)
        .await
        .map_err(|e| anyhow!("open {PERF_PROTOCOL}: {e}"))?;
    stream
        .write_all(&download.to_be_bytes())
        .await
        .context("write size")?;
    let zeros = vec![0u8; CHUNK];
    let mut left = upload;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&zeros[..n]).await.context("upload")?;
        left -= n as u64;
    }
    stream.close().await.context("half-close")?;
    let upload_secs = started.elapsed().as_secs_f64();
    let download_started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await.context("download")?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > download {
            bail!("server sent more than the {download} bytes asked for");
        }
    }
    Ok(Exchange {
        uploaded: upload,
        downloaded: got,
        upload_secs,
        download_secs: download_started.elapsed().as_secs_f64(),
        total_secs: started.elapsed().as_secs_f64(),
    })
}

/// `perf ADDR`: connect, run one exchange, print the JSON result line.
pub async fn run_client(addr: Multiaddr, upload: u64, download: u64) -> anyhow::Result<()> {
    let mut swarm = build_peer_swarm(Duration::from_secs(15)).await?;
    let control = swarm.behaviour().stream.new_control();
    let peer = trailing_peer_id(&addr)
        .ok_or_else(|| anyhow!("perf address must end with /p2p/<peer id>"))?;
    let dialed = Instant::now();
    swarm.dial(
        DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build(),
    )?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut control = Some(control);
    let mut connect_ms = 0.0;
    loop {
        tokio::select! {
            res = rx.recv() => {
                let x: Exchange = res.unwrap_or_else(|| Err(anyhow!("perf task vanished")))?;
                if x.downloaded != download {
                    bail!("downloaded {} of {download} bytes", x.downloaded);
                }
                emit(&result_line(&x, connect_ms));
                return Ok(());
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    if let Some(control) = control.take() {
                        connect_ms = dialed.elapsed().as_secs_f64() * 1e3;
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(exchange(control, peer, upload, download).await).await;
                        });
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. } if p == peer => {
                    bail!("connect failed: {error}");
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_listens_on_loopback_unless_relayed_only() {
        let def = server_listen_addrs(Vec::new(), false);
        assert_eq!(def.len(), 1);
        assert_eq!(def[0].to_string(), "/ip4/127.0.0.1/tcp/0");
        assert!(server_listen_addrs(Vec::new(), true).is_empty());
        let given: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
        assert_eq!(server_listen_addrs(vec![given.clone()], true), vec![given]);
    }

    #[test]
    fn result_line_is_json_with_per_direction_rates() {
        let x = Exchange {
            uploaded: 4 << 20,
            downloaded: 2 << 20,
            upload_secs: 2.0,
            download_secs: 0.5,
            total_secs: 2.5,
        };
        let line = result_line(&x, 3.5);
        // What crates/cli/tests/kad_interop.rs matches on.
        assert!(line.starts_with("{\"upload_bytes\":4194304,\"download_bytes\":2097152,"));
        let fields: Vec<(&str, f64)> = line
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once(':').unwrap();
                (k.trim_matches('"'), v.parse::<f64>().unwrap())
            })
            .collect();
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).unwrap().1;
        assert_eq!(get("upload_mib_s"), 2.0);
        assert_eq!(get("download_mib_s"), 4.0);
        assert_eq!(get("connect_ms"), 3.5);
        assert_eq!(get("total_secs"), 2.5);
        assert_eq!(mib_s(0, 1.0), 0.0);
        assert_eq!(mib_s(1, 0.0), 0.0);
    }
}
