//! `perf` mode: the libp2p perf protocol (`/perf/1.0.0`) by hand on
//! `libp2p-stream`. The client writes the download size as a big-endian u64,
//! uploads, half-closes, then reads to EOF; the server reads the size, drains
//! the upload, sends the requested bytes and closes.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

use crate::{build_peer_swarm, emit, trailing_peer_id, with_peer_id, CHUNK};

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

/// `perf --server`: listen and serve perf streams until killed.
pub async fn run_server(listen: Vec<Multiaddr>) -> anyhow::Result<()> {
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
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                emit(&format!("LISTEN {}", with_peer_id(address, me)));
                let before = pending.len();
                pending.retain(|id| *id != listener_id);
                if before != pending.len() && pending.is_empty() {
                    emit("READY");
                }
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                bail!("listener closed: {reason:?}");
            }
            _ => {}
        }
    }
}

/// Runs one perf exchange on a new stream; returns (uploaded, downloaded,
/// seconds from opening the stream to EOF).
async fn exchange(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> anyhow::Result<(u64, u64, f64)> {
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
    Ok((upload, got, started.elapsed().as_secs_f64()))
}

/// `perf ADDR`: connect, run one exchange, print the JSON result line.
pub async fn run_client(addr: Multiaddr, upload: u64, download: u64) -> anyhow::Result<()> {
    let mut swarm = build_peer_swarm(Duration::from_secs(15)).await?;
    let control = swarm.behaviour().stream.new_control();
    let peer = trailing_peer_id(&addr)
        .ok_or_else(|| anyhow!("perf address must end with /p2p/<peer id>"))?;
    swarm.dial(
        DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build(),
    )?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut control = Some(control);
    loop {
        tokio::select! {
            res = rx.recv() => {
                let (up, down, secs) = res.unwrap_or_else(|| Err(anyhow!("perf task vanished")))?;
                if down != download {
                    bail!("downloaded {down} of {download} bytes");
                }
                emit(&format!(
                    "{{\"upload_bytes\":{up},\"download_bytes\":{down},\"total_secs\":{secs}}}"
                ));
                return Ok(());
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    if let Some(control) = control.take() {
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
