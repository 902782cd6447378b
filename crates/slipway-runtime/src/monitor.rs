//! The per-dyno monitor process (podman's conmon, containerd's shim): `slipway dyno-monitor
//! <monitor dir>`, started by the server in a session of its own so that it, and the dyno it
//! runs, outlive the server being restarted, upgraded or killed.
//!
//! The monitor starts the dyno's command as the backend described it ([`Launch`]), holds its
//! stdout and stderr and writes them to the dyno's on-disk log (`dynolog.rs`), waits for it,
//! and records how it ended. The server never reads the dyno's pipes: it follows the log and
//! the files below, so a server that comes back finds everything where the last one left it.
//!
//! The monitor directory (`<dynos dir>/.monitors/<dyno id>`, root-only) holds:
//! - `launch.json`: what to run ([`Launch`]), written by the server; the monitor deletes it
//!   once read (it carries the app's config vars);
//! - `pid.json`: `{"monitor": PID, "dyno": PID}` (written before `sock` exists);
//! - `sock`: a unix socket the monitor listens on while it runs. The server keeps a
//!   connection open: the connection ends when the monitor exits (however it exits), so the
//!   server learns of a dyno's exit without polling, and a refused connection means the
//!   monitor is gone;
//! - `out.<n>` and `cursor`: the output log and the server's read position (`dynolog.rs`);
//! - `exit.json`: `{"code": N}` or `{"signal": N}`, written (atomically) after the dyno's
//!   output has been drained to the log, just before the monitor exits;
//! - `monitor.log`: the monitor's own errors.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dynolog::LogWriter;

pub(crate) const LAUNCH_FILE: &str = "launch.json";
pub(crate) const PID_FILE: &str = "pid.json";
pub(crate) const SOCKET: &str = "sock";
pub(crate) const EXIT_FILE: &str = "exit.json";
pub(crate) const MONITOR_LOG: &str = "monitor.log";

/// What the monitor runs: the dyno's main process, as a backend describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (nothing of the monitor's is passed on). Secret: never logged.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// uid and gid to run as (the monitor runs as root).
    pub user: Option<(u32, u32)>,
    /// Kill the process group the command leads once it exits (plain-process dynos: nothing
    /// of the dyno outlives its main process).
    pub kill_group_on_exit: bool,
}

/// `pid.json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Pids {
    pub(crate) monitor: u32,
    pub(crate) dyno: u32,
}

/// `exit.json`: how the dyno's main process ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub(crate) struct ExitRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<i32>,
}

impl ExitRecord {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    pub(crate) fn status(&self) -> ExitStatus {
        match (self.code, self.signal) {
            (Some(code), _) => ExitStatus::from_raw((code & 0xff) << 8),
            (None, Some(signal)) => ExitStatus::from_raw(signal & 0x7f),
            (None, None) => ExitStatus::from_raw(9),
        }
    }

    /// Nothing was recorded: the monitor itself died (killed) before its dyno's exit.
    pub(crate) fn is_lost(&self) -> bool {
        self.code.is_none() && self.signal.is_none()
    }

    pub(crate) fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Launch {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MonitorError {
    let path = path.to_path_buf();
    move |source| MonitorError::Io {
        action,
        path,
        source,
    }
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename: readers see the old
/// file or the whole new one.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The `dyno-monitor` subcommand. Returns the process's exit code.
pub fn main(dir: &Path) -> i32 {
    // Its own session: no terminal's hang-up or the server's process group reaches it.
    let _ = nix::unistd::setsid();
    match run(dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dyno monitor {}: {e}", dir.display());
            1
        }
    }
}

fn run(dir: &Path) -> Result<(), MonitorError> {
    let launch_path = dir.join(LAUNCH_FILE);
    let raw = std::fs::read(&launch_path).map_err(io("reading", &launch_path))?;
    let _ = std::fs::remove_file(&launch_path);
    let launch: Launch = serde_json::from_slice(&raw).map_err(|source| MonitorError::Launch {
        path: launch_path.clone(),
        source,
    })?;
    let writer = Arc::new(Mutex::new(
        LogWriter::create(dir).map_err(io("creating the output log in", dir))?,
    ));

    let mut cmd = std::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((uid, gid)) = launch.user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("could not start {}: {e}", launch.program.display());
            let _ = lock(&writer).write_line(message.as_bytes());
            let record = ExitRecord {
                code: Some(127),
                signal: None,
            };
            return finish(dir, record);
        }
    };
    let pids = Pids {
        monitor: std::process::id(),
        dyno: child.id(),
    };
    let pid_json = serde_json::to_vec(&pids).unwrap_or_default();
    write_atomic(dir, PID_FILE, &pid_json).map_err(io("writing", &dir.join(PID_FILE)))?;

    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(io("binding", &sock))?;
    // Connections are only held, never read: they end when this process exits.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        let writer = writer.clone();
        let done = done_tx.clone();
        pumps += 1;
        std::thread::spawn(move || {
            pump(pipe, slipway_logs::MAX_LINE_BYTES, |line| {
                let _ = lock(&writer).write_line(line);
            });
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let status = child.wait().map_err(io("waiting for", &launch.program))?;
    if launch.kill_group_on_exit {
        if let Ok(pid) = i32::try_from(pids.dyno) {
            crate::process::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    // Everything the dyno wrote is in the log before its exit is recorded. A process that
    // escaped the dyno and holds its pipes open gets a few seconds.
    for _ in 0..pumps {
        if done_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_file(&sock);
    finish(dir, ExitRecord::from_status(status))
}

fn finish(dir: &Path, record: ExitRecord) -> Result<(), MonitorError> {
    let json = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(dir, EXIT_FILE, &json).map_err(io("writing", &dir.join(EXIT_FILE)))
}

fn lock(w: &Mutex<LogWriter>) -> std::sync::MutexGuard<'_, LogWriter> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `reader` to its end, calling `line` for each line (without its `\n` or `\r\n`).
/// Lines longer than `max` bytes are cut into pieces of at most `max`.
fn pump(mut reader: impl Read, max: usize, mut line: impl FnMut(&[u8])) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(pos + 1);
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            emit(&buf, max, &mut line);
            buf = rest;
        }
        while buf.len() >= max {
            let rest = buf.split_off(max);
            line(&buf);
            buf = rest;
        }
    }
    if !buf.is_empty() {
        emit(&buf, max, &mut line);
    }
}

fn emit(text: &[u8], max: usize, line: &mut impl FnMut(&[u8])) {
    if text.is_empty() {
        line(text);
    }
    for piece in text.chunks(max.max(1)) {
        line(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_splits_lines_and_bounds_them() {
        let input: &[u8] = b"one\r\ntwo\n\nxxxxxxxxxx-tail";
        let mut lines = Vec::new();
        pump(input, 4, |l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        });
        assert_eq!(lines, ["one", "two", "", "xxxx", "xxxx", "xx-t", "ail"]);
    }

    #[test]
    fn exit_records_round_trip_codes_and_signals() {
        for record in [
            ExitRecord {
                code: Some(3),
                signal: None,
            },
            ExitRecord {
                code: None,
                signal: Some(15),
            },
        ] {
            assert_eq!(ExitRecord::from_status(record.status()), record);
        }
    }
}
