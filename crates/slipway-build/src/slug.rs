//! Slugs: deterministic, checksummed, gzipped tarballs of a built app under `app/`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

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
    let gz = GzEncoder::new(hashing, Compression::fast());
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
fn permissions(meta: &std::fs::Metadata) -> u32 {
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

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
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

fn unpack_entries<R: Read>(reader: R, slug_path: &Path, dest: &Path) -> Result<(), BuildError> {
    let mut gz = flate2::read::GzDecoder::new(reader);
    let mut archive = tar::Archive::new(&mut gz);
    archive.set_preserve_permissions(true);
    for entry in archive
        .entries()
        .map_err(BuildError::io("reading slug", slug_path))?
    {
        let mut entry = entry.map_err(BuildError::io("reading slug", slug_path))?;
        let inside = entry
            .unpack_in(dest)
            .map_err(BuildError::io("unpacking slug into", dest))?;
        if !inside {
            return Err(BuildError::UnsafePath(format!("{}", slug_path.display())));
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
