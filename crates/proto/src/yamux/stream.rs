//! Per-stream state kept by the session.

use super::budget::BudgetShare;
use super::buf::ChunkBuf;
use super::frame::Flags;

/// State of one stream. Buffers are bounded: `recv_buf` by the receive window (the session
/// rejects data beyond it) and `send_buf` by `Config::max_send_buffer`.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// Received, not yet read bytes.
    pub recv_buf: ChunkBuf,
    /// Bytes the peer may still send us.
    pub recv_window: u32,
    /// Our receive window size (starts at `Config::initial_window`, grows with auto-tuning).
    pub window: u32,
    /// Start of the current window-tuning period and bytes read since.
    pub epoch_start: Option<std::time::Instant>,
    pub epoch_bytes: u32,
    /// Per-stream cap on window growth (else `Config::max_receive_window`).
    pub max_window: Option<u32>,
    /// Per-stream cap on `send_buf` (else `Config::max_send_buffer`).
    pub max_send_buffer: Option<usize>,
    /// Bytes per second the window is to cover over the session's round trip: growth stops
    /// at this × the least measured RTT (see `StreamLimits::window_rate`).
    pub window_rate: Option<u32>,
    /// The stream's share of a shared window budget: growth beyond the initial window is
    /// taken from it and given back as withheld credit is paid off (see `credit`).
    pub budget: Option<BudgetShare>,
    /// Bytes read by the application but not yet returned to the peer as window.
    pub unacked_read: u32,
    /// Credit still to withhold after the window shrank: read bytes are not returned to
    /// the peer until this is paid off.
    pub window_debt: u32,
    /// Window delta to announce in the next Window Update.
    pub pending_window_update: u32,
    /// Peer sent FIN.
    pub remote_fin: bool,

    /// Accepted, not yet transmitted bytes.
    pub send_buf: ChunkBuf,
    /// Bytes we may still send (peer's window for us).
    pub send_window: u32,
    /// `stream_finish` was called; FIN goes out after `send_buf` drains.
    pub fin_pending: bool,
    /// FIN was transmitted.
    pub fin_sent: bool,

    /// SYN or ACK that must ride on the next frame we send for this stream.
    pub pending_flags: Flags,
    /// Outbound stream not yet ACKed by the peer (counts against the ACK backlog).
    pub awaiting_ack: bool,
    /// Reset by either side (or session failure).
    pub reset: bool,
    /// The application dropped its handle; incoming data is discarded.
    pub released: bool,

    /// A `Readable` event was emitted and no `stream_read` happened since.
    pub read_notified: bool,
    /// The last `stream_write` could not take everything.
    pub write_blocked: bool,
    /// The id is in the session's data round-robin queue.
    pub in_send_queue: bool,
    /// The id is in the session's stream-control queue.
    pub in_ctrl_queue: bool,
}

impl Stream {
    /// A stream with the given windows.
    pub fn new(recv_window: u32, send_window: u32, pending_flags: Flags) -> Stream {
        Stream {
            recv_window,
            window: recv_window,
            send_window,
            pending_flags,
            ..Stream::default()
        }
    }

    /// Largest the receive window may grow: the per-stream cap (else the session's
    /// `session_max`), and for a rate-sized stream at most `window_rate` × `min_rtt` (but
    /// never below `initial`; no growth at all before a round trip is measured).
    pub fn window_cap(
        &self,
        session_max: u32,
        initial: u32,
        min_rtt: Option<std::time::Duration>,
    ) -> u32 {
        let max = self.max_window.unwrap_or(session_max);
        match self.window_rate {
            Some(rate) => {
                // The float-to-int cast saturates.
                let bdp = min_rtt.map_or(0, |rtt| (f64::from(rate) * rtt.as_secs_f64()) as u32);
                max.min(bdp.max(initial))
            }
            None => max,
        }
    }

    /// Most bytes `send_buf` takes: the per-stream cap, else the session's.
    pub fn send_buffer_cap(&self, session_max: usize) -> usize {
        self.max_send_buffer.unwrap_or(session_max)
    }

    /// Whether the data phase of `poll_transmit` can emit a frame for this stream now.
    pub fn has_sendable(&self) -> bool {
        !self.reset
            && ((self.send_window > 0 && !self.send_buf.is_empty())
                || (self.fin_pending && self.send_buf.is_empty()))
    }

    /// Whether the stream needs a non-data frame (window update, or SYN/ACK that cannot ride
    /// on data soon).
    pub fn has_control(&self) -> bool {
        !self.reset && (self.pending_window_update > 0 || !self.pending_flags.is_empty())
    }

    /// Whether nothing more will ever be exchanged, so a released stream can be forgotten.
    pub fn is_finished(&self) -> bool {
        self.reset || (self.fin_sent && self.remote_fin)
    }

    /// Returns `n` consumed bytes to the window accounting (less any `window_debt`, which
    /// they pay off first); true if a Window Update is now due (at least `threshold` bytes
    /// consumed and the peer may still send).
    pub fn credit(&mut self, n: u32, threshold: u32) -> bool {
        let withheld = self.window_debt.min(n);
        self.window_debt -= withheld;
        if let Some(b) = self.budget.as_mut() {
            // The peer can no longer send these bytes: the window really shrank.
            b.shrink(withheld);
        }
        self.unacked_read = self.unacked_read.saturating_add(n - withheld);
        if self.remote_fin || self.unacked_read < threshold {
            return false;
        }
        self.recv_window = self.recv_window.saturating_add(self.unacked_read);
        self.pending_window_update = self.pending_window_update.saturating_add(self.unacked_read);
        self.unacked_read = 0;
        true
    }

    /// Drops buffers and pending work after a reset.
    pub fn clear_for_reset(&mut self) {
        self.reset = true;
        self.recv_buf = ChunkBuf::default();
        self.send_buf = ChunkBuf::default();
        self.fin_pending = false;
        self.pending_window_update = 0;
        self.pending_flags = Flags::NONE;
        self.awaiting_ack = false;
        // Its buffers are gone: give the budget back now, not when the stream is forgotten.
        self.budget = None;
    }
}
