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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use slipway_build::{BuildError, BuildEvent, CompileSpec};
    use slipway_testkit::wait_until;
    use tokio_util::sync::CancellationToken;

    use crate::backend::DynoBackend;

    /// Build containers runc knows of under `dynos`.
    fn containers(dynos: &std::path::Path) -> Vec<String> {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(dynos.join(".oci/state"))
            .arg("list")
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|id| id.starts_with("build-"))
            .map(str::to_string)
            .collect()
    }

    fn sleeping(needle: &str) -> bool {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
    }

    /// Cancelling a build (its pusher went away) kills its container: everything in it ends,
    /// and runc no longer knows it.
    #[tokio::test]
    async fn a_cancelled_build_kills_and_deletes_its_container() {
        let root = tempfile::tempdir().expect("tempdir");
        let dynos = root.path().join("dynos");
        std::fs::create_dir_all(&dynos).expect("mkdir");
        let backend = crate::OciBackend::new("runc", &dynos).expect("runc works here");
        let sandbox = backend.build_sandbox().expect("a build sandbox");
        let bin = root.path().join("bp/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        // Numbers no other run of this test uses.
        let (a, b) = (
            format!("sleep {}", 1_000_000 + std::process::id()),
            format!("sleep {}", 2_000_000 + std::process::id()),
        );
        let compile = format!("#!/bin/sh\n{a} &\necho started\n{b}\n");
        for (name, body) in [("detect", "#!/bin/sh\necho Slow\n"), ("compile", &compile)] {
            std::fs::write(bin.join(name), body).expect("write");
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let build = root.path().join("build");
        std::fs::create_dir_all(&build).expect("mkdir");
        std::fs::write(build.join("Procfile"), "web: true\n").expect("write");
        let mut spec = CompileSpec::new(
            build,
            root.path().join("cache"),
            root.path().join("builtin"),
            root.path().join("fetched"),
        );
        spec.buildpacks = vec![root.path().join("bp").display().to_string()];
        spec.sandbox = Some(sandbox);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let cancel = CancellationToken::new();
        let running = {
            let cancel = cancel.clone();
            tokio::spawn(async move { slipway_build::run_buildpacks(&spec, &tx, cancel).await })
        };
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            let line = event.line().map(str::to_string);
            seen.extend(line.clone());
            if matches!(&event, BuildEvent::Output { line, .. } if line == "started") {
                break;
            }
        }
        assert!(
            seen.iter().any(|l| l.contains("Building in a container")),
            "{seen:#?}"
        );
        assert_eq!(containers(&dynos).len(), 1);
        wait_until(30, "the build's background process", || async {
            sleeping(&a).then_some(())
        })
        .await;

        cancel.cancel();
        let result = running.await.expect("join");
        assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
        assert!(containers(&dynos).is_empty(), "{:?}", containers(&dynos));
        wait_until(30, "the build's processes to end", || async {
            (!sleeping(&a) && !sleeping(&b)).then_some(())
        })
        .await;
        let bundles = dynos.join(".oci/builds");
        let left = std::fs::read_dir(&bundles).expect("bundles").count();
        assert_eq!(left, 0, "bundles left in {}", bundles.display());
    }
}
