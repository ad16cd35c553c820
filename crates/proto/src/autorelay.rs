//! Autorelay's choice of relays: which candidates to reserve on, by measured
//! round-trip time, with hysteresis so that a slightly faster newcomer does not
//! make us flap between relays. Sans-IO: the glue reports candidates, RTTs and
//! reservation outcomes with `Instant`s and carries out the [`Action`]s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;

/// Settings of the chooser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChooserConfig {
    /// How many reservations to hold (go-libp2p's autorelay keeps 2 at random; we keep 3 by RTT).
    pub want: usize,
    /// A newcomer replaces the slowest held relay only if its RTT is below this share of it…
    pub switch_ratio: f64,
    /// …and at least this much lower.
    pub switch_min_gain: Duration,
    /// No replacement within this time after the previous one.
    pub switch_cooldown: Duration,
    /// After a failed or lost reservation, leave that relay alone this long at first;
    /// the wait doubles with each failure in a row (a relay that restarts is back in
    /// seconds, one that is gone costs little).
    pub failure_backoff: Duration,
    /// The longest wait after repeated failures.
    pub max_failure_backoff: Duration,
}

impl Default for ChooserConfig {
    fn default() -> Self {
        ChooserConfig {
            want: 3,
            switch_ratio: 0.7,
            switch_min_gain: Duration::from_millis(5),
            switch_cooldown: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(2),
            max_failure_backoff: Duration::from_secs(60),
        }
    }
}

/// What the glue should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reserve on this relay (then report [`Chooser::reservation_accepted`] or `_failed`).
    Reserve(PeerId),
    /// Give up the reservation on this relay (a faster one replaced it).
    Release(PeerId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Reserving,
    Reserved,
    BackedOff(Instant),
}

#[derive(Debug, Clone)]
struct Candidate {
    rtt: Option<Duration>,
    state: State,
    /// Failures in a row (reset when a reservation holds).
    failures: u32,
}

/// The chooser.
#[derive(Debug, Clone)]
pub struct Chooser {
    config: ChooserConfig,
    candidates: HashMap<PeerId, Candidate>,
    last_switch: Option<Instant>,
}

impl Chooser {
    /// A chooser with no candidates.
    pub fn new(config: ChooserConfig) -> Chooser {
        Chooser {
            config,
            candidates: HashMap::new(),
            last_switch: None,
        }
    }

    /// A relay we could reserve on (from the DHT, identify, or configuration).
    pub fn add_candidate(&mut self, peer: PeerId) {
        self.candidates.entry(peer).or_insert(Candidate {
            rtt: None,
            state: State::Idle,
            failures: 0,
        });
    }

    /// Whether `peer` is known.
    pub fn is_candidate(&self, peer: &PeerId) -> bool {
        self.candidates.contains_key(peer)
    }

    /// Candidates without an RTT yet (to measure).
    pub fn unmeasured(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.rtt.is_none())
            .map(|(p, _)| *p)
            .collect();
        v.sort();
        v
    }

    /// A measured round trip to `peer`. Repeated samples keep the lowest of the
    /// old value and the new one smoothed, so a single slow ping does not demote a relay.
    pub fn record_rtt(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(c) = self.candidates.get_mut(peer) {
            c.rtt = Some(match c.rtt {
                None => rtt,
                Some(old) => (old * 3 + rtt) / 4,
            });
        }
    }

    /// The RTT we hold for `peer`.
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.candidates.get(peer).and_then(|c| c.rtt)
    }

    /// `peer` could not be measured or reached: back off from it.
    pub fn unreachable(&mut self, peer: &PeerId, now: Instant) {
        let (base, max) = (self.config.failure_backoff, self.config.max_failure_backoff);
        if let Some(c) = self.candidates.get_mut(peer) {
            let wait = base.saturating_mul(1u32 << c.failures.min(16)).min(max);
            c.failures = c.failures.saturating_add(1);
            c.state = State::BackedOff(now + wait);
        }
    }

    /// The relay granted the reservation.
    pub fn reservation_accepted(&mut self, peer: &PeerId) {
        if let Some(c) = self.candidates.get_mut(peer) {
            c.state = State::Reserved;
            c.failures = 0;
        }
    }

    /// The reservation was refused, failed or lost: back off and let others take its place.
    pub fn reservation_failed(&mut self, peer: &PeerId, now: Instant) {
        self.unreachable(peer, now);
    }

    /// Relays we hold (or are getting) a reservation on, fastest first.
    pub fn chosen(&self) -> Vec<PeerId> {
        let mut v: Vec<(PeerId, Option<Duration>)> = self
            .candidates
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Reserved | State::Reserving))
            .map(|(p, c)| (*p, c.rtt))
            .collect();
        v.sort_by_key(|(p, r)| (r.unwrap_or(Duration::MAX), *p));
        v.into_iter().map(|(p, _)| p).collect()
    }

    /// The next thing to do at `now`; call until `None` after every change.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        for c in self.candidates.values_mut() {
            if let State::BackedOff(until) = c.state {
                if until <= now {
                    c.state = State::Idle;
                }
            }
        }
        let held: Vec<(PeerId, Duration, State)> = self
            .candidates
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Reserved | State::Reserving))
            .map(|(p, c)| (*p, c.rtt.unwrap_or(Duration::MAX), c.state))
            .collect();
        // Fastest idle, measured candidate (ties broken by peer id: deterministic).
        let best_idle = self
            .candidates
            .iter()
            .filter(|(_, c)| c.state == State::Idle)
            .filter_map(|(p, c)| c.rtt.map(|r| (r, *p)))
            .min();
        if held.len() < self.config.want {
            let (_, peer) = best_idle?;
            self.set(&peer, State::Reserving);
            return Some(Action::Reserve(peer));
        }
        // Over the target (a replacement was accepted): release the slowest reserved one.
        let reserved: Vec<&(PeerId, Duration, State)> =
            held.iter().filter(|h| h.2 == State::Reserved).collect();
        if reserved.len() > self.config.want {
            let slowest = reserved.iter().max_by_key(|h| (h.1, h.0))?;
            let peer = slowest.0;
            self.set(&peer, State::Idle);
            return Some(Action::Release(peer));
        }
        if held.len() > self.config.want || held.iter().any(|h| h.2 == State::Reserving) {
            return None;
        }
        // Replace the slowest held relay by a clearly faster newcomer.
        if let Some(last) = self.last_switch {
            if now.saturating_duration_since(last) < self.config.switch_cooldown {
                return None;
            }
        }
        let (new_rtt, peer) = best_idle?;
        let worst = held.iter().map(|h| h.1).max()?;
        let clearly_faster = new_rtt.as_secs_f64() < worst.as_secs_f64() * self.config.switch_ratio
            && worst.saturating_sub(new_rtt) >= self.config.switch_min_gain;
        if !clearly_faster {
            return None;
        }
        self.last_switch = Some(now);
        self.set(&peer, State::Reserving);
        Some(Action::Reserve(peer))
    }

    fn set(&mut self, peer: &PeerId, state: State) {
        if let Some(c) = self.candidates.get_mut(peer) {
            c.state = state;
        }
    }

    /// When a backed-off candidate becomes eligible again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.candidates
            .values()
            .filter_map(|c| match c.state {
                State::BackedOff(t) => Some(t),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs the chooser, accepting every reservation at once; returns the actions.
    fn settle(c: &mut Chooser, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = c.poll_action(now) {
            if let Action::Reserve(p) = a {
                c.reservation_accepted(&p);
            }
            out.push(a);
            assert!(out.len() < 100, "chooser does not settle: {out:?}");
        }
        out
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// Adds the first peers of `p` as candidates, measured at `rtts` (ms) in that order.
    fn measured(c: &mut Chooser, p: &[PeerId], rtts: &[u64]) {
        for (peer, rtt) in p.iter().zip(rtts) {
            c.add_candidate(*peer);
            c.record_rtt(peer, ms(*rtt));
        }
    }

    #[test]
    fn reserves_on_the_lowest_latency_relays() {
        let now = Instant::now();
        let mut c = Chooser::new(ChooserConfig::default());
        let p = peers(4);
        measured(&mut c, &p, &[120, 10, 60, 30]);
        let actions = settle(&mut c, now);
        assert_eq!(
            actions,
            vec![
                Action::Reserve(p[1]),
                Action::Reserve(p[3]),
                Action::Reserve(p[2])
            ]
        );
        assert_eq!(c.chosen(), vec![p[1], p[3], p[2]]);
    }

    #[test]
    fn unmeasured_candidates_wait_for_their_rtt() {
        let now = Instant::now();
        let mut c = Chooser::new(ChooserConfig::default());
        let p = peers(2);
        c.add_candidate(p[0]);
        c.add_candidate(p[1]);
        assert_eq!(c.poll_action(now), None);
        assert_eq!(c.unmeasured().len(), 2);
        c.record_rtt(&p[1], ms(20));
        assert_eq!(c.poll_action(now), Some(Action::Reserve(p[1])));
    }

    #[test]
    fn a_lost_relay_is_replaced_by_the_next_fastest_and_retried_after_backoff() {
        let now = Instant::now();
        let cfg = ChooserConfig::default();
        let mut c = Chooser::new(cfg);
        let p = peers(4);
        measured(&mut c, &p, &[10, 20, 30, 40]);
        settle(&mut c, now);
        c.reservation_failed(&p[0], now);
        assert_eq!(settle(&mut c, now), vec![Action::Reserve(p[3])]);
        // Back after the backoff, and clearly faster than the slowest held (40 ms): it returns.
        let later = now + cfg.failure_backoff + cfg.switch_cooldown;
        assert_eq!(
            settle(&mut c, later),
            vec![Action::Reserve(p[0]), Action::Release(p[3])]
        );
        assert_eq!(c.chosen(), vec![p[0], p[1], p[2]]);
    }

    #[test]
    fn hysteresis_keeps_relays_unless_a_newcomer_is_clearly_faster() {
        let now = Instant::now();
        let cfg = ChooserConfig::default();
        let mut c = Chooser::new(cfg);
        let p = peers(5);
        measured(&mut c, &p, &[30, 40, 50]);
        settle(&mut c, now);
        // 45 ms is faster than 50 ms but not clearly: no switch.
        c.add_candidate(p[3]);
        c.record_rtt(&p[3], ms(45));
        assert_eq!(settle(&mut c, now + cfg.switch_cooldown), vec![]);
        // 20 ms is: the 50 ms relay goes, once the new one is accepted.
        c.add_candidate(p[4]);
        c.record_rtt(&p[4], ms(20));
        let t = now + cfg.switch_cooldown;
        assert_eq!(c.poll_action(t), Some(Action::Reserve(p[4])));
        assert_eq!(
            c.poll_action(t),
            None,
            "nothing is released before the new reservation holds"
        );
        c.reservation_accepted(&p[4]);
        assert_eq!(c.poll_action(t), Some(Action::Release(p[2])));
        assert_eq!(c.chosen(), vec![p[4], p[0], p[1]]);
    }

    #[test]
    fn no_flapping_within_the_cooldown() {
        let now = Instant::now();
        let cfg = ChooserConfig::default();
        let mut c = Chooser::new(cfg);
        let p = peers(5);
        measured(&mut c, &p, &[30, 40, 50]);
        settle(&mut c, now);
        c.add_candidate(p[3]);
        c.record_rtt(&p[3], ms(5));
        assert_eq!(
            settle(&mut c, now),
            vec![Action::Reserve(p[3]), Action::Release(p[2])]
        );
        c.add_candidate(p[4]);
        c.record_rtt(&p[4], ms(1));
        assert_eq!(
            settle(&mut c, now + ms(1000)),
            vec![],
            "second switch held back by the cooldown"
        );
        assert_eq!(
            settle(&mut c, now + cfg.switch_cooldown),
            vec![Action::Reserve(p[4]), Action::Release(p[1])]
        );
    }

    #[test]
    fn failure_backoff_starts_short_and_doubles() {
        let now = Instant::now();
        let cfg = ChooserConfig {
            want: 1,
            ..Default::default()
        };
        let mut c = Chooser::new(cfg);
        let p = PeerId::random();
        c.add_candidate(p);
        c.record_rtt(&p, ms(10));
        assert_eq!(c.poll_action(now), Some(Action::Reserve(p)));
        c.reservation_failed(&p, now);
        assert_eq!(c.poll_timeout(), Some(now + cfg.failure_backoff));
        assert_eq!(
            c.poll_action(now + cfg.failure_backoff),
            Some(Action::Reserve(p)),
            "a restarted relay is retried within seconds"
        );
        let t = now + cfg.failure_backoff;
        c.reservation_failed(&p, t);
        assert_eq!(c.poll_timeout(), Some(t + cfg.failure_backoff * 2));
        for _ in 0..10 {
            c.reservation_failed(&p, t);
        }
        assert_eq!(c.poll_timeout(), Some(t + cfg.max_failure_backoff));
        // Success resets the count.
        c.reservation_accepted(&p);
        c.reservation_failed(&p, t);
        assert_eq!(c.poll_timeout(), Some(t + cfg.failure_backoff));
    }

    #[test]
    fn smoothing_keeps_one_slow_sample_from_demoting_a_relay() {
        let mut c = Chooser::new(ChooserConfig::default());
        let p = PeerId::random();
        c.add_candidate(p);
        c.record_rtt(&p, ms(10));
        c.record_rtt(&p, ms(90));
        assert_eq!(c.rtt(&p), Some(ms(30)));
    }
}
