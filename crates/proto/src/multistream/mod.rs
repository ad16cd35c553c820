//! multistream-select 1.0 (`/multistream/1.0.0`), sans-IO, both roles.
//!
//! Every message is `uvarint(len(text) + 1) || text || '\n'`. Both sides start
//! with the header [`PROTOCOL`]; the dialer proposes protocol ids one by one and
//! the listener echoes the one it accepts or answers `na`.
//!
//! Neither role ever interprets bytes after the message that completes the
//! negotiation: whatever follows (pipelined application data, e.g. the first
//! Noise message of a lazy dialer) is kept verbatim for `take_leftover`.
//!
//! Usage: feed received bytes to `handle_input`, write out what `poll_transmit`
//! yields after every call (and once right after construction), and once
//! `selected()` / `is_confirmed()` say so, hand `take_leftover()` plus the rest of
//! the stream to the selected protocol.

use circuit_wire::varint;
use thiserror::Error;

#[cfg(test)]
mod tests;

/// The multistream-select protocol id, also the header message.
pub const PROTOCOL: &str = "/multistream/1.0.0";

/// Largest message accepted or sent (length prefix value, newline included).
/// rust-libp2p uses the same cap: it keeps the prefix within two varint bytes.
pub const MAX_MESSAGE_LEN: usize = 16383;

/// How many `na`/`ls` answers a [`Listener`] gives before giving up, so that a
/// peer cannot keep a stream busy with endless proposals.
pub const MAX_ATTEMPTS: usize = 16;

/// Why a negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The peer refused every protocol we proposed (or, lazily, the only one).
    #[error("the peer supports none of the proposed protocols")]
    NotSupported,
    /// The first message was not `/multistream/1.0.0`.
    #[error("peer did not speak {PROTOCOL}")]
    BadHeader,
    /// A length prefix exceeds [`MAX_MESSAGE_LEN`].
    #[error("multistream message longer than {MAX_MESSAGE_LEN} bytes")]
    MessageTooLarge,
    /// A message is not well formed or not expected at this point.
    #[error("malformed multistream message: {0}")]
    Malformed(&'static str),
    /// The peer made more than [`MAX_ATTEMPTS`] unsuccessful requests.
    #[error("too many unsuccessful negotiation attempts")]
    TooManyAttempts,
}

/// Appends one multistream message carrying `text` to `out`.
pub fn encode_message(text: &[u8], out: &mut Vec<u8>) {
    varint::encode_usize(text.len() + 1, out);
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Reads one message at the start of `buf`.
///
/// Returns the text (without its newline) and the number of bytes consumed,
/// or `None` if the message is incomplete. The size check happens on the
/// prefix alone, so at most `MAX_MESSAGE_LEN + 2` bytes are ever needed.
fn read_message(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Error> {
    let (len, n) = match varint::decode_u64(buf) {
        Ok(Some(v)) => v,
        // Three or more prefix bytes already mean a length >= 2^14.
        Ok(None) if buf.len() >= 3 => return Err(Error::MessageTooLarge),
        Ok(None) => return Ok(None),
        Err(varint::VarintError::Overflow) => return Err(Error::MessageTooLarge),
        Err(varint::VarintError::NotMinimal) => {
            return Err(Error::Malformed("non-minimal length prefix"))
        }
    };
    if len > MAX_MESSAGE_LEN as u64 {
        return Err(Error::MessageTooLarge);
    }
    // Bounded by MAX_MESSAGE_LEN above.
    let len = len as usize;
    if len == 0 {
        return Err(Error::Malformed("empty message"));
    }
    let end = n + len;
    if buf.len() < end {
        return Ok(None);
    }
    if buf[end - 1] != b'\n' {
        return Err(Error::Malformed("message does not end with a newline"));
    }
    Ok(Some((&buf[n..end - 1], end)))
}

/// Moves queued output into `out`, returning the number of bytes moved.
fn drain_into(queue: &mut Vec<u8>, out: &mut Vec<u8>) -> usize {
    let n = queue.len();
    out.append(queue);
    n
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DialerState {
    AwaitHeader,
    AwaitEcho,
    Done,
    Failed(Error),
}

/// The initiating side: proposes protocols in order until one is echoed.
#[derive(Debug, Clone)]
pub struct Dialer {
    protocols: Vec<String>,
    /// Index of the protocol currently proposed.
    current: usize,
    lazy: bool,
    state: DialerState,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    leftover: Vec<u8>,
}

impl Dialer {
    /// Proposes `protocols` in order (most preferred first).
    ///
    /// The header and the first proposal are queued at once, without waiting
    /// for the peer's header, as go and rust do. With exactly one protocol and
    /// `lazy = true` (rust's "V1Lazy"), that protocol counts as selected right
    /// away so the caller may pipeline application data behind the proposal;
    /// `handle_input` still checks the peer's header and echo later and fails
    /// with [`Error::NotSupported`] on `na`. `lazy` is ignored for several
    /// protocols. With no protocols at all the dialer fails with
    /// [`Error::NotSupported`] and sends nothing.
    pub fn new(protocols: Vec<String>, lazy: bool) -> Dialer {
        let mut outbuf = Vec::new();
        let state = match protocols.first() {
            Some(first) => {
                encode_message(PROTOCOL.as_bytes(), &mut outbuf);
                encode_message(first.as_bytes(), &mut outbuf);
                DialerState::AwaitHeader
            }
            None => DialerState::Failed(Error::NotSupported),
        };
        Dialer {
            lazy: lazy && protocols.len() == 1,
            protocols,
            current: 0,
            state,
            inbuf: Vec::new(),
            outbuf,
            leftover: Vec::new(),
        }
    }

    /// Feeds bytes received from the peer.
    ///
    /// Bytes after the listener's echo are not interpreted: they (and any
    /// bytes fed after confirmation) accumulate for [`take_leftover`](Self::take_leftover).
    /// Errors are sticky: later calls return the same error.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), Error> {
        match &self.state {
            DialerState::Failed(e) => return Err(e.clone()),
            DialerState::Done => {
                self.leftover.extend_from_slice(data);
                return Ok(());
            }
            DialerState::AwaitHeader | DialerState::AwaitEcho => {}
        }
        self.inbuf.extend_from_slice(data);
        match self.process() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.state = DialerState::Failed(e.clone());
                self.inbuf = Vec::new();
                Err(e)
            }
        }
    }

    fn process(&mut self) -> Result<(), Error> {
        let mut pos = 0;
        while let Some((text, n)) = read_message(&self.inbuf[pos..])? {
            pos += n;
            match self.state {
                DialerState::AwaitHeader => {
                    if text != PROTOCOL.as_bytes() {
                        return Err(Error::BadHeader);
                    }
                    self.state = DialerState::AwaitEcho;
                }
                DialerState::AwaitEcho => {
                    if text == self.protocols[self.current].as_bytes() {
                        self.state = DialerState::Done;
                        self.leftover = self.inbuf.split_off(pos);
                        self.inbuf = Vec::new();
                        return Ok(());
                    } else if text == b"na" {
                        // A lazy dialer has already committed to its only
                        // protocol, so a refusal is final either way.
                        self.current += 1;
                        match self.protocols.get(self.current) {
                            Some(next) if !self.lazy => {
                                encode_message(next.as_bytes(), &mut self.outbuf)
                            }
                            _ => return Err(Error::NotSupported),
                        }
                    } else if text == PROTOCOL.as_bytes() {
                        return Err(Error::Malformed("repeated header"));
                    } else {
                        return Err(Error::Malformed("answer is neither the proposal nor na"));
                    }
                }
                // process() only runs in the two states above and returns on Done.
                DialerState::Done | DialerState::Failed(_) => break,
            }
        }
        self.inbuf.drain(..pos);
        Ok(())
    }

    /// Moves bytes to send to the peer into `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        drain_into(&mut self.outbuf, out)
    }

    /// The agreed protocol; in lazy mode the proposed one until refused.
    pub fn selected(&self) -> Option<&str> {
        match self.state {
            DialerState::Done => Some(&self.protocols[self.current]),
            DialerState::AwaitHeader | DialerState::AwaitEcho if self.lazy => {
                Some(&self.protocols[0])
            }
            _ => None,
        }
    }

    /// Whether the peer's header and echo have been received.
    pub fn is_confirmed(&self) -> bool {
        self.state == DialerState::Done
    }

    /// The error the negotiation failed with, if any.
    pub fn error(&self) -> Option<&Error> {
        match &self.state {
            DialerState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Takes the bytes received after the negotiation (application data).
    /// Empty until [`is_confirmed`](Self::is_confirmed).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.leftover)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenerState {
    AwaitHeader,
    AwaitProposal,
    Done(usize),
    Failed(Error),
}

/// The responding side: answers proposals from a fixed list of protocols.
#[derive(Debug, Clone)]
pub struct Listener {
    supported: Vec<String>,
    state: ListenerState,
    attempts: usize,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    leftover: Vec<u8>,
}

impl Listener {
    /// A listener accepting any of `supported`. Its header is queued
    /// immediately (the responder always behaves like plain V1).
    pub fn new(supported: Vec<String>) -> Listener {
        let mut outbuf = Vec::new();
        encode_message(PROTOCOL.as_bytes(), &mut outbuf);
        Listener {
            supported,
            state: ListenerState::AwaitHeader,
            attempts: 0,
            inbuf: Vec::new(),
            outbuf,
            leftover: Vec::new(),
        }
    }

    /// Feeds bytes received from the peer.
    ///
    /// Messages are read one at a time and nothing after the accepted
    /// proposal is interpreted: pipelined application data ends up in
    /// [`take_leftover`](Self::take_leftover), as do bytes fed after selection.
    /// Errors are sticky.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), Error> {
        match &self.state {
            ListenerState::Failed(e) => return Err(e.clone()),
            ListenerState::Done(_) => {
                self.leftover.extend_from_slice(data);
                return Ok(());
            }
            ListenerState::AwaitHeader | ListenerState::AwaitProposal => {}
        }
        self.inbuf.extend_from_slice(data);
        match self.process() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.state = ListenerState::Failed(e.clone());
                self.inbuf = Vec::new();
                Err(e)
            }
        }
    }

    fn process(&mut self) -> Result<(), Error> {
        let mut pos = 0;
        while let Some((text, n)) = read_message(&self.inbuf[pos..])? {
            pos += n;
            match self.state {
                ListenerState::AwaitHeader => {
                    if text != PROTOCOL.as_bytes() {
                        return Err(Error::BadHeader);
                    }
                    self.state = ListenerState::AwaitProposal;
                }
                ListenerState::AwaitProposal => {
                    if text == PROTOCOL.as_bytes() {
                        return Err(Error::Malformed("repeated header"));
                    }
                    if text == b"na" {
                        return Err(Error::Malformed("na sent to the listener"));
                    }
                    if let Some(i) = self.supported.iter().position(|p| p.as_bytes() == text) {
                        encode_message(text, &mut self.outbuf);
                        self.state = ListenerState::Done(i);
                        self.leftover = self.inbuf.split_off(pos);
                        self.inbuf = Vec::new();
                        return Ok(());
                    }
                    if self.attempts >= MAX_ATTEMPTS {
                        return Err(Error::TooManyAttempts);
                    }
                    self.attempts += 1;
                    if text == b"ls" {
                        self.encode_ls();
                    } else {
                        // Unknown ids (even odd-looking ones) get `na` like in
                        // go; the dialer decides whether to go on.
                        encode_message(b"na", &mut self.outbuf);
                    }
                }
                ListenerState::Done(_) | ListenerState::Failed(_) => break,
            }
        }
        self.inbuf.drain(..pos);
        Ok(())
    }

    /// Queues the `ls` answer: `uvarint(len(items) + 1) || items || '\n'`
    /// where `items` is one message per protocol (the same bytes rust-libp2p
    /// and go produce). Protocols that would push it past
    /// [`MAX_MESSAGE_LEN`] are left out.
    fn encode_ls(&mut self) {
        let mut items = Vec::new();
        for p in &self.supported {
            let mut item = Vec::new();
            encode_message(p.as_bytes(), &mut item);
            if items.len() + item.len() + 1 > MAX_MESSAGE_LEN {
                break;
            }
            items.extend_from_slice(&item);
        }
        encode_message(&items, &mut self.outbuf);
    }

    /// Moves bytes to send to the peer into `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        drain_into(&mut self.outbuf, out)
    }

    /// The protocol the dialer proposed and we accepted.
    pub fn selected(&self) -> Option<&str> {
        match self.state {
            ListenerState::Done(i) => Some(&self.supported[i]),
            _ => None,
        }
    }

    /// The error the negotiation failed with, if any.
    pub fn error(&self) -> Option<&Error> {
        match &self.state {
            ListenerState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Takes the bytes received after the accepted proposal (e.g. data a
    /// lazy dialer pipelined). Empty until [`selected`](Self::selected).
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.leftover)
    }
}
