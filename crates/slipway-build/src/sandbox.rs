//! Where buildpack processes run when the server has a container runtime: the interface
//! `slipway-runtime`'s OCI backend implements (this crate does not depend on it).
//!
//! A [`BuildSandbox`] turns one buildpack run (program, arguments, environment, working
//! directory, user, the host directories it may see) into a container of its own, started in
//! the foreground by the command [`BuildSandbox::prepare`] returns: its exit status is the
//! process's, its stdout and stderr are the process's. Every directory a build uses is mounted
//! at the same path inside as outside, so arguments, `HOME`, `PATH`, the chosen interpreter
//! and what an `export` file says mean the same in both; nothing else of the host's
//! directories above or beside them is visible.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A host directory the build's container sees, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxMount {
    pub path: PathBuf,
    pub writable: bool,
}

impl SandboxMount {
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: false,
        }
    }

    pub fn writable(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: true,
        }
    }
}

/// One buildpack process to run in a container.
#[derive(Debug)]
pub struct SandboxRun<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    /// uid/gid inside (never 0: the build user).
    pub user: (u32, u32),
    /// What of the host it sees besides the system directories, in this order.
    pub mounts: &'a [SandboxMount],
    /// The container's memory limit (the kernel's OOM killer acts beyond it).
    pub memory_limit_bytes: Option<u64>,
}

/// The command that runs a prepared container in the foreground.
#[derive(Debug, Clone)]
pub struct SandboxCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("could not prepare build container {id}: {detail}")]
pub struct SandboxError {
    pub id: String,
    pub detail: String,
}

/// Runs buildpack processes in containers. Blocking methods: call them off the async runtime.
pub trait BuildSandbox: Send + Sync + std::fmt::Debug + 'static {
    /// `oci (/usr/sbin/runc, runc version 1.1.5)`: said in the build output.
    fn describe(&self) -> String;

    /// Writes container `id`'s bundle (replacing any leftover container of that id) and
    /// returns the command that runs it in the foreground.
    fn prepare(&self, id: &str, run: &SandboxRun<'_>) -> Result<SandboxCommand, SandboxError>;

    /// Kills every process of container `id` (time limit, cancellation).
    fn kill(&self, id: &str);

    /// After its command exited: whether the kernel's OOM killer ended a process in it. Then
    /// deletes the container and its bundle.
    fn finish(&self, id: &str) -> bool;
}
