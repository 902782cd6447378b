//! Extracting pushed source (the tar `git archive` writes) with bounds.

use std::io::Read;
use std::path::Path;

use tar::EntryType;

use crate::{BuildError, Limits};

/// Extracts a tar stream into `dest`, which must exist. Only regular files, directories and
/// symlinks are written; every entry must stay inside `dest` (`tar`'s `unpack_in` refuses `..`
/// and paths through symlinks that leave it); sizes and entry counts are bounded by `limits`.
pub fn extract_source(reader: impl Read, dest: &Path, limits: &Limits) -> Result<(), BuildError> {
    let mut archive = tar::Archive::new(reader);
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
        let shown = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<unreadable path>".into());
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| BuildError::UnsafePath(format!("{shown} ({e})")))?;
        if !inside {
            return Err(BuildError::UnsafePath(shown));
        }
    }
    Ok(())
}
