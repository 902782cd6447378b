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

use chrono::{DateTime, Datelike, Timelike, Utc};

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

    /// Appends one line; `record` is the writer's scratch buffer, reused so a line costs no
    /// allocation.
    fn append(&mut self, line: &LogLine, record: &mut Vec<u8>) -> Result<(), StoreError> {
        if self.removed {
            return Ok(());
        }
        record.clear();
        encode(line, record);
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
        out.write_all(record).map_err(io(&segment.path))?;
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
    let mut record = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        let mut touched: Vec<Arc<Mutex<AppLog>>> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(files, line) => {
                    let mut log = lock(&files);
                    if let Err(e) = log.append(&line, &mut record) {
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

/// Appends `line` as one JSON object, byte for byte what `serde_json::to_vec(line)` writes (the
/// format the reader and older versions use), without serde's per-byte escaping loop and
/// `fmt` machinery: the writer does this for every line the router logs.
pub(crate) fn encode(line: &LogLine, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, line.seq);
    out.extend_from_slice(b",\"time\":");
    push_time(out, &line.time);
    out.extend_from_slice(b",\"source\":\"");
    out.extend_from_slice(line.source.as_str().as_bytes());
    out.extend_from_slice(b"\",\"dyno\":");
    push_str(out, &line.dyno);
    out.extend_from_slice(b",\"message\":");
    push_str(out, &line.message);
    out.push(b'}');
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `n` (below 10^width) in `width` digits, zero-padded.
fn push_padded(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut digits = [b'0'; 9];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// The time as chrono's `Serialize` writes it: RFC 3339 in UTC with `Z`, and as many
/// fraction digits as it needs (none, 3, 6 or 9: `SecondsFormat::AutoSi`).
fn push_time(out: &mut Vec<u8>, time: &DateTime<Utc>) {
    // The naive UTC time is what a DateTime<Utc> holds: reading the fields through the
    // DateTime would add the (zero) offset first, once per field.
    let utc = time.naive_utc();
    let year = utc.year();
    let nano = utc.nanosecond();
    // A year outside 0..=9999 (written with a sign) or a leap second (nanoseconds past 10^9)
    // never comes from a clock in practice: leave those to chrono rather than copy its rules.
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        // Writing into a Vec cannot fail, and a DateTime<Utc> always serializes.
        let _ = serde_json::to_writer(&mut *out, time);
        return;
    }
    out.push(b'"');
    push_padded(out, year as u32, 4);
    out.push(b'-');
    push_padded(out, utc.month(), 2);
    out.push(b'-');
    push_padded(out, utc.day(), 2);
    out.push(b'T');
    push_padded(out, utc.hour(), 2);
    out.push(b':');
    push_padded(out, utc.minute(), 2);
    out.push(b':');
    push_padded(out, utc.second(), 2);
    if nano == 0 {
    } else if nano.is_multiple_of(1_000_000) {
        out.push(b'.');
        push_padded(out, nano / 1_000_000, 3);
    } else if nano.is_multiple_of(1_000) {
        out.push(b'.');
        push_padded(out, nano / 1_000, 6);
    } else {
        out.push(b'.');
        push_padded(out, nano, 9);
    }
    out.extend_from_slice(b"Z\"");
}

/// A JSON string as serde_json writes it: `"` and `\\` backslash-escaped, control characters
/// below U+0020 as `\\b \\t \\n \\f \\r` or `\\u00xx` (lower-case hex), everything else (DEL,
/// U+2028, any other UTF-8) as it is.
fn push_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // Copies the runs between escapes whole, and finds the escapes eight bytes at a time: a
    // byte-at-a-time scan was most of the writer's cost (a router line is ~250 bytes with a
    // few quotes).
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            let mask = escape_mask(u64::from_le_bytes(word));
            if mask == 0 {
                i += 8;
                continue;
            }
            // Straight to the first byte to escape (little-endian: the lowest set bit).
            i += (mask.trailing_zeros() / 8) as usize;
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escape);
        i += 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// 0x80 in each byte of `word` that is `"`, `\\` or below 0x20 (the bytes JSON escapes), 0
/// elsewhere. Exact per byte: no carry crosses bytes, as the low seven bits are added apart
/// from the high one (unlike the shorter `x - 0x01.. & !x` test, which can mark the byte
/// after a match).
pub(crate) fn escape_mask(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of `(x & 0x7f) + 0x7f` is set unless the low seven bits are 0, and `| x`
    // sets it for bytes of 0x80 and up: what stays clear is a zero byte.
    let zero = |x: u64| !(((x & LOW7) + LOW7) | x) & HIGH;
    // Likewise `+ 0x60` reaches the high bit from 0x20 up: what stays clear is below 0x20.
    let control = !(((word & LOW7) + ONES * 0x60) | word) & HIGH;
    control | zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
}

const HEX: [u8; 16] = *b"0123456789abcdef";
