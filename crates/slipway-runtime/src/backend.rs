//! The one interface every way of running a dyno implements ([`DynoBackend`]), what it is
//! given ([`DynoSpec`]) and what it hands back ([`Running`], [`Exit`], [`Usage`]).
//!
//! Two backends exist: `oci.rs` (each dyno a container run by runc or another OCI runtime,
//! the default when the server is root and the runtime works) and `plain.rs` (a process
//! group under the app's uid, the fallback). The supervisor drives either the same way:
//! `prepare` (blocking: filesystem), `start`, `signal`, `wait`, `usage`, `cleanup`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tokio::io::AsyncRead;
use tokio::process::Child;

pub use crate::monitor::Launch;
use crate::users::AppUser;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A dyno's resources (Heroku's dyno sizes). The kernel kills a dyno at twice its memory
/// quota (R15); between one and two times the quota it gets R14 warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynoSize {
    pub name: String,
    pub memory_quota_bytes: u64,
    pub max_processes: u64,
}

const MB: u64 = 1024 * 1024;

impl DynoSize {
    pub fn standard_1x() -> Self {
        Self::new("standard-1X", 512 * MB, 256)
    }

    pub fn standard_2x() -> Self {
        Self::new("standard-2X", 1024 * MB, 512)
    }

    pub fn performance_m() -> Self {
        Self::new("performance-M", 2560 * MB, 16384)
    }

    pub fn new(name: &str, memory_quota_bytes: u64, max_processes: u64) -> Self {
        Self {
            name: name.to_string(),
            memory_quota_bytes,
            max_processes,
        }
    }

    /// `standard-1X`, `standard-2X`, `performance-M` (case-insensitive, as Heroku accepts).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "standard-1x" | "1x" => Some(Self::standard_1x()),
            "standard-2x" | "2x" => Some(Self::standard_2x()),
            "performance-m" => Some(Self::performance_m()),
            _ => None,
        }
    }

    /// The hard limit the kernel enforces: twice the quota.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_quota_bytes.saturating_mul(2)
    }
}

/// Everything a backend needs to run one dyno.
#[derive(Debug, Clone)]
pub struct DynoSpec {
    /// Unique per dyno run (also the container id).
    pub id: String,
    pub app_id: String,
    /// `web.1`
    pub name: String,
    pub command: String,
    /// The app's config vars. Secret: never logged.
    pub config: BTreeMap<String, String>,
    /// Web dynos: the port to bind (on the address the backend reports).
    pub port: Option<u16>,
    pub size: DynoSize,
    /// The dyno's own directory, `<dynos dir>/<app id>/<dyno id>`.
    pub dir: PathBuf,
    pub slug_path: PathBuf,
    pub slug_checksum: String,
    /// The app's own user, when the server can switch users (it runs as root).
    pub user: Option<AppUser>,
}

/// A started dyno.
pub struct Running {
    pub child: Child,
    /// The pid the platform holds (the OCI runtime's, or the dyno's shell).
    pub pid: Option<u32>,
    /// Where a web dyno serves, once up.
    pub addr: Option<SocketAddr>,
    pub stdout: Option<Box<dyn AsyncRead + Unpin + Send + Sync>>,
    pub stderr: Option<Box<dyn AsyncRead + Unpin + Send + Sync>>,
}

/// How a dyno's main process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: ExitStatus,
    /// The kernel's OOM killer ended a process of the dyno (its memory limit was hit).
    pub oom_killed: bool,
}

impl Exit {
    /// Heroku's convention: the exit code, or 128 + the signal that ended the process.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(0)
    }
}

/// Resource use of a running dyno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Memory in use, page cache that can be dropped excluded: what the quota counts (R14)
    /// and what the runtime metrics call `memory_total`.
    pub memory_bytes: u64,
    /// Anonymous memory resident in RAM (cgroup `rss`/`anon`; processes' `VmRSS`).
    pub memory_rss_bytes: u64,
    /// Page cache charged to the dyno (cgroup `cache`/`file`; 0 for plain processes).
    pub memory_cache_bytes: u64,
    /// Memory swapped out (cgroup `swap`; processes' `VmSwap`).
    pub memory_swap_bytes: u64,
    /// Pages read into / written out of the dyno's memory since it started (cgroup v1
    /// `pgpgin`/`pgpgout`); `None` where the kernel does not count them per dyno.
    pub pgpgin: Option<u64>,
    pub pgpgout: Option<u64>,
    /// CPU time used since the dyno started, in nanoseconds.
    pub cpu_nanos: Option<u64>,
    /// Processes of the dyno the kernel's OOM killer ended so far.
    pub oom_kills: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking the slug for dyno {dyno}: {source}")]
    Slug {
        dyno: String,
        #[source]
        source: slipway_build::BuildError,
    },
    #[error("the OCI runtime {binary} does not work ({reason}); install runc (Debian: apt-get install runc) or pass --dyno-runtime process")]
    OciUnavailable { binary: String, reason: String },
    #[error("{runtime} {action} for dyno {dyno} failed: {detail}")]
    OciCommand {
        runtime: String,
        action: &'static str,
        dyno: String,
        detail: String,
    },
    #[error("writing the OCI bundle for dyno {dyno}: {detail}")]
    Bundle { dyno: String, detail: String },
    #[error("the dynos directory {dir} is inside {parent} (mode {mode:o}), which app users cannot enter; pass --dynos-dir with a path whose parents are world-searchable (e.g. /var/lib/slipway-dynos)")]
    Unreachable {
        dir: PathBuf,
        parent: PathBuf,
        mode: u32,
    },
    #[error("the dynos directory {dir} must be outside the data directory {data_dir}: dynos must not reach the platform's files")]
    InsideDataDir { dir: PathBuf, data_dir: PathBuf },
    #[error("no free uid left for app {app} in {first}..{last}; remove apps or raise the range")]
    NoFreeUid { app: String, first: u32, last: u32 },
    #[error("the {backend} backend cannot run one-off dyno {dyno}")]
    OneOffUnsupported { backend: String, dyno: String },
    #[error("could not open a pseudo-terminal for one-off dyno {dyno}: {source}")]
    Terminal {
        dyno: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the monitor of dyno {dyno}: {detail}")]
    Monitor { dyno: String, detail: String },
    #[error("the uid table {path} is corrupt at line {line}; fix or remove the line")]
    UidTable { path: PathBuf, line: usize },
}

impl RuntimeError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io {
            action,
            path,
            source,
        }
    }
}

/// A way to run dynos. Implementations must be usable from many tasks at once.
pub trait DynoBackend: Send + Sync + 'static {
    /// `oci (runc 1.1.5)`, `process`: said at start-up and in `ps`.
    fn describe(&self) -> String;

    /// Where a web dyno told to bind `port` is reached (host:port): loopback for both local
    /// backends (dynos share the host's network); a backend on other machines answers with
    /// the machine's address. The router and health checks use only this.
    fn address(&self, port: u16) -> SocketAddr {
        loopback(port)
    }

    /// Whether dynos run with the host's filesystem, in their directory (so app users must be
    /// able to reach it).
    fn runs_in_host_dirs(&self) -> bool {
        false
    }

    /// Where builds run their buildpack processes when dynos run in this backend's sandbox
    /// (see `build_sandbox.rs`); none: on the host, as the build user.
    fn build_sandbox(&self) -> Option<std::sync::Arc<dyn slipway_build::BuildSandbox>> {
        None
    }

    /// Creates the dyno's filesystem: a fresh copy of the slug (and for containers, the
    /// bundle). Blocking; any leftover of a previous run of the same dyno is replaced.
    fn prepare(&self, dyno: &DynoSpec) -> Result<(), RuntimeError>;

    /// What a dyno monitor (`monitor.rs`) runs for the dyno: its main process, whose exit
    /// status is the dyno's and whose stdout and stderr are its output.
    fn launch(&self, dyno: &DynoSpec) -> Result<Launch, RuntimeError>;

    /// Starts the dyno's command as the server's own child, its output piped to the server
    /// (for dynos that need not outlive the server).
    fn start(&self, dyno: &DynoSpec) -> Result<Running, RuntimeError> {
        let launch = self.launch(dyno)?;
        let mut child = command(&launch)
            .spawn()
            .map_err(RuntimeError::io("starting", &launch.program))?;
        Ok(Running {
            pid: child.id(),
            addr: dyno.port.map(|p| self.address(p)),
            stdout: child.stdout.take().map(|s| Box::new(s) as _),
            stderr: child.stderr.take().map(|s| Box::new(s) as _),
            child,
        })
    }

    /// Sends `signal` to every process of a dyno whose main process (as run by its monitor)
    /// is `pid`.
    fn signal_pid<'a>(
        &'a self,
        dyno: &'a DynoSpec,
        pid: Option<u32>,
        signal: Signal,
    ) -> BoxFuture<'a, ()>;

    /// After a monitored dyno's main process exited: whether the kernel's OOM killer struck,
    /// and the backend's own clean-up of the run (the container).
    fn exited<'a>(&'a self, dyno: &'a DynoSpec) -> BoxFuture<'a, bool>;

    /// Sends `signal` to every process of the dyno.
    fn signal<'a>(
        &'a self,
        dyno: &'a DynoSpec,
        running: &'a Running,
        signal: Signal,
    ) -> BoxFuture<'a, ()>;

    /// Waits until the dyno's main process has exited. Cancel-safe.
    fn wait<'a>(&'a self, dyno: &'a DynoSpec, running: &'a mut Running) -> BoxFuture<'a, Exit>;

    /// Memory and CPU of the running dyno, where the backend can measure them. `pid` is its
    /// main process as its monitor reports it (the leader of its process group). Blocking
    /// (reads `/sys` or `/proc`).
    fn usage(&self, dyno: &DynoSpec, pid: Option<u32>) -> Option<Usage>;

    /// Removes everything the dyno left: its container, its directory. Blocking.
    fn cleanup(&self, dyno_id: &str, dir: &Path) -> Result<(), RuntimeError>;

    /// What runs a health check's `command` (`health.rs`) inside the running dyno, with its
    /// environment, working directory and user: by default the dyno's own launch with the
    /// command in place of its process (plain processes); containers override it (`runc
    /// exec`).
    fn check_command(&self, dyno: &DynoSpec, argv: &[String]) -> Result<Launch, RuntimeError> {
        let mut launch = self.launch(dyno)?;
        launch.program = shell().into();
        launch.args = vec!["-c".into(), wrapped_command(&shell_words(argv))];
        Ok(launch)
    }

    /// Starts the app's release directory for a slug being packed from `build_dir`
    /// (`releasedir.rs`): `Ok(None)` where this backend keeps none (each dyno gets a copy).
    /// Blocking.
    fn stage_release(
        &self,
        _app_id: &str,
        _user: Option<&AppUser>,
        _build_dir: &Path,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        Ok(None)
    }

    /// Moves a finished build directory into a staged release directory of the app instead of
    /// copying it (`releasedir.rs` `take`): `Ok(None)` where this backend keeps none or the
    /// build directory cannot be moved there (nothing was moved). Blocking.
    fn take_release(
        &self,
        _app_id: &str,
        _user: Option<&AppUser>,
        _build_dir: &Path,
        _cache_dir: Option<&Path>,
    ) -> Result<Option<crate::releasedir::TakenRelease>, RuntimeError> {
        Ok(None)
    }

    /// Makes what [`DynoBackend::stage_release`] returned the release directory of the slug
    /// with `checksum`, or removes it (`None`: no slug was made). Blocking.
    fn finish_release(&self, _app_id: &str, _staged: &Path, _checksum: Option<&str>) {}

    /// Like [`DynoBackend::prepare`], for a one-off dyno (`oneoff.rs`), which may run on a
    /// terminal.
    fn prepare_one_off(&self, dyno: &DynoSpec, _terminal: bool) -> Result<(), RuntimeError> {
        self.prepare(dyno)
    }

    /// Starts a one-off dyno's command with `stdio` (see [`OneOffStdio`]). With pipes, the
    /// command's stdin is `Running::child.stdin`.
    fn start_one_off(&self, dyno: &DynoSpec, _stdio: OneOffStdio) -> Result<Running, RuntimeError> {
        Err(RuntimeError::OneOffUnsupported {
            backend: self.describe(),
            dyno: dyno.name.clone(),
        })
    }
}

/// How a one-off dyno's standard streams are connected.
#[derive(Debug)]
pub enum OneOffStdio {
    /// Three pipes: stdin, stdout, stderr.
    Pipes,
    /// The slave side of a pseudo-terminal the caller opened: stdin, stdout and stderr.
    Terminal(std::os::fd::OwnedFd),
}

/// Where a web dyno listening on `port` is reached: loopback (dynos share the host's network).
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

/// `launch` as a child of the server, its output piped.
pub(crate) fn command(launch: &Launch) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = launch.user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `argv` as one shell command line, each word single-quoted.
pub(crate) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The dyno's command as its shell runs it: first the `.profile.d` scripts the buildpacks
/// wrote (Heroku's convention), then the command.
pub(crate) fn wrapped_command(command: &str) -> String {
    format!(
        "for f in \"$HOME\"/.profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done; unset f\n{command}"
    )
}

/// The shell dynos run under: bash when the stack has it (Heroku's), else sh.
pub(crate) fn shell() -> &'static str {
    if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// The dyno's environment: config vars, then what the platform sets (which wins).
pub(crate) fn environment(dyno: &DynoSpec, home: &str) -> BTreeMap<String, String> {
    let mut env = dyno.config.clone();
    for (k, v) in [
        ("PATH", PATH),
        ("LANG", "C.UTF-8"),
        ("HOME", home),
        ("DYNO", &dyno.name),
        ("PS", &dyno.name),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    match dyno.port {
        Some(port) => env.insert("PORT".to_string(), port.to_string()),
        None => env.remove("PORT"),
    };
    env
}

/// Creates a directory with `mode`, owned by `user` when given.
pub(crate) fn make_dir(path: &Path, mode: u32, user: Option<&AppUser>) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(path).map_err(RuntimeError::io("creating", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(RuntimeError::io("setting permissions of", path))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(RuntimeError::io("changing the owner of", path))?;
    }
    Ok(())
}

/// Gives everything under `path` (symlinks themselves, not their targets) to `user`.
/// Depth first: a directory becomes the user's only after everything below it, so no process
/// of that user can swap a directory for a symlink while root still walks through it.
pub(crate) fn chown_tree(path: &Path, user: &AppUser) -> Result<(), RuntimeError> {
    let meta = std::fs::symlink_metadata(path).map_err(RuntimeError::io("reading", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(RuntimeError::io("listing", path))? {
            let entry = entry.map_err(RuntimeError::io("listing", path))?;
            chown_tree(&entry.path(), user)?;
        }
    }
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(RuntimeError::io("changing the owner of", path))
}

/// A root-owned directory the app's user may pass through but not change (0711): the dyno's
/// bundle (config.json, rootfs, passwd) lives here, so the app can neither swap it nor plant a
/// symlink where root will create or chmod something.
fn root_dir(path: &Path) -> Result<(), RuntimeError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(RuntimeError::io("refusing a symbolic link at", path)(
            std::io::Error::other("a dyno directory must be a real directory"),
        ));
    }
    make_dir(path, 0o711, None)?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(0), Some(0))
            .map_err(RuntimeError::io("changing the owner of", path))?;
    }
    Ok(())
}

/// The dyno's directory, fresh: `<dir>` (root's, 0711) holding `app/`, an unpack of the slug
/// given to the app's user once it is complete.
pub(crate) fn fresh_dyno_dir(dyno: &DynoSpec) -> Result<PathBuf, RuntimeError> {
    empty_dyno_dir(dyno)?;
    slipway_build::unpack_slug(&dyno.slug_path, &dyno.slug_checksum, &dyno.dir).map_err(
        |source| RuntimeError::Slug {
            dyno: dyno.name.clone(),
            source,
        },
    )?;
    let app = dyno.dir.join("app");
    // The app's own files: no other user may read them (the directories above are root's 0711).
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o700))
        .map_err(RuntimeError::io("setting permissions of", &app))?;
    if let Some(u) = &dyno.user {
        chown_tree(&app, u)?;
    }
    Ok(app)
}

/// The dyno's directory, empty (root's, 0711; whatever a previous run left is removed).
pub(crate) fn empty_dyno_dir(dyno: &DynoSpec) -> Result<(), RuntimeError> {
    if dyno.dir.exists() {
        std::fs::remove_dir_all(&dyno.dir).map_err(RuntimeError::io("cleaning", &dyno.dir))?;
    }
    if let Some(parent) = dyno.dir.parent() {
        root_dir(parent)?;
    }
    root_dir(&dyno.dir)
}

pub(crate) fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io("removing", dir)(e)),
    }
}
