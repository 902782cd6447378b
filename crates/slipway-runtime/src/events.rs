//! What the runtime tells the rest of the platform about its dynos: typed [`DynoEvent`]s.
//!
//! Two ways out:
//!
//! - **The record stream** ([`DynoManager::take_events`](crate::DynoManager::take_events)):
//!   every event, in order, each stamped with its time and a sequence number, for exactly one
//!   consumer (the control plane), which records dynos in the store and prints the
//!   `heroku[web.1]` lines ([`Stamped::print`]). It never drops an event: the channel is
//!   unbounded and each event is small and bounded (names, a command, an error text cut at
//!   [`MAX_DETAIL`]); senders never wait, so a slow store never holds up a dyno.
//! - **Notifications** ([`DynoManager::subscribe`](crate::DynoManager::subscribe)): the events
//!   that change what runs or routes (added, state changed, routing, sleep, R14, removed), on a
//!   broadcast channel for any number of followers that can catch up by reading the runtime's
//!   current state when they fall behind (the route table, rollouts, health checks, deploys).
//!
//! The runtime's own durable state, what re-adoption needs, is not an event: it is written by
//! the supervisor to the dyno's monitor directory (`record.rs`) before the event is sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use slipway_logs::{LogHub, Source};
use tokio::sync::{broadcast, mpsc};

use crate::backend::Usage;
use crate::lifecycle::Lifecycle;
use crate::metrics::{self, LoadAvg};
use crate::record::DynoRecord;

/// The longest error text an event carries (the rest is cut).
pub const MAX_DETAIL: usize = 1024;

/// Why a dyno could not be started (said in its log; the dyno then counts as crashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFailure {
    /// No free port for a web dyno.
    NoPort(String),
    /// Its filesystem (slug copy, bundle) could not be prepared.
    Prepare(String),
    /// Its monitor or process could not be started.
    Launch(String),
}

/// What happened to a dyno.
#[derive(Debug, Clone, PartialEq)]
pub enum DynoEvent {
    /// A dyno joined the app's dynos: started by `converge` (in `starting`), or re-adopted
    /// from a previous server (in its recorded state).
    Added {
        app_id: String,
        dyno_id: String,
        name: String,
    },
    /// The runtime's durable record of the dyno changed (a new run, a transition): the
    /// control plane's copy follows it.
    Recorded(Box<DynoRecord>),
    /// A lifecycle transition (`State changed from starting to up` when the state as Heroku
    /// names it changes).
    Changed {
        app_id: String,
        dyno_id: String,
        name: String,
        release_version: i64,
        from: Lifecycle,
        to: Lifecycle,
        pid: Option<u32>,
        addr: Option<SocketAddr>,
    },
    /// Its process is being started (`Starting process with command ...`).
    Launching {
        app_id: String,
        name: String,
        command: String,
    },
    /// It could not be started.
    StartFailed {
        app_id: String,
        name: String,
        failure: StartFailure,
    },
    /// A web dyno did not bind `PORT` in time and is killed (R10).
    BootTimeout {
        app_id: String,
        name: String,
        secs: u64,
    },
    /// Its main process ended; `oom_killed`: by the kernel's OOM killer (R15).
    Exited {
        app_id: String,
        name: String,
        code: i32,
        oom_killed: bool,
    },
    /// It ended while no server was running (found at start-up).
    ExitedWhileAway {
        app_id: String,
        name: String,
        code: i32,
    },
    /// Its monitor died under it: its processes are killed and it is restarted.
    MonitorDied { app_id: String, name: String },
    /// A stop began: SIGTERM to every process.
    Stopping { app_id: String, name: String },
    /// Processes outlived the stop timeout and are killed (R12).
    ExitTimeout {
        app_id: String,
        name: String,
        secs: u64,
    },
    /// Memory and CPU were measured; `log_metrics`: the app wants the runtime metrics lines.
    Sampled {
        app_id: String,
        dyno_id: String,
        name: String,
        usage: Usage,
        load: Option<LoadAvg>,
        quota_bytes: u64,
        log_metrics: bool,
    },
    /// Memory was measured over the dyno's quota (each check while it stays over: R14).
    MemoryQuotaExceeded {
        app_id: String,
        name: String,
        usage: Usage,
        quota_bytes: u64,
    },
    /// The app went to sleep (`web`: its web dynos, which stop) or woke up.
    Sleep {
        app_id: String,
        asleep: bool,
        web: Vec<String>,
    },
    /// Whether the dyno may get requests changed without a state change: its health checks
    /// passed or failed, or it left routing to drain.
    Routing {
        app_id: String,
        dyno_id: String,
        name: String,
    },
    /// A rollout's new web dynos never became healthy: they stop, the previous ones stay.
    RolloutFailed {
        app_id: String,
        version: i64,
        reason: String,
    },
    /// A replaced web dyno still had requests in flight when its drain timed out.
    DrainTimedOut {
        app_id: String,
        name: String,
        left: usize,
        secs: u64,
    },
    /// The reconciliation pass (`reconcile.rs`) found the dyno drifted from the formation
    /// and corrected it; `message` says how (`Reconciling: ...`).
    Reconciled {
        app_id: String,
        name: String,
        message: String,
    },
    /// The supervisor finished: the dyno, its container, directory and record are gone.
    Removed {
        app_id: String,
        dyno_id: String,
        name: String,
    },
}

impl DynoEvent {
    /// The app the event is about.
    pub fn app_id(&self) -> &str {
        match self {
            DynoEvent::Recorded(record) => &record.app_id,
            DynoEvent::Added { app_id, .. }
            | DynoEvent::Changed { app_id, .. }
            | DynoEvent::Launching { app_id, .. }
            | DynoEvent::StartFailed { app_id, .. }
            | DynoEvent::BootTimeout { app_id, .. }
            | DynoEvent::Exited { app_id, .. }
            | DynoEvent::ExitedWhileAway { app_id, .. }
            | DynoEvent::MonitorDied { app_id, .. }
            | DynoEvent::Stopping { app_id, .. }
            | DynoEvent::ExitTimeout { app_id, .. }
            | DynoEvent::Sampled { app_id, .. }
            | DynoEvent::MemoryQuotaExceeded { app_id, .. }
            | DynoEvent::Sleep { app_id, .. }
            | DynoEvent::Routing { app_id, .. }
            | DynoEvent::RolloutFailed { app_id, .. }
            | DynoEvent::DrainTimedOut { app_id, .. }
            | DynoEvent::Reconciled { app_id, .. }
            | DynoEvent::Removed { app_id, .. } => app_id,
        }
    }

    /// Whether followers of what runs and routes are told (see the module's documentation).
    fn notifies(&self) -> bool {
        matches!(
            self,
            DynoEvent::Added { .. }
                | DynoEvent::Changed { .. }
                | DynoEvent::MemoryQuotaExceeded { .. }
                | DynoEvent::Sleep { .. }
                | DynoEvent::Routing { .. }
                | DynoEvent::Removed { .. }
        )
    }

    /// The `heroku[<dyno>]` lines the event prints in the app's log: (dyno, message).
    pub fn log_lines(&self) -> Vec<(String, String)> {
        let one = |name: &str, message: String| vec![(name.to_string(), message)];
        match self {
            DynoEvent::Added { .. }
            | DynoEvent::Recorded(_)
            | DynoEvent::Routing { .. }
            | DynoEvent::Removed { .. } => Vec::new(),
            DynoEvent::Changed { name, from, to, .. } => {
                if from.public() == to.public() {
                    Vec::new()
                } else {
                    one(
                        name,
                        format!(
                            "State changed from {} to {}",
                            from.public().as_str(),
                            to.public().as_str()
                        ),
                    )
                }
            }
            DynoEvent::Launching { name, command, .. } => {
                one(name, format!("Starting process with command `{command}`"))
            }
            DynoEvent::StartFailed { name, failure, .. } => one(
                name,
                match failure {
                    StartFailure::NoPort(e) => format!("Error: no free port for the dyno: {e}"),
                    StartFailure::Prepare(e) => {
                        format!("Error: could not prepare the dyno's filesystem: {e}")
                    }
                    StartFailure::Launch(e) => format!("Error: could not start the process: {e}"),
                },
            ),
            DynoEvent::BootTimeout { name, secs, .. } => vec![
                (name.clone(), format!("Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {secs} seconds of launch")),
                (name.clone(), "Stopping process with SIGKILL".to_string()),
            ],
            DynoEvent::Exited {
                name,
                code,
                oom_killed,
                ..
            } => {
                let mut lines = Vec::new();
                if *oom_killed {
                    lines.push((
                        name.clone(),
                        "Error R15 (Memory quota vastly exceeded)".to_string(),
                    ));
                }
                lines.push((name.clone(), format!("Process exited with status {code}")));
                lines
            }
            DynoEvent::ExitedWhileAway { name, code, .. } => one(
                name,
                format!("Process exited with status {code} while the platform was away"),
            ),
            DynoEvent::MonitorDied { name, .. } => one(
                name,
                "Error: the dyno's monitor process died; stopping the dyno".to_string(),
            ),
            DynoEvent::Stopping { name, .. } => {
                one(name, "Stopping all processes with SIGTERM".to_string())
            }
            DynoEvent::ExitTimeout { name, secs, .. } => vec![
                (name.clone(), format!("Error R12 (Exit timeout) -> At least one process failed to exit within {secs} seconds of SIGTERM")),
                (name.clone(), "Stopping remaining processes with SIGKILL".to_string()),
            ],
            DynoEvent::Sampled {
                app_id,
                dyno_id,
                name,
                usage,
                load,
                quota_bytes,
                log_metrics,
            } => {
                if !log_metrics {
                    return Vec::new();
                }
                let prefix = metrics::line_prefix(app_id, dyno_id, name);
                let mut lines = vec![(
                    name.clone(),
                    metrics::memory_line(&prefix, usage, *quota_bytes),
                )];
                if let Some(load) = load {
                    lines.push((name.clone(), metrics::load_line(&prefix, load)));
                }
                lines
            }
            DynoEvent::MemoryQuotaExceeded {
                name,
                usage,
                quota_bytes,
                ..
            } => vec![
                (
                    name.clone(),
                    format!(
                        "Process running mem={}M({:.1}%)",
                        usage.memory_bytes / (1024 * 1024),
                        usage.memory_bytes as f64 * 100.0 / (*quota_bytes).max(1) as f64
                    ),
                ),
                (name.clone(), "Error R14 (Memory quota exceeded)".to_string()),
            ],
            DynoEvent::RolloutFailed {
                version, reason, ..
            } => one(
                "web",
                format!("Rollout of v{version} failed: {reason}; the previous dynos keep serving"),
            ),
            DynoEvent::DrainTimedOut {
                name, left, secs, ..
            } => one(
                name,
                format!(
                    "Stopping with {left} request(s) still in flight after the {secs} s drain timeout"
                ),
            ),
            DynoEvent::Reconciled { name, message, .. } => one(name, message.clone()),
            DynoEvent::Sleep { asleep, web, .. } => {
                if *asleep {
                    web.iter()
                        .map(|name| (name.clone(), "Idling".to_string()))
                        .collect()
                } else {
                    one(
                        "web",
                        "Unidling: a request arrived for a sleeping app".to_string(),
                    )
                }
            }
        }
    }
}

/// An event on the record stream: when it happened, and its place in the stream (1, 2, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub event: DynoEvent,
}

impl Stamped {
    /// Writes the event's lines to the app's log, with the event's time.
    pub fn print(&self, logs: &LogHub) {
        let app = self.event.app_id();
        for (dyno, message) in self.event.log_lines() {
            logs.write_at(app, Source::Heroku, &dyno, &message, self.at);
        }
    }
}

/// The record stream's receiving end (see the module's documentation).
pub type EventStream = mpsc::UnboundedReceiver<Stamped>;

/// Where the runtime sends its events.
pub(crate) struct Events {
    record: mpsc::UnboundedSender<Stamped>,
    stream: std::sync::Mutex<Option<EventStream>>,
    notify: broadcast::Sender<DynoEvent>,
    /// The last sequence number sent.
    seq: AtomicU64,
    /// Sends happen under this lock, so sequence numbers are in stream order.
    order: std::sync::Mutex<()>,
}

impl Events {
    pub(crate) fn new() -> Self {
        let (record, stream) = mpsc::unbounded_channel();
        Self {
            record,
            stream: std::sync::Mutex::new(Some(stream)),
            notify: broadcast::channel(1024).0,
            seq: AtomicU64::new(0),
            order: std::sync::Mutex::new(()),
        }
    }

    pub(crate) fn send(&self, event: DynoEvent) {
        if event.notifies() {
            let _ = self.notify.send(event.clone());
        }
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        // The receiver lives as long as the manager (it is taken, never dropped, by the
        // control plane); a send to a dropped one means nobody records any more.
        let _ = self.record.send(Stamped {
            seq,
            at: Utc::now(),
            event,
        });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<DynoEvent> {
        self.notify.subscribe()
    }

    pub(crate) fn take_stream(&self) -> Option<EventStream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}

/// `detail`, cut to [`MAX_DETAIL`] bytes (at a character boundary).
pub(crate) fn bounded(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_reaches_the_stream_in_order_even_unread() {
        let events = Events::new();
        let mut notes = events.subscribe();
        for i in 0..5000 {
            events.send(DynoEvent::Exited {
                app_id: "a".into(),
                name: format!("worker.{i}"),
                code: 1,
                oom_killed: false,
            });
        }
        let mut stream = events.take_stream().expect("stream");
        assert!(events.take_stream().is_none(), "one consumer only");
        for want in 1..=5000u64 {
            let got = stream.try_recv().expect("event");
            assert_eq!(got.seq, want);
            assert_eq!(
                got.event.log_lines(),
                [(
                    format!("worker.{}", want - 1),
                    "Process exited with status 1".to_string()
                )]
            );
        }
        assert_eq!(events.last_seq(), 5000);
        // Log-only events are not notifications.
        assert!(notes.try_recv().is_err());
    }

    #[test]
    fn events_print_heroku_s_lines() {
        let (app_id, name) = (String::from("a"), String::from("web.1"));
        let cases: Vec<(DynoEvent, Vec<&str>)> = vec![
            (
                DynoEvent::BootTimeout { app_id: app_id.clone(), name: name.clone(), secs: 60 },
                vec![
                    "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 60 seconds of launch",
                    "Stopping process with SIGKILL",
                ],
            ),
            (
                DynoEvent::Exited { app_id: app_id.clone(), name: name.clone(), code: 137, oom_killed: true },
                vec!["Error R15 (Memory quota vastly exceeded)", "Process exited with status 137"],
            ),
            (
                DynoEvent::ExitTimeout { app_id: app_id.clone(), name: name.clone(), secs: 30 },
                vec![
                    "Error R12 (Exit timeout) -> At least one process failed to exit within 30 seconds of SIGTERM",
                    "Stopping remaining processes with SIGKILL",
                ],
            ),
            (
                DynoEvent::MemoryQuotaExceeded {
                    app_id: app_id.clone(),
                    name: name.clone(),
                    usage: Usage { memory_bytes: 600 << 20, ..Usage::default() },
                    quota_bytes: 512 << 20,
                },
                vec!["Process running mem=600M(117.2%)", "Error R14 (Memory quota exceeded)"],
            ),
            (
                DynoEvent::RolloutFailed { app_id: app_id.clone(), version: 3, reason: "web.1 crashed".into() },
                vec!["Rollout of v3 failed: web.1 crashed; the previous dynos keep serving"],
            ),
            (
                DynoEvent::DrainTimedOut { app_id: app_id.clone(), name: name.clone(), left: 2, secs: 30 },
                vec!["Stopping with 2 request(s) still in flight after the 30 s drain timeout"],
            ),
            (
                DynoEvent::Changed {
                    app_id: app_id.clone(),
                    dyno_id: "d".into(),
                    name: name.clone(),
                    release_version: 1,
                    from: Lifecycle::Up,
                    to: Lifecycle::Stopping { from: crate::record::DynoState::Up },
                    pid: None,
                    addr: None,
                },
                vec![],
            ),
        ];
        for (event, want) in cases {
            let got: Vec<String> = event.log_lines().into_iter().map(|(_, m)| m).collect();
            assert_eq!(got, want, "{event:?}");
        }
    }

    #[test]
    fn long_details_are_cut() {
        let cut = bounded("é".repeat(MAX_DETAIL));
        assert!(cut.len() <= MAX_DETAIL + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
    }
}
