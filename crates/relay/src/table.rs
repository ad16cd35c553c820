//! The reservation table and circuit counters: plain data, no I/O, no clock of
//! its own (callers pass `now`), so its rules are tested directly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use libp2p_identity::PeerId;

use crate::config::RelayConfig;

/// One reservation.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it lapses.
    pub expires: Instant,
    /// The reserving connection's IP.
    pub ip: Option<IpAddr>,
    /// The connection it was made on; it ends with that connection.
    pub connection: u64,
}

/// Why the table refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `max_reservations` reached.
    #[error("reservation table full")]
    Full,
    /// `max_reservations_per_ip` reached.
    #[error("too many reservations from this IP")]
    PerIp,
    /// `max_circuits` reached.
    #[error("relay circuit limit reached")]
    CircuitsFull,
    /// `max_circuits_per_peer` reached for source or destination.
    #[error("per-peer circuit limit reached")]
    CircuitsPerPeer,
    /// The destination holds no live reservation.
    #[error("no reservation")]
    NoReservation,
}

/// Reservations and circuit counts.
#[derive(Debug, Default)]
pub struct ReservationTable {
    reservations: HashMap<PeerId, Entry>,
    circuits: HashMap<PeerId, usize>,
    total_circuits: usize,
    /// Reservations ended so far (lapsed or gone with their connection), for metrics.
    ended: u64,
}

impl ReservationTable {
    /// Adds or refreshes `peer`'s reservation.
    pub fn reserve(
        &mut self,
        cfg: &RelayConfig,
        peer: PeerId,
        ip: Option<IpAddr>,
        connection: u64,
        now: Instant,
    ) -> Result<Instant, TableError> {
        self.expire(now);
        let refreshing = self.reservations.contains_key(&peer);
        if !refreshing {
            if self.reservations.len() >= cfg.max_reservations {
                return Err(TableError::Full);
            }
            if let Some(ip) = ip {
                let same_ip = self
                    .reservations
                    .values()
                    .filter(|e| e.ip == Some(ip))
                    .count();
                if same_ip >= cfg.max_reservations_per_ip {
                    return Err(TableError::PerIp);
                }
            }
        }
        let expires = now + cfg.reservation_ttl;
        self.reservations.insert(
            peer,
            Entry {
                expires,
                ip,
                connection,
            },
        );
        Ok(expires)
    }

    /// Drops reservations that lapsed.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.reservations.len();
        self.reservations.retain(|_, e| e.expires > now);
        let n = before - self.reservations.len();
        self.ended += n as u64;
        n
    }

    /// Drops the reservations made on a connection that ended.
    pub fn connection_closed(&mut self, peer: &PeerId, connection: u64) -> bool {
        if self
            .reservations
            .get(peer)
            .map(|e| e.connection == connection)
            .unwrap_or(false)
        {
            self.reservations.remove(peer);
            self.ended += 1;
            return true;
        }
        false
    }

    /// Whether `peer` holds a live reservation.
    pub fn has_reservation(&self, peer: &PeerId, now: Instant) -> bool {
        self.reservations
            .get(peer)
            .map(|e| e.expires > now)
            .unwrap_or(false)
    }

    /// Reservations ended since the start (lapsed, or their connection closed);
    /// refreshes do not end one.
    pub fn reservations_ended(&self) -> u64 {
        self.ended
    }

    /// Number of live reservations.
    pub fn num_reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Number of open circuits.
    pub fn num_circuits(&self) -> usize {
        self.total_circuits
    }

    /// Admits a circuit from `src` to `dst` and counts it; undo with [`Self::close_circuit`].
    pub fn open_circuit(
        &mut self,
        cfg: &RelayConfig,
        src: PeerId,
        dst: PeerId,
        now: Instant,
    ) -> Result<(), TableError> {
        if !self.has_reservation(&dst, now) {
            return Err(TableError::NoReservation);
        }
        self.open_circuit_unreserved(cfg, src, dst)
    }

    /// Admits a circuit without a reservation (relay v1 has none), under the same
    /// circuit limits; undo with [`Self::close_circuit`].
    pub fn open_circuit_unreserved(
        &mut self,
        cfg: &RelayConfig,
        src: PeerId,
        dst: PeerId,
    ) -> Result<(), TableError> {
        if self.total_circuits >= cfg.max_circuits {
            return Err(TableError::CircuitsFull);
        }
        let count = |p: &PeerId| self.circuits.get(p).copied().unwrap_or(0);
        if count(&src) >= cfg.max_circuits_per_peer || count(&dst) >= cfg.max_circuits_per_peer {
            return Err(TableError::CircuitsPerPeer);
        }
        *self.circuits.entry(src).or_default() += 1;
        *self.circuits.entry(dst).or_default() += 1;
        self.total_circuits += 1;
        Ok(())
    }

    /// Releases a circuit counted by [`Self::open_circuit`].
    pub fn close_circuit(&mut self, src: PeerId, dst: PeerId) {
        for p in [src, dst] {
            if let Some(c) = self.circuits.get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    self.circuits.remove(&p);
                }
            }
        }
        self.total_circuits = self.total_circuits.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> RelayConfig {
        RelayConfig {
            max_reservations: 2,
            max_reservations_per_ip: 1,
            max_circuits: 3,
            max_circuits_per_peer: 2,
            ..Default::default()
        }
    }

    #[test]
    fn reservations_are_bounded_and_refreshable() {
        let c = cfg();
        let now = Instant::now();
        let mut t = ReservationTable::default();
        let (a, b, d) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        t.reserve(&c, a, Some(ip1), 1, now).unwrap();
        assert_eq!(t.reserve(&c, b, Some(ip1), 2, now), Err(TableError::PerIp));
        t.reserve(&c, b, Some(ip2), 2, now).unwrap();
        assert_eq!(t.reserve(&c, d, None, 3, now), Err(TableError::Full));
        // A refresh is not a new reservation.
        t.reserve(&c, a, Some(ip1), 1, now + Duration::from_secs(10))
            .unwrap();
        assert_eq!(t.num_reservations(), 2);
    }

    #[test]
    fn reservations_expire_and_end_with_their_connection() {
        let c = cfg();
        let now = Instant::now();
        let mut t = ReservationTable::default();
        let a = PeerId::random();
        t.reserve(&c, a, None, 7, now).unwrap();
        assert!(t.has_reservation(&a, now + Duration::from_secs(3599)));
        assert!(!t.has_reservation(&a, now + Duration::from_secs(3600)));
        assert!(!t.connection_closed(&a, 8));
        assert!(t.connection_closed(&a, 7));
        assert!(!t.has_reservation(&a, now));
        t.reserve(&c, a, None, 8, now).unwrap();
        assert_eq!(t.expire(now + Duration::from_secs(3600)), 1);
        assert_eq!(t.reservations_ended(), 2);
    }

    #[test]
    fn circuits_are_bounded_per_peer_and_in_total() {
        let c = cfg();
        let now = Instant::now();
        let mut t = ReservationTable::default();
        let (a, b, s) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(
            t.open_circuit(&c, s, a, now),
            Err(TableError::NoReservation)
        );
        t.reserve(&c, a, None, 1, now).unwrap();
        t.reserve(&c, b, None, 2, now).unwrap();
        t.open_circuit(&c, s, a, now).unwrap();
        t.open_circuit(&c, s, b, now).unwrap();
        assert_eq!(
            t.open_circuit(&c, s, a, now),
            Err(TableError::CircuitsPerPeer)
        );
        t.open_circuit(&c, PeerId::random(), b, now).unwrap();
        assert_eq!(
            t.open_circuit(&c, PeerId::random(), b, now),
            Err(TableError::CircuitsFull)
        );
        assert_eq!(
            t.open_circuit(&c, PeerId::random(), PeerId::random(), now),
            Err(TableError::NoReservation)
        );
        assert_eq!(t.num_circuits(), 3);
        t.close_circuit(s, a);
        assert_eq!(t.num_circuits(), 2);
    }
}
