//! What a passed build deploys by itself, and every deploy of a build to a stage.
//!
//! **Strategies** (Semaphore, Wercker): a stage `automatic` on branch B gets every passed build
//! of B; a commit message with `#<stage>` sends its build to that stage once it passed. Each
//! stage has a queue of one: a deploy waits while the stage deploys another build, and a
//! newer passed build that arrives meanwhile takes the waiting one's place (`superseded`).
//! A strategy never deploys a build older (lower number) than the one the stage runs: it is
//! `skipped`, so a slow build can never undo a newer deploy.
//!
//! **Manual** deploys (`pipelines:deploy`) and promotions take any passed build and are not
//! held to the order; they wait for the stage's running deploy and report their result.

use std::collections::BTreeMap;

use slipway_core::Secret;
use slipway_store::{
    Pipeline, PipelineBuild, PipelineBuildStatus, PipelineDeployStatus, Stage, StageStrategy,
};

use super::deploy::{deploy_to, PipelineSlug, ReleaseOutcome};
use super::model::{stage_tags, DeployOrigin, PipelineError, Target};
use super::{lock, PipelinePaths};
use crate::state::Shared;

/// The one deploy waiting for a stage.
pub(crate) struct Queued {
    number: i64,
    build_id: String,
    deploy_id: String,
    origin: DeployOrigin,
}

/// Queues the deploys a passed build's strategies call for, as pushed to `branch` (its own,
/// or another branch that was moved to the same commit later). Returns lines saying what was
/// queued.
pub async fn on_passed(state: &Shared, build: &PipelineBuild, branch: &str) -> Vec<String> {
    let mut said = Vec::new();
    let stages = match state.store.stages(&build.pipeline_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not read the pipeline's stages");
            return said;
        }
    };
    let tags = stage_tags(&build.message);
    for tag in &tags {
        if !stages.iter().any(|s| &s.name == tag) {
            said.push(format!(
                " !     #{tag} in the commit message names no stage of this pipeline; not deployed there"
            ));
        }
    }
    for stage in &stages {
        let origin = match &stage.strategy {
            StageStrategy::Automatic { branch: followed } if followed == branch => {
                DeployOrigin::Automatic {
                    branch: followed.clone(),
                }
            }
            _ if tags.contains(&stage.name) => DeployOrigin::Tag,
            _ => continue,
        };
        match enqueue(state, stage, build, origin.clone()).await {
            Ok(()) => said.push(format!(
                "-----> Deploying build #{} to {} ({})",
                build.number,
                stage.name,
                origin.describe()
            )),
            Err(e) => said.push(format!(
                " !     Could not queue the deploy to {}: {e}",
                stage.name
            )),
        }
    }
    said
}

async fn enqueue(
    state: &Shared,
    stage: &Stage,
    build: &PipelineBuild,
    origin: DeployOrigin,
) -> Result<(), PipelineError> {
    let deploy_id = state
        .store
        .create_pipeline_deploy(
            &build.pipeline_id,
            &build.id,
            &stage.id,
            &origin.describe(),
            PipelineDeployStatus::Queued,
            "",
        )
        .await?;
    let mine = Queued {
        number: build.number,
        build_id: build.id.clone(),
        deploy_id: deploy_id.clone(),
        origin,
    };
    let superseded = offer(&mut lock(&state.pipelines.queues), &stage.id, mine);
    if let Some((id, newer)) = superseded {
        state
            .store
            .update_pipeline_deploy(
                &id,
                PipelineDeployStatus::Superseded,
                &format!("superseded by newer build #{newer} while waiting"),
            )
            .await?;
    }
    let (task_state, stage_id) = (state.clone(), stage.id.clone());
    tokio::spawn(tracing::Instrument::instrument(
        async move { run_queued(&task_state, &stage_id).await },
        tracing::info_span!("stage deploy", stage = %stage.name),
    ));
    Ok(())
}

/// Puts a deploy in a stage's queue of one. Newest wins: of the waiting deploy and this one,
/// the older is superseded; returns its deploy id and the newer build's number.
fn offer(
    queues: &mut std::collections::HashMap<String, Queued>,
    stage_id: &str,
    mine: Queued,
) -> Option<(String, i64)> {
    match queues.remove(stage_id) {
        Some(waiting) if waiting.number > mine.number => {
            let newer = waiting.number;
            queues.insert(stage_id.to_string(), waiting);
            Some((mine.deploy_id, newer))
        }
        Some(waiting) => {
            let newer = mine.number;
            queues.insert(stage_id.to_string(), mine);
            Some((waiting.deploy_id, newer))
        }
        None => {
            queues.insert(stage_id.to_string(), mine);
            None
        }
    }
}

/// Takes the stage's waiting deploy (if another task has not) once the stage is free.
async fn run_queued(state: &Shared, stage_id: &str) {
    let stage_lock = state.pipelines.lock(&format!("stage:{stage_id}"));
    let _guard = stage_lock.lock().await;
    let Some(queued) = lock(&state.pipelines.queues).remove(stage_id) else {
        return;
    };
    let result = async {
        let stage = state.store.stage(stage_id).await?;
        let build = state.store.pipeline_build_by_id(&queued.build_id).await?;
        if let Some(current) = &stage.current_build_id {
            let running = state.store.pipeline_build_by_id(current).await?;
            if let Some(why) = not_newer(state, &stage, &build, &running).await {
                state
                    .store
                    .update_pipeline_deploy(&queued.deploy_id, PipelineDeployStatus::Skipped, &why)
                    .await?;
                return Ok(());
            }
        }
        let mut sink = |line: &str| tracing::info!(stage = %stage.name, "{line}");
        deploy_build(
            state,
            &stage,
            &build,
            &queued.origin,
            &queued.deploy_id,
            &build.user_id,
            &mut sink,
        )
        .await
        .map(|_| ())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "a pipeline deploy failed");
    }
}

/// Why `build` is not newer than the build the stage runs, if it is not. Older means: its
/// commit is an ancestor of the running one's (a slow build of an earlier commit), or, for
/// commits on unrelated lines, a lower build number. A commit the running one is an ancestor
/// of (a branch fast-forwarded to a commit built earlier on another branch) is newer.
async fn not_newer(
    state: &Shared,
    stage: &Stage,
    build: &PipelineBuild,
    running: &PipelineBuild,
) -> Option<String> {
    if running.id == build.id {
        return Some(format!(
            "{} already runs build #{}",
            stage.name, build.number
        ));
    }
    let repo = state.settings.pipeline_repo(&build.pipeline_id);
    let is_ancestor = |a: &str, b: &str| {
        let repo = repo.clone();
        let (a, b) = (a.to_string(), b.to_string());
        async move {
            let out = tokio::process::Command::new("git")
                .args(["merge-base", "--is-ancestor", &a, &b])
                .current_dir(&repo)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .ok()?;
            match out.status.code() {
                Some(0) => Some(true),
                Some(1) => Some(false),
                _ => None,
            }
        }
    };
    let older = match is_ancestor(&build.commit_sha, &running.commit_sha).await {
        Some(true) => true,
        _ => match is_ancestor(&running.commit_sha, &build.commit_sha).await {
            Some(true) => false,
            _ => build.number < running.number,
        },
    };
    older.then(|| {
        format!(
            "{} runs newer build #{}; a strategy never deploys an older build",
            stage.name, running.number
        )
    })
}

/// Deploys a passed build to every target of a stage, records the deploy and, when every
/// target took it, makes it the stage's current build. Stops at the first target that fails.
pub async fn deploy_build(
    state: &Shared,
    stage: &Stage,
    build: &PipelineBuild,
    origin: &DeployOrigin,
    deploy_id: &str,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<ReleaseOutcome>, PipelineError> {
    let result = deploy_targets(state, stage, build, origin, deploy_id, user_id, say).await;
    let (status, detail) = match &result {
        Ok(outcomes) => (
            PipelineDeployStatus::Succeeded,
            outcomes
                .iter()
                .map(|o| format!("{} on {}", o.release, o.target))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Err(e) => (PipelineDeployStatus::Failed, e.to_string()),
    };
    state
        .store
        .update_pipeline_deploy(deploy_id, status, &detail)
        .await?;
    if result.is_ok() {
        state.store.set_stage_current(&stage.id, &build.id).await?;
    }
    result
}

async fn deploy_targets(
    state: &Shared,
    stage: &Stage,
    build: &PipelineBuild,
    origin: &DeployOrigin,
    deploy_id: &str,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<ReleaseOutcome>, PipelineError> {
    state
        .store
        .update_pipeline_deploy(deploy_id, PipelineDeployStatus::Deploying, "")
        .await?;
    let slug = slug_of(build)?;
    let targets = targets_of(state, stage).await?;
    if targets.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "stage {} has no targets; add one with `slipway pipelines:targets:add PIPELINE {} APP`",
            stage.name, stage.name
        )));
    }
    let env: BTreeMap<String, Secret> = stage
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    say(&format!(
        "-----> Deploying build #{} ({}) to {}",
        build.number,
        build.commit_sha.chars().take(7).collect::<String>(),
        stage.name
    ));
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(deploy_to(state, target, stage, &slug, &env, origin, user_id, say).await?);
    }
    Ok(outcomes)
}

fn slug_of(build: &PipelineBuild) -> Result<PipelineSlug, PipelineError> {
    if build.status != PipelineBuildStatus::Passed {
        return Err(not_passed(build));
    }
    let (Some(path), Some(checksum)) = (&build.slug_path, &build.slug_checksum) else {
        return Err(PipelineError::Invalid(format!(
            "build #{} has no slug",
            build.number
        )));
    };
    Ok(PipelineSlug {
        path: path.into(),
        checksum: checksum.clone(),
        size: build.slug_size.unwrap_or(0),
        commit_sha: build.commit_sha.clone(),
        process_types: build.process_types.clone(),
        build_number: build.number,
    })
}

pub fn not_passed(build: &PipelineBuild) -> PipelineError {
    let reason = match build.status {
        PipelineBuildStatus::Failed => build.reason.clone(),
        _ => "it has not finished yet; wait for it with `slipway builds:info`".to_string(),
    };
    PipelineError::NotPassed {
        number: build.number,
        status: build.status.as_str(),
        reason,
    }
}

async fn targets_of(state: &Shared, stage: &Stage) -> Result<Vec<Target>, PipelineError> {
    let mut targets = Vec::new();
    for row in state.store.stage_targets(&stage.id).await? {
        match row.host_target {
            Some(name) => targets.push(Target::Host(name)),
            None => targets.push(Target::App(state.store.app(&row.app_id).await?)),
        }
    }
    Ok(targets)
}

/// The stage of a pipeline by name, or an error listing the stages there are.
pub async fn find_stage(
    state: &Shared,
    pipeline: &Pipeline,
    name: &str,
) -> Result<Stage, PipelineError> {
    let stages = state.store.stages(&pipeline.id).await?;
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    stages.into_iter().find(|s| s.name == name).ok_or_else(|| {
        PipelineError::NotFound(format!(
            "Pipeline {} has no stage {name}; its stages: {}.",
            pipeline.name,
            if names.is_empty() {
                "none yet (add one with `slipway pipelines:stages:add`)".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

/// What an explicit deploy did, with its output.
pub struct Report {
    pub outcomes: Vec<ReleaseOutcome>,
    pub output: Vec<String>,
}

/// An explicit deploy (manual or promotion): any passed build, waiting for the stage's running
/// deploy. A build that did not pass is refused before anything is recorded.
pub async fn deploy_now(
    state: &Shared,
    stage: &Stage,
    build: &PipelineBuild,
    origin: DeployOrigin,
    user_id: &str,
) -> Result<Report, (PipelineError, Vec<String>)> {
    if build.status != PipelineBuildStatus::Passed {
        return Err((not_passed(build), Vec::new()));
    }
    let deploy_id = state
        .store
        .create_pipeline_deploy(
            &build.pipeline_id,
            &build.id,
            &stage.id,
            &origin.describe(),
            PipelineDeployStatus::Queued,
            "",
        )
        .await
        .map_err(|e| (e.into(), Vec::new()))?;
    let stage_lock = state.pipelines.lock(&format!("stage:{}", stage.id));
    let _guard = stage_lock.lock().await;
    let mut output = Vec::new();
    let mut say = |line: &str| output.push(line.to_string());
    let result = deploy_build(state, stage, build, &origin, &deploy_id, user_id, &mut say).await;
    match result {
        Ok(outcomes) => Ok(Report { outcomes, output }),
        Err(e) => Err((e, output)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(status: PipelineBuildStatus, reason: &str) -> PipelineBuild {
        PipelineBuild {
            id: "b".into(),
            pipeline_id: "p".into(),
            number: 4,
            branch: "main".into(),
            commit_sha: "0123456789".into(),
            message: String::new(),
            user_id: "u".into(),
            status,
            reason: reason.into(),
            slug_path: None,
            slug_checksum: None,
            slug_size: None,
            process_types: BTreeMap::new(),
            output: String::new(),
            created_at: 0,
            started_at: None,
            built_at: None,
            finished_at: None,
        }
    }

    fn queued(number: i64) -> Queued {
        Queued {
            number,
            build_id: format!("b{number}"),
            deploy_id: format!("d{number}"),
            origin: DeployOrigin::Tag,
        }
    }

    #[test]
    fn the_newest_waiting_deploy_wins() {
        let mut queues = std::collections::HashMap::new();
        assert_eq!(offer(&mut queues, "s", queued(3)), None);
        // A newer build supersedes the one waiting...
        assert_eq!(offer(&mut queues, "s", queued(5)), Some(("d3".into(), 5)));
        // ...and an older one arriving late is superseded itself.
        assert_eq!(offer(&mut queues, "s", queued(4)), Some(("d4".into(), 5)));
        assert_eq!(queues.get("s").map(|q| q.number), Some(5));
        // Stages queue independently.
        assert_eq!(offer(&mut queues, "t", queued(1)), None);
        assert_eq!(queues.len(), 2);
    }

    #[test]
    fn a_build_that_did_not_pass_is_refused_naming_why() {
        let failed = build(
            PipelineBuildStatus::Failed,
            "the tests failed: `make test` exited with status 2",
        );
        let e = slug_of(&failed).expect_err("refused").to_string();
        assert!(
            e.contains("#4 did not pass (failed: the tests failed"),
            "{e}"
        );
        let running = build(PipelineBuildStatus::Testing, "");
        let e = slug_of(&running).expect_err("refused").to_string();
        assert!(e.contains("testing: it has not finished yet"), "{e}");
    }
}
