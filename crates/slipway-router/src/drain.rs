//! In-flight requests per dyno address, so a dyno that no longer gets new requests can be
//! stopped once the ones it already has are done (`Drains`).
//!
//! The proxy takes an [`InFlight`] for the backend it sends a request to and keeps it until the
//! response body has gone to the client (or the tunnel of an upgraded connection has closed).
//! The dyno manager, after traffic moved to a new release, waits with [`Drains::drained`] for
//! an old dyno's count to reach zero (bounded by its drain timeout) before it sends SIGTERM.
//! Keyed by address, not dyno name: an old and a new `web.1` serve at the same time.
//!
//! Each router worker counts in its own slot ([`Drains::worker`]), so two workers never take
//! the same lock per request; readers add the slots up. Releases wake readers only while one
//! is waiting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::addr_map::AddrMap;

/// The router's in-flight request counts, shared with whoever stops dynos. Cheap to clone; a
/// clone counts in the same slot, [`Drains::worker`] in a new one.
#[derive(Clone)]
pub struct Drains {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

struct Shared {
    /// Every worker's slot (a few; only readers walk them).
    slots: Mutex<Vec<Arc<Slot>>>,
    /// How many [`Drains::drained`] calls are waiting: releases notify only then.
    waiters: AtomicUsize,
    /// Woken whenever a count goes down while someone waits.
    released: Notify,
}

/// One worker's counts.
struct Slot {
    counts: Mutex<AddrMap<usize>>,
    shared: Arc<Shared>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, AddrMap<usize>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Drains {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            slots: Mutex::new(Vec::new()),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
        });
        Self::with_slot(shared)
    }
}

impl std::fmt::Debug for Drains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drains")
            .field("slots", &self.slots().len())
            .finish()
    }
}

/// How waiting for a dyno to drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// No request to it is in flight.
    Idle,
    /// The drain timeout passed with this many requests still in flight.
    TimedOut { in_flight: usize },
}

/// Counts one waiting reader while it lives.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drains {
    fn with_slot(shared: Arc<Shared>) -> Self {
        let slot = Arc::new(Slot {
            counts: Mutex::new(AddrMap::default()),
            shared: shared.clone(),
        });
        shared
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        Self { shared, slot }
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.shared
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The same counts for another router worker: it counts in a slot of its own.
    pub fn worker(&self) -> Drains {
        Self::with_slot(self.shared.clone())
    }

    /// Counts a request to `addr` as in flight until the returned guard is dropped.
    pub fn begin(&self, addr: SocketAddr) -> InFlight {
        *self.slot.lock().entry(addr).or_insert(0) += 1;
        InFlight {
            slot: self.slot.clone(),
            addr,
        }
    }

    /// Requests to `addr` in flight now, over all workers.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.slots()
            .iter()
            .map(|slot| slot.lock().get(&addr).copied().unwrap_or(0))
            .sum()
    }

    /// Waits until no request to `addr` is in flight, or `timeout` has passed.
    pub async fn drained(&self, addr: SocketAddr, timeout: Duration) -> Drained {
        let deadline = tokio::time::Instant::now() + timeout;
        // Counted before any count is read: a release after that read sees this waiter.
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.shared);
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            // Registered before the count is read, so a release in between is not missed.
            released.as_mut().enable();
            let in_flight = self.in_flight(addr);
            if in_flight == 0 {
                return Drained::Idle;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Drained::TimedOut {
                    in_flight: self.in_flight(addr),
                };
            }
        }
    }
}

/// One request in flight to a dyno; dropping it ends it.
pub struct InFlight {
    slot: Arc<Slot>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut counts = self.slot.lock();
            if let Some(n) = counts.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.addr);
                }
            }
        }
        // The count went down under the slot's lock; a reader that read it before counted
        // itself a waiter before that read (SeqCst both ways), so it is seen here.
        if self.slot.shared.waiters.load(Ordering::SeqCst) > 0 {
            self.slot.shared.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_request_of_that_address_only() {
        let drains = Drains::default();
        let first = drains.begin(addr(1));
        let second = drains.begin(addr(1));
        let other = drains.begin(addr(2));
        assert_eq!(drains.in_flight(addr(1)), 2);
        let waiter = {
            let drains = drains.clone();
            tokio::spawn(async move { drains.drained(addr(1), Duration::from_secs(30)).await })
        };
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(second);
        assert_eq!(waiter.await.expect("join"), Drained::Idle);
        assert_eq!(drains.in_flight(addr(2)), 1, "{other:p}", other = &other);
        drop(other);
        assert_eq!(drains.in_flight(addr(2)), 0);
    }

    #[tokio::test]
    async fn drained_gives_up_after_the_timeout() {
        let drains = Drains::default();
        let _stuck = drains.begin(addr(3));
        let waited = drains.drained(addr(3), Duration::from_millis(50)).await;
        assert_eq!(waited, Drained::TimedOut { in_flight: 1 });
        assert_eq!(
            drains.drained(addr(4), Duration::from_millis(50)).await,
            Drained::Idle
        );
    }

    #[tokio::test]
    async fn workers_count_in_their_own_slots_and_readers_see_the_sum() {
        let drains = Drains::default();
        let other_worker = drains.worker();
        let first = drains.begin(addr(5));
        let second = other_worker.begin(addr(5));
        assert_eq!(drains.in_flight(addr(5)), 2);
        assert_eq!(other_worker.in_flight(addr(5)), 2);
        let waiter = {
            let drains = drains.clone();
            tokio::spawn(async move { drains.drained(addr(5), Duration::from_secs(30)).await })
        };
        drop(first);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the other worker's request is in flight"
        );
        drop(second);
        assert_eq!(waiter.await.expect("join"), Drained::Idle);
        assert_eq!(drains.in_flight(addr(5)), 0);
    }
}
