//! The build pipeline: the classic Heroku buildpack API run on the extracted source.
//!
//! [`compile`] takes a [`CompileSpec`] and, in order: removes what `.slugignore` lists, checks
//! the Procfile (so a broken one fails before a long build), finds the buildpacks (the app's
//! choice, or detection among the built-ins, which are ordinary files installed by
//! [`crate::install_builtin`] and run exactly like custom ones), resolves runtime versions,
//! runs each buildpack's `bin/compile BUILD_DIR CACHE_DIR ENV_DIR`, then the last one's
//! `bin/release BUILD_DIR`, and merges its `default_process_types` under the Procfile.
//!
//! Every buildpack process runs in its own process group with a minimal environment (never the
//! server's), optionally as another user and under a memory limit, and the whole group is
//! killed on timeout or cancellation. Progress goes out as [`BuildEvent`]s.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slipway_core::{Procfile, ProcfileError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buildpack::{self, FetchContext, Located};
use crate::event::{BuildEvent, Phase};
use crate::process::{self, Run, RunError, Sandboxed};
use crate::runtime;
use crate::sandbox::{BuildSandbox, SandboxMount};
use crate::{BuildError, Limits, SlugInfo};

/// Stack name given to buildpacks as `STACK`.
pub const STACK: &str = "slipway-24";
/// Output lines longer than this are cut into pieces.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Default build time limit (Heroku's is 15 minutes too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// PATH of buildpack processes, after [`CompileSpec::extra_path`] and the chosen runtimes.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of `bin/release` and `bin/detect` output read.
const MAX_CAPTURE: usize = 1024 * 1024;

/// Everything one build needs. Paths must exist or be creatable; when `run_as` is set, their
/// parent directories must let that user through (`o+x`).
#[derive(Debug, Clone)]
pub struct CompileSpec {
    /// The extracted source, compiled in place; it becomes the slug.
    pub build_dir: PathBuf,
    /// The app's build cache (`CACHE_DIR`), kept between builds; created if missing.
    pub cache_dir: PathBuf,
    /// The app's config vars, given to buildpacks as `ENV_DIR` (one file per var), never as
    /// the environment of the buildpack processes.
    pub env: BTreeMap<String, String>,
    /// Entries chosen for the app (see [`crate::resolve_buildpacks`]): a built-in's name
    /// (`python`, `heroku/python`...), an absolute directory, or a git URL (`url#ref`). Empty:
    /// detect among the built-ins.
    pub buildpacks: Vec<String>,
    /// Where the built-in buildpacks are installed (written by `compile` if outdated).
    pub builtin_dir: PathBuf,
    /// Cache of fetched git buildpacks; each `url#ref` is fetched once.
    pub fetch_dir: PathBuf,
    /// Operator-provided runtimes: `<dir>/python-3.12.1/bin/python3`, `<dir>/node-20.11.0/bin/node`.
    pub runtimes_dirs: Vec<PathBuf>,
    /// Directories put before [`DEFAULT_PATH`] for buildpacks (e.g. where cargo or go live).
    pub extra_path: Vec<PathBuf>,
    /// Variables the operator gives every buildpack (e.g. `RUSTUP_HOME`, `GOPROXY`, a private
    /// index URL). Not the app's config (that is `env`, in ENV_DIR); these win over nothing:
    /// `PATH`, `HOME`, `LANG`, `STACK` and `SOURCE_VERSION` are always the pipeline's.
    pub extra_env: BTreeMap<String, String>,
    /// For the whole compile (all buildpacks, fetches included).
    pub timeout: Duration,
    /// uid/gid the buildpack processes run as (the server must be root); the build and cache
    /// directories are given to that user first.
    pub run_as: Option<(u32, u32)>,
    /// Address-space limit (RLIMIT_AS) of each buildpack process. Node.js and Go reserve much
    /// virtual memory: keep this generous (several GiB) or unset.
    pub memory_limit_bytes: Option<u64>,
    /// The commit being built, given to buildpacks as `SOURCE_VERSION`.
    pub source_version: Option<String>,
    /// Run every buildpack process (detect, compile, release, sourcing `export`) in a
    /// container of its own (the OCI dyno runtime's), seeing only the build, cache, env and
    /// home directories and its buildpack's (plus the runtimes and `extra_path` directories,
    /// read-only); `memory_limit_bytes` is then the container's memory limit. None: host
    /// processes as described above.
    pub sandbox: Option<Arc<dyn BuildSandbox>>,
    /// Taken (and let go at once) before anything of the build touches `cache_dir`: the
    /// previous build's release may still be giving the cache its files back. The buildpacks
    /// are detected meanwhile (detection never sees the cache).
    pub cache_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl CompileSpec {
    /// A spec with the defaults: no config, detection, no runtimes dirs, 15 minutes, the
    /// server's own user, no memory limit.
    pub fn new(
        build_dir: PathBuf,
        cache_dir: PathBuf,
        builtin_dir: PathBuf,
        fetch_dir: PathBuf,
    ) -> Self {
        Self {
            build_dir,
            cache_dir,
            env: BTreeMap::new(),
            buildpacks: Vec::new(),
            builtin_dir,
            fetch_dir,
            runtimes_dirs: Vec::new(),
            extra_path: Vec::new(),
            extra_env: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            run_as: None,
            memory_limit_bytes: None,
            source_version: None,
            sandbox: None,
            cache_lock: None,
        }
    }
}

/// What a successful compile produced (the compiled tree is `spec.build_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The app's process types: the last buildpack's defaults overlaid by the Procfile.
    pub process_types: BTreeMap<String, String>,
    /// Names of the buildpacks that ran, in order (empty for a Procfile-only app).
    pub buildpacks: Vec<String>,
    /// Whether the app has a Procfile.
    pub has_procfile: bool,
}

/// Runs the buildpacks on `spec.build_dir`; see the module documentation.
pub async fn compile(
    spec: &CompileSpec,
    events: &mpsc::Sender<BuildEvent>,
    cancel: CancellationToken,
) -> Result<Compiled, BuildError> {
    let deadline = Instant::now() + spec.timeout;
    let build_dir = spec.build_dir.as_path();
    let say = |e: BuildEvent| async move {
        let _ = events.send(e).await;
    };

    let removed = blocking(build_dir, crate::slugignore::apply).await?;
    if removed > 0 {
        say(BuildEvent::title(format!(
            "Removed {removed} paths listed in .slugignore"
        )))
        .await;
    }
    let procfile = read_procfile(build_dir)?;

    crate::install_builtin(&spec.builtin_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("slipway-build-")
        .tempdir()
        .map_err(BuildError::io(
            "creating a scratch directory in",
            &std::env::temp_dir(),
        ))?;
    let env_dir = scratch.path().join("env");
    let home = scratch.path().join("home");
    write_env_dir(&env_dir, &spec.env)?;
    std::fs::create_dir(&home).map_err(BuildError::io("creating", &home))?;

    let mut path_dirs: Vec<PathBuf> = spec.extra_path.clone();
    path_dirs.extend(std::env::split_paths(DEFAULT_PATH));
    let mut base_env = spec.extra_env.clone();
    base_env.extend([
        ("HOME".to_string(), home.display().to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("STACK".to_string(), STACK.to_string()),
    ]);
    base_env.remove("SOURCE_VERSION");
    if let Some(v) = &spec.source_version {
        base_env.insert("SOURCE_VERSION".into(), v.clone());
    }
    base_env.insert("PATH".into(), join_path(&path_dirs));

    // Which buildpacks.
    let fetch_cx = FetchContext {
        builtin_dir: &spec.builtin_dir,
        fetch_dir: &spec.fetch_dir,
        env: &base_env,
        deadline,
        timeout: spec.timeout,
        cancel: &cancel,
        events,
        run_as: spec.run_as,
    };
    let explicit = !spec.buildpacks.is_empty();
    let candidates: Vec<Located> = if explicit {
        let mut list = Vec::new();
        for entry in &spec.buildpacks {
            list.push(buildpack::locate(entry, &fetch_cx).await?);
        }
        list
    } else {
        let mut list = Vec::new();
        for b in crate::BUILTINS {
            list.push(buildpack::locate(b.name, &fetch_cx).await?);
        }
        list
    };

    // Everything a buildpack process may write belongs to the build user from here on (the
    // cache once it is free, below).
    if let Some(owner) = spec.run_as {
        for dir in [build_dir, scratch.path()] {
            blocking(dir, move |d| chown_tree(d, owner)).await?;
        }
    }
    if let Some(sandbox) = &spec.sandbox {
        say(BuildEvent::title(format!(
            "Building in a container: {}",
            sandbox.describe()
        )))
        .await;
    }

    // Which buildpacks apply: detection sees the build directory where it is (never the
    // cache), while the cache may still be in use.
    let detecting = Runner {
        spec,
        env: base_env.clone(),
        deadline,
        cancel: &cancel,
        events,
        mounts: sandbox_mounts(spec, None, build_dir, None, &env_dir, &home),
        build_dir: build_dir.to_path_buf(),
        cache_dir: spec.cache_dir.clone(),
    };
    let mut chosen: Vec<(Located, String)> = Vec::new();
    for bp in candidates {
        let (ok, name) = detecting.detect(&bp).await?;
        if ok {
            say(BuildEvent::title(format!("{name} app detected"))).await;
            chosen.push((bp, name));
            if !explicit {
                break;
            }
        } else if explicit {
            return Err(BuildError::NotCompatible { buildpack: bp.name });
        }
    }
    if chosen.is_empty() && procfile.is_none() {
        return Err(BuildError::NotDetected {
            looked_for: crate::BUILTINS
                .iter()
                .map(|b| (b.name.to_string(), b.looks_for.to_string()))
                .collect(),
        });
    }

    if let Some(lock) = &spec.cache_lock {
        if lock.try_lock().is_err() {
            say(BuildEvent::title("Waiting for the build cache...")).await;
        }
        tokio::select! {
            _ = lock.lock() => {}
            _ = cancel.cancelled() => return Err(BuildError::Cancelled),
        }
    }
    // The cache is written only by the build user (the server creates its directory and
    // empties it, nothing more): once its directory is the user's, so is all below it, and the
    // walk over the installed dependencies (thousands of files) is skipped.
    std::fs::create_dir_all(&spec.cache_dir)
        .map_err(BuildError::io("creating", &spec.cache_dir))?;
    if let Some(owner) = spec.run_as {
        if !owned_by(&spec.cache_dir, owner)? {
            blocking(&spec.cache_dir, move |d| chown_tree(d, owner)).await?;
        }
    }
    let workspace = match &spec.sandbox {
        Some(_) => Workspace::open(&spec.build_dir, &spec.cache_dir)?,
        None => None,
    };
    // Where the buildpacks see the build and cache directories (moved into the workspace for
    // the buildpacks' time, then back).
    let (work_build, work_cache, one_mount) = match &workspace {
        Some(w) => (w.build.clone(), w.cache.clone(), Some(w.root.clone())),
        None => (spec.build_dir.clone(), spec.cache_dir.clone(), None),
    };
    let build_dir = work_build.as_path();
    let runner = Runner {
        spec,
        env: base_env.clone(),
        deadline,
        cancel: &cancel,
        events,
        mounts: sandbox_mounts(
            spec,
            one_mount.as_deref(),
            build_dir,
            Some(&work_cache),
            &env_dir,
            &home,
        ),
        build_dir: work_build.clone(),
        cache_dir: work_cache.clone(),
    };

    // Runtimes for the ecosystems that will be built.
    let mut env = base_env;
    let mut prepend: Vec<PathBuf> = Vec::new();
    let is = |word: &str| {
        chosen
            .iter()
            .any(|(_, n)| n.to_ascii_lowercase().contains(word))
    };
    if is("python") {
        let request = runtime::python_request(build_dir)?;
        let installed = runtime::installed_pythons(&spec.runtimes_dirs, &path_dirs).await;
        match runtime::choose_python(request.as_ref(), &installed)? {
            Some(c) => {
                say(BuildEvent::title(format!(
                    "Using Python {} ({}): {}",
                    c.installed.version_string(),
                    c.installed.path.display(),
                    c.reason
                )))
                .await;
                if let Some(w) = &c.warning {
                    say(BuildEvent::warning(w)).await;
                }
                env.insert(
                    "SLIPWAY_PYTHON".into(),
                    c.installed.path.display().to_string(),
                );
                env.insert(
                    "SLIPWAY_PYTHON_VERSION".into(),
                    c.installed.version_string(),
                );
                if let Some(bin) = runtime_bin(&c.installed.path, &spec.runtimes_dirs) {
                    prepend.push(bin);
                }
            }
            None => {
                say(BuildEvent::warning(
                    "no Python 3 interpreter is installed on this server",
                ))
                .await
            }
        }
    }
    if is("node") {
        let engines = runtime::node_engines(build_dir)?;
        let installed = runtime::installed_nodes(&spec.runtimes_dirs, &path_dirs).await;
        if let Some(c) = runtime::choose_node(engines.as_deref(), &installed) {
            say(BuildEvent::title(format!(
                "Using Node.js {} ({}): {}",
                c.installed.version_string(),
                c.installed.path.display(),
                c.reason
            )))
            .await;
            if let Some(w) = &c.warning {
                say(BuildEvent::warning(w)).await;
            }
            if let Some(bin) = runtime_bin(&c.installed.path, &spec.runtimes_dirs) {
                prepend.push(bin);
            }
        }
    }
    if !prepend.is_empty() {
        prepend.extend(path_dirs.iter().cloned());
        env.insert("PATH".into(), join_path(&prepend));
    }
    let mut runner = Runner { env, ..runner };

    // Each buildpack compiles from a copy of its own in the scratch directory, so that what it
    // writes there (its `export` file, for the buildpacks after it) stays within this build.
    let copies = scratch.path().join("buildpacks");
    for (i, (bp, _)) in chosen.iter().enumerate() {
        let copy = Located {
            name: bp.name.clone(),
            dir: copies.join(i.to_string()),
        };
        let (from, to) = (bp.dir.clone(), copy.dir.clone());
        blocking(&copies, move |_| copy_buildpack(&from, &to)).await?;
        if let Some(owner) = spec.run_as {
            blocking(&copies, move |d| chown_tree(d, owner)).await?;
        }
        runner.compile(&copy, &env_dir).await?;
        // An `export` is for the buildpacks after this one: the last one's is not sourced
        // (one container run less per build).
        if i + 1 < chosen.len() {
            runner.apply_export(&copy).await?;
        }
    }

    let defaults = match chosen.last() {
        Some((bp, _)) => runner.release(bp).await?,
        None => BTreeMap::new(),
    };
    say(BuildEvent::title("Discovering process types")).await;
    let mut process_types = BTreeMap::new();
    if !defaults.is_empty() {
        let names: Vec<&str> = defaults.keys().map(String::as_str).collect();
        say(BuildEvent::detail(format!(
            "Default types for buildpack -> {}",
            names.join(", ")
        )))
        .await;
        process_types.extend(defaults);
    }
    if let Some(p) = &procfile {
        let names: Vec<&str> = p.processes.keys().map(String::as_str).collect();
        say(BuildEvent::detail(format!(
            "Procfile declares types     -> {}",
            names.join(", ")
        )))
        .await;
        process_types.extend(p.processes.clone());
    }
    let buildpacks: Vec<String> = chosen.into_iter().map(|(bp, _)| bp.name).collect();
    if process_types.is_empty() {
        return Err(BuildError::NoProcessTypes { buildpacks });
    }
    Ok(Compiled {
        process_types,
        buildpacks,
        has_procfile: procfile.is_some(),
    })
}

/// Compresses `build_dir` into the slug at `slug_path` (see [`crate::create_slug`]), saying so
/// and the slug's size.
pub async fn pack_slug(
    build_dir: &Path,
    slug_path: &Path,
    limits: &Limits,
    events: &mpsc::Sender<BuildEvent>,
) -> Result<SlugInfo, BuildError> {
    let _ = events.send(BuildEvent::title("Compressing...")).await;
    let (dir, path, limits) = (build_dir.to_path_buf(), slug_path.to_path_buf(), *limits);
    let info = tokio::task::spawn_blocking(move || crate::create_slug(&dir, &path, &limits))
        .await
        .map_err(|e| BuildError::Interrupted(e.to_string()))??;
    let _ = events
        .send(BuildEvent::detail(format!(
            "Done: {}",
            human_size(info.size)
        )))
        .await;
    Ok(info)
}

/// `12.3M` style sizes, as Heroku prints them.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b}B"),
        b if b < 1024 * 1024 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{:.1}M", b as f64 / (1024.0 * 1024.0)),
    }
}

/// Removes everything in the app's build cache (`builds:cache:purge`); the directory stays.
pub fn purge_cache(cache_dir: &Path) -> Result<(), BuildError> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BuildError::io("listing", cache_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(BuildError::io("listing", cache_dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(BuildError::io("removing", &path))?;
    }
    Ok(())
}

/// What every sandboxed buildpack process of the build sees (besides its buildpack's
/// directory): the build and cache directories and HOME writable; ENV_DIR, the runtimes
/// directories and the operator's `extra_path` directories (those not already among the
/// system directories) read-only.
fn sandbox_mounts(
    spec: &CompileSpec,
    workspace: Option<&Path>,
    build_dir: &Path,
    cache_dir: Option<&Path>,
    env_dir: &Path,
    home: &Path,
) -> Vec<SandboxMount> {
    let mut mounts = match workspace {
        Some(root) => vec![SandboxMount::writable(root)],
        None => std::iter::once(build_dir)
            .chain(cache_dir)
            .map(SandboxMount::writable)
            .collect(),
    };
    mounts.extend([
        SandboxMount::read_only(env_dir),
        SandboxMount::writable(home),
    ]);
    let system = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    ];
    for dir in spec.runtimes_dirs.iter().chain(&spec.extra_path) {
        let visible = system.iter().any(|s| dir.starts_with(s));
        if !visible && dir.is_absolute() && dir.is_dir() {
            mounts.push(SandboxMount::read_only(dir));
        }
    }
    mounts
}

struct Runner<'a> {
    spec: &'a CompileSpec,
    env: BTreeMap<String, String>,
    deadline: Instant,
    cancel: &'a CancellationToken,
    events: &'a mpsc::Sender<BuildEvent>,
    /// See [`sandbox_mounts`].
    mounts: Vec<SandboxMount>,
    /// BUILD_DIR and CACHE_DIR as the buildpacks get them (see [`Workspace`]).
    build_dir: PathBuf,
    cache_dir: PathBuf,
}

/// Under the sandbox, the build and cache directories are moved (renamed, O(1)) into one
/// directory beside the build directory for the buildpacks' time, and that one is mounted:
/// `link(2)` fails across mounts even of one file system, and the Python buildpack restores
/// and saves its cached virtualenv by hard links (a copy of ~9,000 files otherwise). Moved
/// back when dropped (on every path out of `compile`). None when the cache is on another file
/// system (then each is mounted on its own). A server killed meanwhile loses that app's
/// cache (it stays in the build's temporary directory, which is cleaned): a cache only.
struct Workspace {
    root: PathBuf,
    build: PathBuf,
    cache: PathBuf,
    /// (original, inside the workspace), in the order they were moved.
    moved: Vec<(PathBuf, PathBuf)>,
}

impl Workspace {
    fn open(build_dir: &Path, cache_dir: &Path) -> Result<Option<Workspace>, BuildError> {
        let Some(parent) = build_dir.parent() else {
            return Ok(None);
        };
        let root = tempfile::Builder::new()
            .prefix(".slipway-workspace-")
            .tempdir_in(parent)
            .map_err(BuildError::io("creating a directory in", parent))?
            .keep();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(BuildError::io("setting permissions of", &root))?;
        let mut w = Workspace {
            build: root.join("build"),
            cache: root.join("cache"),
            root,
            moved: Vec::new(),
        };
        for (from, to) in [
            (build_dir.to_path_buf(), w.build.clone()),
            (cache_dir.to_path_buf(), w.cache.clone()),
        ] {
            match std::fs::rename(&from, &to) {
                Ok(()) => w.moved.push((from, to)),
                Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => return Ok(None),
                Err(e) => return Err(BuildError::io("moving", &from)(e)),
            }
        }
        Ok(Some(w))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for (original, inside) in self.moved.drain(..).rev() {
            if let Err(e) = std::fs::rename(&inside, &original) {
                tracing::error!(from = %inside.display(), to = %original.display(), error = %e, "could not move a build directory back");
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

impl Runner<'_> {
    /// The container of a run of `bp`'s scripts, when the build has a sandbox: its copy of the
    /// buildpack (compile, export) is writable, the original (detect, release) is not.
    fn sandboxed(&self, bp: &Located, writable: bool) -> Option<Sandboxed<'_>> {
        let sandbox = self.spec.sandbox.as_ref()?;
        let mut mounts = self.mounts.clone();
        mounts.push(SandboxMount {
            path: bp.dir.clone(),
            writable,
        });
        Some(Sandboxed { sandbox, mounts })
    }

    /// A run that failed because the container's memory limit was reached.
    fn out_of_memory(&self, bp: &Located, phase: Phase, f: process::Finished) -> BuildError {
        BuildError::OutOfMemory {
            buildpack: bp.name.clone(),
            phase,
            limit_bytes: self.spec.memory_limit_bytes.unwrap_or(0),
            output: f.tail,
        }
    }

    async fn run(
        &self,
        bp: &Located,
        phase: Phase,
        args: Vec<OsString>,
        capture: bool,
    ) -> Result<process::Finished, BuildError> {
        let program = bp.dir.join(phase.script());
        let _ = self
            .events
            .send(BuildEvent::PhaseStarted {
                phase,
                buildpack: bp.name.clone(),
            })
            .await;
        let started = Instant::now();
        let result = process::run(
            Run {
                program: &program,
                args,
                env: &self.env,
                cwd: &self.build_dir,
                run_as: self.spec.run_as,
                memory_limit_bytes: self.spec.memory_limit_bytes,
                deadline: self.deadline,
                cancel: self.cancel,
                capture_stdout: capture.then_some(MAX_CAPTURE),
                buildpack: &bp.name,
                phase,
                max_line: MAX_LINE_BYTES,
                sandbox: self.sandboxed(bp, phase == Phase::Compile),
            },
            self.events,
        )
        .await;
        let success = matches!(&result, Ok(f) if f.status.success());
        let _ = self
            .events
            .send(BuildEvent::PhaseFinished {
                phase,
                buildpack: bp.name.clone(),
                duration: started.elapsed(),
                success,
            })
            .await;
        match result {
            Ok(f) if f.oom_killed && !f.status.success() => Err(self.out_of_memory(bp, phase, f)),
            Ok(f) => Ok(f),
            Err(e) => Err(self.run_error(bp, phase, e)),
        }
    }

    fn run_error(&self, bp: &Located, phase: Phase, e: RunError) -> BuildError {
        match e {
            RunError::Timeout => BuildError::Timeout {
                buildpack: bp.name.clone(),
                phase,
                limit: self.spec.timeout,
            },
            RunError::Cancelled => BuildError::Cancelled,
            RunError::Spawn(source) | RunError::Wait(source) => BuildError::Spawn {
                buildpack: bp.name.clone(),
                phase,
                source,
            },
            RunError::Sandbox(source) => BuildError::Sandbox {
                buildpack: bp.name.clone(),
                source,
            },
        }
    }

    /// Whether `bp` applies, and the name its detect printed.
    async fn detect(&self, bp: &Located) -> Result<(bool, String), BuildError> {
        let f = self
            .run(bp, Phase::Detect, vec![self.build_dir.clone().into()], true)
            .await?;
        let printed = String::from_utf8_lossy(&f.stdout);
        let name: String = printed
            .lines()
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&bp.name)
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        Ok((f.status.success(), name))
    }

    async fn compile(&self, bp: &Located, env_dir: &Path) -> Result<(), BuildError> {
        let args = vec![
            self.build_dir.clone().into(),
            self.cache_dir.clone().into(),
            env_dir.to_path_buf().into(),
        ];
        let f = self.run(bp, Phase::Compile, args, false).await?;
        if !f.status.success() {
            return Err(BuildError::BuildpackFailed {
                buildpack: bp.name.clone(),
                phase: Phase::Compile,
                status: process::describe(&f.status),
                output: f.tail,
            });
        }
        Ok(())
    }

    /// Classic buildpack API: a buildpack passes environment to the ones after it by writing
    /// `export` (shell) at the root of its directory; it is sourced as the build user and
    /// the resulting environment replaces this runner's, except the variables the pipeline
    /// owns (`HOME`, `STACK`, `SOURCE_VERSION`, `SLIPWAY_PYTHON`, `SLIPWAY_PYTHON_VERSION`).
    async fn apply_export(&mut self, bp: &Located) -> Result<(), BuildError> {
        let export = bp.dir.join("export");
        match std::fs::symlink_metadata(&export) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(BuildError::BuildpackInvalid {
                    buildpack: bp.name.clone(),
                    reason: "its export must be a regular file".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BuildError::io("reading", &export)(e)),
        }
        let f = process::run(
            Run {
                program: Path::new("/bin/bash"),
                args: vec![
                    "-c".into(),
                    r#". "$0" >/dev/null || exit; exec env -0"#.into(),
                    export.clone().into(),
                ],
                env: &self.env,
                cwd: &self.build_dir,
                run_as: self.spec.run_as,
                memory_limit_bytes: self.spec.memory_limit_bytes,
                deadline: self.deadline,
                cancel: self.cancel,
                capture_stdout: Some(MAX_CAPTURE),
                buildpack: &bp.name,
                phase: Phase::Compile,
                max_line: MAX_LINE_BYTES,
                sandbox: self.sandboxed(bp, true),
            },
            self.events,
        )
        .await
        .map_err(|e| self.run_error(bp, Phase::Compile, e))?;
        if f.oom_killed && !f.status.success() {
            return Err(self.out_of_memory(bp, Phase::Compile, f));
        }
        if !f.status.success() {
            return Err(BuildError::BuildpackInvalid {
                buildpack: bp.name.clone(),
                reason: format!(
                    "sourcing its export file failed ({}): {}",
                    process::describe(&f.status),
                    f.tail.join(" / ")
                ),
            });
        }
        self.env = merge_export(&self.env, &f.stdout);
        Ok(())
    }

    /// The `default_process_types` of `bp`'s `bin/release` (none if it has no such script).
    async fn release(&self, bp: &Located) -> Result<BTreeMap<String, String>, BuildError> {
        let script = bp.dir.join("bin/release");
        let runnable = std::fs::metadata(&script)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !runnable {
            return Ok(BTreeMap::new());
        }
        let f = self
            .run(
                bp,
                Phase::Release,
                vec![self.build_dir.clone().into()],
                true,
            )
            .await?;
        if !f.status.success() {
            return Err(BuildError::BuildpackFailed {
                buildpack: bp.name.clone(),
                phase: Phase::Release,
                status: process::describe(&f.status),
                output: f.tail,
            });
        }
        let types = parse_release(&f.stdout).map_err(|reason| BuildError::BadRelease {
            buildpack: bp.name.clone(),
            reason,
        })?;
        let mut valid = BTreeMap::new();
        for (name, command) in types {
            // The same rules as a Procfile line.
            match Procfile::parse(&format!("{name}: {command}")) {
                Ok(p) if p.processes.len() == 1 && !command.contains('\n') => {
                    valid.extend(p.processes);
                }
                _ => {
                    let _ = self
                        .events
                        .send(BuildEvent::warning(format!(
                            "ignoring default process type {name:?} of buildpack {}: not a valid `type: command`",
                            bp.name
                        )))
                        .await;
                }
            }
        }
        Ok(valid)
    }
}

/// Variables an `export` file cannot change (the pipeline's), and those the shell that sourced
/// it adds on its own.
const EXPORT_KEEPS: &[&str] = &[
    "HOME",
    "STACK",
    "SOURCE_VERSION",
    "SLIPWAY_PYTHON",
    "SLIPWAY_PYTHON_VERSION",
];
const SHELL_ADDS: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// The environment after an `export` file: `env -0` output (`NAME=value\0`...) of the shell that
/// sourced it with `before`; variables it unset are gone.
pub(crate) fn merge_export(
    before: &BTreeMap<String, String>,
    env0: &[u8],
) -> BTreeMap<String, String> {
    let mut after = BTreeMap::new();
    for entry in env0.split(|b| *b == 0) {
        let Ok(text) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((name, value)) = text.split_once('=') else {
            continue;
        };
        if name.is_empty() || EXPORT_KEEPS.contains(&name) {
            continue;
        }
        if SHELL_ADDS.contains(&name) && !before.contains_key(name) {
            continue;
        }
        after.insert(name.to_string(), value.to_string());
    }
    for name in EXPORT_KEEPS {
        if let Some(v) = before.get(*name) {
            after.insert((*name).to_string(), v.clone());
        }
    }
    after
}

/// Copies a buildpack's files (`.git` aside) from `from` to `to`: directories, regular files
/// with their modes, symlinks as symlinks.
fn copy_buildpack(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(BuildError::io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(BuildError::io("listing", from))? {
        let entry = entry.map_err(BuildError::io("listing", from))?;
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == ".git" {
            continue;
        }
        let kind = entry.file_type().map_err(BuildError::io("reading", &src))?;
        if kind.is_dir() {
            copy_buildpack(&src, &dest)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(BuildError::io("reading link", &src))?;
            std::os::unix::fs::symlink(&target, &dest)
                .map_err(BuildError::io("creating", &dest))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dest).map_err(BuildError::io("copying", &src))?;
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ReleaseYaml {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, String>>,
}

/// Parses `bin/release` output: YAML with an optional `default_process_types` map.
pub(crate) fn parse_release(stdout: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "its output is not UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let parsed: Option<ReleaseYaml> = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    Ok(parsed
        .and_then(|r| r.default_process_types)
        .unwrap_or_default())
}

/// The Procfile, if the source has one: a regular file (never a symlink, which could point at
/// a file of the server's), at most [`slipway_core::procfile::MAX_PROCFILE_BYTES`].
pub fn read_procfile(build_dir: &Path) -> Result<Option<Procfile>, BuildError> {
    let path = build_dir.join("Procfile");
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BuildError::io("reading", &path)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(BuildError::ProcfileNotAFile("symbolic link"));
    }
    if !meta.is_file() {
        return Err(BuildError::ProcfileNotAFile("directory or special file"));
    }
    if meta.len() > slipway_core::procfile::MAX_PROCFILE_BYTES as u64 {
        return Err(ProcfileError::TooLarge(meta.len() as usize).into());
    }
    let bytes = std::fs::read(&path).map_err(BuildError::io("reading", &path))?;
    Ok(Some(Procfile::parse_bytes(&bytes)?))
}

/// Reads a small text file at the root of the source (`runtime.txt`, `.buildpacks`...): `None`
/// when absent; an error when it is a symlink, not a regular file, larger than `max` bytes or
/// not UTF-8.
pub(crate) fn read_source_file(
    build_dir: &Path,
    name: &'static str,
    max: u64,
) -> Result<Option<String>, BuildError> {
    let path = build_dir.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BuildError::io("reading", &path)(e)),
    };
    let bad = |reason: String| BuildError::BadSourceFile { file: name, reason };
    if !meta.file_type().is_file() {
        return Err(bad(
            "it must be a regular file (not a symbolic link or directory)".into(),
        ));
    }
    if meta.len() > max {
        return Err(bad(format!(
            "it is {} bytes; at most {max} are read",
            meta.len()
        )));
    }
    let bytes = std::fs::read(&path).map_err(BuildError::io("reading", &path))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| bad("it is not UTF-8".into()))
}

/// ENV_DIR: one file per config var, readable only by the build's user.
fn write_env_dir(dir: &Path, env: &BTreeMap<String, String>) -> Result<(), BuildError> {
    std::fs::create_dir(dir).map_err(BuildError::io("creating", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(BuildError::io("setting permissions of", dir))?;
    for (name, value) in env {
        let usable = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.contains('\0');
        if !usable {
            return Err(BuildError::BadConfigVarName(name.clone()));
        }
        let path = dir.join(name);
        // The value is a secret: errors name the var, never the value.
        std::fs::write(&path, value).map_err(BuildError::io("writing config var file", &path))?;
    }
    Ok(())
}

/// The bin directory of an interpreter that lives in a runtimes directory (which must then go on
/// PATH); `None` for one found on PATH already.
fn runtime_bin(exe: &Path, runtimes_dirs: &[PathBuf]) -> Option<PathBuf> {
    runtimes_dirs
        .iter()
        .any(|d| exe.starts_with(d))
        .then(|| exe.parent().map(Path::to_path_buf))
        .flatten()
}

fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a file-tree walk on the blocking pool, so a large tree does not stall the runtime.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce(&Path) -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || work(&dir))
        .await
        .map_err(|e| BuildError::Interrupted(e.to_string()))?
}

/// Whether `path` itself (not following a symlink) belongs to `owner`.
fn owned_by(path: &Path, owner: (u32, u32)) -> Result<bool, BuildError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(BuildError::io("reading", path))?;
    Ok(meta.uid() == owner.0 && meta.gid() == owner.1 && meta.is_dir())
}

/// Gives `dir` and everything under it (symlinks themselves, never their targets) to `owner`.
pub(crate) fn chown_tree(dir: &Path, owner: (u32, u32)) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(dir, Some(owner.0), Some(owner.1))
        .map_err(BuildError::io("changing the owner of", dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(BuildError::io("reading", dir))?;
    if !meta.is_dir() {
        return Ok(());
    }
    // Listed first: a copy below is written in `dir` before it replaces its file.
    let entries = std::fs::read_dir(dir)
        .map_err(BuildError::io("listing", dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::io("listing", dir))?;
    for entry in entries {
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(BuildError::io("reading", &path))?;
        if kind.is_dir() {
            chown_tree(&path, owner)?;
        } else if kind.is_file() && crate::adopt::is_partial_copy(&entry.file_name()) {
            // Half a copy a stopped server was writing (`adopt::unshare`).
            std::fs::remove_file(&path).map_err(BuildError::io("removing", &path))?;
        } else if kind.is_file() && crate::adopt::shared_with_another_owner(&path, owner)? {
            // A file of the cache a release directory took (`adopt.rs`) whose copy a stopped
            // server did not make: the release keeps its inode, the cache gets a copy.
            crate::adopt::copy_over(&path, dir, owner)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(owner.0), Some(owner.1))
                .map_err(BuildError::io("changing the owner of", &path))?;
        }
    }
    Ok(())
}
