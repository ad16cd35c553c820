//! AutoNAT v1 (`/libp2p/autonat/1.0.0`), sans-IO.
//!
//! - Messages: [`dial_request`], [`parse_dial_request`], [`dial_response_ok`],
//!   [`dial_response_error`], [`parse_dial_response`] over
//!   `circuit_wire::pb::autonat::Message` (one varint-framed message each way
//!   per stream).
//! - [`Server`]: decides whether and where to dial a requester back — only its
//!   observed IP, only TCP addresses, a bounded number, rate-limited per peer
//!   and globally — and builds the answer once the glue has dialed.
//! - [`Client`]: schedules probes across servers and turns their answers into
//!   a [`NatStatus`] with a confidence (0..=3) that is revised as answers
//!   change, following go-libp2p.
//!
//! Nothing here reads a clock; every method takes `now`.

mod client;
mod server;

#[cfg(test)]
mod tests;

use circuit_wire::pb::autonat::{
    Dial, DialResponse, Message, MessageType, PeerInfo, ResponseStatus,
};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use prost::Message as _;
use thiserror::Error;

pub use client::{Client, ClientConfig, NatStatus, Observation, StatusChange};
pub use server::{is_global_ip, Refusal, Server, ServerConfig};

/// The protocol id.
pub const PROTOCOL: &str = "/libp2p/autonat/1.0.0";
/// Largest message we accept (go's limit is 4096).
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// Largest message we send: rust-libp2p's AutoNAT codec refuses more than 1024.
pub const MAX_SEND_SIZE: usize = 1024;

/// Why a server did not report a successful dial-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseError {
    /// It dialed and every dial failed (`E_DIAL_ERROR`): evidence of a NAT.
    DialError,
    /// It would not dial (`E_DIAL_REFUSED`): no evidence either way.
    DialRefused,
    /// It found the request malformed (`E_BAD_REQUEST`).
    BadRequest,
    /// It failed internally (`E_INTERNAL_ERROR`).
    InternalError,
}

impl ResponseError {
    /// The wire status.
    pub fn status(self) -> ResponseStatus {
        match self {
            ResponseError::DialError => ResponseStatus::EDialError,
            ResponseError::DialRefused => ResponseStatus::EDialRefused,
            ResponseError::BadRequest => ResponseStatus::EBadRequest,
            ResponseError::InternalError => ResponseStatus::EInternalError,
        }
    }
}

/// Errors reading an AutoNAT message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The body is not a valid `Message`.
    #[error("bad autonat message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// `type` is missing or not the one expected.
    #[error("unexpected autonat message type {0:?}")]
    UnexpectedType(Option<i32>),
    /// DIAL_RESPONSE without a response, with an unknown status, OK without an
    /// address (or with a bad one), or an error carrying an address.
    #[error("malformed dial response")]
    MalformedResponse,
}

/// A checked DIAL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    /// The requester, as it claims (checked against the connection by the server).
    pub peer: PeerId,
    /// Its candidate addresses that parsed (bad ones skipped).
    pub addrs: Vec<Multiaddr>,
}

/// The client's DIAL request: `local` and as many of `addrs` as fit in
/// [`MAX_SEND_SIZE`] (in the given order, so put the best first).
pub fn dial_request(local: &PeerId, addrs: &[Multiaddr]) -> Message {
    let mut m = Message {
        r#type: Some(MessageType::Dial as i32),
        dial: Some(Dial {
            peer: Some(PeerInfo {
                id: Some(local.to_bytes()),
                addrs: Vec::new(),
            }),
        }),
        dial_response: None,
    };
    for a in addrs {
        let bytes = a.to_vec();
        // Field overhead of one more repeated entry: tag + varint length +
        // nesting growth (≤ 3 more length bytes for the two enclosing messages).
        if m.encoded_len() + bytes.len() + 8 > MAX_SEND_SIZE {
            break;
        }
        if let Some(p) = m.dial.as_mut().and_then(|d| d.peer.as_mut()) {
            p.addrs.push(bytes);
        }
    }
    m
}

/// Reads a DIAL request as a server. Bad addresses are skipped (as go and rust
/// do); a missing or bad peer id is a refusal with `E_BAD_REQUEST`.
pub fn parse_dial_request(m: &Message) -> Result<DialRequest, Refusal> {
    if m.r#type != Some(MessageType::Dial as i32) {
        return Err(Refusal::new(
            ResponseError::BadRequest,
            "expected a DIAL message",
        ));
    }
    let info = m
        .dial
        .as_ref()
        .and_then(|d| d.peer.as_ref())
        .ok_or(Refusal::new(ResponseError::BadRequest, "missing peer info"))?;
    let id = info
        .id
        .as_ref()
        .ok_or(Refusal::new(ResponseError::BadRequest, "missing peer id"))?;
    let peer = PeerId::from_bytes(id)
        .map_err(|_| Refusal::new(ResponseError::BadRequest, "bad peer id"))?;
    let addrs = info
        .addrs
        .iter()
        // The message is at most MAX_MESSAGE_SIZE bytes, so this is bounded;
        // the server takes at most `max_addrs` of them anyway.
        .take(server::MAX_ADDRS_READ)
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
        .collect();
    Ok(DialRequest { peer, addrs })
}

/// `DIAL_RESPONSE{status=OK, addr}`. `status` and `type` are sent even though
/// both are 0, as proto2 peers require.
pub fn dial_response_ok(addr: &Multiaddr) -> Message {
    Message {
        r#type: Some(MessageType::DialResponse as i32),
        dial: None,
        dial_response: Some(DialResponse {
            status: Some(ResponseStatus::Ok as i32),
            status_text: None,
            addr: Some(addr.to_vec()),
        }),
    }
}

/// `DIAL_RESPONSE{status=error, statusText}`, without an address (rust-libp2p
/// rejects an error that carries one).
pub fn dial_response_error(error: ResponseError, text: &str) -> Message {
    Message {
        r#type: Some(MessageType::DialResponse as i32),
        dial: None,
        dial_response: Some(DialResponse {
            status: Some(error.status() as i32),
            status_text: Some(text.to_string()),
            addr: None,
        }),
    }
}

/// Reads a DIAL_RESPONSE as a client: `Ok(Ok(addr))` when the server reached
/// us at `addr`, `Ok(Err(reason))` when it did not.
pub fn parse_dial_response(m: &Message) -> Result<Result<Multiaddr, ResponseError>, Error> {
    if m.r#type != Some(MessageType::DialResponse as i32) {
        return Err(Error::UnexpectedType(m.r#type));
    }
    let r = m.dial_response.as_ref().ok_or(Error::MalformedResponse)?;
    let status = r
        .status
        .and_then(|s| ResponseStatus::try_from(s).ok())
        .ok_or(Error::MalformedResponse)?;
    let err = match status {
        ResponseStatus::Ok => {
            let addr = r.addr.as_ref().ok_or(Error::MalformedResponse)?;
            let addr = Multiaddr::try_from(addr.clone()).map_err(|_| Error::MalformedResponse)?;
            return Ok(Ok(addr));
        }
        ResponseStatus::EDialError => ResponseError::DialError,
        ResponseStatus::EDialRefused => ResponseError::DialRefused,
        ResponseStatus::EBadRequest => ResponseError::BadRequest,
        ResponseStatus::EInternalError => ResponseError::InternalError,
    };
    if r.addr.is_some() {
        return Err(Error::MalformedResponse);
    }
    Ok(Err(err))
}

/// Decodes a message body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<Message, Error> {
    Ok(Message::decode(body)?)
}
