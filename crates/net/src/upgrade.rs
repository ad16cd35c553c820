//! The connection upgrade: multistream-select → Noise → yamux on a raw channel,
//! and multistream-select on each new stream.
//!
//! Each step drives a sans-IO core from `circuit-proto` with async reads and
//! writes; every stage has a deadline so a stalled peer costs bounded time.

use std::io;
use std::time::Duration;

use circuit_proto::{multistream, noise};
use libp2p_identity::{Keypair, PeerId};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The muxer we speak.
pub const YAMUX: &str = "/yamux/1.0.0";

/// Which stage of the upgrade failed; used in errors, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Choosing the security protocol.
    SecurityNegotiation,
    /// The Noise handshake.
    Noise,
    /// Choosing the muxer.
    MuxerNegotiation,
    /// Choosing a stream's protocol.
    StreamNegotiation,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::SecurityNegotiation => "security negotiation (multistream-select)",
            Stage::Noise => "noise handshake",
            Stage::MuxerNegotiation => "muxer negotiation",
            Stage::StreamNegotiation => "stream protocol negotiation",
        })
    }
}

/// An upgrade failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The peer did not answer in time.
    #[error("{stage}: timed out after {after:?}")]
    Timeout {
        /// Where.
        stage: Stage,
        /// The deadline.
        after: Duration,
    },
    /// Multistream-select failed (e.g. the peer supports none of our protocols).
    #[error("{stage}: {source}")]
    Negotiation {
        /// Where.
        stage: Stage,
        /// Why.
        source: multistream::Error,
    },
    /// Noise failed (bad signature, wrong peer id, ...).
    #[error("noise handshake: {0}")]
    Noise(#[from] noise::Error),
    /// The channel closed or failed.
    #[error("{stage}: {source}")]
    Io {
        /// Where.
        stage: Stage,
        /// Why.
        source: io::Error,
    },
}

impl UpgradeError {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            UpgradeError::Timeout { stage, .. }
            | UpgradeError::Negotiation { stage, .. }
            | UpgradeError::Io { stage, .. } => *stage,
            UpgradeError::Noise(_) => Stage::Noise,
        }
    }
}

async fn with_timeout<T>(
    stage: Stage,
    after: Duration,
    f: impl std::future::Future<Output = Result<T, UpgradeError>>,
) -> Result<T, UpgradeError> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r,
        Err(_) => Err(UpgradeError::Timeout { stage, after }),
    }
}

/// A sans-IO negotiation core seen through one interface, so one async loop drives both roles.
trait Negotiation {
    fn input(&mut self, data: &[u8]) -> Result<(), multistream::Error>;
    fn transmit(&mut self, out: &mut Vec<u8>) -> usize;
    /// Done: the protocol is agreed (and, for a dialer, confirmed).
    fn done(&self) -> Option<String>;
    fn leftover(&mut self) -> Vec<u8>;
}

impl Negotiation for multistream::Dialer {
    fn input(&mut self, data: &[u8]) -> Result<(), multistream::Error> {
        self.handle_input(data)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) -> usize {
        self.poll_transmit(out)
    }
    fn done(&self) -> Option<String> {
        if self.is_confirmed() {
            self.selected().map(str::to_string)
        } else {
            None
        }
    }
    fn leftover(&mut self) -> Vec<u8> {
        self.take_leftover()
    }
}

impl Negotiation for multistream::Listener {
    fn input(&mut self, data: &[u8]) -> Result<(), multistream::Error> {
        self.handle_input(data)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) -> usize {
        self.poll_transmit(out)
    }
    fn done(&self) -> Option<String> {
        self.selected().map(str::to_string)
    }
    fn leftover(&mut self) -> Vec<u8> {
        self.take_leftover()
    }
}

async fn drive_plain<S: AsyncRead + AsyncWrite + Unpin, N: Negotiation>(
    io: &mut S,
    core: &mut N,
    stage: Stage,
) -> Result<(String, Vec<u8>), UpgradeError> {
    let io_err = |source| UpgradeError::Io { stage, source };
    let neg_err = |source| UpgradeError::Negotiation { stage, source };
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        out.clear();
        if core.transmit(&mut out) > 0 {
            io.write_all(&out).await.map_err(io_err)?;
            io.flush().await.map_err(io_err)?;
        }
        if let Some(p) = core.done() {
            return Ok((p, core.leftover()));
        }
        let n = io.read(&mut buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
        }
        core.input(&buf[..n]).map_err(neg_err)?;
    }
}

/// Proposes `protocols` in order on a raw channel; returns the agreed one and bytes read past it.
pub async fn select_dialer<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    protocols: &[&str],
    stage: Stage,
    timeout: Duration,
) -> Result<(String, Vec<u8>), UpgradeError> {
    let mut core =
        multistream::Dialer::new(protocols.iter().map(|p| p.to_string()).collect(), false);
    with_timeout(stage, timeout, drive_plain(io, &mut core, stage)).await
}

/// Answers a multistream-select negotiation; returns the chosen protocol and bytes read past it.
pub async fn select_listener<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    supported: Vec<String>,
    stage: Stage,
    timeout: Duration,
) -> Result<(String, Vec<u8>), UpgradeError> {
    let mut core = multistream::Listener::new(supported);
    with_timeout(stage, timeout, drive_plain(io, &mut core, stage)).await
}

/// Result of securing a channel.
pub struct Secured {
    /// The Noise transport.
    pub transport: noise::Transport,
    /// What the handshake proved.
    pub outcome: noise::Outcome,
    /// Decrypted bytes that arrived past the muxer negotiation (belong to yamux).
    pub plaintext: Vec<u8>,
}

/// Timeouts of the upgrade stages.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeTimeouts {
    /// Each multistream-select negotiation.
    pub negotiation: Duration,
    /// The Noise handshake.
    pub handshake: Duration,
}

impl Default for UpgradeTimeouts {
    fn default() -> Self {
        UpgradeTimeouts {
            negotiation: Duration::from_secs(10),
            handshake: Duration::from_secs(15),
        }
    }
}

/// Runs multistream (`/noise`) → Noise → muxer selection on a raw channel.
///
/// `expected` is the peer id we dialed, checked against the Noise identity.
pub async fn secure<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    keypair: &Keypair,
    initiator: bool,
    expected: Option<PeerId>,
    timeouts: UpgradeTimeouts,
) -> Result<Secured, UpgradeError> {
    let leftover = if initiator {
        select_dialer(
            io,
            &[noise::PROTOCOL_ID],
            Stage::SecurityNegotiation,
            timeouts.negotiation,
        )
        .await?
        .1
    } else {
        select_listener(
            io,
            vec![noise::PROTOCOL_ID.to_string()],
            Stage::SecurityNegotiation,
            timeouts.negotiation,
        )
        .await?
        .1
    };
    let config = noise::Config {
        muxers: vec![YAMUX.to_string()],
    };
    let mut hs = if initiator {
        noise::Handshake::initiator(keypair, expected, config)?
    } else {
        noise::Handshake::responder(keypair, config)?
    };
    let stage = Stage::Noise;
    let io_err = |source| UpgradeError::Io { stage, source };
    let (mut transport, outcome) = with_timeout(stage, timeouts.handshake, async {
        if !leftover.is_empty() {
            hs.handle_input(&leftover)?;
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            out.clear();
            if hs.poll_transmit(&mut out) > 0 {
                io.write_all(&out).await.map_err(io_err)?;
                io.flush().await.map_err(io_err)?;
            }
            if hs.is_finished() {
                break;
            }
            let n = io.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
            }
            hs.handle_input(&buf[..n])?;
        }
        Ok(hs.into_transport()?)
    })
    .await?;

    let mut plaintext = Vec::new();
    if outcome.muxer.as_deref() != Some(YAMUX) {
        // No muxer agreed in the handshake: negotiate it inside the encrypted channel.
        let stage = Stage::MuxerNegotiation;
        let mut core: Box<dyn Negotiation + Send> = if initiator {
            Box::new(multistream::Dialer::new(vec![YAMUX.to_string()], false))
        } else {
            Box::new(multistream::Listener::new(vec![YAMUX.to_string()]))
        };
        let io_err = |source| UpgradeError::Io { stage, source };
        let neg_err = |source| UpgradeError::Negotiation { stage, source };
        plaintext = with_timeout(stage, timeouts.negotiation, async {
            transport
                .read_plaintext(&mut plaintext)
                .map_err(UpgradeError::Noise)?;
            let mut pending = std::mem::take(&mut plaintext);
            let mut out = Vec::new();
            let mut cipher = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                if !pending.is_empty() {
                    core.input(&pending).map_err(neg_err)?;
                    pending.clear();
                }
                out.clear();
                if core.transmit(&mut out) > 0 {
                    cipher.clear();
                    transport.encrypt(&out, &mut cipher)?;
                    io.write_all(&cipher).await.map_err(io_err)?;
                    io.flush().await.map_err(io_err)?;
                }
                if core.done().is_some() {
                    return Ok(core.leftover());
                }
                let n = io.read(&mut buf).await.map_err(io_err)?;
                if n == 0 {
                    return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
                }
                transport.handle_input(&buf[..n]);
                transport.read_plaintext(&mut pending)?;
            }
        })
        .await?;
    }
    Ok(Secured {
        transport,
        outcome,
        plaintext,
    })
}
