//! A budget of receive-window growth shared by many streams, across sessions.
//!
//! Each stream's window is bounded on its own (see [`StreamLimits`]), but a relay holds
//! thousands of streams: if every one of them grew to its cap and its far side stopped
//! reading, the relay would hold all those windows at once. A [`WindowBudget`] caps the
//! sum: a stream that has one must take every byte of growth beyond the initial window
//! from it, and gives the bytes back as its window shrinks (once the peer can no longer
//! send them) or when the stream goes away. A stream that finds the budget spent simply
//! keeps the window it has; its circuit then runs at what that window carries per round
//! trip.
//!
//! It is shared state (atomics), not I/O: the session still reads no clock and owns no
//! socket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Total window growth (bytes beyond the initial window) allowed to a group of streams.
/// Cheap to clone: clones share one count.
#[derive(Debug, Clone)]
pub struct WindowBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    limit: AtomicU64,
    in_use: AtomicU64,
    /// Growths cut short or refused because the budget was spent.
    refused: AtomicU64,
    /// Set when a growth was refused; cleared once use falls below three quarters of the
    /// limit. Only the transition is logged, so a spent budget is one log line, not one per
    /// stream and round trip.
    exhausted: AtomicBool,
}

impl WindowBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> WindowBudget {
        WindowBudget(Arc::new(Shared {
            limit: AtomicU64::new(limit),
            in_use: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        }))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.0.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit. Windows already grown beyond a lowered limit stay as they are
    /// until they shrink; no new growth is granted until use is below it.
    pub fn set_limit(&self, limit: u64) {
        self.0.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes of window growth currently granted.
    pub fn in_use(&self) -> u64 {
        self.0.in_use.load(Ordering::Relaxed)
    }

    /// How many growths were cut short or refused for lack of budget.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Takes up to `want` bytes; returns how many were granted. A budget of 0 means no
    /// growth at all, by choice: nothing is counted or logged as refused.
    pub(crate) fn take(&self, want: u32) -> u32 {
        let limit = self.limit();
        if limit == 0 {
            return 0;
        }
        let granted = self
            .0
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let free = limit.saturating_sub(used);
                (free > 0).then(|| used + free.min(u64::from(want)))
            })
            .map_or(0, |used| limit.saturating_sub(used).min(u64::from(want)));
        // granted <= want, a u32.
        let granted = granted as u32;
        if granted < want {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            if !self.0.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = limit,
                    "yamux: receive-window budget spent; streams keep the windows they have \
                     (fast circuits over long round trips run slower) until others shrink"
                );
            }
        }
        granted
    }

    /// Returns `n` bytes taken earlier.
    pub(crate) fn give_back(&self, n: u32) {
        if n == 0 {
            return;
        }
        let before = self
            .0
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(u64::from(n)))
            })
            .unwrap_or(0);
        let now = before.saturating_sub(u64::from(n));
        if now < self.limit() / 4 * 3 && self.0.exhausted.swap(false, Ordering::Relaxed) {
            tracing::info!(in_use = now, "yamux: receive-window budget available again");
        }
    }
}

/// A stream's share of a [`WindowBudget`]: what it took and has not given back. Given back
/// in full when dropped, so no path that forgets a stream leaks budget.
#[derive(Debug)]
pub(crate) struct BudgetShare {
    budget: WindowBudget,
    held: u32,
}

impl BudgetShare {
    pub(crate) fn new(budget: WindowBudget) -> BudgetShare {
        BudgetShare { budget, held: 0 }
    }

    /// Takes up to `want` more bytes; returns how many were granted.
    pub(crate) fn grow(&mut self, want: u32) -> u32 {
        let got = self.budget.take(want);
        self.held = self.held.saturating_add(got);
        got
    }

    /// Gives back up to `n` of the bytes held.
    pub(crate) fn shrink(&mut self, n: u32) {
        let n = n.min(self.held);
        self.held -= n;
        self.budget.give_back(n);
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> u32 {
        self.held
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// Per-stream bounds on what a stream may make us buffer, set with
/// [`Session::stream_set_limits`](super::Session::stream_set_limits). `None` fields keep
/// the session's [`Config`](super::Config) values.
#[derive(Debug, Clone, Default)]
pub struct StreamLimits {
    /// Cap on the receive window: tuning never grows it beyond this (a window already
    /// larger stays as it is).
    pub max_window: Option<u32>,
    /// Bytes per second the window is to cover over the session's round trip: the window
    /// grows (when window-bound) only up to this × the least RTT measured by pings (at
    /// least the initial window, at most `max_window`; no growth before a round trip is
    /// measured), and shrinks back (halved per window read, to the initial one) while its
    /// reader lags. A window only has to cover the bandwidth × delay of its hop; anything
    /// beyond is memory a slower consumer makes us hold.
    pub window_rate: Option<u32>,
    /// Cap on the send buffer: writes beyond it block.
    pub max_send_buffer: Option<usize>,
    /// Shared budget every byte of window growth beyond the initial window is taken from.
    pub window_budget: Option<WindowBudget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_up_to_the_limit_and_counts_refusals() {
        let b = WindowBudget::new(1000);
        let mut x = BudgetShare::new(b.clone());
        let mut y = BudgetShare::new(b.clone());
        assert_eq!(x.grow(600), 600);
        assert_eq!(y.grow(600), 400, "only what is left");
        assert_eq!(b.in_use(), 1000);
        assert_eq!(y.grow(1), 0);
        assert_eq!(b.refused(), 2);
        x.shrink(10_000);
        assert_eq!(x.held(), 0, "never gives back more than it holds");
        assert_eq!(b.in_use(), 400);
        assert_eq!(x.grow(100), 100);
        drop(y);
        drop(x);
        assert_eq!(b.in_use(), 0, "dropping a share gives back what it held");
    }

    #[test]
    fn a_zero_budget_grants_nothing_and_counts_no_refusal() {
        let b = WindowBudget::new(0);
        let mut x = BudgetShare::new(b.clone());
        assert_eq!(x.grow(4096), 0);
        assert_eq!((b.in_use(), b.refused()), (0, 0));
    }

    #[test]
    fn a_lowered_limit_grants_nothing_until_use_falls_below_it() {
        let b = WindowBudget::new(1000);
        let mut x = BudgetShare::new(b.clone());
        assert_eq!(x.grow(800), 800);
        b.set_limit(500);
        assert_eq!(x.grow(10), 0);
        x.shrink(400);
        assert_eq!(x.grow(200), 100);
        assert_eq!(b.in_use(), 500);
    }
}
