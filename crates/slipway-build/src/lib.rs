//! From pushed source to slug.
//!
//! The pipeline is `extract_source` (a tar of the pushed commit, bounded, never writing outside
//! its directory) -> `compile` (today: read and check the Procfile; buildpacks plug in here)
//! -> `create_slug` (a gzipped tar with deterministic headers, so the same tree always has the
//! same `SHA256:` checksum) -> `unpack_slug` into each dyno's own directory.

mod slug;
mod source;

use std::path::{Path, PathBuf};

use slipway_core::{Procfile, ProcfileError};

pub use slug::{create_slug, unpack_slug, SlugInfo};
pub use source::extract_source;

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
    #[error("no Procfile found at the root of the pushed source; add one with a line such as `web: ./server --port $PORT`")]
    NoProcfile,
    #[error(
        "the Procfile must be a regular file, but the pushed one is a {0}; commit the file itself"
    )]
    ProcfileNotAFile(&'static str),
    #[error("{0}")]
    Procfile(#[from] ProcfileError),
    #[error("the slug is {size} bytes, larger than the {limit}-byte limit; remove files the app does not need at run time")]
    SlugTooLarge { size: u64, limit: u64 },
    #[error("slug {path} does not match its checksum: expected {expected}, found {found}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// Compiles the extracted source in `build_dir` in place, reporting progress through `say`.
/// Today this checks the Procfile and returns it; buildpacks will run here.
pub fn compile(build_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<Procfile, BuildError> {
    let path = build_dir.join("Procfile");
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BuildError::NoProcfile),
        Err(e) => return Err(BuildError::io("reading", &path)(e)),
    };
    if meta.file_type().is_symlink() {
        // Never follow it: it could point at a file of the server's.
        return Err(BuildError::ProcfileNotAFile("symbolic link"));
    }
    if !meta.is_file() {
        return Err(BuildError::ProcfileNotAFile("directory or special file"));
    }
    if meta.len() > slipway_core::procfile::MAX_PROCFILE_BYTES as u64 {
        return Err(ProcfileError::TooLarge(meta.len() as usize).into());
    }
    let bytes = std::fs::read(&path).map_err(BuildError::io("reading", &path))?;
    let procfile = Procfile::parse_bytes(&bytes)?;
    let types: Vec<&str> = procfile.processes.keys().map(String::as_str).collect();
    say(&format!("Procfile declares types -> {}", types.join(", ")));
    Ok(procfile)
}

#[cfg(test)]
mod tests;
