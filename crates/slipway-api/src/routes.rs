//! The REST API, in the shape of Heroku's Platform API v3.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_logs::{Filter, LogLine, Next};
use slipway_store::{App, User};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{new_token, Auth};
use crate::control::{self, find_app};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::paging::{paginate, Key, Page};
use crate::state::{AppEntry, AppLock, LogSessionGrant, Shared, LOG_SESSION_TTL};
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/account", get(account))
        .route("/apps", get(list_apps).post(create_app))
        .route("/users/{user}/apps", get(list_apps))
        .route(
            "/apps/{app}",
            get(app_info).patch(update_app).delete(destroy_app),
        )
        .route("/apps/{app}/releases", get(list_releases))
        .route("/apps/{app}/releases/{release}", get(release_info))
        .route(
            "/apps/{app}/releases/{release}/config-vars",
            get(release_config),
        )
        .route("/apps/{app}/config-vars", get(app_config))
        .route(
            "/apps/{app}/formation",
            get(list_formation).patch(batch_scale),
        )
        .route("/apps/{app}/formation/{ptype}", get(formation_info))
        .route("/apps/{app}/dynos", get(list_dynos))
        .route("/apps/{app}/dynos/{dyno}", get(dyno_info))
        .route("/apps/{app}/builds", get(list_builds))
        .route("/apps/{app}/builds/{build}", get(build_info))
        .route("/apps/{app}/log-sessions", post(create_log_session))
        .route("/apps/{app}/addons", get(list_addons))
        .route("/log-sessions/{secret}", get(stream_log_session))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn account(Auth(user): Auth) -> Json<Value> {
    Json(views::account(&user))
}

/// Users by id, loaded once per request for rendering owners and release authors.
struct Users<'a> {
    state: &'a Shared,
    cache: HashMap<String, User>,
}

impl<'a> Users<'a> {
    fn new(state: &'a Shared) -> Self {
        Self {
            state,
            cache: HashMap::new(),
        }
    }

    async fn get(&mut self, id: &str) -> ApiResult<User> {
        if let Some(u) = self.cache.get(id) {
            return Ok(u.clone());
        }
        let user = self.state.store.get_user(id).await?;
        self.cache.insert(id.to_string(), user.clone());
        Ok(user)
    }
}

async fn render_app(state: &Shared, app: &App, users: &mut Users<'_>) -> ApiResult<Value> {
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

#[derive(Deserialize, Default)]
struct CreateApp {
    name: Option<String>,
}

async fn create_app(
    State(state): State<Shared>,
    Auth(user): Auth,
    body: Option<ApiJson<CreateApp>>,
) -> ApiResult<Response> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let app = control::create_app(&state, &user, body.name.as_deref()).await?;
    let mut users = Users::new(&state);
    let view = render_app(&state, &app, &mut users).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn app_info(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(
        render_app(&state, &app, &mut Users::new(&state)).await?,
    ))
}

#[derive(Deserialize)]
struct UpdateApp {
    maintenance: Option<bool>,
}

async fn update_app(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<UpdateApp>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let app = match body.maintenance {
        Some(on) => {
            let app = state.store.set_maintenance(&app.id, on).await?;
            state.remember_app(
                &app.name,
                AppEntry {
                    id: app.id.clone(),
                    maintenance: app.maintenance,
                },
            );
            app
        }
        None => app,
    };
    Ok(Json(
        render_app(&state, &app, &mut Users::new(&state)).await?,
    ))
}

async fn destroy_app(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let view = render_app(&state, &app, &mut Users::new(&state)).await?;
    control::destroy_app(&state, &app).await?;
    Ok(Json(view))
}

async fn list_releases(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
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
    Path((app, release)): Path<(String, String)>,
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

/// The config vars a release was made with (its snapshot, not the app's current ones).
async fn release_config(
    State(state): State<Shared>,
    _auth: Auth,
    Path((app, release)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let r = state.store.release(&app.id, &release).await?;
    Ok(Json(json!(r.config)))
}

async fn app_config(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(json!(app.config)))
}

async fn list_formation(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let formation = state.store.formation(&app.id).await?;
    Ok(Json(Value::Array(
        formation
            .iter()
            .map(|f| views::formation(&app, f))
            .collect(),
    )))
}

async fn formation_info(
    State(state): State<Shared>,
    _auth: Auth,
    Path((app, ptype)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let formation = state.store.formation(&app.id).await?;
    let f = formation
        .iter()
        .find(|f| f.process_type == ptype || f.id == ptype)
        .ok_or_else(|| {
            ApiError::not_found(format!("Couldn't find that process type ({ptype})."))
        })?;
    Ok(Json(views::formation(&app, f)))
}

#[derive(Deserialize)]
struct BatchScale {
    updates: Vec<ScaleUpdate>,
}

#[derive(Deserialize)]
struct ScaleUpdate {
    #[serde(rename = "type")]
    process_type: String,
    quantity: Option<Value>,
    size: Option<String>,
}

/// Largest quantity of one process type (a single machine runs all of them).
const MAX_QUANTITY: i64 = 100;

/// `web=3` is `3` or `"3"`; `worker+1` is `"+1"`, `"-1"`.
fn new_quantity(current: i64, raw: &Value, ptype: &str) -> ApiResult<i64> {
    let bad = || {
        ApiError::invalid(format!(
            "Invalid quantity for {ptype}: {raw}; use a number such as 2, +1 or -1."
        ))
    };
    let quantity = match raw {
        Value::Number(n) => n.as_i64().ok_or_else(bad)?,
        Value::String(s) if s.starts_with('+') || s.starts_with('-') => {
            let delta: i64 = s.parse().map_err(|_| bad())?;
            (current + delta).max(0)
        }
        Value::String(s) => s.parse().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    if !(0..=MAX_QUANTITY).contains(&quantity) {
        return Err(ApiError::invalid(format!(
            "Cannot scale {ptype} to {quantity}: the quantity must be between 0 and {MAX_QUANTITY}."
        )));
    }
    Ok(quantity)
}

async fn batch_scale(
    State(state): State<Shared>,
    Auth(user): Auth,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<BatchScale>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    let formation = state.store.formation(&app.id).await?;
    let mut quantities = BTreeMap::new();
    for update in &body.updates {
        let Some(current) = formation
            .iter()
            .find(|f| f.process_type == update.process_type)
        else {
            let known: Vec<&str> = formation.iter().map(|f| f.process_type.as_str()).collect();
            return Err(ApiError::not_found(format!(
                "Couldn't find that process type ({}). This app's Procfile declares: {}.",
                update.process_type,
                if known.is_empty() {
                    "nothing yet (deploy first)".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if let Some(size) = &update.size {
            if size != &current.size {
                return Err(ApiError::invalid(format!(
                    "Dyno size {size} is not available; this server offers {}.",
                    current.size
                )));
            }
        }
        if let Some(raw) = &update.quantity {
            quantities.insert(
                update.process_type.clone(),
                new_quantity(current.quantity, raw, &update.process_type)?,
            );
        }
    }
    let formation = state.store.scale(&app.id, &quantities).await?;
    let summary: Vec<String> = quantities.iter().map(|(t, q)| format!("{t}={q}")).collect();
    if !summary.is_empty() {
        state.api_log(
            &app.id,
            &format!("Scale to {} by user {}", summary.join(", "), user.email),
        );
    }
    control::converge_app(&state, &app.id).await?;
    Ok(Json(Value::Array(
        formation
            .iter()
            .map(|f| views::formation(&app, f))
            .collect(),
    )))
}

/// Add-ons are not implemented yet: every app truthfully has none. The official CLI's
/// `apps:info` needs this list.
async fn list_addons(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    find_app(&state, &app).await?;
    Ok(Json(Value::Array(Vec::new())))
}

async fn list_dynos(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let releases: HashMap<i64, String> = state
        .store
        .list_releases(&app.id)
        .await?
        .into_iter()
        .map(|r| (r.version, r.id))
        .collect();
    let dynos = state.dynos.list(&app.id);
    Ok(Json(Value::Array(
        dynos
            .iter()
            .map(|d| {
                views::dyno(
                    &app,
                    d,
                    releases.get(&d.release_version).map(String::as_str),
                )
            })
            .collect(),
    )))
}

async fn dyno_info(
    State(state): State<Shared>,
    _auth: Auth,
    Path((app, dyno)): Path<(String, String)>,
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
    Ok(Json(views::dyno(&app, &d, release_id.as_deref())))
}

async fn list_builds(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
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
    Path((app, build)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let b = state.store.build(&app.id, &build).await?;
    let user = state.store.get_user(&b.user_id).await?;
    let slug = state.slug_of(b.slug_id.as_deref()).await?;
    let mut view = views::build(&app, &b, &user, slug.as_ref());
    view["output"] = Value::String(b.output.clone());
    Ok(Json(view))
}

#[derive(Deserialize, Default)]
struct LogSessionRequest {
    lines: Option<usize>,
    dyno: Option<String>,
    source: Option<String>,
    tail: Option<bool>,
}

/// Lines of history a log session may ask for (Logplex keeps 1,500).
const DEFAULT_LOG_LINES: usize = 100;

async fn create_log_session(
    State(state): State<Shared>,
    _auth: Auth,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Option<ApiJson<LogSessionRequest>>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let req = body.map(|ApiJson(b)| b).unwrap_or_default();
    let lines = req.lines.unwrap_or(DEFAULT_LOG_LINES);
    if lines > slipway_logs::HISTORY_LINES {
        return Err(ApiError::invalid(format!(
            "lines must be at most {}; that is all the history kept.",
            slipway_logs::HISTORY_LINES
        )));
    }
    if let Some(source) = &req.source {
        if source != "app" && source != "heroku" {
            return Err(ApiError::invalid(format!(
                "Unknown log source {source:?}; use app or heroku."
            )));
        }
    }
    let secret = new_token();
    let now = chrono::Utc::now();
    state.grant_log_session(
        &secret,
        LogSessionGrant {
            app_id: app.id.clone(),
            filter: Filter {
                dyno: req.dyno.filter(|d| !d.is_empty()),
                source: req.source,
            },
            lines,
            tail: req.tail.unwrap_or(false),
            expires: Instant::now() + LOG_SESSION_TTL,
        },
    );
    let body = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "logplex_url": format!("{}/log-sessions/{secret}", public_base(&state, &headers)),
        "created_at": views::time(now.timestamp_millis()),
        "updated_at": views::time(now.timestamp_millis()),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The API's base URL as this client reached it (its Host header), so a log session URL works
/// from wherever the client is; the bound address otherwise.
fn public_base(state: &Shared, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| state.settings.api_url.clone())
}

fn sse_event(line: &LogLine) -> Bytes {
    // A log line never holds a newline, but an SSE event must not either.
    Bytes::from(format!(
        "data: {}\n\n",
        line.format().replace(['\r', '\n'], " ")
    ))
}

/// Streams a log session as Server-Sent Events: the history, then (with `tail`) new lines and
/// a keep-alive comment every 15 s. The URL's secret is the credential, as Logplex's is.
async fn stream_log_session(
    State(state): State<Shared>,
    Path(secret): Path<String>,
) -> ApiResult<Response> {
    let grant = state
        .log_session(&secret)
        .ok_or_else(|| ApiError::not_found("Log session expired or unknown; request a new one."))?;
    let (history, mut subscription) =
        state
            .logs
            .subscribe(&grant.app_id, grant.filter.clone(), grant.lines);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let span = tracing::info_span!("log_session", app = %grant.app_id, tail = grant.tail);
    let stream_lines = async move {
        for line in &history {
            if tx.send(sse_event(line)).await.is_err() {
                return;
            }
        }
        if !grant.tail {
            return;
        }
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            let event = tokio::select! {
                next = subscription.recv() => match next {
                    Next::Line(line) => sse_event(&line),
                    Next::Dropped(n) => Bytes::from(format!(
                        "data: {} heroku[logplex]: Error L10 (output buffer overflow): {n} messages dropped\n\n",
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
                    )),
                    Next::Closed => return,
                },
                _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = tx.closed() => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(stream_lines, span));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_absolute_or_relative_and_bounded() {
        assert_eq!(new_quantity(1, &json!(3), "web").expect("n"), 3);
        assert_eq!(new_quantity(1, &json!("2"), "web").expect("s"), 2);
        assert_eq!(new_quantity(1, &json!("+2"), "web").expect("+"), 3);
        assert_eq!(new_quantity(1, &json!("-5"), "web").expect("-"), 0);
        assert!(new_quantity(1, &json!("many"), "web").is_err());
        assert!(new_quantity(1, &json!(1000), "web").is_err());
        assert!(new_quantity(1, &json!(-1), "web").is_err());
        assert!(new_quantity(1, &json!(null), "web").is_err());
    }
}
