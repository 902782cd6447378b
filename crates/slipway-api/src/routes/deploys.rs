//! Deploys (slipway's own resource; see `deploys/`):
//!
//! - `GET /apps/{app}/deploys`, `GET /apps/{app}/deploys/{id or number}` (with its steps);
//! - `POST /apps/{app}/deploys` `{"release": "v3"}` (deploy that release again: its slug and
//!   config, checked like any deploy) or `{"slug": ID}` (an existing slug), with
//!   `"no_rollback"` and `"watch"` (seconds);
//! - `POST /apps/{app}/deploys/{id}/actions/cancel`;
//! - `GET /apps/{app}/deploys/{id}/stream`: the transcript as text, live until the deploy
//!   ends; the last line is `\x1eslipway-deploy-result: STATUS`;
//! - `GET/POST /apps/{app}/webhooks`, `DELETE /apps/{app}/webhooks/{id or url}`: where reports go;
//! - `GET/PATCH /apps/{app}/deploy-secrets`: the target's secrets (names only when read;
//!   `null` removes one).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_core::Secret;
use slipway_store::{DeployRecord, StoreError};

use crate::auth::Auth;
use crate::control::find_app;
use crate::deploys::{
    self, DeployError, DeployOptions, DeployRequest, DeploySource, Msg, RESULT_PREFIX,
};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/deploys", get(list).post(create))
        .route("/apps/{app}/deploys/{deploy}", get(info))
        .route("/apps/{app}/deploys/{deploy}/stream", get(stream))
        .route("/apps/{app}/deploys/{deploy}/actions/cancel", post(cancel))
        .route("/apps/{app}/webhooks", get(list_webhooks).post(add_webhook))
        .route("/apps/{app}/webhooks/{hook}", delete(remove_webhook))
        .route(
            "/apps/{app}/deploy-secrets",
            get(list_secrets).patch(change_secrets),
        )
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound(_) => ApiError::not_found(e.to_string()),
            DeployError::Finished { .. } => ApiError::conflict(e.to_string()),
            DeployError::Invalid(m) => ApiError::invalid(m),
            DeployError::AppJson(e) => ApiError::invalid(e.to_string()),
            DeployError::Store(e) => e.into(),
        }
    }
}

async fn view(state: &Shared, app_name: &str, d: &DeployRecord) -> ApiResult<Value> {
    let steps = state.store.deploy_steps(&d.id).await?;
    let user = state.store.get_user(&d.user_id).await.ok();
    Ok(json!({
        "id": d.id,
        "number": d.number,
        "app": {"id": d.app_id, "name": app_name},
        "status": d.status,
        "source": d.source,
        "description": DeploySource::describe(&d.source),
        "options": d.options,
        "user": {"email": user.map(|u| u.email)},
        "previous_release": d.previous_version,
        "release": d.release_version,
        "rollback_release": d.rollback_version,
        "failure": d.failure,
        "created_at": views::time(d.created_at),
        "started_at": d.started_at.map(views::time),
        "finished_at": d.finished_at.map(views::time),
        "steps": steps.iter().map(|s| json!({
            "name": s.name,
            "status": s.status,
            "note": s.note,
            "output": s.output,
            "started_at": s.started_at.map(views::time),
            "finished_at": s.finished_at.map(views::time),
            "duration_ms": match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        })).collect::<Vec<_>>(),
    }))
}

async fn list(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let mut out = Vec::new();
    for d in state.store.list_deploys(&app.id).await? {
        out.push(view(&state, &app.name, &d).await?);
    }
    Ok(Json(Value::Array(out)))
}

async fn find(state: &Shared, app_id: &str, id: &str) -> ApiResult<DeployRecord> {
    state.store.deploy(app_id, id).await.map_err(|e| match e {
        StoreError::NotFound(_) => ApiError::not_found(format!(
            "Couldn't find that deploy: {id}. `slipway deploys` lists them."
        )),
        e => e.into(),
    })
}

async fn info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, deploy)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let d = find(&state, &app.id, &deploy).await?;
    Ok(Json(view(&state, &app.name, &d).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    release: Option<Value>,
    slug: Option<String>,
    #[serde(default)]
    no_rollback: bool,
    watch: Option<u64>,
}

async fn create(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<CreateRequest>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let source = match (&body.release, &body.slug) {
        (Some(r), None) => {
            let wanted = match r {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() => n.to_string(),
                _ => {
                    return Err(ApiError::invalid(
                        "release must be a version such as \"v3\".",
                    ))
                }
            };
            let r = state.store.release(&app.id, &wanted).await?;
            DeploySource::Rollback { version: r.version }
        }
        (None, Some(slug)) => {
            let s = state.store.slug(slug).await?;
            if s.app_id != app.id {
                return Err(ApiError::not_found(format!(
                    "Couldn't find that slug: {slug}."
                )));
            }
            DeploySource::Slug { slug_id: s.id }
        }
        _ => {
            return Err(ApiError::invalid(
                "Give one of \"release\" (a version to deploy again) or \"slug\" (a slug id).",
            ))
        }
    };
    if body
        .watch
        .is_some_and(|w| w > slipway_core::deployspec::MAX_WATCH_SECS)
    {
        return Err(ApiError::invalid("watch is at most 86400 seconds."));
    }
    let secrets = secrets_of(&state, &app.id).await?;
    let id = deploys::start(
        &state,
        DeployRequest {
            app_id: app.id.clone(),
            source,
            user_id: user.id.clone(),
            options: DeployOptions {
                no_rollback: body.no_rollback,
                watch: body.watch.map(Duration::from_secs),
                stage: None,
            },
            secrets,
            spec: None,
        },
    )
    .await?;
    let d = find(&state, &app.id, &id.0).await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &app.name, &d).await?),
    )
        .into_response())
}

/// The app's deploy secrets, for a deploy's commands.
pub async fn secrets_of(state: &Shared, app_id: &str) -> ApiResult<BTreeMap<String, Secret>> {
    Ok(state
        .store
        .deploy_secrets(app_id)
        .await?
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v)))
        .collect())
}

async fn cancel(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, deploy)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    deploys::cancel(&state, &app.id, &deploy).await?;
    let d = find(&state, &app.id, &deploy).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&state, &app.name, &d).await?),
    )
        .into_response())
}

async fn stream(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, deploy)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let follow = deploys::follow(&state, &app.id, &deploy).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let render = |m: &Msg| match m {
                Msg::Line(l) => Some(format!("{l}\n")),
                Msg::Watching => None,
                Msg::Done(s) => Some(format!("{RESULT_PREFIX}{}\n", s.as_str())),
            };
            for m in &follow.backlog {
                if let Some(text) = render(m) {
                    if tx.send(Bytes::from(text)).await.is_err() {
                        return;
                    }
                }
                if matches!(m, Msg::Done(_)) {
                    return;
                }
            }
            let Some(mut rx) = follow.rx else { return };
            loop {
                let m = match rx.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Msg::Line(format!("({n} lines skipped: this reader was too slow)"))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        Msg::Line("(the deploy's stream ended; see `slipway deploys:info`)".into())
                    }
                };
                if let Some(text) = render(&m) {
                    if tx.send(Bytes::from(text)).await.is_err() {
                        return;
                    }
                }
                if matches!(m, Msg::Done(_)) {
                    return;
                }
            }
        },
        tracing::info_span!("deploy stream"),
    ));
    let body = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = futures::StreamExt::map(body, Ok::<_, Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn list_webhooks(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let hooks = state.store.deploy_webhooks(&app.id).await?;
    Ok(Json(Value::Array(
        hooks
            .iter()
            .map(|h| json!({"id": h.id, "url": h.url, "created_at": views::time(h.created_at)}))
            .collect(),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddWebhook {
    url: String,
}

async fn add_webhook(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<AddWebhook>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let url = deploys::check_webhook_url(&body.url).map_err(ApiError::invalid)?;
    let hook = state
        .store
        .add_deploy_webhook(&app.id, &url)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(what) => {
                ApiError::conflict(format!("{} already has {what}.", app.name))
            }
            e => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": hook.id, "url": hook.url, "created_at": views::time(hook.created_at)})),
    )
        .into_response())
}

async fn remove_webhook(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, hook)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    if !state.store.remove_deploy_webhook(&app.id, &hook).await? {
        return Err(ApiError::not_found(format!(
            "Couldn't find that webhook on {}: {hook}. `slipway webhooks` lists them.",
            app.name
        )));
    }
    Ok(Json(json!({"removed": hook})))
}

async fn list_secrets(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let names: Vec<String> = state
        .store
        .deploy_secrets(&app.id)
        .await?
        .into_keys()
        .collect();
    Ok(Json(json!({"names": names})))
}

async fn change_secrets(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<BTreeMap<String, Option<String>>>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    for (name, value) in &body {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.len() <= 256
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ApiError::invalid(format!(
                "{name:?} is not a valid variable name (letters, digits and _, not starting with a digit)."
            )));
        }
        if value
            .as_ref()
            .is_some_and(|v| v.contains('\0') || v.len() > 32 * 1024)
        {
            return Err(ApiError::invalid(format!(
                "The value of {name} holds a NUL byte or is longer than 32 KiB."
            )));
        }
    }
    state
        .store
        .change_deploy_secrets(&app.id, &body)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(what) => {
                ApiError::invalid(format!("{} would have {what}.", app.name))
            }
            e => e.into(),
        })?;
    let names: Vec<String> = state
        .store
        .deploy_secrets(&app.id)
        .await?
        .into_keys()
        .collect();
    Ok(Json(json!({"names": names})))
}
