//! Health checks of web dynos (Dokku's `healthchecks.web[]` in `app.json`).
//!
//! A web dyno whose release declares checks of type `startup` or `readiness` gets traffic
//! only once it is up (bound `PORT`) *and* every such check passed. A check is HTTP (`GET
//! path` on the dyno's address, or the check's `port`: a 2xx or 3xx status and, with
//! `content`, that text in the first [`MAX_RESPONSE`] bytes of the response) or a `command`
//! run inside the dyno (`DynoBackend::check_command`: `runc exec` for containers, the
//! dyno's environment, directory and user for plain processes), which passes on exit 0 with
//! `content` in its output if given. Each boot check gets `attempts` tries, `timeout` seconds
//! each, `wait` seconds apart, the first after `initialDelay` seconds; they run again each
//! time the dyno comes up (after a crash and restart).
//!
//! Once a dyno passed, as Kubernetes probes do: `readiness` and `liveness` checks keep
//! running every `wait` seconds (at least 1) while it stays up. After `attempts` consecutive
//! failures a readiness check takes the dyno out of rotation until it passes again, and a
//! liveness check restarts the dyno (ps:restart's way: a replacement starts beside it).
//! Each transition is a `heroku[web.N]` line naming the check and its result.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use slipway_core::appjson::{Healthcheck, HealthcheckKind};
use slipway_logs::Source;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::DynoSpec;
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

/// The checks that gate traffic at each boot: startup and readiness ones (HTTP or command).
pub fn gating(checks: &[Healthcheck]) -> impl Iterator<Item = &Healthcheck> {
    checks
        .iter()
        .filter(|c| runnable(c) && c.kind != HealthcheckKind::Liveness)
}

/// The checks that keep running while a dyno is up: readiness and liveness.
pub fn periodic(checks: &[Healthcheck]) -> impl Iterator<Item = &Healthcheck> {
    checks
        .iter()
        .filter(|c| runnable(c) && c.kind != HealthcheckKind::Startup)
}

/// A check says what to run: a path or a non-empty command.
fn runnable(check: &Healthcheck) -> bool {
    check.path.is_some() || check.command.as_ref().is_some_and(|c| !c.is_empty())
}

/// How a check is named in log lines and failure reasons: its path, else its command.
pub fn label(check: &Healthcheck) -> String {
    match (&check.path, &check.command) {
        (Some(path), _) => path.clone(),
        (None, Some(argv)) => format!("`{}`", argv.join(" ")),
        (None, None) => check.name.clone(),
    }
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
    #[error("could not run the command: {0}")]
    Spawn(String),
    #[error("exit status {0}")]
    Exit(i32),
    #[error("exit status 0 without {0:?} in the output")]
    Output(String),
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
    run_check_with(addr, check, None).await
}

/// [`run_check`], with what runs a command check (`None`: HTTP only).
async fn run_check_with(
    addr: SocketAddr,
    check: &Healthcheck,
    exec: Option<(&Inner, &DynoSpec)>,
) -> Result<u32, ProbeError> {
    tokio::time::sleep(Duration::from_secs(u64::from(check.initial_delay_secs))).await;
    let attempts = check.attempts.max(1);
    let mut last = ProbeError::NotHttp;
    for attempt in 1..=attempts {
        match probe_once(addr, check, exec).await {
            Ok(_) => return Ok(attempt),
            Err(e) => last = e,
        }
        if attempt < attempts {
            tokio::time::sleep(Duration::from_secs(u64::from(check.wait_secs))).await;
        }
    }
    Err(last)
}

/// One try of `check`: HTTP to `addr` (or the check's port), or its command in the dyno.
async fn probe_once(
    addr: SocketAddr,
    check: &Healthcheck,
    exec: Option<(&Inner, &DynoSpec)>,
) -> Result<(), ProbeError> {
    match (&check.path, &check.command, exec) {
        (None, Some(argv), Some((inner, spec))) => run_command(inner, spec, argv, check).await,
        (None, Some(_), None) => Err(ProbeError::Spawn("no dyno to run it in".into())),
        _ => {
            let target = match check.port {
                Some(port) => SocketAddr::new(addr.ip(), port),
                None => addr,
            };
            probe(target, check).await.map(|_| ())
        }
    }
}

/// Runs a command check inside the dyno: passes on exit 0 with `content` (if any) in the
/// first [`MAX_RESPONSE`] bytes of its stdout and stderr. A try over its time limit has
/// its process group killed.
async fn run_command(
    inner: &Inner,
    spec: &DynoSpec,
    argv: &[String],
    check: &Healthcheck,
) -> Result<(), ProbeError> {
    let launch = inner
        .backend
        .check_command(spec, argv)
        .map_err(|e| ProbeError::Spawn(e.to_string()))?;
    let mut cmd = crate::backend::command(&launch);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| ProbeError::Spawn(e.to_string()))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let limit = Duration::from_secs(u64::from(check.timeout_secs.max(1)));
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(MAX_RESPONSE as u64).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(MAX_RESPONSE as u64).read_to_end(&mut err).await;
            }
        };
        let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
        out.extend_from_slice(&err);
        (status, out)
    };
    let (status, output) = match tokio::time::timeout(limit, run).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(pid) = pid {
                crate::process::kill_group(pid, Signal::SIGKILL);
            }
            return Err(ProbeError::Timeout(check.timeout_secs.max(1)));
        }
    };
    let status = status.map_err(|e| ProbeError::Spawn(e.to_string()))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        return Err(ProbeError::Exit(code));
    }
    if let Some(content) = &check.content {
        if !output
            .windows(content.len().max(1))
            .any(|w| w == content.as_bytes())
        {
            return Err(ProbeError::Output(content.clone()));
        }
    }
    Ok(())
}

/// The dyno as its backend knows it, for running a command check in it.
fn spec_of(inner: &Inner, dyno: &Dyno, addr: SocketAddr) -> DynoSpec {
    DynoSpec {
        id: dyno.id.clone(),
        app_id: dyno.app_id.clone(),
        name: dyno.name.clone(),
        command: dyno.command.clone(),
        config: dyno.release.env.clone(),
        port: Some(addr.port()),
        size: dyno.size.clone(),
        dir: inner.cfg.dynos_dir.join(&dyno.app_id).join(&dyno.id),
        slug_path: dyno.release.slug_path.clone(),
        slug_checksum: dyno.release.slug_checksum.clone(),
        user: inner.user_for(&dyno.app_id).ok().flatten(),
    }
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

/// Says in the app's log which declared checks cannot run (neither a path nor a command).
pub(crate) fn note_unsupported(inner: &Inner, dyno: &Dyno) {
    for check in dyno.release.healthchecks.iter().filter(|c| !runnable(c)) {
        inner.logs.write(
            &dyno.app_id,
            Source::Heroku,
            &dyno.name,
            &format!(
                "Health check {:?} skipped: it has neither a path nor a command",
                check.name
            ),
        );
    }
}

/// Follows one web dyno for its whole life: each time it comes up, its gating checks run and
/// it becomes routable only when they all pass ([`Dyno::routable`]); then its readiness and
/// liveness checks keep running until it stops or comes up again.
pub(crate) fn follow(inner: Arc<Inner>, dyno: Arc<Dyno>) {
    let mut events = inner.events.subscribe();
    let span = tracing::info_span!("health", app = %dyno.app_id, dyno = %dyno.name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            note_unsupported(&inner, &dyno);
            // The boot (`updated_at` of its Up status) whose checks passed; an adopted dyno
            // comes already passed.
            let mut passed_boot = *dyno.lock_ready();
            let mut watch = Periodic::new(&dyno.release.healthchecks);
            loop {
                if *dyno.done_rx.borrow() {
                    return;
                }
                let status = *dyno.lock_status();
                let up = status.lifecycle == Lifecycle::Up;
                if up && passed_boot != Some(status.updated_at) {
                    if let Some(addr) = status.addr {
                        let health = check_boot(&inner, &dyno, addr).await;
                        let still = dyno.lock_status().updated_at == status.updated_at;
                        if still && health == Health::Passed {
                            *dyno.lock_ready() = Some(status.updated_at);
                            passed_boot = Some(status.updated_at);
                            watch = Periodic::new(&dyno.release.healthchecks);
                        }
                        if still {
                            dyno.set_health(health);
                            inner.routing_changed(&dyno);
                        }
                        continue;
                    }
                }
                let due = if up && passed_boot == Some(status.updated_at) {
                    watch.next_due()
                } else {
                    None
                };
                // Wait for this dyno's next change, or its next periodic check.
                let mut done = dyno.done_rx.clone();
                let timer = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(timer);
                let changed = loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(DynoEvent::Changed { dyno_id, .. }) if dyno_id == dyno.id => break true,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break true,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        _ = done.wait_for(|d| *d) => return,
                        () = &mut timer => break false,
                    }
                };
                if changed {
                    if dyno.lock_status().lifecycle != Lifecycle::Up {
                        dyno.set_health(Health::Pending);
                    }
                    continue;
                }
                if let Some(addr) = status.addr {
                    if watch.round(&inner, &dyno, addr, status.updated_at).await == Verdict::Restart
                    {
                        return;
                    }
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
    let spec = spec_of(inner, dyno, addr);
    for check in gating(&dyno.release.healthchecks) {
        let what = label(check);
        match run_check_with(addr, check, Some((inner, &spec))).await {
            Ok(attempt) => say(&format!(
                "Health check {what} passed (attempt {attempt} of {})",
                check.attempts.max(1)
            )),
            Err(e) => {
                let reason = format!(
                    "{} of v{} failed health check {what}: {e} ({} attempts)",
                    dyno.name,
                    dyno.release.version,
                    check.attempts.max(1)
                );
                say(&format!(
                    "Health check {what} failed: {e} ({} attempts); the dyno gets no traffic",
                    check.attempts.max(1)
                ));
                return Health::Failed { reason };
            }
        }
    }
    Health::Passed
}

/// What a round of periodic checks decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// A liveness check failed `attempts` times in a row: the dyno is being replaced.
    Restart,
}

/// The readiness and liveness checks of one boot, each with its schedule and its run of
/// consecutive failures.
struct Periodic {
    checks: Vec<Watched>,
}

struct Watched {
    check: Healthcheck,
    every: Duration,
    next: tokio::time::Instant,
    failures: u32,
}

impl Periodic {
    fn new(checks: &[Healthcheck]) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            checks: periodic(checks)
                .map(|c| {
                    let every = Duration::from_secs(u64::from(c.wait_secs.max(1)));
                    Watched {
                        check: c.clone(),
                        every,
                        next: now + every,
                        failures: 0,
                    }
                })
                .collect(),
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.checks.iter().map(|w| w.next).min()
    }

    /// Runs the checks that are due. A readiness check failing `attempts` times in a row
    /// takes the dyno out of rotation; its next pass puts it back. A liveness check failing
    /// `attempts` times in a row restarts the dyno.
    async fn round(
        &mut self,
        inner: &Arc<Inner>,
        dyno: &Dyno,
        addr: SocketAddr,
        boot: chrono::DateTime<chrono::Utc>,
    ) -> Verdict {
        let say = |line: &str| {
            inner
                .logs
                .write(&dyno.app_id, Source::Heroku, &dyno.name, line)
        };
        let spec = spec_of(inner, dyno, addr);
        for w in &mut self.checks {
            if w.next > tokio::time::Instant::now() {
                continue;
            }
            let attempts = w.check.attempts.max(1);
            let what = label(&w.check);
            let result = probe_once(addr, &w.check, Some((inner, &spec))).await;
            w.next = tokio::time::Instant::now() + w.every;
            if dyno.lock_status().updated_at != boot {
                // It restarted meanwhile: the new boot is checked from the start.
                return Verdict::Keep;
            }
            let liveness = w.check.kind == HealthcheckKind::Liveness;
            match result {
                Ok(()) => {
                    if !liveness && w.failures >= attempts {
                        *dyno.lock_ready() = Some(boot);
                        dyno.set_health(Health::Passed);
                        inner.routing_changed(dyno);
                        say(&format!("Readiness check {what} passed: back in rotation"));
                    }
                    w.failures = 0;
                }
                Err(e) => {
                    w.failures = w.failures.saturating_add(1);
                    if w.failures != attempts {
                        continue;
                    }
                    if liveness {
                        say(&format!(
                            "Liveness check {what} failed: {e} ({attempts} consecutive attempts); restarting the dyno"
                        ));
                        if crate::restart::restart_dyno(inner, &dyno.app_id, &dyno.name) {
                            return Verdict::Restart;
                        }
                    } else {
                        *dyno.lock_ready() = None;
                        dyno.set_health(Health::Pending);
                        inner.routing_changed(dyno);
                        say(&format!(
                            "Readiness check {what} failed: {e} ({attempts} consecutive attempts); out of rotation until it passes"
                        ));
                    }
                }
            }
        }
        Verdict::Keep
    }
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
    fn liveness_checks_do_not_gate_and_startup_ones_do_not_repeat() {
        let mut live = check("/live", None);
        live.kind = HealthcheckKind::Liveness;
        let mut cmd = check("/", None);
        cmd.path = None;
        cmd.command = Some(vec!["true".into()]);
        let mut ready = check("/ready", None);
        ready.kind = HealthcheckKind::Readiness;
        let checks = vec![live, cmd, ready, check("/start", None)];
        let gated: Vec<_> = gating(&checks).map(label).collect();
        assert_eq!(gated, vec!["`true`", "/ready", "/start"]);
        let repeated: Vec<_> = periodic(&checks).map(label).collect();
        assert_eq!(repeated, vec!["/live", "/ready"]);
        assert_eq!(budget(&checks), Duration::from_secs(12));
    }
}
