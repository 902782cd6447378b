//! Which buildpacks a build runs and where their files are: the built-in ones (shipped in this
//! crate's `buildpacks/` directory and installed as ordinary files by [`install_builtin`]),
//! local directories, and git URLs pinned by ref (`url#ref`), fetched once into a cache.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{BuildEvent, Phase};
use crate::process::{self, Run, RunError};
use crate::BuildError;

/// A built-in buildpack: its name (what `buildpacks:set` accepts), the name its detect prints,
/// the files its `bin/detect` looks for (said when nothing is detected) and its scripts.
pub struct Builtin {
    pub name: &'static str,
    pub looks_for: &'static str,
    files: &'static [(&'static str, &'static str)],
}

macro_rules! builtin {
    ($name:literal, $looks_for:literal, [$($file:literal),*]) => {
        Builtin {
            name: $name,
            looks_for: $looks_for,
            files: &[$(($file, include_str!(concat!("../buildpacks/", $name, "/", $file)))),*],
        }
    };
}

/// The built-in buildpacks in detection order (Heroku's order: Node.js before Python; static
/// last, so it only wins when nothing else does).
pub static BUILTINS: &[Builtin] = &[
    builtin!(
        "nodejs",
        "package.json",
        ["bin/detect", "bin/compile", "bin/release"]
    ),
    builtin!(
        "python",
        "requirements.txt, pyproject.toml (with uv.lock or poetry.lock), setup.py",
        [
            "bin/detect",
            "bin/compile",
            "bin/release",
            "lib/relocate.sh"
        ]
    ),
    builtin!("go", "go.mod", ["bin/detect", "bin/compile", "bin/release"]),
    builtin!(
        "rust",
        "Cargo.toml",
        ["bin/detect", "bin/compile", "bin/release"]
    ),
    builtin!(
        "static",
        "index.html",
        ["bin/detect", "bin/compile", "bin/release", "lib/server.py"]
    ),
];

/// Writes the built-in buildpacks under `dir` (`dir/<name>/bin/detect` ...), replacing files
/// whose content differs. Each file is written to a temporary name and renamed, so a build
/// running meanwhile sees the old or the new file, never half of one.
pub fn install_builtin(dir: &Path) -> Result<(), BuildError> {
    for bp in BUILTINS {
        for (rel, content) in bp.files {
            let path = dir.join(bp.name).join(rel);
            let current = std::fs::metadata(&path)
                .is_ok_and(|m| m.permissions().mode() & 0o777 == 0o755)
                && std::fs::read(&path).is_ok_and(|old| old == content.as_bytes());
            if current {
                continue;
            }
            let parent = path.parent().unwrap_or(dir);
            std::fs::create_dir_all(parent).map_err(BuildError::io("creating", parent))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(BuildError::io("setting permissions of", parent))?;
            // A name of its own: two builds may install at the same time.
            let mut tmp = tempfile::NamedTempFile::new_in(parent)
                .map_err(BuildError::io("creating a file in", parent))?;
            std::io::Write::write_all(&mut tmp, content.as_bytes())
                .map_err(BuildError::io("writing", tmp.path()))?;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(BuildError::io("setting permissions of", tmp.path()))?;
            tmp.persist(&path)
                .map_err(|e| BuildError::io("installing", &path)(e.error))?;
        }
    }
    Ok(())
}

/// The buildpacks an app asked for, by precedence: the app's setting (`buildpacks:set`), then
/// the `BUILDPACK_URL` config var, then a `.buildpacks` file at the root of the source (one
/// entry per line, `#` comments). Empty: detect among the built-ins.
pub fn resolve_buildpacks(
    app_setting: &[String],
    env: &BTreeMap<String, String>,
    build_dir: &Path,
) -> Result<Vec<String>, BuildError> {
    if !app_setting.is_empty() {
        return Ok(app_setting.to_vec());
    }
    if let Some(url) = env.get("BUILDPACK_URL").map(|s| s.trim()) {
        if !url.is_empty() {
            return Ok(vec![url.to_string()]);
        }
    }
    let Some(text) = crate::pipeline::read_source_file(build_dir, ".buildpacks", 64 * 1024)? else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// What a buildpack entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildpackRef {
    /// A built-in, by name (`python`, or Heroku's `heroku/python`).
    Builtin(&'static str),
    /// A directory on the server holding `bin/detect`, `bin/compile`, `bin/release`.
    Local(PathBuf),
    /// A git repository, at `reference` (branch, tag or commit) when given.
    Git {
        url: String,
        reference: Option<String>,
    },
}

impl BuildpackRef {
    pub fn parse(entry: &str) -> Result<Self, BuildError> {
        let entry = entry.trim();
        let bare = entry.strip_prefix("heroku/").unwrap_or(entry);
        let bare = if bare == "node" { "nodejs" } else { bare };
        if let Some(b) = BUILTINS.iter().find(|b| b.name == bare) {
            return Ok(BuildpackRef::Builtin(b.name));
        }
        if entry.starts_with('/') {
            return Ok(BuildpackRef::Local(PathBuf::from(entry)));
        }
        let is_url = ["https://", "http://", "git://", "ssh://", "file://"]
            .iter()
            .any(|p| entry.starts_with(p));
        if is_url && !entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let (url, reference) = match entry.rsplit_once('#') {
                Some((url, r)) if !r.is_empty() => (url, Some(r.to_string())),
                Some((url, _)) => (url, None),
                None => (entry, None),
            };
            if reference.as_deref().is_some_and(|r| r.starts_with('-')) {
                return Err(BuildError::UnknownBuildpack(entry.to_string()));
            }
            return Ok(BuildpackRef::Git {
                url: url.to_string(),
                reference,
            });
        }
        Err(BuildError::UnknownBuildpack(entry.to_string()))
    }
}

/// A buildpack ready to run: a directory with `bin/`.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// How it is named in output and errors: the built-in's name or the entry as given.
    pub name: String,
    pub dir: PathBuf,
}

pub(crate) struct FetchContext<'a> {
    pub builtin_dir: &'a Path,
    pub fetch_dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub deadline: Instant,
    /// The build's time limit, for the error message.
    pub timeout: std::time::Duration,
    pub cancel: &'a CancellationToken,
    pub events: &'a mpsc::Sender<BuildEvent>,
    /// The build's user: a git buildpack is fetched as it, so a `file://` URL reads only what
    /// that user may read (never another app's repository in the data directory).
    pub run_as: Option<(u32, u32)>,
}

/// Finds (fetching when needed) the directory of the buildpack `entry` names.
pub(crate) async fn locate(entry: &str, cx: &FetchContext<'_>) -> Result<Located, BuildError> {
    let located = match BuildpackRef::parse(entry)? {
        BuildpackRef::Builtin(name) => Located {
            name: name.to_string(),
            dir: cx.builtin_dir.join(name),
        },
        BuildpackRef::Local(dir) => Located {
            name: entry.to_string(),
            dir,
        },
        BuildpackRef::Git { url, reference } => Located {
            name: entry.to_string(),
            dir: fetch(entry, &url, reference.as_deref(), cx).await?,
        },
    };
    for script in ["bin/detect", "bin/compile"] {
        let path = located.dir.join(script);
        let executable = std::fs::metadata(&path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(BuildError::BuildpackInvalid {
                buildpack: located.name,
                reason: format!("{script} is missing or not an executable file"),
            });
        }
    }
    Ok(located)
}

/// Clones `url` at `reference` into the fetch cache, once: later builds reuse the directory.
async fn fetch(
    entry: &str,
    url: &str,
    reference: Option<&str>,
    cx: &FetchContext<'_>,
) -> Result<PathBuf, BuildError> {
    let key = hex::encode(&Sha256::digest(entry.as_bytes())[..12]);
    let dir = cx.fetch_dir.join(&key);
    if dir.join(".slipway-fetched").is_file() {
        let _ = cx
            .events
            .send(BuildEvent::title(format!(
                "Using buildpack {entry} (fetched before)"
            )))
            .await;
        return Ok(dir);
    }
    std::fs::create_dir_all(cx.fetch_dir).map_err(BuildError::io("creating", cx.fetch_dir))?;
    let _ = cx
        .events
        .send(BuildEvent::title(format!("Fetching buildpack {entry}")))
        .await;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cx.fetch_dir)
        .map_err(BuildError::io("creating a directory in", cx.fetch_dir))?;
    // The build user fetches from repositories others own (a local `file://` one): git must not
    // refuse them as "dubious ownership" (what the user may read is what it may fetch). Only a
    // global config reaches the `git upload-pack` of a local fetch, and HOME is this directory.
    let gitconfig = tmp.path().join(".gitconfig");
    std::fs::write(&gitconfig, "[safe]\n\tdirectory = *\n")
        .map_err(BuildError::io("writing", &gitconfig))?;
    if let Some(owner) = cx.run_as {
        // Fresh, root-owned and 0700 until now: nothing else can have linked into it.
        crate::pipeline::chown_tree(tmp.path(), owner)?;
    }
    let failed = |reason: String| BuildError::FetchFailed {
        buildpack: entry.to_string(),
        reason,
    };
    let mut env: BTreeMap<String, String> = cx
        .env
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "PATH" | "LANG"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The fetch's own directory: it belongs to the user git runs as.
    env.insert("HOME".into(), tmp.path().display().to_string());
    env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());

    env.insert("GIT_CONFIG_NOSYSTEM".into(), "1".into());
    // Never `ext::` (runs commands) or other exotic transports.
    env.insert(
        "GIT_ALLOW_PROTOCOL".into(),
        "https:http:git:ssh:file".into(),
    );
    let work = tmp.path().join("bp");
    let steps: Vec<Vec<OsString>> = vec![
        vec!["init".into(), "--quiet".into(), work.clone().into()],
        vec![
            "-C".into(),
            work.clone().into(),
            "fetch".into(),
            "--quiet".into(),
            "--depth=1".into(),
            "--".into(),
            url.into(),
            reference.unwrap_or("HEAD").into(),
        ],
        vec![
            "-C".into(),
            work.clone().into(),
            "-c".into(),
            "advice.detachedHead=false".into(),
            "checkout".into(),
            "--quiet".into(),
            "--detach".into(),
            "FETCH_HEAD".into(),
        ],
    ];
    for args in steps {
        let finished = process::run(
            Run {
                program: Path::new("git"),
                args,
                env: &env,
                cwd: tmp.path(),
                run_as: cx.run_as,
                memory_limit_bytes: None,
                deadline: cx.deadline,
                cancel: cx.cancel,
                capture_stdout: Some(64 * 1024),
                buildpack: entry,
                phase: Phase::Fetch,
                max_line: crate::pipeline::MAX_LINE_BYTES,
                // git as the build user on the host (not a buildpack's code).
                sandbox: None,
            },
            cx.events,
        )
        .await
        .map_err(|e| match e {
            RunError::Timeout => BuildError::Timeout {
                buildpack: entry.to_string(),
                phase: Phase::Fetch,
                limit: cx.timeout,
            },
            RunError::Cancelled => BuildError::Cancelled,
            RunError::Spawn(e) | RunError::Wait(e) => failed(format!("could not run git: {e}")),
            RunError::Sandbox(e) => failed(e.to_string()),
        })?;
        if !finished.status.success() {
            return Err(failed(format!(
                "git {} ({}): {}",
                process::describe(&finished.status),
                reference.map_or("the default branch".to_string(), |r| format!("ref {r}")),
                finished.tail.join(" / ")
            )));
        }
    }
    std::fs::write(work.join(".slipway-fetched"), entry)
        .map_err(BuildError::io("writing", &work))?;
    match std::fs::rename(&work, &dir) {
        Ok(()) => {}
        // Another build fetched the same entry meanwhile: use theirs.
        Err(_) if dir.join(".slipway-fetched").is_file() => {}
        Err(e) => return Err(BuildError::io("saving fetched buildpack in", &dir)(e)),
    }
    Ok(dir)
}
