//! What every request handler shares: the store, the log hub, the dyno manager, settings, and
//! short-lived grants (push tokens, see `push.rs`; log-session secrets).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use slipway_logs::{Filter, LogHub};
use slipway_router::{Resolution, Resolver, Target};
use slipway_runtime::{DynoEvent, DynoManager, WebStatus};
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
    /// The HTTPS listener's port, when the server has one (`--tls-listen`).
    pub https_port: Option<u16>,
    pub domain: String,
    pub build_limits: slipway_build::Limits,
    /// Where builds happen, outside the data directory (`<data-dir>-builds` by default): build
    /// directories, per-app build caches, installed and fetched buildpacks.
    pub builds_dir: PathBuf,
    /// How long one build may run (all its buildpacks).
    pub build_timeout: Duration,
    /// Each buildpack container's memory limit (OCI runtime), else each buildpack process's
    /// address space (RLIMIT_AS).
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
/// happen one at a time, and never wait for a build to finish. `Cache`: held while the build
/// cache is given back its own copies of files a release directory took (`deploy.rs`); a build
/// and a purge wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppLock {
    Build,
    Release,
    Cache,
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
    /// App name -> where its requests go, for the router (which must not wait on the
    /// database or the dyno manager).
    pub routes: Arc<RouteTable>,
    /// Pushes in progress and their hooks' grants.
    pub pushes: crate::push::Pushes,
    pub log_sessions: Mutex<HashMap<String, LogSessionGrant>>,
    /// One-off dynos waiting for their `run` client, and those running (`oneoff.rs`).
    pub one_offs: crate::oneoff::OneOffs,
    /// The certificates the HTTPS listener serves, by SNI (loaded by `edge.rs`).
    pub certs: Arc<slipway_router::tls::CertStore>,
    /// Reloads of certificates and custom domains from the store, one at a time (so an older
    /// read never replaces a newer one).
    pub(crate) edge_reload: tokio::sync::Mutex<()>,
    /// Deploys running on this server and each target's queue (`deploys/`).
    pub deploys: crate::deploys::Deploys,
    /// Pipelines' push grants, build locks, live build output and stage queues.
    pub pipelines: crate::pipelines::Pipelines,
    /// Reconciliation passes finished so far (`reconcile.rs`).
    pub reconcile: crate::reconcile::Passes,
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
            routes: Arc::new(RouteTable::new(dynos.clone())),
            dynos,
            pushes: crate::push::Pushes::default(),
            log_sessions: Mutex::new(HashMap::new()),
            one_offs: crate::oneoff::OneOffs::default(),
            certs: Arc::new(slipway_router::tls::CertStore::new()),
            edge_reload: tokio::sync::Mutex::new(()),
            deploys: crate::deploys::Deploys::default(),
            pipelines: crate::pipelines::Pipelines::default(),
            reconcile: crate::reconcile::Passes::default(),
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

    /// Routes `name` to the app (a new app, a rename, a maintenance change).
    pub fn remember_app(&self, name: &str, entry: AppEntry) {
        self.routes.remember(name, entry);
    }

    /// Stops routing `name`.
    pub fn forget_app(&self, name: &str) {
        self.routes.forget(name);
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

/// When a request for an app last came in, shared by every snapshot of the route table.
#[derive(Debug)]
pub struct Activity {
    /// Milliseconds since the Unix epoch.
    last_request_ms: AtomicI64,
}

impl Activity {
    fn new() -> Self {
        Self {
            last_request_ms: AtomicI64::new(now_ms()),
        }
    }

    fn touch(&self) {
        // Written only when the millisecond changed: router workers on several cores then
        // share the value's cache line instead of taking it from each other per request.
        let now = now_ms();
        if self.last_request_ms.load(Ordering::Relaxed) != now {
            self.last_request_ms.store(now, Ordering::Relaxed);
        }
    }

    /// How long since the last request (or since the app was first routed).
    pub fn idle_for(&self) -> Duration {
        let idle = now_ms().saturating_sub(self.last_request_ms.load(Ordering::Relaxed));
        Duration::from_millis(u64::try_from(idle).unwrap_or(0))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where one app's requests go, as of the snapshot holding it.
#[derive(Debug, Clone)]
struct Route {
    app_id: String,
    target: Target,
    /// The app sleeps: a request wakes it and waits (as for a starting dyno).
    asleep: bool,
    activity: Arc<Activity>,
}

/// The whole route table at one moment: app name -> route. Never changed once published.
#[derive(Debug, Default)]
struct Snapshot {
    by_name: HashMap<String, Route>,
    /// Custom domains: exact host names, and wildcards by parent (`*.example.com` as
    /// `example.com`).
    by_domain: HashMap<String, Route>,
    by_wildcard: HashMap<String, Route>,
    /// Apps whose plain-HTTP requests are redirected to HTTPS.
    https_redirect: HashSet<String>,
}

/// What the route table is built from, changed by one writer at a time.
#[derive(Default)]
struct Sources {
    apps: HashMap<String, AppEntry>,
    activity: HashMap<String, Arc<Activity>>,
    /// Custom domain (`www.example.com`, `*.example.com`) -> app id.
    domains: HashMap<String, String>,
    https_redirect: HashSet<String>,
}

/// The router's view of the apps: an immutable [`Snapshot`] swapped in whole whenever an app
/// or one of its dynos changes, so routing a request takes no lock (an atomic load of the
/// current snapshot). Rebuilt from the dyno manager's events ([`RouteTable::follow`]) and
/// from the control plane's app changes (`remember_app`, `forget_app`: names, maintenance).
pub struct RouteTable {
    current: ArcSwap<Snapshot>,
    /// Woken after each new snapshot is swapped in.
    published: tokio::sync::Notify,
    sources: Mutex<Sources>,
    dynos: DynoManager,
    wake_tx: tokio::sync::mpsc::UnboundedSender<String>,
    wake_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

impl RouteTable {
    pub fn new(dynos: DynoManager) -> Self {
        let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            published: tokio::sync::Notify::new(),
            sources: Mutex::new(Sources::default()),
            dynos,
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
        }
    }

    fn remember(&self, name: &str, entry: AppEntry) {
        let mut sources = lock(&self.sources);
        sources
            .activity
            .entry(entry.id.clone())
            .or_insert_with(|| Arc::new(Activity::new()));
        sources.apps.insert(name.to_string(), entry);
        self.publish(&sources);
    }

    fn forget(&self, name: &str) {
        let mut sources = lock(&self.sources);
        if let Some(entry) = sources.apps.remove(name) {
            if !sources.apps.values().any(|e| e.id == entry.id) {
                sources.activity.remove(&entry.id);
            }
        }
        self.publish(&sources);
    }

    /// Builds and swaps in a new snapshot from `sources` and the dynos' state now.
    fn publish(&self, sources: &Sources) {
        let mut by_name = HashMap::with_capacity(sources.apps.len());
        for (name, entry) in &sources.apps {
            let asleep = !entry.maintenance && self.dynos.is_asleep(&entry.id);
            let target = if entry.maintenance {
                Target::Maintenance
            } else if asleep {
                Target::Starting
            } else {
                match self.dynos.web_status(&entry.id) {
                    WebStatus::NoWebDynos => Target::NoWebDynos,
                    WebStatus::Starting => Target::Starting,
                    WebStatus::Crashed => Target::Crashed,
                    WebStatus::Up(backends) => {
                        Target::Up(backends.into_iter().map(|b| (b.dyno, b.addr)).collect())
                    }
                }
            };
            let activity = sources
                .activity
                .get(&entry.id)
                .cloned()
                .unwrap_or_else(|| Arc::new(Activity::new()));
            by_name.insert(
                name.clone(),
                Route {
                    app_id: entry.id.clone(),
                    target,
                    asleep,
                    activity,
                },
            );
        }
        let (by_domain, by_wildcard) = domain_routes(sources, &by_name);
        self.current.store(Arc::new(Snapshot {
            by_name,
            by_domain,
            by_wildcard,
            https_redirect: sources.https_redirect.clone(),
        }));
        self.published.notify_waiters();
    }

    /// Whether the current snapshot sends any of the app's requests to `addr`.
    fn routes_to(&self, app_id: &str, addr: std::net::SocketAddr) -> bool {
        self.current.load().by_name.values().any(|route| {
            route.app_id == app_id
                && matches!(&route.target, Target::Up(backends) if backends.iter().any(|(_, a)| *a == addr))
        })
    }

    /// Waits until no new request of the app can go to `addr` (the snapshot without it is
    /// published), or until `deadline`.
    async fn unrouted(
        &self,
        app_id: &str,
        addr: std::net::SocketAddr,
        deadline: tokio::time::Instant,
    ) {
        loop {
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if !self.routes_to(app_id, addr) {
                return;
            }
            if tokio::time::timeout_at(deadline, published).await.is_err() {
                return;
            }
        }
    }

    /// Routes the custom domains (host name -> app id) and turns the HTTPS redirect on for
    /// exactly `https_redirect`'s apps.
    pub fn set_domains(&self, domains: HashMap<String, String>, https_redirect: HashSet<String>) {
        let mut sources = lock(&self.sources);
        sources.domains = domains;
        sources.https_redirect = https_redirect;
        self.publish(&sources);
    }

    fn refresh(&self) {
        let sources = lock(&self.sources);
        self.publish(&sources);
    }

    /// Keeps the table current until `stop`: rebuilds it on every dyno event, wakes sleeping
    /// apps a request came for, and puts apps that may sleep to sleep once they have had no
    /// request for their idle time.
    pub async fn follow(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<DynoEvent>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(mut wake_rx) = lock(&self.wake_rx).take() else {
            return;
        };
        self.refresh();
        let mut idle_check = tokio::time::interval(IDLE_CHECK);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(DynoEvent::MemoryQuotaExceeded { .. }) => {}
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.refresh()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Some(app_id) = wake_rx.recv() => {
                    if self.dynos.wake_app(&app_id) {
                        tracing::info!(app = %app_id, "woke a sleeping app for a request");
                    }
                }
                _ = idle_check.tick() => self.put_idle_apps_to_sleep(),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }

    fn put_idle_apps_to_sleep(&self) {
        let candidates: Vec<(String, Arc<Activity>)> = {
            let sources = lock(&self.sources);
            sources
                .apps
                .values()
                .filter(|e| !e.maintenance)
                .filter_map(|e| Some((e.id.clone(), sources.activity.get(&e.id)?.clone())))
                .collect()
        };
        for (app_id, activity) in candidates {
            let Some(after) = self.dynos.sleep_after(&app_id) else {
                continue;
            };
            if activity.idle_for() >= after
                && !self.dynos.is_asleep(&app_id)
                && self.dynos.sleep_app(&app_id)
            {
                tracing::info!(app = %app_id, idle_secs = after.as_secs(), "an idle app went to sleep");
            }
        }
    }
}

/// The custom domains' routes: each domain gets its app's route (by id, whatever the app's
/// name is now); domains of apps the table does not know are left out.
fn domain_routes(
    sources: &Sources,
    by_name: &HashMap<String, Route>,
) -> (HashMap<String, Route>, HashMap<String, Route>) {
    let by_id: HashMap<&str, &Route> = by_name
        .values()
        .map(|route| (route.app_id.as_str(), route))
        .collect();
    let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
    for (host, app_id) in &sources.domains {
        let Some(route) = by_id.get(app_id.as_str()) else {
            continue;
        };
        match host.strip_prefix("*.") {
            Some(parent) => wildcard.insert(parent.to_string(), (*route).clone()),
            None => exact.insert(host.clone(), (*route).clone()),
        };
    }
    (exact, wildcard)
}

/// How often apps that may sleep are checked for idleness.
const IDLE_CHECK: Duration = Duration::from_millis(500);

impl RouteTable {
    fn found(&self, route: &Route) -> Resolution {
        route.activity.touch();
        if route.asleep {
            let _ = self.wake_tx.send(route.app_id.clone());
        }
        Resolution::Found {
            app_id: route.app_id.clone(),
            target: route.target.clone(),
        }
    }
}

impl Resolver for RouteTable {
    fn resolve_domain(&self, host: &str) -> Resolution {
        let snapshot = self.current.load();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let route = snapshot.by_domain.get(&host).or_else(|| {
            // A wildcard covers exactly one label.
            let (_, parent) = host.split_once('.')?;
            snapshot.by_wildcard.get(parent)
        });
        match route {
            Some(route) => self.found(route),
            None => Resolution::NoSuchApp,
        }
    }

    fn redirects_to_https(&self, app_id: &str) -> bool {
        self.current.load().https_redirect.contains(app_id)
    }

    fn resolve(&self, app_name: &str) -> Resolution {
        let snapshot = self.current.load();
        let Some(route) = snapshot.by_name.get(app_name) else {
            return Resolution::NoSuchApp;
        };
        route.activity.touch();
        if route.asleep {
            let _ = self.wake_tx.send(route.app_id.clone());
        }
        Resolution::Found {
            app_id: route.app_id.clone(),
            target: route.target.clone(),
        }
    }
}

/// The dyno manager's view of the router when it retires a web dyno: first the route table
/// stops naming the dyno, then its in-flight requests finish ([`slipway_router::Drains`]).
pub struct RouterDrain {
    pub routes: Arc<RouteTable>,
    pub drains: slipway_router::Drains,
}

impl slipway_runtime::DrainWatch for RouterDrain {
    fn drain(
        &self,
        app_id: &str,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> slipway_runtime::BoxFuture<'static, usize> {
        let (routes, drains, app_id) =
            (self.routes.clone(), self.drains.clone(), app_id.to_string());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            routes.unrouted(&app_id, addr, deadline).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match drains.drained(addr, left).await {
                slipway_router::Drained::Idle => 0,
                slipway_router::Drained::TimedOut { in_flight } => in_flight,
            }
        })
    }
}
