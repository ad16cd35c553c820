//! The yamux session state machine.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::budget::{BudgetShare, StreamLimits};
use super::buf::{Chunk, ChunkBuf, Transmit};
use super::frame::{Flags, FrameType, Header, HEADER_LEN};
use super::stream::Stream;
use super::{
    Config, Error, Event, Mode, ProtocolError, StreamError, StreamId, DEFAULT_WINDOW,
    GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR,
};

/// At most this many Ping answers are queued; a peer pinging faster than we transmit
/// does not get more (bounds memory).
const MAX_PENDING_PONGS: usize = 64;
/// A receive window read in full within this time (or four round trips, if longer) is
/// doubled, up to `Config::max_receive_window`: at 256 KiB that is any stream faster than
/// 16 MiB/s, and a window ends up at most about twice the bandwidth × this interval.
const WINDOW_GROWTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(16);
/// Session control frames (RSTs of refused streams etc.) queued beyond this end the session.
const MAX_CONTROL_BACKLOG: usize = 4096;
/// When fitting a Data frame to the caller's `max`, never make it smaller than this
/// (overshooting instead), so we do not emit tiny frames.
const MIN_FITTED_PAYLOAD: usize = 1024;

/// Where the input parser is.
#[derive(Debug)]
enum RecvState {
    /// Collecting a header.
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    /// Inside a Data payload; `deliver` is false when the bytes are to be discarded.
    Body {
        id: StreamId,
        remaining: u32,
        flags: Flags,
        deliver: bool,
    },
}

impl RecvState {
    fn header() -> RecvState {
        RecvState::Header {
            buf: [0; HEADER_LEN],
            filled: 0,
        }
    }
}

/// One yamux session over one connection. See the module docs.
#[derive(Debug)]
pub struct Session {
    mode: Mode,
    config: Config,
    streams: HashMap<StreamId, Stream>,
    /// Next id for an outbound stream; `None` once exhausted.
    next_id: Option<StreamId>,
    recv: RecvState,
    /// Session-level frames (pings, go away, RSTs) — sent before anything else.
    ctrl: VecDeque<Header>,
    /// Streams with a pending window update or SYN/ACK.
    stream_ctrl: VecDeque<StreamId>,
    /// Round robin of streams with data (or a bare FIN) to send.
    send_rr: VecDeque<StreamId>,
    events: VecDeque<Event>,
    unacked_outbound: usize,
    pending_pongs: usize,
    local_go_away: bool,
    remote_go_away: Option<u32>,
    fatal: Option<Error>,
    next_ping_value: u32,
    /// Our unanswered ping: (value, sent at).
    ping_outstanding: Option<(u32, Instant)>,
    /// Next keep-alive action: send a ping, or (ping outstanding) time out.
    keepalive_at: Option<Instant>,
    /// Time of the latest input: the clock for receive-window tuning (reads carry no time).
    last_input_at: Option<Instant>,
    /// Latest measured round trip (any answered ping of ours), for window tuning.
    rtt: Option<std::time::Duration>,
    /// Least round trip measured: the path's, without the queueing that a busy connection
    /// adds to the latest one.
    min_rtt: Option<std::time::Duration>,
}

impl Session {
    /// A new session. `config.initial_window` is raised to 256 KiB if lower.
    pub fn new(mode: Mode, mut config: Config) -> Session {
        config.initial_window = config.initial_window.max(DEFAULT_WINDOW);
        config.max_receive_window = config.max_receive_window.max(config.initial_window);
        config.max_frame_payload = config.max_frame_payload.clamp(1, u32::MAX as usize);
        Session {
            mode,
            config,
            streams: HashMap::new(),
            next_id: Some(match mode {
                Mode::Client => 1,
                Mode::Server => 2,
            }),
            recv: RecvState::header(),
            ctrl: VecDeque::new(),
            stream_ctrl: VecDeque::new(),
            send_rr: VecDeque::new(),
            events: VecDeque::new(),
            unacked_outbound: 0,
            pending_pongs: 0,
            local_go_away: false,
            remote_go_away: None,
            fatal: None,
            next_ping_value: 1,
            ping_outstanding: None,
            keepalive_at: None,
            last_input_at: None,
            rtt: None,
            min_rtt: None,
        }
    }

    // ----- input -------------------------------------------------------------------------

    /// Bytes received from the peer (already decrypted), split anywhere: partial frames are
    /// kept until complete. On error the session is failed: send what `poll_transmit`
    /// returns (a Go Away) and close the connection.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), Error> {
        self.handle(data, now)
    }

    /// Like [`Session::handle_input`], for input the caller owns (a decrypted frame split
    /// off the connection's receive buffer): Data payloads of at least [`SHARE_MIN`] bytes
    /// are handed to their streams as pieces of `data` ([`Chunk::shared`]) instead of
    /// being copied.
    pub fn handle_input_owned(&mut self, data: BytesMut, now: Instant) -> Result<(), Error> {
        self.handle(data, now)
    }

    fn handle(&mut self, data: impl Input, now: Instant) -> Result<(), Error> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        self.last_input_at = Some(now);
        if let Some(iv) = self.config.keepalive_interval {
            // Any input proves the peer alive: postpone both the next ping and the timeout.
            self.keepalive_at = Some(now + iv);
        }
        match self.parse(data, now) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fail(e.clone(), GO_AWAY_PROTOCOL_ERROR);
                Err(e)
            }
        }
    }

    fn parse(&mut self, mut input: impl Input, now: Instant) -> Result<(), Error> {
        while !input.bytes().is_empty() {
            match &mut self.recv {
                RecvState::Header { buf, filled } => {
                    let n = (HEADER_LEN - *filled).min(input.bytes().len());
                    buf[*filled..*filled + n].copy_from_slice(&input.bytes()[..n]);
                    *filled += n;
                    input.skip(n);
                    if *filled == HEADER_LEN {
                        let header = Header::decode(buf)?;
                        self.recv = RecvState::header();
                        self.on_header(header, now)?;
                    }
                }
                RecvState::Body {
                    id,
                    remaining,
                    flags,
                    deliver,
                } => {
                    let n = (*remaining as usize).min(input.bytes().len());
                    let (id, flags, deliver) = (*id, *flags, *deliver);
                    *remaining -= n as u32;
                    let done = *remaining == 0;
                    if deliver {
                        self.on_body(id, &mut input, n);
                    } else {
                        input.skip(n);
                    }
                    if done {
                        self.recv = RecvState::header();
                        self.on_frame_end(id, flags);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self, h: Header, now: Instant) -> Result<(), Error> {
        match h.frame_type {
            FrameType::Data | FrameType::WindowUpdate => self.on_stream_frame(h),
            FrameType::Ping => {
                if h.flags.contains(Flags::SYN) {
                    if self.pending_pongs < MAX_PENDING_PONGS {
                        self.pending_pongs += 1;
                        self.ctrl.push_back(Header::ping(Flags::ACK, h.length));
                    }
                } else if h.flags.contains(Flags::ACK) {
                    if let Some((value, sent)) = self.ping_outstanding {
                        if value == h.length {
                            self.ping_outstanding = None;
                            let rtt = now.saturating_duration_since(sent);
                            self.rtt = Some(rtt);
                            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                            self.events.push_back(Event::Pong { rtt });
                        }
                    }
                }
                Ok(())
            }
            FrameType::GoAway => {
                if self.remote_go_away.is_none() {
                    self.remote_go_away = Some(h.length);
                    self.events.push_back(Event::GoAway(h.length));
                }
                Ok(())
            }
        }
    }

    fn is_remote_id(&self, id: StreamId) -> bool {
        id != 0
            && match self.mode {
                Mode::Client => id & 1 == 0,
                Mode::Server => id & 1 == 1,
            }
    }

    /// Header of a Data or Window Update frame.
    fn on_stream_frame(&mut self, h: Header) -> Result<(), Error> {
        let id = h.stream_id;
        let is_data = h.frame_type == FrameType::Data;
        let mut deliver = false;
        if h.flags.contains(Flags::SYN) {
            if !self.is_remote_id(id) {
                return Err(ProtocolError::InvalidStreamId(id).into());
            }
            if self.streams.contains_key(&id) {
                return Err(ProtocolError::DuplicateStream(id).into());
            }
            if self.local_go_away || self.streams.len() >= self.config.max_streams {
                if self.ctrl.len() >= MAX_CONTROL_BACKLOG {
                    return Err(ProtocolError::RefusedStreamFlood.into());
                }
                tracing::debug!(stream = id, "yamux: refusing inbound stream");
                self.ctrl
                    .push_back(Header::window_update(id, 0, Flags::RST));
                self.skip_body(h, false);
                return Ok(());
            }
            let window = self.config.initial_window;
            let mut s = Stream::new(window, DEFAULT_WINDOW, Flags::ACK);
            // The peer assumes 256 KiB; announce any extra with our ACK.
            s.pending_window_update = window - DEFAULT_WINDOW;
            self.streams.insert(id, s);
            self.schedule_ctrl(id);
            self.events.push_back(Event::InboundStream(id));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if h.flags.contains(Flags::ACK) && s.awaiting_ack {
                s.awaiting_ack = false;
                self.unacked_outbound -= 1;
            }
            if h.flags.contains(Flags::RST) {
                self.on_remote_reset(id);
                self.skip_body(h, false);
                return Ok(());
            }
            if is_data {
                if h.length > s.recv_window {
                    return Err(ProtocolError::WindowExceeded {
                        stream: id,
                        len: h.length,
                        window: s.recv_window,
                    }
                    .into());
                }
                s.recv_window -= h.length;
                deliver = true;
            } else {
                s.send_window = s.send_window.saturating_add(h.length);
                if s.has_sendable() {
                    self.schedule_send(id);
                }
            }
        } else {
            tracing::trace!(stream = id, "yamux: frame for unknown stream ignored");
        }
        self.skip_body(h, deliver);
        Ok(())
    }

    /// Enters the body state for a Data frame (or finishes the frame if it has no body).
    fn skip_body(&mut self, h: Header, deliver: bool) {
        if h.frame_type == FrameType::Data && h.length > 0 {
            self.recv = RecvState::Body {
                id: h.stream_id,
                remaining: h.length,
                flags: h.flags,
                deliver,
            };
        } else {
            self.on_frame_end(h.stream_id, h.flags);
        }
    }

    /// The next `n` bytes of `input` are payload for stream `id`.
    fn on_body(&mut self, id: StreamId, input: &mut impl Input, n: usize) {
        let Some(s) = self.streams.get_mut(&id) else {
            input.skip(n);
            return;
        };
        if s.reset || s.remote_fin {
            input.skip(n);
            return;
        }
        if s.released {
            // Nobody will read: consume at once so the peer can finish its side.
            input.skip(n);
            let threshold = s.window / 2;
            if s.credit(n as u32, threshold) {
                self.schedule_ctrl(id);
            }
            return;
        }
        input.move_into(n, &mut s.recv_buf);
        if !s.read_notified {
            s.read_notified = true;
            self.events.push_back(Event::Readable(id));
        }
    }

    /// End of a Data/Window Update frame: apply FIN (RST was applied at the header).
    fn on_frame_end(&mut self, id: StreamId, flags: Flags) {
        if !flags.contains(Flags::FIN) {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reset || s.remote_fin {
            return;
        }
        s.remote_fin = true;
        if !s.read_notified && !s.released {
            s.read_notified = true;
            self.events.push_back(Event::Readable(id));
        }
        self.maybe_forget(id);
    }

    /// Stream `id` about to be reset (not gone, not reset already), no longer counted as
    /// awaiting the peer's ACK.
    fn resetting(&mut self, id: StreamId) -> Option<&mut Stream> {
        let s = self.streams.get_mut(&id)?;
        if s.reset {
            return None;
        }
        if s.awaiting_ack {
            self.unacked_outbound -= 1;
        }
        Some(s)
    }

    fn on_remote_reset(&mut self, id: StreamId) {
        let Some(s) = self.resetting(id) else {
            return;
        };
        let notify = !s.released;
        let read_notified = s.read_notified;
        let write_blocked = s.write_blocked;
        s.clear_for_reset();
        s.read_notified = true;
        s.write_blocked = false;
        if notify {
            if !read_notified {
                self.events.push_back(Event::Readable(id));
            }
            if write_blocked {
                self.events.push_back(Event::Writable(id));
            }
            self.events.push_back(Event::StreamReset(id));
        }
        self.maybe_forget(id);
    }

    // ----- output ------------------------------------------------------------------------

    /// Appends whole frames to `out` until `out.len() >= max` (the last frame may overshoot;
    /// Data frames are sized to fit when possible). Returns the number of bytes appended,
    /// 0 if there is nothing to send. Order: session control frames, then per-stream
    /// window updates / SYN / ACK, then data round robin, one frame per stream per turn.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        self.transmit(out, max, false)
    }

    /// Like [`Session::poll_transmit`], but `out` never grows beyond `max` bytes: frames that
    /// do not fit wait for the next call, and Data frames are cut to the room left. For
    /// building an encrypted frame in place, whose plaintext has a hard size limit. `out` is
    /// any [`Transmit`] sink: a `Vec<u8>`, or one that takes the payload as the stream
    /// buffers' own chunks, so a driver can encrypt it straight from them.
    pub fn poll_transmit_bounded<T: Transmit>(&mut self, out: &mut T, max: usize) -> usize {
        self.transmit(out, max, true)
    }

    /// Whether [`Session::poll_transmit`] would return something now (a conservative answer:
    /// it may occasionally say yes and then find nothing). Lets a driver skip waking up
    /// after reads that freed no window worth announcing.
    pub fn wants_transmit(&self) -> bool {
        !self.ctrl.is_empty() || !self.stream_ctrl.is_empty() || !self.send_rr.is_empty()
    }

    fn transmit<T: Transmit>(&mut self, out: &mut T, max: usize, bounded: bool) -> usize {
        let start = out.len();
        // In bounded mode a frame header must fit entirely.
        let fits = |out: &T| {
            if bounded {
                out.len() + HEADER_LEN <= max
            } else {
                out.len() < max
            }
        };
        while fits(out) {
            let Some(h) = self.ctrl.pop_front() else {
                break;
            };
            if h.frame_type == FrameType::Ping && h.flags.contains(Flags::ACK) {
                self.pending_pongs = self.pending_pongs.saturating_sub(1);
            }
            out.put(&h.encode());
        }
        if self.fatal.is_some() {
            return out.len() - start;
        }
        while fits(out) {
            let Some(id) = self.stream_ctrl.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.in_ctrl_queue = false;
            if !s.has_control() {
                continue;
            }
            // Bare flags can ride on data that is about to go out anyway.
            if s.pending_window_update == 0 && s.in_send_queue && s.has_sendable() {
                continue;
            }
            let flags = std::mem::take(&mut s.pending_flags);
            let delta = std::mem::take(&mut s.pending_window_update);
            out.put(&Header::window_update(id, delta, flags).encode());
        }
        // Bounded: a data frame gets at least some payload, or waits for the next call.
        while fits(out) && (!bounded || out.len() + HEADER_LEN < max) {
            let Some(id) = self.send_rr.pop_front() else {
                break;
            };
            self.send_data_frame(id, out, max, bounded);
        }
        out.len() - start
    }

    /// Emits one Data frame for `id` (if it can send) and requeues it if it has more.
    fn send_data_frame<T: Transmit>(
        &mut self,
        id: StreamId,
        out: &mut T,
        max: usize,
        bounded: bool,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.in_send_queue = false;
        if !s.has_sendable() {
            if s.has_control() && !s.in_ctrl_queue {
                s.in_ctrl_queue = true;
                self.stream_ctrl.push_back(id);
            }
            return;
        }
        // FIN goes in a frame of its own, a Window Update as go-yamux sends it: js-libp2p's
        // yamux drops the payload of a Data frame that also carries FIN.
        if s.fin_pending && s.send_buf.is_empty() {
            let flags = std::mem::take(&mut s.pending_flags) | Flags::FIN;
            s.fin_pending = false;
            s.fin_sent = true;
            out.put(&Header::window_update(id, 0, flags).encode());
            self.maybe_forget(id);
            return;
        }
        let room = max.saturating_sub(out.len()).saturating_sub(HEADER_LEN);
        let room = if bounded {
            room
        } else {
            room.max(MIN_FITTED_PAYLOAD)
        };
        let len = s
            .send_buf
            .len()
            .min(s.send_window as usize)
            .min(self.config.max_frame_payload)
            .min(room);
        let flags = std::mem::take(&mut s.pending_flags);
        // len <= send_window (a u32), so the cast is lossless.
        out.put(&Header::data(id, len as u32, flags).encode());
        out.put_payload(&mut s.send_buf, len);
        s.send_window -= len as u32;
        if s.write_blocked && s.send_buf.len() < s.send_buffer_cap(self.config.max_send_buffer) {
            s.write_blocked = false;
            self.events.push_back(Event::Writable(id));
        }
        if s.has_sendable() {
            s.in_send_queue = true;
            self.send_rr.push_back(id);
        }
        if s.fin_sent {
            self.maybe_forget(id);
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- streams -----------------------------------------------------------------------

    /// Opens an outbound stream. Its SYN rides on the first frame sent for it (see module
    /// docs). Fails after Go Away either way, on session failure, or at the stream/ACK
    /// backlog limits.
    pub fn open_stream(&mut self) -> Result<StreamId, Error> {
        if self.fatal.is_some() {
            return Err(Error::Closed);
        }
        if self.local_go_away || self.remote_go_away.is_some() {
            return Err(Error::GoneAway);
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(Error::TooManyStreams);
        }
        if self.unacked_outbound >= self.config.max_ack_backlog {
            return Err(Error::AckBacklogFull);
        }
        let id = self.next_id.ok_or(Error::StreamIdsExhausted)?;
        self.next_id = id.checked_add(2);
        let window = self.config.initial_window;
        let mut s = Stream::new(window, DEFAULT_WINDOW, Flags::SYN);
        s.pending_window_update = window - DEFAULT_WINDOW;
        s.awaiting_ack = true;
        self.unacked_outbound += 1;
        self.streams.insert(id, s);
        self.schedule_ctrl(id);
        Ok(id)
    }

    /// Reads buffered data. `Ok(n > 0)` data; `Ok(0)` end of stream (FIN received and all
    /// data read, or empty `buf`); `Err(WouldBlock)` nothing yet; `Err(Reset)` after RST.
    pub fn stream_read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let max = buf.len();
        self.stream_read_with(id, max, super::buf::fill(buf))
    }

    /// Like [`Session::stream_read`], but hands up to `max` bytes to `sink`, slice by slice in
    /// order, so the destination need not be initialised first (a reader's spare capacity).
    pub fn stream_read_with(
        &mut self,
        id: StreamId,
        max: usize,
        sink: impl FnMut(&[u8]),
    ) -> Result<usize, StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        s.read_notified = false;
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.released {
            return Err(StreamError::Closed);
        }
        if max == 0 {
            return Ok(0);
        }
        if s.recv_buf.is_empty() {
            return if s.remote_fin {
                Ok(0)
            } else {
                Err(StreamError::WouldBlock)
            };
        }
        let n = s.recv_buf.read_with(max, sink);
        self.consumed(id, n);
        Ok(n)
    }

    /// Like [`Session::stream_read`], but hands out up to `max` buffered bytes as an owned
    /// chunk, without copying when a whole buffered chunk fits (see [`Session::stream_write_chunk`]
    /// for the other half of a copy-free relay). `Ok(empty)` is end of stream (or `max == 0`).
    pub fn stream_read_chunk(&mut self, id: StreamId, max: usize) -> Result<Chunk, StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        s.read_notified = false;
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.released {
            return Err(StreamError::Closed);
        }
        let Some(chunk) = s.recv_buf.pop_chunk(max) else {
            return if s.remote_fin || max == 0 {
                Ok(Chunk::default())
            } else {
                Err(StreamError::WouldBlock)
            };
        };
        self.consumed(id, chunk.len());
        Ok(chunk)
    }

    /// Queues a whole chunk for sending without copying it. Accepted when it fits the free
    /// send buffer (or the buffer is empty, for a chunk larger than the whole buffer);
    /// otherwise `Err((WouldBlock, chunk))` hands it back and [`Event::Writable`] follows
    /// once there is room. Other errors as [`Session::stream_write`].
    pub fn stream_write_chunk(
        &mut self,
        id: StreamId,
        chunk: Chunk,
    ) -> Result<(), (StreamError, Chunk)> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err((StreamError::Unknown, chunk));
        };
        let max_buf = s.send_buffer_cap(self.config.max_send_buffer);
        if s.reset {
            return Err((StreamError::Reset, chunk));
        }
        if s.released || s.fin_pending || s.fin_sent {
            return Err((StreamError::Closed, chunk));
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let free = max_buf.saturating_sub(s.send_buf.len());
        if chunk.len() > free && !s.send_buf.is_empty() {
            s.write_blocked = true;
            return Err((StreamError::WouldBlock, chunk));
        }
        s.send_buf.push_chunk(chunk);
        if s.has_sendable() {
            self.schedule_send(id);
        }
        Ok(())
    }

    /// The application read `n` bytes of stream `id`: returns them to the window accounting,
    /// growing the window first when the stream is window-bound (see [`Config::max_receive_window`]).
    fn consumed(&mut self, id: StreamId, n: usize) {
        let config_max = self.config.max_receive_window;
        let initial = self.config.initial_window;
        let now = self.last_input_at;
        // A window-bound sender sends one window per round trip: a window read within a
        // few round trips (but never less than the fixed interval, for noisy short RTTs)
        // is window-bound. Until an RTT is known, the fixed interval alone.
        let interval = match self.rtt {
            Some(rtt) => WINDOW_GROWTH_INTERVAL.max(rtt.saturating_mul(4)),
            None => WINDOW_GROWTH_INTERVAL,
        };
        let mut want_rtt = false;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // n <= data buffered <= receive window (a u32).
        let n = n as u32;
        if let Some(now) = now {
            s.epoch_bytes = s.epoch_bytes.saturating_add(n);
            match s.epoch_start {
                None => s.epoch_start = Some(now),
                Some(t0) if s.epoch_bytes >= s.window => {
                    // A whole window was read within the growth interval while the reader
                    // keeps up (little left buffered): the window, not the reader, limits the
                    // rate, so double it. A slow reader never makes it grow, so memory stays
                    // bounded by what a fast one briefly needs.
                    let fast = now.saturating_duration_since(t0) < interval;
                    want_rtt = true;
                    let keeps_up = s.recv_buf.len() <= (s.window / 4) as usize;
                    let max = s.window_cap(config_max, initial, self.min_rtt);
                    if fast && keeps_up && s.window < max && !s.remote_fin {
                        let mut add = s.window.min(max - s.window);
                        if let Some(b) = s.budget.as_mut() {
                            add = b.grow(add);
                        }
                        s.window += add;
                        s.recv_window = s.recv_window.saturating_add(add);
                        s.pending_window_update = s.pending_window_update.saturating_add(add);
                    } else if s.window_rate.is_some()
                        && s.recv_buf.len() > (s.window / 2) as usize
                        && s.window > initial
                    {
                        // A rate-sized window whose reader lags (more than half a window
                        // waiting): the reader, not the window, limits the rate, so halve
                        // it by withholding that much credit, and hold less for it.
                        let cut = s.window - (s.window / 2).max(initial);
                        s.window -= cut;
                        s.window_debt = s.window_debt.saturating_add(cut);
                    }
                    s.epoch_start = Some(now);
                    s.epoch_bytes = 0;
                }
                Some(_) => {}
            }
        }
        let threshold = s.window / 2;
        if s.credit(n, threshold) || s.pending_window_update > 0 {
            self.schedule_ctrl(id);
        }
        if want_rtt && self.rtt.is_none() {
            if let Some(now) = now {
                // A busy stream and no RTT yet: measure one (a 12-byte ping).
                self.ping(now);
            }
        }
    }

    /// Bounds what stream `id` may make us buffer (see [`StreamLimits`]): a relay uses it
    /// so that a circuit on a 50 ms hop can run fast while one on loopback, or one whose
    /// far side is slow, stays small, and so that all circuits together hold at most the
    /// shared [`WindowBudget`](super::WindowBudget) beyond their initial windows. Set it
    /// before data flows: growth the window already had is not charged to the budget.
    pub fn stream_set_limits(&mut self, id: StreamId, limits: StreamLimits) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.max_window = limits.max_window;
            s.window_rate = limits.window_rate;
            s.max_send_buffer = limits.max_send_buffer;
            s.budget = limits.window_budget.map(BudgetShare::new);
        }
    }

    /// The least round trip measured by this session's pings, if any.
    pub fn min_rtt(&self) -> Option<std::time::Duration> {
        self.min_rtt
    }

    /// Buffers up to `min(data.len(), free send buffer)` bytes for sending.
    /// `Err(WouldBlock)` when the buffer is full; `Err(Closed)` after finish/release.
    pub fn stream_write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        let max_buf = s.send_buffer_cap(self.config.max_send_buffer);
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.released || s.fin_pending || s.fin_sent {
            return Err(StreamError::Closed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let free = max_buf.saturating_sub(s.send_buf.len());
        if free == 0 {
            s.write_blocked = true;
            return Err(StreamError::WouldBlock);
        }
        let n = free.min(data.len());
        s.send_buf.extend(&data[..n]);
        if n < data.len() {
            s.write_blocked = true;
        }
        if s.has_sendable() {
            self.schedule_send(id);
        }
        Ok(n)
    }

    /// Half-closes our direction: FIN goes out after all buffered data.
    pub fn stream_finish(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reset || s.fin_pending || s.fin_sent {
            return;
        }
        s.fin_pending = true;
        self.schedule_send(id);
    }

    /// Resets the stream now, dropping its buffers.
    pub fn stream_reset(&mut self, id: StreamId) {
        self.reset_local(id);
        self.maybe_forget(id);
    }

    fn reset_local(&mut self, id: StreamId) {
        let Some(s) = self.resetting(id) else {
            return;
        };
        // A SYN never sent means the peer never heard of the stream: nothing to reset.
        let announced = !s.pending_flags.contains(Flags::SYN);
        s.clear_for_reset();
        if announced {
            self.ctrl
                .push_back(Header::window_update(id, 0, Flags::RST));
        }
    }

    /// The application dropped its handle. Resets the stream unless our side was finished
    /// (then buffered data and FIN are still sent and further peer data is discarded), and
    /// forgets it once nothing more can happen on it.
    pub fn stream_release(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.released {
            return;
        }
        let threshold = s.window / 2;
        s.released = true;
        let finished_locally = s.fin_pending || s.fin_sent;
        if !s.reset && finished_locally {
            let unread = s.recv_buf.len() as u32;
            s.recv_buf = Default::default();
            if s.credit(unread, threshold) {
                self.schedule_ctrl(id);
            }
        }
        if !finished_locally {
            self.reset_local(id);
        }
        self.maybe_forget(id);
    }

    /// Bytes accepted by `stream_write` but not yet handed out by `poll_transmit`.
    pub fn stream_send_buffered(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send_buf.len())
    }

    fn maybe_forget(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            if s.released && s.is_finished() {
                if s.awaiting_ack {
                    self.unacked_outbound -= 1;
                }
                self.streams.remove(&id);
            }
        }
    }

    fn schedule_send(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_send_queue {
                s.in_send_queue = true;
                self.send_rr.push_back(id);
            }
        }
    }

    fn schedule_ctrl(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_ctrl_queue {
                s.in_ctrl_queue = true;
                self.stream_ctrl.push_back(id);
            }
        }
    }

    // ----- session -----------------------------------------------------------------------

    /// Sends a session ping; [`Event::Pong`] follows when answered. Ignored while a ping
    /// is already outstanding (its answer serves this request too).
    pub fn ping(&mut self, now: Instant) {
        if self.fatal.is_some() || self.ping_outstanding.is_some() {
            return;
        }
        let value = self.next_ping_value;
        self.next_ping_value = value.wrapping_add(1);
        self.ping_outstanding = Some((value, now));
        self.ctrl.push_back(Header::ping(Flags::SYN, value));
        if let Some(iv) = self.config.keepalive_interval {
            self.keepalive_at = Some(now + iv);
        }
    }

    /// Announces that we accept no new streams; queues a Go Away frame.
    pub fn go_away(&mut self, code: u32) {
        if self.fatal.is_some() || self.local_go_away {
            return;
        }
        self.local_go_away = true;
        self.ctrl.push_back(Header::go_away(code));
    }

    /// When `handle_timeout` should be called next (keep-alive ping or timeout). The
    /// keep-alive clock starts with the first `handle_input`, `handle_timeout` or `ping`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fatal.is_some() {
            return None;
        }
        self.keepalive_at
    }

    /// Drives keep-alive: sends a ping when idle, fails the session when it went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(iv) = self.config.keepalive_interval else {
            return;
        };
        if self.fatal.is_some() {
            return;
        }
        match self.keepalive_at {
            None => self.keepalive_at = Some(now + iv),
            Some(at) if now >= at => {
                if self.ping_outstanding.is_some() {
                    self.fail(Error::KeepaliveTimeout, GO_AWAY_NORMAL);
                } else {
                    self.ping(now);
                }
            }
            Some(_) => {}
        }
    }

    /// True after a fatal error, or once Go Away went both ways and no stream is left.
    pub fn is_closed(&self) -> bool {
        self.fatal.is_some()
            || (self.local_go_away && self.remote_go_away.is_some() && self.streams.is_empty())
    }

    /// The error that failed the session, if any.
    pub fn error(&self) -> Option<&Error> {
        self.fatal.as_ref()
    }

    /// Number of streams still tracked (open, or waiting for the application to release).
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    /// Fails the session: only a Go Away will be transmitted; all streams become reset.
    fn fail(&mut self, error: Error, code: u32) {
        tracing::debug!(%error, "yamux: session failed");
        self.fatal = Some(error);
        self.ctrl.clear();
        self.ctrl.push_back(Header::go_away(code));
        self.stream_ctrl.clear();
        self.send_rr.clear();
        self.unacked_outbound = 0;
        for (&id, s) in self.streams.iter_mut() {
            if !s.reset && !s.released {
                self.events.push_back(Event::StreamReset(id));
            }
            s.clear_for_reset();
        }
        self.streams.retain(|_, s| !s.released);
    }
}

/// Smallest Data payload [`Session::handle_input_owned`] hands over as a piece of the input
/// instead of copying it: smaller ones are copied (into the stream's last chunk), so a
/// stream of tiny frames does not turn into a queue of tiny pieces.
pub const SHARE_MIN: usize = 2048;

/// Input being parsed: borrowed (payload is copied into stream buffers) or owned (large
/// payloads are split off and moved).
trait Input {
    /// What is left.
    fn bytes(&self) -> &[u8];
    /// Drops the next `n` bytes.
    fn skip(&mut self, n: usize);
    /// Moves the next `n` bytes to the end of `to`.
    fn move_into(&mut self, n: usize, to: &mut ChunkBuf);
}

impl Input for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn skip(&mut self, n: usize) {
        *self = &self[n..];
    }
    fn move_into(&mut self, n: usize, to: &mut ChunkBuf) {
        to.extend(&self[..n]);
        self.skip(n);
    }
}

impl Input for BytesMut {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn skip(&mut self, n: usize) {
        self.advance(n);
    }
    fn move_into(&mut self, n: usize, to: &mut ChunkBuf) {
        if n >= SHARE_MIN {
            to.push_chunk(Chunk::shared(self.split_to(n)));
        } else {
            to.extend(&self[..n]);
            self.advance(n);
        }
    }
}
