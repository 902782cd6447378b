//! Health checks of new web dynos (Dokku's `healthchecks.web[]` in `app.json`).
//!
//! A web dyno whose release declares HTTP checks of type `startup` or `readiness` gets traffic
//! only once it is up (bound `PORT`) *and* every such check passed: `GET path` on the dyno's
//! address (or the check's `port`), a 2xx or 3xx status and, with `content`, that text in the
//! first [`MAX_RESPONSE`] bytes of the response. Each check gets `attempts` tries,
//! `timeout` seconds each, `wait` seconds apart, the first after `initialDelay` seconds.
//! Checks run again each time the dyno comes up (after a crash and restart), and the dyno is
//! out of routing until they pass.
//!
//! Not done (said in the app's log when a release declares them): `liveness` checks (Dokku
//! keeps probing a running container) and checks with a `command` instead of a `path`.
//! Readiness is checked once per boot, as startup is, not continuously.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slipway_core::appjson::{Healthcheck, HealthcheckKind};
use slipway_logs::Source;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lifecycle::Lifecycle;
use crate::{Dyno, DynoEvent, Inner};

/// The most of a probe's response read (status line, headers and body).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Where a dyno stands with its health checks, for this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not up yet, or its checks are running.
    Pending,
    /// Up and every check passed (or it has none to pass).
    Passed,
    /// A check failed every attempt: `reason` names the dyno, release, check and last result.
    Failed { reason: String },
}

/// The checks that gate traffic: HTTP ones of type startup or readiness.
pub fn gating(checks: &[Healthcheck]) -> impl Iterator<Item = &Healthcheck> {
    checks
        .iter()
        .filter(|c| c.path.is_some() && c.kind != HealthcheckKind::Liveness)
}

/// Why one try of a check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no response within {0} s")]
    Timeout(u32),
    #[error("{0}")]
    Status(u16),
    #[error("the response is not HTTP")]
    NotHttp,
    #[error("{status} without {content:?} in the response")]
    Content { status: u16, content: String },
    #[error("reading the response: {0}")]
    Io(String),
}

/// One try of `check` against `addr`.
pub async fn probe(addr: SocketAddr, check: &Healthcheck) -> Result<u16, ProbeError> {
    let path = check.path.as_deref().unwrap_or("/");
    let limit = Duration::from_secs(u64::from(check.timeout_secs.max(1)));
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeError::Connect(e.to_string()))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slipway-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| ProbeError::Io(e.to_string()))?;
        let mut response = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        while response.len() < MAX_RESPONSE {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ProbeError::Io(e.to_string()))?;
            if n == 0 {
                break;
            }
            let room = MAX_RESPONSE - response.len();
            response.extend_from_slice(&chunk[..n.min(room)]);
            // Without a content check, the status line is all that is needed.
            if check.content.is_none() && response.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        Ok::<_, ProbeError>(response)
    };
    let response = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(check.timeout_secs.max(1)))??;
    let status = status_of(&response).ok_or(ProbeError::NotHttp)?;
    if !(200..400).contains(&status) {
        return Err(ProbeError::Status(status));
    }
    if let Some(content) = &check.content {
        let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => &response[at + 4..],
            None => &[][..],
        };
        if !body
            .windows(content.len().max(1))
            .any(|w| w == content.as_bytes())
        {
            return Err(ProbeError::Content {
                status,
                content: content.clone(),
            });
        }
    }
    Ok(status)
}

/// `HTTP/1.1 200 OK` -> 200.
fn status_of(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Runs `check` to the end: its initial delay, then up to `attempts` tries `wait` apart.
/// `Err` holds the last try's failure.
pub async fn run_check(addr: SocketAddr, check: &Healthcheck) -> Result<u32, ProbeError> {
    let target = match check.port {
        Some(port) => SocketAddr::new(addr.ip(), port),
        None => addr,
    };
    tokio::time::sleep(Duration::from_secs(u64::from(check.initial_delay_secs))).await;
    let attempts = check.attempts.max(1);
    let mut last = ProbeError::NotHttp;
    for attempt in 1..=attempts {
        match probe(target, check).await {
            Ok(_) => return Ok(attempt),
            Err(e) => last = e,
        }
        if attempt < attempts {
            tokio::time::sleep(Duration::from_secs(u64::from(check.wait_secs))).await;
        }
    }
    Err(last)
}

/// The longest the checks of one boot can take.
pub fn budget(checks: &[Healthcheck]) -> Duration {
    gating(checks)
        .map(|c| {
            let attempts = u64::from(c.attempts.max(1));
            Duration::from_secs(
                u64::from(c.initial_delay_secs)
                    + attempts * u64::from(c.timeout_secs.max(1))
                    + (attempts - 1) * u64::from(c.wait_secs),
            )
        })
        .sum()
}

/// Says in the app's log which declared checks slipway does not run.
pub(crate) fn note_unsupported(inner: &Inner, dyno: &Dyno) {
    for check in &dyno.release.healthchecks {
        let what = match (check.kind, &check.path) {
            (HealthcheckKind::Liveness, _) => "liveness checks are not run yet",
            (_, None) => "checks with a command are not run yet (only HTTP paths)",
            _ => continue,
        };
        inner.logs.write(
            &dyno.app_id,
            Source::Heroku,
            &dyno.name,
            &format!("Health check {:?} skipped: {what}", check.name),
        );
    }
}

/// Follows one web dyno for its whole life: each time it comes up, its gating checks run and
/// it becomes routable only when they all pass ([`Dyno::routable`]).
pub(crate) fn follow(inner: Arc<Inner>, dyno: Arc<Dyno>) {
    let mut events = inner.events.subscribe();
    let span = tracing::info_span!("health", app = %dyno.app_id, dyno = %dyno.name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            note_unsupported(&inner, &dyno);
            loop {
                if *dyno.done_rx.borrow() {
                    return;
                }
                let status = *dyno.lock_status();
                let checked = *dyno.lock_ready() == Some(status.updated_at);
                if status.lifecycle == Lifecycle::Up && !checked {
                    if let Some(addr) = status.addr {
                        let health = check_boot(&inner, &dyno, addr).await;
                        let still = dyno.lock_status().updated_at == status.updated_at;
                        if still && health == Health::Passed {
                            *dyno.lock_ready() = Some(status.updated_at);
                        }
                        if still {
                            dyno.set_health(health);
                            inner.routing_changed(&dyno);
                        }
                        continue;
                    }
                }
                // Wait for this dyno's next change.
                let mut done = dyno.done_rx.clone();
                loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(DynoEvent::Changed { dyno_id, .. }) if dyno_id == dyno.id => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        _ = done.wait_for(|d| *d) => return,
                    }
                }
                if dyno.lock_status().lifecycle != Lifecycle::Up {
                    dyno.set_health(Health::Pending);
                }
            }
        },
        span,
    ));
}

/// Runs the dyno's gating checks for the boot it is in.
async fn check_boot(inner: &Inner, dyno: &Dyno, addr: SocketAddr) -> Health {
    let say = |line: &str| {
        inner
            .logs
            .write(&dyno.app_id, Source::Heroku, &dyno.name, line)
    };
    for check in gating(&dyno.release.healthchecks) {
        let path = check.path.as_deref().unwrap_or("/");
        match run_check(addr, check).await {
            Ok(attempt) => say(&format!(
                "Health check {path} passed (attempt {attempt} of {})",
                check.attempts.max(1)
            )),
            Err(e) => {
                let reason = format!(
                    "{} of v{} failed health check {path}: {e} ({} attempts)",
                    dyno.name,
                    dyno.release.version,
                    check.attempts.max(1)
                );
                say(&format!(
                    "Health check {path} failed: {e} ({} attempts); the dyno gets no traffic",
                    check.attempts.max(1)
                ));
                return Health::Failed { reason };
            }
        }
    }
    Health::Passed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, content: Option<&str>) -> Healthcheck {
        Healthcheck {
            kind: HealthcheckKind::Startup,
            name: "web check".into(),
            path: Some(path.into()),
            content: content.map(str::to_string),
            command: None,
            attempts: 2,
            timeout_secs: 2,
            wait_secs: 0,
            initial_delay_secs: 0,
            port: None,
        }
    }

    /// A one-connection-at-a-time HTTP server answering `status` and `body` to everything.
    async fn serve(status: &'static str, body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_2xx_or_3xx_passes_and_content_must_be_in_the_body() {
        let ok = serve("200 OK", "all good").await;
        assert_eq!(probe(ok, &check("/health", None)).await, Ok(200));
        assert_eq!(probe(ok, &check("/health", Some("good"))).await, Ok(200));
        assert_eq!(
            probe(ok, &check("/health", Some("ready"))).await,
            Err(ProbeError::Content {
                status: 200,
                content: "ready".into()
            })
        );
        let moved = serve("302 Found", "").await;
        assert_eq!(probe(moved, &check("/", None)).await, Ok(302));
    }

    #[tokio::test]
    async fn a_5xx_fails_every_attempt_and_names_the_status() {
        let broken = serve("500 Internal Server Error", "no").await;
        let err = run_check(broken, &check("/health", None))
            .await
            .expect_err("500 fails");
        assert_eq!(err, ProbeError::Status(500));
        assert_eq!(err.to_string(), "500");
    }

    #[tokio::test]
    async fn nothing_listening_fails_with_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = probe(addr, &check("/", None)).await.expect_err("refused");
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
    }

    #[test]
    fn liveness_and_command_checks_do_not_gate() {
        let mut live = check("/live", None);
        live.kind = HealthcheckKind::Liveness;
        let mut cmd = check("/", None);
        cmd.path = None;
        cmd.command = Some(vec!["true".into()]);
        let checks = vec![live, cmd, check("/ready", None)];
        let gated: Vec<_> = gating(&checks).map(|c| c.path.clone()).collect();
        assert_eq!(gated, vec![Some("/ready".to_string())]);
        assert_eq!(budget(&checks), Duration::from_secs(4));
    }
}
