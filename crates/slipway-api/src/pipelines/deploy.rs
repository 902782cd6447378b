//! Putting a pipeline's slug live on one target.
//!
//! [`release_slug`] is the one place that knows how a deploy runs. Today it creates the
//! release through the release path every push uses (slug record, `deploy_release_with_status`,
//! the release phase, `converge`); the deploy runner (`crate::deploys`) will take over its body.
//! Nothing else in `pipelines/` depends on how a deploy runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use slipway_core::Secret;
use slipway_store::{App, NewSlug, ReleaseStatus};

use super::model::{DeployOrigin, PipelineError, Target};
use super::run::{run_command, Command, Masker};
use crate::control::converge_app;
use crate::state::{AppLock, Shared};

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
    pub version: i64,
    pub checksum: String,
}

/// Deploys `slug` to any kind of target.
pub async fn deploy_to(
    state: &Shared,
    target: &Target,
    slug: &PipelineSlug,
    env: &BTreeMap<String, Secret>,
    origin: &DeployOrigin,
    user_id: &str,
    say: &mut (dyn FnMut(&str) + Send),
) -> Result<ReleaseOutcome, PipelineError> {
    match target {
        Target::App(app) => release_slug(state, app, slug, env, origin, user_id, say).await,
    }
}

/// Makes `slug` the app's next release: the slug file is hard-linked (or copied) into the
/// app's slug directory under the same checksum, the release takes the app's own config,
/// a `release:` command runs first (with the stage's environment added, masked in its output)
/// and the dynos converge onto it once it passed. A failed release phase leaves the previous
/// release serving.
pub async fn release_slug(
    state: &Shared,
    app: &App,
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
    let release_lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = release_lock.lock().await;
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
    let short: String = slug.commit_sha.chars().take(7).collect();
    let description = format!(
        "Deploy {short} (pipeline build #{}, {})",
        slug.build_number,
        origin.describe()
    );
    let release_command = slug.process_types.get("release").cloned();
    let status = match release_command {
        Some(_) => ReleaseStatus::Pending,
        None => ReleaseStatus::Succeeded,
    };
    let release = match state
        .store
        .deploy_release_with_status(&app.id, &record, &description, user_id, status)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let _ = state.store.delete_slug(&record.id).await;
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e.into());
        }
    };
    state.api_log(&app.id, &description);
    if let Some(command) = release_command {
        say(&format!(
            "-----> Running release command `{command}` on {} (v{})...",
            app.name, release.version
        ));
        let exposed: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        let masker = Masker::new(exposed.values());
        let spec = slipway_runtime::ReleaseSpec {
            app_id: app.id.clone(),
            version: release.version,
            slug_path: dest.clone(),
            slug_checksum: record.checksum.clone(),
            env: release.config.clone(),
        };
        let name = format!("release.{}", release.version);
        let mut output = String::new();
        let logs = state.logs.clone();
        let mut on_line = |line: &str| {
            logs.write(&app.id, slipway_logs::Source::App, &name, line);
            say(&format!("       {line}"));
            if output.len() + line.len() < crate::oneoff::MAX_RELEASE_OUTPUT {
                output.push_str(line);
                output.push('\n');
            }
        };
        let timeout: Duration = state.settings.release_phase_timeout;
        let ran = run_command(
            state,
            Command {
                release: spec,
                name: name.clone(),
                command: &command,
                env: exposed.clone(),
                time_to_live: timeout,
            },
            &masker,
            &mut on_line,
        )
        .await;
        let _ = state.store.set_release_output(&release.id, &output).await;
        let verdict = match ran {
            Ok(r) if r.timed_out => Err(format!(
                "the release command timed out after {} seconds; v{} was not released",
                timeout.as_secs(),
                release.version
            )),
            Ok(r) if r.code != 0 => Err(format!(
                "the release command `{command}` exited with status {}; v{} was not released and the previous release keeps serving",
                r.code, release.version
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        let status = if verdict.is_ok() {
            ReleaseStatus::Succeeded
        } else {
            ReleaseStatus::Failed
        };
        state.store.set_release_status(&release.id, status).await?;
        if let Err(why) = verdict {
            state.api_log(
                &app.id,
                &format!("Release v{} failed: {why}", release.version),
            );
            return Err(failed(why));
        }
    }
    converge_app(state, &app.id)
        .await
        .map_err(|e| failed(format!("could not start dynos: {}", e.message)))?;
    say(&format!(
        "       Released v{} on {} ({})",
        release.version,
        app.name,
        state.settings.web_url(&app.name)
    ));
    Ok(ReleaseOutcome {
        target: format!("app {}", app.name),
        version: release.version,
        checksum: record.checksum,
    })
}
