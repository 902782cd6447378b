//! Log Drain: `GET/POST /apps/{app}/log-drains`, `DELETE /apps/{app}/log-drains/{id or url}`
//! (Platform API shapes), and slipway's own `GET/PATCH /apps/{app}/log-settings` (how much
//! history the app keeps: `{"history_lines": N, "history_bytes": N}`).
//!
//! Drains are stored in the store and run by the log hub (`slipway_logs::drain`); adding one
//! starts it at once, removing one stops it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_logs::{DrainSpec, DrainTarget, HistoryLimits};
use slipway_store::LogDrain;

use crate::auth::Auth;
use crate::control::find_app;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/log-drains", get(list_drains).post(add_drain))
        .route("/apps/{app}/log-drains/{drain}", delete(remove_drain))
        .route(
            "/apps/{app}/log-settings",
            get(log_settings).patch(update_log_settings),
        )
}

/// A drain in the Platform API's shape.
fn view(d: &LogDrain) -> Value {
    json!({
        "id": d.id,
        "url": d.url,
        "token": d.token,
        "addon": null,
        "created_at": views::time(d.created_at),
        "updated_at": views::time(d.updated_at),
    })
}

/// The hub's form of a stored drain. `None` if its URL no longer parses (it was checked when
/// added; a later, stricter slipway might refuse it).
pub fn drain_spec(d: &LogDrain) -> Option<DrainSpec> {
    match DrainTarget::parse(&d.url) {
        Ok(target) => Some(DrainSpec {
            id: d.id.clone(),
            target,
            token: d.token.clone(),
        }),
        Err(e) => {
            tracing::error!(drain = %d.id, error = %e, "a stored log drain is not valid; it does not run");
            None
        }
    }
}

async fn list_drains(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let drains = state.store.log_drains(&app.id).await?;
    Ok(Json(Value::Array(drains.iter().map(view).collect())))
}

#[derive(Deserialize)]
struct NewDrain {
    url: String,
}

async fn add_drain(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<NewDrain>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let url = body.url.trim();
    let target = DrainTarget::parse(url).map_err(|e| ApiError::invalid(e.to_string()))?;
    let drain = state.store.add_log_drain(&app.id, url).await?;
    state.logs.set_drain(
        &app.id,
        &app.name,
        DrainSpec {
            id: drain.id.clone(),
            target: target.clone(),
            token: drain.token.clone(),
        },
    );
    state.api_log(
        &app.id,
        &format!("Add log drain {} ({})", drain.id, target.describe()),
    );
    Ok((StatusCode::CREATED, Json(view(&drain))).into_response())
}

async fn remove_drain(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, drain)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let removed = state
        .store
        .remove_log_drain(&app.id, &drain)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::NotFound(_) => ApiError::not_found(format!(
                "Couldn't find that log drain on {}; `slipway drains` lists them.",
                app.name
            )),
            other => other.into(),
        })?;
    state.logs.remove_drain(&app.id, &removed.id);
    state.api_log(&app.id, &format!("Remove log drain {}", removed.id));
    Ok(Json(view(&removed)))
}

fn settings_view(limits: HistoryLimits) -> Value {
    json!({
        "history_lines": limits.lines,
        "history_bytes": limits.bytes,
    })
}

async fn log_settings(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(settings_view(state.logs.limits(&app.id))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    history_lines: Option<usize>,
    history_bytes: Option<u64>,
}

async fn update_log_settings(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let mut limits = state.logs.limits(&app.id);
    if let Some(lines) = patch.history_lines {
        limits.lines = lines;
    }
    if let Some(bytes) = patch.history_bytes {
        limits.bytes = bytes;
    }
    limits.validate().map_err(ApiError::invalid)?;
    state
        .logs
        .set_limits(&app.id, limits)
        .map_err(|e| ApiError::internal("saving the app's log settings", e))?;
    Ok(Json(settings_view(limits)))
}
