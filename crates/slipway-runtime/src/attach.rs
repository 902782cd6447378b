//! The server's side of a dyno monitor (`monitor.rs`): starting one, finding one a previous
//! server left running, following its output log into the app's log stream, and learning
//! how its dyno ended.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::backend::{make_dir, remove_dir, RuntimeError};
use crate::dynolog::{read_new, Cursor};
use crate::monitor::{
    ExitRecord, Launch, Pids, EXIT_FILE, LAUNCH_FILE, MONITOR_LOG, PID_FILE, SOCKET,
};
use crate::record::DynoRecord;

/// How often a followed log is read for new lines.
const TAIL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a new monitor has to start its dyno and listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a dyno's output goes: one call per line.
pub(crate) type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// `<dynos dir>/.monitors/<dyno id>`: root-only, apart from the dyno's own directory (which
/// its app's user owns and could fill with symlinks).
pub(crate) fn monitor_dir(dynos_dir: &Path, dyno_id: &str) -> PathBuf {
    dynos_dir.join(".monitors").join(dyno_id)
}

/// A running monitor the server follows.
pub(crate) struct Attached {
    pub(crate) dir: PathBuf,
    pub(crate) pids: Pids,
    conn: Option<UnixStream>,
    tail: Tail,
}

impl Attached {
    /// Starts `program args.. <dir>` as the monitor of a fresh run of a dyno (the monitor
    /// directory is emptied first, then given the dyno's `record`) and waits until it runs
    /// the dyno.
    pub(crate) async fn start(
        monitor: &[std::ffi::OsString],
        dir: &Path,
        record: &DynoRecord,
        launch: &Launch,
        sink: LineSink,
    ) -> Result<Self, RuntimeError> {
        let dyno_id = record.id.as_str();
        remove_dir(dir)?;
        if let Some(parent) = dir.parent() {
            make_dir(parent, 0o700, None)?;
        }
        make_dir(dir, 0o700, None)?;
        record.save(dir)?;
        let json = serde_json::to_vec(launch).map_err(|e| RuntimeError::Monitor {
            dyno: dyno_id.to_string(),
            detail: format!("encoding its launch: {e}"),
        })?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(LAUNCH_FILE);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(RuntimeError::io("writing", &path))?;
            file.write_all(&json)
                .map_err(RuntimeError::io("writing", &path))?;
        }
        let log_path = dir.join(MONITOR_LOG);
        let log =
            std::fs::File::create(&log_path).map_err(RuntimeError::io("creating", &log_path))?;
        let (program, args) = monitor.split_first().ok_or_else(|| RuntimeError::Monitor {
            dyno: dyno_id.to_string(),
            detail: "no monitor command configured".into(),
        })?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .arg(dir)
            .env_clear()
            .env("PATH", crate::backend::PATH)
            // Lets a later server recognise the monitor as the dyno's.
            .env("SLIPWAY_DYNO_ID", dyno_id)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
            .map_err(RuntimeError::io(
                "starting the dyno monitor",
                Path::new(program),
            ))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let conn = loop {
            if let Ok(conn) = UnixStream::connect(dir.join(SOCKET)).await {
                break Some(conn);
            }
            // A monitor that ended this early recorded why (or failed: its log says).
            if let Ok(Some(_)) = child.try_wait() {
                break None;
            }
            if dir.join(EXIT_FILE).exists() {
                break None;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(RuntimeError::Monitor {
                    dyno: dyno_id.to_string(),
                    detail: format!(
                        "it did not start within {} s; see {}",
                        START_TIMEOUT.as_secs(),
                        log_path.display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // The monitor's exit is learnt from the socket; tokio reaps the process.
        drop(child);
        let pids = read_pids(dir).unwrap_or(Pids {
            monitor: 0,
            dyno: 0,
        });
        if conn.is_none() && !dir.join(EXIT_FILE).exists() {
            let detail = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(RuntimeError::Monitor {
                dyno: dyno_id.to_string(),
                detail: format!("it failed: {}", detail.trim()),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            pids,
            conn,
            tail: Tail::start(dir, Cursor::default(), sink),
        })
    }

    /// The monitor a previous server left, if it still runs; following its log from where
    /// that server stopped.
    pub(crate) async fn adopt(dir: &Path, sink: LineSink) -> Option<Self> {
        let conn = UnixStream::connect(dir.join(SOCKET)).await.ok()?;
        let pids = read_pids(dir)?;
        Some(Self {
            dir: dir.to_path_buf(),
            pids,
            conn: Some(conn),
            tail: Tail::start(dir, Cursor::load(dir), sink),
        })
    }

    /// Waits until the dyno has exited and all its output is delivered. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> ExitRecord {
        if let Some(conn) = &mut self.conn {
            let mut buf = [0u8; 64];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            self.conn = None;
        }
        self.tail.finish().await;
        ExitRecord::read(&self.dir).unwrap_or_default()
    }
}

/// Delivers whatever a dead monitor's dyno wrote after `dir`'s cursor. Returns how the dyno
/// ended, if the monitor recorded it.
pub(crate) fn drain_dead(dir: &Path, sink: &LineSink) -> Option<ExitRecord> {
    let mut cursor = Cursor::load(dir);
    // A dead monitor's output is finite: read it all.
    while deliver(dir, &mut cursor, sink) {}
    ExitRecord::read(dir)
}

pub(crate) fn read_pids(dir: &Path) -> Option<Pids> {
    let raw = std::fs::read(dir.join(PID_FILE)).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Delivers the next batch of the dyno's output; true when more is waiting.
fn deliver(dir: &Path, cursor: &mut Cursor, sink: &LineSink) -> bool {
    match read_new(dir, cursor, |line| sink(line)) {
        Ok(read) => {
            if read.gap {
                sink("Error L11 (Tail buffer overflow) -> output written while the platform was away was dropped (the dyno's log buffer is bounded)");
            }
            if read.lines > 0 || read.gap {
                if let Err(e) = cursor.save(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not save the log cursor");
                }
            }
            read.more
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not read the dyno's output");
            false
        }
    }
}

/// One batch of [`deliver`] on the blocking pool: the reads are file I/O, and a dyno that
/// writes without pause must never hold one of the control plane's threads (a flood from two
/// dynos once starved every push, config change and shutdown). Returns the moved cursor and
/// whether more is waiting.
async fn deliver_batch(dir: &Path, cursor: Cursor, sink: &LineSink) -> (Cursor, bool) {
    let (dir, sink) = (dir.to_path_buf(), sink.clone());
    let mut moved = cursor;
    match tokio::task::spawn_blocking(move || {
        let more = deliver(&dir, &mut moved, &sink);
        (moved, more)
    })
    .await
    {
        Ok(done) => done,
        // The runtime is shutting down: the saved cursor says where the next server resumes.
        Err(_) => (cursor, false),
    }
}

/// A task following a monitor's log.
struct Tail {
    finish: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tail {
    fn start(dir: &Path, cursor: Cursor, sink: LineSink) -> Self {
        let (finish, mut finish_rx) = watch::channel(false);
        let dir = dir.to_path_buf();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut cursor = cursor;
                loop {
                    let (moved, more) = deliver_batch(&dir, cursor, &sink).await;
                    cursor = moved;
                    if more && !*finish_rx.borrow() {
                        // Behind a fast writer: read on, without waiting.
                        continue;
                    }
                    let finished = tokio::select! {
                        _ = tokio::time::sleep(TAIL_INTERVAL) => false,
                        _ = finish_rx.wait_for(|f| *f) => true,
                    };
                    if finished {
                        // The dyno has exited: its output is finite, read it to the end.
                        loop {
                            let (moved, more) = deliver_batch(&dir, cursor, &sink).await;
                            cursor = moved;
                            if !more {
                                break;
                            }
                        }
                        break;
                    }
                }
            },
            tracing::Span::current(),
        ));
        Self {
            finish,
            task: Some(task),
        }
    }

    /// Reads the log to its end one last time and stops following it.
    async fn finish(&mut self) {
        let _ = self.finish.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
