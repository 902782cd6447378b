//! Pipelines (issue 10, the build-and-promote half): only tested builds go live.
//!
//! - `model.rs`: names, strategies, `#stage` tags in commit messages, the [`Target`] interface.
//! - `git.rs`: the pipeline's own git remote (`/pipelines/P.git`, smart HTTP, same auth as
//!   apps) and the post-receive endpoint its hook calls.
//! - `builds.rs`: every pushed branch head is built once into a slug and tested
//!   (`app.json` `environments.test.scripts.test` in a one-off dyno of that slug).
//! - `strategies.rs`: what a passed build deploys by itself (automatic stages, `#stage`),
//!   the per-stage queue (newest wins, never older than what the stage runs) and manual deploys.
//! - `promote.rs`: a stage's slug to the next stage, without rebuilding.
//! - `deploy.rs`: [`deploy::release_slug`], the one function that puts a slug live on a target.
//! - `run.rs`: a command in a one-off dyno with its output collected and secrets masked.

pub mod builds;
pub mod deploy;
pub mod git;
pub mod model;
pub mod promote;
pub mod run;
pub mod strategies;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::state::Settings;

pub use model::{PipelineError, Target};

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What pipelines keep in memory while the server runs: push grants of pipeline remotes,
/// the build lock of each pipeline, live build output, and each stage's deploy queue.
#[derive(Default)]
pub struct Pipelines {
    pub(crate) grants: Mutex<HashMap<String, git::Grant>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) live: Mutex<HashMap<String, Arc<builds::Live>>>,
    pub(crate) queues: Mutex<HashMap<String, strategies::Queued>>,
}

impl Pipelines {
    /// A named lock: `build:<pipeline>` (one compile at a time per pipeline, it shares a
    /// build cache), `stage:<stage>` (one deploy at a time per stage).
    pub(crate) fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}

/// Where pipelines keep their files.
pub(crate) trait PipelinePaths {
    /// The pipeline's bare repository.
    fn pipeline_repo(&self, pipeline_id: &str) -> PathBuf;
    /// Its built slugs (outside `<data>/slugs`, which `gc.rs` keeps for apps).
    fn pipeline_slugs(&self, pipeline_id: &str) -> PathBuf;
    /// The hooks pipeline repositories run (`post-receive`).
    fn pipeline_hooks(&self) -> PathBuf;
}

impl PipelinePaths for Settings {
    fn pipeline_repo(&self, pipeline_id: &str) -> PathBuf {
        self.data_dir
            .join("pipelines")
            .join(format!("{pipeline_id}.git"))
    }

    fn pipeline_slugs(&self, pipeline_id: &str) -> PathBuf {
        self.data_dir.join("pipeline-slugs").join(pipeline_id)
    }

    fn pipeline_hooks(&self) -> PathBuf {
        self.data_dir.join("pipeline-hooks")
    }
}

/// At server start: builds and deploys a stopped server left unfinished are failed.
pub async fn recover(state: &crate::state::Shared) {
    match state.store.fail_interrupted_pipeline_work().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            builds = n,
            "pipeline builds interrupted by a restart were failed"
        ),
        Err(e) => tracing::error!(error = %e, "could not fail interrupted pipeline builds"),
    }
}
