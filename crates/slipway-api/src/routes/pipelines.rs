//! Pipelines (slipway's own resource, issue 10): stages, targets, stage environments (secret:
//! only their names are ever answered), builds and deploys. See `crate::pipelines`.
//!
//! | endpoint | does |
//! |---|---|
//! | `GET/POST /pipelines` | list, create `{name}` |
//! | `GET/DELETE /pipelines/P` | show (stages, targets, env names), destroy |
//! | `POST /pipelines/P/stages` | `{name, after?, strategy: manual\|automatic, branch?, watch_window?}` |
//! | `PATCH/DELETE /pipelines/P/stages/S` | change strategy `{strategy, branch?}`, remove |
//! | `POST /pipelines/P/stages/S/targets`, `DELETE .../targets/APP` (or `host:NAME`) | `{app}` or `{host}` (a host target) |
//! | `GET/PATCH /pipelines/P/stages/S/env` | names (values masked); `{K: "v" or null}` |
//! | `GET /pipelines/P/builds[/B[/output]]`, `GET /pipeline-builds/ID` | builds, output (text) |
//! | `POST /pipelines/P/deploys` | `{build, stage}`: deploy a passed build now |
//! | `POST /pipelines/P/promotions` | `{from}`: the slug `from` runs to the next stage |
//! | `GET /pipelines/P/deploys` | every deploy of the pipeline's builds |

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_store::{Pipeline, PipelineBuild, PipelineDeploy, Stage, StageStrategy, User};

use crate::auth::Auth;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::pipelines::model::{
    check_branch, check_env_key, check_name, DeployOrigin, DEFAULT_WATCH_SECS, MAX_ENV_VALUE,
    MAX_ENV_VARS, MAX_STAGES, MAX_TARGETS,
};
use crate::pipelines::strategies::{deploy_now, find_stage, Report};
use crate::pipelines::{PipelineError, PipelinePaths};
use crate::state::Shared;
use crate::views::time;

/// What the API shows instead of a stage secret's value.
const MASK: &str = "*****";

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/pipelines", get(list).post(create))
        .route("/pipelines/{pipeline}", get(info).delete(destroy))
        .route("/pipelines/{pipeline}/stages", post(add_stage))
        .route(
            "/pipelines/{pipeline}/stages/{stage}",
            axum::routing::patch(update_stage).delete(remove_stage),
        )
        .route(
            "/pipelines/{pipeline}/stages/{stage}/targets",
            post(add_target),
        )
        .route(
            "/pipelines/{pipeline}/stages/{stage}/targets/{app}",
            axum::routing::delete(remove_target),
        )
        .route(
            "/pipelines/{pipeline}/stages/{stage}/env",
            get(env).patch(update_env),
        )
        .route("/pipelines/{pipeline}/builds", get(builds))
        .route("/pipelines/{pipeline}/builds/{build}", get(build_info))
        .route(
            "/pipelines/{pipeline}/builds/{build}/output",
            get(build_output),
        )
        .route("/pipeline-builds/{build}", get(build_by_id))
        .route("/pipelines/{pipeline}/deploys", get(deploys).post(deploy))
        .route("/pipelines/{pipeline}/promotions", post(promote))
}

async fn find_pipeline(state: &Shared, name: &str) -> ApiResult<Pipeline> {
    state.store.find_pipeline(name).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "Couldn't find that pipeline: {name}. `slipway pipelines` lists them."
        ))
    })
}

async fn stage_view(state: &Shared, stage: &Stage) -> ApiResult<Value> {
    let targets = state.store.stage_targets(&stage.id).await?;
    let current = match &stage.current_build_id {
        Some(id) => match state.store.pipeline_build_by_id(id).await {
            Ok(b) => {
                json!({"id": b.id, "number": b.number, "commit": b.commit_sha, "branch": b.branch, "slug_checksum": b.slug_checksum})
            }
            Err(_) => Value::Null,
        },
        None => Value::Null,
    };
    Ok(json!({
        "id": stage.id,
        "name": stage.name,
        "position": stage.position,
        "strategy": stage.strategy.as_str(),
        "branch": stage.strategy.branch(),
        "watch_window": stage.watch_secs,
        "env": stage.env.keys().collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| match &t.host_target {
            Some(name) => json!({"kind": "host", "host_target": {"name": name}}),
            None => json!({"kind": t.kind, "app": {"id": t.app_id, "name": t.app_name}}),
        }).collect::<Vec<_>>(),
        "current_build": current,
    }))
}

async fn pipeline_view(state: &Shared, p: &Pipeline) -> ApiResult<Value> {
    let mut stages = Vec::new();
    for s in state.store.stages(&p.id).await? {
        stages.push(stage_view(state, &s).await?);
    }
    Ok(json!({
        "id": p.id,
        "name": p.name,
        "git_url": format!("{}/pipelines/{}.git", state.settings.api_url, p.name),
        "created_at": time(p.created_at),
        "stages": stages,
    }))
}

fn secs_between(a: Option<i64>, b: Option<i64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => json!(((b - a) as f64) / 1000.0),
        _ => Value::Null,
    }
}

fn deploy_view(d: &PipelineDeploy) -> Value {
    json!({
        "id": d.id,
        "build": {"id": d.build_id, "number": d.build_number},
        "stage": d.stage_name,
        "origin": d.origin,
        "status": d.status.as_str(),
        "detail": d.detail,
        "created_at": time(d.created_at),
        "updated_at": time(d.updated_at),
    })
}

async fn build_view(state: &Shared, p: &Pipeline, b: &PipelineBuild) -> ApiResult<Value> {
    let deploys = state.store.build_deploys(&b.id).await?;
    Ok(json!({
        "id": b.id,
        "number": b.number,
        "pipeline": {"id": p.id, "name": p.name},
        "branch": b.branch,
        "commit": b.commit_sha,
        "message": b.message,
        "status": b.status.as_str(),
        "reason": b.reason,
        "slug": b.slug_checksum.as_ref().map(|c| json!({"checksum": c, "size": b.slug_size})),
        "process_types": b.process_types,
        "created_at": time(b.created_at),
        "started_at": b.started_at.map(time),
        "finished_at": b.finished_at.map(time),
        "durations": {
            "build": secs_between(b.started_at, b.built_at),
            "test": secs_between(b.built_at, b.finished_at),
            "total": secs_between(Some(b.created_at), b.finished_at),
        },
        "deploys": deploys.iter().map(deploy_view).collect::<Vec<_>>(),
    }))
}

async fn list(State(state): State<Shared>, _auth: Auth) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for p in state.store.list_pipelines().await? {
        out.push(pipeline_view(&state, &p).await?);
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePipeline {
    name: String,
}

async fn create(
    State(state): State<Shared>,
    _auth: Auth,
    ApiJson(body): ApiJson<CreatePipeline>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_name("pipeline", &body.name)?;
    let p = state
        .store
        .create_pipeline(&body.name)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "Pipeline {} already exists; choose another name.",
                body.name
            )),
            other => other.into(),
        })?;
    let repo = state.settings.pipeline_repo(&p.id);
    let init = tokio::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(&repo)
        .output()
        .await;
    if !matches!(&init, Ok(o) if o.status.success()) {
        let _ = state.store.delete_pipeline(&p.id).await;
        let _ = tokio::fs::remove_dir_all(&repo).await;
        let why = match init {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        return Err(ApiError::internal(
            "creating the pipeline's git repository",
            why,
        ));
    }
    Ok((StatusCode::CREATED, Json(pipeline_view(&state, &p).await?)))
}

async fn info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    Ok(Json(pipeline_view(&state, &p).await?))
}

async fn destroy(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let view = pipeline_view(&state, &p).await?;
    state.store.delete_pipeline(&p.id).await?;
    for dir in [
        state.settings.pipeline_repo(&p.id),
        state.settings.pipeline_slugs(&p.id),
        state.settings.cache_dir(&p.id),
    ] {
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove pipeline files");
            }
        }
    }
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddStage {
    name: String,
    after: Option<String>,
    strategy: Option<String>,
    branch: Option<String>,
    watch_window: Option<i64>,
}

fn strategy_of(
    strategy: Option<&str>,
    branch: Option<String>,
) -> Result<StageStrategy, PipelineError> {
    match (strategy.unwrap_or("manual"), branch) {
        ("manual", None) => Ok(StageStrategy::Manual),
        ("manual", Some(_)) => Err(PipelineError::Invalid(
            "A manual stage follows no branch; use --automatic BRANCH for one that does.".into(),
        )),
        ("automatic", Some(branch)) => {
            check_branch(&branch)?;
            Ok(StageStrategy::Automatic { branch })
        }
        ("automatic", None) => Err(PipelineError::Invalid(
            "An automatic stage needs the branch whose passed builds it deploys: --automatic BRANCH.".into(),
        )),
        (other, _) => Err(PipelineError::Invalid(format!(
            "Unknown strategy {other:?}: use manual or automatic."
        ))),
    }
}

async fn add_stage(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AddStage>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = find_pipeline(&state, &name).await?;
    check_name("stage", &body.name)?;
    let strategy = strategy_of(body.strategy.as_deref(), body.branch)?;
    let watch = body.watch_window.unwrap_or(DEFAULT_WATCH_SECS);
    if !(0..=86_400).contains(&watch) {
        return Err(ApiError::invalid(
            "watch_window must be between 0 and 86400 seconds.",
        ));
    }
    let stages = state.store.stages(&p.id).await?;
    if stages.len() >= MAX_STAGES {
        return Err(ApiError::invalid(format!(
            "Pipeline {} has {MAX_STAGES} stages, the most one may have.",
            p.name
        )));
    }
    if let Some(after) = &body.after {
        find_stage(&state, &p, after).await?;
    }
    let stage = state
        .store
        .add_stage(&p.id, &body.name, body.after.as_deref(), &strategy, watch)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "Pipeline {} already has a stage {}.",
                p.name, body.name
            )),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(stage_view(&state, &stage).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateStage {
    strategy: String,
    branch: Option<String>,
}

async fn update_stage(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<UpdateStage>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    let strategy = strategy_of(Some(&body.strategy), body.branch)?;
    state.store.set_stage_strategy(&stage.id, &strategy).await?;
    let stage = state.store.stage(&stage.id).await?;
    Ok(Json(stage_view(&state, &stage).await?))
}

async fn remove_stage(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    let view = stage_view(&state, &stage).await?;
    state.store.remove_stage(&stage.id).await?;
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTarget {
    /// An app on this server.
    app: Option<String>,
    /// A host target (`slipway targets:add`).
    host: Option<String>,
}

/// A host target a stage may deploy to: it must exist (`slipway targets:add`).
async fn find_host_target(state: &Shared, name: &str) -> ApiResult<String> {
    slipway_hosts::validate_name("host target name", name).map_err(|e| {
        ApiError::invalid(format!(
            "{e}. Give host:NAME with a target from `slipway targets`."
        ))
    })?;
    match state.store.host_target(name).await {
        Ok(row) => Ok(row.name),
        Err(slipway_store::StoreError::NotFound(_)) => Err(ApiError::not_found(format!(
            "Couldn't find host target {name}. `slipway targets` lists them; add one with `slipway targets:add {name} --hosts USER@HOST --path DIR`."
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn add_target(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<AddTarget>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    let app = match (&body.app, &body.host) {
        (Some(app), None) => crate::control::find_app(&state, app).await?,
        (None, Some(host)) => {
            let target = find_host_target(&state, host).await?;
            if state.store.stage_targets(&stage.id).await?.len() >= MAX_TARGETS {
                return Err(ApiError::invalid(format!(
                    "Stage {} has {MAX_TARGETS} targets, the most one may have.",
                    stage.name
                )));
            }
            state
                .store
                .add_stage_host_target(&stage.id, &target)
                .await
                .map_err(|e| match e {
                    slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                        "host:{target} is already a target of {}.",
                        stage.name
                    )),
                    other => other.into(),
                })?;
            return Ok((StatusCode::CREATED, Json(stage_view(&state, &stage).await?)));
        }
        _ => {
            return Err(ApiError::invalid(
                "Give exactly one of app (an app on this server) or host (a host target).",
            ))
        }
    };
    if state.store.stage_targets(&stage.id).await?.len() >= MAX_TARGETS {
        return Err(ApiError::invalid(format!(
            "Stage {} has {MAX_TARGETS} targets, the most one may have.",
            stage.name
        )));
    }
    state
        .store
        .add_stage_target(&stage.id, &app.id)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "{} is already a target of {}.",
                app.name, stage.name
            )),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(stage_view(&state, &stage).await?)))
}

async fn remove_target(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage, app)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    if let Some(host) = app.strip_prefix("host:") {
        if !state
            .store
            .remove_stage_host_target(&stage.id, host)
            .await?
        {
            return Err(ApiError::not_found(format!(
                "host:{host} is not a target of {}.",
                stage.name
            )));
        }
        return Ok(Json(stage_view(&state, &stage).await?));
    }
    let app = crate::control::find_app(&state, &app).await?;
    if !state.store.remove_stage_target(&stage.id, &app.id).await? {
        return Err(ApiError::not_found(format!(
            "{} is not a target of {}.",
            app.name, stage.name
        )));
    }
    Ok(Json(stage_view(&state, &stage).await?))
}

/// A stage's environment as answered: names only, every value masked.
fn masked_env(stage: &Stage) -> Value {
    Value::Object(
        stage
            .env
            .keys()
            .map(|k| (k.clone(), Value::String(MASK.into())))
            .collect(),
    )
}

async fn env(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    Ok(Json(masked_env(&stage)))
}

async fn update_env(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, stage)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<BTreeMap<String, Option<String>>>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &stage).await?;
    for (key, value) in &body {
        check_env_key(key)?;
        if value.as_ref().is_some_and(|v| v.len() > MAX_ENV_VALUE) {
            return Err(ApiError::invalid(format!(
                "The value of {key} is longer than {MAX_ENV_VALUE} bytes."
            )));
        }
    }
    let mut after: Vec<&String> = stage.env.keys().collect();
    after.extend(body.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k));
    after.sort();
    after.dedup();
    if after.len() > MAX_ENV_VARS {
        return Err(ApiError::invalid(format!(
            "A stage may have at most {MAX_ENV_VARS} environment variables."
        )));
    }
    let stage = state.store.update_stage_env(&stage.id, &body).await?;
    Ok(Json(masked_env(&stage)))
}

async fn builds(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let mut out = Vec::new();
    for b in state.store.pipeline_builds(&p.id).await? {
        out.push(build_view(&state, &p, &b).await?);
    }
    Ok(Json(Value::Array(out)))
}

async fn find_build(state: &Shared, p: &Pipeline, build: &str) -> ApiResult<PipelineBuild> {
    state
        .store
        .pipeline_build(&p.id, build)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::NotFound(_) => ApiError::not_found(format!(
                "Pipeline {} has no build {build}; `slipway builds --pipeline {}` lists them.",
                p.name, p.name
            )),
            other => other.into(),
        })
}

async fn build_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, build)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let b = find_build(&state, &p, &build).await?;
    Ok(Json(build_view(&state, &p, &b).await?))
}

async fn build_by_id(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(build): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let b = state
        .store
        .pipeline_build_by_id(&build)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::NotFound(_) => ApiError::not_found(format!(
                "No pipeline build has id {build}; give a build number with --pipeline P instead."
            )),
            other => other.into(),
        })?;
    let p = find_pipeline(&state, &b.pipeline_id).await?;
    Ok(Json(build_view(&state, &p, &b).await?))
}

async fn build_output(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((name, build)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let p = find_pipeline(&state, &name).await?;
    let b = find_build(&state, &p, &build).await?;
    // A running build's output is in memory; a finished one's in the store.
    let live = crate::pipelines::lock(&state.pipelines.live)
        .get(&b.id)
        .cloned();
    let text = match live {
        Some(live) if !b.status.is_finished() => live.transcript(),
        _ => b.output.clone(),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn deploys(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let list = state.store.pipeline_deploys(&p.id).await?;
    Ok(Json(Value::Array(list.iter().map(deploy_view).collect())))
}

fn report_view(
    stage: &str,
    result: Result<Report, (PipelineError, Vec<String>)>,
) -> ApiResult<Json<Value>> {
    match result {
        Ok(report) => Ok(Json(json!({
            "status": "succeeded",
            "stage": stage,
            "releases": report.outcomes.iter().map(|o| json!({"target": o.target, "version": o.version, "release": o.release, "slug_checksum": o.checksum})).collect::<Vec<_>>(),
            "output": report.output,
        }))),
        // Refused before anything ran: an error.
        Err((e, output)) if output.is_empty() && !matches!(e, PipelineError::Deploy { .. }) => {
            Err(e.into())
        }
        Err((e, output)) => Ok(Json(json!({
            "status": "failed",
            "stage": stage,
            "message": e.to_string(),
            "output": output,
        }))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    build: String,
    stage: String,
}

async fn deploy(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<DeployBody>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let stage = find_stage(&state, &p, &body.stage).await?;
    let build = find_build(&state, &p, &body.build).await?;
    let result = deploy_now(&state, &stage, &build, DeployOrigin::Manual, &user.id).await;
    report_view(&stage.name, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    from: String,
}

async fn promote(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PromoteBody>,
) -> ApiResult<Json<Value>> {
    let p = find_pipeline(&state, &name).await?;
    let user: User = user;
    match crate::pipelines::promote::promote(&state, &p, &body.from, &user.id).await {
        Ok((next, report)) => report_view(&next, Ok(report)),
        Err(e) => report_view("", Err(e)),
    }
}
