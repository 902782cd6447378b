//! [`HostTarget`]: deploys, rollbacks, prunes and commands on a target's hosts.
//!
//! A deploy opens one connection per host, takes every host's lock, uploads and unpacks the
//! release on every host that lacks it (no host is switched before all have it), then switches
//! hosts batch by batch: pre-switch command, atomic `current` switch, restart, health check.
//! A host that fails is switched back and restarted, the rollout stops, and every host already
//! switched is switched back too. The locks are released whatever happened (also when the
//! operation is cancelled, e.g. the client pressed Ctrl-C); a lock left by a killed slipway
//! carries a time to live and is reported as stale.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use slipway_core::Secret;
use slipway_store::release_store::StoredRelease;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::holder::ProcessId;
use crate::remote::{self, HostState, LockInfo, ReleaseEntry, ReleaseStatus};
use crate::ssh::{Connection, KnownHosts, Ran};
use crate::target::{env_file, validate_env, validate_name, TargetSpec};
use crate::{DeployTarget, TargetError};

/// Where an operation's progress lines go (to the client that asked for it).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<String>>,
    switches: Option<mpsc::UnboundedSender<Switch>>,
}

/// A host's `current` now points to a release (sent as soon as the switch is done, so the
/// server's record of what runs where is right even if it is killed mid-deploy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub host: String,
    pub store_name: String,
    pub tag: String,
}

impl Progress {
    pub fn new(tx: mpsc::UnboundedSender<String>) -> Self {
        Self {
            tx: Some(tx),
            switches: None,
        }
    }

    /// Also reports each switch.
    pub fn with_switches(mut self, tx: mpsc::UnboundedSender<Switch>) -> Self {
        self.switches = Some(tx);
        self
    }

    fn switched(&self, host: &str, state: &HostState, tag: &str) {
        let store_name = state
            .releases
            .iter()
            .find(|r| r.tag == tag)
            .map(|r| r.store_name.clone())
            .unwrap_or_default();
        if let (Some(tx), false) = (&self.switches, store_name.is_empty()) {
            let _ = tx.send(Switch {
                host: host.to_string(),
                store_name,
                tag: tag.to_string(),
            });
        }
    }

    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(target: "slipway_hosts", "{line}");
        if let Some(tx) = &self.tx {
            let _ = tx.send(line);
        }
    }
}

/// How an operation runs.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Written into the lock: who holds it.
    pub owner: String,
    /// How long to wait for another operation's lock before giving up.
    pub lock_wait: Duration,
    /// The lock's time to live: after it, the lock is reported as stale.
    pub lock_ttl: Duration,
    /// Cancelling stops the operation at its next step, switches hosts back and unlocks.
    pub cancel: CancellationToken,
    /// A deploy's command run once, on the first host, in the new release's directory with
    /// its environment, after every host has the release and before any host switches (the
    /// deploy runner's `scripts.dokku.predeploy`: migrations). Failing stops the deploy with
    /// no host switched.
    pub pre_deploy: Option<String>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            owner: "slipway".into(),
            lock_wait: Duration::ZERO,
            lock_ttl: Duration::from_secs(15 * 60),
            cancel: CancellationToken::new(),
            pre_deploy: None,
        }
    }
}

/// One host after an operation.
#[derive(Debug, Clone, Serialize)]
pub struct HostOutcome {
    pub host: String,
    /// The release `current` points to now.
    pub running: Option<String>,
    /// The release store name it came from, when the host's state knows it.
    pub store_name: Option<String>,
    /// What happened there, in words.
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub deploy_id: String,
    pub tag: String,
    pub ok: bool,
    /// Why the rollout stopped, when it did.
    pub error: Option<String>,
    /// The deploy's pre-deploy command (see [`DeployOptions::pre_deploy`]) failed: no host
    /// was switched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_deploy_error: Option<String>,
    pub hosts: Vec<HostOutcome>,
}

/// What one host has (or why it could not be asked).
#[derive(Debug, Clone, Serialize)]
pub struct HostReleases {
    pub host: String,
    pub state: Option<HostState>,
    pub lock: Option<LockInfo>,
    /// The lock's time to live ran out, or its holder (a process of this installation) is
    /// gone.
    pub stale_lock: bool,
    /// The lock's holder was a slipway process of this installation that no longer runs (the
    /// next operation breaks the lock by itself).
    #[serde(default)]
    pub holder_gone: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub host: String,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    pub host: String,
    /// `None` when the command was killed by a signal or the connection was lost.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A set of SSH hosts deployed to as one.
pub struct HostTarget {
    pub spec: TargetSpec,
    env: BTreeMap<String, Secret>,
    known_hosts: KnownHosts,
    /// This slipway installation's id, written into locks: a lock of this installation whose
    /// process is gone is broken by the next operation (see `holder.rs`).
    installation: String,
    /// More build directory paths a release must not name (see `relocation.rs`).
    build_paths: Vec<String>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn remote_failure(conn: &Connection, step: &str, ran: &Ran) -> TargetError {
    let mut detail = match (ran.stderr.trim(), ran.stdout.trim()) {
        ("", "") => format!("exit status {:?}", ran.code),
        ("", out) => format!("exit status {:?}: {}", ran.code, tail(out)),
        (err, _) => format!("exit status {:?}: {}", ran.code, tail(err)),
    };
    if detail.contains("No space left on device") || detail.contains("Disk quota exceeded") {
        detail.push_str(
            " -- the host's disk is full: free space under the target's path (`slipway targets:prune TARGET --keep N` removes old releases) and deploy again",
        );
    }
    TargetError::Remote {
        host: conn.host.to_string(),
        step: step.into(),
        detail,
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn parse_lock(output: &str) -> Option<LockInfo> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("lock="))
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l.trim()).unwrap_or(LockInfo {
                owner: "unknown (unreadable lock file)".into(),
                deploy_id: String::new(),
                acquired_at: 0,
                ttl_secs: 0,
                operation: "unknown".into(),
                installation: String::new(),
                process: None,
                machine: String::new(),
            })
        })
}

/// Result of switching one host.
struct Switched {
    prev: Option<String>,
}

impl HostTarget {
    /// `target_dir` holds the target's `known_hosts` and ssh settings.
    pub fn new(
        spec: TargetSpec,
        env: BTreeMap<String, Secret>,
        target_dir: &Path,
    ) -> Result<Self, TargetError> {
        spec.validate()?;
        validate_env(&env)?;
        Ok(Self {
            spec,
            env,
            known_hosts: KnownHosts::new(target_dir),
            installation: String::new(),
            build_paths: Vec::new(),
        })
    }

    /// Marks the locks this target takes with the installation's id (see
    /// [`crate::installation_id`]).
    pub fn with_installation(mut self, installation: String) -> Self {
        self.installation = installation;
        self
    }

    /// Build directories (beyond the usual ones) a deployed release must not name.
    pub fn with_build_paths(mut self, paths: Vec<String>) -> Self {
        self.build_paths = paths;
        self
    }

    pub fn known_hosts(&self) -> &KnownHosts {
        &self.known_hosts
    }

    fn path(&self) -> &str {
        &self.spec.path
    }

    /// One connection per host, all or none.
    async fn connect_all(&self) -> Result<Vec<Connection>, TargetError> {
        let key = self.spec.key.as_deref();
        let results = futures::future::join_all(
            self.spec
                .hosts
                .iter()
                .map(|h| self.known_hosts.connect(h, key)),
        )
        .await;
        let mut conns = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(c) => conns.push(c),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for c in conns {
                c.close().await;
            }
            return Err(e);
        }
        Ok(conns)
    }

    async fn close_all(conns: Vec<Connection>) {
        for c in conns {
            c.close().await;
        }
    }

    async fn lock_one(
        &self,
        conn: &Connection,
        id: &str,
        operation: &str,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        let info = LockInfo {
            owner: opts.owner.clone(),
            deploy_id: id.to_string(),
            acquired_at: now_secs(),
            ttl_secs: opts.lock_ttl.as_secs(),
            operation: operation.to_string(),
            installation: self.installation.clone(),
            process: Some(ProcessId::this()),
            machine: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        };
        let json = serde_json::to_string(&info).map_err(|e| TargetError::Invalid(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + opts.lock_wait;
        let mut said = false;
        loop {
            let ran = conn
                .run(&remote::lock(), &[self.path(), &json], None)
                .await?;
            if !ran.ok() {
                return Err(remote_failure(conn, "taking the lock", &ran));
            }
            let mut lines = ran.stdout.lines();
            if lines.next() == Some("acquired") {
                return Ok(());
            }
            let rest: String = lines.collect::<Vec<_>>().join("");
            let holder: Option<LockInfo> = serde_json::from_str(rest.trim()).ok();
            if let Some(h) = holder
                .as_ref()
                .filter(|h| h.holder_gone(&self.installation))
            {
                // Left by this installation's slipway that was killed mid-operation: break it
                // (only if it is still that lock) and take it.
                progress.say(format!(
                    "{}: breaking the lock left by {}: that slipway process is gone",
                    conn.host,
                    h.describe()
                ));
                let ran = conn
                    .run(&remote::unlock(), &[self.path(), &h.deploy_id], None)
                    .await?;
                if !ran.ok() {
                    return Err(remote_failure(conn, "breaking a dead holder's lock", &ran));
                }
                continue;
            }
            let (who, stale) = match &holder {
                Some(h) => (
                    h.describe(),
                    if h.is_stale(now_secs()) {
                        " (stale: its time to live ran out, its owner is probably gone)".to_string()
                    } else {
                        String::new()
                    },
                ),
                None => (
                    "an unreadable lock file".to_string(),
                    " (stale: it cannot be read)".to_string(),
                ),
            };
            if tokio::time::Instant::now() >= deadline || !stale.is_empty() {
                return Err(TargetError::Locked {
                    host: conn.host.to_string(),
                    holder: who,
                    stale,
                });
            }
            if !said {
                progress.say(format!("{}: waiting for the lock held by {who}", conn.host));
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = opts.cancel.cancelled() => return Err(TargetError::Cancelled),
            }
        }
    }

    /// Locks every host, or none.
    async fn lock_all(
        &self,
        conns: &[Connection],
        id: &str,
        operation: &str,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        for (i, conn) in conns.iter().enumerate() {
            if let Err(e) = self.lock_one(conn, id, operation, opts, progress).await {
                self.unlock_all(&conns[..i], id).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn unlock_all(&self, conns: &[Connection], id: &str) {
        for conn in conns {
            match conn.run(&remote::unlock(), &[self.path(), id], None).await {
                Ok(r) if r.ok() => {}
                Ok(r) => {
                    tracing::warn!(host = %conn.host, stderr = %r.stderr, "could not release the lock")
                }
                Err(e) => {
                    tracing::warn!(host = %conn.host, error = %e, "could not release the lock")
                }
            }
        }
    }

    async fn read_state(
        &self,
        conn: &Connection,
    ) -> Result<(HostState, Option<LockInfo>), TargetError> {
        let ran = conn
            .run(&remote::read_state(), &[self.path()], None)
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "reading the host's state", &ran));
        }
        Ok((HostState::parse(&ran.stdout), parse_lock(&ran.stdout)))
    }

    async fn write_state(
        &self,
        conn: &Connection,
        state: &mut HostState,
    ) -> Result<(), TargetError> {
        state.version = 1;
        state.updated_at = chrono::Utc::now().to_rfc3339();
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| TargetError::Invalid(e.to_string()))?;
        let ran = conn
            .run(&remote::write_state(), &[self.path()], Some(&json))
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "writing state.json", &ran));
        }
        Ok(())
    }

    /// Upload with checksum verification, then unpack into `releases/<tag>` (atomically).
    async fn upload(
        &self,
        conn: &Connection,
        id: &str,
        release: &StoredRelease,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        progress.say(format!(
            "{}: uploading {} {} ({} bytes)",
            conn.host, release.name, release.tag, release.size
        ));
        let ran = conn
            .run_with_file(
                &remote::upload(),
                &[self.path(), id, &release.sha256],
                Path::new(&release.path),
            )
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "upload", &ran));
        }
        let mut args = vec![self.path(), id, release.tag.as_str()];
        args.extend(self.spec.shared.iter().map(String::as_str));
        let env = env_file(&self.env);
        let ran = conn
            .run(&remote::unpack(), &args, Some(env.as_bytes()))
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "unpacking the release", &ran));
        }
        progress.say(format!(
            "{}: releases/{} unpacked (checksum verified)",
            conn.host, release.tag
        ));
        Ok(())
    }

    async fn switch(&self, conn: &Connection, tag: &str) -> Result<Option<String>, TargetError> {
        let ran = conn
            .run(&remote::switch(), &[self.path(), tag], None)
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "switching current", &ran));
        }
        let prev = ran.stdout.trim().to_string();
        Ok((!prev.is_empty()).then_some(prev))
    }

    async fn restart(&self, conn: &Connection, progress: &Progress) -> Result<(), TargetError> {
        let Some(cmd) = &self.spec.restart else {
            return Ok(());
        };
        let ran = conn
            .run(&remote::in_current(), &[self.path(), cmd], None)
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "the restart command", &ran));
        }
        progress.say(format!("{}: restarted", conn.host));
        Ok(())
    }

    async fn check_health(
        &self,
        conn: &Connection,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        let Some(check) = &self.spec.health else {
            return Ok(());
        };
        let kind = if self.spec.health_is_url() {
            "url"
        } else {
            "cmd"
        };
        let (n, wait, t) = (
            self.spec.health_attempts.to_string(),
            self.spec.health_interval_secs.to_string(),
            self.spec.health_timeout_secs.to_string(),
        );
        let ran = conn
            .run(
                &remote::health(),
                &[self.path(), kind, check, &n, &wait, &t],
                None,
            )
            .await?;
        if !ran.ok() {
            return Err(remote_failure(conn, "the health check", &ran));
        }
        progress.say(format!("{}: {}", conn.host, ran.stdout.trim()));
        Ok(())
    }

    /// Pre-switch, switch, restart, health on one host. On failure the host is switched back
    /// (and restarted) here; the error says what failed.
    async fn roll_host(
        &self,
        conn: &Connection,
        state: &mut HostState,
        tag: &str,
        run_pre_switch: bool,
        progress: &Progress,
    ) -> Result<Switched, TargetError> {
        if run_pre_switch {
            if let Some(cmd) = &self.spec.pre_switch {
                let ran = conn
                    .run(&remote::pre_switch(), &[self.path(), tag, cmd], None)
                    .await?;
                if !ran.ok() {
                    if let Some(e) = state.entry_mut(tag) {
                        e.status = ReleaseStatus::Failed;
                    }
                    let _ = self.write_state(conn, state).await;
                    return Err(remote_failure(conn, "the pre-switch command", &ran));
                }
            }
        }
        let prev = self.switch(conn, tag).await?;
        progress.switched(&conn.host.to_string(), state, tag);
        state.current = Some(tag.to_string());
        self.write_state(conn, state).await?;
        progress.say(format!(
            "{}: current -> releases/{tag} (was {})",
            conn.host,
            prev.as_deref().unwrap_or("nothing")
        ));
        let checked = match self.restart(conn, progress).await {
            Ok(()) => self.check_health(conn, progress).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => {
                if let Some(e) = state.entry_mut(tag) {
                    e.status = ReleaseStatus::Ok;
                }
                if prev.as_deref() != Some(tag) {
                    state.previous_good = prev.clone().or(state.previous_good.take());
                }
                self.write_state(conn, state).await?;
                Ok(Switched { prev })
            }
            Err(e) => {
                progress.say(format!("{}: {e}", conn.host));
                if let Some(entry) = state.entry_mut(tag) {
                    entry.status = ReleaseStatus::Failed;
                }
                self.switch_back(conn, state, prev.as_deref(), true, progress)
                    .await;
                Err(e)
            }
        }
    }

    /// Points a host back at `prev` and restarts it (best effort: said in the progress). With
    /// `check`, then runs the health check and says how it went (not when cancelled: the user
    /// asked to stop, and a slow check is often why).
    async fn switch_back(
        &self,
        conn: &Connection,
        state: &mut HostState,
        prev: Option<&str>,
        check: bool,
        progress: &Progress,
    ) {
        let Some(prev) = prev else {
            progress.say(format!(
                "{}: there is no previous release to switch back to",
                conn.host
            ));
            let _ = self.write_state(conn, state).await;
            return;
        };
        match self.switch(conn, prev).await {
            Ok(_) => {
                progress.switched(&conn.host.to_string(), state, prev);
                state.current = Some(prev.to_string());
                let _ = self.write_state(conn, state).await;
                progress.say(format!("{}: switched back to releases/{prev}", conn.host));
                // The host is back on a release that was healthy; say whether it is again,
                // so a failed deploy does not return while the old release is still starting.
                match self.restart(conn, progress).await {
                    Err(e) => progress.say(format!("{}: restarting {prev} failed: {e}", conn.host)),
                    Ok(()) if !check => {}
                    Ok(()) => {
                        if let Err(e) = self.check_health(conn, progress).await {
                            progress.say(format!(
                                "{}: {prev} is not healthy after switching back: {e}",
                                conn.host
                            ));
                        }
                    }
                }
            }
            Err(e) => progress.say(format!(
                "{}: could not switch back to {prev}: {e}",
                conn.host
            )),
        }
    }

    /// Switches each host to its tag (`tags[i]`; `None` leaves host i as it is) in batches;
    /// on the first failure, switches every host already switched back. Returns the per-host
    /// outcome and the error that stopped the rollout.
    async fn rollout(
        &self,
        conns: &[Connection],
        states: &mut [HostState],
        tags: &[Option<String>],
        run_pre_switch: bool,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> (Vec<String>, Option<String>) {
        let mut outcomes = vec!["not switched".to_string(); conns.len()];
        let mut switched: Vec<(usize, Option<String>)> = Vec::new();
        let mut failure: Option<String> = None;
        for (i, tag) in tags.iter().enumerate() {
            if tag.is_none() {
                outcomes[i] = format!(
                    "left on {} (no release to switch it to)",
                    states[i].current.as_deref().unwrap_or("nothing")
                );
            }
        }
        let indexes: Vec<usize> = (0..conns.len()).filter(|&i| tags[i].is_some()).collect();
        for batch in indexes.chunks(self.spec.batch) {
            if opts.cancel.is_cancelled() {
                failure = Some("the deploy was cancelled".into());
                break;
            }
            let before: Vec<Option<String>> =
                batch.iter().map(|&i| states[i].current.clone()).collect();
            let mut batch_states: Vec<HostState> =
                batch.iter().map(|&i| states[i].clone()).collect();
            let results = tokio::select! {
                r = futures::future::join_all(batch.iter().zip(batch_states.iter_mut()).map(
                    |(&i, state)| {
                        let tag = tags[i].as_deref().unwrap_or_default();
                        self.roll_host(&conns[i], state, tag, run_pre_switch, progress)
                    },
                )) => Some(r),
                _ = opts.cancel.cancelled() => None,
            };
            let Some(results) = results else {
                // Cancelled mid-step: each host of the batch is put back where it was, from
                // what the host itself says now.
                for (&i, prev) in batch.iter().zip(before) {
                    if let Ok((now, _)) = self.read_state(&conns[i]).await {
                        states[i] = now;
                    }
                    if states[i].current != prev {
                        self.switch_back(
                            &conns[i],
                            &mut states[i],
                            prev.as_deref(),
                            false,
                            progress,
                        )
                        .await;
                    }
                    outcomes[i] = "cancelled during its switch; put back".to_string();
                }
                failure = Some("the deploy was cancelled".into());
                break;
            };
            for ((&i, state), result) in batch.iter().zip(batch_states).zip(results) {
                states[i] = state;
                let tag = tags[i].as_deref().unwrap_or_default();
                match result {
                    Ok(s) => {
                        outcomes[i] = format!("switched to {tag}, healthy");
                        switched.push((i, s.prev));
                    }
                    Err(e) => {
                        outcomes[i] = format!("failed ({e}); switched back");
                        failure.get_or_insert(e.to_string());
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_some() {
            for (i, prev) in switched.into_iter().rev() {
                let check = !opts.cancel.is_cancelled();
                self.switch_back(&conns[i], &mut states[i], prev.as_deref(), check, progress)
                    .await;
                outcomes[i] = format!(
                    "was switched to {}, switched back after another host failed",
                    tags[i].as_deref().unwrap_or_default()
                );
            }
        }
        (outcomes, failure)
    }

    fn report(
        &self,
        id: &str,
        tag: &str,
        states: &[HostState],
        outcomes: Vec<String>,
        error: Option<String>,
    ) -> DeployReport {
        DeployReport {
            deploy_id: id.to_string(),
            tag: tag.to_string(),
            ok: error.is_none(),
            error,
            pre_deploy_error: None,
            hosts: self
                .spec
                .hosts
                .iter()
                .zip(states)
                .zip(outcomes)
                .map(|((h, s), outcome)| HostOutcome {
                    host: h.to_string(),
                    running: s.current.clone(),
                    store_name: s
                        .current
                        .as_ref()
                        .and_then(|c| s.releases.iter().find(|r| &r.tag == c))
                        .map(|r| r.store_name.clone())
                        .filter(|n| !n.is_empty()),
                    outcome,
                })
                .collect(),
        }
    }

    /// Puts `release` on one host unless it is there already (then with the same checksum).
    async fn ensure_release(
        &self,
        conn: &Connection,
        state: &mut HostState,
        id: &str,
        release: &StoredRelease,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        if let Some(existing) = state.entry_mut(&release.tag) {
            if !existing.sha256.is_empty() && existing.sha256 != release.sha256 {
                return Err(TargetError::Refused(format!(
                    "{} already has a different releases/{} (sha256 {}); deploy under a new tag",
                    conn.host, release.tag, existing.sha256
                )));
            }
            progress.say(format!(
                "{}: releases/{} is already there (with the environment it was first deployed with)",
                conn.host, release.tag
            ));
            return Ok(());
        }
        self.upload(conn, id, release, progress).await?;
        state.releases.push(ReleaseEntry {
            tag: release.tag.clone(),
            store_name: release.name.clone(),
            sha256: release.sha256.clone(),
            status: ReleaseStatus::Unpacked,
            deployed_at: chrono::Utc::now().to_rfc3339(),
            pinned: false,
        });
        self.write_state(conn, state).await
    }

    async fn deploy_locked(
        &self,
        conns: &[Connection],
        id: &str,
        release: &StoredRelease,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<DeployReport, TargetError> {
        let mut states = Vec::new();
        for conn in conns {
            states.push(self.read_state(conn).await?.0);
        }
        // Every host gets the release before any host switches to it; a batch of hosts
        // receives it at once.
        let mut pairs: Vec<(&Connection, &mut HostState)> =
            conns.iter().zip(states.iter_mut()).collect();
        for batch in pairs.chunks_mut(self.spec.batch.max(1)) {
            if opts.cancel.is_cancelled() {
                return Err(TargetError::Cancelled);
            }
            let results = tokio::select! {
                r = futures::future::join_all(batch.iter_mut().map(|(conn, state)| {
                    self.ensure_release(conn, state, id, release, progress)
                })) => r,
                _ = opts.cancel.cancelled() => return Err(TargetError::Cancelled),
            };
            for r in results {
                r?;
            }
        }
        if let (Some(cmd), Some(conn)) = (&opts.pre_deploy, conns.first()) {
            if opts.cancel.is_cancelled() {
                return Err(TargetError::Cancelled);
            }
            progress.say(format!(
                "{}: pre-deploy in releases/{} (once, before any host switches): $ {cmd}",
                conn.host, release.tag
            ));
            let script = remote::pre_switch();
            let args = [self.path(), release.tag.as_str(), cmd.as_str()];
            let ran = tokio::select! {
                r = conn.run(&script, &args, None) => r?,
                _ = opts.cancel.cancelled() => return Err(TargetError::Cancelled),
            };
            for line in ran.stdout.lines().chain(ran.stderr.lines()) {
                progress.say(format!("{}: {line}", conn.host));
            }
            if !ran.ok() {
                let e = remote_failure(conn, "the pre-deploy command", &ran);
                let outcomes =
                    vec!["not switched (the pre-deploy failed)".to_string(); conns.len()];
                let mut report =
                    self.report(id, &release.tag, &states, outcomes, Some(e.to_string()));
                report.pre_deploy_error = Some(e.to_string());
                return Ok(report);
            }
        }
        let tags = vec![Some(release.tag.clone()); conns.len()];
        let (outcomes, error) = self
            .rollout(conns, &mut states, &tags, true, opts, progress)
            .await;
        Ok(self.report(id, &release.tag, &states, outcomes, error))
    }

    /// Connect, lock, run `f`, unlock (whatever `f` returned), close.
    async fn locked<T, F, Fut>(
        &self,
        operation: &str,
        opts: &DeployOptions,
        progress: &Progress,
        f: F,
    ) -> Result<T, TargetError>
    where
        F: FnOnce(Vec<Connection>, String) -> Fut,
        Fut: std::future::Future<Output = (Vec<Connection>, Result<T, TargetError>)>,
    {
        let conns = self.connect_all().await?;
        let id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = self.lock_all(&conns, &id, operation, opts, progress).await {
            Self::close_all(conns).await;
            return Err(e);
        }
        let (conns, result) = f(conns, id.clone()).await;
        self.unlock_all(&conns, &id).await;
        Self::close_all(conns).await;
        result
    }

    /// Removes old releases on every host (see [`HostState::prunable`]).
    pub async fn prune(
        &self,
        keep: usize,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<Vec<PruneReport>, TargetError> {
        self.locked("prune", opts, progress, |conns, _id| async move {
            let mut reports = Vec::new();
            for conn in &conns {
                let r = async {
                    let (mut state, _) = self.read_state(conn).await?;
                    let remove = state.prunable(keep);
                    if !remove.is_empty() {
                        let mut args = vec![self.path()];
                        args.extend(remove.iter().map(String::as_str));
                        let ran = conn.run(&remote::remove_releases(), &args, None).await?;
                        if !ran.ok() {
                            return Err(remote_failure(conn, "removing releases", &ran));
                        }
                        state.releases.retain(|r| !remove.contains(&r.tag));
                        self.write_state(conn, &mut state).await?;
                    }
                    progress.say(format!(
                        "{}: removed {}",
                        conn.host,
                        if remove.is_empty() {
                            "nothing".to_string()
                        } else {
                            remove.join(", ")
                        }
                    ));
                    Ok(PruneReport {
                        host: conn.host.to_string(),
                        kept: state.releases.iter().map(|r| r.tag.clone()).collect(),
                        removed: remove,
                    })
                }
                .await;
                match r {
                    Ok(r) => reports.push(r),
                    Err(e) => return (conns, Err(e)),
                }
            }
            (conns, Ok(reports))
        })
        .await
    }

    /// Pins (or unpins) a release on every host that has it: prune never removes it.
    pub async fn pin(
        &self,
        tag: &str,
        pinned: bool,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<(), TargetError> {
        validate_name("tag", tag).map_err(TargetError::Invalid)?;
        self.locked("pin", opts, progress, |conns, _id| async move {
            let mut found = false;
            for conn in &conns {
                let r = async {
                    let (mut state, _) = self.read_state(conn).await?;
                    if let Some(e) = state.entry_mut(tag) {
                        e.pinned = pinned;
                        found = true;
                        self.write_state(conn, &mut state).await?;
                    }
                    Ok::<_, TargetError>(())
                }
                .await;
                if let Err(e) = r {
                    return (conns, Err(e));
                }
            }
            if !found {
                return (
                    conns,
                    Err(TargetError::Refused(format!("no host has release {tag}"))),
                );
            }
            (conns, Ok(()))
        })
        .await
    }

    /// Runs `command` on every host (in `current`, with its env), one after the other.
    pub async fn exec(&self, command: &str) -> Result<Vec<ExecResult>, TargetError> {
        if command.trim().is_empty() || command.len() > 4096 {
            return Err(TargetError::Invalid(
                "the command must be 1 to 4096 bytes".into(),
            ));
        }
        let conns = self.connect_all().await?;
        let mut results = Vec::new();
        for conn in &conns {
            match conn
                .run(&remote::exec(), &[self.path(), command], None)
                .await
            {
                Ok(ran) => results.push(ExecResult {
                    host: conn.host.to_string(),
                    code: ran.code,
                    stdout: ran.stdout,
                    stderr: ran.stderr,
                }),
                Err(e) => results.push(ExecResult {
                    host: conn.host.to_string(),
                    code: None,
                    stdout: String::new(),
                    stderr: e.to_string(),
                }),
            }
        }
        Self::close_all(conns).await;
        Ok(results)
    }

    /// Switches each host back to the release it ran before a deploy (`before`: host, as
    /// `user@host[:port]`, -> tag), under the lock, with that release's own environment (it is
    /// in the release): the deploy runner's automatic rollback. A host missing from `before`
    /// (it ran nothing) or lacking its release is left as it is, and the report says so.
    pub async fn rollback_each(
        &self,
        before: &BTreeMap<String, String>,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<DeployReport, TargetError> {
        for tag in before.values() {
            validate_name("tag", tag).map_err(TargetError::Invalid)?;
        }
        self.locked("rollback", opts, progress, |conns, id| async move {
            let r = async {
                let mut states = Vec::new();
                for conn in &conns {
                    states.push(self.read_state(conn).await?.0);
                }
                let tags: Vec<Option<String>> = conns
                    .iter()
                    .zip(&states)
                    .map(|(c, s)| {
                        before
                            .get(&c.host.to_string())
                            .filter(|t| s.has(t))
                            .cloned()
                    })
                    .collect();
                let mut said: Vec<String> = Vec::new();
                for (c, t) in conns.iter().zip(&tags) {
                    said.push(format!(
                        "{} -> {}",
                        c.host,
                        t.as_deref().unwrap_or("(left as it is)")
                    ));
                }
                progress.say(format!(
                    "Rolling {} back to what each host ran before: {}",
                    self.spec.name,
                    said.join(", ")
                ));
                let (outcomes, error) = self
                    .rollout(&conns, &mut states, &tags, false, opts, progress)
                    .await;
                let label = tags.iter().flatten().next().cloned().unwrap_or_default();
                Ok(self.report(&id, &label, &states, outcomes, error))
            }
            .await;
            (conns, r)
        })
        .await
    }

    /// Runs `command` once, on the first host, in `current` with its environment (the deploy
    /// runner's post-deploy command).
    pub async fn exec_first(&self, command: &str) -> Result<ExecResult, TargetError> {
        if command.trim().is_empty() || command.len() > 4096 {
            return Err(TargetError::Invalid(
                "the command must be 1 to 4096 bytes".into(),
            ));
        }
        let host = self
            .spec
            .hosts
            .first()
            .ok_or_else(|| TargetError::Invalid("the target has no hosts".into()))?;
        let conn = self
            .known_hosts
            .connect(host, self.spec.key.as_deref())
            .await?;
        let ran = conn
            .run(&remote::exec(), &[self.path(), command], None)
            .await;
        conn.close().await;
        let ran = ran?;
        Ok(ExecResult {
            host: host.to_string(),
            code: ran.code,
            stdout: ran.stdout,
            stderr: ran.stderr,
        })
    }

    /// Breaks every host's lock, whoever holds it. Returns, per host, the lock it removed.
    pub async fn unlock(&self) -> Result<Vec<(String, Option<LockInfo>)>, TargetError> {
        let conns = self.connect_all().await?;
        let mut out = Vec::new();
        for conn in &conns {
            let ran = match conn.run(&remote::unlock(), &[self.path(), ""], None).await {
                Ok(r) if r.ok() => r,
                Ok(r) => {
                    let e = remote_failure(conn, "breaking the lock", &r);
                    Self::close_all(conns).await;
                    return Err(e);
                }
                Err(e) => {
                    Self::close_all(conns).await;
                    return Err(e);
                }
            };
            let text = ran.stdout.trim();
            out.push((
                conn.host.to_string(),
                (!text.is_empty())
                    .then(|| parse_lock(&format!("lock={text}")))
                    .flatten(),
            ));
        }
        Self::close_all(conns).await;
        Ok(out)
    }
}

impl DeployTarget for HostTarget {
    async fn deploy(
        &self,
        release: &StoredRelease,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<DeployReport, TargetError> {
        validate_name("tag", &release.tag).map_err(TargetError::Invalid)?;
        // It runs from `<path>/current`: refuse it before any host is touched if it cannot.
        let (checked, extra) = (release.clone(), self.build_paths.clone());
        tokio::task::spawn_blocking(move || crate::relocation::check(&checked, &extra))
            .await
            .map_err(|e| TargetError::Io {
                path: release.path.clone(),
                source: std::io::Error::other(e),
            })??;
        progress.say(format!(
            "Deploying {} {} to {} ({} host(s), {} at a time)",
            release.name,
            release.tag,
            self.spec.name,
            self.spec.hosts.len(),
            self.spec.batch
        ));
        self.locked("deploy", opts, progress, |conns, id| async move {
            let r = self
                .deploy_locked(&conns, &id, release, opts, progress)
                .await;
            (conns, r)
        })
        .await
    }

    async fn rollback(
        &self,
        tag: Option<&str>,
        opts: &DeployOptions,
        progress: &Progress,
    ) -> Result<DeployReport, TargetError> {
        if let Some(tag) = tag {
            validate_name("tag", tag).map_err(TargetError::Invalid)?;
        }
        self.locked("rollback", opts, progress, |conns, id| async move {
            let r = async {
                let mut states = Vec::new();
                for conn in &conns {
                    states.push(self.read_state(conn).await?.0);
                }
                let tag = match tag {
                    Some(t) => t.to_string(),
                    None => states
                        .first()
                        .and_then(|s| s.previous_good.clone())
                        .ok_or_else(|| {
                            TargetError::Refused(
                                "there is no previous known-good release to roll back to; name one (`slipway targets:releases TARGET` lists them)".into(),
                            )
                        })?,
                };
                let lacking: Vec<String> = conns
                    .iter()
                    .zip(&states)
                    .filter(|(_, s)| !s.has(&tag))
                    .map(|(c, _)| c.host.to_string())
                    .collect();
                if !lacking.is_empty() {
                    return Err(TargetError::Refused(format!(
                        "release {tag} is not on {}: a rollback only switches to a release every host has (deploy it instead)",
                        lacking.join(", ")
                    )));
                }
                progress.say(format!("Rolling {} back to {tag}", self.spec.name));
                let tags = vec![Some(tag.clone()); conns.len()];
                let (outcomes, error) = self
                    .rollout(&conns, &mut states, &tags, false, opts, progress)
                    .await;
                Ok(self.report(&id, &tag, &states, outcomes, error))
            }
            .await;
            (conns, r)
        })
        .await
    }

    async fn releases(&self) -> Result<Vec<HostReleases>, TargetError> {
        let key = self.spec.key.as_deref();
        // Every host at once: one slow or unreachable host does not hold up the others.
        let out = futures::future::join_all(self.spec.hosts.iter().map(|host| async move {
            match self.known_hosts.connect(host, key).await {
                Ok(conn) => {
                    let r = self.read_state(&conn).await;
                    conn.close().await;
                    match r {
                        Ok((state, lock)) => HostReleases {
                            host: host.to_string(),
                            holder_gone: lock
                                .as_ref()
                                .is_some_and(|l| l.holder_gone(&self.installation)),
                            stale_lock: lock.as_ref().is_some_and(|l| {
                                l.is_stale(now_secs()) || l.holder_gone(&self.installation)
                            }),
                            state: Some(state),
                            lock,
                            error: None,
                        },
                        Err(e) => HostReleases {
                            host: host.to_string(),
                            state: None,
                            lock: None,
                            stale_lock: false,
                            holder_gone: false,
                            error: Some(e.to_string()),
                        },
                    }
                }
                Err(e) => HostReleases {
                    host: host.to_string(),
                    state: None,
                    lock: None,
                    stale_lock: false,
                    holder_gone: false,
                    error: Some(e.to_string()),
                },
            }
        }))
        .await;
        Ok(out)
    }

    async fn health(&self, progress: &Progress) -> Result<crate::HealthReport, TargetError> {
        let conns = self.connect_all().await?;
        let mut out = Vec::new();
        for conn in &conns {
            let r = self
                .check_health(conn, progress)
                .await
                .map_err(|e| e.to_string());
            out.push((conn.host.to_string(), r));
        }
        Self::close_all(conns).await;
        Ok(out)
    }
}
