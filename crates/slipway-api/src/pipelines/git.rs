//! A pipeline's own git remote: `/pipelines/P.git` over smart HTTP, authenticated as apps'
//! remotes are (the API token as the Basic password), served by `crate::git`'s machinery.
//!
//! Pipeline repositories run one hook, `post-receive` (`slipway hook post-receive`, in
//! `<data>/pipeline-hooks`): once git has stored the pushed commits and moved the branches,
//! it posts the push's ref updates to `POST /internal/pipeline-builds` with the push's
//! single-use token. The server builds and tests each updated branch head and streams the
//! output back, which git shows as `remote:` lines. Heroku CI's behaviour: the push itself
//! succeeds once the commits are stored, whatever the build; the pusher sees the result, and
//! a pusher who leaves does not stop the build (`slipway builds --pipeline P` shows it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use slipway_store::Pipeline;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::builds::{start_builds, Started};
use super::{lock, PipelinePaths};
use crate::auth::{new_token, presented_token};
use crate::error::ApiError;
use crate::git::{
    advertise, advertised_service, authenticate, serve_rpc, text, InfoRefsQuery, ReceiveHooks,
    Service,
};
use crate::push::RefUpdate;
use crate::state::Shared;

/// The ref updates a hook posts are at most this long.
const MAX_UPDATES_BODY: usize = 1024 * 1024;
/// A grant whose receive-pack never reported its exit dies after this long.
const MAX_GRANT_AGE: Duration = Duration::from_secs(6 * 3600);

/// A push in progress to a pipeline's remote.
pub(crate) struct Grant {
    pipeline_id: String,
    user_id: String,
    updates: Vec<RefUpdate>,
    granted_at: Instant,
    used: bool,
}

pub fn git_routes() -> Router<Shared> {
    Router::new()
        .route("/pipelines/{pipeline}/info/refs", get(info_refs))
        .route("/pipelines/{pipeline}/git-receive-pack", post(receive_pack))
        .route("/pipelines/{pipeline}/git-upload-pack", post(upload_pack))
        .route("/internal/pipeline-builds", post(pipeline_builds))
}

async fn find(
    state: &Shared,
    headers: &HeaderMap,
    repo: &str,
) -> Result<(String, Pipeline), Response> {
    let user = authenticate(state, headers).await?;
    let Some(name) = repo.strip_suffix(".git") else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("Not a git repository path: /pipelines/{repo}; use /pipelines/<pipeline>.git"),
        ));
    };
    match state.store.find_pipeline(name).await {
        Ok(Some(p)) => Ok((user.id, p)),
        Ok(None) => Err(text(
            StatusCode::NOT_FOUND,
            format!(
                "No such pipeline: {name}. Create it first with `slipway pipelines:create {name}`."
            ),
        )),
        Err(e) => {
            tracing::error!(error = %e, "looking up a pipeline for git");
            Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error; see the server log.",
            ))
        }
    }
}

async fn info_refs(
    State(state): State<Shared>,
    Path(repo): Path<String>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Response {
    let service = match advertised_service(&query) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (_, pipeline) = match find(&state, &headers, &repo).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    advertise(
        service,
        &state.settings.pipeline_repo(&pipeline.id),
        &headers,
    )
    .await
}

async fn receive_pack(
    state: State<Shared>,
    repo: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    rpc(state, repo, headers, body, Service::Receive).await
}

async fn upload_pack(
    state: State<Shared>,
    repo: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    rpc(state, repo, headers, body, Service::Upload).await
}

async fn rpc(
    State(state): State<Shared>,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Body,
    service: Service,
) -> Response {
    let (user_id, pipeline) = match find(&state, &headers, &repo).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if service == Service::Receive {
        if let Err(e) = ensure_hook(&state).await {
            tracing::error!(error = %e, "could not write the pipeline hook");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error while preparing the push; see the server log.",
            );
        }
    }
    let repo_dir = state.settings.pipeline_repo(&pipeline.id);
    let span =
        tracing::info_span!("git", pipeline = %pipeline.name, service = service.subcommand());
    let grant_state = state.clone();
    serve_rpc(
        &state,
        &repo_dir,
        headers,
        body,
        service,
        span,
        move |updates| {
            let token = new_token();
            {
                let mut grants = lock(&grant_state.pipelines.grants);
                grants.retain(|_, g| g.granted_at.elapsed() < MAX_GRANT_AGE);
                grants.insert(
                    token.clone(),
                    Grant {
                        pipeline_id: pipeline.id.clone(),
                        user_id,
                        updates,
                        granted_at: Instant::now(),
                        used: false,
                    },
                );
            }
            let settings = &grant_state.settings;
            let end_state = grant_state.clone();
            let end_token = token.clone();
            ReceiveHooks {
                hooks_dir: settings.pipeline_hooks(),
                env: vec![
                    (
                        "SLIPWAY_HOOK_URL",
                        format!("http://{}/internal/pipeline-builds", settings.api_addr),
                    ),
                    ("SLIPWAY_PUSH_TOKEN", token),
                    ("SLIPWAY_PIPELINE", pipeline.name.clone()),
                ],
                end: Box::new(move || {
                    lock(&end_state.pipelines.grants).remove(&end_token);
                }),
            }
        },
    )
    .await
}

/// Writes `<data>/pipeline-hooks/post-receive` (this binary) if it is not there as it should be.
async fn ensure_hook(state: &Shared) -> std::io::Result<()> {
    let dir = state.settings.pipeline_hooks();
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join("post-receive");
    let quoted = state
        .settings
        .hook_binary
        .display()
        .to_string()
        .replace('\'', "'\\''");
    let script = format!(
        "#!/bin/sh\n# Written by slipway: builds and tests what was pushed to a pipeline.\nexec '{quoted}' hook post-receive\n"
    );
    if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(script.as_str()) {
        return Ok(());
    }
    let tmp = dir.join(format!(".post-receive.{}", uuid::Uuid::new_v4()));
    tokio::fs::write(&tmp, script).await?;
    tokio::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Parses `old new ref` lines.
fn parse_updates(body: &str) -> Option<Vec<RefUpdate>> {
    let is_id =
        |id: &str| (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(old), Some(new), Some(refname), None) if is_id(old) && is_id(new) => {
                    Some(RefUpdate {
                        old: old.to_string(),
                        new: new.to_string(),
                        refname: refname.to_string(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// `POST /internal/pipeline-builds`: the post-receive hook of a pipeline push. The token must
/// be a live push's, unused, and every update one the push carried.
async fn pipeline_builds(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let Some(token) = presented_token(&headers) else {
        return ApiError::unauthorized().into_response();
    };
    let bytes = match axum::body::to_bytes(body, MAX_UPDATES_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_request(format!(
                "The ref updates must be at most {MAX_UPDATES_BODY} bytes"
            ))
            .into_response()
        }
    };
    let Some(updates) = std::str::from_utf8(&bytes).ok().and_then(parse_updates) else {
        return ApiError::bad_request("The body must be git's `old new ref` lines").into_response();
    };
    let grant = {
        let mut grants = lock(&state.pipelines.grants);
        match grants.get_mut(&token) {
            Some(g)
                if !g.used
                    && g.granted_at.elapsed() < MAX_GRANT_AGE
                    && updates.iter().all(|u| g.updates.contains(u)) =>
            {
                g.used = true;
                Some((g.pipeline_id.clone(), g.user_id.clone()))
            }
            _ => None,
        }
    };
    let Some((pipeline_id, user_id)) = grant else {
        tracing::warn!(
            "refused a pipeline build request: unknown, used or foreign token or updates"
        );
        return ApiError::unauthorized().into_response();
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(tracing::Instrument::instrument(
        stream_builds(state, pipeline_id, user_id, updates, tx),
        tracing::info_span!("pipeline push"),
    ));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stream_builds(
    state: Shared,
    pipeline_id: String,
    user_id: String,
    updates: Vec<RefUpdate>,
    tx: mpsc::Sender<Bytes>,
) {
    let say = |line: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Bytes::from(format!("{line}\n"))).await;
        }
    };
    let pipeline = match state.store.find_pipeline(&pipeline_id).await {
        Ok(Some(p)) => p,
        _ => {
            say(" !     The pipeline is gone; nothing was built.".into()).await;
            return;
        }
    };
    let started = match start_builds(&state, &pipeline, &user_id, &updates).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not start pipeline builds");
            say(" !     Internal error: the builds could not start; see the server log.".into())
                .await;
            return;
        }
    };
    let mut summary: HashMap<i64, String> = HashMap::new();
    for entry in &started {
        match entry {
            Started::Skipped(why) => say(format!("-----> {why}")).await,
            Started::AlreadyBuilt { branch, build } => {
                say(format!(
                    "-----> {branch}: commit {} was built before as build #{} ({}); not built again",
                    build.commit_sha.chars().take(7).collect::<String>(),
                    build.number,
                    build.status.as_str()
                ))
                .await;
                // A passed build moved to another branch (a fast-forward merge) goes where that
                // branch's strategies say; one still running does when it passes on its own branch.
                if build.status == slipway_store::PipelineBuildStatus::Passed {
                    for line in super::strategies::on_passed(&state, build, branch).await {
                        say(line).await;
                    }
                }
            }
            Started::Build(build, live) => {
                live.follow(&tx).await;
                if tx.is_closed() {
                    return;
                }
                if let Ok(done) = state.store.pipeline_build_by_id(&build.id).await {
                    summary.insert(done.number, done.status.as_str().to_string());
                }
            }
        }
    }
    let mut numbers: Vec<_> = summary.into_iter().collect();
    numbers.sort();
    for (number, status) in numbers {
        say(format!(
            "=====> Build #{number} {status}: `slipway builds:info {number} --pipeline {}` for details",
            pipeline.name
        ))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_updates;

    #[test]
    fn updates_are_old_new_ref_lines() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let parsed = parse_updates(&format!("{a} {b} refs/heads/main\n{b} {a} refs/heads/x\n"))
            .expect("parsed");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].refname, "refs/heads/x");
        assert!(parse_updates("nope\n").is_none());
        assert!(parse_updates(&format!("{a} {b}\n")).is_none());
    }
}
