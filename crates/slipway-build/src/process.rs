//! Running one buildpack executable: its own process group, a minimal environment, output
//! streamed line by line as events, killed as a group on timeout or cancellation. With a
//! [`BuildSandbox`] (the OCI runtime), the executable runs in a container of its own instead,
//! and the time limit and cancellation kill the container.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{BuildEvent, Phase};
use crate::sandbox::{BuildSandbox, SandboxError, SandboxMount, SandboxRun};

/// How many of the last output lines a failure keeps, to put them in its error.
pub(crate) const TAIL_LINES: usize = 30;

/// One run of a buildpack executable (or of git, to fetch one).
pub(crate) struct Run<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    pub run_as: Option<(u32, u32)>,
    pub memory_limit_bytes: Option<u64>,
    pub deadline: Instant,
    pub cancel: &'a CancellationToken,
    /// Keep at most this many bytes of stdout instead of streaming it (detect, release).
    pub capture_stdout: Option<usize>,
    /// Who the output lines are attributed to.
    pub buildpack: &'a str,
    pub phase: Phase,
    pub max_line: usize,
    /// Run in a container (mounting these host directories) instead of as a host process.
    pub sandbox: Option<Sandboxed<'a>>,
}

/// A run's container: the sandbox and what of the host it sees.
pub(crate) struct Sandboxed<'a> {
    pub sandbox: &'a Arc<dyn BuildSandbox>,
    pub mounts: Vec<SandboxMount>,
}

pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The last [`TAIL_LINES`] lines streamed.
    pub tail: Vec<String>,
    /// The kernel's OOM killer ended a process of the run's container (sandboxed runs only).
    pub oom_killed: bool,
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    Sandbox(SandboxError),
    Timeout,
    Cancelled,
}

enum Outcome {
    Done(std::io::Result<ExitStatus>, Vec<u8>),
    Timeout,
    Cancelled,
}

pub(crate) async fn run(
    run: Run<'_>,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<Finished, RunError> {
    let container = match &run.sandbox {
        Some(s) => Some(
            Container::prepare(s, &run)
                .await
                .map_err(RunError::Sandbox)?,
        ),
        None => None,
    };
    let mut cmd = match (&container, run.memory_limit_bytes) {
        // The container's own memory limit (a cgroup) applies; runc runs as root and starts
        // the program as the build user.
        (Some(c), _) => {
            let mut cmd = tokio::process::Command::new(&c.command.program);
            cmd.args(&c.command.args)
                .env_clear()
                .envs(c.command.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&c.command.cwd);
            cmd
        }
        // RLIMIT_AS through the shell's `ulimit -v` (KiB): no unsafe pre_exec needed.
        (None, Some(bytes)) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"ulimit -v "$0" || exit 97; exec "$@""#)
                .arg((bytes / 1024).max(1).to_string())
                .arg(run.program)
                .args(&run.args);
            c
        }
        (None, None) => {
            let mut c = tokio::process::Command::new(run.program);
            c.args(&run.args);
            c
        }
    };
    if container.is_none() {
        cmd.env_clear().envs(run.env).current_dir(run.cwd);
        if let Some((uid, gid)) = run.run_as {
            // std drops supplementary groups when root switches user.
            cmd.uid(uid).gid(gid);
        }
    }
    cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    // A run whose output is streamed gets ONE pipe for stdout and stderr (as Heroku's build
    // does): its lines arrive in the order the buildpack wrote them. A run whose stdout is
    // data (detect, release) keeps it apart from the messages on stderr.
    let merged = if run.capture_stdout.is_none() {
        let (reader, writer) = std::io::pipe().map_err(RunError::Spawn)?;
        cmd.stdout(writer.try_clone().map_err(RunError::Spawn)?)
            .stderr(writer);
        Some(reader)
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    };
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    // The command holds the pipe's write end: only the child's (and its group's) copies may be
    // left, or the output would never end.
    drop(cmd);
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let (stdout, stderr): (Option<Output>, Option<Output>) = match merged {
        Some(reader) => {
            let fd = std::os::fd::OwnedFd::from(reader);
            let pipe =
                tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(RunError::Spawn)?;
            (Some(Output::Merged(pipe)), None)
        }
        None => (
            child.stdout.take().map(Output::Stdout),
            child.stderr.take().map(Output::Stderr),
        ),
    };

    let (line_tx, mut line_rx) = mpsc::channel::<String>(256);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let outcome = {
        let max_line = run.max_line;
        let capture = run.capture_stdout;
        let out_tx = line_tx.clone();
        let out_task = async move {
            match (stdout, capture) {
                (Some(r), Some(limit)) => read_bounded(r, limit).await,
                (Some(r), None) => {
                    pump_lines(r, max_line, &out_tx).await;
                    Vec::new()
                }
                (None, _) => Vec::new(),
            }
        };
        let err_task = async move {
            if let Some(r) = stderr {
                pump_lines(r, max_line, &line_tx).await;
            }
        };
        let forward = async {
            while let Some(line) = line_rx.recv().await {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                let _ = events
                    .send(BuildEvent::Output {
                        buildpack: run.buildpack.to_string(),
                        phase: run.phase,
                        line,
                    })
                    .await;
            }
        };
        let waiting = async {
            let status = child.wait().await;
            // Whatever the buildpack left running in its group goes with it, and its pipes close.
            kill_group(pid);
            status
        };
        let work = async {
            let (status, captured, (), ()) = tokio::join!(waiting, out_task, err_task, forward);
            (status, captured)
        };
        tokio::select! {
            (status, captured) = work => Outcome::Done(status, captured),
            () = tokio::time::sleep_until(run.deadline) => Outcome::Timeout,
            () = run.cancel.cancelled() => Outcome::Cancelled,
        }
    };
    match outcome {
        Outcome::Done(status, stdout) => {
            let oom_killed = match container {
                Some(c) => c.finish().await,
                None => false,
            };
            Ok(Finished {
                status: status.map_err(RunError::Wait)?,
                stdout,
                tail: tail.into_iter().collect(),
                oom_killed,
            })
        }
        Outcome::Timeout | Outcome::Cancelled => {
            // The container's processes are not in runc's process group: the runtime kills
            // them (all of them: its own PID namespace ends with its first process).
            if let Some(c) = &container {
                c.kill().await;
            }
            kill_group(pid);
            let _ = child.wait().await;
            if let Some(c) = container {
                c.finish().await;
            }
            Err(if matches!(outcome, Outcome::Timeout) {
                RunError::Timeout
            } else {
                RunError::Cancelled
            })
        }
    }
}

/// Distinguishes the containers of one server process.
static CONTAINERS: AtomicU64 = AtomicU64::new(0);

/// A prepared build container; deleted when dropped before [`Container::finish`] (a build
/// future dropped mid-run).
struct Container {
    sandbox: Arc<dyn BuildSandbox>,
    id: String,
    command: crate::sandbox::SandboxCommand,
    finished: bool,
}

impl Container {
    async fn prepare(s: &Sandboxed<'_>, run: &Run<'_>) -> Result<Container, SandboxError> {
        let n = CONTAINERS.fetch_add(1, Ordering::Relaxed);
        let id = format!("build-{}-{n}", std::process::id());
        let sandbox = Arc::clone(s.sandbox);
        // The build user; `nobody` if the server gave none (it runs as root to use runc).
        let user = run.run_as.unwrap_or((65534, 65534));
        let spec = (
            run.program.to_path_buf(),
            run.args.clone(),
            run.env.clone(),
            run.cwd.to_path_buf(),
            s.mounts.clone(),
            run.memory_limit_bytes,
        );
        let (sb, cid) = (Arc::clone(&sandbox), id.clone());
        let command = tokio::task::spawn_blocking(move || {
            let (program, args, env, cwd, mounts, memory_limit_bytes) = spec;
            sb.prepare(
                &cid,
                &SandboxRun {
                    program: &program,
                    args: &args,
                    env: &env,
                    cwd: &cwd,
                    user,
                    mounts: &mounts,
                    memory_limit_bytes,
                },
            )
        })
        .await
        .map_err(|e| SandboxError {
            id: id.clone(),
            detail: e.to_string(),
        })??;
        Ok(Container {
            sandbox,
            id,
            command,
            finished: false,
        })
    }

    async fn kill(&self) {
        let (sandbox, id) = (Arc::clone(&self.sandbox), self.id.clone());
        let _ = tokio::task::spawn_blocking(move || sandbox.kill(&id)).await;
    }

    /// Whether the OOM killer struck; deletes the container.
    async fn finish(mut self) -> bool {
        self.finished = true;
        let (sandbox, id) = (Arc::clone(&self.sandbox), self.id.clone());
        tokio::task::spawn_blocking(move || sandbox.finish(&id))
            .await
            .unwrap_or(false)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.finished {
            let (sandbox, id) = (Arc::clone(&self.sandbox), self.id.clone());
            std::thread::spawn(move || {
                sandbox.kill(&id);
                sandbox.finish(&id);
            });
        }
    }
}

/// Where a run's output comes from: its one merged pipe, or stdout and stderr apart.
enum Output {
    Merged(tokio::net::unix::pipe::Receiver),
    Stdout(tokio::process::ChildStdout),
    Stderr(tokio::process::ChildStderr),
}

impl AsyncRead for Output {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Output::Merged(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            Output::Stdout(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            Output::Stderr(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

fn kill_group(pid: i32) {
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Reads at most `limit` bytes and discards the rest (the pipe is drained so the writer never
/// blocks).
async fn read_bounded<R: AsyncRead + Unpin>(mut reader: R, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
    kept
}

/// Sends each line of `reader` on `tx`. Lines longer than `max` bytes are cut into pieces of at
/// most `max`, so a process that never writes a newline cannot make the server buffer without
/// bound.
async fn pump_lines<R: AsyncRead + Unpin>(mut reader: R, max: usize, tx: &mpsc::Sender<String>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(pos + 1);
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned()).await;
            buf = rest;
        }
        while buf.len() >= max {
            let rest = buf.split_off(max);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned()).await;
            buf = rest;
        }
    }
    if !buf.is_empty() {
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned()).await;
    }
}

/// A readable description of how a process ended.
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => "an unknown status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let input: &[u8] = b"one\r\ntwo\nxxxxxxxxxx-tail";
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        super::pump_lines(input, 4, &tx).await;
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines, ["one", "two", "xxxx", "xxxx", "xx-t", "ail"]);
    }
}
