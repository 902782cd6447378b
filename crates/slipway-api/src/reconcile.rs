//! The periodic reconciliation pass (`--reconcile-interval`, 15 s by default): every app's
//! current release and formation, from the store, compared with what the dyno manager runs
//! (`slipway_runtime::DynoManager::reconcile`), which corrects the drift and says so in the
//! app's log (`heroku[web.1]: Reconciling: ...`). An app whose `Release` lock is held (a
//! deploy, release phase, config change, rollback, scale or restart under way) is skipped this
//! time, as the runtime skips one with a rollout under way: the pass never fights either.
//! When a correction replaces dynos of a stale release, the lock is held until that rollout
//! settles, and an unhealthy one fails the release as a deploy's would (`control::settle`).
//!
//! Each finished pass is counted ([`Passes`], in `GET /health`), so tests and operators can
//! see that passes happen without waiting a fixed time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use slipway_runtime::Reconciled;
use tokio::sync::watch;

use crate::control;
use crate::state::{AppLock, Shared};

/// How often the pass runs unless `--reconcile-interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// Finished passes and the corrections they made, since the server started.
#[derive(Debug, Default)]
pub struct Passes {
    passes: AtomicU64,
    corrections: AtomicU64,
    /// How long the last pass took, in microseconds.
    last_pass_us: AtomicU64,
}

impl Passes {
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }

    pub fn corrections(&self) -> u64 {
        self.corrections.load(Ordering::SeqCst)
    }

    /// How long the last pass took (checking every app, not waiting for the rollouts it
    /// started).
    pub fn last_pass(&self) -> Duration {
        Duration::from_micros(self.last_pass_us.load(Ordering::SeqCst))
    }

    fn finished(&self, corrections: usize, took: Duration) {
        self.last_pass_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.corrections
            .fetch_add(corrections as u64, Ordering::SeqCst);
        self.passes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs a pass every `interval` (the first one `interval` after start-up, which converges
/// every app itself) until `stop` turns true.
pub fn spawn(state: Shared, interval: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                pass(&state).await;
            }
        },
        tracing::info_span!("reconcile"),
    ));
}

/// One pass over every app.
pub async fn pass(state: &Shared) {
    let started = std::time::Instant::now();
    let apps = match state.store.list_apps().await {
        Ok(apps) => apps,
        Err(e) => {
            tracing::warn!(error = %e, "reconciliation pass: could not list the apps");
            return;
        }
    };
    let mut corrected = 0;
    for app in apps {
        let lock = state.app_lock(AppLock::Release, &app.id);
        let Ok(guard) = lock.try_lock_owned() else {
            // A deploy, release, scale or restart holds the app: it converges it itself.
            continue;
        };
        let (record, release, specs) = match control::desired_release(state, &app.id).await {
            Ok(Some(desired)) => desired,
            // Nothing deployed yet.
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(app = %app.name, error = ?e, "reconciliation pass: could not read the app's release");
                continue;
            }
        };
        let new_release = control::is_new_release(state, &app.id, release.version);
        let Reconciled::Corrected {
            corrections,
            rollout,
        } = state.dynos.reconcile(release, &specs)
        else {
            continue;
        };
        corrected += corrections.len();
        if let Some(rollout) = rollout {
            // Held until the rollout settles, so no deploy or scale interleaves with it.
            let (state, app) = (state.clone(), app.clone());
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(e) =
                    control::settle(&state, &app.id, &record, new_release, rollout).await
                {
                    tracing::warn!(app = %app.name, error = ?e, "reconciliation: could not settle a rollout");
                }
            });
        }
    }
    state.reconcile.finished(corrected, started.elapsed());
}
