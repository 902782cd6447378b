//! Moving an app's traffic from its running dynos to the ones a converge started.
//!
//! The new dynos start beside the old ones. The router sends traffic only to routable dynos
//! (up, and past their health checks: `health.rs`) of the newest release that has any. Once
//! every new web dyno is routable the rollout is [`RolloutOutcome::Healthy`]: the old dynos
//! are taken out of routing (`draining`), the router is asked to let the requests they have
//! finish ([`DrainWatch`], bounded by the drain timeout), and only then they get SIGTERM.
//!
//! If a new web dyno fails its health checks, or crashes (or R10s) before it is routable while
//! the old release still serves, the rollout is [`RolloutOutcome::Unhealthy`]: the new dynos
//! are stopped, the old ones stay, and the app's desired state goes back to what it was, so
//! the caller only has to record the failure. A crash with nothing serving to protect (a first
//! deploy, or an app already crashed) is not a failed rollout: as on Heroku, it shows at run
//! time (H10) and the next push fixes it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::backend::BoxFuture;
use crate::health::{self, Health};
use crate::lifecycle::Lifecycle;
use crate::{Desired, Dyno, DynoEvent, Inner};

/// How a converge ended for the app's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutOutcome {
    /// Every new web dyno is routable (or there were none to wait for); the old ones drain.
    Healthy,
    /// The new dynos never became healthy; they are stopped and the old ones keep serving.
    /// `reason` names the dyno, the release and what failed, e.g.
    /// `web.1 of v3 failed health check /health: 500 (5 attempts)`.
    Unhealthy { reason: String },
}

/// A converge in progress: [`Rollout::outcome`] waits for its end. Dropping it does not
/// cancel anything.
pub struct Rollout {
    rx: watch::Receiver<Option<RolloutOutcome>>,
}

impl Rollout {
    pub(crate) fn done(outcome: RolloutOutcome) -> Self {
        Self {
            rx: watch::channel(Some(outcome)).1,
        }
    }

    /// Waits until the new web dynos are routable or the rollout failed.
    pub async fn outcome(mut self) -> RolloutOutcome {
        match self.rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(RolloutOutcome::Healthy),
            Err(_) => RolloutOutcome::Unhealthy {
                reason: "the rollout was interrupted (the server is stopping)".into(),
            },
        }
    }
}

/// Knows when a dyno that left routing has no request left (the router's in-flight counts).
pub trait DrainWatch: Send + Sync {
    /// Resolves once no new request can go to `addr` and none is in flight there, or after
    /// `timeout`, with the number of requests still in flight then (0: drained).
    fn drain(&self, app_id: &str, addr: SocketAddr, timeout: Duration)
        -> BoxFuture<'static, usize>;
}

/// What one converge changed, for [`run`].
pub(crate) struct Plan {
    pub(crate) app_id: String,
    pub(crate) version: i64,
    pub(crate) started: Vec<Arc<Dyno>>,
    pub(crate) retire: Vec<Arc<Dyno>>,
    /// An older release was serving: a crash of the new one fails the rollout.
    pub(crate) protect: bool,
    /// The app's desired state before this converge, restored if it fails.
    pub(crate) previous: Option<Desired>,
    pub(crate) events: broadcast::Receiver<DynoEvent>,
}

/// Starts the rollout of `plan` in the background.
pub(crate) fn start(inner: Arc<Inner>, plan: Plan) -> Rollout {
    let (tx, rx) = watch::channel(None);
    let span = tracing::info_span!("rollout", app = %plan.app_id, version = plan.version);
    // Under way until its old (or failed) dynos are stopped.
    let rolling = inner.rollout_started(&plan.app_id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _rolling = rolling;
            let Plan {
                app_id,
                version,
                started,
                retire,
                protect,
                previous,
                events,
            } = plan;
            let web: Vec<Arc<Dyno>> = started
                .iter()
                .filter(|d| d.process_type == "web")
                .cloned()
                .collect();
            let outcome = wait_healthy(&inner, &web, protect, events).await;
            match &outcome {
                RolloutOutcome::Healthy => {
                    let _ = tx.send(Some(outcome.clone()));
                    retire_all(&inner, &retire).await;
                }
                RolloutOutcome::Unhealthy { reason } => {
                    tracing::warn!(%reason, "rollout failed; the old dynos keep serving");
                    {
                        let mut desired = inner.lock_desired();
                        if desired.get(&app_id).map(|d| d.release.version) == Some(version) {
                            match previous {
                                Some(p) => desired.insert(app_id.clone(), p),
                                None => desired.remove(&app_id),
                            };
                        }
                    }
                    for d in &retire {
                        d.retiring.store(false, Ordering::SeqCst);
                    }
                    inner.events.send(DynoEvent::RolloutFailed {
                        app_id: app_id.clone(),
                        version,
                        reason: crate::events::bounded(reason.clone()),
                    });
                    let _ = tx.send(Some(outcome.clone()));
                    retire_all(&inner, &started).await;
                }
            }
        },
        span,
    ));
    Rollout { rx }
}

/// Waits until every dyno of `web` is routable, one fails its checks, or (when `protect`)
/// one crashes first.
async fn wait_healthy(
    inner: &Inner,
    web: &[Arc<Dyno>],
    protect: bool,
    mut events: broadcast::Receiver<DynoEvent>,
) -> RolloutOutcome {
    let Some(first) = web.first() else {
        return RolloutOutcome::Healthy;
    };
    let limit = inner.boot_timeout(&first.release)
        + health::budget(&first.release.healthchecks)
        + Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + limit;
    let mut crashed: Option<String> = None;
    loop {
        let mut all = true;
        for d in web {
            if let Health::Failed { reason } = d.health() {
                return RolloutOutcome::Unhealthy { reason };
            }
            let status = *d.lock_status();
            if *d.done_rx.borrow() {
                crashed.get_or_insert_with(|| {
                    format!(
                        "{} of v{} stopped before it came up",
                        d.name, d.release.version
                    )
                });
            }
            if status.lifecycle == Lifecycle::Crashed {
                crashed.get_or_insert_with(|| crash_reason(d));
            }
            all &= d.routable(&status);
        }
        if all {
            return RolloutOutcome::Healthy;
        }
        if let Some(reason) = crashed.take() {
            if protect {
                return RolloutOutcome::Unhealthy { reason };
            }
            // Nothing to protect: the crash shows at run time, as on Heroku.
            return RolloutOutcome::Healthy;
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(DynoEvent::Changed { dyno_id, to: Lifecycle::Crashed, .. }) => {
                    if let Some(d) = web.iter().find(|d| d.id == dyno_id) {
                        crashed.get_or_insert_with(|| crash_reason(d));
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return RolloutOutcome::Unhealthy { reason: "the dyno manager stopped".into() };
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return RolloutOutcome::Unhealthy {
                    reason: format!(
                        "{} of v{} did not become healthy within {} s",
                        first.name,
                        first.release.version,
                        limit.as_secs()
                    ),
                };
            }
        }
    }
}

fn crash_reason(d: &Dyno) -> String {
    format!(
        "{} of v{} crashed before it came up (`slipway logs --dyno {}` shows why)",
        d.name, d.release.version, d.name
    )
}

/// Takes `dynos` out of routing, lets their requests finish, and stops them.
async fn retire_all(inner: &Arc<Inner>, dynos: &[Arc<Dyno>]) {
    let drains = dynos.iter().map(|d| retire(inner.clone(), d.clone()));
    futures_join_all(drains).await;
}

async fn retire(inner: Arc<Inner>, d: Arc<Dyno>) {
    d.retiring.store(true, Ordering::SeqCst);
    let addr = d.lock_status().addr;
    let watch = inner.drain_watch();
    if let (true, Some(addr), Some(watch)) = (d.process_type == "web", addr, watch) {
        d.draining.store(true, Ordering::SeqCst);
        inner.routing_changed(&d);
        let timeout = inner.cfg.drain_timeout;
        let left = watch.drain(&d.app_id, addr, timeout).await;
        if left > 0 {
            inner.events.send(DynoEvent::DrainTimedOut {
                app_id: d.app_id.clone(),
                name: d.name.clone(),
                left,
                secs: timeout.as_secs(),
            });
        }
    }
    d.request_stop();
    d.stopped().await;
}

/// Runs the futures together and waits for all of them (tokio has no `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
