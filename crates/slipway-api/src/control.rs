//! Control-plane operations, shared by the API handlers, git pushes and server start-up.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use slipway_core::appjson::{AppJson, Healthcheck};
use slipway_core::AppName;
use slipway_runtime::{DynoSize, ProcessSpec, ReleaseSpec, RolloutOutcome};
use slipway_store::{App, User};

use crate::error::{ApiError, ApiResult};
use crate::state::{AppEntry, AppLock, Shared};

/// What destroying an app removed, so the user is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub dynos: usize,
    pub releases: i64,
    pub builds: i64,
    pub slugs: i64,
    pub slug_bytes: i64,
    pub repository: bool,
    pub log_lines: usize,
}

/// Creates an app and its git repository. Either both exist afterwards, or neither.
pub async fn create_app(state: &Shared, user: &User, name: Option<&str>) -> ApiResult<App> {
    let name = match name {
        Some(n) => AppName::parse(n).map_err(|e| ApiError::invalid(e.to_string()))?,
        None => generated_name(state).await?,
    };
    let app = state
        .store
        .create_app(name.as_str(), &user.id)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "Name {name} is already taken; choose another app name."
            )),
            other => other.into(),
        })?;
    let repo = state.settings.repo_dir(&app.id);
    let init = tokio::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(&repo)
        .output()
        .await;
    let failure = match init {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Some(format!("could not run git: {e}")),
    };
    if let Some(err) = failure {
        let _ = state.store.delete_app(&app.id).await;
        let _ = tokio::fs::remove_dir_all(&repo).await;
        return Err(ApiError::internal("creating the app's git repository", err));
    }
    state.remember_app(
        &app.name,
        AppEntry {
            id: app.id.clone(),
            maintenance: app.maintenance,
        },
    );
    state.api_log(
        &app.id,
        &format!("Create app {} by user {}", app.name, user.email),
    );
    Ok(app)
}

async fn generated_name(state: &Shared) -> ApiResult<AppName> {
    const ADJECTIVES: [&str; 8] = [
        "calm", "bright", "swift", "quiet", "bold", "gentle", "brave", "lucky",
    ];
    const NOUNS: [&str; 8] = [
        "harbor", "river", "meadow", "summit", "forest", "canyon", "island", "glacier",
    ];
    for _ in 0..20 {
        let n: u32 = rand::random();
        let raw = format!(
            "{}-{}-{:05}",
            ADJECTIVES[(n % 8) as usize],
            NOUNS[((n / 8) % 8) as usize],
            (n / 64) % 100_000
        );
        if state.store.find_app(&raw).await?.is_none() {
            return AppName::parse(&raw)
                .map_err(|e| ApiError::internal("generating an app name", e));
        }
    }
    Err(ApiError::conflict(
        "Could not find a free app name; pass one explicitly.",
    ))
}

/// Destroys an app: stops its dynos, then removes its records (releases, builds, slugs,
/// formation), repository, slug files and logs. Says what it removed.
pub async fn destroy_app(state: &Shared, app: &App) -> ApiResult<Removed> {
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    let footprint = state.store.app_footprint(&app.id).await?;
    let log_lines = state
        .logs
        .history(
            &app.id,
            &slipway_logs::Filter::default(),
            slipway_logs::HISTORY_LINES,
        )
        .len();
    state.forget_app(&app.name);
    let dynos = state.dynos.list(&app.id).len();
    state.dynos.stop_app(&app.id).await;
    state.store.delete_app(&app.id).await?;
    // The release store keeps only what a target's host runs (issue 11).
    match slipway_hosts::ReleaseStore::new(&state.settings.data_dir)
        .forget(&state.store, &app.name)
        .await
    {
        Ok(removed) => {
            tracing::info!(app = %app.name, removed = removed.len(), "removed the app's releases from the release store")
        }
        Err(e) => {
            tracing::warn!(app = %app.name, error = %e, "could not remove the app's releases from the release store")
        }
    }
    // Its certificates went with it: stop serving them and remove their keys.
    if let Err(e) = crate::edge::reload_certs(state).await {
        tracing::error!(app = %app.name, error = %e, "could not reload the certificates");
    }
    if let Err(e) = crate::edge::reload_domains(state).await {
        tracing::error!(app = %app.name, error = %e, "could not reload the custom domains");
    }
    let mut repository = false;
    for (dir, is_repo) in [
        (state.settings.repo_dir(&app.id), true),
        (state.settings.slug_dir(&app.id), false),
        (state.settings.cache_dir(&app.id), false),
        (
            state
                .settings
                .builds_dir
                .join("buildpacks")
                .join("fetched")
                .join(&app.id),
            false,
        ),
    ] {
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => repository |= is_repo,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove app files")
            }
        }
    }
    state.logs.remove(&app.id);
    Ok(Removed {
        dynos,
        releases: footprint.releases,
        builds: footprint.builds,
        slugs: footprint.slugs,
        slug_bytes: footprint.slug_bytes,
        repository,
        log_lines,
    })
}

/// Renames an app. The router serves it under the new name at once (and no longer under the
/// old one); git follows by itself, since repositories are stored by app id.
pub async fn rename_app(state: &Shared, app: &App, new: &AppName, user: &User) -> ApiResult<App> {
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    let renamed = state
        .store
        .rename_app(&app.id, new.as_str())
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "Name {new} is already taken; choose another app name."
            )),
            other => other.into(),
        })?;
    // The new name works before the old one stops: no moment when neither routes.
    state.remember_app(
        &renamed.name,
        AppEntry {
            id: renamed.id.clone(),
            maintenance: renamed.maintenance,
        },
    );
    state.forget_app(&app.name);
    state.api_log(
        &app.id,
        &format!(
            "Rename app from {} to {} by user {}",
            app.name, renamed.name, user.email
        ),
    );
    Ok(renamed)
}

/// Turns maintenance mode on or off; the router answers H80 while it is on.
pub async fn set_maintenance(state: &Shared, app: &App, on: bool) -> ApiResult<App> {
    let app = state.store.set_maintenance(&app.id, on).await?;
    state.remember_app(
        &app.name,
        AppEntry {
            id: app.id.clone(),
            maintenance: app.maintenance,
        },
    );
    Ok(app)
}

/// What an app's dynos should be: its current release and formation. `None` before the first
/// deploy (no release, or a release without a slug).
async fn desired(
    state: &Shared,
    app_id: &str,
) -> ApiResult<Option<(ReleaseSpec, Vec<ProcessSpec>)>> {
    Ok(desired_release(state, app_id)
        .await?
        .map(|(_, spec, specs)| (spec, specs)))
}

/// [`desired`], with the release record.
pub(crate) async fn desired_release(
    state: &Shared,
    app_id: &str,
) -> ApiResult<Option<(slipway_store::Release, ReleaseSpec, Vec<ProcessSpec>)>> {
    let Some(record) = state.store.current_release(app_id).await? else {
        return Ok(None);
    };
    let Some(release) = release_spec_of(state, app_id, record.clone()).await? else {
        return Ok(None);
    };
    let formation = state.store.formation(app_id).await?;
    let specs: Vec<ProcessSpec> = formation
        .iter()
        .map(|f| ProcessSpec {
            process_type: f.process_type.clone(),
            quantity: u32::try_from(f.quantity).unwrap_or(0),
            command: f.command.clone(),
            // The API accepts only sizes the runtime knows (`formation.rs` `SIZES`).
            size: DynoSize::parse(&f.size).unwrap_or_else(DynoSize::standard_1x),
        })
        .collect();
    Ok(Some((record, release, specs)))
}

/// Release `version` of an app as the dyno manager runs it (for re-adopting a dyno a previous
/// server left running). `None` when the app has no such release with a slug.
pub async fn release_spec(
    state: &Shared,
    app_id: &str,
    version: i64,
) -> ApiResult<Option<ReleaseSpec>> {
    match state.store.release(app_id, &version.to_string()).await {
        Ok(release) => release_spec_of(state, app_id, release).await,
        Err(slipway_store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn release_spec_of(
    state: &Shared,
    app_id: &str,
    release: slipway_store::Release,
) -> ApiResult<Option<ReleaseSpec>> {
    let Some(slug_id) = release.slug_id.as_deref() else {
        return Ok(None);
    };
    let slug = state.store.slug(slug_id).await?;
    let healthchecks = slug_healthchecks(&slug).await?;
    Ok(Some(ReleaseSpec {
        app_id: app_id.to_string(),
        version: release.version,
        slug_path: slug.path.into(),
        slug_checksum: slug.checksum,
        env: release.config,
        healthchecks,
    }))
}

/// The slug's `app.json` `healthchecks.web[]` (none without an `app.json`). Read from the slug
/// itself, so deploys, config changes and rollbacks all use the checks of the code they run;
/// kept in memory by slug checksum (a slug never changes).
async fn slug_healthchecks(slug: &slipway_store::Slug) -> ApiResult<Vec<Healthcheck>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<Healthcheck>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(checks) = lock().get(&slug.checksum) {
        return Ok(checks.clone());
    }
    let path = std::path::PathBuf::from(&slug.path);
    let read = tokio::task::spawn_blocking(move || {
        slipway_build::read_slug_file(&path, "app.json", slipway_core::appjson::MAX_APP_JSON)
    })
    .await
    .map_err(|e| ApiError::internal("reading the slug's app.json", e))?
    .map_err(|e| ApiError::internal("reading the slug's app.json", e))?;
    let checks = match read {
        None => Vec::new(),
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            AppJson::parse(&text)
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "{e}; fix app.json and push again (its health checks decide when new dynos get traffic)"
                    ))
                })?
                .healthchecks
        }
    };
    let mut cache = lock();
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(slug.checksum.clone(), checks.clone());
    Ok(checks)
}

/// How converging an app onto its current release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converged {
    /// The dynos run the current release: its new web dynos are up and past their health
    /// checks and get the traffic; the replaced ones drain and stop in the background. Also
    /// when the app has nothing to run yet.
    Ok,
    /// The current release's new web dynos never became healthy (a failed health check, or a
    /// crash or R10 while the previous release served). The release was marked failed, the
    /// app's config and formation are the previous release's again, and its dynos keep
    /// serving. `reason` names the dyno, release and check: `web.1 of v3 failed health check
    /// /health: 500 (5 attempts)`.
    Unhealthy { version: i64, reason: String },
}

impl Converged {
    /// What the user is told when the release did not go live.
    pub fn message(&self) -> Option<String> {
        match self {
            Converged::Ok => None,
            Converged::Unhealthy { version, reason } => Some(format!(
                "v{version} was not released: {reason}. The previous release keeps serving."
            )),
        }
    }

    /// `Unhealthy` as the API answers it: 422 `unhealthy_release`.
    pub fn into_result(self) -> ApiResult<()> {
        match self.message() {
            None => Ok(()),
            Some(message) => Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "unhealthy_release",
                message,
            )),
        }
    }
}

/// Brings the app's dynos in line with its current release and formation, and waits until
/// traffic has moved to the release's new web dynos or they failed to become healthy (then
/// the release is failed and the previous one restored: [`Converged::Unhealthy`]). Callers
/// that changed the release or formation hold the app's `Release` lock across the change and
/// this call, so two changes never converge out of order.
pub async fn converge_app(state: &Shared, app_id: &str) -> ApiResult<Converged> {
    let Some((record, release, specs)) = desired_release(state, app_id).await? else {
        return Ok(Converged::Ok);
    };
    let new_release = is_new_release(state, app_id, release.version);
    let rollout = state.dynos.converge(release, &specs);
    settle(state, app_id, &record, new_release, rollout).await
}

/// Whether no dyno of the app runs release `version` yet: a rollout to it (or a first one)
/// can fail the release; a formation change of the running release cannot.
pub(crate) fn is_new_release(state: &Shared, app_id: &str, version: i64) -> bool {
    state
        .dynos
        .list(app_id)
        .iter()
        .all(|d| d.release_version != version)
}

/// Waits for a converge's rollout onto `record`; when it is unhealthy and `new_release`, fails
/// the release (the previous one's config and formation back) and says so in the app's log.
pub(crate) async fn settle(
    state: &Shared,
    app_id: &str,
    record: &slipway_store::Release,
    new_release: bool,
    rollout: slipway_runtime::Rollout,
) -> ApiResult<Converged> {
    let version = record.version;
    let outcome = rollout.outcome().await;
    let RolloutOutcome::Unhealthy { reason } = outcome else {
        return Ok(Converged::Ok);
    };
    if !new_release {
        state.api_log(app_id, &format!("Scaling v{version}: {reason}"));
        return Ok(Converged::Ok);
    }
    state
        .store
        .fail_unhealthy_release(app_id, &record.id)
        .await?;
    state.api_log(
        app_id,
        &format!("Release v{version} failed: {reason}; the previous release keeps serving"),
    );
    Ok(Converged::Unhealthy { version, reason })
}

/// [`converge_app`] without waiting for the new dynos (scaling: the API answers at once, as
/// Heroku's does).
pub async fn start_converge(state: &Shared, app_id: &str) -> ApiResult<()> {
    if let Some((release, specs)) = desired(state, app_id).await? {
        drop(state.dynos.converge(release, &specs));
    }
    Ok(())
}

/// Which dynos `ps:restart` restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartTarget {
    All,
    /// Every dyno of a process type: `web`.
    Type(String),
    /// One dyno: `web.2`.
    Dyno {
        process_type: String,
        index: u32,
    },
}

impl RestartTarget {
    /// `web` or `web.2`.
    pub fn parse(raw: &str) -> Self {
        match raw.rsplit_once('.') {
            Some((t, n)) if !t.is_empty() => match n.parse::<u32>() {
                Ok(index) if index > 0 => RestartTarget::Dyno {
                    process_type: t.to_string(),
                    index,
                },
                _ => RestartTarget::Type(raw.to_string()),
            },
            _ => RestartTarget::Type(raw.to_string()),
        }
    }
}

/// Restarts dynos as Heroku's `ps:restart` does (without preboot): each is stopped (SIGTERM,
/// then SIGKILL after the stop timeout) while its replacement starts from a fresh copy of the
/// slug. Returns the names of the dynos restarted.
///
/// The dyno manager restarts through `converge` only: a first pass without the dynos to
/// restart retires them, a second with the whole formation starts fresh ones. That reaches
/// every dyno of a type, and one dyno when it is the highest-numbered of its type (`web.1` of
/// one web dyno); restarting `web.1` while `web.2` runs needs a per-dyno restart in the
/// dyno manager and is refused until it has one.
pub async fn restart_dynos(
    state: &Shared,
    app: &App,
    target: &RestartTarget,
) -> ApiResult<Vec<String>> {
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    let Some((release, specs)) = desired(state, &app.id).await? else {
        return Err(ApiError::invalid(format!(
            "{} has no release to run yet; push with `git push slipway main` first.",
            app.name
        )));
    };
    let running: Vec<String> = state
        .dynos
        .list(&app.id)
        .into_iter()
        .filter(|d| d.release_version == release.version)
        .map(|d| d.name)
        .collect();
    let find_type = |t: &str| {
        specs.iter().find(|s| s.process_type == t).ok_or_else(|| {
            ApiError::not_found(format!(
                "Couldn't find that process type ({t}) on {}; its formation has: {}.",
                app.name,
                specs
                    .iter()
                    .map(|s| s.process_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    // The quantity each type keeps during the first pass.
    let kept = |t: &str, q: u32| -> u32 {
        match target {
            RestartTarget::All => 0,
            RestartTarget::Type(rt) if rt == t => 0,
            RestartTarget::Dyno {
                process_type,
                index,
            } if process_type == t => index - 1,
            _ => q,
        }
    };
    match target {
        RestartTarget::All => {}
        RestartTarget::Type(t) => {
            find_type(t)?;
        }
        RestartTarget::Dyno {
            process_type,
            index,
        } => {
            let spec = find_type(process_type)?;
            if *index > spec.quantity {
                return Err(ApiError::not_found(format!(
                    "Couldn't find that dyno ({process_type}.{index}) on {}: {process_type} runs {} dyno(s).",
                    app.name, spec.quantity
                )));
            }
            if *index < spec.quantity {
                return Err(ApiError::not_implemented(format!(
                    "Restarting {process_type}.{index} alone while {process_type}.{} runs is not supported yet; restart every {process_type} dyno with `slipway ps:restart {process_type}`.",
                    spec.quantity
                )));
            }
        }
    }
    let first: Vec<ProcessSpec> = specs
        .iter()
        .map(|s| ProcessSpec {
            quantity: kept(&s.process_type, s.quantity),
            ..s.clone()
        })
        .collect();
    let restarted: Vec<String> = specs
        .iter()
        .flat_map(|s| {
            (kept(&s.process_type, s.quantity) + 1..=s.quantity)
                .map(move |i| format!("{}.{i}", s.process_type))
        })
        .filter(|name| running.contains(name))
        .collect();
    drop(state.dynos.converge(release.clone(), &first));
    drop(state.dynos.converge(release, &specs));
    Ok(restarted)
}

/// Follows the dyno manager's record stream (`slipway_runtime::events`) for the life of the
/// server: prints each event's `heroku[web.1]` lines in the app's log at once, and keeps the
/// store's `dynos` table in step with the runtime's own records (`Recorded` upserts, `Removed`
/// deletes), in event order, in a second task so a slow store never delays a log line. The
/// store's copy is what the control plane knows of dynos; the runtime re-adopts from its own
/// records. The returned receiver says up to which event (sequence number) everything has been
/// printed and stored ([`dyno_events_recorded`]).
pub fn record_dyno_events(
    store: slipway_store::Store,
    logs: slipway_logs::LogHub,
    mut stream: slipway_runtime::EventStream,
) -> tokio::sync::watch::Receiver<u64> {
    let (done_tx, done_rx) = tokio::sync::watch::channel(0u64);
    // Unbounded like the stream it follows: one small message per event.
    let (store_tx, mut store_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Option<StoreOp>)>();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            while let Some(stamped) = stream.recv().await {
                stamped.print(&logs);
                let op = match stamped.event {
                    slipway_runtime::DynoEvent::Recorded(record) => {
                        Some(StoreOp::Upsert(store_record(&record)))
                    }
                    slipway_runtime::DynoEvent::Removed { dyno_id, .. } => {
                        Some(StoreOp::Delete(dyno_id))
                    }
                    _ => None,
                };
                if store_tx.send((stamped.seq, op)).is_err() {
                    break;
                }
            }
        },
        tracing::info_span!("dyno_events"),
    ));
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            while let Some((seq, op)) = store_rx.recv().await {
                let written = match &op {
                    None => Ok(()),
                    Some(StoreOp::Upsert(record)) => store.upsert_dyno(record).await,
                    Some(StoreOp::Delete(id)) => store.delete_dyno(id).await,
                };
                if let Err(e) = written {
                    tracing::warn!(error = %e, "could not record a dyno event in the store");
                }
                done_tx.send_replace(seq);
            }
        },
        tracing::info_span!("dyno_records"),
    ));
    done_rx
}

/// A change to the store's `dynos` table.
enum StoreOp {
    Upsert(slipway_store::DynoRecord),
    Delete(String),
}

/// Waits until every dyno event up to `last` (`DynoManager::last_event`) is printed and
/// stored, or `timeout` passed. Returns whether they were.
pub async fn dyno_events_recorded(
    done: &mut tokio::sync::watch::Receiver<u64>,
    last: u64,
    timeout: std::time::Duration,
) -> bool {
    tokio::time::timeout(timeout, done.wait_for(|seq| *seq >= last))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The runtime's record of a dyno as the store keeps it.
pub fn store_record(r: &slipway_runtime::DynoRecord) -> slipway_store::DynoRecord {
    use slipway_runtime::DynoState as R;
    use slipway_store::DynoState as S;
    slipway_store::DynoRecord {
        id: r.id.clone(),
        app_id: r.app_id.clone(),
        name: r.name.clone(),
        process_type: r.process_type.clone(),
        command: r.command.clone(),
        release_version: r.release_version,
        state: match r.state {
            R::Starting => S::Starting,
            R::Up => S::Up,
            R::Crashed => S::Crashed,
            R::Down => S::Down,
        },
        pid: r.pid.map(i64::from),
        port: r.port.map(i64::from),
        dir: r.dir.clone(),
        created_at: r.created_at,
    }
}

/// A dyno the store knows, as the runtime's [`recover`](slipway_runtime::DynoManager::recover)
/// takes it (the store keeps no size: the runtime falls back to what the monitor directory
/// says, then its default).
pub fn runtime_record(r: &slipway_store::DynoRecord) -> slipway_runtime::DynoRecord {
    use slipway_runtime::DynoState as R;
    use slipway_store::DynoState as S;
    slipway_runtime::DynoRecord {
        id: r.id.clone(),
        app_id: r.app_id.clone(),
        name: r.name.clone(),
        process_type: r.process_type.clone(),
        command: r.command.clone(),
        release_version: r.release_version,
        state: match r.state {
            S::Starting => R::Starting,
            S::Up => R::Up,
            S::Crashed => R::Crashed,
            S::Down => R::Down,
        },
        pid: r.pid.and_then(|p| u32::try_from(p).ok()),
        port: r.port.and_then(|p| u16::try_from(p).ok()),
        dir: r.dir.clone(),
        size: String::new(),
        created_at: r.created_at,
    }
}

/// Loads an app by name or id, or answers Heroku's 404.
pub async fn find_app(state: &Shared, name_or_id: &str) -> ApiResult<App> {
    state
        .store
        .find_app(name_or_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Couldn't find that app: {name_or_id}.")))
}

#[cfg(test)]
mod tests {
    use super::RestartTarget;

    #[test]
    fn restart_targets_are_types_or_dynos() {
        let dyno = |t: &str, index| RestartTarget::Dyno {
            process_type: t.into(),
            index,
        };
        assert_eq!(
            RestartTarget::parse("web"),
            RestartTarget::Type("web".into())
        );
        assert_eq!(RestartTarget::parse("web.2"), dyno("web", 2));
        assert_eq!(RestartTarget::parse("my.worker.10"), dyno("my.worker", 10));
        for odd in ["web.0", "web.x", ".1", "web."] {
            assert_eq!(
                RestartTarget::parse(odd),
                RestartTarget::Type(odd.into()),
                "{odd}"
            );
        }
    }
}
