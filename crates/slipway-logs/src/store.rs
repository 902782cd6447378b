//! Log history on disk: `<dir>/<app-id>/` holds segment files `<first-seq>.log` (one JSON
//! [`LogLine`] per line, oldest segment first) and `limits.json` (the app's
//! [`HistoryLimits`], when it set its own).
//!
//! One writer thread appends what the hub hands it, in batches, so a dyno's write never waits
//! for the disk. A segment holds a quarter of the app's limits; when a new segment starts, the
//! oldest ones go while the rest still hold the limit in lines (and always while they exceed it
//! in bytes), so the disk holds at most the limits plus one segment and the newest lines are
//! never the ones removed. A torn last record (a crash mid-write) is skipped at load.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::{HistoryLimits, LogLine};

const LIMITS_FILE: &str = "limits.json";
/// Most messages the writer takes in one batch before flushing.
const BATCH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log history directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the log writer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("log history limits in {path} are not valid JSON: {source}")]
    Limits {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Segment {
    lines: usize,
    bytes: u64,
    path: PathBuf,
}

/// One app's files, shared by the hub (to create and remove) and the writer (to append).
pub(crate) struct AppLog {
    dir: PathBuf,
    limits: HistoryLimits,
    segments: VecDeque<Segment>,
    current: Option<BufWriter<File>>,
    /// Set when the app is destroyed: the writer must not recreate its files.
    removed: bool,
    /// The next line starts a new segment (after loading: the last one may end torn).
    start_new: bool,
}

impl AppLog {
    fn new(dir: PathBuf, limits: HistoryLimits) -> Self {
        Self {
            dir,
            limits,
            segments: VecDeque::new(),
            current: None,
            removed: false,
            start_new: false,
        }
    }

    fn segment_lines(&self) -> usize {
        (self.limits.lines / 4).max(1)
    }

    fn segment_bytes(&self) -> u64 {
        (self.limits.bytes / 4).max(4096)
    }

    fn append(&mut self, line: &LogLine) -> Result<(), StoreError> {
        if self.removed {
            return Ok(());
        }
        let mut record = serde_json::to_vec(line).map_err(|e| StoreError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        record.push(b'\n');
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.lines >= self.segment_lines() || s.bytes >= self.segment_bytes());
        if full || self.start_new || self.current.is_none() {
            self.rotate(line.seq, full || self.start_new)?;
            self.start_new = false;
        }
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        let Some(out) = self.current.as_mut() else {
            return Ok(());
        };
        out.write_all(&record).map_err(io(&segment.path))?;
        segment.lines += 1;
        segment.bytes += record.len() as u64;
        Ok(())
    }

    /// Opens the segment to append to: a new one starting at `seq` when `new`, else the last.
    fn rotate(&mut self, seq: u64, new: bool) -> Result<(), StoreError> {
        if let Some(mut out) = self.current.take() {
            let path = self.segments.back().map(|s| s.path.clone());
            out.flush()
                .map_err(io(path.as_deref().unwrap_or(&self.dir)))?;
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if new {
            let path = self.dir.join(format!("{seq:020}.log"));
            self.segments.push_back(Segment {
                lines: 0,
                bytes: 0,
                path,
            });
            self.prune();
        }
        let Some(segment) = self.segments.back() else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment.path)
            .map_err(io(&segment.path))?;
        self.current = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    /// Removes the oldest segments the limits no longer need (never the last one).
    fn prune(&mut self) {
        loop {
            let lines: usize = self.segments.iter().map(|s| s.lines).sum();
            let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
            let Some(oldest) = self.segments.front() else {
                return;
            };
            if self.segments.len() <= 1
                || (lines - oldest.lines < self.limits.lines && bytes <= self.limits.bytes)
            {
                return;
            }
            if let Err(e) = fs::remove_file(&oldest.path) {
                tracing::warn!(path = %oldest.path.display(), error = %e, "could not remove an old log segment");
            }
            self.segments.pop_front();
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if let Some(out) = self.current.as_mut() {
            out.flush().map_err(io(&self.dir))?;
        }
        Ok(())
    }
}

enum Msg {
    Line(Arc<Mutex<AppLog>>, Arc<LogLine>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The writer thread's handle.
pub(crate) struct Disk {
    root: PathBuf,
    tx: SyncSender<Msg>,
}

/// One app's history as loaded at start-up.
pub(crate) struct Loaded {
    pub app_id: String,
    pub limits: HistoryLimits,
    pub next_seq: u64,
    pub lines: Vec<LogLine>,
    pub files: Arc<Mutex<AppLog>>,
}

fn lock(log: &Mutex<AppLog>) -> std::sync::MutexGuard<'_, AppLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Disk {
    pub fn open(
        root: &Path,
        defaults: HistoryLimits,
        queue: usize,
    ) -> Result<(Self, Vec<Loaded>), StoreError> {
        fs::create_dir_all(root).map_err(io(root))?;
        let mut loaded = Vec::new();
        for entry in fs::read_dir(root).map_err(io(root))? {
            let entry = entry.map_err(io(root))?;
            if !entry.file_type().map_err(io(root))?.is_dir() {
                continue;
            }
            let Some(app_id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            loaded.push(load_app(&entry.path(), app_id, defaults)?);
        }
        let (tx, rx) = mpsc::sync_channel(queue);
        std::thread::Builder::new()
            .name("slipway-log-writer".into())
            .spawn(move || {
                let _span = tracing::info_span!("log_writer").entered();
                writer(rx);
            })
            .map_err(StoreError::Thread)?;
        Ok((
            Self {
                root: root.to_path_buf(),
                tx,
            },
            loaded,
        ))
    }

    pub fn app_log(&self, app_id: &str, limits: HistoryLimits) -> Arc<Mutex<AppLog>> {
        Arc::new(Mutex::new(AppLog::new(self.root.join(app_id), limits)))
    }

    /// Hands a line to the writer; false if its queue is full (the line is not kept on disk).
    pub fn offer(&self, files: &Arc<Mutex<AppLog>>, line: Arc<LogLine>) -> bool {
        match self.tx.try_send(Msg::Line(files.clone(), line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The writer is gone (it panicked): nothing more can be kept.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    pub fn remove(&self, app_id: &str, files: Option<Arc<Mutex<AppLog>>>) {
        if let Some(files) = files {
            let mut log = lock(&files);
            log.removed = true;
            log.current = None;
        }
        let dir = self.root.join(app_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %dir.display(), error = %e, "could not delete an app's log history")
            }
        }
    }

    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let tx = self.tx.clone();
        // `send` blocks while the queue is full: not on the runtime's threads.
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Flush(done)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = wait.await;
        }
    }
}

/// Saves an app's own limits next to its history.
pub(crate) fn set_limits(files: &Mutex<AppLog>, limits: HistoryLimits) -> Result<(), StoreError> {
    let mut log = lock(files);
    fs::create_dir_all(&log.dir).map_err(io(&log.dir))?;
    let path = log.dir.join(LIMITS_FILE);
    let tmp = log.dir.join(format!("{LIMITS_FILE}.tmp"));
    let body = serde_json::to_vec(&limits).map_err(|source| StoreError::Limits {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, body).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    log.limits = limits;
    Ok(())
}

fn load_app(dir: &Path, app_id: String, defaults: HistoryLimits) -> Result<Loaded, StoreError> {
    let limits_path = dir.join(LIMITS_FILE);
    let limits = match fs::read(&limits_path) {
        Ok(body) => serde_json::from_slice(&body).map_err(|source| StoreError::Limits {
            path: limits_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => defaults,
        Err(e) => return Err(io(&limits_path)(e)),
    };
    let mut paths: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            paths.push((first, path));
        }
    }
    paths.sort();
    let mut log = AppLog::new(dir.to_path_buf(), limits);
    let mut lines: VecDeque<LogLine> = VecDeque::new();
    let mut next_seq = 0;
    for (_, path) in paths {
        let file = File::open(&path).map_err(io(&path))?;
        let mut segment = Segment {
            lines: 0,
            bytes: 0,
            path: path.clone(),
        };
        for record in BufReader::new(file).split(b'\n') {
            let record = record.map_err(io(&path))?;
            segment.bytes += record.len() as u64 + 1;
            match serde_json::from_slice::<LogLine>(&record) {
                Ok(line) if line.seq >= next_seq => {
                    segment.lines += 1;
                    next_seq = line.seq + 1;
                    lines.push_back(line);
                    if lines.len() > limits.lines {
                        lines.pop_front();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a torn log record");
                }
            }
        }
        log.segments.push_back(segment);
    }
    // New lines go into a new segment: a torn record never sits before a good one.
    log.start_new = true;
    Ok(Loaded {
        app_id,
        limits,
        next_seq,
        lines: lines.into(),
        files: Arc::new(Mutex::new(log)),
    })
}

fn writer(rx: Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut touched: Vec<Arc<Mutex<AppLog>>> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(files, line) => {
                    let mut log = lock(&files);
                    if let Err(e) = log.append(&line) {
                        tracing::error!(error = %e, "could not append to an app's log history");
                    }
                    drop(log);
                    if !touched.iter().any(|t| Arc::ptr_eq(t, &files)) {
                        touched.push(files);
                    }
                }
                Msg::Flush(done) => flushes.push(done),
            }
            taken += 1;
            if taken < BATCH {
                next = rx.try_recv().ok();
            }
        }
        for files in touched {
            if let Err(e) = lock(&files).flush() {
                tracing::error!(error = %e, "could not write an app's log history");
            }
        }
        let flushed = !flushes.is_empty();
        for done in flushes {
            let _ = done.send(());
        }
        // Let the next lines gather for a moment: a sender finding this thread awake (not
        // parked in `recv`) wakes nobody, so a busy router does not pay a futex wake-up per
        // line. Tails are fed before the disk (`LogHub::push`), so they never wait for this.
        if !flushed {
            std::thread::sleep(GATHER);
        }
    }
}

/// How long the disk writer lets lines gather after writing a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
