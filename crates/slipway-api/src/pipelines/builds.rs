//! Pipeline builds: every branch head pushed to a pipeline's remote is built once into a slug
//! and tested.
//!
//! **Build identity.** A pipeline builds as itself: its own build user (the uid table's entry
//! for the pipeline id), its own build cache (`<builds>/cache/<pipeline-id>`), no config vars.
//! Buildpacks: those chosen for the pipeline's first target app (`buildpacks:set` on it), else
//! the repository's `.buildpacks` or detection, as an app push does. The slug is kept at
//! `<data>/pipeline-slugs/<pipeline-id>/<build-id>.tgz`.
//!
//! **Tests** (Heroku CI): `app.json` `environments.test.scripts.test` runs in a one-off dyno
//! (`test.N`) of the new slug with `environments.test.env` as its only config, limited by
//! `--build-timeout`. The build is `passed` only when the build and the test command exit 0;
//! with no test command it passes with a notice. A malformed `app.json` fails the build, naming
//! the key. A pushed commit that was built before (on any branch) is not built again.
//!
//! **Output.** Each build's transcript (1 MiB kept) is live in memory while it runs
//! ([`Live`]), so the push that started it can stream it, and stored with the build.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use slipway_build::BuildEvent;
use slipway_core::AppJson;
use slipway_store::{Pipeline, PipelineBuild, PipelineBuildStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::run::{run_command, Command, Masker};
use super::{lock, PipelinePaths};
use crate::push::RefUpdate;
use crate::state::Shared;

/// A build transcript kept at most this long.
pub const MAX_TRANSCRIPT: usize = 1024 * 1024;
/// A commit message is read at most this long.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Default)]
struct LiveText {
    text: String,
    cut: bool,
    done: bool,
}

/// A running build's transcript, followed by the push that started it.
pub struct Live {
    state: Mutex<LiveText>,
    changed: watch::Sender<u64>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            state: Mutex::new(LiveText::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Live {
    pub fn line(&self, text: &str) {
        {
            let mut s = lock(&self.state);
            if s.text.len() + text.len() < MAX_TRANSCRIPT {
                s.text.push_str(text);
                s.text.push('\n');
            } else if !s.cut {
                s.cut = true;
                s.text.push_str("[output cut at 1 MiB]\n");
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn finish(&self) {
        lock(&self.state).done = true;
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn transcript(&self) -> String {
        lock(&self.state).text.clone()
    }

    /// Sends the transcript as it grows until the build has finished. Stops early (the
    /// build goes on) when the receiver is gone.
    pub async fn follow(&self, tx: &mpsc::Sender<bytes::Bytes>) {
        let mut rx = self.changed.subscribe();
        let mut offset = 0;
        loop {
            rx.borrow_and_update();
            let (chunk, done) = {
                let s = lock(&self.state);
                (s.text.get(offset..).unwrap_or_default().to_string(), s.done)
            };
            offset += chunk.len();
            if !chunk.is_empty() && tx.send(bytes::Bytes::from(chunk)).await.is_err() {
                return;
            }
            if done || rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// What a push asked to build: one entry per updated branch.
pub enum Started {
    Build(PipelineBuild, Arc<Live>),
    /// The commit was built before, as this build.
    AlreadyBuilt {
        branch: String,
        build: PipelineBuild,
    },
    /// A deleted branch or a tag: nothing to build.
    Skipped(String),
}

/// Creates the builds for a push's ref updates (already applied by git) and starts them.
pub async fn start_builds(
    state: &Shared,
    pipeline: &Pipeline,
    user_id: &str,
    updates: &[RefUpdate],
) -> Result<Vec<Started>, super::PipelineError> {
    let mut started = Vec::new();
    for update in updates {
        let Some(branch) = update.refname.strip_prefix("refs/heads/") else {
            started.push(Started::Skipped(format!(
                "{} is not a branch; not built",
                update.refname
            )));
            continue;
        };
        if update.new.bytes().all(|b| b == b'0') {
            started.push(Started::Skipped(format!("{branch} was deleted")));
            continue;
        }
        if let Some(build) = state
            .store
            .pipeline_build_of_commit(&pipeline.id, &update.new)
            .await?
        {
            started.push(Started::AlreadyBuilt {
                branch: branch.to_string(),
                build,
            });
            continue;
        }
        let message = commit_message(state, pipeline, &update.new).await;
        let build = state
            .store
            .create_pipeline_build(&pipeline.id, branch, &update.new, &message, user_id)
            .await?;
        let live = Arc::new(Live::default());
        lock(&state.pipelines.live).insert(build.id.clone(), live.clone());
        let span =
            tracing::info_span!("pipeline build", pipeline = %pipeline.name, number = build.number);
        let (task_state, task_pipeline, task_build, task_live) =
            (state.clone(), pipeline.clone(), build.clone(), live.clone());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                run_build(&task_state, &task_pipeline, &task_build, &task_live).await;
                lock(&task_state.pipelines.live).remove(&task_build.id);
            },
            span,
        ));
        started.push(Started::Build(build, live));
    }
    Ok(started)
}

async fn commit_message(state: &Shared, pipeline: &Pipeline, commit: &str) -> String {
    let out = tokio::process::Command::new("git")
        .args(["log", "-1", "--format=%B", commit])
        .current_dir(state.settings.pipeline_repo(&pipeline.id))
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            let mut bytes = o.stdout;
            bytes.truncate(MAX_MESSAGE);
            String::from_utf8_lossy(&bytes).trim().to_string()
        }
        _ => String::new(),
    }
}

/// Builds, tests and settles one build, then lets the strategies deploy it.
async fn run_build(state: &Shared, pipeline: &Pipeline, build: &PipelineBuild, live: &Live) {
    let short: String = build.commit_sha.chars().take(7).collect();
    live.line(&format!(
        "-----> Build #{} of pipeline {} ({} {short})",
        build.number, pipeline.name, build.branch
    ));
    let result = build_and_test(state, pipeline, build, live).await;
    let (status, reason) = match &result {
        Ok(notice) => (PipelineBuildStatus::Passed, notice.clone()),
        Err(why) => (PipelineBuildStatus::Failed, why.clone()),
    };
    match &result {
        Ok(_) => live.line(&format!("-----> Build #{} passed", build.number)),
        Err(why) => live.line(&format!(" !     Build #{} failed: {why}", build.number)),
    }
    if let Err(e) = state
        .store
        .finish_pipeline_build(&build.id, status, &reason, &live.transcript())
        .await
    {
        tracing::error!(error = %e, "could not record the build's result");
    }
    if status == PipelineBuildStatus::Passed {
        match state.store.pipeline_build_by_id(&build.id).await {
            Ok(passed) => {
                let queued = super::strategies::on_passed(state, &passed, &passed.branch).await;
                for line in queued {
                    live.line(&line);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not reload the passed build"),
        }
    }
    live.finish();
}

/// `Ok(notice)` when the build passed (the notice may be empty), `Err(why)` when not.
async fn build_and_test(
    state: &Shared,
    pipeline: &Pipeline,
    build: &PipelineBuild,
    live: &Live,
) -> Result<String, String> {
    let settings = &state.settings;
    let build_lock = state.pipelines.lock(&format!("build:{}", pipeline.id));
    let guard = match build_lock.clone().try_lock_owned() {
        Ok(g) => g,
        Err(_) => {
            live.line("-----> Waiting for the pipeline's previous build to finish compiling...");
            build_lock.lock_owned().await
        }
    };
    state
        .store
        .set_pipeline_build_status(&build.id, PipelineBuildStatus::Building)
        .await
        .map_err(|e| format!("could not record the build: {e}"))?;
    tokio::fs::create_dir_all(settings.build_tmp())
        .await
        .map_err(|e| format!("could not create the build directory: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("pipeline-build-")
        .tempdir_in(settings.build_tmp())
        .map_err(|e| format!("could not create the build directory: {e}"))?;
    let src = tmp.path().join("app");
    std::fs::create_dir(&src).map_err(|e| format!("could not create the build directory: {e}"))?;
    extract_commit(state, pipeline, &build.commit_sha, &src).await?;
    // Read before the buildpacks run (they may move files); refused with the file and key.
    let app_json = AppJson::read(&src).map_err(|e| format!("app.json: {e}"))?;

    let slug_dir = settings.pipeline_slugs(&pipeline.id);
    tokio::fs::create_dir_all(&slug_dir)
        .await
        .map_err(|e| format!("could not create the slug directory: {e}"))?;
    let slug_path = slug_dir.join(format!("{}.tgz", build.id));
    let compiled = compile(state, pipeline, build, &src, &slug_path, live).await;
    drop(tmp);
    let (process_types, info) = match compiled {
        Ok(pair) => pair,
        Err(e) => {
            let _ = tokio::fs::remove_file(&slug_path).await;
            return Err(e);
        }
    };
    state
        .store
        .set_pipeline_build_slug(
            &build.id,
            &slug_path.display().to_string(),
            &info.checksum,
            i64::try_from(info.size).unwrap_or(i64::MAX),
            &process_types,
        )
        .await
        .map_err(|e| format!("could not record the slug: {e}"))?;
    drop(guard);

    let test = app_json
        .as_ref()
        .and_then(|a| a.test_script.clone())
        .filter(|s| !s.trim().is_empty());
    let Some(test) = test else {
        let notice =
            "no test script (app.json environments.test.scripts.test): passed without tests";
        live.line(&format!("-----> Notice: {notice}"));
        return Ok(notice.to_string());
    };
    state
        .store
        .set_pipeline_build_status(&build.id, PipelineBuildStatus::Testing)
        .await
        .map_err(|e| format!("could not record the build: {e}"))?;
    let test_env = app_json.map(|a| a.test_env).unwrap_or_default();
    live.line(&format!(
        "-----> Running tests: `{test}` (test.{})",
        build.number
    ));
    let spec = slipway_runtime::ReleaseSpec {
        app_id: pipeline.id.clone(),
        version: build.number,
        slug_path: slug_path.clone(),
        slug_checksum: info.checksum.clone(),
        env: test_env,
        healthchecks: Vec::new(),
    };
    let mut on_line = |line: &str| live.line(&format!("       {line}"));
    let ran = run_command(
        state,
        Command {
            release: spec,
            name: format!("test.{}", build.number),
            command: &test,
            env: BTreeMap::new(),
            time_to_live: settings.build_timeout,
        },
        &Masker::default(),
        &mut on_line,
    )
    .await?;
    if ran.timed_out {
        return Err(format!(
            "the tests timed out after {} seconds (--build-timeout)",
            settings.build_timeout.as_secs()
        ));
    }
    if ran.code != 0 {
        return Err(format!(
            "the tests failed: `{test}` exited with status {}",
            ran.code
        ));
    }
    live.line("-----> Tests passed");
    Ok(String::new())
}

/// `git archive` of the commit from the pipeline's repository, extracted with the same
/// bounds as a push's source.
async fn extract_commit(
    state: &Shared,
    pipeline: &Pipeline,
    commit: &str,
    dest: &std::path::Path,
) -> Result<(), String> {
    let repo = state.settings.pipeline_repo(&pipeline.id);
    let limits = state.settings.build_limits;
    let (commit, dest) = (commit.to_string(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("git")
            .args(["archive", "--format=tar", &commit])
            .current_dir(&repo)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("could not run git archive: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| "git archive has no output".to_string())?;
        let extracted = slipway_build::extract_source(stdout, &dest, &limits);
        let status = child.wait();
        extracted.map_err(|e| e.to_string())?;
        match status {
            Ok(s) if s.success() => Ok(()),
            _ => Err("git archive of the pushed commit failed".to_string()),
        }
    })
    .await
    .map_err(|e| format!("the build was interrupted: {e}"))?
}

/// The buildpacks of the pipeline's first target app, if it chose any.
async fn chosen_buildpacks(state: &Shared, pipeline: &Pipeline) -> Result<Vec<String>, String> {
    let stages = state
        .store
        .stages(&pipeline.id)
        .await
        .map_err(|e| format!("could not read the pipeline's stages: {e}"))?;
    for stage in stages {
        let targets = state
            .store
            .stage_targets(&stage.id)
            .await
            .map_err(|e| format!("could not read the stage's targets: {e}"))?;
        if let Some(first) = targets.iter().find(|t| t.host_target.is_none()) {
            return state
                .store
                .buildpacks(&first.app_id)
                .await
                .map_err(|e| format!("could not read the buildpacks of {}: {e}", first.app_name));
        }
    }
    Ok(Vec::new())
}

async fn compile(
    state: &Shared,
    pipeline: &Pipeline,
    build: &PipelineBuild,
    src: &std::path::Path,
    slug_path: &std::path::Path,
    live: &Live,
) -> Result<(BTreeMap<String, String>, slipway_build::SlugInfo), String> {
    let settings = &state.settings;
    let chosen = chosen_buildpacks(state, pipeline).await?;
    let no_config = BTreeMap::new();
    let buildpacks =
        slipway_build::resolve_buildpacks(&chosen, &no_config, src).map_err(|e| e.to_string())?;
    let mut spec = crate::deploy::compile_spec(state, &pipeline.id, src, &build.commit_sha)?;
    spec.buildpacks = buildpacks;
    let build_user = spec.run_as;
    let limits = settings.build_limits;
    let (events, mut received) = mpsc::channel::<BuildEvent>(256);
    let slug_path = slug_path.to_path_buf();
    let work = async move {
        if let Some(user) = build_user {
            slipway_build::kill_user_processes(user).await?;
        }
        // A pipeline build goes on when its pusher leaves: the commit is stored already.
        let compiled =
            slipway_build::run_buildpacks(&spec, &events, CancellationToken::new()).await;
        if let Some(user) = build_user {
            slipway_build::kill_user_processes(user).await?;
        }
        let compiled = compiled?;
        let info = slipway_build::pack_slug(&spec.build_dir, &slug_path, &limits, &events).await?;
        Ok::<_, slipway_build::BuildError>((compiled, info))
    };
    let forward = async {
        while let Some(event) = received.recv().await {
            if let Some(line) = event.line() {
                live.line(line);
            }
        }
    };
    let (result, ()) = tokio::join!(work, forward);
    let (compiled, info) = result.map_err(|e| e.to_string())?;
    live.line(&format!("       {}", info.checksum));
    Ok((compiled.process_types, info))
}
