//! One-off dynos: `run`, `run:detached` and the release phase.
//!
//! A one-off runs one command with an app's release (a fresh copy of its slug, its config)
//! in the same backend and sandbox as the app's dynos, then is gone. It is not part of the
//! formation: `converge` never sees it, and nothing restarts it. Its standard streams are
//! either a pseudo-terminal ([`OneOffIo::Terminal`], for `run` from a terminal), pipes
//! ([`OneOffIo::Pipes`], for scripts and the release phase) or the app's log stream
//! (`run:detached`: lines as `app[run.1234]`). It is stopped (SIGTERM, then SIGKILL after the
//! stop timeout) when asked or when its time to live runs out; its exit status is reported
//! with Heroku's convention (the code, or 128 + the signal).
//!
//! The terminal is a pty this process opens with `openpty`; the backend gives its slave side
//! to the command (see `DynoBackend::start_one_off`) and the caller reads and writes the
//! master side. Resizing sets the master's window size and sends SIGWINCH to the dyno's
//! first process (runc passes the size on to the container's own terminal).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::Signal;
use slipway_logs::{Source, MAX_LINE_BYTES};
use tokio::io::AsyncRead;
use tokio::net::unix::pipe;
use tokio::process::ChildStdin;
use tokio::sync::{oneshot, watch};

use crate::backend::{DynoSize, DynoSpec, OneOffStdio, RuntimeError};
use crate::process::pump_lines;
use crate::{DynoManager, ReleaseSpec};

/// Heroku's limit on a one-off dyno's life.
pub const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(24 * 3600);

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

/// Where a one-off's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneOffMode {
    /// A pseudo-terminal of this size (stdin, stdout and stderr are its slave side).
    Terminal(TerminalSize),
    /// Three pipes, handed to the caller.
    Pipes,
    /// No stdin; stdout and stderr go to the app's logs as `app[NAME]`.
    Logs,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct OneOffRequest {
    pub release: ReleaseSpec,
    /// `run.1234`, `release.7`: `DYNO` and the name in the logs.
    pub name: String,
    pub command: String,
    /// Added to the release's config (and winning over it). Secret: never logged.
    pub env: BTreeMap<String, String>,
    pub size: DynoSize,
    /// Stopped after this long.
    pub time_to_live: Duration,
    pub mode: OneOffMode,
}

/// A started one-off dyno.
pub struct OneOff {
    pub id: String,
    pub name: String,
    pub io: OneOffIo,
    pub handle: OneOffHandle,
    /// Resolves once the command has exited and the dyno is cleaned up.
    pub exit: oneshot::Receiver<OneOffExit>,
}

/// The caller's side of a one-off's streams.
pub enum OneOffIo {
    /// The terminal's master side: what the command writes, and its keyboard.
    Terminal {
        output: pipe::Receiver,
        input: pipe::Sender,
    },
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: Box<dyn AsyncRead + Unpin + Send + Sync>,
        stderr: Box<dyn AsyncRead + Unpin + Send + Sync>,
    },
    /// Output goes to the logs.
    Logs,
}

/// How a one-off ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneOffExit {
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    /// It was stopped because its time to live ran out.
    pub timed_out: bool,
}

/// Stops or resizes a running one-off. Cheap to clone.
#[derive(Clone)]
pub struct OneOffHandle {
    stop: Arc<watch::Sender<bool>>,
    terminal: Option<Arc<OwnedFd>>,
    pid: Option<u32>,
}

impl OneOffHandle {
    /// Asks the one-off to stop: SIGTERM, SIGKILL after the stop timeout.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Gives the terminal a new size (nothing without a terminal).
    pub fn resize(&self, size: TerminalSize) -> std::io::Result<()> {
        let Some(fd) = &self.terminal else {
            return Ok(());
        };
        rustix::termios::tcsetwinsize(
            fd.as_ref(),
            rustix::termios::Winsize {
                ws_row: size.rows,
                ws_col: size.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )?;
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGWINCH);
        }
        Ok(())
    }
}

/// A pseudo-terminal's two sides.
fn open_terminal(size: TerminalSize, dyno: &str) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    let err = |source: std::io::Error| RuntimeError::Terminal {
        dyno: dyno.to_string(),
        source,
    };
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&winsize, None).map_err(|e| err(e.into()))?;
    fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| err(e.into()))?;
    Ok((pty.master, pty.slave))
}

impl DynoManager {
    /// Starts a one-off dyno. Returns once its command has started; its exit arrives on
    /// [`OneOff::exit`].
    pub async fn run_one_off(&self, req: OneOffRequest) -> Result<OneOff, RuntimeError> {
        let inner = self.inner.clone();
        let id = uuid::Uuid::new_v4().to_string();
        let app_id = req.release.app_id.clone();
        let mut config = req.release.env.clone();
        config.extend(req.env.clone());
        let spec = DynoSpec {
            id: id.clone(),
            app_id: app_id.clone(),
            name: req.name.clone(),
            command: req.command.clone(),
            config,
            port: None,
            size: req.size.clone(),
            dir: inner.cfg.dynos_dir.join(&app_id).join(&id),
            slug_path: req.release.slug_path.clone(),
            slug_checksum: req.release.slug_checksum.clone(),
            user: inner.user_for(&app_id)?,
        };
        let say = {
            let (logs, app, name) = (inner.logs.clone(), app_id.clone(), req.name.clone());
            move |message: &str| logs.write(&app, Source::Heroku, &name, message)
        };
        let terminal = matches!(req.mode, OneOffMode::Terminal(_));
        let backend = inner.backend.clone();
        let prepared = spec.clone();
        tokio::task::spawn_blocking(move || backend.prepare_one_off(&prepared, terminal))
            .await
            .map_err(|e| RuntimeError::Io {
                action: "preparing",
                path: spec.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let (master, stdio) = match req.mode {
            OneOffMode::Terminal(size) => {
                let (master, slave) = open_terminal(size, &req.name)?;
                (Some(master), OneOffStdio::Terminal(slave))
            }
            OneOffMode::Pipes | OneOffMode::Logs => (None, OneOffStdio::Pipes),
        };
        say(&format!("Starting process with command `{}`", req.command));
        let mut running = match inner.backend.start_one_off(&spec, stdio) {
            Ok(running) => running,
            Err(e) => {
                let backend = inner.backend.clone();
                let (id, dir) = (spec.id.clone(), spec.dir.clone());
                let _ = tokio::task::spawn_blocking(move || backend.cleanup(&id, &dir)).await;
                return Err(e);
            }
        };
        say("State changed from starting to up");
        let pid = running.pid;
        let io = match (req.mode, master.as_ref()) {
            (OneOffMode::Terminal(_), Some(master)) => {
                let err = |source: std::io::Error| RuntimeError::Terminal {
                    dyno: req.name.clone(),
                    source,
                };
                let output =
                    pipe::Receiver::from_owned_fd_unchecked(master.try_clone().map_err(err)?)
                        .map_err(err)?;
                let input = pipe::Sender::from_owned_fd_unchecked(master.try_clone().map_err(err)?)
                    .map_err(err)?;
                OneOffIo::Terminal { output, input }
            }
            (OneOffMode::Logs, _) => {
                drop(running.child.stdin.take());
                for pipe in [running.stdout.take(), running.stderr.take()]
                    .into_iter()
                    .flatten()
                {
                    let (logs, app, name) = (inner.logs.clone(), app_id.clone(), req.name.clone());
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            pump_lines(pipe, MAX_LINE_BYTES, |line| {
                                logs.write(&app, Source::App, &name, line)
                            })
                            .await;
                        },
                        tracing::info_span!("one-off output", app = %app_id, dyno = %req.name),
                    ));
                }
                OneOffIo::Logs
            }
            _ => OneOffIo::Pipes {
                stdin: running.child.stdin.take(),
                stdout: running
                    .stdout
                    .take()
                    .unwrap_or_else(|| Box::new(tokio::io::empty())),
                stderr: running
                    .stderr
                    .take()
                    .unwrap_or_else(|| Box::new(tokio::io::empty())),
            },
        };
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (exit_tx, exit_rx) = oneshot::channel();
        let handle = OneOffHandle {
            stop: Arc::new(stop_tx),
            terminal: master.map(Arc::new),
            pid,
        };
        let ttl = req.time_to_live;
        let stop_timeout = inner.cfg.stop_timeout;
        let span = tracing::info_span!("one-off", app = %app_id, dyno = %req.name, id = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let backend = inner.backend.clone();
                enum Next {
                    Exited(crate::Exit),
                    Expired,
                    Stop,
                }
                let next = tokio::select! {
                    exit = backend.wait(&spec, &mut running) => Next::Exited(exit),
                    _ = tokio::time::sleep(ttl) => Next::Expired,
                    _ = stop_rx.wait_for(|s| *s) => Next::Stop,
                };
                let timed_out = matches!(next, Next::Expired);
                let exit = match next {
                    Next::Exited(exit) => exit,
                    Next::Expired | Next::Stop => {
                        if timed_out {
                            say(&format!(
                                "Stopping: the one-off dyno's time to live ({} s) ran out",
                                ttl.as_secs()
                            ));
                        }
                        say("Stopping all processes with SIGTERM");
                        backend.signal(&spec, &running, Signal::SIGTERM).await;
                        match tokio::time::timeout(stop_timeout, backend.wait(&spec, &mut running))
                            .await
                        {
                            Ok(exit) => exit,
                            Err(_) => {
                                say("Stopping remaining processes with SIGKILL");
                                backend.signal(&spec, &running, Signal::SIGKILL).await;
                                backend.wait(&spec, &mut running).await
                            }
                        }
                    }
                };
                say(&format!("Process exited with status {}", exit.code()));
                say("State changed from up to complete");
                let (id, dir) = (spec.id.clone(), spec.dir.clone());
                match tokio::task::spawn_blocking(move || backend.cleanup(&id, &dir)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not clean up the one-off dyno"),
                    Err(e) => tracing::warn!(error = %e, "one-off clean-up panicked"),
                }
                let _ = exit_tx.send(OneOffExit {
                    code: exit.code(),
                    timed_out,
                });
            },
            span,
        ));
        Ok(OneOff {
            id,
            name: req.name,
            io,
            handle,
            exit: exit_rx,
        })
    }
}
