//! The dyno manager.
//!
//! [`DynoManager::converge`] makes an app's running dynos match its release and formation:
//! dynos whose release or command is out of date are replaced, missing ones started, extra
//! ones stopped. Each dyno is supervised (`supervisor.rs`) through an explicit lifecycle
//! (`lifecycle.rs`) and run by a [`DynoBackend`] (`backend.rs`): a container under an OCI
//! runtime (`oci.rs`, the default when the server is root and runc works) or a plain process
//! group (`plain.rs`, the fallback). Either way it runs from a fresh copy of the slug in its
//! own directory outside the data directory, under the app's own uid when the server is root
//! (`users.rs`), with `PORT` (web), `DYNO` and the app's config in its environment, its
//! output sent to the app's log stream. Memory comes from the dyno's cgroup (`cgroup.rs`).
//!
//! On a deploy the old dynos keep serving until the new web dynos are up and past their health
//! checks (`rollout.rs`, `health.rs`); then they leave routing, the requests they have finish
//! (the router's drain, bounded) and they are stopped: SIGTERM, and SIGKILL after the stop
//! timeout. New dynos that never become healthy are stopped instead and the old ones stay.
//!
//! Each dyno runs under its own monitor process (`monitor.rs`, the `slipway dyno-monitor`
//! subcommand), which holds its output in a bounded on-disk log (`dynolog.rs`) and records its
//! exit, so dynos outlive the server. What a dyno needs to be found again (id, pid, port,
//! release, size, directory) is the runtime's own durable state, beside its monitor
//! (`record.rs`); at start-up [`DynoManager::recover`] finds the dynos whose monitors still
//! run, for the control plane to [`DynoManager::adopt`] them, and cleans up after the others.
//!
//! The runtime does not write the platform's store: it reports what happens to its dynos as
//! typed [`DynoEvent`]s (`events.rs`) on a stream that never drops one, which the control plane
//! records and prints as the `heroku[web.1]` log lines.

mod attach;
mod backend;
mod build_sandbox;
mod cgroup;
mod dynolog;
pub mod events;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod monitor;
mod oci;
mod oneoff;
mod plain;
mod process;
mod reconcile;
mod record;
mod releasedir;
mod restart;
mod rollout;
pub mod settings;
mod supervisor;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_logs::LogHub;
use tokio::sync::watch;

pub use backend::{
    BoxFuture, DynoBackend, DynoSize, DynoSpec, Exit, Launch, OneOffStdio, Running, RuntimeError,
    Usage,
};
pub use build_sandbox::OciBuildSandbox;
pub use events::{DynoEvent, EventStream, Stamped, StartFailure};
pub use health::Health;
pub use lifecycle::Lifecycle;
pub use metrics::LoadAvg;
pub use oci::{OciBackend, STACK_ETC};
pub use oneoff::{
    OneOff, OneOffExit, OneOffHandle, OneOffIo, OneOffMode, OneOffRequest, TerminalSize,
    DEFAULT_TIME_TO_LIVE,
};
pub use plain::ProcessBackend;
pub use process::pid_belongs_to_dyno;
pub use reconcile::{Correction, Reconciled};
pub use record::{DynoRecord, DynoState};
pub use releasedir::TakenRelease;
pub use rollout::{DrainWatch, Rollout, RolloutOutcome};
pub use users::{AppUser, FIRST_UID, LAST_UID};

/// Builds run as their app's uid plus this (500000-599999), never as a dyno's uid.
pub const BUILD_UID_OFFSET: u32 = 100_000;

/// Which backend runs dynos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// OCI when the server is root and the OCI runtime works, else processes (said at start).
    #[default]
    Auto,
    /// OCI or refuse to start.
    Oci,
    /// Plain processes.
    Process,
}

impl RuntimeKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "oci" => Some(Self::Oci),
            "process" => Some(Self::Process),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where each dyno gets its own directory: `<dynos_dir>/<app id>/<dyno id>/app`. Must be
    /// outside the data directory.
    pub dynos_dir: PathBuf,
    /// The platform's data directory, which dynos must never reach.
    pub data_dir: Option<PathBuf>,
    pub runtime: RuntimeKind,
    /// The OCI runtime binary: a name (looked up in PATH and /usr/sbin) or a path.
    pub oci_runtime: String,
    /// SIGTERM to SIGKILL (Heroku: 30 s).
    pub stop_timeout: Duration,
    /// How long a web dyno has to bind `PORT` (Heroku: 60 s, then R10).
    pub boot_timeout: Duration,
    /// How long a replaced web dyno's in-flight requests get to finish before its SIGTERM.
    pub drain_timeout: Duration,
    /// Longest wait between restarts of a dyno that keeps crashing.
    pub max_restart_delay: Duration,
    /// How often each dyno's memory and CPU are sampled (`--dyno-metrics-interval`): an R14
    /// line each time a dyno is over its quota, the runtime metrics lines when its app enables
    /// them, the figures in the dynos API (Heroku: 20 s).
    pub memory_check_interval: Duration,
    /// The size of a dyno re-adopted from a server that did not record one.
    pub dyno_size: DynoSize,
    /// The dyno monitor: program and leading arguments; the monitor directory is appended.
    /// Default: this executable's `dyno-monitor` subcommand.
    pub monitor_command: Vec<std::ffi::OsString>,
}

impl RuntimeConfig {
    pub fn new(dynos_dir: PathBuf) -> Self {
        Self {
            dynos_dir,
            data_dir: None,
            runtime: RuntimeKind::Auto,
            oci_runtime: "runc".to_string(),
            stop_timeout: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_restart_delay: Duration::from_secs(60),
            memory_check_interval: Duration::from_secs(20),
            dyno_size: DynoSize::standard_1x(),
            monitor_command: default_monitor_command(),
        }
    }

    /// `<data dir>-dynos`, beside the data directory (never inside it).
    pub fn default_dynos_dir(data_dir: &Path) -> PathBuf {
        let mut name = data_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "slipway".into());
        name.push("-dynos");
        data_dir.with_file_name(name)
    }
}

/// `<this executable> dyno-monitor`.
fn default_monitor_command() -> Vec<std::ffi::OsString> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("slipway"));
    vec![exe.into_os_string(), "dyno-monitor".into()]
}

/// The backend `cfg` asks for. With [`RuntimeKind::Auto`], a failing OCI runtime is not an
/// error: the process backend is used and its description says why.
pub fn select_backend(cfg: &RuntimeConfig) -> Result<Arc<dyn DynoBackend>, RuntimeError> {
    let unprivileged = if nix::unistd::geteuid().is_root() {
        ""
    } else {
        "; the server is not root, so dynos run as its own user and can read its files"
    };
    match cfg.runtime {
        RuntimeKind::Process => Ok(Arc::new(ProcessBackend::new(format!(
            "chosen with --dyno-runtime process: no namespaces or memory limits{unprivileged}"
        )))),
        RuntimeKind::Oci => Ok(Arc::new(OciBackend::new(&cfg.oci_runtime, &cfg.dynos_dir)?)),
        RuntimeKind::Auto => match OciBackend::new(&cfg.oci_runtime, &cfg.dynos_dir) {
            Ok(oci) => Ok(Arc::new(oci)),
            Err(e) => Ok(Arc::new(ProcessBackend::new(format!(
                "fallback, dynos are not isolated: {e}{unprivileged}"
            )))),
        },
    }
}

/// The release an app's dynos run.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    pub app_id: String,
    pub version: i64,
    pub slug_path: PathBuf,
    pub slug_checksum: String,
    /// Config vars, given to every dyno as environment variables.
    pub env: BTreeMap<String, String>,
    /// The slug's `app.json` `healthchecks.web[]`: new web dynos get traffic only once these
    /// pass (`health.rs`).
    pub healthchecks: Vec<slipway_core::appjson::Healthcheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub process_type: String,
    pub quantity: u32,
    pub command: String,
    /// The formation's size for the type: each dyno's memory and process limits.
    pub size: DynoSize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynoInfo {
    pub id: String,
    pub name: String,
    pub process_type: String,
    pub command: String,
    pub release_version: i64,
    /// As Heroku names it.
    pub state: DynoState,
    pub lifecycle: Lifecycle,
    pub port: Option<u16>,
    /// Where a web dyno serves (from the backend).
    pub addr: Option<SocketAddr>,
    pub updated_at: DateTime<Utc>,
    /// `standard-1X`
    pub size: String,
    pub memory_quota_bytes: u64,
    /// Last measured (every memory check interval), where the backend can measure it.
    pub usage: Option<Usage>,
    /// CPU load averages (see `metrics.rs`), from the second measurement on.
    pub load: Option<LoadAvg>,
    /// When `usage` was measured.
    pub sampled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub dyno: String,
    pub addr: SocketAddr,
}

/// Where an app's web traffic can go right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebStatus {
    /// No web dynos are meant to run (H14).
    NoWebDynos,
    /// Web dynos exist but none is up yet.
    Starting,
    /// Every web dyno has crashed (H10).
    Crashed,
    Up(Vec<Backend>),
}

/// What the supervisor last said about a dyno. Changed only by the supervisor, through
/// [`Lifecycle::apply`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Status {
    pub(crate) lifecycle: Lifecycle,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) usage: Option<Usage>,
    pub(crate) load: Option<LoadAvg>,
    pub(crate) sampled_at: Option<DateTime<Utc>>,
}

pub(crate) struct Dyno {
    pub(crate) id: String,
    pub(crate) app_id: String,
    pub(crate) name: String,
    pub(crate) process_type: String,
    pub(crate) command: String,
    pub(crate) release: ReleaseSpec,
    pub(crate) size: DynoSize,
    pub(crate) status: Mutex<Status>,
    pub(crate) retiring: AtomicBool,
    /// Out of routing for good: its in-flight requests finish, then it stops.
    pub(crate) draining: AtomicBool,
    /// Its health checks for the boot it is in (`health.rs`).
    pub(crate) health: Mutex<Health>,
    /// The `updated_at` of the `Up` status whose checks passed: a later boot is checked again.
    pub(crate) ready: Mutex<Option<DateTime<Utc>>>,
    pub(crate) stop_tx: watch::Sender<bool>,
    pub(crate) done_rx: watch::Receiver<bool>,
}

impl Dyno {
    fn snapshot(&self) -> DynoInfo {
        let status = *self.lock_status();
        DynoInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            process_type: self.process_type.clone(),
            command: self.command.clone(),
            release_version: self.release.version,
            state: status.lifecycle.public(),
            lifecycle: status.lifecycle,
            port: status.addr.map(|a| a.port()),
            addr: status.addr,
            updated_at: status.updated_at,
            size: self.size.name.clone(),
            memory_quota_bytes: self.size.memory_quota_bytes,
            usage: status.usage,
            load: status.load,
            sampled_at: status.sampled_at,
        }
    }

    pub(crate) fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_ready(&self) -> std::sync::MutexGuard<'_, Option<DateTime<Utc>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }

    /// Whether the router may send it requests: up, not draining, and past its health checks
    /// for this boot (when its release has any).
    pub(crate) fn routable(&self, status: &Status) -> bool {
        status.lifecycle == Lifecycle::Up
            && status.addr.is_some()
            && !self.draining.load(Ordering::SeqCst)
            && (health::gating(&self.release.healthchecks).next().is_none()
                || *self.lock_ready() == Some(status.updated_at))
    }

    fn request_stop(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.send(true);
    }

    async fn stopped(&self) {
        let mut rx = self.done_rx.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: RuntimeConfig,
    pub(crate) logs: LogHub,
    pub(crate) backend: Arc<dyn DynoBackend>,
    /// Each app's uid, when the server can switch users.
    pub(crate) users: Option<users::UidTable>,
    pub(crate) events: events::Events,
    apps: Mutex<HashMap<String, Vec<Arc<Dyno>>>>,
    /// What each app was last converged to, and whether it sleeps.
    desired: Mutex<HashMap<String, Desired>>,
    /// The router's side of draining, once the server has set it.
    drain_watch: Mutex<Option<Arc<dyn DrainWatch>>>,
    /// Rollouts under way, per app (the reconciliation pass leaves those apps alone).
    rolling: Mutex<HashMap<String, usize>>,
    /// Dynos the last reconciliation pass found without their process (`reconcile.rs`).
    suspects: reconcile::Suspects,
}

/// An app's release and formation as last converged, and whether its web dynos sleep.
#[derive(Clone)]
pub(crate) struct Desired {
    release: ReleaseSpec,
    formation: Vec<ProcessSpec>,
    asleep: bool,
}

/// The config var that lets an app's web dynos sleep after this many seconds without requests
/// (Heroku's eco dynos); absent, empty or 0: they never sleep.
pub const SLEEP_AFTER_VAR: &str = "SLIPWAY_SLEEP_AFTER";

impl Inner {
    fn lock_apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Dyno>>>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a dyno once its supervisor has finished.
    pub(crate) fn forget(&self, app_id: &str, dyno_id: &str) {
        let mut apps = self.lock_apps();
        if let Some(list) = apps.get_mut(app_id) {
            list.retain(|d| d.id != dyno_id);
            if list.is_empty() {
                apps.remove(app_id);
            }
        }
    }

    pub(crate) fn lock_desired(&self) -> std::sync::MutexGuard<'_, HashMap<String, Desired>> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn drain_watch(&self) -> Option<Arc<dyn DrainWatch>> {
        self.drain_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tells listeners (the route table) that `dyno`'s routability changed.
    pub(crate) fn routing_changed(&self, dyno: &Dyno) {
        self.events.send(DynoEvent::Routing {
            app_id: dyno.app_id.clone(),
            dyno_id: dyno.id.clone(),
            name: dyno.name.clone(),
        });
    }

    fn added(&self, dyno: &Dyno) {
        self.events.send(DynoEvent::Added {
            app_id: dyno.app_id.clone(),
            dyno_id: dyno.id.clone(),
            name: dyno.name.clone(),
        });
    }

    /// How long a web dyno of `release` has to bind its port: the app's
    /// [`settings::BOOT_TIMEOUT_VAR`], else the server's.
    pub(crate) fn boot_timeout(&self, release: &ReleaseSpec) -> Duration {
        settings::boot_timeout(&release.env).unwrap_or(self.cfg.boot_timeout)
    }

    pub(crate) fn user_for(&self, app_id: &str) -> Result<Option<AppUser>, RuntimeError> {
        self.users.as_ref().map(|u| u.user_for(app_id)).transpose()
    }

    fn lock_rolling(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.rolling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a rollout of the app is under way (`rollout.rs`, until its old or failed
    /// dynos are stopped).
    pub(crate) fn rolling(&self, app_id: &str) -> bool {
        self.lock_rolling().get(app_id).is_some_and(|n| *n > 0)
    }

    /// Counts a rollout of the app as under way until the returned guard is dropped.
    pub(crate) fn rollout_started(self: &Arc<Self>, app_id: &str) -> RollingGuard {
        *self.lock_rolling().entry(app_id.to_string()).or_default() += 1;
        RollingGuard {
            inner: self.clone(),
            app_id: app_id.to_string(),
        }
    }
}

/// A rollout under way ([`Inner::rollout_started`]).
pub(crate) struct RollingGuard {
    inner: Arc<Inner>,
    app_id: String,
}

impl Drop for RollingGuard {
    fn drop(&mut self) {
        let mut rolling = self.inner.lock_rolling();
        if let Some(n) = rolling.get_mut(&self.app_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rolling.remove(&self.app_id);
            }
        }
    }
}

#[derive(Clone)]
pub struct DynoManager {
    inner: Arc<Inner>,
}

impl DynoManager {
    /// The app's own unprivileged user (allocated on first use), when the server runs as root
    /// and can switch users; builds and one-off dynos of the app run as it too.
    pub fn app_user(&self, app_id: &str) -> Result<Option<AppUser>, RuntimeError> {
        self.inner.user_for(app_id)
    }

    /// Copies a build directory, as its slug will hold it, into a new release directory of
    /// the app while the slug is packed (`releasedir.rs`), so the new dynos need not unpack
    /// the slug. Blocking. `None` where the backend keeps no release directories or the copy
    /// failed (logged; dynos then unpack the slug). Pass the result to
    /// [`finish_release`](Self::finish_release).
    pub fn stage_release(&self, app_id: &str, build_dir: &Path) -> Option<PathBuf> {
        let user = match self.inner.user_for(app_id) {
            Ok(user) => user,
            Err(e) => {
                tracing::warn!(error = %e, "could not stage the release directory");
                return None;
            }
        };
        match self
            .inner
            .backend
            .stage_release(app_id, user.as_ref(), build_dir)
        {
            Ok(staged) => staged,
            Err(e) => {
                tracing::warn!(error = %e, "could not stage the release directory");
                None
            }
        }
    }

    /// Moves a finished build directory (no process of its build user left) into a staged
    /// release directory of the app, to be packed from there and owned in place
    /// ([`TakenRelease`]) instead of copied: `None` where the backend keeps no release
    /// directories or the move is not possible (the build directory is where it was).
    /// `cache_dir`: the app's build cache, whose hard links into the build the release may
    /// take. Blocking.
    pub fn take_release(
        &self,
        app_id: &str,
        build_dir: &Path,
        cache_dir: Option<&Path>,
    ) -> Option<TakenRelease> {
        let user = match self.inner.user_for(app_id) {
            Ok(user) => user,
            Err(e) => {
                tracing::warn!(error = %e, "could not take the build as the release directory");
                return None;
            }
        };
        match self
            .inner
            .backend
            .take_release(app_id, user.as_ref(), build_dir, cache_dir)
        {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(error = %e, "could not take the build as the release directory");
                None
            }
        }
    }

    /// Makes a staged release directory the one of the slug with `checksum`, or removes it
    /// (`None`: the slug was not made). Blocking.
    pub fn finish_release(&self, app_id: &str, staged: &Path, checksum: Option<&str>) {
        self.inner.backend.finish_release(app_id, staged, checksum);
    }

    /// The user the app's builds run as: its own uid shifted by [`BUILD_UID_OFFSET`], so no
    /// dyno shares it and every process a build left behind can be found and killed (by uid)
    /// before root touches the build's files again.
    pub fn build_user(&self, app_id: &str) -> Result<Option<AppUser>, RuntimeError> {
        Ok(self.inner.user_for(app_id)?.map(|u| AppUser {
            uid: u.uid + BUILD_UID_OFFSET,
            gid: u.gid + BUILD_UID_OFFSET,
        }))
    }

    /// Where builds run their buildpacks: the OCI backend's containers, or none (host
    /// processes) with the process backend.
    pub fn build_sandbox(&self) -> Option<Arc<dyn slipway_build::BuildSandbox>> {
        self.inner.backend.build_sandbox()
    }

    /// Chooses the backend `cfg` asks for (see [`select_backend`]) and prepares the dynos
    /// directory.
    pub fn new(cfg: RuntimeConfig, logs: LogHub) -> Result<Self, RuntimeError> {
        prepare_dynos_dir(&cfg)?;
        let backend = select_backend(&cfg)?;
        Self::with_backend(cfg, backend, logs)
    }

    /// A manager running dynos with `backend`.
    pub fn with_backend(
        cfg: RuntimeConfig,
        backend: Arc<dyn DynoBackend>,
        logs: LogHub,
    ) -> Result<Self, RuntimeError> {
        prepare_dynos_dir(&cfg)?;
        let root = nix::unistd::geteuid().is_root();
        let users = if root {
            // App users must be able to reach their directories where dynos run in them
            // (containers see only their /app, mounted by the root runtime).
            if backend.runs_in_host_dirs() {
                check_reachable(&cfg.dynos_dir)?;
            }
            let table = std::path::Path::new(users::HOST_TABLE);
            if let Some(dir) = table.parent() {
                std::fs::create_dir_all(dir).map_err(RuntimeError::io("creating", dir))?;
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(RuntimeError::io("setting permissions of", dir))?;
            }
            Some(users::UidTable::load(table)?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                logs,
                backend,
                users,
                events: events::Events::new(),
                apps: Mutex::new(HashMap::new()),
                desired: Mutex::new(HashMap::new()),
                drain_watch: Mutex::new(None),
                rolling: Mutex::new(HashMap::new()),
                suspects: Default::default(),
            }),
        })
    }

    /// Lets replaced web dynos finish their in-flight requests before they are stopped: the
    /// server passes the router's drain here. Without one, they are stopped at once.
    pub fn set_drain_watch(&self, watch: Arc<dyn DrainWatch>) {
        *self
            .inner
            .drain_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(watch);
    }

    /// The dyno events that change what runs or routes, from now on (see `events.rs`). A
    /// receiver that falls more than 1,024 events behind gets `Lagged` and skips ahead (it
    /// should then read the current state: [`list`](Self::list),
    /// [`web_status`](Self::web_status)); senders never wait.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DynoEvent> {
        self.inner.events.subscribe()
    }

    /// The record stream: every [`DynoEvent`] since the manager was made, in order, none ever
    /// dropped (see `events.rs`). For exactly one consumer, which records dynos and prints
    /// their `heroku[...]` lines ([`Stamped::print`]); `None` once taken. Events queue until it
    /// is taken, so take it before the first [`recover`](Self::recover) or `converge`.
    pub fn take_events(&self) -> Option<EventStream> {
        self.inner.events.take_stream()
    }

    /// The sequence number of the last event sent on the record stream (0: none yet): a
    /// consumer that has handled it has handled everything so far.
    pub fn last_event(&self) -> u64 {
        self.inner.events.last_seq()
    }

    /// What runs the dynos, for the start-up line: `oci (/usr/sbin/runc, runc version 1.1.5)`.
    pub fn runtime_description(&self) -> String {
        self.inner.backend.describe()
    }

    /// Makes the app's dynos match `release` and `formation`. Returns at once with the
    /// [`Rollout`], whose outcome says whether the new web dynos became healthy (replaced
    /// dynos drain and stop in the background after that) or not (the new dynos are stopped,
    /// the old ones and the app's previous desired state stay: `rollout.rs`).
    /// An app that sleeps keeps no web dynos until it is woken
    /// ([`wake_app`](Self::wake_app)); a release that no longer lets it sleep wakes it.
    pub fn converge(&self, release: ReleaseSpec, formation: &[ProcessSpec]) -> Rollout {
        let (effective, previous) = {
            let mut desired = self.lock_desired();
            let previous = desired.get(&release.app_id).cloned();
            let asleep = desired
                .get(&release.app_id)
                .is_some_and(|d| d.asleep && sleep_after(&release.env).is_some());
            desired.insert(
                release.app_id.clone(),
                Desired {
                    release: release.clone(),
                    formation: formation.to_vec(),
                    asleep,
                },
            );
            (effective_formation(formation, asleep), previous)
        };
        self.apply(release, &effective, previous)
    }

    fn lock_desired(&self) -> std::sync::MutexGuard<'_, HashMap<String, Desired>> {
        self.inner.lock_desired()
    }

    /// How long the app's web dynos may go without a request before they sleep, if its
    /// release lets them ([`SLEEP_AFTER_VAR`]).
    pub fn sleep_after(&self, app_id: &str) -> Option<Duration> {
        self.lock_desired()
            .get(app_id)
            .and_then(|d| sleep_after(&d.release.env))
    }

    pub fn is_asleep(&self, app_id: &str) -> bool {
        self.lock_desired().get(app_id).is_some_and(|d| d.asleep)
    }

    /// Puts an app that may sleep to sleep: its web dynos stop (`Idling`), other process
    /// types keep running. Returns whether it fell asleep now.
    pub fn sleep_app(&self, app_id: &str) -> bool {
        self.set_asleep(app_id, true)
    }

    /// Wakes a sleeping app: its web dynos start again. Returns whether it was asleep.
    pub fn wake_app(&self, app_id: &str) -> bool {
        self.set_asleep(app_id, false)
    }

    fn set_asleep(&self, app_id: &str, asleep: bool) -> bool {
        let (release, formation) = {
            let mut desired = self.lock_desired();
            let Some(d) = desired.get_mut(app_id) else {
                return false;
            };
            if d.asleep == asleep || (asleep && sleep_after(&d.release.env).is_none()) {
                return false;
            }
            d.asleep = asleep;
            (d.release.clone(), effective_formation(&d.formation, asleep))
        };
        let previous = self.lock_desired().get(app_id).cloned();
        let web: Vec<String> = self
            .list(app_id)
            .into_iter()
            .filter(|d| d.process_type == "web")
            .map(|d| d.name)
            .collect();
        // `Idling` for each web dyno, or `Unidling`.
        self.inner.events.send(DynoEvent::Sleep {
            app_id: app_id.to_string(),
            asleep,
            web,
        });
        // Waking or sleeping never fails: the rollout's outcome is not needed.
        let _ = self.apply(release, &formation, previous);
        true
    }

    fn apply(
        &self,
        release: ReleaseSpec,
        formation: &[ProcessSpec],
        previous: Option<Desired>,
    ) -> Rollout {
        let app_id = release.app_id.clone();
        // Subscribed before any new dyno starts, so the rollout misses none of their events.
        let events = self.inner.events.subscribe();
        let mut started: Vec<Arc<Dyno>> = Vec::new();
        let mut retire: Vec<Arc<Dyno>> = Vec::new();
        {
            let mut apps = self.inner.lock_apps();
            let current = apps.entry(app_id.clone()).or_default();
            let mut kept: Vec<String> = Vec::new();
            for spec in formation {
                for index in 1..=spec.quantity {
                    let name = format!("{}.{}", spec.process_type, index);
                    let existing = current.iter().find(|d| {
                        d.name == name
                            && d.release.version == release.version
                            && d.command == spec.command
                            && d.size == spec.size
                            && !d.retiring.load(Ordering::SeqCst)
                    });
                    match existing {
                        Some(d) => kept.push(d.id.clone()),
                        None => {
                            let dyno = supervisor::spawn(&self.inner, &release, spec, name);
                            kept.push(dyno.id.clone());
                            started.push(dyno);
                        }
                    }
                }
            }
            for d in current.iter() {
                if !kept.contains(&d.id) && !d.retiring.load(Ordering::SeqCst) {
                    d.retiring.store(true, Ordering::SeqCst);
                    retire.push(d.clone());
                }
            }
            current.extend(started.iter().cloned());
        }
        for d in &started {
            self.inner.added(d);
            if d.process_type == "web" && !d.release.healthchecks.is_empty() {
                health::follow(self.inner.clone(), d.clone());
            }
        }
        if started.is_empty() && retire.is_empty() {
            return Rollout::done(RolloutOutcome::Healthy);
        }
        // A crash of the new release fails the rollout only when an older one still serves.
        let protect = retire.iter().any(|d| {
            d.process_type == "web" && d.release.version != release.version && {
                let status = *d.lock_status();
                d.routable(&status)
            }
        });
        rollout::start(
            self.inner.clone(),
            rollout::Plan {
                app_id,
                version: release.version,
                started,
                retire,
                protect,
                previous,
                events,
            },
        )
    }

    /// Stops every dyno of an app and waits until they are gone.
    pub async fn stop_app(&self, app_id: &str) {
        self.lock_desired().remove(app_id);
        let dynos: Vec<Arc<Dyno>> = self
            .inner
            .lock_apps()
            .get(app_id)
            .cloned()
            .unwrap_or_default();
        for d in &dynos {
            d.request_stop();
        }
        for d in &dynos {
            d.stopped().await;
        }
    }

    /// Stops every dyno of every app (server shutdown).
    pub async fn stop_all(&self) {
        let dynos: Vec<Arc<Dyno>> = self.inner.lock_apps().values().flatten().cloned().collect();
        for d in &dynos {
            d.request_stop();
        }
        for d in &dynos {
            d.stopped().await;
        }
    }

    pub fn list(&self, app_id: &str) -> Vec<DynoInfo> {
        let mut out: Vec<DynoInfo> = self
            .inner
            .lock_apps()
            .get(app_id)
            .map(|l| l.iter().map(|d| d.snapshot()).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| {
            (&a.process_type, dyno_index(&a.name), a.release_version).cmp(&(
                &b.process_type,
                dyno_index(&b.name),
                b.release_version,
            ))
        });
        out
    }

    /// Routable web dynos (up and past their health checks, not draining), those of the
    /// newest release that has any: traffic moves to a new release as soon as one of its
    /// dynos is routable, and old dynos get no new requests.
    pub fn web_status(&self, app_id: &str) -> WebStatus {
        let apps = self.inner.lock_apps();
        let Some(dynos) = apps.get(app_id) else {
            return WebStatus::NoWebDynos;
        };
        // One pass, no clones but the backends returned: this runs for every routed request.
        let (mut any_web, mut starting) = (false, false);
        let mut newest: Option<i64> = None;
        let mut up: Vec<(i64, &str, SocketAddr)> = Vec::new();
        for d in dynos.iter().filter(|d| d.process_type == "web") {
            if d.draining.load(Ordering::SeqCst) {
                continue;
            }
            any_web = true;
            let status = *d.lock_status();
            match (status.lifecycle, status.addr) {
                (Lifecycle::Up, Some(addr)) if d.routable(&status) => {
                    newest = newest.max(Some(d.release.version));
                    up.push((d.release.version, &d.name, addr));
                }
                // Up but its health checks have not passed (yet): as good as starting.
                (Lifecycle::Up, _) if d.health() == Health::Pending => starting = true,
                (Lifecycle::Starting, _) => starting = true,
                _ => {}
            }
        }
        match newest {
            Some(version) => WebStatus::Up(
                up.into_iter()
                    .filter(|(v, _, _)| *v == version)
                    .map(|(_, name, addr)| Backend {
                        dyno: name.to_string(),
                        addr,
                    })
                    .collect(),
            ),
            None if !any_web => WebStatus::NoWebDynos,
            None if starting => WebStatus::Starting,
            None => WebStatus::Crashed,
        }
    }

    /// Sorts out the dynos a previous server left: those recorded in the runtime's own state
    /// (`<dynos dir>/.monitors/<id>/dyno.json`, `record.rs`), and those in `known` (the
    /// control plane's copy; a server from before the runtime kept its own records had only
    /// that, so a known dyno whose monitor directory has no record gets one written now).
    /// A dyno whose monitor still runs is returned (untouched) for the caller to
    /// [`adopt`](Self::adopt) or [`discard`](Self::discard). Any other is cleaned up: what
    /// it wrote since that server stopped reading is delivered to the app's log first, then
    /// its processes (checked by their `SLIPWAY_DYNO_ID`, so a reused pid is never hit),
    /// container, directories and record are removed ([`DynoEvent::Removed`]). A monitor
    /// directory with no record and no known dyno (a start cut short) is removed, with any
    /// process it names. The caller then converges each app, which starts what is missing.
    pub async fn recover(&self, known: Vec<DynoRecord>) -> Vec<DynoRecord> {
        let monitors = self.inner.cfg.dynos_dir.join(".monitors");
        let mut records: BTreeMap<String, DynoRecord> = BTreeMap::new();
        let mut unrecorded: Vec<String> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&monitors) {
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                match record::DynoRecord::load(&entry.path()) {
                    Some(r) if r.id == id => {
                        records.insert(id, r);
                    }
                    _ => unrecorded.push(id),
                }
            }
        }
        for r in known {
            if !is_dyno_id(&r.id) || records.contains_key(&r.id) {
                continue;
            }
            let dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &r.id);
            if dir.is_dir() {
                if let Err(e) = r.save(&dir) {
                    tracing::warn!(dyno = %r.id, error = %e, "could not record a dyno");
                }
            }
            unrecorded.retain(|id| *id != r.id);
            records.insert(r.id.clone(), r);
        }
        for id in unrecorded.into_iter().filter(|id| is_dyno_id(id)) {
            let dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &id);
            let pids = attach::read_pids(&dir);
            kill_dyno_pids(&id, pids.iter().flat_map(|p| [p.dyno, p.monitor]));
            let backend = self.inner.backend.clone();
            let cleaned = tokio::task::spawn_blocking(move || {
                backend.cleanup(&id, Path::new(""))?;
                backend::remove_dir(&dir)
            })
            .await;
            if let Ok(Err(e)) = cleaned {
                tracing::warn!(error = %e, "could not clean up an unrecorded dyno");
            }
        }
        let mut alive = Vec::new();
        for record in records.into_values() {
            let dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &record.id);
            if tokio::net::UnixStream::connect(dir.join(monitor::SOCKET))
                .await
                .is_ok()
            {
                alive.push(record);
                continue;
            }
            let sink = supervisor::app_sink(&self.inner, &record.app_id, &record.name);
            if let Some(exit) = attach::drain_dead(&dir, &sink) {
                self.inner.events.send(DynoEvent::ExitedWhileAway {
                    app_id: record.app_id.clone(),
                    name: record.name.clone(),
                    code: Exit {
                        status: exit.status(),
                        oom_killed: false,
                    }
                    .code(),
                });
            }
            self.remove_stale(&record, None).await;
        }
        alive
    }

    /// Supervises again a dyno [`recover`](Self::recover) found running, as a dyno of
    /// `release` (the release it was recorded with). Its processes are not touched: it keeps
    /// its pid, port, size and state, and its output is followed from where the last server
    /// stopped. If its monitor ended meanwhile, it is handled as a crash would be (restarted).
    /// Call before converging the app, which then keeps it if it matches the formation.
    pub async fn adopt(&self, record: &DynoRecord, release: &ReleaseSpec) {
        let dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &record.id);
        let sink = supervisor::app_sink(&self.inner, &record.app_id, &record.name);
        let Some(attached) = attach::Attached::adopt(&dir, sink).await else {
            self.remove_stale(record, None).await;
            return;
        };
        let pid = attached.pids.dyno;
        let size = DynoSize::parse(&record.size)
            .or_else(|| supervisor::recorded_size(&dir))
            .unwrap_or_else(|| self.inner.cfg.dyno_size.clone());
        let dyno = supervisor::adopt(&self.inner, release, record, attached, size);
        if dyno.process_type == "web" && !release.healthchecks.is_empty() {
            // It served before the restart: routable as it is; a later boot is checked again.
            let status = *dyno.lock_status();
            if status.lifecycle == Lifecycle::Up {
                *dyno.lock_ready() = Some(status.updated_at);
                dyno.set_health(Health::Passed);
            }
            health::follow(self.inner.clone(), dyno.clone());
        }
        self.inner
            .lock_apps()
            .entry(record.app_id.clone())
            .or_default()
            .push(dyno.clone());
        self.inner.added(&dyno);
        // The control plane's copy may lag the runtime's (a server killed before it stored
        // the last event): it gets the record the dyno is adopted with.
        self.inner
            .events
            .send(DynoEvent::Recorded(Box::new(record.clone())));
        tracing::info!(dyno = %record.name, id = %record.id, pid, "re-adopted a running dyno");
    }

    /// Stops and removes a running dyno [`recover`](Self::recover) found that has no place
    /// any more (its app or release is gone).
    pub async fn discard(&self, record: &DynoRecord) {
        let dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &record.id);
        let pid = attach::read_pids(&dir).map(|p| p.dyno);
        self.remove_stale(record, pid).await
    }

    /// Kills what is left of a dyno, removes its container, directories and record, and says
    /// it is gone ([`DynoEvent::Removed`]).
    async fn remove_stale(&self, record: &DynoRecord, pid: Option<u32>) {
        let monitor_dir = attach::monitor_dir(&self.inner.cfg.dynos_dir, &record.id);
        let monitor_pid = attach::read_pids(&monitor_dir).map(|p| p.monitor);
        kill_dyno_pids(
            &record.id,
            [record.pid, pid, monitor_pid].into_iter().flatten(),
        );
        let dir = PathBuf::from(&record.dir);
        let dir = if dir.starts_with(&self.inner.cfg.dynos_dir) {
            dir
        } else {
            // Recorded by an older server (dynos inside the data directory): only the
            // container, if any, is removed.
            PathBuf::new()
        };
        let backend = self.inner.backend.clone();
        let id = record.id.clone();
        let cleaned = tokio::task::spawn_blocking(move || {
            backend.cleanup(&id, &dir)?;
            backend::remove_dir(&monitor_dir)
        })
        .await;
        if let Ok(Err(e)) = cleaned {
            tracing::warn!(dyno = %record.id, error = %e, "could not clean up a stale dyno");
        }
        self.inner.events.send(DynoEvent::Removed {
            app_id: record.app_id.clone(),
            dyno_id: record.id.clone(),
            name: record.name.clone(),
        });
    }
}

/// SIGKILL to each of `pids` (and its process group) that is a process of dyno `id` (by its
/// `SLIPWAY_DYNO_ID`: a reused pid is never hit).
fn kill_dyno_pids(id: &str, pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        if process::pid_belongs_to_dyno(i64::from(pid), id) {
            if let Ok(pid) = i32::try_from(pid) {
                process::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `id` can be a dyno id (a UUID): it names a directory under the dynos directory.
fn is_dyno_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Creates the dynos directory (root-owned, others may only traverse it) after checking it
/// is not inside the data directory.
fn prepare_dynos_dir(cfg: &RuntimeConfig) -> Result<(), RuntimeError> {
    let dir = &cfg.dynos_dir;
    if let Some(data) = &cfg.data_dir {
        if dir.starts_with(data) {
            return Err(RuntimeError::InsideDataDir {
                dir: dir.clone(),
                data_dir: data.clone(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(RuntimeError::io("creating", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(RuntimeError::io("setting permissions of", dir))
}

/// Every directory above `dir` must let other users through, or app users cannot reach
/// their dyno directories.
fn check_reachable(dir: &Path) -> Result<(), RuntimeError> {
    let dir = dir
        .canonicalize()
        .map_err(RuntimeError::io("resolving", dir))?;
    for parent in dir.ancestors() {
        let meta = std::fs::metadata(parent).map_err(RuntimeError::io("reading", parent))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(RuntimeError::Unreachable {
                dir: dir.clone(),
                parent: parent.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// [`SLEEP_AFTER_VAR`] of a release's config.
fn sleep_after(env: &BTreeMap<String, String>) -> Option<Duration> {
    env.get(SLEEP_AFTER_VAR)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// The formation to run: a sleeping app's web dynos are not.
fn effective_formation(formation: &[ProcessSpec], asleep: bool) -> Vec<ProcessSpec> {
    formation
        .iter()
        .map(|p| ProcessSpec {
            quantity: if asleep && p.process_type == "web" {
                0
            } else {
                p.quantity
            },
            ..p.clone()
        })
        .collect()
}

fn dyno_index(name: &str) -> u64 {
    name.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
