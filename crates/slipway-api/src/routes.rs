//! The REST API, in the shape of Heroku's Platform API v3. One module per resource, grouped
//! as the Platform API reference groups them; each holds its handlers and request shapes (the
//! JSON it answers with is in `views.rs`):
//!
//! | module | resource | endpoints |
//! |---|---|---|
//! | `account` | Account | `GET /health`, `GET /account` |
//! | `apps` | App | `GET/POST /apps`, `GET /users/~/apps`, `GET/PATCH/DELETE /apps/A` |
//! | `config_vars` | Config Vars | `GET/PATCH /apps/A/config-vars`, `GET /apps/A/releases/V/config-vars` |
//! | `releases` | Release | `GET/POST /apps/A/releases`, `GET /apps/A/releases/V` |
//! | `formation` | Formation | `GET/PATCH /apps/A/formation`, `GET/PATCH /apps/A/formation/T` |
//! | `dynos` | Dyno | `GET/DELETE /apps/A/dynos[/D]`, `POST /apps/A/dynos/D/actions/stop`, `DELETE /apps/A/formations/T` |
//! | `builds` | Build | `GET /apps/A/builds[/ID]` |
//! | `buildpacks` | Buildpack Installation, Build Cache | `GET/PUT /apps/A/buildpack-installations`, `DELETE /apps/A/build-cache` |
//! | `log_sessions` | Log Session | `POST /apps/A/log-sessions`, `GET /log-sessions/SECRET` |
//! | `log_drains` | Log Drain | `GET/POST /apps/A/log-drains`, `DELETE /apps/A/log-drains/ID-or-URL`, `GET/PATCH /apps/A/log-settings` |
//! | `addons` | Add-on | `GET /apps/A/addons` |
//! | `domains` | Domain (and slipway's HTTPS redirect switch) | `GET/POST /apps/A/domains`, `GET/DELETE /apps/A/domains/HOST`, `GET/PATCH /apps/A/domain-settings` |
//! | `certs` | SNI Endpoint (TLS certificates) | `GET/POST /apps/A/sni-endpoints`, `GET/DELETE /apps/A/sni-endpoints/ID`, the same under `/sni-endpoints` for the server's own |
//! | `deploys` | Deploys, webhooks, deploy secrets (slipway's own) | `/apps/A/deploys...`, `/apps/A/webhooks...`, `/apps/A/deploy-secrets` |
//! | `pipelines` | Pipelines, stages, targets, builds, deploys (slipway's own) | `/pipelines...`, `/pipeline-builds/ID` (see the module) |
//! | `features` | App Feature (labs) | `GET /apps/A/features[/F]`, `PATCH /apps/A/features/F` |
//! | `targets` | Release store, host targets (slipway's own) | `/release-store...`, `/targets...` (see the module) |
//!
//! `observe` logs every request and gives it a `Request-Id`.

mod account;
mod addons;
mod apps;
mod buildpacks;
mod builds;
mod certs;
mod config_vars;
mod deploys;
mod domains;
mod dynos;
mod features;
mod formation;
mod log_drains;
mod log_sessions;
mod observe;
mod pipelines;
mod releases;
pub(crate) mod targets;

use axum::http::Method;
use axum::Router;

use crate::error::ApiError;
use crate::state::Shared;

/// The request log as a middleware (`axum::middleware::from_fn(observe)`), for routers
/// outside this module (git, internal) that want the same line and `Request-Id`.
pub use deploys::secrets_of;
pub use log_drains::drain_spec;
pub use observe::{observe, REQUEST_ID};

pub fn routes() -> Router<Shared> {
    Router::new()
        .merge(account::routes())
        .merge(apps::routes())
        .merge(config_vars::routes())
        .merge(releases::routes())
        .merge(formation::routes())
        .merge(dynos::routes())
        .merge(builds::routes())
        .merge(buildpacks::routes())
        .merge(log_sessions::routes())
        .merge(log_drains::routes())
        .merge(addons::routes())
        .merge(features::routes())
        .merge(targets::routes())
        .merge(domains::routes())
        .merge(certs::routes())
        .merge(deploys::routes())
        .merge(pipelines::routes())
        // Set after every route: it applies to the routes that exist when it is called.
        .method_not_allowed_fallback(method_not_allowed)
}

/// A known path with a method it does not serve (axum adds the `Allow` header).
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{method} is not allowed on this endpoint; the Allow header lists the methods it serves."
    ))
}
