//! Putting a pipeline's slug live on one target.
//!
//! [`release_slug`] is the one place that knows how a deploy runs: it hands the slug to the
//! deploy runner (`crate::deploys`), the same one pushes go through, so a stage's deploy runs
//! the app's pre-deploy, release phase, zero-downtime switch, post-deploy, smoke test, watch
//! window and automatic rollback. [`release_to_hosts`] does the same for a host target: the
//! slug goes into the release store (name = the pipeline, tag = `build-N`) and the deploy
//! runner's host runner (`crate::deploys::hosts`) deploys it to the target's hosts. Nothing
//! else in `pipelines/` depends on how a deploy runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use slipway_core::Secret;
use slipway_store::{App, NewSlug, Stage};
use tokio::sync::broadcast;

use super::model::{DeployOrigin, PipelineError, Target};
use crate::deploys::{self, DeployOptions, DeployRequest, DeploySource, DeployStatus, Msg};
use crate::state::Shared;

/// A built slug, as a pipeline build keeps it.
#[derive(Debug, Clone)]
pub struct PipelineSlug {
    pub path: PathBuf,
    pub checksum: String,
    pub size: i64,
    pub commit_sha: String,
    pub process_types: BTreeMap<String, String>,
    /// The pipeline build it came from.
    pub build_number: i64,
}

/// What a deploy to a target made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub target: String,
    /// The app's release version (`None` for a host target).
    pub version: Option<i64>,
    /// The release as named on the target: `v3` on an app, the tag (`build-7`) on hosts.
    pub release: String,
    pub checksum: String,
}

/// Deploys `slug` to any kind of target.
#[allow(clippy::too_many_arguments)]
pub async fn deploy_to(
    state: &Shared,
    target: &Target,
    stage: &Stage,
    slug: &PipelineSlug,
    env: &BTreeMap<String, Secret>,
    origin: &DeployOrigin,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<ReleaseOutcome, PipelineError> {
    match target {
        Target::App(app) => release_slug(state, app, stage, slug, env, origin, user_id, say).await,
        Target::Host(name) => {
            release_to_hosts(state, name, stage, slug, env, origin, user_id, say).await
        }
    }
}

/// Makes `slug` the app's next release through the deploy runner (`crate::deploys`): the
/// slug file is hard-linked (or copied) into the app's slug directory under the same checksum,
/// then a deploy of it runs every step the app's `app.json` defines (pre-deploy, the release
/// with its release phase and zero-downtime switch, post-deploy, smoke test), with the stage's
/// environment as the deploy's masked secrets and `$SLIPWAY_STAGE` set. This returns once the
/// deploy is live and watching (as a push does) or has failed; the watch window's log test and
/// heartbeat keep running afterwards and roll back on their own (`slipway deploys:wait`).
#[allow(clippy::too_many_arguments)]
pub async fn release_slug(
    state: &Shared,
    app: &App,
    stage: &Stage,
    slug: &PipelineSlug,
    env: &BTreeMap<String, Secret>,
    origin: &DeployOrigin,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<ReleaseOutcome, PipelineError> {
    let failed = |reason: String| PipelineError::Deploy {
        number: slug.build_number,
        target: format!("app {}", app.name),
        reason,
    };
    let dir = state.settings.slug_dir(&app.id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| failed(format!("could not create the app's slug directory: {e}")))?;
    let dest = dir.join(format!("{}.tgz", uuid::Uuid::new_v4()));
    let (src, to) = (slug.path.clone(), dest.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::hard_link(&src, &to).or_else(|_| std::fs::copy(&src, &to).map(|_| ()))
    })
    .await
    .map_err(|e| failed(format!("copying the slug was interrupted: {e}")))?
    .map_err(|e| failed(format!("could not copy the slug: {e}")))?;
    let record = state
        .store
        .create_slug(&NewSlug {
            app_id: app.id.clone(),
            commit_sha: slug.commit_sha.clone(),
            checksum: slug.checksum.clone(),
            size: slug.size,
            path: dest.display().to_string(),
            process_types: slug.process_types.clone(),
        })
        .await;
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e.into());
        }
    };
    state.api_log(
        &app.id,
        &format!(
            "Deploying pipeline build #{} to stage {} ({})",
            slug.build_number,
            stage.name,
            origin.describe()
        ),
    );
    let request = DeployRequest {
        app_id: app.id.clone(),
        source: DeploySource::Slug {
            slug_id: record.id.clone(),
        },
        user_id: user_id.to_string(),
        options: DeployOptions {
            no_rollback: false,
            watch: Some(Duration::from_secs(stage.watch_secs.max(0) as u64)),
            stage: Some(stage.name.clone()),
        },
        secrets: env.clone(),
        spec: None,
    };
    let id = match deploys::start(state, request).await {
        Ok(id) => id,
        Err(e) => {
            // Nothing references the slug yet: it goes (the collector would take it later).
            let _ = state.store.delete_slug(&record.id).await;
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(failed(e.to_string()));
        }
    };
    let outcome = follow_until_live(state, &app.id, &id.0, say)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let deploy = state
        .store
        .deploy(&app.id, &id.0)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match outcome {
        Live::Watching | Live::Done(DeployStatus::Passed) => {
            let version = deploy
                .release_version
                .ok_or_else(|| failed(format!("deploy #{} made no release", deploy.number)))?;
            say(&format!(
                "       Released v{version} on {} ({}); deploy #{} (`slipway deploys:wait {} --app {}`)",
                app.name,
                state.settings.web_url(&app.name),
                deploy.number,
                deploy.number,
                app.name
            ));
            Ok(ReleaseOutcome {
                target: format!("app {}", app.name),
                version: Some(version),
                release: format!("v{version}"),
                checksum: record.checksum,
            })
        }
        Live::Done(status) => Err(failed(if deploy.failure.is_empty() {
            format!("deploy #{} {}", deploy.number, status.as_str())
        } else {
            format!(
                "deploy #{} {}: {}",
                deploy.number,
                status.as_str(),
                deploy.failure
            )
        })),
    }
}

/// The release store's record of a pipeline build's slug: name = the pipeline, tag =
/// `build-N`, with its commit and metadata (pipeline, build, branch). Kept once: a build
/// promoted to a second host stage reuses it (same checksum).
async fn stored_build(
    state: &Shared,
    stage: &Stage,
    slug: &PipelineSlug,
) -> Result<slipway_store::release_store::StoredRelease, String> {
    let pipeline = state
        .store
        .find_pipeline(&stage.pipeline_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the pipeline is gone".to_string())?;
    let tag = format!("build-{}", slug.build_number);
    let sha256 = slug
        .checksum
        .trim_start_matches("SHA256:")
        .to_ascii_lowercase();
    if let Ok(kept) = state.store.stored_release(&pipeline.name, &tag).await {
        if kept.sha256 == sha256 {
            return Ok(kept);
        }
        return Err(format!(
            "the release store already has {} {tag} with another checksum ({}); remove it with `slipway store:delete {} {tag}`",
            pipeline.name, kept.sha256, pipeline.name
        ));
    }
    let entry = slipway_hosts::store::Entry {
        name: pipeline.name.clone(),
        tag: tag.clone(),
        commit_sha: slug.commit_sha.clone(),
        metadata: serde_json::json!({
            "pipeline": pipeline.name,
            "build": slug.build_number,
            "process_types": slug.process_types,
        }),
    };
    slipway_hosts::ReleaseStore::new(&state.settings.data_dir)
        .keep_file(&state.store, entry, &slug.path, &slug.checksum)
        .await
        .map_err(|e| format!("could not keep the slug in the release store: {e}"))
}

/// Deploys `slug` to a host target through the deploy runner's host runner: kept in the
/// release store, then uploaded to every host of the target, switched in batches, checked
/// (pre-deploy, post-deploy, smoke, heartbeat from the slug's `app.json`) and rolled back to
/// what each host ran before when a check fails after the switch. Returns once the deploy is
/// watching or has ended, as for an app.
#[allow(clippy::too_many_arguments)]
pub async fn release_to_hosts(
    state: &Shared,
    target: &str,
    stage: &Stage,
    slug: &PipelineSlug,
    env: &BTreeMap<String, Secret>,
    origin: &DeployOrigin,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<ReleaseOutcome, PipelineError> {
    let failed = |reason: String| PipelineError::Deploy {
        number: slug.build_number,
        target: format!("host target {target}"),
        reason,
    };
    let spec = deploys::spec_of_slug_file(&slug.path.display().to_string())
        .await
        .map_err(|e| failed(format!("the slug's app.json: {e}")))?;
    let release = stored_build(state, stage, slug).await.map_err(failed)?;
    say(&format!(
        "       Kept in the release store as {} {} (sha256 {})",
        release.name, release.tag, release.sha256
    ));
    tracing::info!(
        target: "slipway_hosts",
        "deploying pipeline build #{} to stage {} on host target {target} ({})",
        slug.build_number,
        stage.name,
        origin.describe()
    );
    let request = deploys::hosts::HostDeployRequest {
        target: target.to_string(),
        release: release.clone(),
        user_id: user_id.to_string(),
        options: DeployOptions {
            no_rollback: false,
            watch: Some(Duration::from_secs(stage.watch_secs.max(0) as u64)),
            stage: Some(stage.name.clone()),
        },
        secrets: env.clone(),
        spec,
        smoke_user: stage.pipeline_id.clone(),
    };
    let started = deploys::hosts::start(state, request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let number = started.record.number;
    let outcome = relay(started.follow, say).await;
    let record = state
        .store
        .target_deploys(target, 100)
        .await
        .map_err(|e| failed(e.to_string()))?
        .into_iter()
        .find(|d| d.id == started.record.id);
    match outcome {
        Live::Watching | Live::Done(DeployStatus::Passed) => {
            say(&format!(
                "       Released {} on host target {target}; deploy #{number} (`GET /targets/{target}/deploys`)",
                release.tag
            ));
            Ok(ReleaseOutcome {
                target: format!("host target {target}"),
                version: None,
                release: release.tag,
                checksum: slug.checksum.clone(),
            })
        }
        Live::Done(status) => {
            let why = record.map(|r| r.failure).unwrap_or_default();
            Err(failed(if why.is_empty() {
                format!("deploy #{number} {}", status.as_str())
            } else {
                format!("deploy #{number} {}: {why}", status.as_str())
            }))
        }
    }
}

/// Relays a followed deploy's transcript to `say` until it is watching or finished.
async fn relay(follow: deploys::Follow, say: &mut (dyn FnMut(&str) + Send)) -> Live {
    let deploys::Follow { backlog, rx } = follow;
    for msg in backlog {
        match msg {
            Msg::Line(line) => say(&line),
            Msg::Watching => return Live::Watching,
            Msg::Done(status) => return Live::Done(status),
        }
    }
    let Some(mut rx) = rx else {
        return Live::Done(DeployStatus::Interrupted);
    };
    loop {
        match rx.recv().await {
            Ok(Msg::Line(line)) => say(&line),
            Ok(Msg::Watching) => return Live::Watching,
            Ok(Msg::Done(status)) => return Live::Done(status),
            Err(broadcast::error::RecvError::Lagged(n)) => say(&format!(
                "       ({n} lines of the deploy's output were skipped)"
            )),
            Err(broadcast::error::RecvError::Closed) => {
                return Live::Done(DeployStatus::Interrupted)
            }
        }
    }
}

/// How far a followed deploy got.
enum Live {
    /// Every step up to the smoke test passed; the watch window runs on.
    Watching,
    Done(DeployStatus),
}

/// Relays a deploy's transcript to `say` until it is live and watching, or finished.
async fn follow_until_live(
    state: &Shared,
    app_id: &str,
    id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Live, deploys::DeployError> {
    let deploys::Follow { backlog, rx } = deploys::follow(state, app_id, id).await?;
    for msg in backlog {
        match msg {
            Msg::Line(line) => say(&line),
            Msg::Watching => return Ok(Live::Watching),
            Msg::Done(status) => return Ok(Live::Done(status)),
        }
    }
    let Some(mut rx) = rx else {
        return Ok(Live::Done(DeployStatus::Interrupted));
    };
    loop {
        match rx.recv().await {
            Ok(Msg::Line(line)) => say(&line),
            Ok(Msg::Watching) => return Ok(Live::Watching),
            Ok(Msg::Done(status)) => return Ok(Live::Done(status)),
            Err(broadcast::error::RecvError::Lagged(n)) => say(&format!(
                "       ({n} lines of the deploy's output were skipped)"
            )),
            Err(broadcast::error::RecvError::Closed) => {
                return Ok(Live::Done(deploys::wait(state, app_id, id).await?))
            }
        }
    }
}
