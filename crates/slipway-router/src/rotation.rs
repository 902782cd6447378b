//! Which of an app's up dynos to try, in what order: round robin, minus the dynos that
//! recently refused a connection (they are out of rotation for a few seconds).
//!
//! This is the router's own state, kept beside the routes the [`crate::Resolver`] gives: a
//! dyno can be up for the dyno manager and still refuse connections (it closed its socket,
//! its backlog is full), and the router learns that first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries beyond this many trigger a sweep of the expired ones (bounded memory).
const SWEEP_AT: usize = 1024;

/// One router worker's rotation: its own round-robin turn (no counter shared between
/// workers per request), the refusals shared by all workers.
pub(crate) struct Rotation {
    next: AtomicUsize,
    out_for: Duration,
    refusals: Arc<Refusals>,
}

#[derive(Default)]
struct Refusals {
    /// How many entries `until` has: while none, no request takes its lock (every router
    /// worker shares this state).
    entries: AtomicUsize,
    /// Dyno address -> when it may take requests again.
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Rotation {
    pub(crate) fn new(out_for: Duration) -> Self {
        Self {
            next: AtomicUsize::new(0),
            out_for,
            refusals: Arc::default(),
        }
    }

    /// The rotation for another worker: the same refusals, a turn of its own.
    pub(crate) fn worker(&self) -> Self {
        Self {
            next: AtomicUsize::new(0),
            out_for: self.out_for,
            refusals: self.refusals.clone(),
        }
    }

    /// The order in which to try `backends` for one request: round robin from the next
    /// turn, dynos in rotation first, then those out of rotation (a last resort: they may
    /// be back, and trying beats failing without trying).
    pub(crate) fn order(&self, backends: &[(String, SocketAddr)], now: Instant) -> Vec<usize> {
        let n = backends.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = (0..n).map(|i| (first + i) % n);
        if self.refusals.entries.load(Ordering::Acquire) == 0 {
            return turn.collect();
        }
        let refused = self.lock();
        if refused.is_empty() {
            return turn.collect();
        }
        let is_out = |i: &usize| {
            refused
                .get(&backends[*i].1)
                .is_some_and(|until| *until > now)
        };
        let (out, mut order): (Vec<usize>, Vec<usize>) = turn.partition(is_out);
        order.extend(out);
        order
    }

    /// `addr` refused a connection: out of rotation until `now + out_for`.
    pub(crate) fn refused(&self, addr: SocketAddr, now: Instant) {
        let mut refused = self.lock();
        if refused.len() >= SWEEP_AT {
            refused.retain(|_, until| *until > now);
        }
        refused.insert(addr, now + self.out_for);
        self.refusals
            .entries
            .store(refused.len(), Ordering::Release);
    }

    /// `addr` took a connection: back in rotation at once.
    pub(crate) fn accepted(&self, addr: SocketAddr) {
        if self.refusals.entries.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut refused = self.lock();
        refused.remove(&addr);
        self.refusals
            .entries
            .store(refused.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        // The map holds only deadlines; a panic elsewhere cannot leave it inconsistent.
        self.refusals
            .until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynos(n: u16) -> Vec<(String, SocketAddr)> {
        (1..=n)
            .map(|i| {
                (
                    format!("web.{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                )
            })
            .collect()
    }

    #[test]
    fn round_robin_skips_refusing_dynos_until_their_time_is_up() {
        let rotation = Rotation::new(Duration::from_secs(5));
        let backends = dynos(3);
        let t0 = Instant::now();
        assert_eq!(rotation.order(&backends, t0), [0, 1, 2]);
        assert_eq!(rotation.order(&backends, t0), [1, 2, 0]);
        rotation.refused(backends[2].1, t0);
        // web.3 goes last, whatever the turn.
        assert_eq!(rotation.order(&backends, t0), [0, 1, 2]);
        assert_eq!(rotation.order(&backends, t0), [0, 1, 2]);
        assert_eq!(rotation.order(&backends, t0), [1, 0, 2]);
        // Still out just before the 5 s are up; back in rotation after.
        let later = t0 + Duration::from_millis(4_999);
        assert_eq!(rotation.order(&backends, later), [0, 1, 2]);
        let after = t0 + Duration::from_secs(5) + Duration::from_millis(1);
        assert_eq!(rotation.order(&backends, after), [0, 1, 2]);
        assert_eq!(rotation.order(&backends, after), [1, 2, 0]);
        assert_eq!(rotation.order(&backends, after), [2, 0, 1]);
    }

    #[test]
    fn a_dyno_that_accepts_again_is_back_at_once() {
        let rotation = Rotation::new(Duration::from_secs(5));
        let backends = dynos(2);
        let t0 = Instant::now();
        rotation.refused(backends[0].1, t0);
        assert_eq!(rotation.order(&backends, t0), [1, 0]);
        rotation.accepted(backends[0].1);
        assert_eq!(rotation.order(&backends, t0), [1, 0]);
        assert_eq!(rotation.order(&backends, t0), [0, 1]);
    }

    #[test]
    fn workers_share_refusals_and_keep_their_own_turn() {
        let rotation = Rotation::new(Duration::from_secs(5));
        let other = rotation.worker();
        let backends = dynos(3);
        let t0 = Instant::now();
        assert_eq!(rotation.order(&backends, t0), [0, 1, 2]);
        assert_eq!(other.order(&backends, t0), [0, 1, 2]);
        rotation.refused(backends[0].1, t0);
        assert_eq!(other.order(&backends, t0), [1, 2, 0]);
        other.accepted(backends[0].1);
        assert_eq!(rotation.order(&backends, t0), [1, 2, 0]);
        assert_eq!(rotation.order(&backends, t0), [2, 0, 1]);
    }
}
