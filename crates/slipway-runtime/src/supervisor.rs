//! One dyno's life: prepare its filesystem, start it through the backend under a dyno monitor
//! (`monitor.rs`, which outlives the server), watch it boot and its memory, restart it when it
//! crashes, stop it when asked. Every state change is a [`Lifecycle`] transition, saved in the
//! dyno's own record (`record.rs`: what a later server needs to re-adopt the dyno, or clean up
//! after it) and then reported as typed events (`events.rs`), from which the control plane
//! prints Heroku's `State changed from X to Y` line and keeps its copy in the store. Nothing
//! here writes the app's log but the dyno's own output (`app[web.1]`).
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
use tokio::sync::watch;

use crate::attach::{monitor_dir, Attached, LineSink};
use crate::backend::{remove_dir, DynoSize, DynoSpec, Exit};
use crate::events::{bounded, StartFailure};
use crate::lifecycle::{Event, Lifecycle};
use crate::metrics::LoadTracker;
use crate::monitor::ExitRecord;
use crate::process::free_port;
use crate::record::{DynoRecord, DynoState};
use crate::{Dyno, DynoEvent, Inner, ProcessSpec, ReleaseSpec, Status};

/// A dyno that ran this long before crashing is restarted at once, as a first crash is.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The file in which servers before `record.rs` kept a dyno's size (`standard-2X`).
const SIZE_FILE: &str = "size";

/// The size the monitor directory of a dyno started by an older server records, if any.
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
    let created_at = Utc::now().timestamp_millis();
    start_supervisor(
        inner,
        release,
        spec,
        name,
        (id, created_at),
        Lifecycle::Starting,
        None,
    )
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
    start_supervisor(
        inner,
        release,
        &spec,
        record.name.clone(),
        (record.id.clone(), record.created_at),
        state,
        Some((attached, record.port)),
    )
}

fn start_supervisor(
    inner: &Arc<Inner>,
    release: &ReleaseSpec,
    spec: &ProcessSpec,
    name: String,
    (id, created_at): (String, i64),
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
            addr: port.map(|p| inner.backend.address(p)),
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
                created_at,
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
    /// When its current run began (milliseconds since the epoch).
    created_at: i64,
}

enum Outcome {
    Crashed,
    Stopped,
}

impl Supervisor {
    fn app(&self) -> String {
        self.dyno.app_id.clone()
    }

    fn name(&self) -> String {
        self.dyno.name.clone()
    }

    /// The only way a dyno's state changes. Saved in the dyno's record, then reported
    /// ([`DynoEvent::Changed`], which says `State changed from X to Y` when the state as
    /// Heroku names it changes, and [`DynoEvent::Recorded`]).
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
        let record = self.save(to.public(), addr, pid).await;
        self.inner.events.send(DynoEvent::Changed {
            app_id: self.dyno.app_id.clone(),
            dyno_id: self.dyno.id.clone(),
            name: self.dyno.name.clone(),
            release_version: self.dyno.release.version,
            from,
            to,
            pid,
            addr,
        });
        self.inner
            .events
            .send(DynoEvent::Recorded(Box::new(record)));
    }

    fn record_of(
        &self,
        state: DynoState,
        addr: Option<SocketAddr>,
        pid: Option<u32>,
    ) -> DynoRecord {
        DynoRecord {
            id: self.dyno.id.clone(),
            app_id: self.dyno.app_id.clone(),
            name: self.dyno.name.clone(),
            process_type: self.dyno.process_type.clone(),
            command: self.dyno.command.clone(),
            release_version: self.dyno.release.version,
            state,
            pid,
            port: addr.map(|a| a.port()),
            dir: self.spec.dir.display().to_string(),
            size: self.spec.size.name.clone(),
            created_at: self.created_at,
        }
    }

    /// Saves the dyno's record in its monitor directory (when it has one: a dyno whose
    /// monitor never started has nothing running to find again).
    async fn save(
        &self,
        state: DynoState,
        addr: Option<SocketAddr>,
        pid: Option<u32>,
    ) -> DynoRecord {
        let record = self.record_of(state, addr, pid);
        let dir = monitor_dir(&self.inner.cfg.dynos_dir, &self.dyno.id);
        let saving = record.clone();
        let saved = tokio::task::spawn_blocking(move || {
            if dir.is_dir() {
                saving.save(&dir)
            } else {
                Ok(())
            }
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save the dyno's record"),
            Err(e) => tracing::warn!(error = %e, "saving the dyno's record panicked"),
        }
        record
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
        self.inner.events.send(DynoEvent::Removed {
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
        let addr = self.spec.port.map(|p| self.inner.backend.address(p));
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
                    self.inner.events.send(DynoEvent::BootTimeout {
                        app_id: self.app(),
                        name: self.name(),
                        secs: boot_timeout.as_secs(),
                    });
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
                    self.start_failed(StartFailure::NoPort(e.to_string()));
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
            self.start_failed(StartFailure::Prepare(e));
            return None;
        }
        self.inner.events.send(DynoEvent::Launching {
            app_id: self.app(),
            name: self.name(),
            command: self.dyno.command.clone(),
        });
        let launch = match self.inner.backend.launch(&self.spec) {
            Ok(launch) => launch,
            Err(e) => {
                self.start_failed(StartFailure::Launch(e.to_string()));
                return None;
            }
        };
        let dir = monitor_dir(&self.inner.cfg.dynos_dir, &self.dyno.id);
        let sink = app_sink(&self.inner, &self.dyno.app_id, &self.dyno.name);
        let addr = self.spec.port.map(|p| self.inner.backend.address(p));
        // Saved in the monitor directory before the monitor starts: a dyno never runs
        // without a record a later server can find.
        let record = self.record_of(DynoState::Starting, addr, None);
        let attached = match Attached::start(
            &self.inner.cfg.monitor_command,
            &dir,
            &record,
            &launch,
            sink,
        )
        .await
        {
            Ok(attached) => attached,
            Err(e) => {
                self.start_failed(StartFailure::Launch(e.to_string()));
                return None;
            }
        };
        let pid = Some(attached.pids.dyno).filter(|p| *p > 0);
        tracing::info!(dyno = %self.dyno.name, ms = started.elapsed().as_millis() as u64, "started the dyno's monitor");
        let record = self.save(DynoState::Starting, addr, pid).await;
        self.inner
            .events
            .send(DynoEvent::Recorded(Box::new(record)));
        Some(Live { attached, pid })
    }

    fn start_failed(&self, failure: StartFailure) {
        let failure = match failure {
            StartFailure::NoPort(e) => StartFailure::NoPort(bounded(e)),
            StartFailure::Prepare(e) => StartFailure::Prepare(bounded(e)),
            StartFailure::Launch(e) => StartFailure::Launch(bounded(e)),
        };
        self.inner.events.send(DynoEvent::StartFailed {
            app_id: self.app(),
            name: self.name(),
            failure,
        });
    }

    /// How the dyno ended, with what the backend knows (the OOM killer) after its exit.
    async fn exit_of(&self, record: ExitRecord, pid: Option<u32>) -> Exit {
        if record.is_lost() {
            // Its processes may still run, with nobody holding their output: end them
            // before the dyno is restarted.
            self.inner.events.send(DynoEvent::MonitorDied {
                app_id: self.app(),
                name: self.name(),
            });
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
        self.inner.events.send(DynoEvent::Sampled {
            app_id: self.app(),
            dyno_id: self.dyno.id.clone(),
            name: self.name(),
            usage,
            load: avg,
            quota_bytes: quota,
            log_metrics: crate::settings::runtime_metrics(&self.dyno.release.env),
        });
        if usage.memory_bytes > quota && usage.oom_kills == 0 {
            self.inner.events.send(DynoEvent::MemoryQuotaExceeded {
                app_id: self.dyno.app_id.clone(),
                name: self.dyno.name.clone(),
                usage,
                quota_bytes: quota,
            });
        }
        usage.oom_kills > 0
    }

    async fn crashed(&self, exit: Exit, addr: Option<SocketAddr>, pid: Option<u32>) -> Outcome {
        self.inner.events.send(DynoEvent::Exited {
            app_id: self.app(),
            name: self.name(),
            code: exit.code(),
            oom_killed: exit.oom_killed,
        });
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
        self.inner.events.send(DynoEvent::Stopping {
            app_id: self.app(),
            name: self.name(),
        });
        backend.signal_pid(&self.spec, pid, Signal::SIGTERM).await;
        let timeout = self.inner.cfg.stop_timeout;
        let exit = match tokio::time::timeout(timeout, live.attached.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.inner.events.send(DynoEvent::ExitTimeout {
                    app_id: self.app(),
                    name: self.name(),
                    secs: timeout.as_secs(),
                });
                backend.signal_pid(&self.spec, pid, Signal::SIGKILL).await;
                live.attached.wait().await
            }
        };
        let exit = self.exit_of(exit, pid).await;
        self.inner.events.send(DynoEvent::Exited {
            app_id: self.app(),
            name: self.name(),
            code: exit.code(),
            // An OOM kill during a stop is not an R15: the dyno was going anyway.
            oom_killed: false,
        });
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
