//! The deploy runner for a host target (`slipway-hosts`): the same steps, statuses, masking,
//! transcript and queue as a deploy to an app, with each step done the way hosts allow.
//!
//! | step | on a host target |
//! |---|---|
//! | setup | loads the target, checks the release's file against its checksum, reads what each host runs (`state.json`): the rollback point |
//! | pre-deploy | `scripts.dokku.predeploy` once, on the first host, in the new release's directory with its environment, after every host has the release and before any switches ([`slipway_hosts::DeployOptions::pre_deploy`]); failing: no host switched |
//! | deploy | [`HostTarget`]'s deploy: locks, upload with checksum, unpack, batches, pre-switch, atomic switch, restart, health check; a failing host check switches every switched host back (the target does it itself, so the deploy is `failed`, nothing to roll back) |
//! | post-deploy | `scripts.dokku.postdeploy` once, on the first host, in `current` |
//! | smoke | `slipway.smoke` on the server (as for apps), `$URL` = the target's `--url`, else its health check when that is a URL |
//! | log test | `inconclusive`: slipway reads no router or dyno logs of a host; the deploy's `slipway.inconclusive` policy decides (default: pass) |
//! | heartbeat | with `slipway.heartbeat` (or a `healthchecks.web` path): the target's own health check on every host, every interval, over the watch window; more misses in a row than allowed fail it |
//! | rollback | after a failure once hosts were switched: every host back to the release it ran when the deploy began (`HostTarget::rollback_each`, no upload; each release carries its own environment, so config comes back too) |
//! | report | stored with the target deploy (`target_deploys`: steps, every host with the release it now runs), recorded as what the hosts run |
//!
//! Maintenance mode has no meaning on hosts (slipway's router is not in front of them): it is
//! reported and ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slipway_core::{DeploySpec, InconclusivePolicy, Secret};
use slipway_hosts::{DeployReport, DeployTarget, HostTarget, Progress, ReleaseStore, TargetError};
use slipway_store::release_store::{StoredRelease, TargetDeployRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lock;
use super::model::{DeployOptions, DeployStatus, Masker, Step, StepStatus};
use super::runner::{run_smoke, Outcome};
use super::{DeployError, Follow, Live, Msg, MAX_STEP_OUTPUT};
use crate::state::Shared;

/// A deploy of a stored release to a host target.
#[derive(Debug, Clone)]
pub struct HostDeployRequest {
    /// The host target's name.
    pub target: String,
    pub release: StoredRelease,
    pub user_id: String,
    pub options: DeployOptions,
    /// For the deploy's commands (pre-deploy, post-deploy, smoke), masked in all output.
    pub secrets: BTreeMap<String, Secret>,
    /// The release's deploy definition (its `app.json`).
    pub spec: DeploySpec,
    /// Whose build user runs the smoke commands (the pipeline's id).
    pub smoke_user: String,
}

/// A started host deploy: its record and its transcript so far and to come.
pub struct HostDeploy {
    pub record: TargetDeployRecord,
    pub follow: Follow,
}

/// The queue key of a host target (apps use their id, a UUID: the two never meet).
fn queue_key(target: &str) -> String {
    format!("target:{target}")
}

/// Records a deploy to a host target (`queued`) and runs it in the background, one at a time
/// per target; a deploy of the target that is only watching ends its watch.
pub async fn start(state: &Shared, req: HostDeployRequest) -> Result<HostDeploy, DeployError> {
    let record = state
        .store
        .create_target_deploy(
            &req.target,
            &req.release.name,
            &req.release.tag,
            &req.user_id,
            req.options.stage.as_deref().unwrap_or(""),
        )
        .await?;
    let key = queue_key(&req.target);
    let live = Arc::new(Live::new(&key));
    {
        let mut map = super::lock(&state.deploys.live);
        for other in map.values().filter(|l| l.app_id == key) {
            other.end_watch.cancel();
        }
        map.insert(record.id.clone(), live.clone());
    }
    let follow = {
        let t = super::lock(&live.transcript);
        Follow {
            backlog: t.clone(),
            rx: Some(live.tx.subscribe()),
        }
    };
    let span = tracing::info_span!("target_deploy", target = %req.target, number = record.number);
    let task_state = state.clone();
    let task_record = record.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let id = task_record.id.clone();
            run(task_state.clone(), live, task_record, req).await;
            task_state.deploys.forget(&id);
        },
        span,
    ));
    Ok(HostDeploy { record, follow })
}

struct StepRecord {
    status: StepStatus,
    note: String,
    output: String,
    started: Option<Instant>,
    took_ms: Option<u128>,
}

struct HostRun {
    state: Shared,
    live: Arc<Live>,
    record: TargetDeployRecord,
    req: HostDeployRequest,
    masker: Masker,
    steps: Mutex<HashMap<i64, StepRecord>>,
    /// Every host with the release it runs now, as the last operation reported.
    hosts: Mutex<Value>,
}

async fn run(state: Shared, live: Arc<Live>, record: TargetDeployRecord, req: HostDeployRequest) {
    let run = HostRun {
        masker: Masker::new(&req.secrets),
        state,
        live,
        record,
        req,
        steps: Mutex::new(HashMap::new()),
        hosts: Mutex::new(Value::Null),
    };
    let queue = run.state.deploys.queue(&queue_key(&run.req.target));
    let guard = match queue.clone().try_lock_owned() {
        Ok(g) => g,
        Err(_) => {
            run.say(&format!(
                "-----> Deploy #{} is queued behind another deploy of target {}...",
                run.record.number, run.req.target
            ));
            tokio::select! {
                g = queue.lock_owned() => g,
                () = run.live.cancel.cancelled() => {
                    run.finish(DeployStatus::Cancelled, "cancelled while queued").await;
                    return;
                }
            }
        }
    };
    run.store(DeployStatus::Running, "", false).await;
    let (status, failure) = run.steps().await;
    run.finish(status, &failure).await;
    drop(guard);
}

/// What a watch-window check found.
enum Check {
    Passed(String),
    Failed(String),
    Inconclusive(String),
    NotConfigured(String),
}

impl HostRun {
    fn say(&self, line: &str) {
        self.live.emit(Msg::Line(self.masker.mask(line)));
    }

    fn out(&self, step: Step, line: &str) {
        let line = self.masker.mask(line);
        {
            let mut steps = lock(&self.steps);
            let rec = steps.entry(step.ordinal()).or_insert_with(|| StepRecord {
                status: StepStatus::Running,
                note: String::new(),
                output: String::new(),
                started: Some(Instant::now()),
                took_ms: None,
            });
            if rec.output.len() + line.len() < MAX_STEP_OUTPUT {
                rec.output.push_str(&line);
                rec.output.push('\n');
            } else if !rec.output.ends_with("[output cut at 64 KiB]\n") {
                rec.output.push_str("[output cut at 64 KiB]\n");
            }
        }
        self.live.emit(Msg::Line(format!("       {line}")));
    }

    fn step_start(&self, step: Step, what: &str) {
        lock(&self.steps).insert(
            step.ordinal(),
            StepRecord {
                status: StepStatus::Running,
                note: String::new(),
                output: String::new(),
                started: Some(Instant::now()),
                took_ms: None,
            },
        );
        self.say(&format!("-----> {}: {what}", step.as_str()));
    }

    async fn step_end(&self, step: Step, status: StepStatus, note: &str) {
        let note = self.masker.mask(note);
        let took = {
            let mut steps = lock(&self.steps);
            let rec = steps.entry(step.ordinal()).or_insert_with(|| StepRecord {
                status,
                note: String::new(),
                output: String::new(),
                started: None,
                took_ms: None,
            });
            rec.status = status;
            rec.note = note.clone();
            let took = rec.started.map(|s| s.elapsed()).unwrap_or_default();
            rec.took_ms = rec.started.map(|_| took.as_millis());
            took
        };
        let summary = step.summary(status, took, &note);
        self.say(&status.indent(&summary));
        self.store(DeployStatus::Running, "", false).await;
    }

    /// Every step not ended yet (but the report) from `from` on: skipped, with `why`.
    async fn skip_rest(&self, from: Step, why: &str) {
        for step in Step::ALL {
            if step.ordinal() >= from.ordinal() && step != Step::Report {
                let unset = !lock(&self.steps).contains_key(&step.ordinal());
                if unset {
                    lock(&self.steps).insert(
                        step.ordinal(),
                        StepRecord {
                            status: StepStatus::Skipped,
                            note: why.to_string(),
                            output: String::new(),
                            started: None,
                            took_ms: None,
                        },
                    );
                }
            }
        }
    }

    fn report(&self) -> Value {
        let steps = lock(&self.steps);
        json!({
            "target": self.req.target,
            "release": {"name": self.req.release.name, "tag": self.req.release.tag, "sha256": self.req.release.sha256},
            "hosts": lock(&self.hosts).clone(),
            "steps": Step::ALL.iter().map(|s| {
                let rec = steps.get(&s.ordinal());
                json!({
                    "name": s.as_str(),
                    "status": rec.map_or("pending", |r| r.status.as_str()),
                    "note": rec.map(|r| r.note.clone()).unwrap_or_default(),
                    "output": rec.map(|r| r.output.clone()).unwrap_or_default(),
                    "duration_ms": rec.and_then(|r| r.took_ms.map(|t| t as u64)),
                })
            }).collect::<Vec<_>>(),
        })
    }

    async fn store(&self, status: DeployStatus, failure: &str, finished: bool) {
        let report = self.report();
        if let Err(e) = self
            .state
            .store
            .update_target_deploy(
                &self.record.id,
                status.as_str(),
                &self.masker.mask(failure),
                &report,
                finished,
            )
            .await
        {
            tracing::error!(error = %e, "could not record the target deploy");
        }
    }

    /// Keeps what each host runs: in the report, and as the target's currents (the store never
    /// removes a release a host runs).
    async fn record_hosts(&self, report: &DeployReport) {
        *lock(&self.hosts) = json!(report
            .hosts
            .iter()
            .map(|h| json!({"host": h.host, "running": h.running, "store_name": h.store_name, "outcome": self.masker.mask(&h.outcome)}))
            .collect::<Vec<_>>());
        let currents: Vec<(String, String, String)> = report
            .hosts
            .iter()
            .filter_map(|h| Some((h.host.clone(), h.store_name.clone()?, h.running.clone()?)))
            .collect();
        if let Err(e) = self
            .state
            .store
            .set_target_currents(&self.req.target, &currents)
            .await
        {
            tracing::error!(error = %e, "recording what the target's hosts run");
        }
    }

    fn hosts_line(report: &DeployReport) -> String {
        report
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{} runs {}",
                    h.host,
                    h.running.as_deref().unwrap_or("nothing")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs a target operation, its progress lines to `step`'s output and each switch
    /// recorded as it happens; the deploy's cancel token stops it.
    async fn operate<F, Fut>(&self, step: Step, op: F) -> Result<DeployReport, TargetError>
    where
        F: FnOnce(Progress, slipway_hosts::DeployOptions) -> Fut,
        Fut: std::future::Future<Output = Result<DeployReport, TargetError>>,
    {
        let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
        let (switch_tx, mut switch_rx) = mpsc::unbounded_channel();
        let progress = Progress::new(line_tx).with_switches(switch_tx);
        let opts = slipway_hosts::DeployOptions {
            owner: format!("deploy #{} via slipway", self.record.number),
            cancel: self.live.cancel.child_token(),
            ..Default::default()
        };
        let work = op(progress, opts);
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(line) = line_rx.recv() => self.out(step, &line),
                Some(s) = switch_rx.recv() => {
                    let current = [(s.host, s.store_name, s.tag)];
                    if let Err(e) = self.state.store.set_target_currents(&self.req.target, &current).await {
                        tracing::error!(error = %e, "recording what a host runs");
                    }
                }
            }
        };
        while let Ok(line) = line_rx.try_recv() {
            self.out(step, &line);
        }
        while let Ok(s) = switch_rx.try_recv() {
            let current = [(s.host, s.store_name, s.tag)];
            if let Err(e) = self
                .state
                .store
                .set_target_currents(&self.req.target, &current)
                .await
            {
                tracing::error!(error = %e, "recording what a host runs");
            }
        }
        result
    }

    async fn steps(&self) -> (DeployStatus, String) {
        let spec = &self.req.spec;
        // ---- setup ----
        self.step_start(Step::Setup, "checking the target and the release");
        let (target, before) = match self.setup().await {
            Ok(v) => v,
            Err(why) => {
                self.step_end(Step::Setup, StepStatus::Failed, &why).await;
                self.skip_rest(Step::PreDeploy, "setup failed").await;
                return (DeployStatus::Failed, format!("setup failed: {why}"));
            }
        };
        let ran_before = if before.is_empty() {
            "no host runs a release yet".to_string()
        } else {
            before
                .iter()
                .map(|(h, t)| format!("{h} runs {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.step_end(
            Step::Setup,
            StepStatus::Passed,
            &format!(
                "target {} ({} host(s)): {ran_before}; release {} {} (sha256 {})",
                self.req.target,
                target.spec.hosts.len(),
                self.req.release.name,
                self.req.release.tag,
                self.req.release.sha256
            ),
        )
        .await;
        if self.live.cancel.is_cancelled() {
            self.skip_rest(Step::PreDeploy, "cancelled").await;
            return (DeployStatus::Cancelled, "cancelled".into());
        }

        // ---- pre-deploy (inside the target's deploy: after the upload, before any switch) ----
        if spec.maintenance {
            self.say("       maintenance mode does not apply to a host target (slipway's router is not in front of it); ignored");
        }
        if spec.predeploy.is_some() {
            self.step_start(
                Step::PreDeploy,
                "once, on the first host, in the new release, before any host switches",
            );
        }

        // ---- deploy ----
        self.step_start(
            Step::Deploy,
            &format!(
                "{} {} to {} host(s), {} at a time",
                self.req.release.name,
                self.req.release.tag,
                target.spec.hosts.len(),
                target.spec.batch
            ),
        );
        let pre_deploy = spec.predeploy.clone();
        let release = self.req.release.clone();
        let deployed = self
            .operate(Step::Deploy, |progress, mut opts| {
                opts.pre_deploy = pre_deploy;
                let target = &target;
                async move { target.deploy(&release, &opts, &progress).await }
            })
            .await;
        let report = match deployed {
            Err(TargetError::Cancelled) => {
                if spec.predeploy.is_some() {
                    self.step_end(Step::PreDeploy, StepStatus::Cancelled, "")
                        .await;
                }
                self.step_end(Step::Deploy, StepStatus::Cancelled, "no host was switched")
                    .await;
                self.skip_rest(Step::PostDeploy, "cancelled").await;
                return (DeployStatus::Cancelled, "cancelled".into());
            }
            Err(e) => {
                let why = e.to_string();
                if spec.predeploy.is_some() {
                    self.step_end(
                        Step::PreDeploy,
                        StepStatus::Skipped,
                        "the deploy failed before it",
                    )
                    .await;
                }
                self.step_end(Step::Deploy, StepStatus::Failed, &why).await;
                self.skip_rest(Step::PostDeploy, "deploy failed").await;
                self.say(" !     Nothing went live: every host runs what it ran before.");
                return (DeployStatus::Failed, format!("deploy failed: {why}"));
            }
            Ok(r) => r,
        };
        self.record_hosts(&report).await;
        if let Some(why) = &report.pre_deploy_error {
            self.step_end(Step::PreDeploy, StepStatus::Failed, why)
                .await;
            self.step_end(
                Step::Deploy,
                StepStatus::Skipped,
                "the pre-deploy command failed",
            )
            .await;
            self.skip_rest(Step::PostDeploy, "pre-deploy failed").await;
            self.say(" !     Nothing went live: every host runs what it ran before.");
            return (DeployStatus::Failed, format!("pre-deploy failed: {why}"));
        }
        if spec.predeploy.is_some() {
            self.step_end(
                Step::PreDeploy,
                StepStatus::Passed,
                "ran on the first host before any switch (its output is in the deploy step)",
            )
            .await;
        } else {
            self.step_end(
                Step::PreDeploy,
                StepStatus::Skipped,
                "no pre-deploy command (scripts.dokku.predeploy)",
            )
            .await;
        }
        if !report.ok {
            let why = report
                .error
                .clone()
                .unwrap_or_else(|| "the rollout stopped".into());
            self.step_end(
                Step::Deploy,
                StepStatus::Failed,
                &format!(
                    "{why}; the target switched its hosts back: {}",
                    Self::hosts_line(&report)
                ),
            )
            .await;
            self.skip_rest(Step::PostDeploy, "deploy failed").await;
            self.step_end(
                Step::Rollback,
                StepStatus::Skipped,
                "the target switched every host back itself",
            )
            .await;
            return (DeployStatus::Failed, format!("deploy failed: {why}"));
        }
        self.step_end(
            Step::Deploy,
            StepStatus::Passed,
            &format!(
                "{} is live: {}",
                self.req.release.tag,
                Self::hosts_line(&report)
            ),
        )
        .await;

        // ---- post-deploy ----
        match &spec.postdeploy {
            None => {
                self.step_end(
                    Step::PostDeploy,
                    StepStatus::Skipped,
                    "no post-deploy command (scripts.dokku.postdeploy)",
                )
                .await
            }
            Some(command) => {
                self.step_start(Step::PostDeploy, "once, on the first host, in current");
                self.out(Step::PostDeploy, &format!("$ {command}"));
                let ran = tokio::select! {
                    r = target.exec_first(command) => Some(r),
                    () = self.live.cancel.cancelled() => None,
                };
                let failed = match ran {
                    None => {
                        self.step_end(Step::PostDeploy, StepStatus::Cancelled, "")
                            .await;
                        self.skip_rest(Step::Smoke, "cancelled").await;
                        return (
                            DeployStatus::Cancelled,
                            "cancelled after the release went live".into(),
                        );
                    }
                    Some(Err(e)) => Some(e.to_string()),
                    Some(Ok(r)) => {
                        for line in r.stdout.lines().chain(r.stderr.lines()) {
                            self.out(Step::PostDeploy, line);
                        }
                        match r.code {
                            Some(0) => None,
                            Some(c) => {
                                Some(format!("`{command}` exited with status {c} on {}", r.host))
                            }
                            None => Some(format!(
                                "`{command}` ended without an exit status on {}",
                                r.host
                            )),
                        }
                    }
                };
                if let Some(why) = failed {
                    self.step_end(Step::PostDeploy, StepStatus::Failed, &why)
                        .await;
                    return self
                        .after_live_failure(&target, &before, Step::PostDeploy, &why)
                        .await;
                }
                self.step_end(Step::PostDeploy, StepStatus::Passed, "")
                    .await;
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
            );
            let url = target.spec.public_url().unwrap_or_default().to_string();
            if url.is_empty() {
                self.out(
                    Step::Smoke,
                    "$URL is empty: give the target --url (or a URL --health)",
                );
            }
            let user = match self.state.dynos.build_user(&self.req.smoke_user) {
                Ok(u) => u,
                Err(e) => {
                    let why = format!("could not choose the smoke test's user: {e}");
                    self.step_end(Step::Smoke, StepStatus::Failed, &why).await;
                    return self
                        .after_live_failure(&target, &before, Step::Smoke, &why)
                        .await;
                }
            };
            let mut env = vec![
                ("URL".to_string(), url),
                ("SLIPWAY_TARGET".to_string(), self.req.target.clone()),
                ("SLIPWAY_RELEASE".to_string(), self.req.release.tag.clone()),
                (
                    "SLIPWAY_STAGE".to_string(),
                    self.req
                        .options
                        .stage
                        .clone()
                        .unwrap_or_else(|| "production".into()),
                ),
            ];
            env.extend(
                self.req
                    .secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string())),
            );
            let out = |line: &str| self.out(Step::Smoke, line);
            match run_smoke(&self.state, user, &env, spec, &out, &self.live.cancel).await {
                Outcome::Ok => self.step_end(Step::Smoke, StepStatus::Passed, "").await,
                Outcome::Failed(why) => {
                    self.step_end(Step::Smoke, StepStatus::Failed, &why).await;
                    return self
                        .after_live_failure(&target, &before, Step::Smoke, &why)
                        .await;
                }
                Outcome::Cancelled => {
                    self.step_end(Step::Smoke, StepStatus::Cancelled, "").await;
                    self.skip_rest(Step::LogTest, "cancelled").await;
                    return (
                        DeployStatus::Cancelled,
                        "cancelled after the release went live".into(),
                    );
                }
            }
        }

        // ---- watch window ----
        let window = self.req.options.watch.unwrap_or(spec.watch);
        if window.is_zero() {
            self.step_end(Step::LogTest, StepStatus::Skipped, "no watch window")
                .await;
            self.step_end(Step::Heartbeat, StepStatus::Skipped, "no watch window")
                .await;
        } else {
            // Said before the watch begins, so a follower that stops there (a pipeline
            // deploy) shows it.
            self.say(&format!(
                "-----> Watching {} on target {} for {} s (`slipway targets:deploys {}`)",
                self.req.release.tag,
                self.req.target,
                window.as_secs(),
                self.req.target
            ));
            self.live.emit(Msg::Watching);
            match self.watch(&target, window).await {
                Outcome::Ok => {}
                Outcome::Failed(why) => {
                    return self
                        .after_live_failure(&target, &before, Step::Heartbeat, &why)
                        .await;
                }
                Outcome::Cancelled => {
                    self.skip_rest(Step::Rollback, "cancelled").await;
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

    /// The target, its release file checked, and what each host runs now.
    async fn setup(&self) -> Result<(HostTarget, BTreeMap<String, String>), String> {
        let target = crate::routes::targets::load(&self.state, &self.req.target)
            .await
            .map_err(|e| e.message)?;
        let checked = self.req.release.clone();
        tokio::task::spawn_blocking(move || ReleaseStore::verify_blocking(&checked))
            .await
            .map_err(|e| format!("checking the release was interrupted: {e}"))?
            .map_err(|e| e.to_string())?;
        let hosts = target.releases().await.map_err(|e| e.to_string())?;
        let mut before = BTreeMap::new();
        for h in hosts {
            if let Some(err) = h.error {
                return Err(format!("could not read what {} runs: {err}", h.host));
            }
            if let Some(tag) = h.state.and_then(|s| s.current) {
                before.insert(h.host, tag);
            }
        }
        Ok((target, before))
    }

    /// The watch window on a host target: the log test is inconclusive (there are no router
    /// or dyno logs of a host to read); the heartbeat runs the target's health check.
    async fn watch(&self, target: &HostTarget, window: Duration) -> Outcome {
        let spec = &self.req.spec;
        let deadline = tokio::time::Instant::now() + window;
        self.step_start(Step::LogTest, "no logs to read on a host target");
        let heartbeat = match (&spec.heartbeat, &target.spec.health) {
            (Some(hb), Some(_)) => {
                self.step_start(
                    Step::Heartbeat,
                    &format!(
                        "the target's health check every {} s",
                        hb.interval.as_secs()
                    ),
                );
                let quiet = Progress::default();
                let mut probes = 0u32;
                let mut misses = 0u32;
                loop {
                    let r = tokio::select! {
                        r = target.health(&quiet) => r,
                        () = self.live.cancel.cancelled() => break,
                        () = self.live.end_watch.cancelled() => break,
                        () = tokio::time::sleep_until(deadline) => break,
                    };
                    probes += 1;
                    let bad: Vec<String> = match r {
                        Ok(hosts) => hosts
                            .into_iter()
                            .filter_map(|(h, r)| r.err().map(|e| format!("{h}: {e}")))
                            .collect(),
                        Err(e) => vec![e.to_string()],
                    };
                    if bad.is_empty() {
                        misses = 0;
                    } else {
                        misses += 1;
                        for b in &bad {
                            self.out(Step::Heartbeat, b);
                        }
                        if misses > hb.misses {
                            break;
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(hb.interval) => {}
                        () = self.live.cancel.cancelled() => break,
                        () = self.live.end_watch.cancelled() => break,
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                if misses > hb.misses {
                    Check::Failed(format!(
                        "the target's health check failed {misses} time(s) in a row"
                    ))
                } else if probes == 0 {
                    Check::Inconclusive("no check ran".into())
                } else {
                    Check::Passed(format!("{probes} check(s) of every host"))
                }
            }
            (Some(_), None) => {
                Check::NotConfigured("the target has no health check (targets:add --health)".into())
            }
            (None, _) => Check::NotConfigured(
                "no heartbeat (slipway.heartbeat or healthchecks.web path)".into(),
            ),
        };
        if !matches!(heartbeat, Check::Failed(_)) {
            // The log test has nothing to read; it ends with the window.
            tokio::select! {
                () = self.live.cancel.cancelled() => {}
                () = self.live.end_watch.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        let cancelled = self.live.cancel.is_cancelled();
        let log_test = Check::Inconclusive(
            "a host target has no router or dyno logs for slipway to read".into(),
        );
        let mut failure = None;
        for (step, result) in [(Step::LogTest, log_test), (Step::Heartbeat, heartbeat)] {
            let (status, note) = match result {
                Check::Passed(n) => (StepStatus::Passed, n),
                Check::Failed(why) => {
                    failure.get_or_insert(format!("{}: {why}", step.as_str()));
                    (StepStatus::Failed, why)
                }
                Check::Inconclusive(why) if cancelled => (StepStatus::Cancelled, why),
                Check::Inconclusive(why) => {
                    if spec.inconclusive == InconclusivePolicy::Fail && failure.is_none() {
                        failure = Some(format!(
                            "{} inconclusive ({why}) and slipway.inconclusive is \"fail\"",
                            step.as_str()
                        ));
                    }
                    (StepStatus::Inconclusive, why)
                }
                Check::NotConfigured(why) => (StepStatus::Skipped, why),
            };
            self.step_end(step, status, &note).await;
        }
        match failure {
            Some(why) => Outcome::Failed(why),
            None if cancelled => Outcome::Cancelled,
            None => Outcome::Ok,
        }
    }

    /// A step failed once hosts ran the new release: every host back to what it ran before.
    async fn after_live_failure(
        &self,
        target: &HostTarget,
        before: &BTreeMap<String, String>,
        failed: Step,
        why: &str,
    ) -> (DeployStatus, String) {
        self.skip_rest(
            Step::ALL[failed.ordinal() as usize + 1],
            &format!("{} failed", failed.as_str()),
        )
        .await;
        lock(&self.steps).remove(&Step::Rollback.ordinal());
        let failure = format!("{} failed: {why}", failed.as_str());
        if self.req.options.no_rollback || !self.req.spec.rollback {
            self.step_end(
                Step::Rollback,
                StepStatus::Skipped,
                "rollback is off (--no-rollback or slipway.rollback); the failed release stays live",
            )
            .await;
            return (DeployStatus::Failed, failure);
        }
        if before.is_empty() {
            self.step_end(
                Step::Rollback,
                StepStatus::Skipped,
                "no host ran a release before this deploy",
            )
            .await;
            return (DeployStatus::Failed, failure);
        }
        self.step_start(
            Step::Rollback,
            "every host back to the release it ran before, with its config",
        );
        // The rollback runs even when the deploy was cancelled: hosts go back to a whole
        // release the user had.
        let before = before.clone();
        let rolled = self
            .operate(Step::Rollback, |progress, mut opts| {
                opts.cancel = CancellationToken::new();
                async move { target.rollback_each(&before, &opts, &progress).await }
            })
            .await;
        match rolled {
            Ok(report) if report.ok => {
                self.record_hosts(&report).await;
                self.step_end(
                    Step::Rollback,
                    StepStatus::Passed,
                    &Self::hosts_line(&report),
                )
                .await;
                (DeployStatus::RolledBack, failure)
            }
            Ok(report) => {
                self.record_hosts(&report).await;
                let e = report.error.clone().unwrap_or_default();
                self.step_end(
                    Step::Rollback,
                    StepStatus::Failed,
                    &format!("{e}; {}", Self::hosts_line(&report)),
                )
                .await;
                (
                    DeployStatus::Failed,
                    format!("{failure}; the rollback failed too: {e}"),
                )
            }
            Err(e) => {
                self.step_end(Step::Rollback, StepStatus::Failed, &e.to_string())
                    .await;
                (
                    DeployStatus::Failed,
                    format!("{failure}; the rollback failed too: {e}"),
                )
            }
        }
    }

    /// The report: stored with the target deploy; the end of the transcript.
    async fn finish(&self, status: DeployStatus, failure: &str) {
        self.step_start(Step::Report, "stored");
        self.step_end(
            Step::Report,
            StepStatus::Passed,
            "stored with the target's deploys (`GET /targets/T/deploys`); host targets have no webhooks",
        )
        .await;
        self.store(status, failure, true).await;
        let hosts = lock(&self.hosts).clone();
        for h in hosts.as_array().into_iter().flatten() {
            self.say(&format!(
                "       {}: runs {}",
                h["host"].as_str().unwrap_or("?"),
                h["running"].as_str().unwrap_or("nothing")
            ));
        }
        let summary = if failure.is_empty() {
            format!(
                "Deploy #{} of target {} {}",
                self.record.number,
                self.req.target,
                status.as_str()
            )
        } else {
            format!(
                "Deploy #{} of target {} {}: {failure}",
                self.record.number,
                self.req.target,
                status.as_str()
            )
        };
        tracing::info!(target: "slipway_hosts", "{}", self.masker.mask(&summary));
        match status {
            DeployStatus::Passed => self.say(&format!(
                "-----> Deploy #{} of target {} passed",
                self.record.number, self.req.target
            )),
            _ => self.say(&format!(" !     {summary}")),
        }
        self.live.emit(Msg::Done(status));
    }
}
