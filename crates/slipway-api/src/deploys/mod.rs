//! The deploy runner: puts a slug live on a target and checks it there, step by step in
//! Wercker's order, rolling back on its own when a check fails after the release went live.
//!
//! - [`start`] records a deploy (`queued`) and runs it in the background: one deploy at a
//!   time per target (a per-app queue; later ones wait and can be cancelled while they do).
//!   A deploy that is only watching (its log test and heartbeat) ends its watch early when a
//!   newer deploy of the same target is queued, so the queue never waits a watch window out.
//! - Steps ([`Step`]): setup, pre-deploy (maintenance on; `scripts.dokku.predeploy` in a
//!   one-off dyno of the new slug with the target's config and secrets), deploy (the release
//!   goes live through the release ledger, with its release phase; the step waits for the new
//!   web dynos), post-deploy (`scripts.dokku.postdeploy`; maintenance off), smoke
//!   (`slipway.smoke` commands on the server as the app's build user, with `$URL`,
//!   `$SLIPWAY_RELEASE`, `$SLIPWAY_STAGE`), log test and heartbeat (side by side over the watch
//!   window), rollback (only when a step failed after the release went live), report (stored,
//!   `app[deploy]` log lines, webhooks).
//! - [`follow`] and [`wait`] read a deploy's transcript live; [`cancel`] stops one;
//!   [`recover`] (server start) marks deploys a stopped server left unfinished `interrupted`.
//!
//! - [`hosts`]: the same runner for a host target of `slipway-hosts` (a pipeline stage's own
//!   hosts): each step done the way hosts allow (see its table).
//!
//! Secrets of the target are masked (`[masked]`) in every line a deploy writes: its stream,
//! stored step output, the logs and the webhook report.

mod checks;
pub mod hosts;
mod model;
mod runner;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use slipway_core::AppJsonError;
use slipway_store::StoreError;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use model::{
    DeployId, DeployOptions, DeployRequest, DeploySource, DeployStatus, Masker, Step, StepStatus,
};
pub(crate) use runner::spec_of_slug_file;
pub use webhooks::check_webhook_url;

use crate::state::Shared;

/// Each step's output kept in the store (and in the report) is cut at this size.
pub const MAX_STEP_OUTPUT: usize = 64 * 1024;
/// The last line of a followed deploy's text stream: `<prefix><status>`.
pub const RESULT_PREFIX: &str = "\u{1e}slipway-deploy-result: ";
/// Lines of a running deploy's transcript kept in memory for late followers.
const MAX_TRANSCRIPT: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("Couldn't find that deploy: {0}.")]
    NotFound(String),
    #[error("Deploy #{number} has finished ({status}); only a queued or running deploy can be cancelled.")]
    Finished { number: i64, status: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    AppJson(#[from] AppJsonError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a follower of a deploy receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A line of the transcript (already masked).
    Line(String),
    /// Every step up to the smoke test passed; the watch window begins (a push stops here).
    Watching,
    /// The deploy finished.
    Done(DeployStatus),
}

/// A deploy in this server's memory: its transcript and its followers.
pub(crate) struct Live {
    pub(crate) app_id: String,
    transcript: Mutex<Vec<Msg>>,
    tx: broadcast::Sender<Msg>,
    pub(crate) cancel: CancellationToken,
    /// Ends the watch window early (a newer deploy of the target is queued).
    pub(crate) end_watch: CancellationToken,
}

impl Live {
    fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_string(),
            transcript: Mutex::new(Vec::new()),
            tx: broadcast::channel(1024).0,
            cancel: CancellationToken::new(),
            end_watch: CancellationToken::new(),
        }
    }

    pub(crate) fn emit(&self, msg: Msg) {
        let mut t = lock(&self.transcript);
        if t.len() < MAX_TRANSCRIPT || !matches!(msg, Msg::Line(_)) {
            t.push(msg.clone());
        }
        // Sent under the transcript's lock: a follower's backlog and subscription never
        // miss or repeat a message between them.
        let _ = self.tx.send(msg);
    }

    fn done(&self) -> Option<DeployStatus> {
        lock(&self.transcript).iter().find_map(|m| match m {
            Msg::Done(s) => Some(*s),
            _ => None,
        })
    }
}

/// A poisoned lock's data is still whole here (nothing panics mid-update), so it is used.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runner's shared state (in `State`): deploys running here and each target's queue.
#[derive(Default)]
pub struct Deploys {
    live: Mutex<HashMap<String, Arc<Live>>>,
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Deploys {
    fn queue(&self, app_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.queues)
            .entry(app_id.to_string())
            .or_default()
            .clone()
    }

    fn get(&self, id: &str) -> Option<Arc<Live>> {
        lock(&self.live).get(id).cloned()
    }

    fn forget(&self, id: &str) {
        lock(&self.live).remove(id);
    }
}

/// Starts a deploy: recorded `queued`, run in the background once the target is free.
pub async fn start(state: &Shared, req: DeployRequest) -> Result<DeployId, DeployError> {
    let steps: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
    let record = state
        .store
        .create_deploy(
            &req.app_id,
            &req.source.to_json(),
            &req.user_id,
            &req.options.to_json(),
            &steps,
        )
        .await?;
    let live = Arc::new(Live::new(&req.app_id));
    {
        let mut map = lock(&state.deploys.live);
        // A deploy only watching this target ends its watch: the newer one goes next.
        for other in map.values().filter(|l| l.app_id == req.app_id) {
            other.end_watch.cancel();
        }
        map.insert(record.id.clone(), live.clone());
    }
    let id = DeployId(record.id.clone());
    let span = tracing::info_span!("deploy", app = %req.app_id, number = record.number);
    let task_state = state.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let deploy_id = record.id.clone();
            runner::run(task_state.clone(), live, record, req).await;
            task_state.deploys.forget(&deploy_id);
        },
        span,
    ));
    Ok(id)
}

/// A deploy's transcript so far and, while it runs, the rest as it comes.
pub struct Follow {
    pub backlog: Vec<Msg>,
    pub rx: Option<broadcast::Receiver<Msg>>,
}

/// Follows a deploy of `app_id` (by id or number). A finished deploy (or one a previous server
/// ran) is replayed from the store.
pub async fn follow(state: &Shared, app_id: &str, id: &str) -> Result<Follow, DeployError> {
    let record = state.store.deploy(app_id, id).await.map_err(|e| match e {
        StoreError::NotFound(_) => DeployError::NotFound(id.to_string()),
        e => e.into(),
    })?;
    if let Some(live) = state.deploys.get(&record.id) {
        let t = lock(&live.transcript);
        let rx = live.tx.subscribe();
        return Ok(Follow {
            backlog: t.clone(),
            rx: Some(rx),
        });
    }
    let mut backlog = Vec::new();
    for step in state.store.deploy_steps(&record.id).await? {
        if step.status == "pending" {
            continue;
        }
        backlog.push(Msg::Line(format!("-----> {}: {}", step.name, step.status)));
        for line in step.output.lines() {
            backlog.push(Msg::Line(format!("       {line}")));
        }
        if !step.note.is_empty() {
            backlog.push(Msg::Line(format!("       {}", step.note)));
        }
    }
    let status = DeployStatus::parse(&record.status).unwrap_or(DeployStatus::Interrupted);
    backlog.push(Msg::Done(status));
    Ok(Follow { backlog, rx: None })
}

/// Waits until a deploy finishes; its final status.
pub async fn wait(state: &Shared, app_id: &str, id: &str) -> Result<DeployStatus, DeployError> {
    let Follow { backlog, rx } = follow(state, app_id, id).await?;
    if let Some(s) = backlog.iter().find_map(|m| match m {
        Msg::Done(s) => Some(*s),
        _ => None,
    }) {
        return Ok(s);
    }
    let Some(mut rx) = rx else {
        return Ok(DeployStatus::Interrupted);
    };
    loop {
        match rx.recv().await {
            Ok(Msg::Done(s)) => return Ok(s),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                let record = state.store.deploy(app_id, id).await?;
                return Ok(DeployStatus::parse(&record.status).unwrap_or(DeployStatus::Interrupted));
            }
        }
    }
}

/// Cancels a queued or running deploy. Before its release went live nothing changes; after,
/// the remaining steps stop and the release stays (roll back with `slipway rollback`).
pub async fn cancel(state: &Shared, app_id: &str, id: &str) -> Result<(), DeployError> {
    let record = state.store.deploy(app_id, id).await.map_err(|e| match e {
        StoreError::NotFound(_) => DeployError::NotFound(id.to_string()),
        e => e.into(),
    })?;
    match state.deploys.get(&record.id) {
        Some(live) if live.done().is_none() => {
            live.cancel.cancel();
            Ok(())
        }
        _ => Err(DeployError::Finished {
            number: record.number,
            status: record.status,
        }),
    }
}

/// At server start: deploys a stopped server left unfinished become `interrupted`; a release
/// they left pending is failed (never current), maintenance they turned on is turned off. The
/// server then converges every app onto its current release, a whole one.
pub async fn recover(state: &Shared) -> Result<usize, DeployError> {
    let interrupted = state
        .store
        .interrupt_deploys("The server stopped during this step; the app runs its current release.")
        .await?;
    // Host deploys: each host's own state says what it runs; the lock the killed server held
    // names a dead process and is broken by the next operation.
    state.store.interrupt_target_deploys().await?;
    for d in &interrupted {
        if let Some(v) = d.release_version {
            if state.store.fail_pending_release(&d.app_id, v).await? {
                state.api_log(
                    &d.app_id,
                    &format!("Release v{v} failed: its deploy was interrupted by a server stop"),
                );
            }
        }
        if d.maintenance_on {
            if let Ok(app) = state.store.app(&d.app_id).await {
                if let Err(e) = crate::control::set_maintenance(state, &app, false).await {
                    tracing::warn!(app = %app.name, error = ?e, "could not turn maintenance off");
                }
            }
        }
        state.logs.write(
            &d.app_id,
            slipway_logs::Source::App,
            "deploy",
            &format!(
                "Deploy #{} interrupted: the server stopped while it ran",
                d.number
            ),
        );
    }
    Ok(interrupted.len())
}
