//! Builds in the OCI dyno sandbox: each buildpack process (detect, compile, release, sourcing
//! an `export` file) runs in a runc container of its own, from a bundle made by the same code
//! as a dyno's ([`crate::oci::write_bundle`]): own PID, mount, UTS and IPC namespaces; the
//! host's system directories read-only and the stack's minimal `/etc`; a private `/tmp`
//! (tmpfs, counted in the memory limit); the build user (never root), no capabilities,
//! `no_new_privileges`; the build's memory limit as the container's (no swap) and a process
//! limit; the host's network (builds fetch from PyPI and npm). The build's directories are
//! mounted at the same paths as on the host (see `slipway_build::BuildSandbox`); nothing else
//! of the host's data is there.
//!
//! `runc run --keep` runs in the foreground, so the build reads the container's output from
//! runc's stdout and stderr; `--keep` leaves the cgroup until `runc delete`, so an OOM kill
//! can be read after the process ended. The time limit and cancellation `runc kill --all`
//! the container; its PID namespace ends with its first process, taking every other with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use slipway_build::{BuildSandbox, SandboxCommand, SandboxError, SandboxRun};

use crate::backend::{make_dir, remove_dir, RuntimeError, PATH};
use crate::cgroup::Cgroups;
use crate::oci::{bind, write_bundle, Bundle};
use crate::users::AppUser;

/// Processes one build container may have (npm and cargo start many).
const BUILD_MAX_PROCESSES: i64 = 4096;
/// The private `/tmp` of a build without a memory limit.
const DEFAULT_TMP_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug)]
pub struct OciBuildSandbox {
    binary: PathBuf,
    version: String,
    /// runc's `--root` (the dynos' too).
    state_dir: PathBuf,
    stack_etc: PathBuf,
    cgroups: Cgroups,
    /// `<dynos>/.oci/builds/<container id>/`: each run's bundle.
    bundles: PathBuf,
}

impl OciBuildSandbox {
    /// Prepares `bundles` (emptied) and deletes build containers a previous server left.
    pub(crate) fn new(
        binary: PathBuf,
        version: String,
        state_dir: PathBuf,
        stack_etc: PathBuf,
        cgroups: Cgroups,
        bundles: PathBuf,
    ) -> Result<Self, RuntimeError> {
        let sandbox = Self {
            binary,
            version,
            state_dir,
            stack_etc,
            cgroups,
            bundles,
        };
        if let Ok(entries) = std::fs::read_dir(&sandbox.state_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("build-") {
                    sandbox.delete(&name);
                }
            }
        }
        remove_dir(&sandbox.bundles)?;
        make_dir(&sandbox.bundles, 0o700, None)?;
        Ok(sandbox)
    }

    fn runc(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.state_dir)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn delete(&self, id: &str) {
        let _ = self.runc().args(["delete", "--force", id]).status();
    }

    fn bundle(&self, id: &str, run: &SandboxRun<'_>) -> Result<SandboxCommand, RuntimeError> {
        let dir = self.bundles.join(id);
        remove_dir(&dir)?;
        make_dir(&dir, 0o700, None)?;
        let text = |p: &Path| {
            p.to_str().map(str::to_string).ok_or(RuntimeError::Bundle {
                dyno: id.to_string(),
                detail: format!("{} is not UTF-8", p.display()),
            })
        };
        let mut args = vec![text(run.program)?];
        for a in run.args {
            args.push(text(Path::new(a))?);
        }
        let mut mounts = Vec::with_capacity(run.mounts.len());
        for m in run.mounts {
            mounts.push(bind(&m.path, &text(&m.path)?, !m.writable)?);
        }
        let home = run.env.get("HOME").map_or("/tmp", String::as_str);
        let limit = run
            .memory_limit_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        write_bundle(
            &self.stack_etc,
            &Bundle {
                dir: &dir,
                id,
                name: id,
                user: AppUser {
                    uid: run.user.0,
                    gid: run.user.1,
                },
                user_name: "build",
                user_home: home,
                args,
                env: run.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd: text(run.cwd)?,
                terminal: false,
                mounts,
                memory_limit: limit,
                memory_reservation: None,
                max_processes: BUILD_MAX_PROCESSES,
                tmp_size_bytes: run.memory_limit_bytes.unwrap_or(DEFAULT_TMP_BYTES),
            },
        )?;
        Ok(SandboxCommand {
            program: self.binary.clone(),
            args: vec![
                "--root".into(),
                self.state_dir.clone().into(),
                "run".into(),
                "--keep".into(),
                "--bundle".into(),
                dir.clone().into(),
                id.into(),
            ],
            env: vec![("PATH".into(), PATH.into())],
            cwd: dir,
        })
    }
}

impl BuildSandbox for OciBuildSandbox {
    fn describe(&self) -> String {
        format!("oci ({}, {})", self.binary.display(), self.version)
    }

    fn prepare(&self, id: &str, run: &SandboxRun<'_>) -> Result<SandboxCommand, SandboxError> {
        // A leftover of the same id (a previous server with the same pid).
        self.delete(id);
        self.bundle(id, run).map_err(|e| SandboxError {
            id: id.to_string(),
            detail: e.to_string(),
        })
    }

    fn kill(&self, id: &str) {
        let _ = self.runc().args(["kill", "--all", id, "KILL"]).status();
    }

    fn finish(&self, id: &str) -> bool {
        let oom_killed = self.cgroups.oom_kills(id).unwrap_or(0) > 0;
        self.delete(id);
        if let Err(e) = remove_dir(&self.bundles.join(id)) {
            tracing::warn!(container = id, error = %e, "could not remove a build bundle");
        }
        oom_killed
    }
}
