//! Slugs: deterministic, checksummed, gzipped tarballs of a built app under `app/` (gzip in
//! members compressed on several cores, see `pargz.rs`).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::pargz::ParallelGz;
use crate::{BuildError, Limits};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlugInfo {
    /// `SHA256:<hex>` of the compressed file.
    pub checksum: String,
    pub size: u64,
}

/// Writes `build_dir` as a slug at `slug_path` (via a temporary file, renamed into place, so a
/// slug is either complete or absent). Entries are sorted and their headers carry no time,
/// owner or umask, so the same tree gives the same checksum.
pub fn create_slug(
    build_dir: &Path,
    slug_path: &Path,
    limits: &Limits,
) -> Result<SlugInfo, BuildError> {
    let tmp = slug_path.with_extension("partial");
    let info = match write_slug(build_dir, &tmp, limits.max_slug_bytes) {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, slug_path).map_err(BuildError::io("saving slug", slug_path))?;
    Ok(info)
}

/// Passes the compressed bytes to the file and the checksum at once (one pass over the slug).
/// Past `limit` bytes it only counts (the disk is not filled by a slug that will be refused,
/// and the error can say its size).
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = if self.size + buf.len() as u64 > self.limit {
            buf.len()
        } else {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            n
        };
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_slug(build_dir: &Path, out: &Path, limit: u64) -> Result<SlugInfo, BuildError> {
    let file = File::create(out).map_err(BuildError::io("creating slug", out))?;
    let hashing = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        size: 0,
        limit,
    };
    // On every core but one's worth of threads (the tar stream is made on this one), at most 4.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let gz = ParallelGz::new(hashing, Compression::fast(), threads)
        .map_err(BuildError::io("starting to compress slug", out))?;
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut paths = Vec::new();
    collect(build_dir, build_dir, &mut paths)?;
    paths.sort();
    append_dir(&mut tar, Path::new("app"), 0o755)
        .map_err(BuildError::io("writing slug entry", out))?;
    for rel in paths {
        let full = build_dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(BuildError::io("reading", &full))?;
        let name = Path::new("app").join(&rel);
        let mode = permissions(&meta);
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(BuildError::io("reading link", &full))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &name, &target)
                .map_err(BuildError::io("writing slug entry", &full))?;
        } else if meta.is_dir() {
            append_dir(&mut tar, &name, mode)
                .map_err(BuildError::io("writing slug entry", &full))?;
        } else if meta.is_file() {
            let mut h = header(tar::EntryType::Regular, mode, meta.len());
            let f = File::open(&full).map_err(BuildError::io("reading", &full))?;
            tar.append_data(&mut h, &name, f)
                .map_err(BuildError::io("writing slug entry", &full))?;
        }
    }
    let gz = tar
        .into_inner()
        .map_err(BuildError::io("finishing slug", out))?;
    let mut hashing = gz
        .finish()
        .map_err(BuildError::io("compressing slug", out))?;
    hashing
        .flush()
        .map_err(BuildError::io("writing slug", out))?;
    if hashing.size > limit {
        return Err(BuildError::SlugTooLarge {
            size: hashing.size,
            limit,
        });
    }
    Ok(SlugInfo {
        checksum: format!("SHA256:{}", hex::encode(hashing.hasher.finalize())),
        size: hashing.size,
    })
}

#[cfg(unix)]
pub(crate) fn permissions(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    // Keep only whether a file is executable: umask and owner bits must not change the checksum.
    if meta.permissions().mode() & 0o111 != 0 || meta.is_dir() {
        0o755
    } else {
        0o644
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &Path, mode: u32) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    tar.append_data(&mut h, name, std::io::empty())
}

pub(crate) fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(dir).map_err(BuildError::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(BuildError::io("listing", dir))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(BuildError::io("reading", &path))?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if rel == Path::new(".git") {
            continue;
        }
        out.push(rel);
        if file_type.is_dir() {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

/// Copies `build_dir` to `dest` (which must not exist) as [`unpack_slug`] would unpack the slug
/// [`create_slug`] makes of it: the same entries (no `.git` at the top; directories, regular
/// files, symlinks), each directory and file with the slug's mode (0755 or 0644), no times.
/// Lets the runtime prepare a release directory from the build while the slug is compressed,
/// instead of unpacking the slug afterwards. Files are opened without following symlinks.
pub fn copy_as_slug(build_dir: &Path, dest: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let mut paths = Vec::new();
    collect(build_dir, build_dir, &mut paths)?;
    paths.sort();
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(BuildError::io("creating", dest))?;
    for rel in paths {
        let from = build_dir.join(&rel);
        let to = dest.join(&rel);
        let meta = std::fs::symlink_metadata(&from).map_err(BuildError::io("reading", &from))?;
        let mode = permissions(&meta);
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&from).map_err(BuildError::io("reading link", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(BuildError::io("copying to", &to))?;
        } else if meta.is_dir() {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&to)
                .map_err(BuildError::io("copying to", &to))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(BuildError::io("copying to", &to))?;
        } else if meta.is_file() {
            let mut src = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&from)
                .map_err(BuildError::io("reading", &from))?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&to)
                .map_err(BuildError::io("copying to", &to))?;
            std::io::copy(&mut src, &mut out).map_err(BuildError::io("copying to", &to))?;
            out.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(BuildError::io("copying to", &to))?;
        }
    }
    Ok(())
}

/// One file of a slug, `app/<name>` (e.g. `app.json`), read whole when it is a regular file of
/// at most `max` bytes: `Ok(None)` when the slug has no such file; a larger one is an error.
/// Streams the archive (nothing is unpacked to disk).
pub fn read_slug_file(
    slug_path: &Path,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, BuildError> {
    let file = File::open(slug_path).map_err(BuildError::io("reading slug", slug_path))?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let wanted = Path::new("app").join(name);
    for entry in archive
        .entries()
        .map_err(BuildError::io("reading slug", slug_path))?
    {
        let entry = entry.map_err(BuildError::io("reading slug", slug_path))?;
        let path = entry
            .path()
            .map_err(BuildError::io("reading slug", slug_path))?
            .into_owned();
        let path = path.strip_prefix(".").unwrap_or(&path);
        if path != wanted || !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > max {
            return Err(BuildError::io("reading slug", slug_path)(
                std::io::Error::other(format!("app/{name} is {size} bytes; the limit is {max}")),
            ));
        }
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .take(max)
            .read_to_end(&mut out)
            .map_err(BuildError::io("reading slug", slug_path))?;
        return Ok(Some(out));
    }
    Ok(None)
}

/// Unpacks a slug into `dest` (the app lands in `dest/app`), checking its checksum in the same
/// pass (one read of the file): on a mismatch what was unpacked (`dest/app`) is removed and the
/// error returned, so a dyno never runs a slug that changed on disk. Entries cannot land outside
/// `dest` whatever the slug holds.
pub fn unpack_slug(
    slug_path: &Path,
    expected_checksum: &str,
    dest: &Path,
) -> Result<(), BuildError> {
    std::fs::create_dir_all(dest).map_err(BuildError::io("creating", dest))?;
    let result = unpack_checked(slug_path, expected_checksum, dest);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest.join("app"));
    }
    result
}

fn unpack_checked(
    slug_path: &Path,
    expected_checksum: &str,
    dest: &Path,
) -> Result<(), BuildError> {
    let file = File::open(slug_path).map_err(BuildError::io("reading slug", slug_path))?;
    let mut hashing = HashingReader {
        inner: std::io::BufReader::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
    };
    let unpacked = unpack_entries(&mut hashing, slug_path, dest);
    // The rest of the file (the gzip trailer, padding) counts too, even when unpacking failed:
    // a corrupt slug is reported as a checksum mismatch, the more useful error.
    std::io::copy(&mut hashing, &mut std::io::sink())
        .map_err(BuildError::io("reading slug", slug_path))?;
    let found = format!("SHA256:{}", hex::encode(hashing.hasher.finalize()));
    if found != expected_checksum {
        return Err(BuildError::ChecksumMismatch {
            path: slug_path.to_path_buf(),
            expected: expected_checksum.to_string(),
            found,
        });
    }
    unpacked
}

/// Writes the slug's entries under `dest` (which holds nothing of the slug yet): directories,
/// regular files with their mode, symlinks as they are. Cheaper than `tar::Entry::unpack_in`
/// (which resolves every parent of every entry with `canonicalize` and sets each time, a few
/// hundred thousand system calls for a Django virtualenv), with the same guarantees: names are
/// relative without `..`, nothing is written through a symlink (only the slug can have made one
/// here: those it made are remembered), and an existing file is never overwritten. Times are not
/// set (the slug's are all zero; hash-based `.pyc` files do not need them).
fn unpack_entries<R: Read>(reader: R, slug_path: &Path, dest: &Path) -> Result<(), BuildError> {
    use std::collections::HashSet;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let mut gz = flate2::read::MultiGzDecoder::new(reader);
    let mut archive = tar::Archive::new(&mut gz);
    // Relative paths of the directories known to exist, and of the symlinks made.
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut links: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(BuildError::io("reading slug", slug_path))?;
    for entry in entries {
        let mut entry = entry.map_err(BuildError::io("reading slug", slug_path))?;
        let name = entry
            .path()
            .map_err(BuildError::io("reading slug", slug_path))?
            .into_owned();
        let unsafe_path =
            || BuildError::UnsafePath(format!("{} in {}", name.display(), slug_path.display()));
        let mut rel = PathBuf::new();
        for part in name.components() {
            match part {
                std::path::Component::Normal(p) => rel.push(p),
                std::path::Component::CurDir => {}
                _ => return Err(unsafe_path()),
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel.ancestors().skip(1).any(|a| links.contains(a)) || links.contains(&rel) {
            return Err(unsafe_path());
        }
        let full = dest.join(&rel);
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() && !dirs.contains(parent) {
            let at = dest.join(parent);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&at)
                .map_err(BuildError::io("unpacking slug into", &at))?;
            for a in parent.ancestors() {
                if a.as_os_str().is_empty() {
                    break;
                }
                dirs.insert(a.to_path_buf());
            }
        }
        let mode = entry
            .header()
            .mode()
            .map_err(BuildError::io("reading slug", slug_path))?
            & 0o777;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            match std::fs::DirBuilder::new().mode(mode).create(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dirs.contains(&rel) => {}
                Err(e) => return Err(BuildError::io("unpacking slug into", &full)(e)),
            }
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
                .map_err(BuildError::io("unpacking slug into", &full))?;
            dirs.insert(rel);
        } else if kind.is_file() {
            // create_new: never through an existing name (a symlink included).
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&full)
                .map_err(BuildError::io("unpacking slug into", &full))?;
            std::io::copy(&mut entry, &mut file)
                .map_err(BuildError::io("unpacking slug into", &full))?;
            // The mode exactly, whatever the server's umask.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(BuildError::io("unpacking slug into", &full))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(BuildError::io("reading slug", slug_path))?
                .ok_or_else(unsafe_path)?;
            std::os::unix::fs::symlink(&target, &full)
                .map_err(BuildError::io("unpacking slug into", &full))?;
            links.insert(rel);
        } else {
            // Slugs hold only directories, files and symlinks.
            return Err(unsafe_path());
        }
    }
    // The end of the gzip stream (its trailer is checked by the decoder).
    std::io::copy(&mut gz, &mut std::io::sink())
        .map_err(BuildError::io("reading slug", slug_path))?;
    Ok(())
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
