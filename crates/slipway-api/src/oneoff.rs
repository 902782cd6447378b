//! One-off dynos on the control plane: `run` attaching to them, and the release phase.
//!
//! **Attach.** `POST /apps/{app}/dynos {"attach": true, ...}` (routes/dynos.rs) grants a
//! single-use secret, valid [`ATTACH_TTL`], and answers with
//! `attach_url = http://API/dynos/attach/SECRET`. The client opens that URL on the API's own
//! listener with an HTTP/1.1 upgrade (`Connection: Upgrade`, `Upgrade: slipway-attach`); the
//! one-off starts only then (so no output is lost), the server answers `101 Switching
//! Protocols`, and from there the connection is the raw byte stream both ways: the terminal
//! (or stdin, and stdout with stderr) of the command. A client that half-closes its side
//! closes the command's stdin. When the command has exited the server writes a last line,
//! [`EXIT_MARKER`]`N\n` (Heroku's `\u{FFFF} heroku-command-exit-status: N`), and closes.
//! The official heroku CLI's `rendezvous://` TLS protocol is not served: it needs a TLS
//! listener with a certificate the CLI trusts, which slipway does not have yet.
//!
//! **Release phase.** A release whose slug declares `release:` is created pending;
//! [`finish_release`] runs the command as a one-off (`release.N`, N the version) with the
//! release's slug and config, its output to the pusher (if any), to the logs and kept with the
//! release (at most [`MAX_RELEASE_OUTPUT`]); exit 0 makes the release succeed, anything else
//! or the timeout makes it fail, and the previous release keeps serving.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use slipway_logs::{Source, MAX_LINE_BYTES};
use slipway_runtime::{
    DynoSize, OneOff, OneOffHandle, OneOffIo, OneOffMode, OneOffRequest, ReleaseSpec,
};
use slipway_store::{App, Release, ReleaseStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::state::Shared;

/// How long an attach URL stays valid.
pub const ATTACH_TTL: Duration = Duration::from_secs(60);
/// The last line of an attached one-off's stream, followed by the exit status.
pub const EXIT_MARKER: &str = "\u{FFFF} heroku-command-exit-status: ";
/// The `Upgrade` protocol name of the attach stream.
pub const ATTACH_PROTOCOL: &str = "slipway-attach";
/// A release phase's output kept with its release.
pub const MAX_RELEASE_OUTPUT: usize = 1024 * 1024;

/// A one-off waiting for its client.
pub struct Waiting {
    pub app_id: String,
    pub release_id: String,
    pub request: OneOffRequest,
    pub expires: Instant,
}

/// One-offs waiting to be attached, and the running ones' handles (for resizing).
#[derive(Default)]
pub struct OneOffs {
    waiting: Mutex<HashMap<String, Waiting>>,
    running: Mutex<HashMap<(String, String), Running>>,
}

/// A running one-off, as `GET /apps/{app}/dynos` lists it.
#[derive(Clone)]
pub struct Running {
    pub handle: OneOffHandle,
    pub id: String,
    pub command: String,
    pub size: String,
    pub release_version: i64,
    pub release_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OneOffs {
    pub fn grant(&self, secret: &str, waiting: Waiting) {
        let mut map = lock(&self.waiting);
        let now = Instant::now();
        map.retain(|_, w| w.expires > now);
        map.insert(secret.to_string(), waiting);
    }

    /// The one-off a secret grants, once.
    pub fn take(&self, secret: &str) -> Option<Waiting> {
        lock(&self.waiting)
            .remove(secret)
            .filter(|w| w.expires > Instant::now())
    }

    pub fn track(&self, app_id: &str, name: &str, running: Running) {
        lock(&self.running).insert((app_id.to_string(), name.to_string()), running);
    }

    pub fn untrack(&self, app_id: &str, name: &str) {
        lock(&self.running).remove(&(app_id.to_string(), name.to_string()));
    }

    pub fn handle(&self, app_id: &str, name: &str) -> Option<OneOffHandle> {
        lock(&self.running)
            .get(&(app_id.to_string(), name.to_string()))
            .map(|r| r.handle.clone())
    }

    /// An app's running one-offs, by name.
    pub fn list(&self, app_id: &str) -> Vec<(String, Running)> {
        let mut list: Vec<(String, Running)> = lock(&self.running)
            .iter()
            .filter(|((a, _), _)| a == app_id)
            .map(|((_, n), r)| (n.clone(), r.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

/// What a one-off of `release` runs with.
pub async fn release_spec(state: &Shared, release: &Release) -> ApiResult<ReleaseSpec> {
    let slug_id = release.slug_id.as_deref().ok_or_else(|| {
        ApiError::invalid(
            "The app has no slug to run yet; push with `git push slipway main` first.",
        )
    })?;
    let slug = state.store.slug(slug_id).await?;
    Ok(ReleaseSpec {
        app_id: release.app_id.clone(),
        version: release.version,
        slug_path: slug.path.into(),
        slug_checksum: slug.checksum,
        env: release.config.clone(),
        healthchecks: Vec::new(),
    })
}

/// `GET /dynos/attach/{secret}` with `Upgrade: slipway-attach`: starts the one-off and
/// bridges the connection to it. The secret is the credential (single use, one minute).
pub async fn attach(
    State(state): State<Shared>,
    Path(secret): Path<String>,
    mut req: Request,
) -> Response {
    let upgrade_asked = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_PROTOCOL));
    if !upgrade_asked {
        return ApiError::bad_request(format!(
            "Attach with an HTTP/1.1 upgrade: `Connection: Upgrade` and `Upgrade: {ATTACH_PROTOCOL}`."
        ))
        .into_response();
    }
    let Some(waiting) = state.one_offs.take(&secret) else {
        return ApiError::not_found(
            "This attach URL is unknown, used or expired (it is valid once, for one minute); run the command again.",
        )
        .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let app_id = waiting.app_id.clone();
    let (command, size, version) = (
        waiting.request.command.clone(),
        waiting.request.size.name.clone(),
        waiting.request.release.version,
    );
    let release_id = waiting.release_id.clone();
    let one_off = match state.dynos.run_one_off(waiting.request).await {
        Ok(o) => o,
        Err(e) => return ApiError::internal("starting the one-off dyno", e).into_response(),
    };
    let span = tracing::info_span!("attach", app = %app_id, dyno = %one_off.name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let name = one_off.name.clone();
            state.one_offs.track(
                &app_id,
                &name,
                Running {
                    handle: one_off.handle.clone(),
                    id: one_off.id.clone(),
                    command,
                    size,
                    release_version: version,
                    release_id,
                    started_at: chrono::Utc::now(),
                },
            );
            match on_upgrade.await {
                Ok(upgraded) => bridge(TokioIo::new(upgraded), one_off).await,
                Err(e) => {
                    tracing::warn!(error = %e, "the attach upgrade failed; stopping the one-off");
                    one_off.handle.stop();
                }
            }
            state.one_offs.untrack(&app_id, &name);
        },
        span,
    ));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(ATTACH_PROTOCOL));
    response
}

/// Copies between the client and the one-off until the command has exited, then sends the
/// exit status line. A client that goes away stops the one-off.
async fn bridge<S>(stream: S, one_off: OneOff)
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let OneOff {
        io, handle, exit, ..
    } = one_off;
    let (output, to_dyno) = match io {
        OneOffIo::Terminal { output, mut input } => {
            let handle = handle.clone();
            let to_dyno = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    // The terminal's keyboard: the client's end is the end of the session.
                    let _ = tokio::io::copy(&mut from_client, &mut input).await;
                    handle.stop();
                },
                tracing::Span::current(),
            ));
            (merge(vec![Box::new(output)]), to_dyno)
        }
        OneOffIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let to_dyno = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    if let Some(mut stdin) = stdin {
                        // EOF from the client closes the command's stdin.
                        let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
                        let _ = stdin.shutdown().await;
                    }
                },
                tracing::Span::current(),
            ));
            (merge(vec![stdout, stderr]), to_dyno)
        }
        OneOffIo::Logs => (merge(Vec::new()), tokio::spawn(async {})),
    };
    let mut output = output;
    let mut client_gone = false;
    while let Some(chunk) = output.recv().await {
        if !client_gone && to_client.write_all(&chunk).await.is_err() {
            client_gone = true;
            handle.stop();
        }
    }
    let code = match exit.await {
        Ok(exit) => exit.code,
        Err(_) => 255,
    };
    to_dyno.abort();
    if !client_gone {
        let _ = to_client
            .write_all(format!("{EXIT_MARKER}{code}\n").as_bytes())
            .await;
        let _ = to_client.shutdown().await;
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send + Sync>;

/// Chunks of several readers, as they come; ends when all have ended (a pty's EIO is an end).
fn merge(readers: Vec<Reader>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    for mut reader in readers {
        let tx = tx.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            },
            tracing::Span::current(),
        ));
    }
    rx
}

/// The `release:` command of a release's slug, if it declares one.
pub async fn release_command(state: &Shared, release: &Release) -> ApiResult<Option<String>> {
    let Some(slug_id) = release.slug_id.as_deref() else {
        return Ok(None);
    };
    let slug = state.store.slug(slug_id).await?;
    Ok(slug.process_types.get("release").cloned())
}

/// Runs a pending release's release phase and settles its status: `Ok` once it succeeded
/// (the caller converges onto it), `Err(why)` once it failed. `pusher` gets the output as
/// it comes (a push's `remote:` lines).
pub async fn finish_release(
    state: &Shared,
    app: &App,
    release: &Release,
    command: &str,
    pusher: Option<&mpsc::Sender<Bytes>>,
) -> Result<(), String> {
    let result = run_release_phase(state, app, release, command, pusher).await;
    let status = if result.is_ok() {
        ReleaseStatus::Succeeded
    } else {
        ReleaseStatus::Failed
    };
    if let Err(e) = state.store.set_release_status(&release.id, status).await {
        tracing::error!(error = %e, "could not record the release phase's result");
        return Err(
            "Internal error while recording the release phase's result; see the server log.".into(),
        );
    }
    match &result {
        Ok(()) => state.api_log(
            &app.id,
            &format!("Release v{} succeeded its release phase", release.version),
        ),
        Err(why) => state.api_log(
            &app.id,
            &format!("Release v{} failed: {why}", release.version),
        ),
    }
    result
}

async fn run_release_phase(
    state: &Shared,
    app: &App,
    release: &Release,
    command: &str,
    pusher: Option<&mpsc::Sender<Bytes>>,
) -> Result<(), String> {
    let name = format!("release.{}", release.version);
    let timeout = state.settings.release_phase_timeout;
    let say = |line: String| async move {
        if let Some(tx) = pusher {
            let _ = tx.send(Bytes::from(format!("{line}\n"))).await;
        }
    };
    say(format!(
        "-----> Running release command `{command}` (v{}, {name})...",
        release.version
    ))
    .await;
    let spec = release_spec(state, release)
        .await
        .map_err(|e| format!("the release phase could not start: {}", e.message))?;
    let one_off = state
        .dynos
        .run_one_off(OneOffRequest {
            release: spec,
            name: name.clone(),
            command: command.to_string(),
            env: Default::default(),
            size: DynoSize::standard_1x(),
            time_to_live: timeout,
            mode: OneOffMode::Pipes,
        })
        .await
        .map_err(|e| format!("the release phase could not start: {e}"))?;
    let OneOff {
        io, exit, handle, ..
    } = one_off;
    let OneOffIo::Pipes { stdout, stderr, .. } = io else {
        handle.stop();
        return Err("the release phase got no output pipes".into());
    };
    let (tx, mut lines) = mpsc::channel::<String>(256);
    for pipe in [stdout, stderr] {
        pump_lines(pipe, tx.clone());
    }
    drop(tx);
    let mut output = String::new();
    let mut cut = false;
    while let Some(line) = lines.recv().await {
        state.logs.write(&app.id, Source::App, &name, &line);
        say(format!("       {line}")).await;
        if output.len() + line.len() < MAX_RELEASE_OUTPUT {
            output.push_str(&line);
            output.push('\n');
        } else if !cut {
            cut = true;
            output.push_str("[output cut at 1 MiB]\n");
        }
    }
    let exit = exit
        .await
        .map_err(|_| "the release phase was lost".to_string())?;
    if let Err(e) = state.store.set_release_output(&release.id, &output).await {
        tracing::warn!(error = %e, "could not keep the release phase's output");
    }
    if exit.timed_out {
        return Err(format!(
            "the release command timed out after {} seconds (--release-phase-timeout); v{} was not released",
            timeout.as_secs(),
            release.version
        ));
    }
    if exit.code != 0 {
        return Err(format!(
            "the release command `{command}` exited with status {}; v{} was not released and the previous release keeps serving (`slipway releases:output v{}` shows its output)",
            exit.code, release.version, release.version
        ));
    }
    say(format!(
        "       Release command succeeded (v{})",
        release.version
    ))
    .await;
    Ok(())
}

/// A pending release made outside a push (a config change, a rollback): its release phase
/// runs in the background, holding the app's release lock, and the dynos converge onto it
/// if it succeeds.
pub fn finish_in_background(
    state: Shared,
    app: App,
    release: Release,
    command: String,
    guard: tokio::sync::OwnedMutexGuard<()>,
) {
    let span = tracing::info_span!("release phase", app = %app.id, version = release.version);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if finish_release(&state, &app, &release, &command, None)
                .await
                .is_ok()
            {
                // Done in the background: an unhealthy release is failed and said in the
                // app's log (by converge_app), as the release phase's failure is.
                match crate::control::converge_app(&state, &app.id).await {
                    Ok(converged) => {
                        if let Some(message) = converged.message() {
                            tracing::warn!(%message, "a release did not become healthy");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = ?e, "could not start dynos for the new release")
                    }
                }
            }
            drop(guard);
        },
        span,
    ));
}

/// Reads a pipe line by line (each line bounded by [`MAX_LINE_BYTES`], its end trimmed) into
/// `tx`, in a task of its own, until the pipe ends or the receiver is gone. The release phase,
/// pipeline tests and a deploy's commands read their output through it.
pub(crate) fn pump_lines<R>(pipe: R, tx: mpsc::Sender<String>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut reader = tokio::io::BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64);
                match tokio::io::AsyncBufReadExt::read_until(&mut limited, b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']).to_string();
                        if tx.send(text).await.is_err() {
                            break;
                        }
                    }
                }
            }
        },
        tracing::Span::current(),
    ));
}
