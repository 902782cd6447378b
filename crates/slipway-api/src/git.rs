//! Git smart HTTP: `info/refs`, `git-receive-pack` and `git-upload-pack`, each piped through
//! the real `git` binary in stateless-rpc mode. Pushes run the repository's pre-receive hook
//! (the `slipway` binary, via `core.hooksPath`), which runs the build.
//!
//! Errors here are plain text: git prints a text/plain error body to the user.
//!
//! A client that goes away before git's answer is complete (a killed or interrupted `git
//! push`) ends its git process: the response body is dropped unfinished, which kills it, and
//! a push's end cancels the build its hook started (`push.rs`).

use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use slipway_store::{App, User};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};
use tracing::Instrument;

use crate::auth::{new_token, presented_token, token_hash};
use crate::push::{self, PushGrant};
use crate::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/{repo}/info/refs", get(info_refs))
        .route("/{repo}/git-receive-pack", post(receive_pack))
        .route("/{repo}/git-upload-pack", post(upload_pack))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Receive,
    Upload,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Receive => "git-receive-pack",
            Service::Upload => "git-upload-pack",
        }
    }

    pub(crate) fn subcommand(self) -> &'static str {
        match self {
            Service::Receive => "receive-pack",
            Service::Upload => "upload-pack",
        }
    }
}

pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, format!("{}\n", message.into())).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"slipway\""),
        );
    }
    response
}

/// Authenticates the request and finds the app a `<name>.git` path names.
async fn authorize(
    state: &Shared,
    headers: &HeaderMap,
    repo: &str,
) -> Result<(User, App), Response> {
    let user = authenticate(state, headers).await?;
    let Some(name) = repo.strip_suffix(".git") else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("Not a git repository path: {repo}; use /<app>.git"),
        ));
    };
    match state.store.find_app(name).await {
        Ok(Some(app)) => Ok((user, app)),
        Ok(None) => Err(text(
            StatusCode::NOT_FOUND,
            format!("No such app: {name}. Create it first with `slipway apps:create {name}`."),
        )),
        Err(e) => {
            tracing::error!(error = %e, "looking up app for git");
            Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error; see the server log.",
            ))
        }
    }
}

/// The user whose API token the request presents (as the Basic password), or git's 401.
pub(crate) async fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<User, Response> {
    let token = presented_token(headers).filter(|t| !t.is_empty() && t.len() <= 256);
    let user = match token {
        Some(t) => match state.store.user_by_token_hash(&token_hash(&t)).await {
            Ok(user) => user,
            // Not the user's fault: never answer a broken database with "wrong password".
            Err(e) => {
                tracing::error!(error = %e, "checking git credentials");
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error while checking your credentials; see the server log.",
                ));
            }
        },
        None => None,
    };
    let Some(user) = user else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "Authentication required: use your slipway API token as the password (`slipway git:remote` sets this up).",
        ));
    };
    Ok(user)
}

#[derive(Deserialize)]
pub(crate) struct InfoRefsQuery {
    pub(crate) service: Option<String>,
}

/// The service an `info/refs` request asks for, or the answer to a dumb-HTTP client.
pub(crate) fn advertised_service(query: &InfoRefsQuery) -> Result<Service, Box<Response>> {
    match query.service.as_deref() {
        Some("git-receive-pack") => Ok(Service::Receive),
        Some("git-upload-pack") => Ok(Service::Upload),
        _ => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "Only git's smart HTTP protocol is supported; use git 1.6.6 or newer.",
        ))),
    }
}

async fn info_refs(
    State(state): State<Shared>,
    Path(repo): Path<String>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Response {
    let service = match advertised_service(&query) {
        Ok(service) => service,
        Err(response) => return *response,
    };
    let (_user, app) = match authorize(&state, &headers, &repo).await {
        Ok(pair) => pair,
        Err(response) => return response,
    };
    advertise(service, &state.settings.repo_dir(&app.id), &headers).await
}

/// `info/refs?service=...` of one repository, once the caller is authorized.
pub(crate) async fn advertise(
    service: Service,
    repo_dir: &std::path::Path,
    headers: &HeaderMap,
) -> Response {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg(service.subcommand())
        .args(["--stateless-rpc", "--advertise-refs"])
        .arg(repo_dir)
        .stdin(Stdio::null());
    if let Some(proto) = git_protocol(headers) {
        cmd.env("GIT_PROTOCOL", proto);
    }
    let output = match cmd.output().await {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            tracing::error!(stderr = %String::from_utf8_lossy(&o.stderr), "git advertise-refs failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git could not read the app's repository; see the server log.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "could not run git");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git is not available on the server; see the server log.",
            );
        }
    };
    let announce = format!("# service={}\n", service.name());
    let mut body = format!("{:04x}{announce}0000", announce.len() + 4).into_bytes();
    body.extend_from_slice(&output.stdout);
    let content_type = format!("application/x-{}-advertisement", service.name());
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
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
    let (user, app) = match authorize(&state, &headers, &repo).await {
        Ok(pair) => pair,
        Err(response) => return response,
    };
    let settings = &state.settings;
    let repo_dir = settings.repo_dir(&app.id);
    let grant_state = state.clone();
    let span = tracing::info_span!("git", app = %app.name, service = service.subcommand());
    serve_rpc(
        &state,
        &repo_dir,
        headers,
        body,
        service,
        span,
        move |updates| {
            let token = new_token();
            grant_state.pushes.grant(
                &token,
                PushGrant {
                    app_id: app.id.clone(),
                    user_id: user.id.clone(),
                    updates,
                    ended: Default::default(),
                },
            );
            let settings = &grant_state.settings;
            let end_state = grant_state.clone();
            let end_token = token.clone();
            ReceiveHooks {
                hooks_dir: settings.hooks_dir(),
                env: vec![
                    (
                        "SLIPWAY_HOOK_URL",
                        format!("http://{}/internal/push-builds", settings.api_addr),
                    ),
                    ("SLIPWAY_PUSH_TOKEN", token),
                    ("SLIPWAY_APP", app.name.clone()),
                ],
                end: Box::new(move || end_state.pushes.end(&end_token)),
            }
        },
    )
    .await
}

/// The hooks a push runs with: `core.hooksPath`, their environment (the push's grant), and
/// what ends the grant once `git receive-pack` exits.
pub(crate) struct ReceiveHooks {
    pub hooks_dir: std::path::PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub end: Box<dyn FnOnce() + Send>,
}

/// Runs `git receive-pack`/`upload-pack` in stateless-rpc mode on `repo_dir` for an authorized
/// request. For a push, `grant` gets its ref updates (read before the pack) and answers with
/// the hooks to run.
pub(crate) async fn serve_rpc(
    state: &Shared,
    repo_dir: &std::path::Path,
    headers: HeaderMap,
    body: Body,
    service: Service,
    span: tracing::Span,
    grant: impl FnOnce(Vec<crate::push::RefUpdate>) -> ReceiveHooks,
) -> Response {
    let settings = &state.settings;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let raw = StreamReader::new(stream);
    let mut reader: Box<dyn AsyncRead + Unpin + Send> = if gzip {
        Box::new(async_compression::tokio::bufread::GzipDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut cmd = tokio::process::Command::new("git");
    let mut push_end: Option<Box<dyn FnOnce() + Send>> = None;
    let mut head = Vec::new();
    if service == Service::Receive {
        // The ref updates come first: the hook's grant covers exactly these.
        let updates = match push::read_commands(&mut reader).await {
            Ok((updates, consumed)) => {
                head = consumed;
                updates
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Push refused: {e}.")),
        };
        let hooks = grant(updates);
        cmd.arg("-c")
            .arg(format!("core.hooksPath={}", hooks.hooks_dir.display()));
        for (key, value) in hooks.env {
            cmd.env(key, value);
        }
        push_end = Some(hooks.end);
    }
    cmd.arg(service.subcommand())
        .arg("--stateless-rpc")
        .arg(repo_dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(proto) = git_protocol(&headers) {
        cmd.env("GIT_PROTOCOL", proto);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(end) = push_end {
                end();
            }
            tracing::error!(error = %e, "could not run git");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git is not available on the server; see the server log.",
            );
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "could not talk to git");
    };

    let limit = settings.max_push_bytes;
    let feed = async move {
        if let Err(e) = stdin.write_all(&head).await {
            tracing::debug!(error = %e, "git stopped reading the request");
            return;
        }
        // One byte over the limit tells a too-large push from one exactly at the limit.
        let mut bounded = reader.take((limit + 1).saturating_sub(head.len() as u64));
        match tokio::io::copy(&mut bounded, &mut stdin).await {
            Ok(n) if n > limit => tracing::warn!(limit, "push larger than the limit was cut off"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "git request body ended early"),
        }
        let _ = stdin.shutdown().await;
    };
    tokio::spawn(feed.instrument(span.clone()));
    let client_gone = tokio_util::sync::CancellationToken::new();
    let answer = Answer {
        inner: ReaderStream::new(stdout),
        complete: false,
        client_gone: client_gone.clone(),
    };
    let wait = async move {
        // Keep the first 64 KiB for the log, but read all of it: git must never block on a
        // full stderr pipe, however chatty the push.
        let mut errors = Vec::new();
        let drain = async {
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut errors).await;
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        };
        tokio::select! {
            () = drain => {}
            () = client_gone.cancelled() => {
                tracing::info!("the client went away before git's answer was complete; stopping git");
                let _ = child.start_kill();
            }
        }
        let status = child.wait().await;
        if let Some(end) = push_end {
            end();
        }
        if !matches!(status, Ok(s) if s.success()) && !errors.is_empty() {
            tracing::info!(stderr = %String::from_utf8_lossy(&errors), "git ended with an error");
        }
    };
    tokio::spawn(wait.instrument(span));
    let content_type = format!("application/x-{}-result", service.name());
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        Body::from_stream(answer),
    )
        .into_response()
}

/// git's answer as the response body. Dropped before git's output ended (the server stops
/// sending a body when the client's connection is gone), it says so through `client_gone`.
struct Answer {
    inner: ReaderStream<tokio::process::ChildStdout>,
    complete: bool,
    client_gone: tokio_util::sync::CancellationToken,
}

impl futures::Stream for Answer {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(None) = next {
            self.complete = true;
        }
        next
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.complete {
            self.client_gone.cancel();
        }
    }
}

fn git_protocol(headers: &HeaderMap) -> Option<String> {
    headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 256 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
}
