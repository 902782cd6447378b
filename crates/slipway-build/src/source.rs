//! Extracting pushed source (the tar `git archive` writes) with bounds.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::targuard::BoundedHeaders;
use crate::{BuildError, Limits};

/// Extracts a tar stream into `dest`, which must exist. Only regular files, directories and
/// symlinks are written; every entry must stay inside `dest` (no `..`, never through a symlink:
/// `git archive` writes neither, so either one is an attack); sizes, entry counts and the
/// metadata headers the `tar` crate buffers (long names, PAX) are bounded.
///
/// A path that would leave `dest` is [`BuildError::UnsafePath`]; a failure to write (disk full,
/// permissions, a file where a directory should be) is [`BuildError::Io`] naming the path.
pub fn extract_source(reader: impl Read, dest: &Path, limits: &Limits) -> Result<(), BuildError> {
    let mut archive = tar::Archive::new(BoundedHeaders::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let entries = archive
        .entries()
        .map_err(BuildError::io("reading source tarball for", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(BuildError::io("reading source tarball for", dest))?;
        count += 1;
        if count > limits.max_source_entries {
            return Err(BuildError::TooManyEntries {
                limit: limits.max_source_entries,
            });
        }
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Directory | EntryType::Symlink => {}
            // pax headers (git archive writes the commit id in one) and anything exotic.
            _ => continue,
        }
        total = total.saturating_add(entry.size());
        if total > limits.max_source_bytes {
            return Err(BuildError::SourceTooLarge {
                limit: limits.max_source_bytes,
            });
        }
        let path = entry
            .path()
            .map_err(BuildError::io(
                "reading an entry name in the source tarball for",
                dest,
            ))?
            .into_owned();
        let is_dir = entry.header().entry_type() == EntryType::Directory;
        let target = inside(dest, &path, is_dir)?;
        let written = entry
            .unpack_in(dest)
            .map_err(BuildError::io("writing", &target))?;
        if !written {
            return Err(BuildError::UnsafePath(path.display().to_string()));
        }
    }
    Ok(())
}

/// Where `path` (an entry name) lands under `dest`, refusing `..` and any existing symlink on
/// the way (a file written through a symlink could land anywhere; a directory entry over a
/// symlink would change the permissions of its target).
fn inside(dest: &Path, path: &Path, is_dir: bool) -> Result<PathBuf, BuildError> {
    let unsafe_path = || BuildError::UnsafePath(path.display().to_string());
    let parts: Vec<&std::ffi::OsStr> = path
        .components()
        .map(|c| match c {
            Component::Normal(p) => Ok(Some(p)),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => Ok(None),
            Component::ParentDir => Err(unsafe_path()),
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut target = dest.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        target.push(part);
        let last = i + 1 == parts.len();
        if !last || is_dir {
            if let Ok(meta) = std::fs::symlink_metadata(&target) {
                if meta.file_type().is_symlink() {
                    return Err(unsafe_path());
                }
            }
        }
    }
    Ok(target)
}
