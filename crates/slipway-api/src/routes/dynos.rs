//! Dyno: list and info, restart (`DELETE /apps/{app}/dynos[/{dyno or type}]`, and
//! `DELETE /apps/{app}/formations/{type}`), stop (`POST /apps/{app}/dynos/{dyno}/actions/stop`).
//!
//! Every dyno here belongs to the formation, so stopping one is restarting it: as on Heroku,
//! the dyno manager starts its replacement. One-off dynos (`POST /apps/{app}/dynos`) come with
//! the dyno sandbox and are refused with 501 until then.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::control::{find_app, restart_dynos, RestartTarget};
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/apps/{app}/dynos",
            get(list_dynos).delete(restart_all).post(run_one_off),
        )
        .route(
            "/apps/{app}/dynos/{dyno}",
            get(dyno_info).delete(restart_one),
        )
        .route("/apps/{app}/dynos/{dyno}/actions/stop", post(stop_one))
        .route("/apps/{app}/formations/{ptype}", delete(restart_one))
}

/// Process type -> size, from the formation.
async fn sizes(state: &Shared, app_id: &str) -> ApiResult<HashMap<String, String>> {
    Ok(state
        .store
        .formation(app_id)
        .await?
        .into_iter()
        .map(|f| (f.process_type, f.size))
        .collect())
}

const DEFAULT_SIZE: &str = "standard-1X";

async fn list_dynos(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let releases: HashMap<i64, String> = state
        .store
        .list_releases(&app.id)
        .await?
        .into_iter()
        .map(|r| (r.version, r.id))
        .collect();
    let sizes = sizes(&state, &app.id).await?;
    let dynos = state.dynos.list(&app.id);
    Ok(Json(Value::Array(
        dynos
            .iter()
            .map(|d| {
                views::dyno(
                    &app,
                    d,
                    releases.get(&d.release_version).map(String::as_str),
                    sizes
                        .get(&d.process_type)
                        .map_or(DEFAULT_SIZE, String::as_str),
                )
            })
            .collect(),
    )))
}

async fn dyno_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, dyno)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let d = state
        .dynos
        .list(&app.id)
        .into_iter()
        .rev()
        .find(|d| d.name == dyno || d.id == dyno)
        .ok_or_else(|| ApiError::not_found(format!("Couldn't find that dyno ({dyno}).")))?;
    let release_id = state
        .store
        .release(&app.id, &d.release_version.to_string())
        .await
        .ok()
        .map(|r| r.id);
    let sizes = sizes(&state, &app.id).await?;
    let size = sizes
        .get(&d.process_type)
        .map_or(DEFAULT_SIZE, String::as_str);
    Ok(Json(views::dyno(&app, &d, release_id.as_deref(), size)))
}

fn restarted(names: Vec<String>) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "restarted": names }))).into_response()
}

async fn restart_all(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let names = restart_dynos(&state, &app, &RestartTarget::All).await?;
    state.api_log(
        &app.id,
        &format!("Restart all dynos by user {}", user.email),
    );
    Ok(restarted(names))
}

/// `web.2` restarts that dyno, `web` every web dyno.
async fn restart_one(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath((app, which)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let target = target_of(&state, &app.id, &which);
    let names = restart_dynos(&state, &app, &target).await?;
    state.api_log(&app.id, &format!("Restart {which} by user {}", user.email));
    Ok(restarted(names))
}

/// A dyno's name or id, or a process type.
fn target_of(state: &Shared, app_id: &str, which: &str) -> RestartTarget {
    let by_id = state
        .dynos
        .list(app_id)
        .into_iter()
        .find(|d| d.id == which)
        .map(|d| d.name);
    RestartTarget::parse(by_id.as_deref().unwrap_or(which))
}

async fn stop_one(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath((app, which)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let target = target_of(&state, &app.id, &which);
    let names = restart_dynos(&state, &app, &target).await?;
    state.api_log(
        &app.id,
        &format!(
            "Stop {which} by user {} (formation dynos are started again)",
            user.email
        ),
    );
    Ok(restarted(names))
}

async fn run_one_off(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Response> {
    find_app(&state, &app).await?;
    Err(ApiError::not_implemented(
        "One-off dynos (`run`) are not available yet: they come with the dyno sandbox.",
    ))
}
