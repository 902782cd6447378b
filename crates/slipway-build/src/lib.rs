//! From pushed source to slug.
//!
//! The pipeline is `extract_source` (a tar of the pushed commit, bounded, never writing outside
//! its directory) -> [`pipeline::compile`] (the classic Heroku buildpack API: detect, compile,
//! release, with built-in buildpacks for Python, Node.js, Go, Rust and static sites; see
//! `buildpacks/` in this crate) -> `create_slug` / [`pipeline::pack_slug`] (a gzipped tar with
//! deterministic headers, so the same tree always has the same `SHA256:` checksum) ->
//! `unpack_slug` into each dyno's own directory.

mod adopt;
mod buildpack;
mod event;
mod pargz;
pub mod pipeline;
mod process;
mod reap;
pub mod runtime;
mod sandbox;
mod slug;
mod slugignore;
mod source;
mod targuard;

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_core::ProcfileError;

pub use adopt::{prepare_adoption, unshare, Adopting, SharedFile};
pub use buildpack::{install_builtin, resolve_buildpacks, BuildpackRef, Builtin, BUILTINS};
pub use event::{BuildEvent, Phase};
pub use pipeline::{compile as run_buildpacks, pack_slug, purge_cache, CompileSpec, Compiled};
pub use reap::kill_user_processes;
pub use sandbox::{BuildSandbox, SandboxCommand, SandboxError, SandboxMount, SandboxRun};
pub use slug::{copy_as_slug, create_slug, read_slug_file, unpack_slug, SlugInfo};
pub use source::extract_source;
pub use targuard::MAX_METADATA_ENTRY;

/// Size bounds for untrusted input. Defaults follow Heroku where it has a number.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of extracted source (the sum of file sizes).
    pub max_source_bytes: u64,
    /// Entries in the source tarball.
    pub max_source_entries: u64,
    /// Compressed slug size (Heroku: 500 MB).
    pub max_slug_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_bytes: 1024 * 1024 * 1024,
            max_source_entries: 200_000,
            max_slug_bytes: 500 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the pushed source is larger than {limit} bytes; remove large files from the repository or raise the limit")]
    SourceTooLarge { limit: u64 },
    #[error("the pushed source has more than {limit} files")]
    TooManyEntries { limit: u64 },
    #[error(
        "the pushed source has an entry that would be written outside the build directory: {0}"
    )]
    UnsafePath(String),
    #[error(
        "the Procfile must be a regular file, but the pushed one is a {0}; commit the file itself"
    )]
    ProcfileNotAFile(&'static str),
    #[error("{0}")]
    Procfile(#[from] ProcfileError),
    #[error("the slug is {size} bytes, larger than the {limit}-byte limit; remove files the app does not need at run time (list them in .slugignore) or ask for a larger --max-slug-size")]
    SlugTooLarge { size: u64, limit: u64 },
    #[error("slug {path} does not match its checksum: expected {expected}, found {found}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("no buildpack recognised this app and it has no Procfile. The built-in buildpacks look for: {}. Add one of these files or a Procfile (`web: <command>`), or choose a buildpack (BUILDPACK_URL or .buildpacks)", describe_looked_for(.looked_for))]
    NotDetected {
        /// (built-in name, the files it looks for)
        looked_for: Vec<(String, String)>,
    },
    #[error("the app is not compatible with buildpack {buildpack}: its bin/detect refused it")]
    NotCompatible { buildpack: String },
    #[error("buildpack {buildpack}: {} failed ({status}); its output is above", .phase.script())]
    BuildpackFailed {
        buildpack: String,
        phase: Phase,
        /// `exit status 1`, `killed by SIGKILL`...
        status: String,
        /// The last lines it printed.
        output: Vec<String>,
    },
    #[error("buildpack {buildpack}: {} did not finish within the build time limit of {}s", .phase.script(), .limit.as_secs())]
    Timeout {
        buildpack: String,
        phase: Phase,
        limit: Duration,
    },
    #[error("buildpack {buildpack}: {} ran out of memory: the build's limit is {} MiB and the kernel ended a process at it (its output is above). Make the build use less memory, or ask the operator for a larger --build-memory-limit", .phase.script(), .limit_bytes / (1024 * 1024))]
    OutOfMemory {
        buildpack: String,
        phase: Phase,
        limit_bytes: u64,
        /// The last lines it printed.
        output: Vec<String>,
    },
    #[error("buildpack {buildpack}: {source}")]
    Sandbox {
        buildpack: String,
        #[source]
        source: SandboxError,
    },
    #[error("the build was cancelled")]
    Cancelled,
    #[error("the build was interrupted: {0}")]
    Interrupted(String),
    #[error("buildpack {buildpack}: could not run {}: {source}", .phase.script())]
    Spawn {
        buildpack: String,
        phase: Phase,
        #[source]
        source: std::io::Error,
    },
    #[error("buildpack {buildpack} is not usable: {reason}")]
    BuildpackInvalid { buildpack: String, reason: String },
    #[error("could not fetch buildpack {buildpack}: {reason}")]
    FetchFailed { buildpack: String, reason: String },
    #[error("unknown buildpack {0:?}: use a built-in name (nodejs, python, go, rust, static), an absolute directory, or a git URL such as https://host/repo.git#v1")]
    UnknownBuildpack(String),
    #[error("buildpack {buildpack}: bin/release printed YAML slipway cannot read ({reason}); it must be a map with an optional `default_process_types` map")]
    BadRelease { buildpack: String, reason: String },
    #[error("{file} asks for {runtime} {requested:?}, which is not installed on this server. Installed: {}. Ask for one of these in {file}, or have the operator install it in a runtimes directory", if .available.is_empty() { "none".to_string() } else { .available.join(", ") })]
    RuntimeNotInstalled {
        runtime: &'static str,
        requested: String,
        file: &'static str,
        available: Vec<String>,
    },
    #[error("{file} says {found:?}; expected a version such as {expected}")]
    BadRuntimeFile {
        file: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("package.json is not valid JSON: {0}")]
    BadPackageJson(String),
    #[error("{file} in the pushed source cannot be used: {reason}")]
    BadSourceFile { file: &'static str, reason: String },
    #[error("config var name {0:?} cannot be given to buildpacks (it must not be empty, `.`, `..` or contain `/`)")]
    BadConfigVarName(String),
    #[error("no process types: buildpack(s) {} declared no default process types and the app has no Procfile; add a Procfile with a line such as `web: <command>`", if .buildpacks.is_empty() { "(none)".to_string() } else { .buildpacks.join(", ") })]
    NoProcessTypes { buildpacks: Vec<String> },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn describe_looked_for(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(name, files)| format!("{name}: {files}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl BuildError {
    pub fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| BuildError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
