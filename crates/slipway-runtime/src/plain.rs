//! The fallback backend: each dyno is a process group running from its own copy of the slug,
//! outside the data directory, under the app's own uid when the server is root.
//!
//! What it cannot do (the OCI backend does): hide other processes (`/proc` shows every
//! process, though not another uid's environment), limit memory, or give the dyno its own
//! `/tmp`. Without root it cannot even switch users: dynos then run as the server's user.

use std::path::Path;

use nix::sys::signal::Signal;
use tokio::process::Command;

use crate::backend::{
    environment, fresh_dyno_dir, remove_dir, shell, wrapped_command, BoxFuture, DynoBackend,
    DynoSpec, Exit, Launch, OneOffStdio, Running, RuntimeError, Usage,
};
use crate::oci::one_off_stdio;
use crate::process::kill_group;

pub struct ProcessBackend {
    why: String,
}

impl ProcessBackend {
    /// `why`: the reason this backend runs rather than the OCI one, for the start-up line.
    pub fn new(why: impl Into<String>) -> Self {
        Self { why: why.into() }
    }
}

impl DynoBackend for ProcessBackend {
    fn describe(&self) -> String {
        format!("process ({})", self.why)
    }

    fn runs_in_host_dirs(&self) -> bool {
        true
    }

    fn prepare(&self, dyno: &DynoSpec) -> Result<(), RuntimeError> {
        fresh_dyno_dir(dyno).map(|_| ())
    }

    fn launch(&self, dyno: &DynoSpec) -> Result<Launch, RuntimeError> {
        let cwd = dyno.dir.join("app");
        let home = cwd.display().to_string();
        let mut env: Vec<(String, String)> = environment(dyno, &home).into_iter().collect();
        env.push(("SLIPWAY_DYNO_ID".into(), dyno.id.clone()));
        Ok(Launch {
            program: shell().into(),
            args: vec!["-c".into(), wrapped_command(&dyno.command)],
            env,
            cwd,
            // std drops supplementary groups too when root switches users.
            user: dyno.user.as_ref().map(|u| (u.uid, u.gid)),
            kill_group_on_exit: true,
        })
    }

    fn signal_pid<'a>(
        &'a self,
        _dyno: &'a DynoSpec,
        pid: Option<u32>,
        signal: Signal,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                kill_group(pid, signal);
            }
        })
    }

    fn exited<'a>(&'a self, _dyno: &'a DynoSpec) -> BoxFuture<'a, bool> {
        Box::pin(async move { false })
    }

    fn signal<'a>(
        &'a self,
        _dyno: &'a DynoSpec,
        running: &'a Running,
        signal: Signal,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(pid) = running.pid.and_then(|p| i32::try_from(p).ok()) {
                kill_group(pid, signal);
            }
        })
    }

    fn wait<'a>(&'a self, _dyno: &'a DynoSpec, running: &'a mut Running) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            let status = running.child.wait().await.unwrap_or_default();
            // Leave nothing of the group behind when its leader exits.
            if let Some(pid) = running.pid.and_then(|p| i32::try_from(p).ok()) {
                kill_group(pid, Signal::SIGKILL);
            }
            Exit {
                status,
                oom_killed: false,
            }
        })
    }

    /// Summed over the processes of the dyno's process group, from `/proc` (see
    /// `metrics::process_group_usage`).
    fn usage(&self, _dyno: &DynoSpec, pid: Option<u32>) -> Option<Usage> {
        crate::metrics::process_group_usage(std::path::Path::new("/proc"), pid?)
    }

    fn cleanup(&self, _dyno_id: &str, dir: &Path) -> Result<(), RuntimeError> {
        remove_dir(dir)
    }

    /// On a terminal the command runs under `setsid --ctty`, which makes it a session leader
    /// with the terminal as its controlling terminal (so Ctrl-C and window changes reach it)
    /// without unsafe code in this process; the session's process group is signalled as a
    /// dyno's is.
    fn start_one_off(&self, dyno: &DynoSpec, stdio: OneOffStdio) -> Result<Running, RuntimeError> {
        let cwd = dyno.dir.join("app");
        let home = cwd.display().to_string();
        let terminal = matches!(stdio, OneOffStdio::Terminal(_));
        let mut cmd = if terminal {
            let mut c = Command::new("setsid");
            c.arg("--ctty").arg(shell());
            c
        } else {
            let mut c = Command::new(shell());
            c.process_group(0);
            c
        };
        cmd.arg("-c")
            .arg(wrapped_command(&dyno.command))
            .current_dir(&cwd)
            .env_clear()
            .envs(environment(dyno, &home))
            .env("SLIPWAY_DYNO_ID", &dyno.id)
            .kill_on_drop(false);
        one_off_stdio(&mut cmd, stdio, &dyno.name)?;
        if let Some(user) = &dyno.user {
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut child = cmd.spawn().map_err(RuntimeError::io("starting", &cwd))?;
        Ok(Running {
            pid: child.id(),
            addr: None,
            stdout: child.stdout.take().map(|s| Box::new(s) as _),
            stderr: child.stderr.take().map(|s| Box::new(s) as _),
            child,
        })
    }
}
