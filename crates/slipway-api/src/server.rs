//! `slipway server`: sets up the data directory, binds the API and the router, brings dynos
//! back in line with the store, serves until told to stop, then drains under a deadline.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use slipway_logs::LogHub;
pub use slipway_runtime::RuntimeKind;
use slipway_runtime::{DynoManager, RuntimeConfig};
use slipway_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{new_token, token_hash};
use crate::error::ApiError;
use crate::state::{AppEntry, AppLock, Settings, Shared, State};
use crate::{control, deploy, git, routes};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    /// The API and git endpoints over HTTPS too, if set: the same certificate store as the
    /// router's HTTPS listener (the server's own certificates, `certs:add` without an app),
    /// chosen by SNI.
    pub api_tls_listen: Option<SocketAddr>,
    pub router_listen: SocketAddr,
    /// The router's HTTPS listener, if any: certificates by SNI from `certs:add`, h2 and
    /// http/1.1 by ALPN.
    pub tls_listen: Option<SocketAddr>,
    /// Router worker threads, each with its own runtime and its own listening socket on the
    /// router's (and HTTPS) port (`SO_REUSEPORT`); at least 1.
    pub router_workers: usize,
    /// Apps are served at `<app>.<domain>` by the router.
    pub domain: String,
    /// Stop all dynos when the server stops. Off by default: dynos run under their own
    /// monitors, keep running while the server is away and are re-adopted when it starts.
    pub stop_dynos_on_exit: bool,
    pub admin_email: String,
    /// SIGTERM to SIGKILL for dynos.
    pub dyno_stop_timeout: Duration,
    /// How long a web dyno has to bind `PORT` before R10.
    pub dyno_boot_timeout: Duration,
    /// How often each dyno's memory and CPU are sampled (R14, runtime metrics, `ps`).
    pub dyno_metrics_interval: Duration,
    /// How often every app's dynos are compared with its release and formation and drift is
    /// corrected (`reconcile.rs`).
    pub reconcile_interval: Duration,
    /// How long open requests get to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Where builds run (outside the data directory); `None`: `<data-dir>-builds`.
    pub builds_dir: Option<PathBuf>,
    /// How long one build may run.
    pub build_timeout: Duration,
    /// Memory of each build container (OCI runtime), else address space of each buildpack process.
    pub build_memory_limit_bytes: u64,
    /// Largest compressed slug a build may make.
    pub max_slug_bytes: u64,
    /// How long a release phase may run before its release fails.
    pub release_phase_timeout: Duration,
    /// How long a client has to send a request's headers (API and router).
    pub header_read_timeout: Duration,
    /// Most dynos of one process type (`ps:scale` beyond it is refused with 422).
    pub max_dynos_per_type: u32,
    pub max_push_bytes: u64,
    /// The `slipway` binary git runs as the pre-receive hook.
    pub hook_binary: PathBuf,
    /// Where dynos run [default: `<data-dir>-dynos`]; never inside the data directory.
    pub dynos_dir: Option<PathBuf>,
    /// `auto` (OCI when root and the runtime works, else processes), `oci` or `process`.
    pub dyno_runtime: RuntimeKind,
    /// The OCI runtime binary (name or path).
    pub oci_runtime: String,
}

/// What the server tells its caller once both listeners are bound and it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub api_addr: SocketAddr,
    /// The API's HTTPS address, when it has one.
    pub api_tls_addr: Option<SocketAddr>,
    pub router_addr: SocketAddr,
    /// The router's HTTPS address, when it has one.
    pub tls_addr: Option<SocketAddr>,
    pub admin_token_path: PathBuf,
    /// Whether this start created the admin token (the first start).
    pub admin_token_created: bool,
    /// What runs the dynos, and why when it is the fallback.
    pub dyno_runtime: String,
}

const STATE_FILE: &str = "state.db";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Written while the server runs so local CLIs can find it: `{"api_url": ..., "router_url": ...}`.
pub const SERVER_FILE: &str = "server.json";

fn validate(cfg: &ServerConfig) -> anyhow::Result<()> {
    let domain_ok = !cfg.domain.is_empty()
        && cfg.domain.len() <= 200
        && cfg
            .domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !domain_ok {
        bail!(
            "invalid --domain {:?}: use a DNS name such as localhost or apps.example.com",
            cfg.domain
        );
    }
    if !cfg.admin_email.contains('@') {
        bail!(
            "invalid admin email {:?}: it must contain @",
            cfg.admin_email
        );
    }
    if !cfg.hook_binary.is_file() {
        bail!(
            "the slipway binary {} (used as the git pre-receive hook) does not exist",
            cfg.hook_binary.display()
        );
    }
    if cfg.build_memory_limit_bytes < 256 * 1024 * 1024 {
        bail!("the build memory limit must be at least 256 MB; buildpacks need room to run");
    }
    if cfg.max_slug_bytes == 0 {
        bail!("the largest slug size must be at least 1 MB");
    }
    if cfg.build_timeout.is_zero() {
        bail!("the build timeout must be at least 1 second");
    }
    if cfg.header_read_timeout.is_zero() {
        bail!("the header read timeout must be at least 1 second");
    }
    if cfg.max_dynos_per_type == 0 {
        bail!("the most dynos per process type must be at least 1");
    }
    if cfg.max_push_bytes == 0 {
        bail!("max push size must be larger than 0");
    }
    Ok(())
}

fn prepare_data_dir(dir: &Path, hook_binary: &Path) -> anyhow::Result<()> {
    for sub in ["", "repos", "slugs", "hooks"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating data directory {}", path.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting permissions of {}", dir.display()))?;
    let hook = dir.join("hooks").join("pre-receive");
    let quoted = hook_binary.display().to_string().replace('\'', "'\\''");
    let script = format!(
        "#!/bin/sh\n# Written by slipway at every start: runs the build for a push.\nexec '{quoted}' hook pre-receive\n"
    );
    let tmp = hook.with_extension("tmp");
    std::fs::write(&tmp, script).with_context(|| format!("writing git hook {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", tmp.display()))?;
    std::fs::rename(&tmp, &hook)
        .with_context(|| format!("installing git hook {}", hook.display()))?;
    Ok(())
}

/// `<dir><suffix>` beside `dir`: `/var/lib/slipway` -> `/var/lib/slipway-builds`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "slipway".into());
    name.push(suffix);
    dir.with_file_name(name)
}

/// The builds directory: traversable but not listable (each build's own directory is private to
/// the user it runs as), with the leftovers of builds a crash interrupted removed.
fn prepare_builds_dir(dir: &Path) -> anyhow::Result<()> {
    for sub in ["", "tmp", "cache", "buildpacks"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating builds directory {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another slipway server is already using the data directory {}; stop it first, or pass another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Creates the admin user, and on the first start its token in `<data-dir>/admin.token` (0600).
async fn ensure_admin(store: &Store, cfg: &ServerConfig) -> anyhow::Result<(PathBuf, bool)> {
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    let user = store.ensure_user(&cfg.admin_email).await?;
    if store.token_count().await? > 0 {
        return Ok((path, false));
    }
    let token = new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    store
        .add_token(
            &user.id,
            &token_hash(&token),
            "admin token created at first start",
        )
        .await?;
    Ok((path, true))
}

/// One router worker: its own single-threaded runtime serving its own listeners (plain
/// HTTP, and HTTPS when the server has it) until told to stop.
fn run_router_worker(
    router: slipway_router::Router,
    listener: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    router_stop: impl Future<Output = ()>,
    tls_stop: impl Future<Output = ()>,
    router_addr: SocketAddr,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let span = tracing::info_span!("router", addr = %router_addr);
    runtime.block_on(tracing::Instrument::instrument(
        async move {
            let listener = TcpListener::from_std(listener)?;
            let Some((tls_listener, tls_config)) = tls else {
                return router.serve(listener, router_stop).await;
            };
            let tls_listener = TcpListener::from_std(tls_listener)?;
            // Both listeners share the router (its rotation state) and stop together.
            let (http, https) = tokio::join!(
                router.serve(listener, router_stop),
                router.serve_tls(tls_listener, tls_config, tls_stop),
            );
            http.and(https)
        },
        span,
    ))
}

/// The router's listening sockets, one per worker, sharing `addr`'s port.
fn bind_workers(
    addr: SocketAddr,
    workers: usize,
    what: &str,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    slipway_serve::bind_workers(addr, workers)
        .with_context(|| format!("binding the {what} to {addr} (is another server using it? pass another address or port 0)"))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} to {addr} (is another server using it? pass another address or port 0)"))
}

fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

pub fn api_routes(state: Shared) -> Router {
    let streaming = Router::new()
        .merge(git::routes())
        .route("/internal/push-builds", post(deploy::push_build))
        .merge(crate::pipelines::git::git_routes())
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .merge(routes::routes())
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .merge(streaming)
        .fallback(|| async {
            ApiError::not_found(
                "No such API endpoint. See ARCHITECTURE.md for the API slipway serves.",
            )
        })
        // Every request, git and the hook's included, is logged with its Request-Id.
        .layer(axum::middleware::from_fn(routes::observe))
        .with_state(state)
}

/// Runs the server until `shutdown` resolves. `on_ready` is called once it serves.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    validate(&cfg)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    // Held until the server exits: a second server on the same data directory would fight
    // this one over the same dynos.
    let _data_lock = lock_data_dir(&cfg.data_dir)?;
    prepare_data_dir(&cfg.data_dir, &cfg.hook_binary)?;
    let builds_dir = cfg
        .builds_dir
        .clone()
        .unwrap_or_else(|| sibling(&cfg.data_dir, "-builds"));
    prepare_builds_dir(&builds_dir)?;
    let store = Store::open(&cfg.data_dir.join(STATE_FILE))
        .await
        .with_context(|| format!("opening the state database in {}", cfg.data_dir.display()))?;
    let (admin_token_path, admin_token_created) = ensure_admin(&store, &cfg).await?;
    // A tarball half-written into the release store when the last server was killed.
    slipway_hosts::ReleaseStore::new(&cfg.data_dir).clean_temp();

    let api_listener = bind(cfg.api_listen, "API").await?;
    let workers = cfg.router_workers.max(1);
    let router_listeners = bind_workers(cfg.router_listen, workers, "router")?;
    let api_addr = reachable(api_listener.local_addr()?);
    let api_tls_listener = match cfg.api_tls_listen {
        Some(addr) => Some(bind(addr, "API's HTTPS listener").await?),
        None => None,
    };
    let api_tls_addr = match &api_tls_listener {
        Some(l) => Some(reachable(l.local_addr()?)),
        None => None,
    };
    let router_addr = reachable(router_listeners[0].local_addr()?);
    let tls_listeners = match cfg.tls_listen {
        Some(addr) => Some(bind_workers(addr, workers, "router's HTTPS listener")?),
        None => None,
    };
    let tls_addr = match &tls_listeners {
        Some(l) => Some(reachable(l[0].local_addr()?)),
        None => None,
    };

    let settings = Settings {
        data_dir: cfg.data_dir.clone(),
        api_url: format!("http://{api_addr}"),
        api_addr,
        router_port: router_addr.port(),
        https_port: tls_addr.map(|a| a.port()),
        domain: cfg.domain.clone(),
        build_limits: slipway_build::Limits {
            max_slug_bytes: cfg.max_slug_bytes,
            ..slipway_build::Limits::default()
        },
        builds_dir: builds_dir.clone(),
        build_timeout: cfg.build_timeout,
        build_memory_limit_bytes: cfg.build_memory_limit_bytes,
        release_phase_timeout: cfg.release_phase_timeout,
        max_push_bytes: cfg.max_push_bytes,
        max_dynos_per_type: cfg.max_dynos_per_type,
        hook_binary: cfg.hook_binary.clone(),
    };
    // Each app's history in `<data>/logs/<app-id>/`; its drains start before its dynos do.
    let logs = LogHub::open(slipway_logs::HubConfig {
        dir: Some(cfg.data_dir.join("logs")),
        drain_ca: std::env::var_os("SLIPWAY_LOG_DRAIN_CA").map(PathBuf::from),
        ..slipway_logs::HubConfig::default()
    })
    .context("opening the apps' log history")?;
    for drain in store.all_log_drains().await? {
        if let (Some(spec), Ok(app)) = (routes::drain_spec(&drain), store.app(&drain.app_id).await)
        {
            logs.set_drain(&app.id, &app.name, spec);
        }
    }
    let drop_reports = logs.clone();
    let drop_reports_task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                drop_reports.report_pending_drops();
            }
        },
        tracing::info_span!("log_drop_reports"),
    ));
    let dynos_dir = cfg
        .dynos_dir
        .clone()
        .unwrap_or_else(|| RuntimeConfig::default_dynos_dir(&cfg.data_dir));
    let mut runtime_cfg = RuntimeConfig::new(dynos_dir);
    runtime_cfg.data_dir = Some(cfg.data_dir.clone());
    runtime_cfg.runtime = cfg.dyno_runtime;
    runtime_cfg.oci_runtime = cfg.oci_runtime.clone();
    runtime_cfg.stop_timeout = cfg.dyno_stop_timeout;
    runtime_cfg.boot_timeout = cfg.dyno_boot_timeout;
    runtime_cfg.memory_check_interval = cfg.dyno_metrics_interval;
    // Dynos run under `slipway dyno-monitor`, which outlives this process.
    runtime_cfg.monitor_command = vec![cfg.hook_binary.clone().into(), "dyno-monitor".into()];
    let dynos =
        DynoManager::new(runtime_cfg, logs.clone()).context("setting up the dyno runtime")?;
    // What the dyno manager reports is printed in the apps' logs and recorded in the store.
    let mut dyno_events = control::record_dyno_events(
        store.clone(),
        logs.clone(),
        dynos
            .take_events()
            .context("the dyno manager's event stream was taken")?,
    );
    let state: Shared = Arc::new(State::new(
        settings,
        store.clone(),
        logs.clone(),
        dynos.clone(),
    ));

    let interrupted = store.fail_interrupted_builds().await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "marked builds interrupted by the previous server's stop as failed"
        );
    }
    let interrupted = crate::deploys::recover(&state).await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "marked deploys interrupted by the previous server's stop"
        );
    }
    crate::pipelines::recover(&state).await;
    crate::gc::collect(&state).await?;
    // Dynos a previous server left running are supervised again (same processes, their
    // output followed from where it stopped); the others are cleaned up. Converging then
    // starts only what is missing.
    let known: Vec<_> = store
        .all_dynos()
        .await?
        .iter()
        .map(control::runtime_record)
        .collect();
    let running = dynos.recover(known).await;
    let adopted = running.len();
    for record in running {
        match control::release_spec(&state, &record.app_id, record.release_version).await {
            Ok(Some(release)) => dynos.adopt(&record, &release).await,
            other => {
                if let Err(e) = other {
                    tracing::warn!(dyno = %record.id, error = ?e, "could not load the dyno's release");
                }
                dynos.discard(&record).await;
            }
        }
    }
    if adopted > 0 {
        tracing::info!(
            adopted,
            "re-adopted the dynos the previous server left running"
        );
    }
    // Replaced web dynos are stopped only once the router sends them nothing and their
    // in-flight requests are done (or the drain timeout passed).
    let drains = slipway_router::Drains::default();
    state
        .dynos
        .set_drain_watch(Arc::new(crate::state::RouterDrain {
            routes: state.routes.clone(),
            drains: drains.clone(),
        }));
    for app in store.list_apps().await? {
        state.remember_app(
            &app.name,
            AppEntry {
                id: app.id.clone(),
                maintenance: app.maintenance,
            },
        );
        // Each app in its own task, under its release lock: a slow or failing rollout (a
        // release the previous server had not finished rolling out) holds up no other app.
        let (state, app) = (state.clone(), app.clone());
        tokio::spawn(async move {
            let lock = state.app_lock(AppLock::Release, &app.id);
            let _guard = lock.lock().await;
            match control::converge_app(&state, &app.id).await {
                Ok(converged) => {
                    if let Some(message) = converged.message() {
                        tracing::warn!(app = %app.name, %message, "a release did not become healthy");
                    }
                }
                Err(e) => {
                    tracing::error!(app = %app.name, error = ?e, "could not start the app's dynos")
                }
            }
        });
    }

    // Custom domains and certificates, before the router serves its first request.
    crate::edge::reload_domains(&state).await?;
    let certs = crate::edge::reload_certs(&state).await?;
    if tls_addr.is_some() {
        tracing::info!(certs, "serving certificates on the HTTPS listener");
    }

    let server_file = cfg.data_dir.join(SERVER_FILE);
    let info = serde_json::json!({
        "api_url": format!("http://{api_addr}"),
        "router_url": format!("http://{router_addr}"),
        "domain": cfg.domain,
        "pid": std::process::id(),
    });
    std::fs::write(&server_file, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {}", server_file.display()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The router's route table follows the dynos (and puts idle apps to sleep).
    tokio::spawn(tracing::Instrument::instrument(
        state
            .routes
            .clone()
            .follow(dynos.subscribe(), stop_rx.clone()),
        tracing::info_span!("routes"),
    ));
    crate::reconcile::spawn(state.clone(), cfg.reconcile_interval, stop_rx.clone());

    let app = api_routes(state.clone());
    let limits = slipway_serve::ConnectionLimits {
        header_read_timeout: cfg.header_read_timeout,
        shutdown_grace: cfg.shutdown_timeout,
    };
    let api_tls = match api_tls_listener {
        Some(listener) => Some((
            listener,
            state
                .certs
                .server_config()
                .context("setting up TLS for the API's HTTPS listener")?,
        )),
        None => None,
    };
    let api_stop = stopped(stop_rx.clone());
    let api_tls_stop = stopped(stop_rx.clone());
    let mut api_task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let tls_app = app.clone();
            let http = slipway_serve::serve_http(api_listener, limits, api_stop, move |_peer| {
                hyper_util::service::TowerToHyperService::new(app.clone())
            });
            let Some((listener, tls)) = api_tls else {
                return http.await;
            };
            // The same routes over TLS, under the same limits; both stop together.
            let https = slipway_serve::serve_tls(
                listener,
                tls,
                limits,
                slipway_serve::HeaderLimits::default(),
                api_tls_stop,
                move |_peer| hyper_util::service::TowerToHyperService::new(tls_app.clone()),
            );
            let (http, https) = tokio::join!(http, https);
            http.and(https)
        },
        tracing::info_span!("api", addr = %api_addr),
    ));
    let router_cfg = slipway_router::RouterConfig {
        drains: drains.clone(),
        domain: cfg.domain.clone(),
        shutdown_grace: cfg.shutdown_timeout,
        header_read_timeout: cfg.header_read_timeout,
        https_port: tls_addr.map(|a| a.port()),
        ..slipway_router::RouterConfig::default()
    };
    let tls_config = match tls_listeners {
        Some(_) => Some(
            state
                .certs
                .server_config()
                .context("setting up TLS for the HTTPS listener")?,
        ),
        None => None,
    };
    // The router runs on threads of its own, each with a single-threaded runtime and its own
    // listening sockets: a flood of requests cannot starve the control plane, and a request
    // never hops between threads inside the router.
    let mut tls_listeners = tls_listeners.map(Vec::into_iter);
    let mut worker_args = Vec::with_capacity(workers);
    for listener in router_listeners {
        let tls = match (&mut tls_listeners, &tls_config) {
            (Some(listeners), Some(config)) => listeners.next().map(|l| (l, config.clone())),
            _ => None,
        };
        worker_args.push((
            listener,
            tls,
            stopped(stop_rx.clone()),
            stopped(stop_rx.clone()),
        ));
    }
    let router = slipway_router::Router::new(router_cfg, state.routes.clone(), logs.clone());
    let mut router_task = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::thread::scope(|scope| {
            let threads: Vec<_> = worker_args
                .into_iter()
                .enumerate()
                .map(|(i, (listener, tls, router_stop, tls_stop))| {
                    let router = router.worker();
                    std::thread::Builder::new()
                        .name(format!("slipway-router-{i}"))
                        .spawn_scoped(scope, move || {
                            run_router_worker(
                                router,
                                listener,
                                tls,
                                router_stop,
                                tls_stop,
                                router_addr,
                            )
                        })
                })
                .collect::<std::io::Result<_>>()?;
            let mut result = Ok(());
            for thread in threads {
                let done = thread
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a router worker panicked")));
                result = result.and(done);
            }
            result
        })
    });

    on_ready(&Ready {
        api_addr,
        api_tls_addr,
        router_addr,
        tls_addr,
        admin_token_path,
        admin_token_created,
        dyno_runtime: dynos.runtime_description(),
    });

    // Serve until told to stop, or until a listener fails.
    let (mut api_done, mut router_done) = (false, false);
    let failure: Option<anyhow::Error> = tokio::select! {
        biased;
        _ = stopped(stop_rx.clone()) => None,
        r = &mut api_task => {
            api_done = true;
            r.context("API server task").and_then(|r| r.context("API server")).err()
        }
        r = &mut router_task => {
            router_done = true;
            r.context("router task").and_then(|r| r.context("router")).err()
        }
    };
    tracing::info!("shutting down");
    // Tails end now (clients reconnect to the next server), not at the shutdown deadline.
    logs.close_tails();
    drop_reports_task.abort();
    // Open requests (and log tails) get the shutdown timeout to finish, then are cut.
    let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout;
    if !api_done
        && tokio::time::timeout_at(deadline, &mut api_task)
            .await
            .is_err()
    {
        api_task.abort();
    }
    if !router_done
        && tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut router_task)
            .await
            .is_err()
    {
        router_task.abort();
    }
    if cfg.stop_dynos_on_exit {
        dynos.stop_all().await;
    }
    // The last dyno events reach the logs and the store before they close.
    if !control::dyno_events_recorded(
        &mut dyno_events,
        dynos.last_event(),
        Duration::from_secs(10),
    )
    .await
    {
        tracing::warn!("some dyno events were not recorded before the shutdown");
    }
    let _ = std::fs::remove_file(&server_file);
    logs.flush().await;
    store.close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
