//! The release store and host targets (issue 11; `slipway-hosts` does the work).
//!
//! Release store:
//! - `GET /release-store[?name=N]`: kept releases, newest first.
//! - `POST /release-store?name=N&tag=T[&commit=SHA]`: imports the request body (a tarball);
//!   `X-Slipway-Metadata: {json object}` is kept with it. 201 with the record.
//! - `GET|DELETE /release-store/{name}/{tag}`: one release; deleting one a host runs is 409.
//! - `POST /release-store/{name}/actions/prune` `{"keep": K}`: removes the older ones (never the
//!   latest, never one a target's host runs); answers with what it removed.
//!
//! Host targets (the environment's values never leave the server: answered as `"[masked]"`):
//! - `GET /targets`, `POST /targets` `{"name","hosts":["user@h:port"],"path","key","restart",
//!   "health","url","health_attempts","health_interval","health_timeout","pre_switch","shared":[],
//!   "batch","env":{},"accept_host_keys":["SHA256:..."]}`: a host whose key is not accepted
//!   is refused with the fingerprint it presents (409, id `host_key_unknown`).
//! - `PATCH /targets/{t}/env` `{"set": {"K": "V"}, "unset": ["K"]}`: changes the target's
//!   environment (answered masked). It is written into each release when that release is
//!   unpacked on a host, so a release keeps the environment it was deployed with and a
//!   rollback brings back code and config together; a changed environment reaches the hosts
//!   with the next release deployed.
//! - `GET|DELETE /targets/{t}`; `POST /targets/{t}/actions/trust` `{"accept_host_keys":[..]}`
//!   replaces the trusted key of the hosts that present an accepted one.
//! - `POST /targets/{t}/deploys` `{"store_name","tag","lock_wait","lock_ttl"}` and
//!   `POST /targets/{t}/rollbacks` `{"tag"?,"lock_wait"?}`: stream NDJSON lines,
//!   `{"line": "..."}` while it runs, then `{"report": {...}}` or `{"error": {"id","message"}}`.
//!   A client that hangs up cancels the operation (hosts switched back, locks released).
//! - `GET /targets/{t}/releases`: per host, what is there, what runs, the lock.
//! - `GET /targets/{t}/deploys`: the deploy runner's deploys to the target (pipeline stages),
//!   newest first, each with its report (steps, every host with the release it runs).
//! - `POST /targets/{t}/actions/prune` `{"keep"}`, `.../actions/pin` `{"tag","pinned"}`,
//!   `.../actions/exec` `{"command"}`, `DELETE /targets/{t}/lock` (breaks it).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_core::Secret;
use slipway_hosts::store::Entry;
use slipway_hosts::{
    DeployOptions, DeployTarget, HostSpec, HostTarget, Progress, ReleaseStore, ReleaseStoreError,
    TargetError, TargetSpec,
};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/release-store", get(store_list).post(store_import))
        .route(
            "/release-store/{name}/{tag}",
            get(store_info).delete(store_delete),
        )
        .route("/release-store/{name}/actions/prune", post(store_prune))
        .route("/targets", get(target_list).post(target_add))
        .route("/targets/{t}", get(target_info).delete(target_remove))
        .route("/targets/{t}/actions/trust", post(target_trust))
        .route("/targets/{t}/env", axum::routing::patch(target_env))
        .route("/targets/{t}/deploys", post(target_deploy))
        .route("/targets/{t}/rollbacks", post(target_rollback))
        .route("/targets/{t}/deploys", get(target_deploys))
        .route("/targets/{t}/releases", get(target_releases))
        .route("/targets/{t}/actions/prune", post(target_prune))
        .route("/targets/{t}/actions/pin", post(target_pin))
        .route("/targets/{t}/actions/exec", post(target_exec))
        .route("/targets/{t}/lock", delete(target_unlock))
}

fn store_error(e: ReleaseStoreError) -> ApiError {
    match e {
        ReleaseStoreError::Invalid(m) => ApiError::invalid(m),
        e @ ReleaseStoreError::Exists { .. } => ApiError::conflict(e.to_string()),
        e @ ReleaseStoreError::InUse { .. } => ApiError::conflict(e.to_string()),
        e @ ReleaseStoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
        e @ ReleaseStoreError::TooLarge => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        e => ApiError::internal("using the release store", e),
    }
}

fn target_error(e: TargetError) -> ApiError {
    let message = e.to_string();
    match e {
        TargetError::Invalid(_) => ApiError::invalid(message),
        TargetError::HostKeyUnknown { .. } => {
            ApiError::new(StatusCode::CONFLICT, "host_key_unknown", message)
        }
        TargetError::HostKeyChanged { .. } => {
            ApiError::new(StatusCode::CONFLICT, "host_key_changed", message)
        }
        TargetError::Locked { .. } => ApiError::new(StatusCode::CONFLICT, "locked", message),
        TargetError::Refused(_) => ApiError::conflict(message),
        TargetError::NotRelocatable(_) => {
            ApiError::new(StatusCode::CONFLICT, "not_relocatable", message)
        }
        TargetError::Unreachable { .. } | TargetError::Ssh { .. } | TargetError::Remote { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "host_failed", message)
        }
        TargetError::Cancelled => ApiError::new(StatusCode::CONFLICT, "cancelled", message),
        TargetError::Store(e) => store_error(e),
        TargetError::Io { .. } => ApiError::internal("using the target's files", message),
    }
}

fn view_release(r: &slipway_store::release_store::StoredRelease) -> Value {
    json!({
        "name": r.name, "tag": r.tag, "sha256": r.sha256, "size": r.size,
        "commit": r.commit_sha, "metadata": r.metadata,
        "built_at": chrono::DateTime::from_timestamp_millis(r.built_at).map(|t| t.to_rfc3339()),
    })
}

// ---- release store ----

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
}

async fn store_list(
    State(state): State<Shared>,
    _auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let list = state.store.stored_releases(q.name.as_deref()).await?;
    Ok(Json(Value::Array(list.iter().map(view_release).collect())))
}

#[derive(Deserialize)]
struct ImportQuery {
    name: String,
    tag: String,
    commit: Option<String>,
}

async fn store_import(
    State(state): State<Shared>,
    _auth: Auth,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let metadata = match headers.get("x-slipway-metadata") {
        None => json!({}),
        Some(v) => serde_json::from_slice(v.as_bytes())
            .map_err(|e| ApiError::invalid(format!("X-Slipway-Metadata is not JSON: {e}")))?,
    };
    let entry = Entry {
        name: q.name,
        tag: q.tag,
        commit_sha: q.commit.unwrap_or_default(),
        metadata,
    };
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let release = ReleaseStore::new(&state.settings.data_dir)
        .import(&state.store, entry, reader)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(view_release(&release))).into_response())
}

async fn store_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, tag)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let r = state.store.stored_release(&name, &tag).await?;
    Ok(Json(view_release(&r)))
}

async fn store_delete(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, tag)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let r = ReleaseStore::new(&state.settings.data_dir)
        .delete(&state.store, &name, &tag)
        .await
        .map_err(store_error)?;
    Ok(Json(view_release(&r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keep {
    keep: usize,
}

async fn store_prune(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Keep>,
) -> ApiResult<Json<Value>> {
    let removed = ReleaseStore::new(&state.settings.data_dir)
        .prune(&state.store, &name, body.keep)
        .await
        .map_err(store_error)?;
    Ok(Json(Value::Array(
        removed.iter().map(view_release).collect(),
    )))
}

// ---- targets ----

fn target_dir(state: &Shared, name: &str) -> std::path::PathBuf {
    state.settings.data_dir.join("targets").join(name)
}

/// A host target as `slipway-hosts` drives it (spec, environment, installation id, build
/// directories a release must not name).
pub(crate) async fn load(state: &Shared, name: &str) -> ApiResult<HostTarget> {
    slipway_hosts::validate_name("target name", name).map_err(ApiError::invalid)?;
    let row = state.store.host_target(name).await?;
    let spec: TargetSpec =
        serde_json::from_str(&row.spec).map_err(|e| ApiError::internal("reading a target", e))?;
    let env: BTreeMap<String, String> =
        serde_json::from_str(&row.env).map_err(|e| ApiError::internal("reading a target", e))?;
    let env = env.into_iter().map(|(k, v)| (k, Secret::new(v))).collect();
    let installation = slipway_hosts::installation_id(&state.settings.data_dir)
        .map_err(|e| ApiError::internal("reading the installation id", e))?;
    Ok(HostTarget::new(spec, env, &target_dir(state, name))
        .map_err(target_error)?
        .with_installation(installation)
        .with_build_paths(vec![state.settings.builds_dir.display().to_string()]))
}

async fn view_target(state: &Shared, name: &str) -> ApiResult<Value> {
    let row = state.store.host_target(name).await?;
    let spec: Value =
        serde_json::from_str(&row.spec).map_err(|e| ApiError::internal("reading a target", e))?;
    let env: BTreeMap<String, Value> =
        serde_json::from_str(&row.env).map_err(|e| ApiError::internal("reading a target", e))?;
    let masked: BTreeMap<String, &str> = env.keys().map(|k| (k.clone(), "[masked]")).collect();
    let currents = state.store.target_currents(name).await?;
    let mut v = spec;
    v["env"] = json!(masked);
    v["hosts"] = json!(v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| serde_json::from_value::<HostSpec>(h.clone()).ok())
        .map(|h| h.to_string())
        .collect::<Vec<_>>());
    v["running"] = json!(currents);
    Ok(v)
}

async fn target_list(State(state): State<Shared>, _auth: Auth) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for row in state.store.host_targets().await? {
        out.push(view_target(&state, &row.name).await?);
    }
    Ok(Json(Value::Array(out)))
}

async fn target_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(view_target(&state, &t).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTarget {
    name: String,
    hosts: Vec<String>,
    path: String,
    key: Option<String>,
    restart: Option<String>,
    health: Option<String>,
    health_attempts: Option<u32>,
    health_interval: Option<u32>,
    health_timeout: Option<u32>,
    pre_switch: Option<String>,
    #[serde(default)]
    shared: Vec<String>,
    batch: Option<usize>,
    url: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    accept_host_keys: Vec<String>,
}

async fn target_add(
    State(state): State<Shared>,
    _auth: Auth,
    ApiJson(body): ApiJson<AddTarget>,
) -> ApiResult<Response> {
    let hosts = body
        .hosts
        .iter()
        .map(|h| HostSpec::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::invalid)?;
    let spec = TargetSpec {
        name: body.name.clone(),
        hosts,
        path: body.path,
        key: body.key,
        restart: body.restart,
        health: body.health,
        health_attempts: body.health_attempts.unwrap_or(10),
        health_interval_secs: body.health_interval.unwrap_or(1),
        health_timeout_secs: body.health_timeout.unwrap_or(5),
        pre_switch: body.pre_switch,
        shared: body.shared,
        batch: body.batch.unwrap_or(1),
        url: body.url,
    };
    if let Some(key) = &spec.key {
        if !std::path::Path::new(key).is_absolute() {
            return Err(ApiError::invalid(format!(
                "--key {key} must be an absolute path of a private key file on the server"
            )));
        }
    }
    let env: BTreeMap<String, Secret> = body
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    // Validates everything before anything is written.
    let target = HostTarget::new(spec.clone(), env, &target_dir(&state, &spec.name))
        .map_err(target_error)?;
    if state.store.host_target(&spec.name).await.is_ok() {
        return Err(ApiError::conflict(format!(
            "target {} already exists",
            spec.name
        )));
    }
    let dir = target_dir(&state, &spec.name);
    // A leftover directory from a removed target with the same name: its keys are not trusted.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let trusted = target
        .known_hosts()
        .accept(&spec.hosts, &body.accept_host_keys, false)
        .await
        .map_err(target_error)?;
    let spec_json = serde_json::to_string(&spec).map_err(|e| ApiError::internal("saving", e))?;
    let env_json = serde_json::to_string(&body.env).map_err(|e| ApiError::internal("saving", e))?;
    if let Err(e) = state
        .store
        .create_host_target(&spec.name, &spec_json, &env_json)
        .await
    {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return Err(e.into());
    }
    let mut view = view_target(&state, &spec.name).await?;
    view["trusted_host_keys"] = json!(trusted
        .iter()
        .map(|(h, fp)| json!({"host": h, "fingerprint": fp}))
        .collect::<Vec<_>>());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

async fn target_env(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<EnvChange>,
) -> ApiResult<Json<Value>> {
    slipway_hosts::validate_name("target name", &t).map_err(ApiError::invalid)?;
    if body.set.is_empty() && body.unset.is_empty() {
        return Err(ApiError::invalid(
            "nothing to change: give variables to set (KEY=VALUE) or to unset (KEY)",
        ));
    }
    if let Some(k) = body.unset.iter().find(|k| body.set.contains_key(*k)) {
        return Err(ApiError::invalid(format!("{k} is both set and unset")));
    }
    let changed = state
        .store
        .update_host_target_env(&t, |json| {
            let mut env: BTreeMap<String, String> = serde_json::from_str(json)
                .map_err(|e| ApiError::internal("reading a target", e))?;
            for k in &body.unset {
                if env.remove(k).is_none() {
                    return Err(ApiError::invalid(format!(
                        "{k} is not set on target {t}; `slipway targets:info {t}` lists its variables"
                    )));
                }
            }
            env.extend(body.set.iter().map(|(k, v)| (k.clone(), v.clone())));
            let secrets: BTreeMap<String, Secret> = env
                .iter()
                .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
                .collect();
            slipway_hosts::validate_env(&secrets).map_err(target_error)?;
            serde_json::to_string(&env).map_err(|e| ApiError::internal("saving", e))
        })
        .await??;
    let keys: BTreeMap<String, &str> = serde_json::from_str::<BTreeMap<String, Value>>(&changed)
        .map_err(|e| ApiError::internal("reading a target", e))?
        .into_keys()
        .map(|k| (k, "[masked]"))
        .collect();
    Ok(Json(json!({"name": t, "env": keys})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Trust {
    accept_host_keys: Vec<String>,
}

async fn target_trust(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<Trust>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    // Only hosts presenting an accepted key are re-trusted; the rest keep theirs.
    let mut trusted = Vec::new();
    for host in &target.spec.hosts {
        let keys = slipway_hosts::scan_host_keys(host)
            .await
            .map_err(target_error)?;
        if keys
            .iter()
            .any(|k| body.accept_host_keys.contains(&k.fingerprint()))
        {
            trusted.extend(
                target
                    .known_hosts()
                    .accept(std::slice::from_ref(host), &body.accept_host_keys, false)
                    .await
                    .map_err(target_error)?,
            );
        }
    }
    if trusted.is_empty() {
        return Err(ApiError::invalid(
            "no host of this target presents any of the given fingerprints",
        ));
    }
    Ok(Json(json!(trusted
        .iter()
        .map(|(h, fp)| json!({"host": h, "fingerprint": fp}))
        .collect::<Vec<_>>())))
}

async fn target_remove(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    slipway_hosts::validate_name("target name", &t).map_err(ApiError::invalid)?;
    state.store.delete_host_target(&t).await?;
    let _ = tokio::fs::remove_dir_all(target_dir(&state, &t)).await;
    Ok(Json(json!({"name": t})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    store_name: String,
    tag: String,
    lock_wait: Option<u64>,
    lock_ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    tag: Option<String>,
    lock_wait: Option<u64>,
    lock_ttl: Option<u64>,
}

fn options(user: &str, lock_wait: Option<u64>, lock_ttl: Option<u64>) -> ApiResult<DeployOptions> {
    let lock_wait = lock_wait.unwrap_or(0);
    let lock_ttl = lock_ttl.unwrap_or(15 * 60);
    if lock_wait > 24 * 3600 || lock_ttl == 0 || lock_ttl > 7 * 24 * 3600 {
        return Err(ApiError::invalid(
            "lock_wait must be at most a day and lock_ttl 1 s to a week",
        ));
    }
    Ok(DeployOptions {
        owner: format!("{user} via slipway"),
        lock_wait: Duration::from_secs(lock_wait),
        lock_ttl: Duration::from_secs(lock_ttl),
        cancel: CancellationToken::new(),
        pre_deploy: None,
    })
}

/// Runs a deploy or rollback in its own task, streaming its progress as NDJSON; the client
/// hanging up cancels it.
fn stream_operation<F, Fut>(state: Shared, name: String, opts: DeployOptions, op: F) -> Response
where
    F: FnOnce(Progress, DeployOptions) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<slipway_hosts::DeployReport, TargetError>> + Send,
{
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let (switch_tx, mut switch_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Progress::new(line_tx).with_switches(switch_tx);
    let cancel = opts.cancel.clone();
    let span = tracing::info_span!("target_operation", target = %name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let send = |v: Value| bytes::Bytes::from(format!("{v}\n"));
            let work = op(progress, opts);
            tokio::pin!(work);
            // A blank line now and then: a client that went away is noticed even while a
            // long step (a health check) prints nothing.
            let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
            let result = loop {
                tokio::select! {
                    _ = heartbeat.tick() => {
                        if out_tx.send(bytes::Bytes::from_static(b"\n")).await.is_err() {
                            cancel.cancel();
                        }
                    }
                    r = &mut work => break r,
                    Some(line) = line_rx.recv() => {
                        if out_tx.send(send(json!({"line": line}))).await.is_err() {
                            cancel.cancel();
                        }
                    }
                    // What each host runs is recorded as it switches, so the store never
                    // deletes a release a host runs, even if this server is killed mid-deploy.
                    Some(s) = switch_rx.recv() => {
                        let current = [(s.host, s.store_name, s.tag)];
                        if let Err(e) = state.store.set_target_currents(&name, &current).await {
                            tracing::error!(error = %e, "recording what a host runs");
                        }
                    }
                    _ = out_tx.closed(), if !cancel.is_cancelled() => cancel.cancel(),
                }
            };
            while let Ok(line) = line_rx.try_recv() {
                let _ = out_tx.send(send(json!({"line": line}))).await;
            }
            while let Ok(s) = switch_rx.try_recv() {
                let current = [(s.host, s.store_name, s.tag)];
                if let Err(e) = state.store.set_target_currents(&name, &current).await {
                    tracing::error!(error = %e, "recording what a host runs");
                }
            }
            match result {
                Ok(report) => {
                    let currents: Vec<(String, String, String)> = report
                        .hosts
                        .iter()
                        .filter_map(|h| {
                            Some((h.host.clone(), h.store_name.clone()?, h.running.clone()?))
                        })
                        .collect();
                    if let Err(e) = state.store.set_target_currents(&name, &currents).await {
                        tracing::error!(error = %e, "recording what the target's hosts run");
                    }
                    let _ = out_tx.send(send(json!({"report": report}))).await;
                }
                Err(e) => {
                    let err = target_error(e);
                    let _ = out_tx
                        .send(send(
                            json!({"error": {"id": err.id, "message": err.message}}),
                        ))
                        .await;
                }
            }
        },
        span,
    ));
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx).map(Ok::<_, Infallible>);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn target_deploy(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<DeployBody>,
) -> ApiResult<Response> {
    let target = load(&state, &t).await?;
    let release = state
        .store
        .stored_release(&body.store_name, &body.tag)
        .await?;
    let checked = release.clone();
    tokio::task::spawn_blocking(move || ReleaseStore::verify_blocking(&checked))
        .await
        .map_err(|e| ApiError::internal("checking the release", e))?
        .map_err(store_error)?;
    let opts = options(&user.email, body.lock_wait, body.lock_ttl)?;
    Ok(stream_operation(
        state,
        t,
        opts,
        move |progress, opts| async move { target.deploy(&release, &opts, &progress).await },
    ))
}

async fn target_rollback(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> ApiResult<Response> {
    let target = load(&state, &t).await?;
    let opts = options(&user.email, body.lock_wait, body.lock_ttl)?;
    Ok(stream_operation(
        state,
        t,
        opts,
        move |progress, opts| async move {
            target.rollback(body.tag.as_deref(), &opts, &progress).await
        },
    ))
}

async fn target_deploys(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    slipway_hosts::validate_name("target name", &t).map_err(ApiError::invalid)?;
    state.store.host_target(&t).await?;
    let deploys = state.store.target_deploys(&t, 100).await?;
    Ok(Json(json!(deploys)))
}

async fn target_releases(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    let hosts = target.releases().await.map_err(target_error)?;
    // The hosts are the truth: what they run is recorded (it protects those releases in the
    // store), e.g. after a server was killed before it could record a switch.
    let currents: Vec<(String, String, String)> = hosts
        .iter()
        .filter_map(|h| {
            let state = h.state.as_ref()?;
            let tag = state.current.clone()?;
            let store_name = state
                .releases
                .iter()
                .find(|r| r.tag == tag)
                .map(|r| r.store_name.clone())
                .filter(|n| !n.is_empty())?;
            Some((h.host.clone(), store_name, tag))
        })
        .collect();
    if let Err(e) = state.store.set_target_currents(&t, &currents).await {
        tracing::warn!(error = %e, "recording what the target's hosts run");
    }
    Ok(Json(json!(hosts)))
}

async fn target_prune(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<Keep>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    let opts = options(&user.email, None, None)?;
    let reports = target
        .prune(body.keep, &opts, &Progress::default())
        .await
        .map_err(target_error)?;
    Ok(Json(json!(reports)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pin {
    tag: String,
    pinned: bool,
}

async fn target_pin(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<Pin>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    let opts = options(&user.email, None, None)?;
    target
        .pin(&body.tag, body.pinned, &opts, &Progress::default())
        .await
        .map_err(target_error)?;
    Ok(Json(json!({"tag": body.tag, "pinned": body.pinned})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exec {
    command: String,
}

async fn target_exec(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
    ApiJson(body): ApiJson<Exec>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    let results = target.exec(&body.command).await.map_err(target_error)?;
    Ok(Json(json!(results)))
}

async fn target_unlock(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(t): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let target = load(&state, &t).await?;
    let removed = target.unlock().await.map_err(target_error)?;
    Ok(Json(json!(removed
        .into_iter()
        .map(|(host, lock)| json!({"host": host, "removed": lock}))
        .collect::<Vec<_>>())))
}
