//! Buildpack Installations and the Build Cache: which buildpacks an app's builds run, and
//! emptying its build cache.
//!
//! `GET /apps/{app}/buildpack-installations` lists them in order; `PUT` replaces the list
//! (`{"updates": [{"buildpack": "heroku/python"}, {"buildpack": "https://host/bp.git#v1"}]}`),
//! each entry checked as the build would read it (a built-in's name, an absolute directory
//! on the server, or a git URL pinned by `#ref`). An empty list means: detect among the
//! built-ins (or `BUILDPACK_URL`, or the app's `.buildpacks` file).
//! `DELETE /apps/{app}/build-cache` empties the cache, so the next build installs everything.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_build::BuildpackRef;

use crate::auth::Auth;
use crate::control::find_app;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::{AppLock, Shared};

/// More would only make every build slower; Heroku allows 6.
const MAX_BUILDPACKS: usize = 6;
const MAX_ENTRY_BYTES: usize = 2048;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/apps/{app}/buildpack-installations",
            get(list).put(replace),
        )
        .route("/apps/{app}/build-cache", delete(purge_cache))
}

fn render(urls: &[String]) -> Value {
    Value::Array(
        urls.iter()
            .enumerate()
            .map(|(ordinal, url)| {
                let name = match BuildpackRef::parse(url) {
                    Ok(BuildpackRef::Builtin(name)) => format!("heroku/{name}"),
                    _ => url.clone(),
                };
                json!({ "ordinal": ordinal, "buildpack": { "url": url, "name": name } })
            })
            .collect(),
    )
}

async fn list(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(render(&state.store.buildpacks(&app.id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replace {
    updates: Vec<Update>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    buildpack: String,
}

async fn replace(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<Replace>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    if body.updates.len() > MAX_BUILDPACKS {
        return Err(ApiError::invalid(format!(
            "An app can use at most {MAX_BUILDPACKS} buildpacks; {} were given.",
            body.updates.len()
        )));
    }
    let mut urls = Vec::with_capacity(body.updates.len());
    for update in body.updates {
        let entry = update.buildpack.trim().to_string();
        if entry.is_empty() || entry.len() > MAX_ENTRY_BYTES {
            return Err(ApiError::invalid(format!(
                "A buildpack must be a built-in's name, a directory or a git URL of at most {MAX_ENTRY_BYTES} bytes."
            )));
        }
        BuildpackRef::parse(&entry).map_err(|e| ApiError::invalid(e.to_string()))?;
        if urls.contains(&entry) {
            return Err(ApiError::invalid(format!(
                "The buildpack {entry} is listed twice."
            )));
        }
        urls.push(entry);
    }
    // The app's builds read the list when they start: change it between them, not during one.
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    state.store.set_buildpacks(&app.id, &urls).await?;
    state.api_log(
        &app.id,
        &format!(
            "Set buildpacks to {} by user {}",
            if urls.is_empty() {
                "automatic detection".to_string()
            } else {
                urls.join(", ")
            },
            user.email
        ),
    );
    Ok(Json(render(&urls)))
}

async fn purge_cache(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    // Not while a build uses it.
    let lock = state.app_lock(AppLock::Build, &app.id);
    let _guard = lock.lock().await;
    let cache_lock = state.app_lock(AppLock::Cache, &app.id);
    let _cache_guard = cache_lock.lock().await;
    let dir = state.settings.cache_dir(&app.id);
    tokio::task::spawn_blocking(move || slipway_build::purge_cache(&dir))
        .await
        .map_err(|e| ApiError::internal("purging the build cache", e))?
        .map_err(|e| ApiError::internal("purging the build cache", e))?;
    state.api_log(
        &app.id,
        &format!("Build cache purged by user {}", user.email),
    );
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}
