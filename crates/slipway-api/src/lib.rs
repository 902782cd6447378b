//! slipway's control plane.
//!
//! - `server.rs`: start-up, listeners, graceful shutdown.
//! - `routes.rs`: the REST API (Platform API v3 shapes); `views.rs` its JSON; `paging.rs`
//!   Range headers; `auth.rs` tokens; `error.rs` the one mapping of errors to HTTP.
//! - `git.rs`: git smart HTTP; `deploy.rs`: the build a push triggers, handed to
//!   `deploys/` (the deploy runner: steps, checks, rollback, reports).
//! - `oneoff.rs`: attaching to one-off dynos (`run`), the release phase.
//! - `pipelines/`: pipelines (stages, targets, builds and tests, strategies, promotion).
//! - `control.rs`: operations shared by all of them (create/destroy apps, converge dynos).
//! - `state.rs`: what handlers share, and the router's view of apps.
//! - `edge.rs`: TLS certificates and custom domains, loaded into the router whole.

pub mod auth;
pub mod control;
pub mod deploy;
pub mod deploys;
pub mod edge;
pub mod error;
pub mod gc;
pub mod git;
pub mod oneoff;
pub mod paging;
pub mod pipelines;
pub mod push;
pub mod reconcile;
pub mod routes;
pub mod server;
pub mod state;
pub mod views;

pub use deploy::RESULT_PREFIX;
pub use server::{run, Ready, ServerConfig, ADMIN_TOKEN_FILE, SERVER_FILE};
