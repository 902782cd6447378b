//! App Feature (Heroku labs): `GET /apps/A/features`, `GET|PATCH /apps/A/features/F`
//! (`{"enabled": true}`), what `heroku labs`, `labs:enable` and `labs:disable` call. Each
//! feature is a config var (`slipway_runtime::settings::FEATURES`), so turning one on or off
//! is a config change: a new release, and the dynos restart onto it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_runtime::settings::{feature, feature_enabled, Feature, FEATURES};
use slipway_store::App;

use super::config_vars::change_config;
use crate::auth::Auth;
use crate::control::find_app;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/features", get(list_features))
        .route(
            "/apps/{app}/features/{feature}",
            get(feature_info).patch(update_feature),
        )
}

fn view(app: &App, f: &Feature) -> Value {
    json!({
        "id": f.name,
        "name": f.name,
        "display_name": f.name,
        "description": f.description,
        "doc_url": f.doc_url,
        "enabled": feature_enabled(f, &app.config),
        "state": "general",
        "feedback_email": Value::Null,
        "created_at": Value::Null,
        "updated_at": Value::Null,
    })
}

fn find_feature(name: &str) -> ApiResult<&'static Feature> {
    feature(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "Couldn't find that feature ({}). This server has: {}.",
            name.chars().take(64).collect::<String>(),
            FEATURES.map(|f| f.name).join(", ")
        ))
    })
}

async fn list_features(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(Value::Array(
        FEATURES.iter().map(|f| view(&app, f)).collect(),
    )))
}

async fn feature_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(view(&app, find_feature(&name)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    enabled: bool,
}

async fn update_feature(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath((app, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Update>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let f = find_feature(&name)?;
    let value = body.enabled.then(|| "1".to_string());
    let changes = BTreeMap::from([(f.config_var.to_string(), value)]);
    change_config(&state, &app, &user, &changes).await?;
    let app = find_app(&state, &app.id).await?;
    Ok(Json(view(&app, f)))
}
