//! Dyno: list and info, restart (`DELETE /apps/{app}/dynos[/{dyno or type}]`, and
//! `DELETE /apps/{app}/formations/{type}`), stop (`POST /apps/{app}/dynos/{dyno}/actions/stop`),
//! one-off dynos (`POST /apps/{app}/dynos`, attached through `GET /dynos/attach/{secret}`,
//! resized with `POST /apps/{app}/dynos/{dyno}/actions/resize`; see `oneoff.rs`).
//!
//! A formation dyno that is stopped is restarted: as on Heroku, the dyno manager starts its
//! replacement. One dyno (`web.2`) is replaced beside the running one, which stops once the
//! new one is up (web) or at once (other types); a one-off (`run.1234`) is stopped for good.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_runtime::{DynoSize, OneOffMode, OneOffRequest, TerminalSize, DEFAULT_TIME_TO_LIVE};

use super::config_vars::{valid_name, MAX_VALUE_BYTES};
use crate::auth::{new_token, Auth};
use crate::control::{find_app, restart_dynos, RestartTarget};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::oneoff::{release_spec, Waiting, ATTACH_TTL};
use crate::state::{AppLock, Shared};
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
        .route(
            "/apps/{app}/dynos/{dyno}/actions/resize",
            post(resize_one_off),
        )
        .route("/apps/{app}/formations/{ptype}", delete(restart_one))
        .route("/dynos/attach/{secret}", get(crate::oneoff::attach))
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
    let dynos = state.dynos.list(&app.id);
    let mut list: Vec<Value> = dynos
        .iter()
        .map(|d| {
            views::dyno(
                &app,
                d,
                releases.get(&d.release_version).map(String::as_str),
            )
        })
        .collect();
    // Running one-offs, as Heroku lists them: type `run`, state `up`.
    for (name, r) in state.one_offs.list(&app.id) {
        let at = r
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        list.push(json!({
            "id": r.id,
            "name": name,
            "type": "run",
            "command": r.command,
            "state": "up",
            "size": r.size,
            "attach_url": Value::Null,
            "created_at": at,
            "updated_at": at,
            "release": { "id": r.release_id, "version": r.release_version },
            "app": { "id": app.id, "name": app.name },
        }));
    }
    Ok(Json(Value::Array(list)))
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
    Ok(Json(views::dyno(&app, &d, release_id.as_deref())))
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
    let names = restart_target(&state, &app, &target).await?;
    state.api_log(&app.id, &format!("Restart {which} by user {}", user.email));
    Ok(restarted(names))
}

/// One dyno is restarted by the dyno manager beside the running one; types and the whole
/// formation by `restart_dynos`.
async fn restart_target(
    state: &Shared,
    app: &slipway_store::App,
    target: &RestartTarget,
) -> ApiResult<Vec<String>> {
    let RestartTarget::Dyno {
        process_type,
        index,
    } = target
    else {
        return restart_dynos(state, app, target).await;
    };
    let name = format!("{process_type}.{index}");
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    if state.dynos.restart(&app.id, &name) {
        Ok(vec![name])
    } else {
        let running = state
            .dynos
            .list(&app.id)
            .into_iter()
            .map(|d| d.name)
            .collect::<Vec<_>>();
        Err(ApiError::not_found(format!(
            "Couldn't find that dyno ({name}) on {}; running: {}.",
            app.name,
            if running.is_empty() {
                "none".to_string()
            } else {
                running.join(", ")
            }
        )))
    }
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
    if let Some(handle) = state.one_offs.handle(&app.id, &which) {
        handle.stop();
        state.api_log(&app.id, &format!("Stop {which} by user {}", user.email));
        return Ok((StatusCode::ACCEPTED, Json(json!({ "stopped": [which] }))).into_response());
    }
    let target = target_of(&state, &app.id, &which);
    let names = restart_target(&state, &app, &target).await?;
    state.api_log(
        &app.id,
        &format!(
            "Stop {which} by user {} (formation dynos are started again)",
            user.email
        ),
    );
    Ok(restarted(names))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDyno {
    command: String,
    #[serde(default)]
    attach: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    size: Option<String>,
    /// Seconds.
    time_to_live: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Pipes even when the request carries a terminal size (Heroku's flag).
    #[serde(default)]
    force_no_tty: bool,
}

/// Longest command accepted (Heroku's run takes a shell line).
const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// `POST /apps/{app}/dynos`: a one-off dyno with the current release. `type` `run` (the
/// default) with `attach: true` answers with an `attach_url`, and the dyno starts when its
/// client attaches; `run:detached` (or `attach: false`) starts it at once with its output in
/// the logs. A terminal is given when `env` carries `COLUMNS` and `LINES` and
/// `force_no_tty` is not set; `TERM` passes through `env`.
async fn run_one_off(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<CreateDyno>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let detached = match body.kind.as_deref() {
        None | Some("run") => !body.attach,
        Some("run:detached") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "type must be run or run:detached, not {other:?}."
            )))
        }
    };
    if body.command.trim().is_empty() || body.command.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::invalid(format!(
            "command must be a non-empty shell command of at most {MAX_COMMAND_BYTES} bytes."
        )));
    }
    let bad: Vec<&str> = body
        .env
        .iter()
        .filter(|(k, v)| !valid_name(k) || v.contains('\0') || v.len() > MAX_VALUE_BYTES)
        .map(|(k, _)| k.as_str())
        .collect();
    if !bad.is_empty() {
        let shown: Vec<String> = bad
            .iter()
            .map(|k| {
                serde_json::to_string(&k.chars().take(64).collect::<String>()).unwrap_or_default()
            })
            .collect();
        return Err(ApiError::invalid(format!(
            "Invalid env: {} (names are shell variable names; values at most {MAX_VALUE_BYTES} bytes, without NUL).",
            shown.join(", ")
        )));
    }
    let size_name = body.size.as_deref().unwrap_or(DEFAULT_SIZE);
    let size = DynoSize::parse(size_name).ok_or_else(|| {
        ApiError::invalid(format!(
            "Unknown dyno size {size_name:?}: use standard-1X, standard-2X or performance-M."
        ))
    })?;
    let ttl = match body.time_to_live {
        None => DEFAULT_TIME_TO_LIVE,
        Some(s) if (1..=DEFAULT_TIME_TO_LIVE.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "time_to_live must be between 1 and {} seconds (24 hours).",
                DEFAULT_TIME_TO_LIVE.as_secs()
            )))
        }
    };
    let release = state.store.current_release(&app.id).await?.ok_or_else(|| {
        ApiError::invalid(format!(
            "{} has no release to run yet; push with `git push slipway main` first.",
            app.name
        ))
    })?;
    let spec = release_spec(&state, &release).await?;
    let terminal = match (body.env.get("COLUMNS"), body.env.get("LINES")) {
        (Some(c), Some(l)) if !body.force_no_tty && !detached => {
            match (c.parse::<u16>(), l.parse::<u16>()) {
                (Ok(cols), Ok(rows)) if cols > 0 && rows > 0 => Some(TerminalSize { cols, rows }),
                _ => {
                    return Err(ApiError::invalid(
                        "COLUMNS and LINES must be numbers from 1 to 65535.",
                    ))
                }
            }
        }
        _ => None,
    };
    let name = format!("run.{}", rand::random_range(1000..10000u32));
    let mode = match (detached, terminal) {
        (true, _) => OneOffMode::Logs,
        (false, Some(size)) => OneOffMode::Terminal(size),
        (false, None) => OneOffMode::Pipes,
    };
    let request = OneOffRequest {
        release: spec,
        name: name.clone(),
        command: body.command.clone(),
        env: body.env.clone(),
        size: size.clone(),
        time_to_live: ttl,
        mode,
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (id, attach_url, state_name) = if detached {
        let one_off = state
            .dynos
            .run_one_off(request)
            .await
            .map_err(|e| ApiError::internal("starting the one-off dyno", e))?;
        let (app_id, n) = (app.id.clone(), name.clone());
        state.one_offs.track(
            &app_id,
            &n,
            crate::oneoff::Running {
                handle: one_off.handle.clone(),
                id: one_off.id.clone(),
                command: body.command.clone(),
                size: size.name.clone(),
                release_version: release.version,
                release_id: release.id.clone(),
                started_at: chrono::Utc::now(),
            },
        );
        let st = state.clone();
        let exit = one_off.exit;
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _ = exit.await;
                st.one_offs.untrack(&app_id, &n);
            },
            tracing::info_span!("one-off", app = %app.id, dyno = %name),
        ));
        (one_off.id, Value::Null, "up")
    } else {
        let secret = new_token();
        state.one_offs.grant(
            &secret,
            Waiting {
                app_id: app.id.clone(),
                release_id: release.id.clone(),
                request,
                expires: Instant::now() + ATTACH_TTL,
            },
        );
        (
            uuid::Uuid::new_v4().to_string(),
            json!(format!("{}/dynos/attach/{secret}", state.settings.api_url)),
            "starting",
        )
    };
    state.api_log(
        &app.id,
        &format!(
            "Starting process with command `{}` by user {}",
            body.command, user.email
        ),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": name,
            "type": if detached { "run:detached" } else { "run" },
            "command": body.command,
            "state": state_name,
            "size": size.name,
            "attach_url": attach_url,
            "created_at": now,
            "updated_at": now,
            "release": { "id": release.id, "version": release.version },
            "app": { "id": app.id, "name": app.name },
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    cols: u16,
    rows: u16,
}

/// `POST /apps/{app}/dynos/{dyno}/actions/resize {"cols": 120, "rows": 40}`: a running
/// one-off's terminal size (the `run` client sends it when its window changes).
async fn resize_one_off(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, dyno)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Resize>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let handle = state.one_offs.handle(&app.id, &dyno).ok_or_else(|| {
        ApiError::not_found(format!(
            "Couldn't find that one-off dyno ({dyno}) on {}.",
            app.name
        ))
    })?;
    if body.cols == 0 || body.rows == 0 {
        return Err(ApiError::invalid("cols and rows must be at least 1."));
    }
    handle
        .resize(TerminalSize {
            cols: body.cols,
            rows: body.rows,
        })
        .map_err(|e| ApiError::internal("resizing the one-off's terminal", e))?;
    Ok(StatusCode::ACCEPTED.into_response())
}
