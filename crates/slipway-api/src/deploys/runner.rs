//! One deploy, step by step (see the module above for the order and what each step does).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use slipway_core::{AppJson, DeploySpec, InconclusivePolicy};
use slipway_logs::{Filter, Next, Source};
use slipway_runtime::{
    DynoSize, Lifecycle, OneOff, OneOffIo, OneOffMode, OneOffRequest, ReleaseSpec,
};
use slipway_store::{App, DeployRecord, DeployUpdate, ReleaseStatus, RollbackRefusal, Slug};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lock;
use super::model::{DeployRequest, DeploySource, DeployStatus, Masker, Step, StepStatus};
use super::{checks, webhooks, Live, Msg, MAX_STEP_OUTPUT};
use crate::state::{AppLock, Shared};

/// How long the deploy step waits for the new release's web dynos.
const WEB_UP_TIMEOUT: Duration = Duration::from_secs(180);
/// Most bytes of `app.json` read from a slug.
const MAX_SLUG_APP_JSON: usize = 1024 * 1024;

/// How a step ended, as the runner decides what comes next.
pub(super) enum Outcome {
    Ok,
    /// The step failed; the sentence says why.
    Failed(String),
    Cancelled,
}

struct Run {
    state: Shared,
    live: Arc<Live>,
    record: DeployRecord,
    req: DeployRequest,
    masker: Masker,
    outputs: Mutex<HashMap<i64, String>>,
    started: Mutex<HashMap<i64, Instant>>,
    statuses: Mutex<HashMap<i64, (StepStatus, String)>>,
}

pub(super) async fn run(state: Shared, live: Arc<Live>, record: DeployRecord, req: DeployRequest) {
    let run = Run {
        masker: Masker::new(&req.secrets),
        state,
        live,
        record,
        req,
        outputs: Mutex::new(HashMap::new()),
        started: Mutex::new(HashMap::new()),
        statuses: Mutex::new(HashMap::new()),
    };
    let queue = run.state.deploys.queue(&run.req.app_id);
    let guard = match queue.clone().try_lock_owned() {
        Ok(g) => g,
        Err(_) => {
            run.say(&format!(
                "-----> Deploy #{} is queued behind another deploy of this app...",
                run.record.number
            ));
            tokio::select! {
                g = queue.lock_owned() => g,
                () = run.live.cancel.cancelled() => {
                    run.skip_rest(Step::Setup).await;
                    run.finish(DeployStatus::Cancelled, "cancelled while queued").await;
                    return;
                }
            }
        }
    };
    run.update(DeployUpdate {
        status: Some(DeployStatus::Running.as_str()),
        started: true,
        ..Default::default()
    })
    .await;
    let (status, failure) = run.steps().await;
    run.finish(status, &failure).await;
    drop(guard);
}

impl Run {
    fn app_id(&self) -> &str {
        &self.req.app_id
    }

    /// A line of the transcript (masked), kept with the step it belongs to.
    fn say(&self, line: &str) {
        let line = self.masker.mask(line);
        self.live.emit(Msg::Line(line));
    }

    fn out(&self, step: Step, line: &str) {
        let line = self.masker.mask(line);
        {
            let mut outputs = lock(&self.outputs);
            let buf = outputs.entry(step.ordinal()).or_default();
            if buf.len() + line.len() < MAX_STEP_OUTPUT {
                buf.push_str(&line);
                buf.push('\n');
            } else if !buf.ends_with("[output cut at 64 KiB]\n") {
                buf.push_str("[output cut at 64 KiB]\n");
            }
        }
        self.live.emit(Msg::Line(format!("       {line}")));
    }

    fn log(&self, message: &str) {
        self.state.logs.write(
            self.app_id(),
            Source::App,
            "deploy",
            &self.masker.mask(message),
        );
    }

    async fn update(&self, update: DeployUpdate<'_>) {
        if let Err(e) = self
            .state
            .store
            .update_deploy(&self.record.id, &update)
            .await
        {
            tracing::error!(error = %e, "could not record the deploy's progress");
        }
    }

    async fn step_start(&self, step: Step, what: &str) {
        lock(&self.started).insert(step.ordinal(), Instant::now());
        lock(&self.statuses).insert(step.ordinal(), (StepStatus::Running, String::new()));
        self.say(&format!("-----> {}: {what}", step.as_str()));
        self.store_step(step, StepStatus::Running, "", true, false)
            .await;
    }

    async fn step_end(&self, step: Step, status: StepStatus, note: &str) {
        let note = self.masker.mask(note);
        let took = lock(&self.started)
            .get(&step.ordinal())
            .map(|t| t.elapsed())
            .unwrap_or_default();
        lock(&self.statuses).insert(step.ordinal(), (status, note.clone()));
        let summary = step.summary(status, took, &note);
        self.say(&status.indent(&summary));
        self.log(&format!("Deploy #{} {summary}", self.record.number));
        let started = !lock(&self.started).contains_key(&step.ordinal());
        self.store_step(step, status, &note, started, true).await;
    }

    async fn store_step(
        &self,
        step: Step,
        status: StepStatus,
        note: &str,
        started: bool,
        finished: bool,
    ) {
        let output = lock(&self.outputs)
            .get(&step.ordinal())
            .cloned()
            .unwrap_or_default();
        if let Err(e) = self
            .state
            .store
            .update_deploy_step(
                &self.record.id,
                step.ordinal(),
                status.as_str(),
                note,
                &output,
                started,
                finished,
            )
            .await
        {
            tracing::error!(error = %e, "could not record a deploy step");
        }
    }

    fn cancelled(&self) -> bool {
        self.live.cancel.is_cancelled()
    }

    /// Runs the steps; the deploy's final status and why it failed ("" when it did not).
    async fn steps(&self) -> (DeployStatus, String) {
        // ---- setup ----
        self.step_start(Step::Setup, "checking the target").await;
        let setup = match self.setup().await {
            Ok(s) => s,
            Err(why) => {
                self.step_end(Step::Setup, StepStatus::Failed, &why).await;
                self.skip_rest(Step::PreDeploy).await;
                return (DeployStatus::Failed, format!("setup failed: {why}"));
            }
        };
        let Setup {
            app,
            slug,
            spec,
            previous,
        } = setup;
        self.step_end(
            Step::Setup,
            StepStatus::Passed,
            &format!(
                "{} {}, slug {}",
                app.name,
                match previous {
                    Some(v) => format!("serves v{v}"),
                    None => "has no release yet".into(),
                },
                slug.checksum
            ),
        )
        .await;
        if self.cancelled() {
            self.skip_rest(Step::PreDeploy).await;
            return (DeployStatus::Cancelled, "cancelled".into());
        }

        // ---- pre-deploy ----
        let mut maintenance = false;
        self.step_start(Step::PreDeploy, "before the release goes live")
            .await;
        if spec.maintenance {
            match crate::control::set_maintenance(&self.state, &app, true).await {
                Ok(_) => {
                    maintenance = true;
                    self.update(DeployUpdate {
                        maintenance_on: Some(true),
                        ..Default::default()
                    })
                    .await;
                    self.out(Step::PreDeploy, "maintenance mode on");
                }
                Err(e) => {
                    let why = format!("could not turn maintenance mode on: {}", e.message);
                    self.step_end(Step::PreDeploy, StepStatus::Failed, &why)
                        .await;
                    self.skip_rest(Step::Deploy).await;
                    return (DeployStatus::Failed, why);
                }
            }
        }
        let next_version = previous.unwrap_or(0) + 1;
        let pre = match &spec.predeploy {
            Some(command) => {
                let release = ReleaseSpec {
                    app_id: app.id.clone(),
                    version: next_version,
                    slug_path: slug.path.clone().into(),
                    slug_checksum: slug.checksum.clone(),
                    env: app.config.clone(),
                    healthchecks: Vec::new(),
                };
                self.one_off(
                    Step::PreDeploy,
                    "predeploy",
                    release,
                    command,
                    spec.timeouts.predeploy,
                )
                .await
            }
            None => Outcome::Ok,
        };
        match pre {
            Outcome::Ok => {
                let note = if spec.predeploy.is_none() && !maintenance {
                    "no pre-deploy command (scripts.dokku.predeploy)"
                } else {
                    ""
                };
                let status = if note.is_empty() {
                    StepStatus::Passed
                } else {
                    StepStatus::Skipped
                };
                self.step_end(Step::PreDeploy, status, note).await;
            }
            other => {
                let (status, why, final_status) = match other {
                    Outcome::Failed(why) => (StepStatus::Failed, why, DeployStatus::Failed),
                    _ => (
                        StepStatus::Cancelled,
                        "cancelled".to_string(),
                        DeployStatus::Cancelled,
                    ),
                };
                self.step_end(Step::PreDeploy, status, &why).await;
                if maintenance {
                    self.maintenance_off(&app, Step::PreDeploy).await;
                }
                self.skip_rest(Step::Deploy).await;
                self.say(" !     Nothing went live: the previous release keeps serving.");
                return (
                    final_status,
                    format!("pre-deploy {}: {why}", status.as_str()),
                );
            }
        }
        if self.cancelled() {
            if maintenance {
                self.maintenance_off(&app, Step::PreDeploy).await;
            }
            self.skip_rest(Step::Deploy).await;
            return (DeployStatus::Cancelled, "cancelled".into());
        }

        // ---- deploy ----
        self.step_start(Step::Deploy, "the release goes live").await;
        // Log lines from here on are the new release's (the log test reads them).
        let (_, mut log_sub) = self
            .state
            .logs
            .subscribe(self.app_id(), Filter::default(), 0);
        let live_version = match self.release(&app, &slug, previous).await {
            Ok(v) => v,
            Err((why, went_live)) => {
                self.step_end(Step::Deploy, StepStatus::Failed, &why).await;
                if maintenance {
                    self.maintenance_off(&app, Step::Deploy).await;
                }
                if !went_live {
                    self.skip_rest(Step::PostDeploy).await;
                    self.say(" !     Nothing went live: the previous release keeps serving.");
                    return (DeployStatus::Failed, format!("deploy failed: {why}"));
                }
                return self
                    .after_live_failure(&app, &spec, previous, Step::Deploy, &why)
                    .await;
            }
        };
        self.step_end(
            Step::Deploy,
            StepStatus::Passed,
            &format!("v{live_version} is live"),
        )
        .await;

        // ---- post-deploy ----
        self.step_start(Step::PostDeploy, "after the release went live")
            .await;
        let post = match &spec.postdeploy {
            Some(command) => match self.release_spec(live_version).await {
                Ok(release) => {
                    self.one_off(
                        Step::PostDeploy,
                        "postdeploy",
                        release,
                        command,
                        spec.timeouts.postdeploy,
                    )
                    .await
                }
                Err(why) => Outcome::Failed(why),
            },
            None => Outcome::Ok,
        };
        if maintenance {
            self.maintenance_off(&app, Step::PostDeploy).await;
        }
        match post {
            Outcome::Ok => {
                if spec.postdeploy.is_none() && !maintenance {
                    self.step_end(
                        Step::PostDeploy,
                        StepStatus::Skipped,
                        "no post-deploy command (scripts.dokku.postdeploy)",
                    )
                    .await;
                } else {
                    self.step_end(Step::PostDeploy, StepStatus::Passed, "")
                        .await;
                }
            }
            Outcome::Failed(why) => {
                self.step_end(Step::PostDeploy, StepStatus::Failed, &why)
                    .await;
                return self
                    .after_live_failure(&app, &spec, previous, Step::PostDeploy, &why)
                    .await;
            }
            Outcome::Cancelled => {
                self.step_end(Step::PostDeploy, StepStatus::Cancelled, "")
                    .await;
                self.skip_rest(Step::Smoke).await;
                return (
                    DeployStatus::Cancelled,
                    "cancelled after the release went live".into(),
                );
            }
        }

        // ---- smoke ----
        if spec.smoke.is_empty() {
            self.step_end(
                Step::Smoke,
                StepStatus::Skipped,
                "no smoke commands (slipway.smoke)",
            )
            .await;
        } else {
            self.step_start(
                Step::Smoke,
                &format!("{} command(s) on the server", spec.smoke.len()),
            )
            .await;
            match self.smoke(&app, &spec, live_version).await {
                Outcome::Ok => self.step_end(Step::Smoke, StepStatus::Passed, "").await,
                Outcome::Failed(why) => {
                    self.step_end(Step::Smoke, StepStatus::Failed, &why).await;
                    return self
                        .after_live_failure(&app, &spec, previous, Step::Smoke, &why)
                        .await;
                }
                Outcome::Cancelled => {
                    self.step_end(Step::Smoke, StepStatus::Cancelled, "").await;
                    self.skip_rest(Step::LogTest).await;
                    return (
                        DeployStatus::Cancelled,
                        "cancelled after the release went live".into(),
                    );
                }
            }
        }
        // ---- watch window: log test and heartbeat ----
        let window = self.req.options.watch.unwrap_or(spec.watch);
        if !window.is_zero() {
            self.live.emit(Msg::Watching);
        }
        if window.is_zero() {
            self.step_end(Step::LogTest, StepStatus::Skipped, "no watch window")
                .await;
            self.step_end(Step::Heartbeat, StepStatus::Skipped, "no watch window")
                .await;
        } else {
            self.say(&format!(
                "-----> Watching v{live_version} for {} s (log test{})",
                window.as_secs(),
                if spec.heartbeat.is_some() {
                    " and heartbeat"
                } else {
                    ""
                }
            ));
            let watch = self.watch(&app, &spec, window, &mut log_sub).await;
            match watch {
                Outcome::Ok => {}
                Outcome::Failed(why) => {
                    return self
                        .after_live_failure(&app, &spec, previous, Step::LogTest, &why)
                        .await;
                }
                Outcome::Cancelled => {
                    self.skip_rest(Step::Rollback).await;
                    return (
                        DeployStatus::Cancelled,
                        "cancelled during the watch window".into(),
                    );
                }
            }
        }
        self.step_end(Step::Rollback, StepStatus::Skipped, "nothing failed")
            .await;
        (DeployStatus::Passed, String::new())
    }

    /// A step failed after the release went live: roll back to the release that served before
    /// (unless told not to, or there is none).
    async fn after_live_failure(
        &self,
        app: &App,
        spec: &DeploySpec,
        previous: Option<i64>,
        failed: Step,
        why: &str,
    ) -> (DeployStatus, String) {
        for step in Step::ALL {
            if step.ordinal() > failed.ordinal() && step != Step::Rollback && step != Step::Report {
                let unset = lock(&self.statuses).get(&step.ordinal()).is_none();
                if unset {
                    self.step_end(
                        step,
                        StepStatus::Skipped,
                        &format!("{} failed", failed.as_str()),
                    )
                    .await;
                }
            }
        }
        let failure = format!("{} failed: {why}", failed.as_str());
        if self.req.options.no_rollback || !spec.rollback {
            self.step_end(
                Step::Rollback,
                StepStatus::Skipped,
                "rollback is off (--no-rollback or slipway.rollback); the failed release stays live",
            )
            .await;
            return (DeployStatus::Failed, failure);
        }
        let Some(to) = previous else {
            self.step_end(
                Step::Rollback,
                StepStatus::Skipped,
                "no earlier release to roll back to (this was the app's first)",
            )
            .await;
            return (DeployStatus::Failed, failure);
        };
        self.step_start(Step::Rollback, &format!("back to v{to}, code and config"))
            .await;
        match self.roll_back(app, to).await {
            Ok(v) => {
                self.update(DeployUpdate {
                    rollback_version: Some(v),
                    ..Default::default()
                })
                .await;
                self.step_end(
                    Step::Rollback,
                    StepStatus::Passed,
                    &format!("v{v} restores v{to}"),
                )
                .await;
                (DeployStatus::RolledBack, failure)
            }
            Err(e) => {
                self.step_end(Step::Rollback, StepStatus::Failed, &e).await;
                (
                    DeployStatus::Failed,
                    format!("{failure}; the rollback failed too: {e}"),
                )
            }
        }
    }

    /// Marks every step from `from` (but the report) skipped.
    async fn skip_rest(&self, from: Step) {
        for step in Step::ALL {
            if step.ordinal() >= from.ordinal() && step != Step::Report {
                let unset = lock(&self.statuses).get(&step.ordinal()).is_none();
                if unset {
                    lock(&self.statuses)
                        .insert(step.ordinal(), (StepStatus::Skipped, String::new()));
                    self.store_step(step, StepStatus::Skipped, "", false, false)
                        .await;
                }
            }
        }
    }

    async fn maintenance_off(&self, app: &App, step: Step) {
        match crate::control::set_maintenance(&self.state, app, false).await {
            Ok(_) => {
                self.update(DeployUpdate {
                    maintenance_on: Some(false),
                    ..Default::default()
                })
                .await;
                self.out(step, "maintenance mode off");
            }
            Err(e) => self.out(
                step,
                &format!("could not turn maintenance mode off: {}", e.message),
            ),
        }
    }

    async fn setup(&self) -> Result<Setup, String> {
        let store = &self.state.store;
        let app = store
            .app(self.app_id())
            .await
            .map_err(|e| format!("the app is gone: {e}"))?;
        let previous = store
            .current_release(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .filter(|r| r.slug_id.is_some())
            .map(|r| r.version);
        let slug_id = match &self.req.source {
            DeploySource::Build { slug_id, .. } | DeploySource::Slug { slug_id } => slug_id.clone(),
            DeploySource::Rollback { version } => {
                let r = store
                    .release(&app.id, &version.to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                if ReleaseStatus::parse(&r.status) != Some(ReleaseStatus::Succeeded) {
                    return Err(format!(
                        "v{version} {}: it can't be deployed again",
                        r.status
                    ));
                }
                r.slug_id.ok_or_else(|| format!("v{version} has no slug"))?
            }
        };
        let slug = store.slug(&slug_id).await.map_err(|e| e.to_string())?;
        if slug.app_id != app.id {
            return Err("the slug belongs to another app".into());
        }
        if !tokio::fs::metadata(&slug.path)
            .await
            .is_ok_and(|m| m.is_file())
        {
            return Err(format!(
                "the slug's file is gone ({}); build it again",
                slug.checksum
            ));
        }
        let spec = match &self.req.spec {
            Some(spec) => spec.clone(),
            None => spec_of_slug(&slug).await?,
        };
        self.update(DeployUpdate {
            previous_version: previous,
            ..Default::default()
        })
        .await;
        Ok(Setup {
            app,
            slug,
            spec,
            previous,
        })
    }

    async fn release_spec(&self, version: i64) -> Result<ReleaseSpec, String> {
        crate::control::release_spec(&self.state, self.app_id(), version)
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| format!("v{version} has no slug"))
    }

    /// The deploy step: the release (with its release phase), live, its web dynos up.
    /// `Err((why, went_live))`.
    async fn release(
        &self,
        app: &App,
        slug: &Slug,
        previous: Option<i64>,
    ) -> Result<i64, (String, bool)> {
        let state = &self.state;
        let release_lock = state.app_lock(AppLock::Release, &app.id);
        let guard = release_lock.lock().await;
        let user = state
            .store
            .get_user(&self.req.user_id)
            .await
            .map_err(|e| (e.to_string(), false))?;
        let command = slug.process_types.get("release").cloned();
        let status = match command {
            Some(_) => ReleaseStatus::Pending,
            None => ReleaseStatus::Succeeded,
        };
        let release = match &self.req.source {
            DeploySource::Rollback { version } => {
                match state
                    .store
                    .rollback_release_with_status(&app.id, *version, &user.id, status)
                    .await
                    .map_err(|e| (e.to_string(), false))?
                {
                    Ok(r) => r,
                    Err(refusal) => return Err((refusal_text(&refusal, *version), false)),
                }
            }
            source => {
                let description = match source {
                    DeploySource::Build { commit, .. } => {
                        format!("Deploy {}", commit.chars().take(7).collect::<String>())
                    }
                    _ => format!(
                        "Deploy {}",
                        slug.commit_sha.chars().take(7).collect::<String>()
                    ),
                };
                state
                    .store
                    .deploy_release_with_status(&app.id, slug, &description, &user.id, status)
                    .await
                    .map_err(|e| (e.to_string(), false))?
            }
        };
        self.update(DeployUpdate {
            release_version: Some(release.version),
            ..Default::default()
        })
        .await;
        state.api_log(
            &app.id,
            &format!("{} by user {}", release.description, user.email),
        );
        state.api_log(
            &app.id,
            &format!(
                "Release v{} created by user {}",
                release.version, user.email
            ),
        );
        if let Some(command) = command {
            let (tx, mut rx) = mpsc::channel::<Bytes>(64);
            let forward = async {
                while let Some(chunk) = rx.recv().await {
                    for line in String::from_utf8_lossy(&chunk).lines() {
                        self.out(Step::Deploy, line.trim_start());
                    }
                }
            };
            let phase = async {
                let r =
                    crate::oneoff::finish_release(state, app, &release, &command, Some(&tx)).await;
                drop(tx);
                r
            };
            let (result, ()) = tokio::join!(phase, forward);
            result.map_err(|why| (format!("the release phase failed: {why}"), false))?;
        }
        self.out(Step::Deploy, &format!("Released v{}", release.version));
        let events = state.dynos.subscribe();
        let converged = crate::control::converge_app(state, &app.id)
            .await
            .map_err(|e| (e.message, true))?;
        if let Some(message) = converged.message() {
            // The new web dynos never became healthy: the release is failed and the previous
            // one (code, config, formation) serves on, so there is nothing to roll back.
            return Err((message, false));
        }
        // Scaling and config changes need not wait for the dynos to boot.
        drop(guard);
        if let Err(why) = self.wait_web(app, release.version, events).await {
            if previous.is_some() {
                return Err((why, true));
            }
            // Nothing served before: as on Heroku, an app that crashes on its first release is
            // released all the same (its requests get H10; `slipway logs` says why).
            self.out(
                Step::Deploy,
                &format!(
                    "{why}; nothing served before it, so v{} stays released (see `slipway logs`)",
                    release.version
                ),
            );
        }
        Ok(release.version)
    }

    /// Waits until every web dyno of `version` is up; fails when one crashes or boots too long.
    async fn wait_web(
        &self,
        app: &App,
        version: i64,
        mut events: tokio::sync::broadcast::Receiver<slipway_runtime::DynoEvent>,
    ) -> Result<(), String> {
        let wanted = self
            .state
            .store
            .formation(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .find(|f| f.process_type == "web")
            .map_or(0, |f| f.quantity);
        if wanted <= 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + WEB_UP_TIMEOUT;
        loop {
            // A sleeping app (SLIPWAY_SLEEP_AFTER) starts its web dynos on the next request.
            if self.state.dynos.is_asleep(&app.id) {
                return Ok(());
            }
            let web: Vec<_> = self
                .state
                .dynos
                .list(&app.id)
                .into_iter()
                .filter(|d| d.process_type == "web" && d.release_version == version)
                .collect();
            if let Some(d) = web.iter().find(|d| d.lifecycle == Lifecycle::Crashed) {
                return Err(format!("{} of v{version} crashed while starting", d.name));
            }
            let up = web.iter().filter(|d| d.lifecycle == Lifecycle::Up).count();
            if i64::try_from(up).unwrap_or(0) >= wanted {
                return Ok(());
            }
            tokio::select! {
                e = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = e {
                        return Err("the dyno manager stopped".into());
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "the web dynos of v{version} were not up within {} s",
                        WEB_UP_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }

    /// A command in a one-off dyno of `release`, with the target's secrets; output to the step.
    async fn one_off(
        &self,
        step: Step,
        kind: &str,
        release: ReleaseSpec,
        command: &str,
        timeout: Duration,
    ) -> Outcome {
        self.out(step, &format!("$ {command}"));
        let env: BTreeMap<String, String> = self
            .req
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let started = self
            .state
            .dynos
            .run_one_off(OneOffRequest {
                release,
                name: format!("{kind}.{}", self.record.number),
                command: command.to_string(),
                env,
                size: DynoSize::standard_1x(),
                time_to_live: timeout,
                mode: OneOffMode::Pipes,
            })
            .await;
        let OneOff {
            io, exit, handle, ..
        } = match started {
            Ok(o) => o,
            Err(e) => return Outcome::Failed(format!("the one-off dyno could not start: {e}")),
        };
        let OneOffIo::Pipes { stdout, stderr, .. } = io else {
            handle.stop();
            return Outcome::Failed("the one-off dyno got no output pipes".into());
        };
        let (tx, mut lines) = mpsc::channel::<String>(256);
        crate::oneoff::pump_lines(stdout, tx.clone());
        crate::oneoff::pump_lines(stderr, tx);
        let mut cancelled = false;
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(l) => self.out(step, &l),
                    None => break,
                },
                () = self.live.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    handle.stop();
                }
            }
        }
        let exit = exit.await;
        if cancelled {
            return Outcome::Cancelled;
        }
        match exit {
            Ok(e) if e.timed_out => Outcome::Failed(format!(
                "`{command}` ran longer than {} s and was stopped",
                timeout.as_secs()
            )),
            Ok(e) if e.code == 0 => Outcome::Ok,
            Ok(e) => Outcome::Failed(format!("`{command}` exited with status {}", e.code)),
            Err(_) => Outcome::Failed(format!("`{command}` ended without an exit status")),
        }
    }

    /// The smoke test: each command on the server as the app's build user (never in the app's
    /// dyno), in a fresh directory, with a minimal environment.
    async fn smoke(&self, app: &App, spec: &DeploySpec, version: i64) -> Outcome {
        let user = match self.state.dynos.build_user(&app.id) {
            Ok(u) => u,
            Err(e) => {
                return Outcome::Failed(format!("could not choose the smoke test's user: {e}"))
            }
        };
        let stage = self
            .req
            .options
            .stage
            .clone()
            .unwrap_or_else(|| "production".into());
        let mut env = vec![
            ("URL".to_string(), self.state.settings.web_url(&app.name)),
            ("SLIPWAY_APP".to_string(), app.name.clone()),
            ("SLIPWAY_RELEASE".to_string(), format!("v{version}")),
            ("SLIPWAY_STAGE".to_string(), stage),
        ];
        env.extend(
            self.req
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        );
        let out = |line: &str| self.out(Step::Smoke, line);
        run_smoke(&self.state, user, &env, spec, &out, &self.live.cancel).await
    }

    /// The watch window: the log test and the heartbeat side by side. The first to fail ends
    /// both; cancelling or a newer deploy ends the window early.
    async fn watch(
        &self,
        app: &App,
        spec: &DeploySpec,
        window: Duration,
        logs: &mut slipway_logs::Subscription,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + window;
        let failed = CancellationToken::new();
        let end = CancellationToken::new();
        let stop = async {
            tokio::select! {
                () = self.live.cancel.cancelled() => {}
                () = self.live.end_watch.cancelled() => {}
                () = failed.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            end.cancel();
        };
        self.step_start(
            Step::LogTest,
            &format!("error lines over {} s", window.as_secs()),
        )
        .await;
        if spec.heartbeat.is_some() {
            self.step_start(Step::Heartbeat, "probing the health URL")
                .await;
        }
        let log_test = async {
            let r = self.log_test(spec, logs, &end).await;
            if matches!(r, Check::Failed(_)) {
                failed.cancel();
            }
            r
        };
        let heartbeat = async {
            let r = match &spec.heartbeat {
                Some(hb) => self.heartbeat(app, hb, &end).await,
                None => Check::NotConfigured,
            };
            if matches!(r, Check::Failed(_)) {
                failed.cancel();
            }
            r
        };
        let ((), log_result, hb_result) = tokio::join!(stop, log_test, heartbeat);
        let superseded = self.live.end_watch.is_cancelled();
        let cancelled = self.live.cancel.is_cancelled();
        let mut failure: Option<String> = None;
        for (step, result) in [(Step::LogTest, log_result), (Step::Heartbeat, hb_result)] {
            let (status, note) = match result {
                Check::Passed(note) => (StepStatus::Passed, note),
                Check::Failed(why) => {
                    failure.get_or_insert(format!("{}: {why}", step.as_str()));
                    (StepStatus::Failed, why)
                }
                Check::Inconclusive(why) if cancelled => (StepStatus::Cancelled, why),
                Check::Inconclusive(why) => {
                    if spec.inconclusive == InconclusivePolicy::Fail {
                        failure.get_or_insert(format!(
                            "{} inconclusive ({why}) and slipway.inconclusive is \"fail\"",
                            step.as_str()
                        ));
                    }
                    (StepStatus::Inconclusive, why)
                }
                Check::NotConfigured => (
                    StepStatus::Skipped,
                    "no health URL (slipway.heartbeat or healthchecks.web path)".to_string(),
                ),
            };
            let note = if superseded && status != StepStatus::Failed {
                format!("{note} (window cut short by a newer deploy)")
            } else {
                note
            };
            self.step_end(step, status, &note).await;
        }
        match failure {
            Some(why) => Outcome::Failed(why),
            None if cancelled => Outcome::Cancelled,
            None => Outcome::Ok,
        }
    }

    async fn log_test(
        &self,
        spec: &DeploySpec,
        logs: &mut slipway_logs::Subscription,
        end: &CancellationToken,
    ) -> Check {
        let patterns: Vec<regex::Regex> = spec
            .log_test
            .patterns
            .iter()
            .filter_map(|p| {
                regex::RegexBuilder::new(p)
                    .size_limit(256 * 1024)
                    .build()
                    .ok()
            })
            .collect();
        let threshold = spec.log_test.threshold;
        let (mut seen, mut errors) = (0u64, Vec::<String>::new());
        loop {
            let next = tokio::select! {
                n = logs.recv() => n,
                () = end.cancelled() => break,
            };
            match next {
                Next::Line(line) => {
                    if line.source == Source::App && (line.dyno == "deploy" || line.dyno == "api") {
                        continue;
                    }
                    seen += 1;
                    if let Some(why) = checks::classify(&line, spec.log_test.builtin, &patterns) {
                        let text = format!("{} ({why})", line.format());
                        self.out(Step::LogTest, &text);
                        errors.push(text);
                        if errors.len() as u64 > u64::from(threshold) {
                            return Check::Failed(format!(
                                "{} error lines, more than the threshold of {threshold}",
                                errors.len()
                            ));
                        }
                    }
                }
                Next::Dropped(n) => {
                    self.out(Step::LogTest, &format!("({n} log lines went by unread)"));
                }
                // The hub closes tails when the server stops: the deploy is then interrupted
                // (marked so at the next start), never judged on a cut-off window.
                Next::Closed => {
                    end.cancelled().await;
                    break;
                }
            }
        }
        if seen == 0 {
            Check::Inconclusive("no log lines in the window (no traffic, no output)".into())
        } else {
            Check::Passed(format!(
                "{} error line(s) in {seen} (threshold {threshold})",
                errors.len()
            ))
        }
    }

    async fn heartbeat(
        &self,
        app: &App,
        hb: &slipway_core::deployspec::Heartbeat,
        end: &CancellationToken,
    ) -> Check {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => return Check::Failed(format!("could not set up the HTTP client: {e}")),
        };
        let host = format!("{}.{}", app.name, self.state.settings.domain);
        let (mut probes, mut misses) = (0u32, 0u32);
        loop {
            let result =
                checks::probe(&client, self.state.settings.router_port, &host, &hb.path).await;
            probes += 1;
            match result {
                Ok(_) => misses = 0,
                Err(why) => {
                    misses += 1;
                    self.out(Step::Heartbeat, &format!("GET {} {why}", hb.path));
                    if misses > hb.misses {
                        return Check::Failed(format!(
                            "GET {} {why} ({misses} probe(s) in a row failed)",
                            hb.path
                        ));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(hb.interval) => {}
                () = end.cancelled() => break,
            }
        }
        if probes == 0 {
            Check::Inconclusive("no probe ran".into())
        } else {
            Check::Passed(format!("{probes} probe(s) of {}", hb.path))
        }
    }

    /// Back to release `to`: a new release with its slug and config (and release phase).
    async fn roll_back(&self, app: &App, to: i64) -> Result<i64, String> {
        let state = &self.state;
        let release_lock = state.app_lock(AppLock::Release, &app.id);
        let guard = release_lock.lock().await;
        let target = state
            .store
            .release(&app.id, &to.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let command = crate::oneoff::release_command(state, &target)
            .await
            .map_err(|e| e.message)?;
        let status = match command {
            Some(_) => ReleaseStatus::Pending,
            None => ReleaseStatus::Succeeded,
        };
        let release = match state
            .store
            .rollback_release_with_status(&app.id, to, &self.req.user_id, status)
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(r) => r,
            Err(refusal) => return Err(refusal_text(&refusal, to)),
        };
        state.api_log(
            &app.id,
            &format!(
                "{} (deploy #{} failed)",
                release.description, self.record.number
            ),
        );
        if let Some(command) = command {
            crate::oneoff::finish_release(state, app, &release, &command, None).await?;
        }
        let events = state.dynos.subscribe();
        let converged = crate::control::converge_app(state, &app.id)
            .await
            .map_err(|e| e.message)?;
        if let Some(message) = converged.message() {
            return Err(format!("the rollback did not go live: {message}"));
        }
        drop(guard);
        if let Err(why) = self.wait_web(app, release.version, events).await {
            self.out(Step::Rollback, &why);
        }
        Ok(release.version)
    }

    /// The report: stored with the deploy, in the app's log stream, POSTed to webhooks.
    async fn finish(&self, status: DeployStatus, failure: &str) {
        let failure = self.masker.mask(failure);
        self.update(DeployUpdate {
            status: Some(status.as_str()),
            failure: Some(&failure),
            finished: true,
            ..Default::default()
        })
        .await;
        let urls: Vec<String> = match self.state.store.deploy_webhooks(self.app_id()).await {
            Ok(hooks) => hooks.into_iter().map(|h| h.url).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the app's webhooks");
                Vec::new()
            }
        };
        self.step_start(Step::Report, "stored; webhooks").await;
        if urls.is_empty() {
            self.step_end(
                Step::Report,
                StepStatus::Passed,
                "stored (no webhooks: `slipway webhooks:add URL`)",
            )
            .await;
        } else {
            let report = self.report_json(status, &failure).await;
            let (lines, failed) = webhooks::deliver(&urls, &report).await;
            for l in &lines {
                self.out(Step::Report, l);
            }
            let note = format!(
                "{} of {} webhook(s) answered 2xx",
                urls.len() - failed,
                urls.len()
            );
            self.step_end(Step::Report, StepStatus::Passed, &note).await;
        }
        let user = self
            .state
            .store
            .get_user(&self.req.user_id)
            .await
            .map(|u| u.email)
            .unwrap_or_default();
        let summary = if failure.is_empty() {
            format!(
                "Deploy #{} {} by user {user}",
                self.record.number,
                status.as_str()
            )
        } else {
            format!(
                "Deploy #{} {} by user {user}: {failure}",
                self.record.number,
                status.as_str()
            )
        };
        self.state.api_log(self.app_id(), &summary);
        match status {
            DeployStatus::Passed => {
                self.say(&format!("-----> Deploy #{} passed", self.record.number))
            }
            _ => self.say(&format!(" !     {summary}")),
        }
        self.live.emit(Msg::Done(status));
    }

    async fn report_json(&self, status: DeployStatus, failure: &str) -> Value {
        let record = self
            .state
            .store
            .deploy(self.app_id(), &self.record.id)
            .await
            .unwrap_or_else(|_| self.record.clone());
        let steps = self
            .state
            .store
            .deploy_steps(&self.record.id)
            .await
            .unwrap_or_default();
        let app = self
            .state
            .store
            .app(self.app_id())
            .await
            .map(|a| a.name)
            .unwrap_or_default();
        json!({
            "deploy": {
                "id": record.id,
                "number": record.number,
                "app": app,
                "status": status.as_str(),
                "failure": failure,
                "source": record.source,
                "previous_release": record.previous_version,
                "release": record.release_version,
                "rollback_release": record.rollback_version,
                "steps": steps.iter().map(|s| json!({
                    "name": s.name,
                    "status": s.status,
                    "note": self.masker.mask(&s.note),
                    "duration_ms": match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => Some(b - a),
                        _ => None,
                    },
                    "output": self.masker.mask(&s.output),
                })).collect::<Vec<_>>(),
            }
        })
    }
}

/// What the watch window's checks found.
enum Check {
    Passed(String),
    Failed(String),
    Inconclusive(String),
    NotConfigured,
}

struct Setup {
    app: App,
    slug: Slug,
    spec: DeploySpec,
    previous: Option<i64>,
}

fn refusal_text(refusal: &RollbackRefusal, v: i64) -> String {
    let why = match refusal {
        RollbackRefusal::Failed => "it failed, so it never ran",
        RollbackRefusal::Pending => "it is still pending",
        RollbackRefusal::NoSlug => "it has no slug",
    };
    format!("can't roll back to v{v}: {why}")
}

/// Runs a deploy's smoke commands (`spec.smoke`) on the server, in order: each as `user` (a
/// build user, never a dyno's), in a fresh directory, with a minimal environment plus `env`
/// (`$URL`, `$SLIPWAY_*`, the deploy's secrets), in a process group of its own that is killed
/// on timeout (`spec.timeouts.smoke`), on `cancel`, and when it exits. Lines go to `out`.
pub(super) async fn run_smoke(
    state: &Shared,
    user: Option<slipway_runtime::AppUser>,
    env: &[(String, String)],
    spec: &DeploySpec,
    out: &(dyn Fn(&str) + Sync),
    cancel: &CancellationToken,
) -> Outcome {
    if let Err(e) = tokio::fs::create_dir_all(state.settings.build_tmp()).await {
        return Outcome::Failed(format!("could not create the smoke test's directory: {e}"));
    }
    let tmp = match tempfile::Builder::new()
        .prefix("smoke-")
        .tempdir_in(state.settings.build_tmp())
    {
        Ok(t) => t,
        Err(e) => {
            return Outcome::Failed(format!("could not create the smoke test's directory: {e}"))
        }
    };
    if let Some(u) = &user {
        if let Err(e) = std::os::unix::fs::chown(tmp.path(), Some(u.uid), Some(u.gid)) {
            return Outcome::Failed(format!("could not prepare the smoke test's directory: {e}"));
        }
    }
    for command in &spec.smoke {
        out(&format!("$ {command}"));
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(tmp.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", tmp.path())
            .env("LANG", "C.UTF-8")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(u) = &user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("`{command}` could not start: {e}")),
        };
        let pid = child.id();
        let (tx, mut lines) = mpsc::channel::<String>(256);
        if let Some(o) = child.stdout.take() {
            crate::oneoff::pump_lines(o, tx.clone());
        }
        if let Some(e) = child.stderr.take() {
            crate::oneoff::pump_lines(e, tx);
        }
        let deadline = tokio::time::sleep(spec.timeouts.smoke);
        tokio::pin!(deadline);
        let mut stopped: Option<Outcome> = None;
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(l) => out(&l),
                    None => break,
                },
                () = &mut deadline, if stopped.is_none() => {
                    kill_group(pid).await;
                    stopped = Some(Outcome::Failed(format!(
                        "`{command}` ran longer than {} s and was stopped",
                        spec.timeouts.smoke.as_secs()
                    )));
                }
                () = cancel.cancelled(), if stopped.is_none() => {
                    kill_group(pid).await;
                    stopped = Some(Outcome::Cancelled);
                }
            }
        }
        let status = child.wait().await;
        // Whatever the command left running goes with it.
        kill_group(pid).await;
        if let Some(outcome) = stopped {
            return outcome;
        }
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                let code = s
                    .code()
                    .map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
                return Outcome::Failed(format!("`{command}` exited with {code}"));
            }
            Err(e) => return Outcome::Failed(format!("`{command}`: {e}")),
        }
    }
    Outcome::Ok
}

/// SIGKILL to a smoke command's process group (it runs in one of its own).
async fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// The deploy definition in a slug's `app/app.json` (none: the defaults).
async fn spec_of_slug(slug: &Slug) -> Result<DeploySpec, String> {
    spec_of_slug_file(&slug.path).await
}

/// The deploy definition in the `app/app.json` of the slug file at `path`.
pub(crate) async fn spec_of_slug_file(path: &str) -> Result<DeploySpec, String> {
    let out = tokio::process::Command::new("tar")
        .args(["-xzOf", path, "app/app.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("could not read the slug: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return DeploySpec::from_app_json(None).map_err(|e| e.to_string());
    }
    if out.stdout.len() > MAX_SLUG_APP_JSON {
        return Err("the slug's app.json is larger than 1 MiB".into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = AppJson::parse(&text).map_err(|e| e.to_string())?;
    DeploySpec::from_app_json(Some(&parsed)).map_err(|e| e.to_string())
}
