//! Settings of the relay service.

use std::time::Duration;

use circuit_proto::relay::Limit;

use crate::bridge::Tap;

/// Limits and timeouts of the relay. Defaults follow go-libp2p's relay service.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long a reservation lasts (refreshes restart it).
    pub reservation_ttl: Duration,
    /// Most reservations at once.
    pub max_reservations: usize,
    /// Most reservations from one IP address.
    pub max_reservations_per_ip: usize,
    /// Most circuits at once, all peers together.
    pub max_circuits: usize,
    /// Most circuits per peer (as source and as destination, counted separately).
    pub max_circuits_per_peer: usize,
    /// The limit of each circuit; [`Limit::UNLIMITED`] sends no `Limit` at all.
    pub limit: Limit,
    /// Copy buffer per circuit direction.
    pub buffer_size: usize,
    /// Deadline for reading a request and writing its answer.
    pub stream_timeout: Duration,
    /// Deadline for opening the stop stream and getting the target's answer.
    pub connect_timeout: Duration,
    /// Sign reservation vouchers.
    pub vouchers: bool,
    /// Sees every chunk forwarded on circuits opened from now on (tests, diagnostics); `None` costs nothing.
    pub tap: Option<Tap>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            reservation_ttl: Duration::from_secs(3600),
            max_reservations: 128,
            max_reservations_per_ip: 8,
            max_circuits: 1024,
            max_circuits_per_peer: 16,
            limit: Limit::GO_DEFAULT,
            buffer_size: 16 * 1024,
            stream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            vouchers: true,
            tap: None,
        }
    }
}
