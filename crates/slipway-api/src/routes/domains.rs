//! Domain: `GET/POST /apps/{app}/domains`, `GET/DELETE /apps/{app}/domains/{hostname or id}`
//! (Platform API shapes), and slipway's own `GET/PATCH /apps/{app}/domain-settings`
//! (`{"redirect_https": bool}`: plain-HTTP requests for the app get a 301/308 to HTTPS when
//! the server has an HTTPS listener).
//!
//! A custom domain belongs to one app; names under the server's own domain are refused (the
//! router serves `<app>.<domain>` by itself). The route table is reloaded after each change
//! (`edge.rs`), so the router serves a new domain at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_core::Hostname;
use slipway_store::{App, Domain, StoreError, StoredCert};

use crate::auth::Auth;
use crate::control::find_app;
use crate::edge;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/domains", get(list_domains).post(add_domain))
        .route(
            "/apps/{app}/domains/{domain}",
            get(domain_info).delete(remove_domain),
        )
        .route(
            "/apps/{app}/domain-settings",
            get(domain_settings).patch(update_domain_settings),
        )
}

/// The app's own host name (`<app>.<domain>`), listed first as Heroku lists
/// `<app>.herokuapp.com` (kind `heroku`).
fn default_view(state: &Shared, app: &App) -> Value {
    json!({
        "id": app.id,
        "hostname": format!("{}.{}", app.name, state.settings.domain),
        "kind": "heroku",
        "cname": null,
        "status": "succeeded",
        "acm_status": null,
        "acm_status_reason": null,
        "sni_endpoint": null,
        "app": { "id": app.id, "name": app.name },
        "created_at": views::time(app.created_at),
        "updated_at": views::time(app.updated_at),
    })
}

/// A custom domain: `cname` is where its DNS should point (the app's own host name), and
/// `sni_endpoint` the certificate that covers it, if any (the newest).
fn view(state: &Shared, app: &App, d: &Domain, certs: &[StoredCert]) -> Value {
    let cert = certs
        .iter()
        .rev()
        .find(|c| edge::covers(&c.domains, &d.hostname))
        .map(|c| json!({ "id": c.id, "name": c.name }));
    json!({
        "id": d.id,
        "hostname": d.hostname,
        "kind": "custom",
        "cname": format!("{}.{}", app.name, state.settings.domain),
        "status": "succeeded",
        "acm_status": null,
        "acm_status_reason": null,
        "sni_endpoint": cert,
        "app": { "id": app.id, "name": app.name },
        "created_at": views::time(d.created_at),
        "updated_at": views::time(d.updated_at),
    })
}

async fn list_domains(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let certs = state.store.all_certs().await?;
    let mut list = vec![default_view(&state, &app)];
    for d in state.store.domains(&app.id).await? {
        list.push(view(&state, &app, &d, &certs));
    }
    Ok(Json(Value::Array(list)))
}

async fn domain_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, domain)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let wanted = domain.to_ascii_lowercase();
    let found = state
        .store
        .domains(&app.id)
        .await?
        .into_iter()
        .find(|d| d.hostname == wanted || d.id == domain)
        .ok_or_else(|| not_on_app(&app, &domain))?;
    let certs = state.store.all_certs().await?;
    Ok(Json(view(&state, &app, &found, &certs)))
}

fn not_on_app(app: &App, domain: &str) -> ApiError {
    ApiError::not_found(format!(
        "{domain} is not a domain of {}; `slipway domains -a {}` lists them.",
        app.name, app.name
    ))
}

#[derive(Deserialize)]
struct NewDomain {
    hostname: String,
}

async fn add_domain(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<NewDomain>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    let host = Hostname::parse(&body.hostname).map_err(|e| ApiError::invalid(e.to_string()))?;
    let platform = &state.settings.domain;
    if host.is_within(platform) {
        return Err(ApiError::invalid(format!(
            "{host} is under this server's own domain {platform}, where every app is already served as <app>.{platform}; add a domain outside it."
        )));
    }
    let added = state
        .store
        .add_domain(&app.id, host.as_str())
        .await?
        .map_err(|taken| {
            if taken.app_name == app.name {
                ApiError::conflict(format!("{host} is already a domain of {}.", app.name))
            } else {
                ApiError::conflict(format!(
                    "{host} is already in use by the app {}; remove it there first (`slipway domains:remove {host} -a {}`).",
                    taken.app_name, taken.app_name
                ))
            }
        })?;
    reload(&state).await?;
    state.api_log(&app.id, &format!("Add domain {host}"));
    let certs = state.store.all_certs().await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &app, &added, &certs)),
    )
        .into_response())
}

async fn remove_domain(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, domain)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let key = match Hostname::parse(&domain) {
        Ok(host) => host.as_str().to_string(),
        Err(_) => domain.clone(),
    };
    let removed = state
        .store
        .remove_domain(&app.id, &key)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_on_app(&app, &domain),
            other => other.into(),
        })?;
    reload(&state).await?;
    state.api_log(&app.id, &format!("Remove domain {}", removed.hostname));
    Ok(Json(view(&state, &app, &removed, &[])))
}

async fn reload(state: &Shared) -> ApiResult<()> {
    edge::reload_domains(state)
        .await
        .map_err(|e| ApiError::internal("loading the custom domains into the router", e))
}

fn settings_view(state: &Shared, redirect_https: bool) -> Value {
    json!({
        "redirect_https": redirect_https,
        "https_listener": state.settings.https_port.is_some(),
    })
}

async fn domain_settings(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let on = state.store.https_redirect(&app.id).await?;
    Ok(Json(settings_view(&state, on)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    redirect_https: bool,
}

async fn update_domain_settings(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    state
        .store
        .set_https_redirect(&app.id, patch.redirect_https)
        .await?;
    reload(&state).await?;
    state.api_log(
        &app.id,
        &format!(
            "Turn {} the HTTP to HTTPS redirect",
            if patch.redirect_https { "on" } else { "off" }
        ),
    );
    Ok(Json(settings_view(&state, patch.redirect_https)))
}
