//! A layer-2 delay line for the NAT test bed (`tests/netbed/`).
//!
//! This kernel has no `netem`, so `tc` cannot add latency. Instead one process opens two
//! TAP devices, each in its own network namespace, and copies every Ethernet frame from
//! one to the other after a fixed one-way delay. Because it works on whole frames, the
//! hosts on either side see true addresses (no proxy in between), which AutoNAT dial-backs
//! and observed addresses depend on.
//!
//! Why hand-written: no maintained crate does "two TAPs in two namespaces, FIFO delay".
//! The `tun`/`tun-tap` crates open a device in the caller's namespace only and bring an
//! async runtime or a configuration layer we don't need; the whole job is one ioctl, one
//! `setns` and a timed FIFO, so the kernel calls are made here directly with `libc`.
//!
//! Layout: [`tap`] opens the devices ([`tap::open_tap_in_netns`]); [`line`] moves frames
//! between two [`line::FrameIo`] endpoints with a delay, a bounded queue and counters, so
//! its behaviour is unit-tested with Unix datagram sockets instead of TAPs.

pub mod line;
pub mod tap;

/// Errors from opening the TAP devices or starting the forwarding threads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface name is empty, longer than 15 bytes, or contains `/`, a space or NUL.
    #[error("invalid interface name {0:?} (1..=15 bytes, no '/', whitespace or NUL)")]
    BadIfName(String),
    /// The namespace file (e.g. `/var/run/netns/cb-r1`) could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    NetnsOpen {
        /// The path that was opened.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `setns(2)` into the namespace failed (not root? not a netns file?).
    #[error("setns into {path} failed: {source}")]
    Setns {
        /// The namespace path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    TunOpen(std::io::Error),
    /// The `TUNSETIFF` ioctl failed (name taken by a non-TAP device, no CAP_NET_ADMIN, …).
    #[error("TUNSETIFF {name} failed: {source}")]
    TunSetIff {
        /// The requested interface name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A thread could not be spawned, or the helper thread panicked.
    #[error("thread: {0}")]
    Thread(String),
}
