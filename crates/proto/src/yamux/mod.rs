//! Sans-IO yamux (`/yamux/1.0.0`) stream multiplexer.
//!
//! [`Session`] is a plain state machine: feed it the peer's (decrypted) bytes with
//! [`Session::handle_input`], drain bytes to send with [`Session::poll_transmit`],
//! and learn about new streams, readable data and pongs via [`Session::poll_event`].
//! Time only enters through `now: Instant` parameters.
//!
//! Wire format: see `/work/shared/specs/basics.md` §3 and libp2p/specs `yamux/README.md`.
//!
//! Behavioural choices worth knowing:
//! - A new outbound stream announces itself lazily: its SYN rides on the first frame we send
//!   for it (a Data frame if the application wrote before the next [`Session::poll_transmit`],
//!   otherwise a zero-delta Window Update with SYN). Inbound streams are ACKed the same way.
//! - The receive window per stream starts at [`Config::initial_window`] (never below
//!   256 KiB) and is auto-tuned up to [`Config::max_receive_window`] for streams whose
//!   window, not their reader, limits the rate; a Window Update is sent once half of it has
//!   been consumed by reads.
//! - FIN is sent after all buffered data for the stream (on the last Data frame, or as an empty
//!   Data frame), never before.
//! - Data for unknown streams without SYN (e.g. streams we reset and forgot) is discarded.

mod budget;
mod buf;
mod frame;
mod session;
mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use budget::{StreamLimits, WindowBudget};
pub use buf::{Chunk, ChunkBuf, Transmit, MAX_SHARED};
pub use frame::{Flags, FrameType, Header, HEADER_LEN};
pub use session::Session;

/// Identifier of a stream within one yamux session (0 is the session itself).
pub type StreamId = u32;

/// The initial per-stream window every yamux peer assumes for the other side (256 KiB).
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// Default [`Config::max_frame_payload`]: a Data frame with its header exactly fills one
/// Noise transport message (65535 − 16 bytes of tag).
pub const MAX_FRAME_PAYLOAD: usize = 65535 - 16 - HEADER_LEN;

/// Go Away code: normal termination.
pub const GO_AWAY_NORMAL: u32 = 0;
/// Go Away code: protocol error.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
/// Go Away code: internal error.
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

/// Which side of the underlying connection we are; decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dialer of the underlying connection: opens odd stream ids (1, 3, 5, ...).
    Client,
    /// Listener of the underlying connection: opens even stream ids (2, 4, 6, ...).
    Server,
}

/// Session limits and tuning.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our receive window per stream. Values below 256 KiB are raised to 256 KiB, because
    /// the peer assumes 256 KiB until told otherwise and windows can only grow by updates.
    pub initial_window: u32,
    /// Upper bound for receive-window auto-tuning: a stream whose whole window is read
    /// within 16 ms while its reader keeps up gets its window doubled, up to this. Memory
    /// per stream is bounded by it (only while the reader lags). Set it to
    /// `initial_window` to turn tuning off (a relay, whose own windows do not limit
    /// throughput, keeps its buffers smaller that way).
    pub max_receive_window: u32,
    /// Maximum number of live streams (both directions); inbound streams beyond it get RST.
    pub max_streams: usize,
    /// Per-stream bytes accepted by `stream_write` but not yet transmitted.
    pub max_send_buffer: usize,
    /// Outgoing Data frames carry at most this many payload bytes (so busy streams interleave).
    pub max_frame_payload: usize,
    /// Maximum number of outbound streams the peer has not ACKed yet.
    pub max_ack_backlog: usize,
    /// When set, a Ping is sent after this long without input; if nothing at all arrives
    /// within another interval the session fails with [`Error::KeepaliveTimeout`].
    pub keepalive_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initial_window: DEFAULT_WINDOW,
            max_receive_window: 16 * 1024 * 1024,
            max_streams: 1024,
            max_send_buffer: 256 * 1024,
            // One Data frame (12-byte header + payload) fills one Noise message of 65519
            // plaintext bytes: the fewest frames, headers and AEAD calls per byte, and
            // still small enough for streams to interleave fairly.
            max_frame_payload: MAX_FRAME_PAYLOAD,
            max_ack_backlog: 256,
            keepalive_interval: Some(Duration::from_secs(30)),
        }
    }
}

/// Something the application should react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream (we ACK it with our next frame for it).
    InboundStream(StreamId),
    /// New data, FIN or RST arrived for this stream: call [`Session::stream_read`].
    /// Emitted at most once between two `stream_read` calls on the stream.
    Readable(StreamId),
    /// Send buffer space opened up after a `stream_write` returned `WouldBlock` or wrote
    /// only part of its input.
    Writable(StreamId),
    /// The peer reset the stream (or the session failed); wake readers and writers.
    StreamReset(StreamId),
    /// Our ping was answered.
    Pong {
        /// Time between sending the ping and receiving its answer.
        rtt: Duration,
    },
    /// The peer sent Go Away with this code; no new outbound streams can be opened.
    GoAway(u32),
}

/// Violations of the yamux protocol by the peer. Each one ends the session with
/// Go Away code 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Header version was not 0.
    #[error("unsupported yamux version {0}")]
    UnsupportedVersion(u8),
    /// Header type was not Data, Window Update, Ping or Go Away.
    #[error("unknown yamux frame type {0}")]
    UnknownFrameType(u8),
    /// SYN on stream 0 or on an id of our parity.
    #[error("invalid stream id {0} for an inbound stream")]
    InvalidStreamId(StreamId),
    /// SYN for a stream that already exists.
    #[error("stream {0} opened twice")]
    DuplicateStream(StreamId),
    /// Data frame larger than the remaining receive window.
    #[error("{len} bytes on stream {stream} exceed the receive window of {window}")]
    WindowExceeded {
        /// The stream.
        stream: StreamId,
        /// Payload length of the offending frame.
        len: u32,
        /// Window that was left.
        window: u32,
    },
    /// The peer opens streams we must refuse faster than our RSTs can be sent.
    #[error("too many refused streams pending")]
    RefusedStreamFlood,
}

/// Session-level errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer violated the protocol; a Go Away (code 1) is queued.
    #[error("yamux protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// `max_streams` streams are already live.
    #[error("too many streams")]
    TooManyStreams,
    /// `max_ack_backlog` outbound streams are still waiting for the peer's ACK.
    #[error("too many outbound streams awaiting ACK")]
    AckBacklogFull,
    /// Go Away was sent or received: no new streams.
    #[error("session is going away")]
    GoneAway,
    /// All stream ids of our parity have been used.
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
    /// The peer sent nothing for a keep-alive interval after our ping.
    #[error("keep-alive ping timed out")]
    KeepaliveTimeout,
    /// The session already failed.
    #[error("session closed")]
    Closed,
}

/// Errors of per-stream operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Nothing to read yet / no send buffer space; wait for an [`Event`].
    #[error("operation would block")]
    WouldBlock,
    /// The stream was reset (by either side) or the session failed.
    #[error("stream reset")]
    Reset,
    /// Writing after `stream_finish`, or using a released stream.
    #[error("stream closed")]
    Closed,
    /// No such stream.
    #[error("unknown stream")]
    Unknown,
}
