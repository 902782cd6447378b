//! One dyno's life: prepare its filesystem, start it through the backend under a dyno monitor
//! (`monitor.rs`, which outlives the server), watch it boot and its memory, restart it when it
//! crashes, stop it when asked. Every state change is a [`Lifecycle`] transition, which prints
//! Heroku's `State changed from X to Y` line and is recorded in the store (what a later server
//! needs to re-adopt the dyno, or clean up after it).
//!
//! A supervisor can also take over a dyno a previous server left running ([`adopt`]): it
//! follows the existing monitor from where the last server stopped reading, without
//! restarting anything.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use slipway_logs::Source;
use slipway_store::{DynoRecord, DynoState};
use tokio::sync::watch;

use crate::attach::{monitor_dir, Attached, LineSink};
use crate::backend::{loopback, remove_dir, DynoSize, DynoSpec, Exit};
use crate::lifecycle::{Event, Lifecycle};
use crate::metrics::{self, LoadTracker};
use crate::monitor::ExitRecord;
use crate::process::free_port;
use crate::{Dyno, DynoEvent, Inner, ProcessSpec, ReleaseSpec, Status};

/// A dyno that ran this long before crashing is restarted at once, as a first crash is.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The file in a dyno's monitor directory naming its size (`standard-2X`), so a later server
/// re-adopts it with the limits it runs under.
const SIZE_FILE: &str = "size";

/// The size a dyno's monitor directory records, if any.
pub(crate) fn recorded_size(monitor_dir: &std::path::Path) -> Option<DynoSize> {
    let text = std::fs::read_to_string(monitor_dir.join(SIZE_FILE)).ok()?;
    DynoSize::parse(text.trim())
}

pub(crate) fn spawn(
    inner: &Arc<Inner>,
    release: &ReleaseSpec,
    spec: &ProcessSpec,
    name: String,
) -> Arc<Dyno> {
    let id = uuid::Uuid::new_v4().to_string();
    start_supervisor(inner, release, spec, name, id, Lifecycle::Starting, None)
}

/// A dyno a previous server left running, whose monitor is alive: supervised again from its
/// recorded state (`Up`, or `Starting` for a web dyno that had not bound its port yet).
pub(crate) fn adopt(
    inner: &Arc<Inner>,
    release: &ReleaseSpec,
    record: &DynoRecord,
    attached: Attached,
    size: DynoSize,
) -> Arc<Dyno> {
    let spec = ProcessSpec {
        process_type: record.process_type.clone(),
        quantity: 0,
        command: record.command.clone(),
        size,
    };
    let state = match record.state {
        DynoState::Up => Lifecycle::Up,
        _ => Lifecycle::Starting,
    };
    let port = record.port.and_then(|p| u16::try_from(p).ok());
    start_supervisor(
        inner,
        release,
        &spec,
        record.name.clone(),
        record.id.clone(),
        state,
        Some((attached, port)),
    )
}

fn start_supervisor(
    inner: &Arc<Inner>,
    release: &ReleaseSpec,
    spec: &ProcessSpec,
    name: String,
    id: String,
    lifecycle: Lifecycle,
    adopted: Option<(Attached, Option<u16>)>,
) -> Arc<Dyno> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let port = adopted.as_ref().and_then(|(_, p)| *p);
    let dyno = Arc::new(Dyno {
        id,
        app_id: release.app_id.clone(),
        name,
        process_type: spec.process_type.clone(),
        command: spec.command.clone(),
        release: release.clone(),
        size: spec.size.clone(),
        status: Mutex::new(Status {
            lifecycle,
            addr: port.map(loopback),
            updated_at: Utc::now(),
            usage: None,
            load: None,
            sampled_at: None,
        }),
        retiring: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        health: Mutex::new(crate::health::Health::Pending),
        ready: Mutex::new(None),
        stop_tx,
        done_rx,
    });
    let inner = inner.clone();
    let d = dyno.clone();
    let span = tracing::info_span!("dyno", app = %d.app_id, dyno = %d.name, id = %d.id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let spec = DynoSpec {
                id: d.id.clone(),
                app_id: d.app_id.clone(),
                name: d.name.clone(),
                command: d.command.clone(),
                config: d.release.env.clone(),
                port,
                size: d.size.clone(),
                dir: inner.cfg.dynos_dir.join(&d.app_id).join(&d.id),
                slug_path: d.release.slug_path.clone(),
                slug_checksum: d.release.slug_checksum.clone(),
                user: None,
            };
            Supervisor {
                inner: inner.clone(),
                dyno: d.clone(),
                stop: stop_rx,
                spec,
                adopted: adopted.map(|(a, _)| a),
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

/// The dyno's output, as `app[web.1]` lines.
pub(crate) fn app_sink(inner: &Inner, app_id: &str, name: &str) -> LineSink {
    let logs = inner.logs.clone();
    let app = app_id.to_string();
    let name = name.to_string();
    Arc::new(move |line: &str| logs.write(&app, Source::App, &name, line))
}

/// A dyno's main process under its monitor.
struct Live {
    attached: Attached,
    pid: Option<u32>,
}

struct Supervisor {
    inner: Arc<Inner>,
    dyno: Arc<Dyno>,
    stop: watch::Receiver<bool>,
    spec: DynoSpec,
    /// A running monitor to follow instead of starting the dyno (the first run only).
    adopted: Option<Attached>,
}

enum Outcome {
    Crashed,
    Stopped,
}

impl Supervisor {
    fn say(&self, message: &str) {
        self.inner
            .logs
            .write(&self.dyno.app_id, Source::Heroku, &self.dyno.name, message);
    }

    /// The only way a dyno's state changes. Says `State changed from X to Y` when the
    /// state as Heroku names it changes, and records it.
    async fn transition(&self, event: Event, addr: Option<SocketAddr>, pid: Option<u32>) {
        let (from, to) = {
            let mut status = self.dyno.lock_status();
            let from = status.lifecycle;
            match from.apply(event) {
                Ok(to) => {
                    status.lifecycle = to;
                    status.addr = addr;
                    status.updated_at = Utc::now();
                    (from, to)
                }
                Err(e) => {
                    tracing::error!(error = %e, "refused a dyno state change");
                    return;
                }
            }
        };
        let _ = self.inner.events.send(DynoEvent::Changed {
            app_id: self.dyno.app_id.clone(),
            dyno_id: self.dyno.id.clone(),
            name: self.dyno.name.clone(),
            release_version: self.dyno.release.version,
            from,
            to,
            pid,
            addr,
        });
        if from.public() != to.public() {
            self.say(&format!(
                "State changed from {} to {}",
                from.public().as_str(),
                to.public().as_str()
            ));
        }
        self.record(to, addr, pid).await;
    }

    async fn record(&self, state: Lifecycle, addr: Option<SocketAddr>, pid: Option<u32>) {
        let record = DynoRecord {
            id: self.dyno.id.clone(),
            app_id: self.dyno.app_id.clone(),
            name: self.dyno.name.clone(),
            process_type: self.dyno.process_type.clone(),
            command: self.dyno.command.clone(),
            release_version: self.dyno.release.version,
            state: state.public(),
            pid: pid.map(i64::from),
            port: addr.map(|a| i64::from(a.port())),
            dir: self.spec.dir.display().to_string(),
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
                self.transition(Event::Stop, None, None).await;
                self.transition(Event::Stopped, None, None).await;
                break;
            }
            let started = Instant::now();
            match self.run_once().await {
                Outcome::Stopped => break,
                Outcome::Crashed => {
                    crashes = if started.elapsed() >= STABLE_RUN {
                        1
                    } else {
                        crashes + 1
                    };
                    let delay = restart_delay(crashes, self.inner.cfg.max_restart_delay);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    if !self.stop_requested() {
                        self.transition(Event::Restart, None, None).await;
                    }
                }
            }
        }
        let backend = self.inner.backend.clone();
        let (id, dir) = (self.spec.id.clone(), self.spec.dir.clone());
        let monitor = monitor_dir(&self.inner.cfg.dynos_dir, &id);
        let cleaned = tokio::task::spawn_blocking(move || {
            backend.cleanup(&id, &dir)?;
            remove_dir(&monitor)
        });
        match cleaned.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not clean up the dyno"),
            Err(e) => tracing::warn!(error = %e, "dyno clean-up panicked"),
        }
        if let Err(e) = self.inner.store.delete_dyno(&self.dyno.id).await {
            tracing::warn!(error = %e, "could not delete dyno record");
        }
        let _ = self.inner.events.send(DynoEvent::Removed {
            app_id: self.dyno.app_id.clone(),
            dyno_id: self.dyno.id.clone(),
            name: self.dyno.name.clone(),
        });
    }

    /// Prepares the dyno's filesystem (blocking work off the runtime).
    async fn prepare(&mut self) -> Result<(), String> {
        let user = self
            .inner
            .user_for(&self.dyno.app_id)
            .map_err(|e| e.to_string())?;
        self.spec.user = user;
        let backend = self.inner.backend.clone();
        let spec = self.spec.clone();
        match tokio::task::spawn_blocking(move || backend.prepare(&spec)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Starts the dyno once (or takes over the adopted one) and follows it until it exits or
    /// a stop is requested.
    async fn run_once(&mut self) -> Outcome {
        let is_web = self.dyno.process_type == "web";
        let (mut live, already_up) = match self.adopted.take() {
            Some(attached) => {
                self.spec.user = self.inner.user_for(&self.dyno.app_id).ok().flatten();
                let up = self.dyno.lock_status().lifecycle == Lifecycle::Up;
                let pid = Some(attached.pids.dyno).filter(|p| *p > 0);
                (Live { attached, pid }, up)
            }
            None => match self.start_dyno(is_web).await {
                Some(live) => (live, false),
                None => {
                    self.transition(Event::Exited, None, None).await;
                    return Outcome::Crashed;
                }
            },
        };
        let addr = self.spec.port.map(loopback);
        let pid = live.pid;

        let backend = self.inner.backend.clone();
        let mut stop = self.stop.clone();
        if let (Some(addr), false) = (addr, already_up) {
            let boot_timeout = self.inner.boot_timeout(&self.dyno.release);
            let booting = Instant::now();
            enum Boot {
                Bound(bool),
                Exited(ExitRecord),
                Stop,
            }
            let boot = tokio::select! {
                up = wait_for_port(addr, boot_timeout) => Boot::Bound(up),
                exit = live.attached.wait() => Boot::Exited(exit),
                _ = stop.wait_for(|s| *s) => Boot::Stop,
            };
            match boot {
                Boot::Bound(true) => {
                    tracing::info!(dyno = %self.dyno.name, ms = booting.elapsed().as_millis() as u64, "the dyno bound its port");
                }
                Boot::Bound(false) => {
                    self.say(&format!(
                        "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {} seconds of launch",
                        boot_timeout.as_secs()
                    ));
                    self.say("Stopping process with SIGKILL");
                    backend.signal_pid(&self.spec, pid, Signal::SIGKILL).await;
                    let exit = self.exit_of(live.attached.wait().await, pid).await;
                    return self.crashed(exit, Some(addr), pid).await;
                }
                Boot::Exited(exit) => {
                    let exit = self.exit_of(exit, pid).await;
                    return self.crashed(exit, Some(addr), pid).await;
                }
                Boot::Stop => return self.stop_dyno(&mut live, Some(addr), pid).await,
            }
        }
        if !already_up {
            self.transition(Event::Booted, addr, pid).await;
        }
        let mut check = tokio::time::interval(self.inner.cfg.memory_check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut load = LoadTracker::default();
        loop {
            enum Next {
                Exited(ExitRecord),
                Stop,
                Check,
            }
            let next = tokio::select! {
                exit = live.attached.wait() => Next::Exited(exit),
                _ = stop.wait_for(|s| *s) => Next::Stop,
                _ = check.tick() => Next::Check,
            };
            match next {
                Next::Exited(exit) => {
                    let exit = self.exit_of(exit, pid).await;
                    return self.crashed(exit, addr, pid).await;
                }
                Next::Stop => return self.stop_dyno(&mut live, addr, pid).await,
                Next::Check => {
                    if self.sample(&mut load, pid).await {
                        // The kernel's OOM killer struck: Heroku kills the whole dyno (R15).
                        backend.signal_pid(&self.spec, pid, Signal::SIGKILL).await;
                        let mut exit = self.exit_of(live.attached.wait().await, pid).await;
                        exit.oom_killed = true;
                        return self.crashed(exit, addr, pid).await;
                    }
                }
            }
        }
    }

    /// Prepares the dyno's filesystem and starts it under a new monitor. `None` (said in the
    /// log) when it could not start.
    async fn start_dyno(&mut self, is_web: bool) -> Option<Live> {
        self.spec.port = None;
        if is_web {
            match free_port() {
                Ok(p) => self.spec.port = Some(p),
                Err(e) => {
                    self.say(&format!("Error: no free port for the dyno: {e}"));
                    return None;
                }
            }
        }
        // The port is in the bundle the backend writes.
        let started = Instant::now();
        let prepared = self.prepare().await;
        // Timings for the server log (where a deploy's time goes: bench/build.sh prints them).
        tracing::info!(dyno = %self.dyno.name, ms = started.elapsed().as_millis() as u64, "prepared the dyno's filesystem");
        if let Err(e) = prepared {
            self.say(&format!(
                "Error: could not prepare the dyno's filesystem: {e}"
            ));
            return None;
        }
        self.say(&format!(
            "Starting process with command `{}`",
            self.dyno.command
        ));
        let launch = match self.inner.backend.launch(&self.spec) {
            Ok(launch) => launch,
            Err(e) => {
                self.say(&format!("Error: could not start the process: {e}"));
                return None;
            }
        };
        let dir = monitor_dir(&self.inner.cfg.dynos_dir, &self.dyno.id);
        let sink = app_sink(&self.inner, &self.dyno.app_id, &self.dyno.name);
        let attached = match Attached::start(
            &self.inner.cfg.monitor_command,
            &dir,
            &self.dyno.id,
            &launch,
            sink,
        )
        .await
        {
            Ok(attached) => attached,
            Err(e) => {
                self.say(&format!("Error: could not start the process: {e}"));
                return None;
            }
        };
        let pid = Some(attached.pids.dyno).filter(|p| *p > 0);
        tracing::info!(dyno = %self.dyno.name, ms = started.elapsed().as_millis() as u64, "started the dyno's monitor");
        if let Err(e) = std::fs::write(dir.join(SIZE_FILE), &self.spec.size.name) {
            tracing::warn!(error = %e, "could not record the dyno's size");
        }
        self.record(Lifecycle::Starting, self.spec.port.map(loopback), pid)
            .await;
        Some(Live { attached, pid })
    }

    /// How the dyno ended, with what the backend knows (the OOM killer) after its exit.
    async fn exit_of(&self, record: ExitRecord, pid: Option<u32>) -> Exit {
        if record.is_lost() {
            // Its processes may still run, with nobody holding their output: end them
            // before the dyno is restarted.
            self.say("Error: the dyno's monitor process died; stopping the dyno");
            self.inner
                .backend
                .signal_pid(&self.spec, pid, Signal::SIGKILL)
                .await;
        }
        let oom_killed = self.inner.backend.exited(&self.spec).await;
        Exit {
            status: record.status(),
            oom_killed,
        }
    }

    /// Measures the dyno's memory and CPU (kept for the dynos API), logs the runtime metrics
    /// lines when its app enables them, and R14 while over its quota. Returns whether the OOM
    /// killer has killed one of its processes.
    async fn sample(&self, load: &mut LoadTracker, pid: Option<u32>) -> bool {
        let backend = self.inner.backend.clone();
        let spec = self.spec.clone();
        let measured = tokio::task::spawn_blocking(move || backend.usage(&spec, pid)).await;
        let Ok(Some(usage)) = measured else {
            return false;
        };
        let avg = usage
            .cpu_nanos
            .and_then(|cpu| load.sample(Instant::now(), cpu));
        {
            let mut status = self.dyno.lock_status();
            status.usage = Some(usage);
            status.load = avg.or(status.load);
            status.sampled_at = Some(Utc::now());
        }
        let quota = self.spec.size.memory_quota_bytes;
        if crate::settings::runtime_metrics(&self.dyno.release.env) {
            let prefix = metrics::line_prefix(&self.dyno.app_id, &self.dyno.id, &self.dyno.name);
            self.say(&metrics::memory_line(&prefix, &usage, quota));
            if let Some(avg) = avg {
                self.say(&metrics::load_line(&prefix, &avg));
            }
        }
        if usage.memory_bytes > quota && usage.oom_kills == 0 {
            self.say(&format!(
                "Process running mem={}M({:.1}%)",
                usage.memory_bytes / (1024 * 1024),
                usage.memory_bytes as f64 * 100.0 / quota.max(1) as f64
            ));
            self.say("Error R14 (Memory quota exceeded)");
            let _ = self.inner.events.send(DynoEvent::MemoryQuotaExceeded {
                app_id: self.dyno.app_id.clone(),
                name: self.dyno.name.clone(),
                usage,
                quota_bytes: quota,
            });
        }
        usage.oom_kills > 0
    }

    async fn crashed(&self, exit: Exit, addr: Option<SocketAddr>, pid: Option<u32>) -> Outcome {
        if exit.oom_killed {
            self.say("Error R15 (Memory quota vastly exceeded)");
        }
        self.say(&format!("Process exited with status {}", exit.code()));
        self.transition(Event::Exited, addr, pid).await;
        Outcome::Crashed
    }

    /// SIGTERM to every process of the dyno, SIGKILL after the stop timeout (R12).
    async fn stop_dyno(
        &self,
        live: &mut Live,
        addr: Option<SocketAddr>,
        pid: Option<u32>,
    ) -> Outcome {
        let backend = self.inner.backend.clone();
        self.transition(Event::Stop, addr, pid).await;
        self.say("Stopping all processes with SIGTERM");
        backend.signal_pid(&self.spec, pid, Signal::SIGTERM).await;
        let timeout = self.inner.cfg.stop_timeout;
        let exit = match tokio::time::timeout(timeout, live.attached.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.say(&format!(
                    "Error R12 (Exit timeout) -> At least one process failed to exit within {} seconds of SIGTERM",
                    timeout.as_secs()
                ));
                self.say("Stopping remaining processes with SIGKILL");
                backend.signal_pid(&self.spec, pid, Signal::SIGKILL).await;
                live.attached.wait().await
            }
        };
        let exit = self.exit_of(exit, pid).await;
        self.say(&format!("Process exited with status {}", exit.code()));
        self.transition(Event::Stopped, None, None).await;
        Outcome::Stopped
    }
}

async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
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
