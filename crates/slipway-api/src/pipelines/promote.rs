//! Promotion (Heroku pipelines): the slug a stage runs goes to the next stage without being
//! rebuilt. The same file (hard-linked, or copied across file systems) under the same checksum
//! becomes a release of each next-stage target with that target's own config; its release
//! phase runs as on any deploy.

use slipway_store::Pipeline;

use super::model::{DeployOrigin, PipelineError};
use super::strategies::{deploy_now, find_stage, Report};
use crate::state::Shared;

/// Promotes what `from` runs to the stage after it. Returns the next stage's name and the report.
pub async fn promote(
    state: &Shared,
    pipeline: &Pipeline,
    from: &str,
    user_id: &str,
) -> Result<(String, Report), (PipelineError, Vec<String>)> {
    let plain = |e: PipelineError| (e, Vec::new());
    let source = find_stage(state, pipeline, from).await.map_err(plain)?;
    let stages = state
        .store
        .stages(&pipeline.id)
        .await
        .map_err(|e| plain(e.into()))?;
    let next = stages
        .iter()
        .skip_while(|s| s.id != source.id)
        .nth(1)
        .cloned()
        .ok_or_else(|| {
            plain(PipelineError::Invalid(format!(
                "{from} is the last stage of pipeline {}; there is nothing to promote to (add a stage with `slipway pipelines:stages:add {} NAME --after {from}`)",
                pipeline.name, pipeline.name
            )))
        })?;
    let Some(current) = &source.current_build_id else {
        return Err(plain(PipelineError::Invalid(format!(
            "{from} runs no build of pipeline {} yet; deploy one first (`slipway pipelines:deploy BUILD --to {from} -p {}`)",
            pipeline.name, pipeline.name
        ))));
    };
    let build = state
        .store
        .pipeline_build_by_id(current)
        .await
        .map_err(|e| plain(e.into()))?;
    let origin = DeployOrigin::Promotion {
        from: from.to_string(),
    };
    let report = deploy_now(state, &next, &build, origin, user_id).await?;
    Ok((next.name, report))
}
