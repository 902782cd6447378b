//! Build: the builds git pushes made, with their output. (Builds from a source URL, `POST
//! /apps/{app}/builds`, are not served yet: push with git.)

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::apps::Users;
use crate::auth::Auth;
use crate::control::find_app;
use crate::error::{ApiPath, ApiResult};
use crate::paging::{paginate, Key, Page};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/builds", get(list_builds))
        .route("/apps/{app}/builds/{build}", get(build_info))
}

async fn list_builds(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Page> {
    let app = find_app(&state, &app).await?;
    let builds = state.store.list_builds(&app.id).await?;
    let mut users = Users::new(&state);
    let mut rendered = Vec::new();
    for b in &builds {
        let user = users.get(&b.user_id).await?;
        let slug = state.slug_of(b.slug_id.as_deref()).await?;
        rendered.push((b.clone(), views::build(&app, b, &user, slug.as_ref())));
    }
    paginate(
        rendered,
        &headers,
        &["id", "created_at"],
        "created_at",
        |b, field| match field {
            "id" => Key::Text(b.id.clone()),
            _ => Key::Num(b.created_at),
        },
    )
}

async fn build_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, build)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let b = state.store.build(&app.id, &build).await?;
    let user = state.store.get_user(&b.user_id).await?;
    let slug = state.slug_of(b.slug_id.as_deref()).await?;
    let mut view = views::build(&app, &b, &user, slug.as_ref());
    view["output"] = Value::String(b.output.clone());
    Ok(Json(view))
}
