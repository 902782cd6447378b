//! Add-ons are not implemented yet: every app truthfully has none. The official CLI's
//! `apps:info` needs this list.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::auth::Auth;
use crate::control::find_app;
use crate::error::{ApiPath, ApiResult};
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new().route("/apps/{app}/addons", get(list_addons))
}

async fn list_addons(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    find_app(&state, &app).await?;
    Ok(Json(Value::Array(Vec::new())))
}
