//! What every request handler shares: the store, the log hub, the dyno manager, settings, and
//! short-lived grants (push tokens, see `push.rs`; log-session secrets).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use slipway_logs::{Filter, LogHub};
use slipway_router::{Resolution, Resolver, Target};
use slipway_runtime::{DynoManager, WebStatus};
use slipway_store::Store;

/// Settings the handlers need, resolved once the listeners are bound.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Where clients reach the API (and git): `http://127.0.0.1:PORT`.
    pub api_url: String,
    /// The bound API address, for the pre-receive hook to call back.
    pub api_addr: SocketAddr,
    pub router_port: u16,
    pub domain: String,
    pub build_limits: slipway_build::Limits,
    /// Where builds happen, outside the data directory (`<data-dir>-builds` by default): build
    /// directories, per-app build caches, installed and fetched buildpacks.
    pub builds_dir: PathBuf,
    /// How long one build may run (all its buildpacks).
    pub build_timeout: Duration,
    /// Address space (RLIMIT_AS) of each buildpack process.
    pub build_memory_limit_bytes: u64,
    /// How long a release phase may run before its release fails (Heroku: 1 h).
    pub release_phase_timeout: Duration,
    /// Largest git request body accepted (the pushed pack), in bytes.
    pub max_push_bytes: u64,
    /// Most dynos of one process type an app may scale to.
    pub max_dynos_per_type: u32,
    /// Path of the `slipway` binary, which git runs as the pre-receive hook.
    pub hook_binary: PathBuf,
}

impl Settings {
    pub fn repo_dir(&self, app_id: &str) -> PathBuf {
        self.data_dir.join("repos").join(format!("{app_id}.git"))
    }

    pub fn slug_dir(&self, app_id: &str) -> PathBuf {
        self.data_dir.join("slugs").join(app_id)
    }

    pub fn build_tmp(&self) -> PathBuf {
        self.builds_dir.join("tmp")
    }

    /// The app's build cache (`CACHE_DIR`), kept between builds.
    pub fn cache_dir(&self, app_id: &str) -> PathBuf {
        self.builds_dir.join("cache").join(app_id)
    }

    pub fn hooks_dir(&self) -> PathBuf {
        self.data_dir.join("hooks")
    }

    pub fn web_url(&self, app: &str) -> String {
        if self.router_port == 80 {
            format!("http://{app}.{}/", self.domain)
        } else {
            format!("http://{app}.{}:{}/", self.domain, self.router_port)
        }
    }

    pub fn git_url(&self, app: &str) -> String {
        format!("{}/{app}.git", self.api_url)
    }
}

#[derive(Debug, Clone)]
pub struct LogSessionGrant {
    pub app_id: String,
    pub filter: Filter,
    pub lines: usize,
    pub tail: bool,
    pub expires: Instant,
}

/// How long a log session URL stays valid.
pub const LOG_SESSION_TTL: Duration = Duration::from_secs(5 * 60);

type SharedLock = Arc<tokio::sync::Mutex<()>>;

/// Per-app locks. `Build`: one build of an app at a time (a second push waits). `Release`:
/// changes to the release ledger, formation and dynos (deploy's last step, scaling, destroy)
/// happen one at a time, and never wait for a build to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppLock {
    Build,
    Release,
}

#[derive(Debug, Clone)]
pub struct AppEntry {
    pub id: String,
    pub maintenance: bool,
}

pub struct State {
    pub settings: Settings,
    pub store: Store,
    pub logs: LogHub,
    pub dynos: DynoManager,
    /// App name -> id, for the router (which must not wait on the database).
    pub names: RwLock<HashMap<String, AppEntry>>,
    /// Pushes in progress and their hooks' grants.
    pub pushes: crate::push::Pushes,
    pub log_sessions: Mutex<HashMap<String, LogSessionGrant>>,
    /// One-off dynos waiting for their `run` client, and those running (`oneoff.rs`).
    pub one_offs: crate::oneoff::OneOffs,
    locks: Mutex<HashMap<(AppLock, String), SharedLock>>,
}

pub type Shared = Arc<State>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn new(settings: Settings, store: Store, logs: LogHub, dynos: DynoManager) -> Self {
        Self {
            settings,
            store,
            logs,
            dynos,
            names: RwLock::new(HashMap::new()),
            pushes: crate::push::Pushes::default(),
            log_sessions: Mutex::new(HashMap::new()),
            one_offs: crate::oneoff::OneOffs::default(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// A line in the app's log from the API, as Heroku's `app[api]` lines for user actions.
    pub fn api_log(&self, app_id: &str, message: &str) {
        self.logs
            .write(app_id, slipway_logs::Source::App, "api", message);
    }

    /// The slug a release or build refers to, if any.
    pub async fn slug_of(
        &self,
        slug_id: Option<&str>,
    ) -> Result<Option<slipway_store::Slug>, slipway_store::StoreError> {
        match slug_id {
            Some(id) => self.store.slug(id).await.map(Some),
            None => Ok(None),
        }
    }

    pub fn remember_app(&self, name: &str, entry: AppEntry) {
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), entry);
    }

    pub fn forget_app(&self, name: &str) {
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// One of an app's locks (see [`AppLock`]).
    pub fn app_lock(&self, kind: AppLock, app_id: &str) -> SharedLock {
        lock(&self.locks)
            .entry((kind, app_id.to_string()))
            .or_default()
            .clone()
    }

    pub fn grant_log_session(&self, secret: &str, grant: LogSessionGrant) {
        let mut sessions = lock(&self.log_sessions);
        let now = Instant::now();
        sessions.retain(|_, g| g.expires > now);
        sessions.insert(secret.to_string(), grant);
    }

    pub fn log_session(&self, secret: &str) -> Option<LogSessionGrant> {
        lock(&self.log_sessions)
            .get(secret)
            .filter(|g| g.expires > Instant::now())
            .cloned()
    }
}

/// The router asks the control plane where each request goes.
pub struct RouteTable(pub Shared);

impl Resolver for RouteTable {
    fn resolve(&self, app_name: &str) -> Resolution {
        let entry = self
            .0
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(app_name)
            .cloned();
        let Some(entry) = entry else {
            return Resolution::NoSuchApp;
        };
        let target = if entry.maintenance {
            Target::Maintenance
        } else {
            match self.0.dynos.web_status(&entry.id) {
                WebStatus::NoWebDynos => Target::NoWebDynos,
                WebStatus::Starting => Target::Starting,
                WebStatus::Crashed => Target::Crashed,
                WebStatus::Up(backends) => {
                    Target::Up(backends.into_iter().map(|b| (b.dyno, b.addr)).collect())
                }
            }
        };
        Resolution::Found {
            app_id: entry.id,
            target,
        }
    }
}
