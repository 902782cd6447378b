//! App: list, create, info, update (maintenance, rename, build stack), destroy.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use slipway_store::{App, User};

use crate::auth::Auth;
use crate::control::{self, find_app};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::paging::{paginate, Key, Page};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps", get(list_apps).post(create_app))
        .route("/users/{user}/apps", get(list_apps))
        .route(
            "/apps/{app}",
            get(app_info).patch(update_app).delete(destroy_app),
        )
}

/// Users by id, loaded once per request for rendering owners and release authors.
pub(super) struct Users<'a> {
    state: &'a Shared,
    cache: HashMap<String, User>,
}

impl<'a> Users<'a> {
    pub(super) fn new(state: &'a Shared) -> Self {
        Self {
            state,
            cache: HashMap::new(),
        }
    }

    pub(super) async fn get(&mut self, id: &str) -> ApiResult<User> {
        if let Some(u) = self.cache.get(id) {
            return Ok(u.clone());
        }
        let user = self.state.store.get_user(id).await?;
        self.cache.insert(id.to_string(), user.clone());
        Ok(user)
    }
}

pub(super) async fn render_app(
    state: &Shared,
    app: &App,
    users: &mut Users<'_>,
) -> ApiResult<Value> {
    let owner = users.get(&app.owner_id).await?;
    let release = state.store.current_release(&app.id).await?;
    let slug_size = state
        .slug_of(release.as_ref().and_then(|r| r.slug_id.as_deref()))
        .await?
        .map(|s| s.size);
    Ok(views::app(&state.settings, app, &owner, slug_size))
}

async fn list_apps(
    State(state): State<Shared>,
    _auth: Auth,
    headers: HeaderMap,
) -> ApiResult<Page> {
    let apps = state.store.list_apps().await?;
    let mut users = Users::new(&state);
    let mut rendered = Vec::with_capacity(apps.len());
    for app in &apps {
        rendered.push((app.clone(), render_app(&state, app, &mut users).await?));
    }
    paginate(
        rendered,
        &headers,
        &["id", "name", "updated_at"],
        "name",
        |a, field| match field {
            "id" => Key::Text(a.id.clone()),
            "updated_at" => Key::Num(a.updated_at),
            _ => Key::Text(a.name.clone()),
        },
    )
}

/// `region` and `stack` may be given, as the official CLI does, but only as what this server
/// has: there is one region and one stack. The CLI's other fields (teams, spaces, ...) are
/// accepted only when empty: slipway has none of those, and says so rather than ignore them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: Option<String>,
    region: Option<String>,
    stack: Option<String>,
    organization: Option<Value>,
    team: Option<Value>,
    space: Option<Value>,
    internal_routing: Option<Value>,
    kernel: Option<Value>,
    locked: Option<Value>,
    feature_flags: Option<Value>,
}

impl CreateApp {
    /// The first field set to something slipway does not have.
    fn unsupported(&self) -> Option<&'static str> {
        let set = |v: &Option<Value>| match v {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        [
            ("organization", &self.organization),
            ("team", &self.team),
            ("space", &self.space),
            ("internal_routing", &self.internal_routing),
            ("kernel", &self.kernel),
            ("locked", &self.locked),
            ("feature_flags", &self.feature_flags),
        ]
        .into_iter()
        .find(|(_, v)| set(v))
        .map(|(name, _)| name)
    }
}

async fn create_app(
    State(state): State<Shared>,
    Auth(user): Auth,
    body: Option<ApiJson<CreateApp>>,
) -> ApiResult<Response> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    if let Some(field) = body.unsupported() {
        return Err(ApiError::invalid(format!(
            "{field} is not supported by slipway (it has no teams, spaces or app features); leave it out."
        )));
    }
    if let Some(region) = body.region.as_deref().filter(|r| *r != views::REGION) {
        return Err(ApiError::invalid(format!(
            "Region {region} is not available; this server has one region, {}.",
            views::REGION
        )));
    }
    if let Some(stack) = &body.stack {
        check_stack(stack)?;
    }
    let app = control::create_app(&state, &user, body.name.as_deref()).await?;
    let mut users = Users::new(&state);
    let view = render_app(&state, &app, &mut users).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn check_stack(stack: &str) -> ApiResult<()> {
    if stack == views::STACK || stack == views::STACK_ID {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "Stack {stack} is not available; this server builds on one stack, {}.",
        views::STACK
    )))
}

async fn app_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(
        render_app(&state, &app, &mut Users::new(&state)).await?,
    ))
}

/// What `PATCH /apps/{app}` changes. Any other field is refused (422), never ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateApp {
    maintenance: Option<bool>,
    /// Renames the app (`heroku apps:rename`).
    name: Option<String>,
    /// Only this server's stack (`heroku stack:set`).
    build_stack: Option<String>,
}

async fn update_app(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateApp>,
) -> ApiResult<Json<Value>> {
    let mut app = find_app(&state, &app).await?;
    // Every check comes before any change, so a refused request changes nothing.
    if let Some(stack) = &body.build_stack {
        check_stack(stack)?;
    }
    let new_name = match &body.name {
        Some(n) if *n != app.name => {
            Some(slipway_core::AppName::parse(n).map_err(|e| ApiError::invalid(e.to_string()))?)
        }
        _ => None,
    };
    if let Some(name) = new_name {
        app = control::rename_app(&state, &app, &name, &user).await?;
    }
    if let Some(on) = body.maintenance {
        app = control::set_maintenance(&state, &app, on).await?;
    }
    Ok(Json(
        render_app(&state, &app, &mut Users::new(&state)).await?,
    ))
}

/// Answers the app as it was (as Heroku does), with `removed`: what went with it.
async fn destroy_app(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let mut view = render_app(&state, &app, &mut Users::new(&state)).await?;
    let removed = control::destroy_app(&state, &app).await?;
    tracing::info!(app = %app.name, user = %user.email, "destroyed app");
    view["removed"] = views::removed(&removed);
    Ok(Json(view))
}
