//! SNI Endpoint (TLS certificates): `GET/POST /apps/{app}/sni-endpoints`,
//! `GET/DELETE /apps/{app}/sni-endpoints/{id or name}` (Platform API shapes), and the
//! server's own certificates (e.g. a wildcard for `*.<domain>`), which belong to no app:
//! `GET/POST /sni-endpoints`, `GET/DELETE /sni-endpoints/{id or name}`.
//!
//! `POST` takes `{"certificate_chain": PEM, "private_key": PEM}`. Both are checked (they parse,
//! the key signs for the certificate, it is valid now) before anything is written; the key is
//! kept as a root-only file (`edge.rs`) and never appears in an answer or a log. Every
//! stored certificate is served by SNI for the names in its subjectAltName; where two name
//! the same domain the newer one is served.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_router::tls::Cert;
use slipway_store::{App, CertSource, NewCert, StoreError, StoredCert};

use crate::auth::Auth;
use crate::control::find_app;
use crate::edge;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::Shared;
use crate::views;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/apps/{app}/sni-endpoints", get(list_app).post(add_app))
        .route(
            "/apps/{app}/sni-endpoints/{cert}",
            get(info_app).delete(remove_app),
        )
        .route("/sni-endpoints", get(list_server).post(add_server))
        .route(
            "/sni-endpoints/{cert}",
            get(info_server).delete(remove_server),
        )
}

/// A certificate in the Platform API's SNI endpoint shape (never its key). `domains` are the
/// app's custom domains it covers.
fn view(c: &StoredCert, app: Option<&App>, app_domains: &[String]) -> Value {
    let now = chrono::Utc::now().timestamp_millis();
    let covered: Vec<&String> = app_domains
        .iter()
        .filter(|d| edge::covers(&c.domains, d))
        .collect();
    json!({
        "id": c.id,
        "name": c.name,
        "certificate_chain": c.certificate_chain,
        "app": app.map(|a| json!({ "id": a.id, "name": a.name })),
        "source": c.source.as_str(),
        "domains": covered,
        "ssl_cert": {
            "cert_domains": c.domains,
            "starts_at": views::time(c.not_before),
            "expires_at": views::time(c.not_after),
            "expired": c.not_after <= now,
            "issuer": c.issuer,
        },
        "created_at": views::time(c.created_at),
        "updated_at": views::time(c.updated_at),
    })
}

#[derive(Deserialize)]
struct NewEndpoint {
    certificate_chain: String,
    private_key: String,
}

async fn app_domains(state: &Shared, app: Option<&App>) -> ApiResult<Vec<String>> {
    Ok(match app {
        Some(app) => state
            .store
            .domains(&app.id)
            .await?
            .into_iter()
            .map(|d| d.hostname)
            .collect(),
        None => Vec::new(),
    })
}

async fn list(state: &Shared, app: Option<&App>) -> ApiResult<Json<Value>> {
    let certs = state.store.certs(app.map(|a| a.id.as_str())).await?;
    let domains = app_domains(state, app).await?;
    Ok(Json(Value::Array(
        certs.iter().map(|c| view(c, app, &domains)).collect(),
    )))
}

async fn info(state: &Shared, app: Option<&App>, cert: &str) -> ApiResult<Json<Value>> {
    let found = state
        .store
        .cert(app.map(|a| a.id.as_str()), cert)
        .await
        .map_err(|e| not_found(e, app, cert))?;
    let domains = app_domains(state, app).await?;
    Ok(Json(view(&found, app, &domains)))
}

fn not_found(e: StoreError, app: Option<&App>, cert: &str) -> ApiError {
    match e {
        StoreError::NotFound(_) => ApiError::not_found(match app {
            Some(app) => format!(
                "{} has no certificate {cert}; `slipway certs -a {}` lists them.",
                app.name, app.name
            ),
            None => format!(
                "The server has no certificate {cert} of its own; `slipway certs` lists them."
            ),
        }),
        other => other.into(),
    }
}

async fn add(state: &Shared, app: Option<&App>, body: NewEndpoint) -> ApiResult<Response> {
    if body.certificate_chain.len() > edge::MAX_CHAIN_BYTES {
        return Err(ApiError::invalid(format!(
            "The certificate chain is larger than {} KiB.",
            edge::MAX_CHAIN_BYTES / 1024
        )));
    }
    if body.private_key.len() > edge::MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "The private key is larger than {} KiB.",
            edge::MAX_KEY_BYTES / 1024
        )));
    }
    let cert = Cert::from_pem(&body.certificate_chain, &body.private_key)
        .map_err(|e| ApiError::invalid(format!("The certificate and key were refused: {e}.")))?;
    let info = cert.info();
    let stored = state
        .store
        .add_cert(NewCert {
            app_id: app.map(|a| a.id.as_str()),
            source: CertSource::Uploaded,
            certificate_chain: &body.certificate_chain,
            domains: &info.domains,
            issuer: &info.issuer,
            not_before: info.not_before.timestamp_millis(),
            not_after: info.not_after.timestamp_millis(),
        })
        .await?;
    // The key is written after the row (whose id names it); if it cannot be, the row goes too.
    if let Err(e) = edge::write_key(&state.settings, &stored.id, &body.private_key) {
        let _ = state
            .store
            .remove_cert(app.map(|a| a.id.as_str()), &stored.id)
            .await;
        return Err(ApiError::internal(
            "storing the certificate's private key",
            e,
        ));
    }
    reload(state).await?;
    if let Some(app) = app {
        state.api_log(
            &app.id,
            &format!(
                "Add certificate {} for {}",
                stored.name,
                stored.domains.join(", ")
            ),
        );
    }
    let domains = app_domains(state, app).await?;
    Ok((StatusCode::CREATED, Json(view(&stored, app, &domains))).into_response())
}

async fn remove(state: &Shared, app: Option<&App>, cert: &str) -> ApiResult<Json<Value>> {
    let removed = state
        .store
        .remove_cert(app.map(|a| a.id.as_str()), cert)
        .await
        .map_err(|e| not_found(e, app, cert))?;
    // Reloading serves the store without it, and removes its key file.
    reload(state).await?;
    if let Some(app) = app {
        state.api_log(&app.id, &format!("Remove certificate {}", removed.name));
    }
    Ok(Json(view(&removed, app, &[])))
}

async fn reload(state: &Shared) -> ApiResult<()> {
    edge::reload_certs(state)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::internal("loading the certificates into the TLS listener", e))
}

async fn list_app(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    list(&state, Some(&app)).await
}

async fn add_app(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> ApiResult<Response> {
    let app = find_app(&state, &app).await?;
    add(&state, Some(&app), body).await
}

async fn info_app(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, cert)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    info(&state, Some(&app), &cert).await
}

async fn remove_app(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, cert)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    remove(&state, Some(&app), &cert).await
}

async fn list_server(State(state): State<Shared>, _auth: Auth) -> ApiResult<Json<Value>> {
    list(&state, None).await
}

async fn add_server(
    State(state): State<Shared>,
    _auth: Auth,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> ApiResult<Response> {
    add(&state, None, body).await
}

async fn info_server(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(cert): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    info(&state, None, &cert).await
}

async fn remove_server(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(cert): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    remove(&state, None, &cert).await
}
