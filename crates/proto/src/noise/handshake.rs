//! The libp2p Noise XX handshake as a sans-IO state machine.

use circuit_wire::pb::noise::{NoiseExtensions, NoiseHandshakePayload};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use prost::Message as _;

use super::transport::{complete_frame_len, Transport};
use super::{
    Config, Error, Outcome, Stage, LEN_PREFIX, MAX_FRAME, NOISE_PARAMS, STATIC_KEY_DOMAIN, TAG_LEN,
};

/// X25519 public key length.
const DH_LEN: usize = 32;

/// Largest token overhead of an XX message carrying a payload: msg 2 is
/// `e (32) || enc(s) (32 + 16) || enc(payload) (+16)`.
const MAX_HANDSHAKE_OVERHEAD: usize = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN;

/// Bound on bytes a finished handshake keeps buffering (pipelined transport frames) before
/// `into_transport` is called; generous because a single read may carry several frames.
const MAX_BUFFERED_AFTER_FINISH: usize = 4 * (LEN_PREFIX + MAX_FRAME);

/// What we learnt from the remote's handshake payload.
struct Remote {
    key: PublicKey,
    peer: PeerId,
    muxers: Vec<String>,
}

/// A libp2p Noise XX handshake in progress (either role).
///
/// The initiator queues message 1 at construction; each role answers as soon as the message it waits
/// for is complete in the input. Once [`Handshake::is_finished`], [`Handshake::into_transport`] yields
/// the [`Transport`] and [`Outcome`].
pub struct Handshake {
    state: snow::HandshakeState,
    initiator: bool,
    /// Our encoded `NoiseHandshakePayload`, sent in msg 2 (responder) or msg 3 (initiator).
    payload: Vec<u8>,
    expected_remote: Option<PeerId>,
    muxers: Vec<String>,
    /// Received bytes not yet consumed as handshake messages.
    inbuf: Vec<u8>,
    /// Framed messages not yet taken by `poll_transmit`.
    outbuf: Vec<u8>,
    /// Number of handshake messages read so far.
    received: u8,
    remote: Option<Remote>,
    muxer: Option<String>,
    failed: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.initiator)
            .field("stage", &self.stage())
            .field("expected_remote", &self.expected_remote)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts a handshake as the initiator (the dialer). Message 1 is queued immediately.
    ///
    /// If `expected_remote` is given, the handshake fails with [`Error::PeerIdMismatch`] unless the
    /// responder proves that identity.
    pub fn initiator(
        identity: &Keypair,
        expected_remote: Option<PeerId>,
        config: Config,
    ) -> Result<Handshake, Error> {
        Self::new(
            true,
            expected_remote,
            config.muxers,
            |static_public, muxers| signed_payload(identity, static_public, muxers),
        )
    }

    /// Starts a handshake as the responder (the listener); it waits for message 1.
    pub fn responder(identity: &Keypair, config: Config) -> Result<Handshake, Error> {
        Self::new(false, None, config.muxers, |static_public, muxers| {
            signed_payload(identity, static_public, muxers)
        })
    }

    /// Builds the state with a fresh X25519 static key; `make_payload` gets the static public key and
    /// our muxers and returns the encoded payload (a seam for tests that forge payloads).
    pub(crate) fn new(
        initiator: bool,
        expected_remote: Option<PeerId>,
        muxers: Vec<String>,
        make_payload: impl FnOnce(&[u8], &[String]) -> Result<Vec<u8>, Error>,
    ) -> Result<Handshake, Error> {
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse()?;
        let builder = snow::Builder::new(params);
        // A fresh static key per handshake: the identity signature binds it, so nothing needs to persist.
        let static_key = builder.generate_keypair()?;
        let payload = make_payload(&static_key.public, &muxers)?;
        if payload.len() > MAX_FRAME - MAX_HANDSHAKE_OVERHEAD {
            // Only a huge muxer list could get here; fail early instead of mid-handshake.
            return Err(Error::FrameTooLarge);
        }
        // The prologue stays empty, as libp2p requires for TCP/WS/relayed connections.
        let builder = builder.local_private_key(&static_key.private)?;
        let state = if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        };
        let mut hs = Handshake {
            state,
            initiator,
            payload,
            expected_remote,
            muxers,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            received: 0,
            remote: None,
            muxer: None,
            failed: false,
        };
        if initiator {
            // Message 1 carries no payload: it has no secrecy yet (spec: extensions never in msg 1).
            hs.write_message(false)?;
        }
        Ok(hs)
    }

    /// Raw bytes from the wire, any split; buffered until a whole frame is there, then processed.
    ///
    /// While the handshake runs, at most one partial frame (≤ 65535 + 2 bytes) is buffered. Bytes
    /// following the last handshake message are kept for the [`Transport`]. After an error the
    /// handshake is dead and further calls return [`Error::Poisoned`].
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Poisoned);
        }
        if self.state.is_handshake_finished() {
            // The caller should have switched to the transport; keep the bytes, but bounded.
            if self.inbuf.len() + data.len() > MAX_BUFFERED_AFTER_FINISH {
                return Err(Error::BufferFull);
            }
            self.inbuf.extend_from_slice(data);
            return Ok(());
        }
        self.inbuf.extend_from_slice(data);
        let result = self.process_input();
        if result.is_err() {
            self.failed = true;
            self.outbuf.clear();
        }
        result
    }

    /// Reads every complete handshake message the state machine is waiting for.
    fn process_input(&mut self) -> Result<(), Error> {
        let mut consumed = 0;
        while !self.state.is_handshake_finished() && !self.state.is_my_turn() {
            let Some(len) = complete_frame_len(&self.inbuf[consumed..]) else {
                break;
            };
            let body = consumed + LEN_PREFIX;
            // Bounded by the u16 frame length; handshake messages are few, so this allocation is fine.
            let mut payload = vec![0u8; len];
            let n = self
                .state
                .read_message(&self.inbuf[body..body + len], &mut payload)?;
            payload.truncate(n);
            consumed = body + len;
            self.received += 1;
            self.on_message(&payload)?;
        }
        self.inbuf.drain(..consumed);
        Ok(())
    }

    /// Reacts to the handshake message just read (the `self.received`-th we got), given its payload.
    fn on_message(&mut self, payload: &[u8]) -> Result<(), Error> {
        match (self.initiator, self.received) {
            // Msg 1 should be empty; like other implementations we ignore whatever it carries.
            (false, 1) => self.write_message(true),
            // Msg 2: authenticate the responder, then answer with msg 3.
            (true, 1) => {
                self.authenticate(payload)?;
                self.write_message(true)
            }
            // Msg 3: authenticate the initiator; the handshake is then complete.
            (false, 2) => self.authenticate(payload),
            // Unreachable with the XX pattern: snow refuses to read out of turn or past the end.
            _ => Err(Error::Malformed),
        }
    }

    /// Verifies the remote's payload against the static key it used, then negotiates the muxer.
    fn authenticate(&mut self, payload: &[u8]) -> Result<(), Error> {
        // XX has transmitted `s` by msg 2 (responder) and msg 3 (initiator).
        let remote_static = self.state.get_remote_static().ok_or(Error::Malformed)?;
        let remote = verify_payload(payload, remote_static, self.expected_remote.as_ref())?;
        let (initiator_muxers, responder_muxers) = if self.initiator {
            (&self.muxers, &remote.muxers)
        } else {
            (&remote.muxers, &self.muxers)
        };
        self.muxer = choose_muxer(initiator_muxers, responder_muxers)?;
        tracing::debug!(
            remote = %remote.peer,
            muxer = ?self.muxer,
            initiator = self.initiator,
            "noise: remote authenticated"
        );
        self.remote = Some(remote);
        Ok(())
    }

    /// Writes the next handshake message into `outbuf`, framed, with our payload if `with_payload`.
    fn write_message(&mut self, with_payload: bool) -> Result<(), Error> {
        let payload: &[u8] = if with_payload { &self.payload } else { &[] };
        let start = self.outbuf.len();
        let body = start + LEN_PREFIX;
        self.outbuf.resize(body + MAX_FRAME, 0);
        let n = match self.state.write_message(payload, &mut self.outbuf[body..]) {
            Ok(n) => n,
            Err(e) => {
                self.outbuf.truncate(start);
                return Err(e.into());
            }
        };
        let Ok(len) = u16::try_from(n) else {
            self.outbuf.truncate(start);
            return Err(Error::FrameTooLarge);
        };
        self.outbuf.truncate(body + n);
        self.outbuf[start..body].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Appends framed handshake messages to send to `out`; returns the number of bytes appended.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.outbuf.len();
        out.extend_from_slice(&self.outbuf);
        self.outbuf.clear();
        n
    }

    /// True once the handshake is complete on our side and everything we must send has been taken
    /// via [`Handshake::poll_transmit`].
    pub fn is_finished(&self) -> bool {
        !self.failed && self.state.is_handshake_finished() && self.outbuf.is_empty()
    }

    /// Which step we are at, e.g. for "timed out waiting for message 2 from responder".
    pub fn stage(&self) -> Stage {
        if self.failed {
            Stage::Failed
        } else if self.state.is_handshake_finished() {
            if self.outbuf.is_empty() {
                Stage::Finished
            } else {
                Stage::Flushing
            }
        } else if self.initiator {
            Stage::AwaitingMessage2
        } else if self.received == 0 {
            Stage::AwaitingMessage1
        } else {
            Stage::AwaitingMessage3
        }
    }

    /// After [`Handshake::is_finished`]: the transport and what we learnt about the remote.
    ///
    /// Bytes that arrived after the last handshake message (pipelined transport frames) are moved into
    /// the transport's input buffer; call [`Transport::read_plaintext`] right away to get them.
    pub fn into_transport(self) -> Result<(Transport, Outcome), Error> {
        if self.failed {
            return Err(Error::Poisoned);
        }
        if !self.is_finished() {
            return Err(Error::NotFinished(self.stage()));
        }
        // Always set when finished: both roles authenticate before the handshake completes.
        let remote = self.remote.ok_or(Error::NotFinished(Stage::Failed))?;
        let mut state = self.state;
        // The transport does its own AEAD on the split keys (see `transport.rs` for why).
        let (k1, k2) = state.dangerously_get_raw_split();
        let outcome = Outcome {
            remote_peer: remote.peer,
            remote_key: remote.key,
            remote_muxers: remote.muxers,
            muxer: self.muxer,
        };
        Ok((
            Transport::new(self.initiator, &k1, &k2, self.inbuf),
            outcome,
        ))
    }
}

/// The bytes the identity key signs: `"noise-libp2p-static-key:" || static public key`.
pub(crate) fn static_key_message(static_public: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(STATIC_KEY_DOMAIN.len() + static_public.len());
    msg.extend_from_slice(STATIC_KEY_DOMAIN);
    msg.extend_from_slice(static_public);
    msg
}

/// Encodes our handshake payload: identity key, its signature over the static key, and the muxers
/// (extensions omitted entirely when we offer none, so the remote falls back to multistream-select).
pub(crate) fn signed_payload(
    identity: &Keypair,
    static_public: &[u8],
    muxers: &[String],
) -> Result<Vec<u8>, Error> {
    let identity_sig = identity.sign(&static_key_message(static_public))?;
    let payload = NoiseHandshakePayload {
        identity_key: Some(identity.public().encode_protobuf()),
        identity_sig: Some(identity_sig),
        extensions: (!muxers.is_empty()).then(|| NoiseExtensions {
            webtransport_certhashes: Vec::new(),
            stream_muxers: muxers.to_vec(),
        }),
    };
    Ok(payload.encode_to_vec())
}

/// Decodes and checks the remote's payload against the static key it actually used in the handshake.
fn verify_payload(
    payload: &[u8],
    remote_static: &[u8],
    expected: Option<&PeerId>,
) -> Result<Remote, Error> {
    let msg = NoiseHandshakePayload::decode(payload)?;
    let (Some(key_bytes), Some(sig)) = (msg.identity_key, msg.identity_sig) else {
        return Err(Error::MissingIdentity);
    };
    let key = PublicKey::try_decode_protobuf(&key_bytes).map_err(Error::InvalidKey)?;
    if !key.verify(&static_key_message(remote_static), &sig) {
        return Err(Error::BadSignature);
    }
    let peer = key.to_peer_id();
    if let Some(expected) = expected {
        if *expected != peer {
            return Err(Error::PeerIdMismatch {
                expected: *expected,
                actual: peer,
            });
        }
    }
    let muxers = msg
        .extensions
        .map(|ext| ext.stream_muxers)
        .unwrap_or_default();
    Ok(Remote { key, peer, muxers })
}

/// Inlined muxer negotiation: the initiator's first choice that the responder also lists; `None` if
/// either side listed none (fall back to multistream-select); an error if both listed but nothing
/// overlaps (the spec says the handshake MUST fail then).
pub(crate) fn choose_muxer(
    initiator: &[String],
    responder: &[String],
) -> Result<Option<String>, Error> {
    if initiator.is_empty() || responder.is_empty() {
        return Ok(None);
    }
    match initiator.iter().find(|m| responder.contains(m)) {
        Some(m) => Ok(Some(m.clone())),
        None => Err(Error::NoCommonMuxer {
            initiator: initiator.to_vec(),
            responder: responder.to_vec(),
        }),
    }
}

#[cfg(test)]
impl Handshake {
    /// Test access to the input buffer's allocation size.
    pub(crate) fn inbuf_capacity_for_test(&self) -> usize {
        self.inbuf.capacity()
    }
}
