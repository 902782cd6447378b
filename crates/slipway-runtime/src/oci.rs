//! The default backend: each dyno is a container run by an OCI runtime (runc; the binary is a
//! setting) as a subprocess, from a bundle generated with `oci-spec`.
//!
//! What a dyno gets:
//! - its own PID, mount, UTS (hostname = dyno id) and IPC namespaces; the host's network, so
//!   a web dyno binds `PORT` on 127.0.0.1 and the router reaches it there;
//! - a read-only root: an empty directory with the host's `/usr` bind-mounted read-only and
//!   `/bin`, `/lib`, `/lib64`, `/sbin` as the host has them (symlinks into `/usr` on a merged-
//!   `/usr` system, read-only binds otherwise);
//! - a minimal `/etc` (see [`STACK_ETC`]: what DNS, TLS certificates, the dynamic loader and
//!   alternatives need), built at start-up from the host's, never the whole host `/etc`
//!   (which holds keys and the platform's configuration), plus a `passwd`/`group` naming
//!   only root, nobody and the dyno's user;
//! - `/app`: the slug, writable, owned by the app's uid, what the dyno wrote deleted when it
//!   stops: an overlay of the release directory (the slug unpacked once per app and release,
//!   shared read-only by its dynos; `releasedir.rs`) and an upper layer of the dyno's own, or,
//!   where overlayfs does not work (checked at start-up), a fresh copy; a private `/tmp` (tmpfs); `/proc`; a minimal `/dev` (runc's default
//!   devices, `/dev/pts`, `/dev/shm`, `/dev/mqueue`); `/sys` read-only with only the dyno's
//!   own cgroup at `/sys/fs/cgroup` (runtimes size their heaps from its limits);
//! - the app's own unprivileged uid and gid, no capabilities, `no_new_privileges`;
//! - memory limit = twice the dyno size's quota (the kernel kills beyond it: R15), soft limit
//!   (reservation) = the quota, swap none, process-count limit from the size; the size is
//!   the formation's for the dyno's process type (`ps:type web=standard-2X`).
//!
//! `runc run --keep` runs in the foreground: its exit status is the dyno's, its stdout and
//! stderr are the dyno's. `--keep` leaves the stopped container (and its cgroup) until
//! `runc delete`, so an OOM kill can be read from the cgroup after the dyno exited.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::Signal;
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};
use tokio::process::Command;

use crate::backend::{
    environment, fresh_dyno_dir, make_dir, remove_dir, shell, wrapped_command, BoxFuture,
    DynoBackend, DynoSpec, Exit, Launch, OneOffStdio, Running, RuntimeError, Usage, PATH,
};
use crate::build_sandbox::OciBuildSandbox;
use crate::cgroup::{relative_path, Cgroups};
use crate::process::kill_group;
use crate::releasedir::{Lower, ReleaseDirs};
use crate::users::AppUser;

/// What of the host's `/etc` a dyno sees (copied at start-up; directories whole, symlinks
/// as symlinks). `ssl/private` is left out.
pub const STACK_ETC: &[&str] = &[
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "networks",
    "mime.types",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "bash.bashrc",
    "inputrc",
];

/// Host directories that become the dyno's, read-only.
const SYSTEM_DIRS: &[&str] = &["bin", "lib", "lib32", "lib64", "libx32", "sbin"];

/// PID 1 of every dyno. The kernel does not deliver signals a namespace's init has no handler
/// for, so the dyno's command (often `exec`ing a server that installs none) never runs as
/// PID 1: this shell starts it, passes SIGTERM/SIGINT on, and exits with its status when it
/// exits (taking every other process of the dyno with it, as on Heroku). Its stdin (a one-off
/// dyno's) is passed on through fd 3: a background job's own fd 0 is `/dev/null`.
const INIT: &str = r#"trap 'kill -TERM $c 2>/dev/null' TERM
trap 'kill -INT $c 2>/dev/null' INT
exec 3<&0
"$1" -c "$2" <&3 3<&- &
c=$!
exec 3<&-
while :; do
  wait $c; s=$?
  if [ $s -gt 128 ] && kill -0 $c 2>/dev/null; then continue; fi
  exit $s
done"#;

/// The uid/gid `nobody` has in the dyno's `/etc/passwd`.
const NOBODY: u32 = 65534;

pub struct OciBackend {
    binary: PathBuf,
    version: String,
    /// runc's `--root`: where it keeps container state.
    state_dir: PathBuf,
    /// The `/etc` every dyno gets.
    stack_etc: PathBuf,
    cgroups: Cgroups,
    /// Builds' containers (`build_sandbox.rs`).
    builds: Arc<OciBuildSandbox>,
    /// Release directories for overlay `/app`s; `None` where overlayfs does not work here
    /// (each dyno then gets a copy of the slug).
    releases: Option<ReleaseDirs>,
    /// Why overlayfs is not used, for the start-up line.
    no_overlay: Option<String>,
}

impl OciBackend {
    /// Checks that `binary` (a name looked up in PATH and /usr/sbin, or a path) can run a
    /// container here, by running one, and prepares what every dyno shares under `dynos_dir`.
    pub fn new(binary: &str, dynos_dir: &Path) -> Result<Self, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::OciUnavailable {
            binary: binary.to_string(),
            reason,
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable(
                "the server is not running as root, which OCI runtimes need".into(),
            ));
        }
        let path = find_binary(binary).ok_or_else(|| unavailable("not found".into()))?;
        let out = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| unavailable(format!("cannot run it: {e}")))?;
        if !out.status.success() {
            return Err(unavailable("`--version` failed".into()));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let cgroups = Cgroups::detect()
            .ok_or_else(|| unavailable("no memory cgroup controller is mounted".into()))?;
        let shared = dynos_dir.join(".oci");
        make_dir(&shared, 0o711, None)?;
        let state_dir = shared.join("state");
        make_dir(&state_dir, 0o700, None)?;
        let stack_etc = build_stack_etc(&shared, dynos_dir)?;
        let builds = Arc::new(OciBuildSandbox::new(
            path.clone(),
            version.clone(),
            state_dir.clone(),
            stack_etc.clone(),
            cgroups.clone(),
            shared.join("builds"),
        )?);
        let mut backend = Self {
            binary: path,
            version,
            state_dir,
            stack_etc,
            cgroups,
            builds,
            releases: None,
            no_overlay: None,
        };
        // A container with an overlay /app first; if that fails, one with a plain bind.
        match backend.probe(&shared, true) {
            Ok(()) => backend.releases = Some(ReleaseDirs::new(dynos_dir)?),
            Err(overlay) => {
                backend
                    .probe(&shared, false)
                    .map_err(|e| unavailable(e.to_string()))?;
                tracing::warn!(error = %overlay, "overlayfs does not work here: each dyno gets a copy of its slug");
                backend.no_overlay = Some(overlay.to_string());
            }
        }
        Ok(backend)
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state_dir);
        cmd
    }

    fn async_command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state_dir);
        cmd
    }

    /// Runs `exit 0` in a container the way dynos run: proves the runtime, namespaces,
    /// cgroups and mounts work before the server relies on them. With `overlay`, its `/app` is
    /// an overlay as a release directory's dynos get.
    fn probe(&self, shared: &Path, overlay: bool) -> Result<(), RuntimeError> {
        let id = format!("slipway-probe-{}", std::process::id());
        let dir = shared.join("probe");
        let lower_dir = shared.join("probe-lower");
        remove_dir(&dir)?;
        remove_dir(&lower_dir)?;
        let probe = DynoSpec {
            id: id.clone(),
            app_id: "probe".into(),
            name: "probe".into(),
            command: "exit 0".into(),
            config: Default::default(),
            port: None,
            size: crate::DynoSize::standard_1x(),
            dir: dir.clone(),
            slug_path: PathBuf::new(),
            slug_checksum: String::new(),
            user: Some(AppUser {
                uid: NOBODY,
                gid: NOBODY,
            }),
        };
        let lower = if overlay {
            make_dir(&lower_dir, 0o755, None)?;
            make_dir(&dir.join("upper"), 0o755, None)?;
            make_dir(&dir.join("work"), 0o700, None)?;
            Some(Lower {
                app: lower_dir.clone(),
            })
        } else {
            make_dir(&dir.join("app"), 0o755, None)?;
            None
        };
        self.write_bundle_with(&probe, false, lower.as_ref())?;
        let out = self
            .command()
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .map_err(RuntimeError::io("running", &self.binary))?;
        let _ = self.command().args(["delete", "--force", &id]).output();
        remove_dir(&dir)?;
        remove_dir(&lower_dir)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::OciCommand {
                runtime: self.binary.display().to_string(),
                action: "run",
                dyno: id,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// The dyno's directory and its `/app`: an overlay of its release directory when this
    /// host can (`Some`, see `releasedir.rs`), else a fresh copy of the slug in `<dir>/app`.
    fn prepare_app(&self, dyno: &DynoSpec) -> Result<Option<Lower>, RuntimeError> {
        if let Some(releases) = &self.releases {
            if let Some(lower) = releases.prepare(dyno)? {
                return Ok(Some(lower));
            }
        }
        fresh_dyno_dir(dyno)?;
        Ok(None)
    }

    /// The bundle (`write_bundle`), with `process.terminal` set as given (one-off dynos on a
    /// terminal) and `/app` an overlay on `lower` (with `<dir>/upper` and `<dir>/work`) or a
    /// bind of `<dir>/app`.
    fn write_bundle_with(
        &self,
        dyno: &DynoSpec,
        terminal: bool,
        lower: Option<&Lower>,
    ) -> Result<(), RuntimeError> {
        let user = dyno.user.unwrap_or(AppUser {
            uid: NOBODY,
            gid: NOBODY,
        });
        let env: Vec<String> = environment(dyno, "/app")
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let limit = i64::try_from(dyno.size.memory_limit_bytes()).unwrap_or(i64::MAX);
        let quota = i64::try_from(dyno.size.memory_quota_bytes).unwrap_or(i64::MAX);
        write_bundle(
            &self.stack_etc,
            &Bundle {
                dir: &dyno.dir,
                id: &dyno.id,
                name: &dyno.name,
                user,
                user_name: "dyno",
                user_home: "/app",
                args: vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    INIT.to_string(),
                    "dyno-init".to_string(),
                    shell().to_string(),
                    wrapped_command(&dyno.command),
                ],
                env,
                cwd: "/app".into(),
                terminal,
                mounts: vec![match lower {
                    Some(lower) => overlay(&lower.app, &dyno.dir)?,
                    None => bind(&dyno.dir.join("app"), "/app", false)?,
                }],
                memory_limit: limit,
                memory_reservation: Some(quota),
                max_processes: i64::try_from(dyno.size.max_processes).unwrap_or(i64::MAX),
                tmp_size_bytes: dyno.size.memory_quota_bytes,
            },
        )
    }

    fn delete(&self, dyno_id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", dyno_id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What a container's bundle is made of: a dyno's, or a build's (`build_sandbox.rs`).
pub(crate) struct Bundle<'a> {
    /// Where `config.json`, `rootfs/`, `passwd` and `group` are written.
    pub dir: &'a Path,
    /// The container's id: its hostname and cgroup (`slipway/<id>`).
    pub id: &'a str,
    /// Named in errors.
    pub name: &'a str,
    pub user: AppUser,
    /// The user's name and home in the container's `/etc/passwd`.
    pub user_name: &'a str,
    pub user_home: &'a str,
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub terminal: bool,
    /// Mounted after the system directories and `/etc`, in this order.
    pub mounts: Vec<Mount>,
    pub memory_limit: i64,
    pub memory_reservation: Option<i64>,
    pub max_processes: i64,
    /// Size of the private `/tmp` (a tmpfs: its pages count as the container's memory).
    pub tmp_size_bytes: u64,
}

/// Writes `bundle.dir`'s `config.json`, `rootfs` (the host's system directories read-only,
/// `stack_etc` as `/etc`), `passwd` and `group`.
pub(crate) fn write_bundle(stack_etc: &Path, bundle: &Bundle<'_>) -> Result<(), RuntimeError> {
    let rootfs = bundle.dir.join("rootfs");
    make_dir(&rootfs, 0o755, None)?;
    for d in ["usr", "etc", "app", "proc", "dev", "var", "sys"] {
        make_dir(&rootfs.join(d), 0o755, None)?;
    }
    // runc gives a tmpfs the mode of the directory it covers.
    make_dir(&rootfs.join("tmp"), 0o1777, None)?;
    let var_tmp = rootfs.join("var/tmp");
    if std::fs::symlink_metadata(&var_tmp).is_err() {
        std::os::unix::fs::symlink("../tmp", &var_tmp)
            .map_err(RuntimeError::io("creating", &var_tmp))?;
    }
    let mut mounts = base_mounts(bundle.tmp_size_bytes);
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let inside = rootfs.join(name);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).map_err(RuntimeError::io("reading", &host))?;
            if std::fs::symlink_metadata(&inside).is_err() {
                std::os::unix::fs::symlink(&target, &inside)
                    .map_err(RuntimeError::io("creating", &inside))?;
            }
        } else if meta.is_dir() {
            make_dir(&inside, 0o755, None)?;
            mounts.push(bind(&host, &format!("/{name}"), true)?);
        }
    }
    let user = bundle.user;
    let passwd = bundle.dir.join("passwd");
    let group = bundle.dir.join("group");
    std::fs::write(
        &passwd,
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/usr/sbin/nologin\n{}:x:{}:{}:{}:{}:/bin/bash\n",
            bundle.user_name, user.uid, user.gid, bundle.user_name, bundle.user_home
        ),
    )
    .map_err(RuntimeError::io("writing", &passwd))?;
    std::fs::write(
        &group,
        format!(
            "root:x:0:\nnogroup:x:{NOBODY}:\n{}:x:{}:\n",
            bundle.user_name, user.gid
        ),
    )
    .map_err(RuntimeError::io("writing", &group))?;
    mounts.push(bind(stack_etc, "/etc", true)?);
    mounts.push(bind(&passwd, "/etc/passwd", true)?);
    mounts.push(bind(&group, "/etc/group", true)?);
    mounts.extend(bundle.mounts.iter().cloned());
    let spec = spec(bundle, mounts)?;
    let config = bundle.dir.join("config.json");
    spec.save(&config).map_err(|e| RuntimeError::Bundle {
        dyno: bundle.name.to_string(),
        detail: e.to_string(),
    })?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
        .map_err(RuntimeError::io("restricting", &config))?;
    Ok(())
}

fn spec(bundle: &Bundle<'_>, mounts: Vec<Mount>) -> Result<Spec, RuntimeError> {
    let err = |e: oci_spec::OciSpecError| RuntimeError::Bundle {
        dyno: bundle.name.to_string(),
        detail: e.to_string(),
    };
    let none = HashSet::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(none.clone())
        .effective(none.clone())
        .inheritable(none.clone())
        .permitted(none.clone())
        .ambient(none)
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(bundle.terminal)
        .user(
            UserBuilder::default()
                .uid(bundle.user.uid)
                .gid(bundle.user.gid)
                .additional_gids(Vec::<u32>::new())
                .build()
                .map_err(err)?,
        )
        .args(bundle.args.clone())
        .env(bundle.env.clone())
        .cwd(bundle.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(err)?;
    let mut memory = LinuxMemoryBuilder::default()
        .limit(bundle.memory_limit)
        .swap(bundle.memory_limit);
    if let Some(reservation) = bundle.memory_reservation {
        memory = memory.reservation(reservation);
    }
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(err)?])
        .memory(memory.build().map_err(err)?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(bundle.max_processes)
                .build()
                .map_err(err)?,
        )
        .build()
        .map_err(err)?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(err)?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(relative_path(bundle.id)))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(err)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(bundle.dir.join("rootfs"))
                .readonly(true)
                .build()
                .map_err(err)?,
        )
        .hostname(bundle.id.to_string())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

impl DynoBackend for OciBackend {
    fn describe(&self) -> String {
        let app = match &self.no_overlay {
            None => "/app an overlay of its release".to_string(),
            Some(why) => format!("/app a copy of its slug: overlayfs does not work ({why})"),
        };
        format!("oci ({}, {}; {app})", self.binary.display(), self.version)
    }

    fn build_sandbox(&self) -> Option<Arc<dyn slipway_build::BuildSandbox>> {
        Some(self.builds.clone())
    }

    fn prepare(&self, dyno: &DynoSpec) -> Result<(), RuntimeError> {
        // A container of a previous run of this dyno (crash, or a dead server).
        self.delete(&dyno.id);
        let lower = self.prepare_app(dyno)?;
        self.write_bundle_with(dyno, false, lower.as_ref())
    }

    /// `runc exec` in the dyno's container: the process gets the container's own
    /// environment, working directory (`/app`) and user from its bundle.
    fn check_command(&self, dyno: &DynoSpec, argv: &[String]) -> Result<Launch, RuntimeError> {
        let mut args: Vec<String> = vec!["--root".into(), self.state_dir.display().to_string()];
        args.extend(["exec", &dyno.id, shell(), "-c"].map(String::from));
        args.push(wrapped_command(&crate::backend::shell_words(argv)));
        Ok(Launch {
            program: self.binary.clone(),
            args,
            env: vec![("PATH".into(), PATH.into())],
            cwd: dyno.dir.clone(),
            user: None,
            kill_group_on_exit: true,
        })
    }

    fn launch(&self, dyno: &DynoSpec) -> Result<Launch, RuntimeError> {
        let mut args: Vec<String> = vec!["--root".into(), self.state_dir.display().to_string()];
        args.extend(["run", "--keep", "--bundle"].map(String::from));
        args.push(dyno.dir.display().to_string());
        args.push(dyno.id.clone());
        Ok(Launch {
            program: self.binary.clone(),
            args,
            env: vec![
                ("PATH".into(), PATH.into()),
                // Lets a later server recognise this pid as the dyno's (`pid_belongs_to_dyno`).
                ("SLIPWAY_DYNO_ID".into(), dyno.id.clone()),
            ],
            cwd: dyno.dir.clone(),
            user: None,
            kill_group_on_exit: false,
        })
    }

    fn signal_pid<'a>(
        &'a self,
        dyno: &'a DynoSpec,
        pid: Option<u32>,
        signal: Signal,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let killed = self
                .async_command()
                .args(["kill", "--all", &dyno.id, signal.as_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if !killed {
                // The container is not running yet (or any more): runc itself passes the
                // signal on to what it started.
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    kill_group(pid, signal);
                }
            }
        })
    }

    fn exited<'a>(&'a self, dyno: &'a DynoSpec) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let oom_killed = self.cgroups.oom_kills(&dyno.id).unwrap_or(0) > 0;
            let _ = self
                .async_command()
                .args(["delete", "--force", &dyno.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            oom_killed
        })
    }

    fn signal<'a>(
        &'a self,
        dyno: &'a DynoSpec,
        running: &'a Running,
        signal: Signal,
    ) -> BoxFuture<'a, ()> {
        self.signal_pid(dyno, running.pid, signal)
    }

    fn wait<'a>(&'a self, dyno: &'a DynoSpec, running: &'a mut Running) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            let status = running.child.wait().await.unwrap_or_default();
            let oom_killed = self.exited(dyno).await;
            Exit { status, oom_killed }
        })
    }

    fn usage(&self, dyno: &DynoSpec, _pid: Option<u32>) -> Option<Usage> {
        self.cgroups.usage(&dyno.id)
    }

    fn cleanup(&self, dyno_id: &str, dir: &Path) -> Result<(), RuntimeError> {
        self.delete(dyno_id);
        remove_dir(dir)?;
        // `<dynos-dir>/<app id>/<dyno id>`: the app's release directories no dyno uses go.
        if let (Some(releases), Some(app_id)) =
            (&self.releases, dir.parent().and_then(|p| p.file_name()))
        {
            releases.collect(&app_id.to_string_lossy());
        }
        Ok(())
    }

    fn stage_release(
        &self,
        app_id: &str,
        user: Option<&AppUser>,
        build_dir: &Path,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        match &self.releases {
            Some(releases) => releases.stage(app_id, user, build_dir),
            None => Ok(None),
        }
    }

    fn take_release(
        &self,
        app_id: &str,
        user: Option<&AppUser>,
        build_dir: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<Option<crate::releasedir::TakenRelease>, RuntimeError> {
        match &self.releases {
            Some(releases) => releases.take(app_id, user, build_dir, cache_dir),
            None => Ok(None),
        }
    }

    fn finish_release(&self, app_id: &str, staged: &Path, checksum: Option<&str>) {
        if let Some(releases) = &self.releases {
            releases.finish(app_id, staged, checksum);
        }
    }

    fn prepare_one_off(&self, dyno: &DynoSpec, terminal: bool) -> Result<(), RuntimeError> {
        self.delete(&dyno.id);
        let lower = self.prepare_app(dyno)?;
        self.write_bundle_with(dyno, terminal, lower.as_ref())
    }

    /// runc refuses `--console-socket` unless it detaches, and a detached container's exit
    /// status reaches only a subreaper. So runc runs in the foreground with the caller's
    /// pseudo-terminal as its stdio: it makes the container's own terminal, copies between
    /// the two (raw), and on SIGWINCH gives the container's the size of ours.
    fn start_one_off(&self, dyno: &DynoSpec, stdio: OneOffStdio) -> Result<Running, RuntimeError> {
        let mut cmd = self.async_command();
        cmd.args(["run", "--keep", "--bundle"])
            .arg(&dyno.dir)
            .arg(&dyno.id)
            .current_dir(&dyno.dir)
            .env_clear()
            .env("PATH", PATH)
            .env("SLIPWAY_DYNO_ID", &dyno.id)
            .process_group(0)
            .kill_on_drop(false);
        one_off_stdio(&mut cmd, stdio, &dyno.name)?;
        let mut child = cmd
            .spawn()
            .map_err(RuntimeError::io("starting", &self.binary))?;
        Ok(Running {
            pid: child.id(),
            addr: None,
            stdout: child.stdout.take().map(|s| Box::new(s) as _),
            stderr: child.stderr.take().map(|s| Box::new(s) as _),
            child,
        })
    }
}

/// Connects a one-off's stdin, stdout and stderr: pipes, or the terminal's slave side.
pub(crate) fn one_off_stdio(
    cmd: &mut Command,
    stdio: OneOffStdio,
    dyno: &str,
) -> Result<(), RuntimeError> {
    match stdio {
        OneOffStdio::Pipes => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        OneOffStdio::Terminal(slave) => {
            let dup = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone().map_err(|source| RuntimeError::Terminal {
                    dyno: dyno.to_string(),
                    source,
                })
            };
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
        }
    }
    Ok(())
}

fn base_mounts(tmp_size_bytes: u64) -> Vec<Mount> {
    let tmp_size = format!("size={}k", tmp_size_bytes / 1024);
    let m = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    [
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", &tmp_size],
        ),
        m("/usr", "bind", "/usr", &["rbind", "ro", "nosuid", "nodev"]),
        // As `runc spec` has them, read-only: runc mounts only the dyno's own cgroup at
        // /sys/fs/cgroup (cgroup v1: each controller's dyno directory bound; v2: a cgroup
        // namespace), so an app (a JVM, Node, Go sizing their heaps) reads its own limits
        // (memory.limit_in_bytes, memory.soft_limit_in_bytes = its size's quota) and no
        // other dyno's.
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `/app` as an overlay: `lower` (a release directory's `app`, never written) under the dyno's
/// own `<dir>/upper`, with `<dir>/work` as overlayfs's work directory. runc mounts it in the
/// container's mount namespace; it goes with the container.
fn overlay(lower: &Path, dir: &Path) -> Result<Mount, RuntimeError> {
    let options = vec![
        format!("lowerdir={}", lower.display()),
        format!("upperdir={}", dir.join("upper").display()),
        format!("workdir={}", dir.join("work").display()),
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    MountBuilder::default()
        .destination("/app")
        .typ("overlay")
        .source("overlay")
        .options(options)
        .build()
        .map_err(|e| RuntimeError::Bundle {
            dyno: "/app".to_string(),
            detail: e.to_string(),
        })
}

pub(crate) fn bind(source: &Path, dest: &str, read_only: bool) -> Result<Mount, RuntimeError> {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    options.push(if read_only { "ro" } else { "rw" });
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options.into_iter().map(String::from).collect::<Vec<_>>())
        .build()
        .map_err(|e| RuntimeError::Bundle {
            dyno: dest.to_string(),
            detail: e.to_string(),
        })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `/etc` dynos get: `<shared>/etc-<n>`, built from [`STACK_ETC`]. An existing one with
/// the same content is reused (a restarted server's re-adopted dynos and its new ones share
/// it). Older ones are removed only when no container or bundle under `dynos_dir` still
/// mounts them ([`etc_in_use`]): removing a directory a running container bind-mounts would
/// empty that container's `/etc` (DNS, TLS certificates, the loader's cache).
fn build_stack_etc(shared: &Path, dynos_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    // Filled under a name no other start-up removes, then renamed into place.
    let building = shared.join(format!("building-etc-{stamp}"));
    remove_dir(&building)?;
    make_dir(&building, 0o755, None)?;
    let host = Path::new("/etc");
    for name in STACK_ETC {
        copy_tree(&host.join(name), &building.join(name))?;
    }
    for (name, text) in [("passwd", ""), ("group", ""), ("hostname", "dyno\n")] {
        let path = building.join(name);
        std::fs::write(&path, text).map_err(RuntimeError::io("writing", &path))?;
    }
    let mtab = building.join("mtab");
    std::os::unix::fs::symlink("/proc/self/mounts", &mtab)
        .map_err(RuntimeError::io("creating", &mtab))?;
    let mut existing: Vec<PathBuf> = std::fs::read_dir(shared)
        .map_err(RuntimeError::io("listing", shared))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("etc-"))
        .map(|e| e.path())
        .collect();
    // Newest first (the stamp is in the name).
    existing.sort_by_key(|p| {
        std::cmp::Reverse(
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("etc-"))
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0),
        )
    });
    let etc = match existing.iter().find(|d| same_tree(&building, d)) {
        Some(same) => {
            remove_dir(&building)?;
            same.clone()
        }
        None => {
            let etc = shared.join(format!("etc-{stamp}"));
            std::fs::rename(&building, &etc).map_err(RuntimeError::io("renaming", &building))?;
            etc
        }
    };
    for old in existing.iter().filter(|d| **d != etc) {
        if etc_in_use(old, shared, dynos_dir) {
            tracing::info!(etc = %old.display(), "keeping an older stack /etc a container still mounts");
        } else {
            remove_dir(old)?;
        }
    }
    Ok(etc)
}

/// Whether a container's or bundle's config names `etc` as a mount source: runc's state of
/// every container under `<shared>/state`, build bundles under `<shared>/builds`, and the
/// bundles of dynos (`<dynos dir>/<app id>/<dyno id>/config.json`), including one being set
/// up. Unreadable or oversized files count as using it (never remove what might be in use).
fn etc_in_use(etc: &Path, shared: &Path, dynos_dir: &Path) -> bool {
    /// runc's state and bundles are a few tens of KiB.
    const MAX_CONFIG: u64 = 4 << 20;
    let needle = format!("\"{}\"", etc.display());
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut configs: Vec<PathBuf> = Vec::new();
    configs.extend(
        children(&shared.join("state"))
            .into_iter()
            .map(|d| d.join("state.json")),
    );
    configs.extend(
        children(&shared.join("builds"))
            .into_iter()
            .map(|d| d.join("config.json")),
    );
    for app in children(dynos_dir) {
        if app
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        configs.extend(children(&app).into_iter().map(|d| d.join("config.json")));
    }
    configs.iter().any(|config| {
        use std::io::Read;
        let Ok(file) = std::fs::File::open(config) else {
            return false;
        };
        let mut text = Vec::new();
        match file.take(MAX_CONFIG + 1).read_to_end(&mut text) {
            Ok(n) if (n as u64) <= MAX_CONFIG => {
                text.windows(needle.len()).any(|w| w == needle.as_bytes())
            }
            _ => true,
        }
    })
}

/// Whether two directory trees hold the same names, kinds, file contents, modes and symlink
/// targets.
fn same_tree(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) else {
        return false;
    };
    let (ka, kb) = (ma.file_type(), mb.file_type());
    if ka.is_symlink() || kb.is_symlink() {
        return matches!(
            (std::fs::read_link(a), std::fs::read_link(b)),
            (Ok(x), Ok(y)) if x == y
        );
    }
    if ma.permissions().mode() != mb.permissions().mode() {
        return false;
    }
    if ka.is_dir() && kb.is_dir() {
        let names = |dir: &Path| -> Option<Vec<std::ffi::OsString>> {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .ok()?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .ok()?;
            names.sort();
            Some(names)
        };
        let (Some(na), Some(nb)) = (names(a), names(b)) else {
            return false;
        };
        return na == nb && na.iter().all(|n| same_tree(&a.join(n), &b.join(n)));
    }
    if ka.is_file() && kb.is_file() {
        return ma.len() == mb.len()
            && matches!(
                (std::fs::read(a), std::fs::read(b)),
                (Ok(x), Ok(y)) if x == y
            );
    }
    false
}

/// Copies files and directories, keeping symlinks as symlinks. A missing source is skipped.
fn copy_tree(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    let Ok(meta) = std::fs::symlink_metadata(from) else {
        return Ok(());
    };
    if from == Path::new("/etc/ssl/private") {
        return Ok(());
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(from).map_err(RuntimeError::io("reading", from))?;
        std::os::unix::fs::symlink(target, to).map_err(RuntimeError::io("creating", to))?;
    } else if kind.is_dir() {
        make_dir(to, 0o755, None)?;
        for entry in std::fs::read_dir(from).map_err(RuntimeError::io("listing", from))? {
            let entry = entry.map_err(RuntimeError::io("listing", from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if kind.is_file() {
        std::fs::copy(from, to).map_err(RuntimeError::io("copying", from))?;
        // Readable by the dyno's user, never writable (the mount is read-only anyway).
        let mode = (meta.permissions().mode() & 0o755) | 0o444;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
            .map_err(RuntimeError::io("setting permissions of", to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_mounting(path: &Path, etc: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("bundle dir");
        let config = serde_json::json!({
            "mounts": [{"destination": "/etc", "source": etc.display().to_string()}]
        });
        std::fs::write(path, config.to_string()).expect("config");
    }

    fn stale_etc(shared: &Path, stamp: i64) -> PathBuf {
        let dir = shared.join(format!("etc-{stamp}"));
        std::fs::create_dir_all(&dir).expect("stale etc");
        std::fs::write(dir.join("hostname"), "old\n").expect("stale file");
        dir
    }

    #[test]
    fn a_stack_etc_a_container_or_bundle_mounts_is_never_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dynos = tmp.path().join("dynos");
        let shared = dynos.join(".oci");
        std::fs::create_dir_all(&shared).expect("shared");

        let first = build_stack_etc(&shared, &dynos).expect("first build");
        assert!(first.join("hostname").is_file(), "{first:?} was filled");
        // The same host /etc: the same directory, not a copy that replaces it.
        let again = build_stack_etc(&shared, &dynos).expect("second build");
        assert_eq!(again, first);

        // Older ones: one a dyno's bundle mounts (a dyno being set up, or a re-adopted one),
        // one a running container's runc state names, one a build's bundle mounts, one
        // nothing uses.
        let (by_dyno, by_state, by_build, unused) = (
            stale_etc(&shared, 1),
            stale_etc(&shared, 2),
            stale_etc(&shared, 3),
            stale_etc(&shared, 4),
        );
        bundle_mounting(&dynos.join("app-1/dyno-1/config.json"), &by_dyno);
        bundle_mounting(&shared.join("state/dyno-2/state.json"), &by_state);
        bundle_mounting(&shared.join("builds/build-1/config.json"), &by_build);

        let third = build_stack_etc(&shared, &dynos).expect("third build");
        assert_eq!(third, first);
        for kept in [&by_dyno, &by_state, &by_build] {
            assert!(
                kept.join("hostname").is_file(),
                "{kept:?} is mounted and must stay"
            );
        }
        assert!(!unused.exists(), "{unused:?} is unused and must go");

        // The host's /etc changed (here: the current copy differs): a new one is made, the
        // one a dyno still mounts stays with its content.
        bundle_mounting(&dynos.join("app-1/dyno-3/config.json"), &first);
        std::fs::write(first.join("extra"), "x").expect("change");
        let fourth = build_stack_etc(&shared, &dynos).expect("fourth build");
        assert_ne!(fourth, first);
        assert!(
            first.join("extra").is_file(),
            "{first:?} is mounted and must stay"
        );
        assert!(fourth.join("hostname").is_file());
        assert!(!fourth.join("extra").exists());
    }
}
