//! Release: the append-only ledger. List, info, and rollback (`POST /apps/{app}/releases
//! {"release": ID or version}`), which creates a new release with that release's slug and
//! config ("Rollback to vN"). A release's config vars are in `config_vars.rs`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use slipway_store::{ReleaseStatus, RollbackRefusal, StoreError};

use super::apps::Users;
use crate::auth::Auth;
use crate::control::{converge_app, find_app};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::paging::{paginate, Key, Page};
use crate::state::{AppLock, Shared};
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/releases", get(list_releases).post(rollback))
        .route("/apps/{app}/releases/{release}", get(release_info))
        .route("/apps/{app}/releases/{release}/output", get(release_output))
}

/// `GET /apps/{app}/releases/{release}/output`: what the release phase printed (text, at
/// most 1 MiB), 404 when no release phase ran for it.
async fn release_output(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, release)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let r = state.store.release(&app.id, &release).await?;
    let output = state.store.release_output(&r.id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "v{} of {} has no release phase output: its slug declares no `release:` command, or the phase has not run yet.",
            r.version, app.name
        ))
    })?;
    Ok((
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        output,
    )
        .into_response())
}

async fn list_releases(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Page> {
    let app = find_app(&state, &app).await?;
    let releases = state.store.list_releases(&app.id).await?;
    let current = state
        .store
        .current_release(&app.id)
        .await?
        .map(|r| r.version);
    let mut users = Users::new(&state);
    let mut rendered = Vec::new();
    for r in &releases {
        let user = users.get(&r.user_id).await?;
        rendered.push((
            r.clone(),
            views::release(&app, r, &user, Some(r.version) == current),
        ));
    }
    paginate(
        rendered,
        &headers,
        &["id", "version"],
        "version",
        |r, field| match field {
            "id" => Key::Text(r.id.clone()),
            _ => Key::Num(r.version),
        },
    )
}

async fn release_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, release)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let r = state.store.release(&app.id, &release).await?;
    let current = state
        .store
        .current_release(&app.id)
        .await?
        .map(|c| c.version);
    let user = state.store.get_user(&r.user_id).await?;
    Ok(Json(views::release(
        &app,
        &r,
        &user,
        Some(r.version) == current,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// A release id, or its version (`3`, `"3"` or `"v3"`).
    release: Value,
}

async fn rollback(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<RollbackRequest>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let wanted = match &body.release {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() => n.to_string(),
        _ => {
            return Err(ApiError::invalid(
                "release must be a release id or version, e.g. {\"release\": \"v3\"}.",
            ))
        }
    };
    let lock = state.app_lock(AppLock::Release, &app.id);
    let guard = lock.lock_owned().await;
    let target = state.store.release(&app.id, &wanted).await?;
    // As on Heroku, a rollback runs the release phase of the release it brings back.
    let release_command = crate::oneoff::release_command(&state, &target).await?;
    let status = match release_command {
        Some(_) => ReleaseStatus::Pending,
        None => ReleaseStatus::Succeeded,
    };
    let v = target.version;
    if let Some(slug_id) = &target.slug_id {
        let on_disk = match state.store.slug(slug_id).await {
            Ok(slug) => tokio::fs::metadata(&slug.path)
                .await
                .is_ok_and(|m| m.is_file()),
            Err(StoreError::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !on_disk {
            return Err(ApiError::invalid(format!(
                "Can't roll back {} to v{v}: its slug is gone (slugs no release needs are collected). Deploy that commit again instead.",
                app.name
            )));
        }
    }
    let release = match state
        .store
        .rollback_release_with_status(&app.id, v, &user.id, status)
        .await?
    {
        Ok(release) => release,
        Err(refusal) => {
            let why = match refusal {
                RollbackRefusal::Failed => "it failed, so it never ran",
                RollbackRefusal::Pending => "it is still pending",
                RollbackRefusal::NoSlug => "it has no slug (it was made before the first deploy)",
            };
            return Err(ApiError::invalid(format!(
                "Can't roll back {} to v{v}: {why}. `slipway releases` lists the releases.",
                app.name
            )));
        }
    };
    state.api_log(
        &app.id,
        &format!("{} by user {}", release.description, user.email),
    );
    state.api_log(
        &app.id,
        &format!(
            "Release v{} created by user {}",
            release.version, user.email
        ),
    );
    let current = release_command.is_none();
    let view = views::release(&app, &release, &user, current);
    match release_command {
        Some(command) => {
            crate::oneoff::finish_in_background(state.clone(), app.clone(), release, command, guard)
        }
        None => converge_app(&state, &app.id).await?.into_result()?,
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}
