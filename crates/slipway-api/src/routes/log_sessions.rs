//! Log Session: `POST /apps/{app}/log-sessions` grants a `logplex_url` whose secret (valid
//! five minutes) is the credential; `GET /log-sessions/{secret}` streams it as Server-Sent
//! Events, as Logplex does.
//!
//! Each line is one event: `id:` is the line's sequence number in the app's stream, `data:`
//! the line in Heroku's format. A client that reconnects (a new session) sends the last id it
//! got as `Last-Event-ID`, the SSE way, and gets every kept line after it instead of the
//! last `lines`: nothing repeated, nothing skipped that is still kept; lines no longer kept
//! are counted in a `heroku[logplex]` notice. Drop notices have no `id:`.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use slipway_logs::{Filter, LogLine, Next};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{new_token, Auth};
use crate::control::find_app;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::{LogSessionGrant, Shared, LOG_SESSION_TTL};
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/log-sessions", post(create_log_session))
        .route("/log-sessions/{secret}", get(stream_log_session))
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
    ApiPath(app): ApiPath<String>,
    headers: HeaderMap,
    body: Option<ApiJson<LogSessionRequest>>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let req = body.map(|ApiJson(b)| b).unwrap_or_default();
    let lines = req.lines.unwrap_or(DEFAULT_LOG_LINES);
    let kept = state.logs.limits(&app.id).lines;
    if lines > kept {
        return Err(ApiError::invalid(format!(
            "lines must be at most {kept}; that is all the history this app keeps \
             (see PATCH /apps/{}/log-settings).",
            app.name
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
    // An SSE event's data must not hold a line break.
    Bytes::from(format!(
        "id: {}\ndata: {}\n\n",
        line.seq,
        line.format().replace(['\r', '\n'], " ")
    ))
}

/// A `heroku[logplex]` notice (no `id:`: it is not a line of the stream).
fn sse_notice(message: &str) -> Bytes {
    Bytes::from(format!(
        "data: {} heroku[logplex]: {message}\n\n",
        slipway_logs::format_time(chrono::Utc::now())
    ))
}

/// The sequence number in a `Last-Event-ID` header, if it holds one.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 20)
        .and_then(|v| v.trim().parse().ok())
}

/// Streams a log session as Server-Sent Events: the history, then (with `tail`) new lines and
/// a keep-alive comment every 15 s. The URL's secret is the credential, as Logplex's is.
async fn stream_log_session(
    State(state): State<Shared>,
    ApiPath(secret): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let grant = state
        .log_session(&secret)
        .ok_or_else(|| ApiError::not_found("Log session expired or unknown; request a new one."))?;
    let (backlog, mut subscription) = state.logs.subscribe_after(
        &grant.app_id,
        grant.filter.clone(),
        last_event_id(&headers),
        grant.lines,
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let span = tracing::info_span!("log_session", app = %grant.app_id, tail = grant.tail);
    let stream_lines = async move {
        if backlog.missed > 0 {
            let notice = format!(
                "Error L10 (output buffer overflow): {} messages since the last one read are no longer kept",
                backlog.missed
            );
            if tx.send(sse_notice(&notice)).await.is_err() {
                return;
            }
        }
        for line in &backlog.lines {
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
                    Next::Dropped(n) => sse_notice(&format!(
                        "Error L10 (output buffer overflow): {n} messages dropped"
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
