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

/// `status`, and the reconciliation passes finished so far and how long the last one took
/// (`reconcile.rs`).
async fn health(axum::extract::State(state): axum::extract::State<Shared>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "reconcile": {
            "passes": state.reconcile.passes(),
            "corrections": state.reconcile.corrections(),
            "last_pass_ms": state.reconcile.last_pass().as_secs_f64() * 1000.0,
        },
    }))
}

async fn account(Auth(user): Auth) -> Json<Value> {
    Json(views::account(&user))
}
