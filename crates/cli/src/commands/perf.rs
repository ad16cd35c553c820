//! `circuit perf`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use circuit_net::protocols::perf;
use circuit_net::{Multiaddr, Node};
use serde_json::json;

use crate::output::{ev, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Peer address (direct or `/p2p-circuit`); the peer must serve `/perf/1.0.0`.
    addr: Multiaddr,
    /// Bytes to send (suffixes K, M, G = KiB, MiB, GiB).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    upload: u64,
    /// Bytes to ask back.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    download: u64,
    /// Identity key file [default: a fresh key for this run].
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Extra trusted certificate(s) (PEM) for dialing secure WebSocket, e.g. a self-signed relay.
    #[arg(long, value_name = "FILE")]
    tls_trust: Option<PathBuf>,
    /// DHT peers to join to find a relay for the bare form `/p2p-circuit/p2p/<peer>` (repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<Multiaddr>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mul)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / secs / (1 << 20) as f64
    }
}

pub async fn run(a: Args, out: Output) -> anyhow::Result<ExitCode> {
    let node = Node::new(
        super::identity(a.identity, None)?,
        super::peer_config(a.tls_trust.as_deref())?,
    );
    let start = std::time::Instant::now();
    let conn = super::connect(&node, &a.addr, &a.bootstrap).await?;
    let connect = start.elapsed();
    let r = perf::run(&node, &conn, a.upload, a.download)
        .await
        .with_context(|| {
            format!(
                "perf request to {} (a reset stream is a refusal: a peer that does not serve \
                 /perf/1.0.0, or a circuit relay bounding perf by size, --perf-max-bytes \
                 [64 MiB by default], and by requests at once, --perf-max-concurrent)",
                conn.peer()
            )
        })?;
    let up = rate(r.uploaded, r.upload_time.as_secs_f64());
    let down = rate(r.downloaded, r.download_time.as_secs_f64());
    let ttfb = r.time_to_first_byte.map(|d| d.as_secs_f64() * 1e3);
    out.result(
        format!(
            "connected in {:.1} ms ({})\nupload   {} bytes in {:.3} s = {up:.1} MiB/s\ndownload {} bytes in {:.3} s = {down:.1} MiB/s\ntime to first byte {} ms; total {:.3} s",
            connect.as_secs_f64() * 1e3,
            if conn.info().relayed { "relayed" } else { "direct" },
            r.uploaded,
            r.upload_time.as_secs_f64(),
            r.downloaded,
            r.download_time.as_secs_f64(),
            ttfb.map(|t| format!("{t:.2}")).unwrap_or_else(|| "-".into()),
            r.total.as_secs_f64()
        ),
        ev(
            "perf",
            json!({"connect_ms": connect.as_secs_f64()*1e3, "relayed": conn.info().relayed, "upload_bytes": r.uploaded, "upload_secs": r.upload_time.as_secs_f64(), "upload_mib_s": up, "download_bytes": r.downloaded, "download_secs": r.download_time.as_secs_f64(), "download_mib_s": down, "ttfb_ms": ttfb, "total_secs": r.total.as_secs_f64()}),
        ),
    );
    Ok(ExitCode::SUCCESS)
}
