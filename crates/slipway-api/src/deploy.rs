//! Deploying a push: the server side of the pre-receive hook.
//!
//! The hook (`slipway hook pre-receive`, run by `git receive-pack`) posts the pushed commit as
//! a tar stream to `POST /internal/push-builds`, authenticated by the token the server gave
//! that receive-pack: single-use, and good only for a ref update the push carries (`push.rs`). The build runs here and its output streams back as the response,
//! which the hook prints (git shows it as `remote:` lines). The last line says whether the
//! build succeeded; the hook's exit status makes git accept or reject the push.
//!
//! A build that fails changes nothing but its own build record. `app.json` is checked first
//! (a bad deploy definition is refused naming the file, key and reason). The built slug is
//! then handed to the deploy runner (`deploys/`), which makes the release (with its release
//! phase) and checks it: the push streams the runner's steps and waits up to the smoke test;
//! anything failing up to there rejects the push. The watch window goes on after the push
//! returns (`slipway deploys:wait N`).
//! The deploy step waits for the rollout (`control::converge_app`): new web dynos must be up,
//! past their `app.json` health checks and have the traffic; otherwise the release is failed,
//! the previous one keeps serving and the push is rejected with the reason
//! (`web.1 of v3 failed health check /health: 500 (5 attempts)`).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use slipway_build::{BuildEvent, CompileSpec, Compiled, SlugInfo};
use slipway_store::{App, Build, BuildStatus, NewSlug, Release, Slug, User};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::auth::presented_token;
use crate::deploys::{self, DeployOptions, DeployRequest, DeploySource, DeployStatus, Msg};
use crate::error::ApiError;
use crate::push::{PushGrant, RefUpdate};
use crate::state::{AppLock, Shared};

/// The hook looks for this prefix on the last line of the response.
pub const RESULT_PREFIX: &str = "\u{1e}slipway-build-result: ";
/// Build transcripts kept in the build record are cut at this size.
const MAX_TRANSCRIPT: usize = 1024 * 1024;

pub async fn push_build(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let Some(token) = presented_token(&headers) else {
        return ApiError::unauthorized().into_response();
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let push = Push {
        token,
        commit: header("x-slipway-commit"),
        old: header("x-slipway-old"),
        refname: header("x-slipway-ref"),
    };
    let is_id =
        |id: &str| (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id(&push.commit) || !is_id(&push.old) || !push.refname.starts_with("refs/heads/") {
        return ApiError::bad_request(
            "X-Slipway-Commit and X-Slipway-Old must be full commit ids and X-Slipway-Ref a branch",
        )
        .into_response();
    }
    let update = RefUpdate {
        old: push.old.clone(),
        new: push.commit.clone(),
        refname: push.refname.clone(),
    };
    let grant = match state.pushes.take(&push.token, &update) {
        Ok(grant) => grant,
        Err(e) => {
            // Said in the server log only: the caller learns nothing about the token.
            tracing::warn!(reason = %e, "refused a push build request");
            return ApiError::unauthorized().into_response();
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let span = tracing::info_span!("build", app = %grant.app_id, commit = %push.commit);
    tokio::spawn(tracing::Instrument::instrument(
        run(state, grant, push, body, tx),
        span,
    ));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// What the hook says about the push it builds.
struct Push {
    token: String,
    commit: String,
    /// The branch's value when the push began (all zeros for a new branch).
    old: String,
    refname: String,
}

struct Output {
    tx: mpsc::Sender<Bytes>,
    transcript: String,
    /// The push ended (its receive-pack exited, e.g. killed because the client went away).
    ended: CancellationToken,
}

impl Output {
    async fn line(&mut self, text: &str) {
        if self.transcript.len() < MAX_TRANSCRIPT {
            self.transcript.push_str(text);
            self.transcript.push('\n');
        }
        // The hook going away is noticed before the release is created (see `gone`).
        let _ = self.tx.send(Bytes::from(format!("{text}\n"))).await;
    }

    /// Whether nobody waits for this build any more: the hook hung up, or the push it was for
    /// ended.
    fn gone(&self) -> bool {
        self.tx.is_closed() || self.ended.is_cancelled()
    }

    /// Returns once [`Output::gone`].
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (tx, ended) = (self.tx.clone(), self.ended.clone());
        async move {
            tokio::select! {
                () = tx.closed() => {}
                () = ended.cancelled() => {}
            }
        }
    }
}

async fn run(state: Shared, grant: PushGrant, push: Push, body: Body, tx: mpsc::Sender<Bytes>) {
    let mut out = Output {
        tx,
        transcript: String::new(),
        ended: grant.ended.clone(),
    };
    let loaded = async {
        let app = state.store.app(&grant.app_id).await?;
        let user = state.store.get_user(&grant.user_id).await?;
        Ok::<_, slipway_store::StoreError>((app, user))
    }
    .await;
    let (app, user) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            out.line(&format!(" !     {e}")).await;
            out.line(&format!("{RESULT_PREFIX}failed")).await;
            return;
        }
    };
    let lock = state.app_lock(AppLock::Build, &app.id);
    let guard = match lock.clone().try_lock_owned() {
        Ok(guard) => guard,
        Err(_) => {
            out.line(&format!(
                "-----> Waiting for another deploy of {} to finish...",
                app.name
            ))
            .await;
            lock.lock_owned().await
        }
    };
    if out.gone() {
        tracing::info!("the push ended while it waited for the build lock; nothing was built");
        return;
    }
    if let Err(message) = branch_unmoved(&state, &app, &push).await {
        out.line(&format!(" !     {message}")).await;
        out.line(&format!(" !     Push rejected to {}.", app.name))
            .await;
        out.line(&format!("{RESULT_PREFIX}failed")).await;
        return;
    }
    let build = match state
        .store
        .create_build(&app.id, &user.id, &push.commit)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not record build");
            out.line(" !     Internal error: could not record the build; see the server log.")
                .await;
            out.line(&format!("{RESULT_PREFIX}failed")).await;
            return;
        }
    };
    state.api_log(&app.id, &format!("Build started by user {}", user.email));
    match build_and_release(&state, &app, &user, &build, body, &mut out).await {
        Ok((slug, release)) => {
            let _ = state
                .store
                .finish_build(
                    &build.id,
                    BuildStatus::Succeeded,
                    Some(&slug.id),
                    Some(&release.id),
                    &out.transcript,
                )
                .await;
            // The next build of this app waits until git has moved the branch to this commit.
            state.pushes.hold_until_end(&push.token, guard);
            out.line(&format!("{RESULT_PREFIX}ok")).await;
        }
        Err(message) => {
            out.line(&format!(" !     {message}")).await;
            out.line(&format!(" !     Push rejected to {}.", app.name))
                .await;
            let _ = state
                .store
                .finish_build(&build.id, BuildStatus::Failed, None, None, &out.transcript)
                .await;
            state.api_log(&app.id, &format!("Build failed: {message}"));
            out.line(&format!("{RESULT_PREFIX}failed")).await;
        }
    }
}

/// A push builds only if its branch is still where it was when the push began: another push
/// may have moved it while this one waited for the build lock, and git would then refuse this
/// push's ref update after its release had gone live.
async fn branch_unmoved(state: &Shared, app: &App, push: &Push) -> Result<(), String> {
    let out = tokio::process::Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", &push.refname])
        .current_dir(state.settings.repo_dir(&app.id))
        .output()
        .await
        .map_err(|e| format!("could not run git: {e}"))?;
    let current = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected_missing = push.old.bytes().all(|b| b == b'0');
    if (expected_missing && current.is_empty()) || current == push.old {
        return Ok(());
    }
    let branch = push.refname.trim_start_matches("refs/heads/");
    Err(format!(
        "{branch} was updated by another push while this one waited; fetch, merge and push again"
    ))
}

async fn build_and_release(
    state: &Shared,
    app: &App,
    user: &User,
    build: &Build,
    body: Body,
    out: &mut Output,
) -> Result<(Slug, Release), String> {
    let settings = &state.settings;
    let short = &build.commit_sha[..7];
    out.line(&format!(
        "-----> Building {} ({short}) on the slipway-24 stack",
        app.name
    ))
    .await;
    tokio::fs::create_dir_all(settings.build_tmp())
        .await
        .map_err(|e| format!("could not create the build directory: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(settings.build_tmp())
        .map_err(|e| format!("could not create the build directory: {e}"))?;
    let src = tmp.path().join("app");
    std::fs::create_dir(&src).map_err(|e| format!("could not create the build directory: {e}"))?;

    let limits = settings.build_limits;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = StreamReader::new(stream);
    let dest = src.clone();
    tokio::task::spawn_blocking(move || {
        slipway_build::extract_source(SyncIoBridge::new(reader), &dest, &limits)
    })
    .await
    .map_err(|e| format!("the build was interrupted: {e}"))?
    .map_err(|e| e.to_string())?;
    // The deploy definition is checked before anything is built: a bad one names the file,
    // the key and the reason, and the push is rejected.
    let spec = slipway_core::AppJson::read(&src)
        .and_then(|parsed| slipway_core::DeploySpec::from_app_json(parsed.as_ref()))
        .map_err(|e| e.to_string())?;

    let slug_dir = settings.slug_dir(&app.id);
    tokio::fs::create_dir_all(&slug_dir)
        .await
        .map_err(|e| format!("could not create the slug directory: {e}"))?;
    let slug_path = slug_dir.join(format!("{}.tgz", uuid::Uuid::new_v4()));
    // Held until this function returns: the build cache gets its files back after the deploy.
    let (compiled, info, _give_back) = compile(state, app, build, &src, &slug_path, out).await?;
    // Removing the build directory (a virtualenv is thousands of files) is no reason to make
    // the push wait: it goes in the background.
    tokio::task::spawn_blocking(move || drop(tmp));

    if out.gone() {
        let _ = tokio::fs::remove_file(&slug_path).await;
        return Err("the push was cancelled before the release".into());
    }
    let slug = state
        .store
        .create_slug(&NewSlug {
            app_id: app.id.clone(),
            commit_sha: build.commit_sha.clone(),
            checksum: info.checksum.clone(),
            size: i64::try_from(info.size).unwrap_or(i64::MAX),
            path: slug_path.display().to_string(),
            process_types: compiled.process_types.clone(),
        })
        .await;
    let slug = match slug {
        Ok(slug) => slug,
        Err(e) => {
            let _ = tokio::fs::remove_file(&slug_path).await;
            tracing::error!(error = %e, "could not record the slug");
            return Err("Internal error while recording the slug; see the server log.".into());
        }
    };
    state.api_log(&app.id, &format!("Build succeeded by user {}", user.email));
    out.line("-----> Launching...").await;
    let secrets = crate::routes::secrets_of(state, &app.id)
        .await
        .map_err(|e| format!("could not read the app's deploy secrets: {}", e.message))?;
    let started = deploys::start(
        state,
        DeployRequest {
            app_id: app.id.clone(),
            source: DeploySource::Build {
                build_id: build.id.clone(),
                slug_id: slug.id.clone(),
                commit: build.commit_sha.clone(),
            },
            user_id: user.id.clone(),
            options: DeployOptions::default(),
            secrets,
            spec: Some(spec),
        },
    )
    .await
    .map_err(|e| format!("the deploy could not start: {e}"))?;
    let outcome = follow_deploy(state, app, &started, out).await;
    let record = state
        .store
        .deploy(&app.id, &started.0)
        .await
        .map_err(|e| format!("could not read the deploy: {e}"))?;
    let release = match record.release_version {
        Some(v) => state.store.release(&app.id, &v.to_string()).await.ok(),
        None => None,
    };
    if let Some(release) = &release {
        // The release store keeps every released slug, for deploys to the user's own hosts.
        let entry = slipway_hosts::store::Entry {
            name: app.name.clone(),
            tag: format!("v{}", release.version),
            commit_sha: build.commit_sha.clone(),
            metadata: serde_json::json!({ "app": app.name, "process_types": compiled.process_types }),
        };
        let kept = slipway_hosts::ReleaseStore::new(&settings.data_dir);
        if let Err(e) = kept
            .keep_file(&state.store, entry, &slug_path, &info.checksum)
            .await
        {
            tracing::warn!(error = %e, "could not keep the slug in the release store");
        }
    }
    let gc_state = state.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(e) = crate::gc::collect(&gc_state).await {
                tracing::warn!(error = %e, "collecting unused slugs");
            }
        },
        tracing::info_span!("gc"),
    ));
    match (outcome, release) {
        (Ok(watching), Some(release)) => {
            out.line(&format!(
                "       {} deployed to slipway",
                settings.web_url(&app.name)
            ))
            .await;
            if watching {
                out.line(&format!(
                    "-----> Deploy #{n} is live and watched (log test, heartbeat); `slipway deploys:wait {n} -a {}` follows it",
                    app.name,
                    n = record.number
                ))
                .await;
            }
            Ok((slug, release))
        }
        (Ok(_), None) => Err(format!("deploy #{} made no release", record.number)),
        (Err(status), _) => {
            let why = if record.failure.is_empty() {
                status.as_str().to_string()
            } else {
                record.failure.clone()
            };
            Err(format!(
                "Deploy #{} {}: {why}",
                record.number,
                status.as_str()
            ))
        }
    }
}

/// Streams a push's deploy to the pusher until its smoke test is done: `Ok(true)` when the
/// watch window began, `Ok(false)` when the deploy passed outright, `Err(status)` otherwise.
/// A pusher that hangs up cancels the deploy (nothing goes live if it had not yet).
async fn follow_deploy(
    state: &Shared,
    app: &App,
    id: &deploys::DeployId,
    out: &mut Output,
) -> Result<bool, DeployStatus> {
    let follow = match deploys::follow(state, &app.id, &id.0).await {
        Ok(f) => f,
        Err(_) => return Err(DeployStatus::Interrupted),
    };
    let mut rx = follow.rx;
    let mut backlog = follow.backlog.into_iter();
    loop {
        let msg = match backlog.next() {
            Some(m) => m,
            None => {
                let Some(r) = rx.as_mut() else {
                    return Err(DeployStatus::Interrupted);
                };
                tokio::select! {
                    m = r.recv() => match m {
                        Ok(m) => m,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return Err(DeployStatus::Interrupted)
                        }
                    },
                    () = out.closed() => {
                        let _ = deploys::cancel(state, &app.id, &id.0).await;
                        // Keep reading: the deploy says how far it got.
                        out_gone_wait(r).await;
                        return Err(DeployStatus::Cancelled);
                    }
                }
            }
        };
        match msg {
            Msg::Line(l) => out.line(&l).await,
            Msg::Watching => return Ok(true),
            Msg::Done(DeployStatus::Passed) => return Ok(false),
            Msg::Done(s) => return Err(s),
        }
    }
}

/// After the pusher went away: waits for the cancelled deploy to finish.
async fn out_gone_wait(rx: &mut tokio::sync::broadcast::Receiver<Msg>) {
    loop {
        match rx.recv().await {
            Ok(Msg::Done(_)) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            _ => {}
        }
    }
}

/// Runs the app's buildpacks on `src` and packs the slug, carrying the build's events to the
/// pusher (and the build record). A push that goes away cancels the build: its buildpack
/// processes are killed as a group.
async fn compile(
    state: &Shared,
    app: &App,
    build: &Build,
    src: &std::path::Path,
    slug_path: &std::path::Path,
    out: &mut Output,
) -> Result<(Compiled, SlugInfo, CacheGiveBack), String> {
    let settings = &state.settings;
    let chosen = state
        .store
        .buildpacks(&app.id)
        .await
        .map_err(|e| format!("could not read the app's buildpacks: {e}"))?;
    let buildpacks =
        slipway_build::resolve_buildpacks(&chosen, &app.config, src).map_err(|e| e.to_string())?;
    let mut spec = compile_spec(state, &app.id, src, &build.commit_sha)?;
    spec.env = app.config.clone();
    spec.buildpacks = buildpacks;
    let build_user = spec.run_as;
    let limits = settings.build_limits;
    // The previous build's release directory may still be giving the cache its files back:
    // the pipeline waits for that after detection, before it touches the cache.
    spec.cache_lock = Some(state.app_lock(AppLock::Cache, &app.id));
    let cancel = CancellationToken::new();
    let pusher_gone = {
        let (closed, cancel) = (out.closed(), cancel.clone());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                closed.await;
                tracing::info!("the push went away: cancelling its build");
                cancel.cancel();
            },
            tracing::Span::current(),
        ))
    };
    let (events, mut received) = mpsc::channel::<BuildEvent>(256);
    let slug_path = slug_path.to_path_buf();
    let (dynos, app_id) = (state.dynos.clone(), app.id.clone());
    // The cache files the release directory takes (see `CacheGiveBack`), whatever the outcome.
    let shared_slot = std::sync::Mutex::new(Vec::new());
    let slot = &shared_slot;
    let work = async move {
        // Nothing of an earlier build may still run while root prepares this one's files, nor
        // after its buildpacks, while root packs the slug.
        if let Some(user) = build_user {
            slipway_build::kill_user_processes(user).await?;
        }
        let compiled = slipway_build::run_buildpacks(&spec, &events, cancel).await;
        if let Some(user) = build_user {
            let started = std::time::Instant::now();
            slipway_build::kill_user_processes(user).await?;
            tracing::info!(ms = millis(started), "ended the build user's processes");
        }
        let compiled = compiled?;
        // The build directory becomes the release directory the new dynos run from (moved,
        // not copied), so they need not unpack the slug: its names are made the slug's first,
        // then the slug is packed from it while it is given to the app's user (the second core).
        let taken = {
            let (dynos, app_id) = (dynos.clone(), app_id.clone());
            let (dir, cache) = (spec.build_dir.clone(), spec.cache_dir.clone());
            let started = std::time::Instant::now();
            let taken = tokio::task::spawn_blocking(move || {
                dynos.take_release(&app_id, &dir, Some(&cache))
            })
            .await
            .ok()
            .flatten();
            if let Some(t) = &taken {
                tracing::info!(
                    ms = millis(started),
                    shared = t.shared().len(),
                    "moved the build to its release directory"
                );
            }
            taken
        };
        let Some(mut taken) = taken else {
            // Where it cannot be moved: copied while the slug is compressed.
            let stage = {
                let (dynos, app_id, dir) = (dynos.clone(), app_id.clone(), spec.build_dir.clone());
                tokio::task::spawn_blocking(move || dynos.stage_release(&app_id, &dir))
            };
            let packed =
                slipway_build::pack_slug(&spec.build_dir, &slug_path, &limits, &events).await;
            if let Ok(Some(staged)) = stage.await {
                let checksum = packed.as_ref().ok().map(|info| info.checksum.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    dynos.finish_release(&app_id, &staged, checksum.as_deref())
                })
                .await;
            }
            let info = packed?;
            return Ok::<_, slipway_build::BuildError>((compiled, info));
        };
        let pack_from = taken.app().to_path_buf();
        let own = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let owned = taken.own();
            tracing::info!(
                ms = millis(started),
                "gave the release directory to the app's user"
            );
            (taken, owned)
        });
        let started = std::time::Instant::now();
        let packed = slipway_build::pack_slug(&pack_from, &slug_path, &limits, &events).await;
        tracing::info!(ms = millis(started), "packed the slug");
        let (staged, owned) = match own.await {
            Ok((taken, owned)) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = taken.shared().to_vec();
                (Some(taken.staged().to_path_buf()), owned)
            }
            Err(e) => (None, Err(runtime_join_error(e))),
        };
        if let Err(e) = &owned {
            tracing::warn!(error = %e, "could not make the release directory of the build");
        }
        if let Some(staged) = staged {
            let checksum = match (&packed, &owned) {
                (Ok(info), Ok(())) => Some(info.checksum.clone()),
                _ => None,
            };
            let _ = tokio::task::spawn_blocking(move || {
                dynos.finish_release(&app_id, &staged, checksum.as_deref())
            })
            .await;
        }
        let info = packed?;
        Ok::<_, slipway_build::BuildError>((compiled, info))
    };
    let forward = async {
        while let Some(event) = received.recv().await {
            if let Some(line) = event.line() {
                out.line(line).await;
            }
        }
    };
    let (result, ()) = tokio::join!(work, forward);
    pusher_gone.abort();
    let shared = std::mem::take(&mut *shared_slot.lock().unwrap_or_else(|e| e.into_inner()));
    let give_back = CacheGiveBack::new(state, &app.id, shared);
    let (compiled, info) = result.map_err(|e| e.to_string())?;
    out.line(&format!("       {}", info.checksum)).await;
    Ok((compiled, info, give_back))
}

fn millis(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn runtime_join_error(e: tokio::task::JoinError) -> slipway_runtime::RuntimeError {
    slipway_runtime::RuntimeError::Bundle {
        dyno: "a release directory".to_string(),
        detail: e.to_string(),
    }
}

/// Files of the app's build cache whose inodes the release directory took (hard links, e.g. a
/// virtualenv restored with `cp -al`), with the app's cache lock, which the next build (or a
/// purge) waits for. Dropped once the push's deploy is done (whatever its outcome), it gives
/// each file its own copy again, with its owner and mode, on a thread of its own: neither the
/// push nor the new dyno's start waits for it.
struct CacheGiveBack {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    shared: Vec<slipway_build::SharedFile>,
    scratch: std::path::PathBuf,
}

impl CacheGiveBack {
    fn new(state: &Shared, app_id: &str, shared: Vec<slipway_build::SharedFile>) -> Self {
        let guard = if shared.is_empty() {
            None
        } else {
            // Only builds (one at a time, this one let go of it before it began) and purges
            // (which wait for the build lock this build holds) take it.
            state.app_lock(AppLock::Cache, app_id).try_lock_owned().ok()
        };
        let cache = state.settings.cache_dir(app_id);
        Self {
            guard,
            shared,
            scratch: cache
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or(cache),
        }
    }
}

impl Drop for CacheGiveBack {
    fn drop(&mut self) {
        let shared = std::mem::take(&mut self.shared);
        if shared.is_empty() {
            return;
        }
        let (guard, scratch) = (self.guard.take(), std::mem::take(&mut self.scratch));
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("cache-give-back".into())
            .spawn(move || {
                let _entered = span.enter();
                let started = std::time::Instant::now();
                match slipway_build::unshare(&shared, &scratch) {
                    Ok(()) => tracing::info!(
                        files = shared.len(),
                        ms = millis(started),
                        "gave the build cache its own copies of the release directory's files"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not give the build cache its files back")
                    }
                }
                drop(guard);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start giving the build cache its files back");
        }
    }
}

/// The compile settings every build of this server shares, for the app or pipeline `owner_id`
/// (its own cache, fetched buildpacks and build user): buildpack directories, runtimes, the
/// time and memory limits. The caller adds the config and the buildpacks.
pub(crate) fn compile_spec(
    state: &Shared,
    owner_id: &str,
    src: &std::path::Path,
    commit_sha: &str,
) -> Result<CompileSpec, String> {
    let settings = &state.settings;
    let mut spec = CompileSpec::new(
        src.to_path_buf(),
        settings.cache_dir(owner_id),
        settings.builds_dir.join("buildpacks").join("builtin"),
        // Per owner: a fetched buildpack is the app's own code, never shared with another app.
        settings
            .builds_dir
            .join("buildpacks")
            .join("fetched")
            .join(owner_id),
    );
    spec.runtimes_dirs = vec![settings.data_dir.join("runtimes")];
    spec.timeout = settings.build_timeout;
    spec.memory_limit_bytes = Some(settings.build_memory_limit_bytes);
    // The owner's own unprivileged build user when the server is root: a build can read
    // neither other apps' files nor the platform's state, and shares its uid with no dyno.
    spec.run_as = state
        .dynos
        .build_user(owner_id)
        .map_err(|e| format!("could not choose the build's user: {e}"))?
        .map(|u| (u.uid, u.gid));
    spec.source_version = Some(commit_sha.to_string());
    // With the OCI dyno runtime, buildpacks run in its containers too (the memory limit is
    // then the container's).
    spec.sandbox = state.dynos.build_sandbox();
    Ok(spec)
}
