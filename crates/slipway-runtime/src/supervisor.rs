//! One dyno's life: prepare its directory, start it, watch it boot, restart it when it
//! crashes, stop it when asked. Every state change goes to the app's log (as `heroku[web.1]`)
//! and to the store.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use slipway_logs::{Source, MAX_LINE_BYTES};
use slipway_store::{DynoRecord, DynoState};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::process::{free_port, kill_group, pump_lines};
use crate::{Dyno, Inner, ProcessSpec, ReleaseSpec};

/// A dyno that ran this long before crashing is restarted at once, as a first crash is.
const STABLE_RUN: Duration = Duration::from_secs(60);
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(crate) fn spawn(
    inner: &Arc<Inner>,
    release: &ReleaseSpec,
    spec: &ProcessSpec,
    name: String,
) -> Arc<Dyno> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let dyno = Arc::new(Dyno {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: release.app_id.clone(),
        name,
        process_type: spec.process_type.clone(),
        command: spec.command.clone(),
        release: release.clone(),
        status: Mutex::new((DynoState::Starting, None, Utc::now())),
        retiring: AtomicBool::new(false),
        stop_tx,
        done_rx,
    });
    let inner = inner.clone();
    let d = dyno.clone();
    let span = tracing::info_span!("dyno", app = %d.app_id, dyno = %d.name, id = %d.id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            Supervisor {
                inner: inner.clone(),
                dyno: d.clone(),
                stop: stop_rx,
            }
            .run()
            .await;
            inner.forget(&d.app_id, &d.id);
            let _ = done_tx.send(true);
        },
        span,
    ));
    dyno
}

struct Supervisor {
    inner: Arc<Inner>,
    dyno: Arc<Dyno>,
    stop: watch::Receiver<bool>,
}

enum Outcome {
    Exited(ExitStatus),
    Stop,
}

impl Supervisor {
    fn say(&self, message: &str) {
        self.inner
            .logs
            .write(&self.dyno.app_id, Source::Heroku, &self.dyno.name, message);
    }

    fn dir(&self) -> PathBuf {
        self.inner
            .cfg
            .dynos_dir
            .join(&self.dyno.app_id)
            .join(&self.dyno.id)
    }

    async fn set_state(&self, state: DynoState, port: Option<u16>, pid: Option<u32>) {
        let previous = {
            let mut status = self.dyno.lock_status();
            let previous = status.0;
            *status = (state, port, Utc::now());
            previous
        };
        if previous != state {
            self.say(&format!(
                "State changed from {} to {}",
                previous.as_str(),
                state.as_str()
            ));
        }
        let record = DynoRecord {
            id: self.dyno.id.clone(),
            app_id: self.dyno.app_id.clone(),
            name: self.dyno.name.clone(),
            process_type: self.dyno.process_type.clone(),
            command: self.dyno.command.clone(),
            release_version: self.dyno.release.version,
            state,
            pid: pid.map(i64::from),
            port: port.map(i64::from),
            dir: self.dir().display().to_string(),
            created_at: Utc::now().timestamp_millis(),
        };
        if let Err(e) = self.inner.store.upsert_dyno(&record).await {
            tracing::warn!(error = %e, "could not record dyno state");
        }
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        let mut crashes: u32 = 0;
        loop {
            if self.stop_requested() {
                break;
            }
            let started = Instant::now();
            let outcome = self.run_once().await;
            match outcome {
                Outcome::Stop => break,
                Outcome::Exited(_) => {
                    crashes = if started.elapsed() >= STABLE_RUN {
                        1
                    } else {
                        crashes + 1
                    };
                    let delay = restart_delay(crashes, self.inner.cfg.max_restart_delay);
                    let mut stop = self.stop.clone();
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    };
                    if stopped {
                        break;
                    }
                    self.set_state(DynoState::Starting, None, None).await;
                }
            }
        }
        let _ = tokio::fs::remove_dir_all(self.dir()).await;
        if let Err(e) = self.inner.store.delete_dyno(&self.dyno.id).await {
            tracing::warn!(error = %e, "could not delete dyno record");
        }
    }

    /// Starts the process once and follows it until it exits or a stop is requested.
    async fn run_once(&mut self) -> Outcome {
        let dir = self.dir();
        let release = self.dyno.release.clone();
        let prepared = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || prepare_dir(&dir, &release.slug_path, &release.slug_checksum)
        })
        .await;
        let prepared = match prepared {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = prepared {
            self.say(&format!(
                "Error: could not prepare the dyno's filesystem: {e}"
            ));
            self.set_state(DynoState::Crashed, None, None).await;
            return Outcome::Exited(ExitStatus::default());
        }
        let is_web = self.dyno.process_type == "web";
        let port = if is_web {
            match free_port() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.say(&format!("Error: no free port for the dyno: {e}"));
                    self.set_state(DynoState::Crashed, None, None).await;
                    return Outcome::Exited(ExitStatus::default());
                }
            }
        } else {
            None
        };
        self.say(&format!(
            "Starting process with command `{}`",
            self.dyno.command
        ));
        let mut child = match self.start(&dir.join("app"), port) {
            Ok(child) => child,
            Err(e) => {
                self.say(&format!("Error: could not start the process: {e}"));
                self.set_state(DynoState::Crashed, None, None).await;
                return Outcome::Exited(ExitStatus::default());
            }
        };
        let pid = child.id();
        self.set_state(DynoState::Starting, port, pid).await;
        self.pump_output(&mut child);

        if let Some(port) = port {
            let boot = tokio::select! {
                up = wait_for_port(port, self.inner.cfg.boot_timeout) => Ok(up),
                status = child.wait() => Err(Outcome::Exited(status.unwrap_or_default())),
                _ = self.stop.wait_for(|s| *s) => Err(Outcome::Stop),
            };
            match boot {
                Ok(true) => {}
                Ok(false) => {
                    self.say(&format!(
                        "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {} seconds of launch",
                        self.inner.cfg.boot_timeout.as_secs()
                    ));
                    self.say("Stopping process with SIGKILL");
                    let status = self.kill(&mut child, pid, Signal::SIGKILL).await;
                    return self.crashed(status, None, pid).await;
                }
                Err(Outcome::Stop) => return self.stop_child(&mut child, pid, Some(port)).await,
                Err(Outcome::Exited(status)) => {
                    self.kill(&mut child, pid, Signal::SIGKILL).await;
                    return self.crashed(status, Some(port), pid).await;
                }
            }
        }
        self.set_state(DynoState::Up, port, pid).await;
        let exited = tokio::select! {
            status = child.wait() => Some(status.unwrap_or_default()),
            _ = self.stop.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                // Leave nothing of the group behind when its leader exits.
                self.kill(&mut child, pid, Signal::SIGKILL).await;
                self.crashed(status, port, pid).await
            }
            None => self.stop_child(&mut child, pid, port).await,
        }
    }

    fn start(&self, cwd: &Path, port: Option<u16>) -> std::io::Result<Child> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&self.dyno.command)
            .current_dir(cwd)
            .env_clear()
            .envs(&self.dyno.release.env)
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", cwd)
            .env("DYNO", &self.dyno.name)
            .env("PS", &self.dyno.name)
            .env("SLIPWAY_DYNO_ID", &self.dyno.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(port) = port {
            cmd.env("PORT", port.to_string());
        }
        cmd.spawn()
    }

    fn pump_output(&self, child: &mut Child) {
        let pipes: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let logs = self.inner.logs.clone();
            let app = self.dyno.app_id.clone();
            let name = self.dyno.name.clone();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    pump_lines(pipe, MAX_LINE_BYTES, |line| {
                        logs.write(&app, Source::App, &name, line)
                    })
                    .await;
                },
                tracing::Span::current(),
            ));
        }
    }

    async fn crashed(&self, status: ExitStatus, port: Option<u16>, pid: Option<u32>) -> Outcome {
        self.say(&format!("Process exited with status {}", exit_code(status)));
        self.set_state(DynoState::Crashed, port, pid).await;
        Outcome::Exited(status)
    }

    /// SIGTERM to the group, SIGKILL after the stop timeout (R12).
    async fn stop_child(&self, child: &mut Child, pid: Option<u32>, port: Option<u16>) -> Outcome {
        self.say("Stopping all processes with SIGTERM");
        let status = match tokio::time::timeout(
            self.inner.cfg.stop_timeout,
            self.kill(child, pid, Signal::SIGTERM),
        )
        .await
        {
            Ok(status) => status,
            Err(_) => {
                self.say(&format!(
                    "Error R12 (Exit timeout) -> At least one process failed to exit within {} seconds of SIGTERM",
                    self.inner.cfg.stop_timeout.as_secs()
                ));
                self.say("Stopping remaining processes with SIGKILL");
                self.kill(child, pid, Signal::SIGKILL).await
            }
        };
        self.say(&format!("Process exited with status {}", exit_code(status)));
        kill_group_of(pid, Signal::SIGKILL);
        self.set_state(DynoState::Down, port, None).await;
        Outcome::Stop
    }

    async fn kill(&self, child: &mut Child, pid: Option<u32>, signal: Signal) -> ExitStatus {
        kill_group_of(pid, signal);
        child.wait().await.unwrap_or_default()
    }
}

fn kill_group_of(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        kill_group(pid, signal);
    }
}

fn prepare_dir(dir: &Path, slug: &Path, checksum: &str) -> Result<(), slipway_build::BuildError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(slipway_build::BuildError::io("cleaning", dir))?;
    }
    slipway_build::unpack_slug(slug, checksum, dir)
}

async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Heroku's convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(0)
}

/// The first crash restarts at once; then 1 s, 2 s, 4 s... up to `max`.
fn restart_delay(crashes: u32, max: Duration) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let secs = 1u64
        .checked_shl(crashes.saturating_sub(2).min(20))
        .unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=9).map(|c| restart_delay(c, max).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
