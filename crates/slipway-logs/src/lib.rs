//! Per-app log streams in Logplex's model.
//!
//! Every component (router, dyno manager, build, API) writes lines to the [`LogHub`] under the
//! app's id. The hub gives each line a per-app sequence number and a timestamp (never earlier
//! than the app's previous line, so the stream is time-ordered across dynos), keeps the app's
//! recent history in memory (bounded by lines and bytes, [`HistoryLimits`]), hands it to the
//! disk writer ([`store`], a thread that appends in batches, so history survives restarts) and
//! to the app's drains ([`drain`]), and fans it out to tails.
//!
//! Nothing here blocks a writer: a tail that falls behind, a disk that cannot keep up or a drain
//! that is slow or dead loses lines, and what was lost is counted and said in the stream as
//! `heroku[logplex]: Error L10 (output buffer overflow): N messages dropped since T`.

pub mod drain;
mod store;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast;

pub use drain::{DrainError, DrainSpec, DrainTarget};
pub use store::StoreError;

/// Lines of history kept per app unless the app sets its own (Heroku keeps 1,500).
pub const HISTORY_LINES: usize = 1500;
/// Bytes of history kept per app unless the app sets its own.
pub const HISTORY_BYTES: u64 = 16 * 1024 * 1024;
/// Most lines of history an app may ask to keep.
pub const MAX_HISTORY_LINES: usize = 100_000;
/// Most bytes of history an app may ask to keep.
pub const MAX_HISTORY_BYTES: u64 = 256 * 1024 * 1024;
/// Longer messages are split into several lines (Logplex splits at 10,000 bytes).
pub const MAX_LINE_BYTES: usize = 10_000;
const LIVE_BUFFER: usize = 4096;
/// How often at most one drop report per cause is written into a stream.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Who wrote a line: `app` (the app's own output, and `app[api]` for platform actions the
/// user took) or `heroku` (the platform: router and dyno manager), as in Heroku's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    App,
    Heroku,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Heroku => "heroku",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// The line's place in its app's stream: 0, 1, 2... never reused, also across restarts.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub source: Source,
    /// `web.1`, `router`, `api`, `run.1234`...
    pub dyno: String,
    pub message: String,
}

impl LogLine {
    /// `2013-02-11T15:19:10.123456+00:00 app[web.1]: message`
    pub fn format(&self) -> String {
        format!(
            "{} {}[{}]: {}",
            format_time(self.time),
            self.source.as_str(),
            self.dyno,
            self.message
        )
    }

    /// Bytes this line counts toward an app's history bound.
    fn weight(&self) -> u64 {
        (self.message.len() + self.dyno.len() + 48) as u64
    }
}

/// `2013-02-11T15:19:10.123456+00:00`: Heroku's log timestamp, in microseconds.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Which lines a reader wants: `--dyno web.1` (or a type prefix such as `web`) and `--source`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub dyno: Option<String>,
    pub source: Option<String>,
}

impl Filter {
    pub fn matches(&self, line: &LogLine) -> bool {
        let dyno_ok = match &self.dyno {
            None => true,
            Some(d) if d.contains('.') || d == "router" || d == "api" => line.dyno == *d,
            Some(d) => {
                line.dyno == *d
                    || line
                        .dyno
                        .strip_prefix(d.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            }
        };
        let source_ok = self
            .source
            .as_deref()
            .is_none_or(|s| s == line.source.as_str());
        dyno_ok && source_ok
    }
}

/// How much history an app keeps, on disk and in memory: the newest `lines` lines that fit in
/// `bytes` (the newest line is always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryLimits {
    pub lines: usize,
    pub bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            lines: HISTORY_LINES,
            bytes: HISTORY_BYTES,
        }
    }
}

impl HistoryLimits {
    /// Checks the limits an app asks for.
    pub fn validate(&self) -> Result<(), String> {
        if self.lines == 0 || self.lines > MAX_HISTORY_LINES {
            return Err(format!(
                "history lines must be between 1 and {MAX_HISTORY_LINES}"
            ));
        }
        if self.bytes < 4096 || self.bytes > MAX_HISTORY_BYTES {
            return Err(format!(
                "history bytes must be between 4096 and {MAX_HISTORY_BYTES}"
            ));
        }
        Ok(())
    }
}

/// How a hub is set up.
#[derive(Clone, Default)]
pub struct HubConfig {
    /// Where each app's history is kept (`<dir>/<app-id>/`); `None`: memory only.
    pub dir: Option<PathBuf>,
    /// Limits for apps that set none.
    pub defaults: HistoryLimits,
    /// Extra PEM CA certificates trusted by `syslog+tls://` and `https://` drains (besides the
    /// system's, `/etc/ssl/certs/ca-certificates.crt`).
    pub drain_ca: Option<PathBuf>,
    /// Lines waiting for the disk writer, across apps, before lines are dropped from disk.
    pub disk_queue: usize,
}

/// Lines lost for one cause since the last report.
#[derive(Default)]
struct Dropped {
    count: u64,
    since: Option<DateTime<Utc>>,
    reported: Option<Instant>,
}

impl Dropped {
    fn add(&mut self, now: DateTime<Utc>) {
        if self.count == 0 {
            self.since = Some(now);
        }
        self.count += 1;
    }

    /// The report to write now, if there is something to say and the last one is old enough.
    fn take_report(&mut self, force: bool) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        if !force && self.reported.is_some_and(|r| r.elapsed() < REPORT_EVERY) {
            return None;
        }
        let since = self.since.map(format_time).unwrap_or_default();
        let msg = format!(
            "Error L10 (output buffer overflow): {} messages dropped since {since}.",
            self.count
        );
        self.count = 0;
        self.since = None;
        self.reported = Some(Instant::now());
        Some(msg)
    }
}

struct Stream {
    history: VecDeque<Arc<LogLine>>,
    bytes: u64,
    limits: HistoryLimits,
    next_seq: u64,
    last_time: DateTime<Utc>,
    live: broadcast::Sender<Arc<LogLine>>,
    files: Option<Arc<Mutex<store::AppLog>>>,
    disk_dropped: Dropped,
    drains: Vec<drain::Handle>,
}

impl Stream {
    fn new(limits: HistoryLimits) -> Self {
        Self {
            history: VecDeque::with_capacity(64),
            bytes: 0,
            limits,
            next_seq: 0,
            last_time: DateTime::<Utc>::MIN_UTC,
            live: broadcast::channel(LIVE_BUFFER).0,
            files: None,
            disk_dropped: Dropped::default(),
            drains: Vec::new(),
        }
    }

    fn keep(&mut self, line: Arc<LogLine>) {
        self.bytes += line.weight();
        self.history.push_back(line);
        self.trim();
    }

    /// Drops the oldest lines beyond the limits, never the newest.
    fn trim(&mut self) {
        while self.history.len() > 1
            && (self.history.len() > self.limits.lines || self.bytes > self.limits.bytes)
        {
            if let Some(old) = self.history.pop_front() {
                self.bytes -= old.weight();
            }
        }
    }

    /// The last `lines` lines matching `filter`, oldest first.
    fn recent(&self, filter: &Filter, lines: usize) -> Vec<Arc<LogLine>> {
        let mut out: Vec<Arc<LogLine>> = self
            .history
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(lines)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

struct Inner {
    streams: Mutex<HashMap<String, Stream>>,
    disk: Option<store::Disk>,
    defaults: HistoryLimits,
    tls: Mutex<Option<Option<Arc<rustls::ClientConfig>>>>,
    drain_ca: Option<PathBuf>,
    /// Set at shutdown: every tail ends.
    closing: tokio::sync::watch::Sender<bool>,
}

/// All apps' log streams. Cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

impl Default for LogHub {
    fn default() -> Self {
        Self::new()
    }
}

/// What a reader gets before the live lines: the history it asked for, and how many lines it
/// asked for (with `after`) that are no longer kept.
#[derive(Debug, Default)]
pub struct Backlog {
    pub lines: Vec<Arc<LogLine>>,
    pub missed: u64,
}

impl LogHub {
    /// A hub that keeps history in memory only (tests, tools).
    pub fn new() -> Self {
        Self::build(None, HistoryLimits::default(), None)
    }

    /// A hub that keeps each app's history under `cfg.dir` and loads what an earlier server
    /// kept there. Starts the disk writer thread.
    pub fn open(cfg: HubConfig) -> Result<Self, StoreError> {
        let Some(dir) = cfg.dir.clone() else {
            return Ok(Self::build(None, cfg.defaults, cfg.drain_ca));
        };
        let queue = if cfg.disk_queue == 0 {
            65_536
        } else {
            cfg.disk_queue
        };
        let (disk, loaded) = store::Disk::open(&dir, cfg.defaults, queue)?;
        let hub = Self::build(Some(disk), cfg.defaults, cfg.drain_ca);
        {
            let mut streams = hub.lock();
            for app in loaded {
                let mut stream = Stream::new(app.limits);
                stream.next_seq = app.next_seq;
                if let Some(last) = app.lines.last() {
                    stream.last_time = last.time;
                }
                for line in app.lines {
                    stream.keep(Arc::new(line));
                }
                stream.files = Some(app.files);
                streams.insert(app.app_id, stream);
            }
        }
        Ok(hub)
    }

    fn build(disk: Option<store::Disk>, defaults: HistoryLimits, ca: Option<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                streams: Mutex::new(HashMap::new()),
                disk,
                defaults,
                tls: Mutex::new(None),
                drain_ca: ca,
                closing: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Appends one message, split into several lines where it is longer than [`MAX_LINE_BYTES`].
    pub fn write(&self, app_id: &str, source: Source, dyno: &str, message: &str) {
        self.write_at(app_id, source, dyno, message, Utc::now());
    }

    /// [`LogHub::write`] with the clock's reading given: the time something happened, for a
    /// line written a little later (a time before the stream's last line's is raised to it,
    /// so the stream never goes back in time).
    pub fn write_at(
        &self,
        app_id: &str,
        source: Source,
        dyno: &str,
        message: &str,
        now: DateTime<Utc>,
    ) {
        let mut streams = self.lock();
        self.with_stream(&mut streams, app_id, |stream| {
            for part in split_message(message) {
                self.push(stream, source, dyno, part.to_string(), now);
            }
            self.report_drops(stream, now, false);
        });
    }

    /// A writer that gathers its lines and hands them to the hub together (see [`Batcher`]).
    pub fn batcher(&self) -> Batcher {
        Batcher {
            hub: self.clone(),
            pending: Arc::new(Mutex::new(Pending::default())),
        }
    }

    /// Appends lines gathered by a [`Batcher`], in their order, under one lock.
    fn write_queued(&self, lines: Vec<Queued>) {
        if lines.is_empty() {
            return;
        }
        let mut streams = self.lock();
        let mut lines = lines.into_iter().peekable();
        while let Some(mut first) = lines.next() {
            let app_id = std::mem::take(&mut first.app_id);
            self.with_stream(&mut streams, &app_id, |stream| {
                self.push_queued(stream, first);
                // The app's lines that follow (a router's batch is often one app's) go to the
                // same stream without looking it up again.
                while let Some(line) = lines.next_if(|l| l.app_id == app_id) {
                    self.push_queued(stream, line);
                }
            });
        }
    }

    fn push_queued(&self, stream: &mut Stream, line: Queued) {
        if line.message.len() <= MAX_LINE_BYTES {
            self.push(stream, line.source, line.dyno, line.message, line.time);
        } else {
            for part in split_message(&line.message) {
                self.push(stream, line.source, line.dyno, part.to_string(), line.time);
            }
        }
        self.report_drops(stream, line.time, false);
    }

    /// [`LogHub::write`] for raw output: invalid UTF-8 is shown as U+FFFD, never dropped.
    pub fn write_bytes(&self, app_id: &str, source: Source, dyno: &str, message: &[u8]) {
        self.write(app_id, source, dyno, &String::from_utf8_lossy(message));
    }

    fn stream<'a>(&self, streams: &'a mut HashMap<String, Stream>, app_id: &str) -> &'a mut Stream {
        streams
            .entry(app_id.to_string())
            .or_insert_with(|| self.new_stream(app_id))
    }

    /// Runs `f` on the app's stream, made on its first line. Per line (the hot path) it looks
    /// the stream up with `get_mut` first: the entry API in [`LogHub::stream`] would allocate
    /// the app id's `String` for every line, though the stream almost always exists. (Returning
    /// the `get_mut` borrow instead of calling `f` does not pass today's borrow checker.)
    fn with_stream<R>(
        &self,
        streams: &mut HashMap<String, Stream>,
        app_id: &str,
        f: impl FnOnce(&mut Stream) -> R,
    ) -> R {
        if let Some(stream) = streams.get_mut(app_id) {
            return f(stream);
        }
        f(self.stream(streams, app_id))
    }

    fn new_stream(&self, app_id: &str) -> Stream {
        let mut stream = Stream::new(self.inner.defaults);
        if let Some(disk) = &self.inner.disk {
            stream.files = Some(disk.app_log(app_id, self.inner.defaults));
        }
        stream
    }

    fn push(
        &self,
        stream: &mut Stream,
        source: Source,
        dyno: &str,
        message: String,
        now: DateTime<Utc>,
    ) {
        let time = now.max(stream.last_time);
        stream.last_time = time;
        let line = Arc::new(LogLine {
            seq: stream.next_seq,
            time,
            source,
            dyno: dyno.to_string(),
            message,
        });
        stream.next_seq += 1;
        stream.keep(line.clone());
        // No receivers is fine: nobody is tailing.
        let _ = stream.live.send(line.clone());
        if let (Some(disk), Some(files)) = (&self.inner.disk, &stream.files) {
            if !disk.offer(files, line.clone()) {
                stream.disk_dropped.add(now);
            }
        }
        for drain in &mut stream.drains {
            drain.offer(line.clone(), now);
        }
    }

    /// Writes what was lost (for disk or a drain) into the stream, at most once a second per
    /// cause unless `force`.
    fn report_drops(&self, stream: &mut Stream, now: DateTime<Utc>, force: bool) {
        let mut reports = Vec::new();
        if let Some(r) = stream.disk_dropped.take_report(force) {
            tracing::warn!(report = %r, "log lines could not be written to disk");
            reports.push(r.replace("dropped", "not kept on disk"));
        }
        for drain in &mut stream.drains {
            if let Some(r) = drain.take_report(force) {
                tracing::warn!(drain = %drain.id(), report = %r, "log drain fell behind");
                reports.push(r);
            }
        }
        for r in reports {
            self.push(stream, Source::Heroku, "logplex", r, now);
        }
    }

    /// Writes the drop reports still owed for every app (call it now and then, e.g. every
    /// second, so a report is not held back until the app's next line).
    pub fn report_pending_drops(&self) {
        let now = Utc::now();
        let mut streams = self.lock();
        for stream in streams.values_mut() {
            self.report_drops(stream, now, false);
        }
    }

    /// The last `lines` lines that match `filter`, oldest first.
    pub fn history(&self, app_id: &str, filter: &Filter, lines: usize) -> Vec<LogLine> {
        match self.lock().get(app_id) {
            Some(stream) => stream
                .recent(filter, lines)
                .into_iter()
                .map(|l| (*l).clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// History and a live subscription taken atomically, so no line falls between them.
    pub fn subscribe(
        &self,
        app_id: &str,
        filter: Filter,
        lines: usize,
    ) -> (Vec<LogLine>, Subscription) {
        let (backlog, sub) = self.subscribe_after(app_id, filter, None, lines);
        (
            backlog.lines.into_iter().map(|l| (*l).clone()).collect(),
            sub,
        )
    }

    /// Like [`LogHub::subscribe`], but with `after` (the sequence number of the last line a
    /// reader has): every kept line after it instead of the last `lines`, so a reconnecting
    /// tail neither repeats nor skips lines. `missed` counts the lines after `after` that are
    /// no longer kept.
    pub fn subscribe_after(
        &self,
        app_id: &str,
        filter: Filter,
        after: Option<u64>,
        lines: usize,
    ) -> (Backlog, Subscription) {
        let mut streams = self.lock();
        let stream = self.stream(&mut streams, app_id);
        let rx = stream.live.subscribe();
        let backlog = match after {
            Some(after) if after < stream.next_seq => {
                let first = stream.history.front().map_or(stream.next_seq, |l| l.seq);
                Backlog {
                    lines: stream
                        .history
                        .iter()
                        .filter(|l| l.seq > after && filter.matches(l))
                        .cloned()
                        .collect(),
                    missed: first.saturating_sub(after + 1),
                }
            }
            _ => Backlog {
                lines: stream.recent(&filter, lines),
                missed: 0,
            },
        };
        let closing = self.inner.closing.subscribe();
        (
            backlog,
            Subscription {
                rx,
                filter,
                closing,
            },
        )
    }

    /// Ends every tail (at shutdown, so open log sessions do not hold the server up; clients
    /// reconnect to the next server and resume after the last line they got).
    pub fn close_tails(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The history limits an app keeps.
    pub fn limits(&self, app_id: &str) -> HistoryLimits {
        self.lock()
            .get(app_id)
            .map_or(self.inner.defaults, |s| s.limits)
    }

    /// Changes how much history an app keeps (saved with its history, so it outlives restarts).
    pub fn set_limits(&self, app_id: &str, limits: HistoryLimits) -> Result<(), StoreError> {
        let mut streams = self.lock();
        let stream = self.stream(&mut streams, app_id);
        if let Some(files) = &stream.files {
            store::set_limits(files, limits)?;
        }
        stream.limits = limits;
        stream.trim();
        Ok(())
    }

    /// Starts (or restarts, if one with this id runs) delivering the app's new lines to a
    /// drain. `app_name` is the syslog HOST field.
    pub fn set_drain(&self, app_id: &str, app_name: &str, spec: DrainSpec) {
        let handle = drain::Handle::start(spec, app_name, self.tls_config());
        let mut streams = self.lock();
        let stream = self.stream(&mut streams, app_id);
        stream.drains.retain(|d| d.id() != handle.id());
        stream.drains.push(handle);
    }

    /// Stops a drain; true if it ran.
    pub fn remove_drain(&self, app_id: &str, drain_id: &str) -> bool {
        let mut streams = self.lock();
        let Some(stream) = streams.get_mut(app_id) else {
            return false;
        };
        let before = stream.drains.len();
        stream.drains.retain(|d| d.id() != drain_id);
        stream.drains.len() != before
    }

    /// Lines each of the app's drains has delivered and dropped so far, by drain id.
    pub fn drain_stats(&self, app_id: &str) -> Vec<(String, drain::Stats)> {
        self.lock().get(app_id).map_or_else(Vec::new, |s| {
            s.drains
                .iter()
                .map(|d| (d.id().to_string(), d.stats()))
                .collect()
        })
    }

    /// The TLS client configuration for drains, made once; `None` if TLS is unavailable (the
    /// TLS drains then say so each time they try).
    fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        let mut tls = self.inner.tls.lock().unwrap_or_else(|p| p.into_inner());
        tls.get_or_insert_with(|| {
            drain::tls::client_config(self.inner.drain_ca.as_deref())
                .map_err(|e| tracing::error!(error = %e, "TLS for log drains is unavailable"))
                .ok()
        })
        .clone()
    }

    /// Forgets an app's stream and deletes its history and drains (when the app is
    /// destroyed). Tail readers see the end.
    pub fn remove(&self, app_id: &str) {
        let stream = self.lock().remove(app_id);
        if let Some(disk) = &self.inner.disk {
            disk.remove(app_id, stream.and_then(|s| s.files));
        }
    }

    /// Waits until every line written so far is on disk (at shutdown).
    pub async fn flush(&self) {
        if let Some(disk) = &self.inner.disk {
            disk.flush().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stream>> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.inner.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lines a [`Batcher`] holds until its flush.
#[derive(Default)]
struct Pending {
    lines: Vec<Queued>,
    /// A flush is on its way (a task on the writer's runtime).
    scheduled: bool,
}

struct Queued {
    app_id: String,
    source: Source,
    dyno: &'static str,
    message: String,
    time: DateTime<Utc>,
}

/// Most lines a [`Batcher`] holds before it hands them over at once.
const BATCH_LINES: usize = 256;

/// One busy writer's lines (a router worker's: one line per request), handed to the hub in
/// batches so writers on different threads do not meet on the hub's lock per line.
///
/// A line is queued with the time it is written; the first line of a batch schedules a flush
/// on the writer's tokio runtime, which runs once the tasks already waiting there had their
/// turn (right away when the runtime is idle), so lines reach history, disk, drains and tails
/// within one turn of the writer's runtime. A full batch ([`BATCH_LINES`]), a writer outside
/// a runtime, and a runtime that shuts down first flush at once. One batcher's lines keep
/// their order; lines of batchers on different threads are ordered by when their batches
/// arrive (each line's time is never earlier than the app's previous one, as with
/// [`LogHub::write_at`]).
#[derive(Clone)]
pub struct Batcher {
    hub: LogHub,
    pending: Arc<Mutex<Pending>>,
}

impl Batcher {
    /// Queues one message (split like [`LogHub::write`]'s when it is too long).
    pub fn write(&self, app_id: String, source: Source, dyno: &'static str, message: String) {
        let time = Utc::now();
        let mut pending = self.lock();
        pending.lines.push(Queued {
            app_id,
            source,
            dyno,
            message,
            time,
        });
        if pending.scheduled && pending.lines.len() < BATCH_LINES {
            return;
        }
        if !pending.scheduled && pending.lines.len() < BATCH_LINES {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                pending.scheduled = true;
                drop(pending);
                let flush = Flush(self.clone());
                // Dropped unpolled when the runtime shuts down first: it flushes then.
                runtime.spawn(async move { drop(flush) });
                return;
            }
        }
        let lines = std::mem::take(&mut pending.lines);
        drop(pending);
        self.hub.write_queued(lines);
    }

    /// Hands every queued line to the hub now.
    pub fn flush(&self) {
        let lines = {
            let mut pending = self.lock();
            pending.scheduled = false;
            std::mem::take(&mut pending.lines)
        };
        self.hub.write_queued(lines);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Queued lines only: a panic elsewhere cannot leave them inconsistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A scheduled flush: it runs when dropped, polled or not.
struct Flush(Batcher);

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// What a tail reader receives next.
#[derive(Debug)]
pub enum Next {
    Line(Arc<LogLine>),
    /// The reader was too slow and this many lines were dropped for it.
    Dropped(u64),
    Closed,
}

pub struct Subscription {
    rx: broadcast::Receiver<Arc<LogLine>>,
    filter: Filter,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Next {
        loop {
            let next = tokio::select! {
                next = self.rx.recv() => next,
                _ = self.closing.wait_for(|c| *c) => return Next::Closed,
            };
            match next {
                Ok(line) if self.filter.matches(&line) => return Next::Line(line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Dropped(n),
                Err(broadcast::error::RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

/// A logfmt value in double quotes that no input can break out of: `"` and `\` are
/// backslash-escaped, newlines and other control characters (and the Unicode line separators)
/// are written as `\n`, `\r`, `\t` or `\u{..}`. Use it for every value a client or user
/// supplied (paths, hosts, headers) before putting it in a `key=value` log line, so nobody can
/// forge fields such as `status=` that drains and alerts trust.
pub fn logfmt_quote(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn split_message(message: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = message;
    while rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests;
