//! The dyno manager.
//!
//! [`DynoManager::converge`] makes an app's running dynos match its release and formation:
//! dynos whose release or command is out of date are replaced, missing ones started, extra
//! ones stopped. Each dyno is a supervised process (see `supervisor.rs`) in its own process
//! group, running from a fresh copy of the slug in its own directory, with `PORT` (web) and
//! the app's config in its environment, its output sent to the app's log stream.
//!
//! On a deploy the old dynos keep serving until the new web dynos are up (or have failed to
//! come up), then they are stopped: SIGTERM, and SIGKILL after the stop timeout.
//!
//! What a dyno needs to be found again (id, pid, port, release, directory) is kept in the
//! store; [`DynoManager::reap_stale`] uses it at start-up to clean up after a server that died.

mod process;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_logs::LogHub;
use slipway_store::{DynoState, Store};
use tokio::sync::watch;

pub use process::pid_belongs_to_dyno;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where each dyno gets its own directory: `<dynos_dir>/<app id>/<dyno id>/app`.
    pub dynos_dir: PathBuf,
    /// SIGTERM to SIGKILL (Heroku: 30 s).
    pub stop_timeout: Duration,
    /// How long a web dyno has to bind `PORT` (Heroku: 60 s, then R10).
    pub boot_timeout: Duration,
    /// Longest wait between restarts of a dyno that keeps crashing.
    pub max_restart_delay: Duration,
}

impl RuntimeConfig {
    pub fn new(dynos_dir: PathBuf) -> Self {
        Self {
            dynos_dir,
            stop_timeout: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(60),
            max_restart_delay: Duration::from_secs(60),
        }
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub process_type: String,
    pub quantity: u32,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynoInfo {
    pub id: String,
    pub name: String,
    pub process_type: String,
    pub command: String,
    pub release_version: i64,
    pub state: DynoState,
    pub port: Option<u16>,
    pub updated_at: DateTime<Utc>,
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

pub(crate) struct Dyno {
    pub(crate) id: String,
    pub(crate) app_id: String,
    pub(crate) name: String,
    pub(crate) process_type: String,
    pub(crate) command: String,
    pub(crate) release: ReleaseSpec,
    pub(crate) status: Mutex<(DynoState, Option<u16>, DateTime<Utc>)>,
    pub(crate) retiring: AtomicBool,
    pub(crate) stop_tx: watch::Sender<bool>,
    pub(crate) done_rx: watch::Receiver<bool>,
}

impl Dyno {
    fn snapshot(&self) -> DynoInfo {
        let (state, port, updated_at) = *self.lock_status();
        DynoInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            process_type: self.process_type.clone(),
            command: self.command.clone(),
            release_version: self.release.version,
            state,
            port,
            updated_at,
        }
    }

    pub(crate) fn lock_status(
        &self,
    ) -> std::sync::MutexGuard<'_, (DynoState, Option<u16>, DateTime<Utc>)> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
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
    pub(crate) store: Store,
    pub(crate) logs: LogHub,
    apps: Mutex<HashMap<String, Vec<Arc<Dyno>>>>,
}

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
}

#[derive(Clone)]
pub struct DynoManager {
    inner: Arc<Inner>,
}

impl DynoManager {
    pub fn new(cfg: RuntimeConfig, store: Store, logs: LogHub) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                store,
                logs,
                apps: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Makes the app's dynos match `release` and `formation`. Returns at once; replaced dynos
    /// are stopped in the background once the new web dynos are up or have failed to start.
    pub fn converge(&self, release: ReleaseSpec, formation: &[ProcessSpec]) {
        let app_id = release.app_id.clone();
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
        if retire.is_empty() {
            return;
        }
        let boot_timeout = self.inner.cfg.boot_timeout;
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Old dynos keep serving until the new web dynos are up (or failed to come up).
                let new_web: Vec<_> = started.iter().filter(|d| d.process_type == "web").collect();
                let settled = async {
                    for d in new_web {
                        loop {
                            let state = d.lock_status().0;
                            if state != DynoState::Starting || *d.done_rx.borrow() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(boot_timeout + Duration::from_secs(5), settled).await;
                for d in &retire {
                    d.request_stop();
                }
                for d in &retire {
                    d.stopped().await;
                }
            },
            tracing::info_span!("retire", app = %app_id),
        ));
    }

    /// Stops every dyno of an app and waits until they are gone.
    pub async fn stop_app(&self, app_id: &str) {
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

    /// Up web dynos, those of the newest release that has any up: traffic moves to a new
    /// release as soon as one of its dynos is up, and old dynos get no new requests.
    pub fn web_status(&self, app_id: &str) -> WebStatus {
        let apps = self.inner.lock_apps();
        let Some(dynos) = apps.get(app_id) else {
            return WebStatus::NoWebDynos;
        };
        // One pass, no clones but the backends returned: this runs for every routed request.
        let (mut any_web, mut starting) = (false, false);
        let mut newest: Option<i64> = None;
        let mut up: Vec<(i64, &str, u16)> = Vec::new();
        for d in dynos.iter().filter(|d| d.process_type == "web") {
            any_web = true;
            let (state, port, _) = *d.lock_status();
            match (state, port) {
                (DynoState::Up, Some(port)) => {
                    newest = newest.max(Some(d.release.version));
                    up.push((d.release.version, &d.name, port));
                }
                (DynoState::Starting, _) => starting = true,
                _ => {}
            }
        }
        match newest {
            Some(version) => WebStatus::Up(
                up.into_iter()
                    .filter(|(v, _, _)| *v == version)
                    .map(|(_, name, port)| Backend {
                        dyno: name.to_string(),
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    })
                    .collect(),
            ),
            None if !any_web => WebStatus::NoWebDynos,
            None if starting => WebStatus::Starting,
            None => WebStatus::Crashed,
        }
    }

    /// Cleans up after a server that stopped without stopping its dynos: each recorded dyno
    /// whose process still runs (checked by its `SLIPWAY_DYNO_ID`, so a reused pid is never
    /// hit) is killed, and its directory and record removed. The caller then converges each
    /// app again from the store.
    pub async fn reap_stale(&self) -> Result<usize, slipway_store::StoreError> {
        let records = self.inner.store.all_dynos().await?;
        let count = records.len();
        for record in records {
            if let Some(pid) = record.pid {
                if process::pid_belongs_to_dyno(pid, &record.id) {
                    process::kill_group(pid as i32, nix::sys::signal::Signal::SIGKILL);
                }
            }
            let dir = PathBuf::from(&record.dir);
            if dir.starts_with(&self.inner.cfg.dynos_dir) {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
            self.inner.store.delete_dyno(&record.id).await?;
        }
        Ok(count)
    }
}

fn dyno_index(name: &str) -> u64 {
    name.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
