//! An established, secured and multiplexed connection: one driver task per
//! connection moves bytes between the socket and the sans-IO cores (Noise
//! transport, yamux session); [`Stream`] handles read and write through the
//! shared state.
//!
//! The pattern is quinn's: `Arc<Mutex<State>>` shared by the driver future and
//! the stream handles, wakers to hand work across, no channel per chunk.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use circuit_proto::multistream;
use circuit_proto::noise;
use circuit_proto::relay::Limit;
use circuit_proto::yamux::{
    self, Chunk, Event as MuxEvent, Session, StreamError, StreamId, StreamLimits, Transmit as _,
};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::transport::BoxedIo;

/// Free space asked of the Noise input buffer before each socket read: one full Noise frame
/// plus its length prefix (the buffer is allocated at twice this, so reads are often larger).
const READ_CHUNK: usize = 64 * 1024 + 2;
/// Read size of an idle connection (see `Transport::prefers_small_read`).
const SMALL_READ: usize = 4 * 1024;
/// Ciphertext built per socket write batch (whole Noise frames; the last one may overshoot).
const WRITE_BATCH: usize = 256 * 1024;
/// Largest plaintext of one Noise frame: yamux frames are laid out into it directly.
const FRAME_PLAINTEXT: usize = noise::MAX_PLAINTEXT;
/// Length prefix and tag around each Noise frame's plaintext.
const FRAME_PREFIX: usize = 2;
const FRAME_TAG: usize = 16;
/// A write batch no larger than this marks a connection as not busy: once written, its
/// buffer is freed if it grew beyond this, so idle connections (reservations) hold none.
const IDLE_BATCH: usize = 8 * 1024;

/// Identifies a connection within a node.
pub type ConnectionId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Which side opened the underlying channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

/// Facts about a connection that do not change.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Node-local id.
    pub id: ConnectionId,
    /// Authenticated remote peer.
    pub peer: PeerId,
    /// The remote identity key.
    pub remote_key: libp2p_identity::PublicKey,
    /// Remote address; for relayed connections `<relay addr>/p2p/<relay>/p2p-circuit`.
    pub remote_addr: Multiaddr,
    /// Local address.
    pub local_addr: Multiaddr,
    /// Who dialed.
    pub direction: Direction,
    /// Whether this connection runs over a relay circuit.
    pub relayed: bool,
    /// For a relayed connection, the limit the relay announced (duration, bytes per
    /// direction); [`Limit::UNLIMITED`] for direct connections and unlimited circuits.
    pub limit: Limit,
}

#[derive(Default)]
struct Wakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

struct State {
    session: Session,
    wakers: HashMap<StreamId, Wakers>,
    driver: Option<Waker>,
    /// Set once the connection is gone; every stream operation fails after it.
    closed: Option<String>,
    pings: Vec<oneshot::Sender<Duration>>,
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock is a bug; keep serving the other streams' data anyway.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle to a live connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    info: Arc<ConnectionInfo>,
    shared: Shared,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.info.id)
            .field("peer", &self.info.peer)
            .finish()
    }
}

impl Connection {
    /// Starts the driver of a connection whose Noise handshake is done.
    ///
    /// `initial_plaintext` holds decrypted bytes that arrived before the session
    /// existed (pipelined after a muxer negotiation); `inbound` receives streams the
    /// peer opens. The returned future must be spawned; it ends when the connection does.
    pub(crate) fn new(
        io: BoxedIo,
        transport: noise::Transport,
        initial_plaintext: Vec<u8>,
        mut info: ConnectionInfo,
        config: yamux::Config,
        inbound: mpsc::Sender<Stream>,
    ) -> (Connection, Driver) {
        info.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mode = match info.direction {
            Direction::Outbound => yamux::Mode::Client,
            Direction::Inbound => yamux::Mode::Server,
        };
        let state = State {
            session: Session::new(mode, config),
            wakers: HashMap::new(),
            driver: None,
            closed: None,
            pings: Vec::new(),
        };
        let shared = Arc::new(Mutex::new(state));
        let conn = Connection {
            info: Arc::new(info),
            shared: shared.clone(),
        };
        // Buffers start empty and grow with use: an idle connection (a held reservation)
        // should cost little memory.
        let driver = Driver {
            conn: conn.clone(),
            io,
            transport,
            plain_in: initial_plaintext,
            ranges: Vec::new(),
            cipher_out: Vec::new(),
            cipher_end: 0,
            cipher_pos: 0,
            unsealed: Vec::new(),
            parts: Vec::new(),
            last_batch: 0,
            inbound,
            timer: None,
            eof: false,
            shutdown_sent: false,
        };
        (conn, driver)
    }

    /// Facts about this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Remote peer.
    pub fn peer(&self) -> PeerId {
        self.info.peer
    }

    /// Node-local id.
    pub fn id(&self) -> ConnectionId {
        self.info.id
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared).closed.is_some()
    }

    /// Opens a raw yamux stream (no protocol negotiated yet).
    pub fn open_raw_stream(&self) -> io::Result<Stream> {
        let mut st = lock(&self.shared);
        if let Some(why) = &st.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
        }
        let id = st
            .session
            .open_stream()
            .map_err(|e| io::Error::other(e.to_string()))?;
        st.wakers.insert(id, Wakers::default());
        st.wake_driver();
        drop(st);
        Ok(Stream::new(self.clone(), id))
    }

    /// Measures the yamux-level round trip (session ping).
    pub async fn mux_ping(&self) -> io::Result<Duration> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.shared);
            if let Some(why) = &st.closed {
                return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
            }
            st.session.ping(Instant::now());
            st.pings.push(tx);
            st.wake_driver();
        }
        rx.await
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))
    }

    /// Tells the peer we open no more streams and accept none (yamux go-away);
    /// streams already open go on.
    pub fn go_away(&self) {
        let mut st = lock(&self.shared);
        st.session.go_away(0);
        st.wake_driver();
    }

    /// Closes the connection: go-away, then the driver ends.
    pub fn close(&self) {
        let mut st = lock(&self.shared);
        st.session.go_away(0);
        if st.closed.is_none() {
            st.closed = Some("closed locally".into());
        }
        st.wake_driver();
    }

    /// Number of open streams.
    pub fn num_streams(&self) -> usize {
        lock(&self.shared).session.num_streams()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        // Polling at a coarse interval keeps the shared state free of a waiter list.
        while !self.is_closed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A yamux stream of a [`Connection`]: read and write like a socket.
///
/// Dropping it resets the stream unless it was closed both ways.
pub struct Stream {
    conn: Connection,
    id: StreamId,
    /// Bytes read ahead during protocol negotiation, handed out first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    /// A lazily negotiated protocol (proposal sent, application data may already
    /// follow): the peer's header and echo must be checked before the first read.
    unconfirmed: Option<Box<multistream::Dialer>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("conn", &self.conn.info.id)
            .field("id", &self.id)
            .finish()
    }
}

impl Stream {
    fn new(conn: Connection, id: StreamId) -> Stream {
        Stream {
            conn,
            id,
            prefix: Vec::new(),
            prefix_pos: 0,
            unconfirmed: None,
        }
    }

    /// The connection this stream belongs to.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Puts bytes back in front of the stream (read ahead by a negotiation).
    pub fn unread(&mut self, mut data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        data.extend_from_slice(&self.prefix[self.prefix_pos..]);
        self.prefix = data;
        self.prefix_pos = 0;
    }

    /// Marks the stream as optimistically negotiated: reads first check the peer's
    /// answer with `dialer` and fail if it refused the protocol.
    pub(crate) fn expect_confirmation(&mut self, dialer: multistream::Dialer) {
        self.unconfirmed = Some(Box::new(dialer));
    }

    /// Aborts the stream (yamux RST).
    pub fn reset(&mut self) {
        let mut st = lock(&self.conn.shared);
        st.session.stream_reset(self.id);
        st.wake_driver();
    }
}

fn stream_err(e: StreamError, closed: &Option<String>) -> io::Error {
    match (e, closed) {
        (_, Some(why)) => io::Error::new(io::ErrorKind::ConnectionAborted, why.clone()),
        (StreamError::Reset, _) => {
            io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by peer")
        }
        (StreamError::Closed, _) => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
        (e, _) => io::Error::other(format!("{e:?}")),
    }
}

impl Stream {
    /// Reads the peer's multistream answer until the lazy proposal is confirmed.
    fn poll_confirm(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; 256];
        while let Some(dialer) = self.unconfirmed.as_mut() {
            if dialer.is_confirmed() {
                let rest = dialer.take_leftover();
                self.unconfirmed = None;
                self.unread(rest);
                break;
            }
            let n = {
                let mut st = lock(&self.conn.shared);
                match st.session.stream_read(self.id, &mut tmp) {
                    Ok(n) => {
                        if st.session.wants_transmit() {
                            st.wake_driver();
                        }
                        n
                    }
                    Err(StreamError::WouldBlock) if st.closed.is_none() => {
                        st.wakers.entry(self.id).or_default().read = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Err(e) => {
                        let closed = st.closed.clone();
                        return Poll::Ready(Err(stream_err(e, &closed)));
                    }
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream closed during protocol negotiation",
                )));
            }
            if let Some(dialer) = self.unconfirmed.as_mut() {
                if let Err(e) = dialer.handle_input(&tmp[..n]) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("protocol negotiation: {e}"),
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Stream {
    /// Reads up to `max` bytes (`max > 0`) as an owned chunk; an empty chunk is the end of
    /// the stream. The chunk the session buffered is handed over without copying when it
    /// fits, so a relay moving data with this and [`Stream::poll_write_chunk`] copies no
    /// payload bytes between two connections.
    pub fn poll_read_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Chunk>> {
        if self.unconfirmed.is_some() || self.prefix_pos < self.prefix.len() {
            // Negotiation leftovers: the plain read path handles them.
            let mut buf = vec![0u8; max.min(16 * 1024)];
            let mut rb = ReadBuf::new(&mut buf);
            return match Pin::new(&mut *self).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    buf.truncate(n);
                    Poll::Ready(Ok(Chunk::from(buf)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let mut st = lock(&self.conn.shared);
        match st.session.stream_read_chunk(self.id, max) {
            Ok(chunk) => {
                if st.session.wants_transmit() {
                    st.wake_driver();
                }
                Poll::Ready(Ok(chunk))
            }
            Err(StreamError::WouldBlock) if st.closed.is_none() => {
                st.wakers.entry(self.id).or_default().read = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(e) => {
                let closed = st.closed.clone();
                Poll::Ready(Err(stream_err(e, &closed)))
            }
        }
    }

    /// Queues the whole of `chunk` for sending without copying it; on `Ready(Ok)` the chunk
    /// has been taken (left empty). `Pending` when the send buffer has no room for it (the
    /// chunk stays with the caller).
    ///
    /// Unlike `poll_write`, an accepted chunk does not wake the connection's driver: call
    /// [`Stream::flush_chunks`] after a run of writes, so the driver wakes once and sends
    /// them in one batch of large frames instead of chasing each chunk.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Chunk,
    ) -> Poll<io::Result<()>> {
        let mut st = lock(&self.conn.shared);
        if let Some(why) = &st.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.clone(),
            )));
        }
        match st
            .session
            .stream_write_chunk(self.id, std::mem::take(chunk))
        {
            Ok(()) => Poll::Ready(Ok(())),
            Err((StreamError::WouldBlock, c)) => {
                *chunk = c;
                st.wakers.entry(self.id).or_default().write = Some(cx.waker().clone());
                st.wake_driver();
                Poll::Pending
            }
            Err((e, c)) => {
                *chunk = c;
                let closed = st.closed.clone();
                Poll::Ready(Err(stream_err(e, &closed)))
            }
        }
    }
}

impl Stream {
    /// Bounds what this stream may make us buffer: window cap, window sized to a rate over
    /// the connection's measured round trip, send-buffer cap, shared window budget (see
    /// [`circuit_proto::yamux::StreamLimits`]). Set it before data flows.
    pub fn set_limits(&self, limits: StreamLimits) {
        lock(&self.conn.shared)
            .session
            .stream_set_limits(self.id, limits);
    }

    /// Wakes the connection's driver if it has anything to send: ends a run of
    /// [`Stream::poll_write_chunk`] calls.
    pub fn flush_chunks(&self) {
        let mut st = lock(&self.conn.shared);
        if st.session.wants_transmit() {
            st.wake_driver();
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unconfirmed.is_some() {
            match this.poll_confirm(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if this.prefix_pos < this.prefix.len() {
            let n = (this.prefix.len() - this.prefix_pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.prefix_pos..this.prefix_pos + n]);
            this.prefix_pos += n;
            if this.prefix_pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let mut st = lock(&this.conn.shared);
        // Copied straight into the unfilled room: zeroing it first (`initialize_unfilled`)
        // would write a reader's whole spare capacity (often 128 KiB) on every read.
        match st
            .session
            .stream_read_with(this.id, buf.remaining(), |s| buf.put_slice(s))
        {
            Ok(_) => {
                // Reading may free window: wake the driver only if an update (or anything
                // else) is now due, not after every read.
                if st.session.wants_transmit() {
                    st.wake_driver();
                }
                Poll::Ready(Ok(()))
            }
            Err(StreamError::WouldBlock) if st.closed.is_none() => {
                st.wakers.entry(this.id).or_default().read = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(e) => {
                let closed = st.closed.clone();
                Poll::Ready(Err(stream_err(e, &closed)))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.conn.shared);
        if let Some(why) = &st.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.clone(),
            )));
        }
        match st.session.stream_write(self.id, data) {
            Ok(n) => {
                st.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(StreamError::WouldBlock) => {
                st.wakers.entry(self.id).or_default().write = Some(cx.waker().clone());
                st.wake_driver();
                Poll::Pending
            }
            Err(e) => {
                let closed = st.closed.clone();
                Poll::Ready(Err(stream_err(e, &closed)))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Accepted bytes sit in the session's bounded send buffer; the driver sends
        // them without further prompting, like a socket's kernel buffer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // With an optimistic proposal still unanswered, hold the FIN back until the
        // peer confirms the protocol: js-libp2p resets a stream whose FIN arrives
        // while it is still settling the negotiation.
        if self.unconfirmed.is_some() {
            match self.poll_confirm(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        let mut st = lock(&self.conn.shared);
        st.session.stream_finish(self.id);
        st.wake_driver();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = lock(&self.conn.shared);
        st.session.stream_release(self.id);
        st.wakers.remove(&self.id);
        st.wake_driver();
    }
}

/// The future that drives one connection; spawn it.
pub struct Driver {
    conn: Connection,
    io: BoxedIo,
    transport: noise::Transport,
    /// Plaintext that arrived before the session existed; fed to it on the first poll.
    plain_in: Vec<u8>,
    /// Positions of decrypted plaintext in the transport's input buffer (reused).
    ranges: Vec<std::ops::Range<usize>>,
    /// Outgoing Noise frames are `cipher_out[..cipher_end]`; `cipher_out[cipher_pos..cipher_end]`
    /// is not yet written to the socket. The bytes beyond `cipher_end` are left from earlier
    /// batches: they are overwritten, not cleared, so a batch zero-fills nothing it reuses.
    cipher_out: Vec<u8>,
    cipher_end: usize,
    cipher_pos: usize,
    /// Frames laid out in `cipher_out` (under the lock) but not yet sealed: (start, end).
    unsealed: Vec<(usize, usize)>,
    /// Payload of the unsealed frames, as the stream buffers' chunks, with the offset in
    /// `cipher_out` each is to be encrypted into (increasing).
    parts: Vec<(usize, Chunk)>,
    /// Size of the previous write batch (small batches mark an idle connection).
    last_batch: usize,
    inbound: mpsc::Sender<Stream>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    eof: bool,
    shutdown_sent: bool,
}

impl Driver {
    /// Handles what the session reports; returns whether anything happened.
    fn dispatch_events(&mut self, st: &mut State) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                MuxEvent::InboundStream(id) => {
                    // Reserve the acceptor's slot first: a Stream made and then refused
                    // would have to be dropped here, and Stream::drop locks the state we
                    // hold.
                    match self.inbound.try_reserve() {
                        Ok(permit) => {
                            st.wakers.insert(id, Wakers::default());
                            permit.send(Stream::new(self.conn.clone(), id));
                        }
                        Err(_) => {
                            tracing::debug!(peer = %self.conn.info.peer, "inbound stream refused: acceptor busy or gone");
                            st.session.stream_reset(id);
                            st.session.stream_release(id);
                        }
                    }
                }
                MuxEvent::Readable(id) | MuxEvent::StreamReset(id) => {
                    if let Some(w) = st.wakers.get_mut(&id) {
                        if let Some(w) = w.read.take() {
                            w.wake();
                        }
                        if let Some(w) = w.write.take() {
                            w.wake();
                        }
                    }
                }
                MuxEvent::Writable(id) => {
                    if let Some(w) = st.wakers.get_mut(&id).and_then(|w| w.write.take()) {
                        w.wake();
                    }
                }
                MuxEvent::Pong { rtt } => {
                    for p in st.pings.drain(..) {
                        let _ = p.send(rtt);
                    }
                }
                MuxEvent::GoAway(code) => {
                    tracing::debug!(peer = %self.conn.info.peer, code, "peer sent go-away");
                }
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }

    fn fail(&mut self, st: &mut State, why: String) {
        if st.closed.is_none() {
            tracing::debug!(peer = %self.conn.info.peer, reason = %why, "connection closed");
            st.closed = Some(why);
        }
        for (_, w) in st.wakers.drain() {
            if let Some(w) = w.read {
                w.wake();
            }
            if let Some(w) = w.write {
                w.wake();
            }
        }
        st.pings.clear();
    }
}

impl Driver {
    /// Lays out the session's pending frames as Noise frames (length slot, yamux frames, tag
    /// slot) in `cipher_out`, up to about [`WRITE_BATCH`]; they are sealed after the lock is
    /// released. Payload is not copied in: its chunks are taken from the stream buffers into
    /// `parts` and encrypted straight into place by [`Driver::seal_batch`]. Returns the number
    /// of plaintext bytes taken.
    fn fill_batch(&mut self, st: &mut State) -> usize {
        let mut taken = 0;
        while self.cipher_end < WRITE_BATCH {
            let start = self.cipher_end;
            let mut out = Layout {
                buf: &mut self.cipher_out,
                end: &mut self.cipher_end,
                parts: &mut self.parts,
            };
            out.put(&[0u8; FRAME_PREFIX]);
            let max = start + FRAME_PREFIX + FRAME_PLAINTEXT;
            let n = st.session.poll_transmit_bounded(&mut out, max);
            if n == 0 {
                self.cipher_end = start;
                break;
            }
            taken += n;
            out.put(&[0u8; FRAME_TAG]);
            self.unsealed.push((start, self.cipher_end));
        }
        taken
    }

    /// Encrypts the frames laid out by [`Driver::fill_batch`], in order, each with its
    /// payload chunks, then drops the chunks. On an error (nonce exhaustion) the whole batch
    /// is dropped: nothing from it may go out.
    // noise::Error is large (two PeerIds) but returned at most once per connection.
    #[allow(clippy::result_large_err)]
    fn seal_batch(&mut self) -> Result<(), noise::Error> {
        let mut first = 0;
        let mut res = Ok(());
        for &(start, end) in &self.unsealed {
            let plain = start + FRAME_PREFIX;
            let upto = first + self.parts[first..].partition_point(|(off, _)| *off < end);
            let parts = self.parts[first..upto]
                .iter()
                .map(|(off, c)| (off - plain, &c[..]));
            res = self
                .transport
                .seal_in_place_parts(&mut self.cipher_out[start..end], parts);
            if res.is_err() {
                break;
            }
            first = upto;
        }
        if res.is_err() {
            self.cipher_end = self.unsealed.first().map_or(self.cipher_end, |&(s, _)| s);
        }
        self.unsealed.clear();
        self.parts.clear();
        res
    }
}

/// The [`yamux::Transmit`] sink of [`Driver::fill_batch`]: header bytes are copied into the
/// frame buffer, payload chunks are kept whole with the place they are to be encrypted into
/// (room is made for them, zero-filled only where the buffer never reached before).
struct Layout<'a> {
    buf: &'a mut Vec<u8>,
    end: &'a mut usize,
    parts: &'a mut Vec<(usize, Chunk)>,
}

impl Layout<'_> {
    fn make_room(&mut self, n: usize) -> usize {
        let at = *self.end;
        if self.buf.len() < at + n {
            self.buf.resize(at + n, 0);
        }
        *self.end += n;
        at
    }
}

impl yamux::Transmit for Layout<'_> {
    fn len(&self) -> usize {
        *self.end
    }

    fn put(&mut self, bytes: &[u8]) {
        let at = self.make_room(bytes.len());
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn put_payload(&mut self, buf: &mut yamux::ChunkBuf, n: usize) {
        let mut left = n;
        while left > 0 {
            let Some(chunk) = buf.pop_chunk(left) else {
                break;
            };
            left -= chunk.len();
            let at = self.make_room(chunk.len());
            self.parts.push((at, chunk));
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let shared = this.conn.shared.clone();
        // Bound the work per poll so one busy connection cannot hog a runtime thread.
        for _ in 0..64 {
            let mut progress = false;
            let now = Instant::now();

            // 1. Socket → Noise, without the lock: the read and the decryption (in place, in
            //    the transport's buffer) do not touch the shared state, so stream handles on
            //    other threads are not held up meanwhile.
            let mut ranges = std::mem::take(&mut this.ranges);
            ranges.clear();
            let mut read_failed: Option<String> = None;
            let mut remote_closed = false;
            if !this.eof {
                // An idle connection reads into a small stack buffer, so receiving the odd
                // ping or window update allocates only that much; a read that fills it
                // switches to large reads straight into the Noise buffer.
                let small_read = this.transport.prefers_small_read();
                let res = if small_read {
                    let mut small = [0u8; SMALL_READ];
                    let mut rb = ReadBuf::new(&mut small[..]);
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            this.transport.handle_input(&small[..n]);
                            Poll::Ready(Ok(n))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                } else {
                    // Into the spare capacity of the Noise input buffer, not zeroed first.
                    let buf = this.transport.input_buf(READ_CHUNK);
                    let res = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, buf);
                    if let Poll::Ready(Ok(n)) = res {
                        this.transport.note_input(n);
                    }
                    res
                };
                match res {
                    Poll::Ready(Ok(0)) => {
                        this.eof = true;
                        remote_closed = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => {
                        this.eof = true;
                        read_failed = Some(format!("read: {e}"));
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            // Also after no read: frames pipelined behind the handshake may be buffered.
            if read_failed.is_none() && this.transport.buffered_input() > 0 {
                if let Err(e) = this.transport.decrypt_buffered(&mut ranges) {
                    read_failed = Some(format!("noise: {e}"));
                }
            }
            // The decrypted frames, owned: their payloads go to the streams as pieces of
            // this buffer, without a copy.
            let mut frames = if ranges.is_empty() {
                BytesMut::new()
            } else {
                this.transport.take_decrypted()
            };

            // 2. Plaintext → yamux, under the lock.
            let mut st = lock(&shared);
            if !this.plain_in.is_empty() {
                let initial = std::mem::take(&mut this.plain_in);
                if let Err(e) = st.session.handle_input(&initial, now) {
                    tracing::warn!(peer = %this.conn.info.peer, error = %e, "yamux protocol error; closing");
                    this.fail(&mut st, format!("yamux: {e}"));
                }
            }
            let mut pos = 0;
            for r in ranges.drain(..) {
                if st.closed.is_some() {
                    break;
                }
                frames.advance(r.start - pos);
                pos = r.end;
                let plain = frames.split_to(r.len());
                if let Err(e) = st.session.handle_input_owned(plain, now) {
                    tracing::warn!(peer = %this.conn.info.peer, error = %e, "yamux protocol error; closing");
                    this.fail(&mut st, format!("yamux: {e}"));
                }
            }
            this.ranges = ranges;
            // The plaintext is consumed: an idle connection's input buffer can go.
            this.transport.release_if_idle();
            if remote_closed {
                this.fail(&mut st, "remote closed the connection".into());
            }
            if let Some(why) = read_failed {
                this.fail(&mut st, why);
            }
            this.dispatch_events(&mut st);

            // 3. yamux → Noise frames laid out in place (under the lock), sealed after it.
            if this.cipher_pos == this.cipher_end {
                let written = this.cipher_end;
                this.cipher_end = 0;
                this.cipher_pos = 0;
                if written > 0 {
                    this.last_batch = written;
                }
                if this.fill_batch(&mut st) > 0 {
                    this.dispatch_events(&mut st);
                } else if this.last_batch <= IDLE_BATCH && this.cipher_out.len() > IDLE_BATCH {
                    // Nothing to send and the last batches were small: free the buffer.
                    this.cipher_out = Vec::new();
                }
            }
            let closed = st.closed.is_some();
            let session_closed = st.session.is_closed();
            drop(st);
            if !this.unsealed.is_empty() {
                if let Err(e) = this.seal_batch() {
                    this.fail(&mut lock(&shared), format!("noise: {e}"));
                }
            }

            // 4. Socket write, without the lock.
            if this.cipher_pos < this.cipher_end {
                match Pin::new(&mut this.io)
                    .poll_write(cx, &this.cipher_out[this.cipher_pos..this.cipher_end])
                {
                    Poll::Ready(Ok(0)) => {
                        this.fail(&mut lock(&shared), "write: socket closed".into());
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(n)) => {
                        this.cipher_pos += n;
                        progress = true;
                        if this.cipher_pos == this.cipher_end {
                            let _ = Pin::new(&mut this.io).poll_flush(cx);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        this.fail(&mut lock(&shared), format!("write: {e}"));
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            } else if closed || session_closed {
                // Everything queued (e.g. a go-away) is out: finish.
                if !this.shutdown_sent {
                    this.shutdown_sent = true;
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                }
                if !closed {
                    this.fail(&mut lock(&shared), "session ended".to_string());
                }
                return Poll::Ready(());
            }

            // 5. Timers (keep-alive pings).
            let mut st = lock(&shared);
            if let Some(deadline) = st.session.poll_timeout() {
                if deadline <= now {
                    st.session.handle_timeout(now);
                    progress = true;
                } else {
                    let when = tokio::time::Instant::from_std(deadline);
                    match &mut this.timer {
                        Some(t) if t.deadline() == when => {}
                        Some(t) => t.as_mut().reset(when),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(when))),
                    }
                    if let Some(t) = &mut this.timer {
                        if t.as_mut().poll(cx).is_ready() {
                            progress = true;
                        }
                    }
                }
            }

            if !progress {
                // Register under the lock: a stream handle that changes the state after this
                // sees the waker and wakes us.
                if st.session.wants_transmit() && this.cipher_pos == this.cipher_end {
                    // Work arrived between the transmit step and now: go round again.
                    continue;
                }
                st.driver = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        // Yield to the runtime and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
