//! Account: who the token belongs to; and the unauthenticated health check.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/account", get(account))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn account(Auth(user): Auth) -> Json<Value> {
    Json(views::account(&user))
}
