//! One log line per API request (method, route, status, duration, request id) and the
//! `Request-Id` header, echoed back as Heroku's API does.
//!
//! The route logged is the matched template (`/apps/{app}/config-vars`), never the query
//! string or body, so tokens, log-session secrets and config values stay out of the log.
//! Requests that match no route log their path without the query.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: &str = "request-id";

/// A client's request id is kept if it is short and plain; otherwise a new one is made.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 200
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.,:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    let method = req.method().clone();
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) => m.as_str().to_string(),
        None => req.uri().path().chars().take(200).collect(),
    };
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        tracing::info!(
            status,
            duration_ms = format!("{duration_ms:.1}"),
            "api request"
        );
    });
    response
}
