//! Sans-IO libp2p Noise (`/noise`): the `Noise_XX_25519_ChaChaPoly_SHA256` handshake with the libp2p
//! identity payload, inlined muxer negotiation, and the framed transport that follows it.
//!
//! Wire format (see `/work/shared/specs/basics.md` §2 and libp2p/specs `noise/README.md`):
//! every Noise message is framed as `u16 big-endian length || noise message`, with an empty prologue.
//! Message 1 (`-> e`) carries an empty payload; messages 2 (`<- e, ee, s, es`) and 3 (`-> s, se`)
//! carry a [`NoiseHandshakePayload`](circuit_wire::pb::noise::NoiseHandshakePayload) that binds the
//! sender's libp2p identity key to its X25519 static key.
//!
//! Usage: build a [`Handshake`] with [`Handshake::initiator`] (the dialer) or
//! [`Handshake::responder`], shuttle bytes with [`Handshake::handle_input`] /
//! [`Handshake::poll_transmit`] until [`Handshake::is_finished`], then call
//! [`Handshake::into_transport`] to get a [`Transport`] and the [`Outcome`].

// `Error` carries two `PeerId`s for a useful mismatch report; it is returned at most once per call
// (never per frame), so its size does not matter for the data path.
#![allow(clippy::result_large_err)]

pub mod aead;
mod handshake;
mod transport;

#[cfg(test)]
mod tests;

pub use handshake::Handshake;
pub use transport::Transport;

use libp2p_identity::{PeerId, PublicKey};

/// Protocol ID negotiated with multistream-select before the handshake.
pub const PROTOCOL_ID: &str = "/noise";

/// Largest Noise message (ciphertext including the 16-byte AEAD tag), bounded by the u16 frame length.
pub const MAX_FRAME: usize = 65535;

/// Largest plaintext carried by one transport message: [`MAX_FRAME`] minus the AEAD tag.
pub const MAX_PLAINTEXT: usize = MAX_FRAME - TAG_LEN;

/// Length of the ChaChaPoly authentication tag appended to every encrypted message.
pub(crate) const TAG_LEN: usize = 16;

/// Length of the big-endian frame length prefix.
pub(crate) const LEN_PREFIX: usize = 2;

/// The Noise protocol name; libp2p fixes all parameters.
pub(crate) const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Domain-separation prefix of the identity signature over the X25519 static key.
pub(crate) const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";

/// Protocol ID of yamux, the muxer we offer through Noise extensions when configured.
pub const YAMUX_PROTOCOL: &str = "/yamux/1.0.0";

/// Local handshake settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Stream muxers offered in the handshake extensions, in preference order. Empty means we send no
    /// `stream_muxers` and the muxer is negotiated with multistream-select afterwards.
    pub muxers: Vec<String>,
}

impl Config {
    /// A configuration offering only yamux (`/yamux/1.0.0`) in the handshake.
    pub fn yamux() -> Self {
        Config {
            muxers: vec![YAMUX_PROTOCOL.to_owned()],
        }
    }
}

/// What the handshake established about the remote peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Peer ID derived from the remote's authenticated identity key.
    pub remote_peer: PeerId,
    /// The remote's identity key, whose signature over the Noise static key was verified.
    pub remote_key: PublicKey,
    /// Muxers listed by the remote in its extensions (empty if it sent none).
    pub remote_muxers: Vec<String>,
    /// Muxer agreed in the handshake: the first entry of the initiator's list that the responder also
    /// listed. `None` if either side listed none — negotiate the muxer with multistream-select then.
    pub muxer: Option<String>,
}

/// Which handshake step we are at; its `Display` is meant for timeout messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Responder waiting for message 1 (`-> e`) from the initiator.
    AwaitingMessage1,
    /// Initiator waiting for message 2 (`<- e, ee, s, es`) from the responder.
    AwaitingMessage2,
    /// Responder waiting for message 3 (`-> s, se`) from the initiator.
    AwaitingMessage3,
    /// Handshake complete on our side, but our last message has not been taken by `poll_transmit` yet.
    Flushing,
    /// Handshake complete and everything sent: call `into_transport`.
    Finished,
    /// The handshake failed; the connection must be dropped.
    Failed,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::AwaitingMessage1 => "waiting for message 1 from initiator",
            Stage::AwaitingMessage2 => "waiting for message 2 from responder",
            Stage::AwaitingMessage3 => "waiting for message 3 from initiator",
            Stage::Flushing => "sending the final handshake message",
            Stage::Finished => "handshake finished",
            Stage::Failed => "handshake failed",
        })
    }
}

/// Errors of the Noise handshake and transport. Any of them means the connection must be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Noise message longer than [`MAX_FRAME`] was received or would have to be sent.
    #[error("noise frame too large (max {MAX_FRAME} bytes)")]
    FrameTooLarge,
    /// A message failed authentication (bad tag, tampered or truncated ciphertext).
    #[error("noise message failed to decrypt")]
    Decrypt,
    /// A handshake message is too short for the tokens it must carry.
    #[error("malformed noise handshake message")]
    Malformed,
    /// The handshake payload is not a valid `NoiseHandshakePayload` protobuf.
    #[error("malformed noise handshake payload: {0}")]
    BadPayload(#[from] prost::DecodeError),
    /// The handshake payload lacks `identity_key` or `identity_sig`.
    #[error("noise handshake payload lacks the identity key or signature")]
    MissingIdentity,
    /// The remote's `identity_key` is not a valid libp2p public key.
    #[error("invalid remote identity key: {0}")]
    InvalidKey(#[source] libp2p_identity::DecodingError),
    /// The remote's identity signature does not cover the static key it used in the handshake.
    #[error("remote identity signature over the noise static key is invalid")]
    BadSignature,
    /// The remote authenticated as a different peer than the one we dialled.
    #[error("remote peer ID mismatch: expected {expected}, got {actual}")]
    PeerIdMismatch {
        /// The peer ID we meant to reach.
        expected: PeerId,
        /// The peer ID the remote proved.
        actual: PeerId,
    },
    /// Both sides listed muxers in their extensions but none in common (the spec requires failing).
    #[error(
        "no stream muxer in common (initiator offered {initiator:?}, responder {responder:?})"
    )]
    NoCommonMuxer {
        /// The initiator's offer.
        initiator: Vec<String>,
        /// The responder's offer.
        responder: Vec<String>,
    },
    /// Signing our static key with the local identity key failed.
    #[error("signing the noise static key failed: {0}")]
    Signing(#[from] libp2p_identity::SigningError),
    /// `into_transport` was called before the handshake finished and was fully transmitted.
    #[error("noise handshake not finished ({0})")]
    NotFinished(Stage),
    /// The handshake previously failed; it cannot be continued.
    #[error("noise handshake already failed")]
    Poisoned,
    /// The input buffer of a finished handshake exceeds its bound; call `into_transport` instead.
    #[error("too much data buffered after the noise handshake")]
    BufferFull,
    /// The AEAD library failed to encrypt a message (never seen; the connection must end).
    #[error("noise message failed to encrypt")]
    Seal,
    /// 2^64 − 1 transport messages were sent or received with one key; the connection must end.
    #[error("noise nonce exhausted")]
    NonceExhausted,
    /// Any other error reported by the Noise implementation.
    #[error("noise protocol error: {0}")]
    Snow(snow::Error),
}

impl From<snow::Error> for Error {
    fn from(e: snow::Error) -> Self {
        // Surface the two peer-triggerable cases as their own variants so callers can log them apart.
        match e {
            snow::Error::Decrypt => Error::Decrypt,
            snow::Error::Input => Error::Malformed,
            other => Error::Snow(other),
        }
    }
}
