//! A build directory made, in place, into what unpacking its slug gives: no file data copied.
//!
//! Once the buildpacks are done (`.slugignore` already applied), the runtime moves the build
//! directory where its release directory will be (a `rename`, same filesystem) and adopts it:
//! [`prepare_adoption`] removes what a slug does not hold (`.git` at the top; fifos, sockets,
//! devices) and gives a file its own copy when it is a hard link to something outside the tree
//! that cannot be taken (see below); [`Adopting::complete`] then gives every entry the slug's
//! mode (0755 or 0644), no extended attributes (ACLs) and the app user as owner. The first step
//! changes names, so it runs before the slug is packed from the moved tree; the second changes
//! only owners, modes and attributes, none of which the slug records beyond the executable bit
//! (kept), so it runs while the slug is compressed.
//!
//! Hard links: a cached redeploy's virtualenv is hard-linked from the build cache (`cp -al`),
//! so most of its files share their inode with the cache. A file cannot have two owners, and
//! the release's files must not stay writable by the build user. Inodes whose every other link
//! is in `others` (the app's build cache) are *taken*: the release keeps them (given to the app
//! user) and the links in the cache are listed ([`SharedFile`]) so that they can be given
//! copies of their own later, off the push's path ([`unshare`]), before the next build uses
//! the cache. Any other inode shared with the outside gets a copy in the tree at once.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::slug::{collect, permissions};
use crate::BuildError;

/// A file outside the adopted tree that shares its inode with a file in the tree, and what it
/// was (owner, mode) before the tree took the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// A tree whose names are final (see [`prepare_adoption`]); [`Adopting::complete`] finishes it.
#[derive(Debug)]
pub struct Adopting {
    root: PathBuf,
    /// Relative path, kind, the slug's mode.
    entries: Vec<(PathBuf, Kind, u32)>,
    shared: Vec<SharedFile>,
}

type InodeKey = (u64, u64);

/// Makes the names under `dir` those of its slug: removes `.git` at the top and entries a slug
/// cannot hold, and gives each file that is a hard link to something outside `dir` and outside
/// `others` a copy of its own (`scratch`: a directory on the same filesystem, outside `dir`,
/// for the copies while they are written). Blocking.
pub fn prepare_adoption(
    dir: &Path,
    others: Option<&Path>,
    scratch: &Path,
) -> Result<Adopting, BuildError> {
    let git = dir.join(".git");
    match std::fs::symlink_metadata(&git) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(&git).map_err(BuildError::io("removing", &git))?
        }
        Ok(_) => std::fs::remove_file(&git).map_err(BuildError::io("removing", &git))?,
        Err(_) => {}
    }
    // The other side's hard links are listed on a thread of their own, beside this walk.
    let others_walk = others.map(|o| {
        let o = o.to_path_buf();
        std::thread::Builder::new()
            .name("adopt-links".into())
            .spawn(move || {
                let mut found = Vec::new();
                find_links(&o, None, &mut found).map(|()| found)
            })
    });
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths)?;
    // Per inode with several links: (links, links in the tree).
    let mut links: HashMap<InodeKey, (u64, u64)> = HashMap::new();
    let mut listed = Vec::with_capacity(paths.len());
    for rel in paths {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(BuildError::io("reading", &full))?;
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            // A fifo, socket or device: the slug leaves it out.
            std::fs::remove_file(&full).map_err(BuildError::io("removing", &full))?;
            continue;
        };
        if kind == Kind::Symlink && meta.nlink() > 1 {
            // A symlink hard-linked from elsewhere (`cp -al` links a virtualenv's
            // `bin/python` too) gets its own inode at once: giving the release's to the app's
            // user would give the cache's away as well, and the kernel
            // (`fs.protected_hardlinks`) then refuses the build user's next `cp -al` of it.
            relink(&full)?;
        }
        let key = (meta.dev(), meta.ino());
        if kind == Kind::File && meta.nlink() > 1 {
            links.entry(key).or_insert((meta.nlink(), 0)).1 += 1;
        }
        listed.push((rel, kind, permissions(&meta), key));
    }
    let outside: HashSet<InodeKey> = links
        .iter()
        .filter(|(_, (n, in_tree))| n > in_tree)
        .map(|(k, _)| *k)
        .collect();
    let mut candidates = Vec::new();
    if let (false, Some(others)) = (outside.is_empty(), others) {
        match others_walk {
            Some(Ok(walk)) => {
                let found = walk.join().unwrap_or_else(|_| {
                    Err(BuildError::Interrupted(
                        "listing the build cache's hard links panicked".into(),
                    ))
                })?;
                candidates.extend(found.into_iter().filter(|(k, _)| outside.contains(k)));
            }
            // No thread to be had: listed here.
            _ => find_links(others, Some(&outside), &mut candidates)?,
        }
    }
    let mut found: HashMap<InodeKey, u64> = HashMap::new();
    for (key, _) in &candidates {
        *found.entry(*key).or_default() += 1;
    }
    let taken: HashSet<InodeKey> = outside
        .iter()
        .filter(|k| {
            let (n, in_tree) = links[*k];
            in_tree + found.get(*k).copied().unwrap_or(0) == n
        })
        .copied()
        .collect();
    let mut shared: Vec<SharedFile> = candidates
        .into_iter()
        .filter(|(k, _)| taken.contains(k))
        .map(|(_, f)| f)
        .collect();
    // While the other side's files are the tree's owner's, its top directory is root's: the
    // pipeline gives a cache whose top is not the build user's back to that user file by file
    // (and a file the release still shares a copy of its own), should a stopped server never
    // have finished giving them back.
    if let (false, Some(others)) = (shared.is_empty(), others) {
        let meta = std::fs::symlink_metadata(others).map_err(BuildError::io("reading", others))?;
        shared.push(SharedFile {
            path: others.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut entries = Vec::with_capacity(listed.len());
    for (rel, kind, mode, key) in listed {
        if kind == Kind::File && outside.contains(&key) && !taken.contains(&key) {
            copy_over_as(&dir.join(&rel), scratch, mode, None)?;
        }
        entries.push((rel, kind, mode));
    }
    Ok(Adopting {
        root: dir.to_path_buf(),
        entries,
        shared,
    })
}

/// Files under `dir` (not following symlinks) with other links, whose inode is in `wanted`
/// (any, when `None`).
fn find_links(
    dir: &Path,
    wanted: Option<&HashSet<InodeKey>>,
    out: &mut Vec<(InodeKey, SharedFile)>,
) -> Result<(), BuildError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BuildError::io("listing", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(BuildError::io("listing", dir))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(BuildError::io("reading", &path))?;
        if ft.is_dir() {
            find_links(&path, wanted, out)?;
        } else if ft.is_file() {
            let meta =
                std::fs::symlink_metadata(&path).map_err(BuildError::io("reading", &path))?;
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 && wanted.is_none_or(|w| w.contains(&key)) {
                out.push((
                    key,
                    SharedFile {
                        path,
                        uid: meta.uid(),
                        gid: meta.gid(),
                        mode: meta.mode() & 0o7777,
                    },
                ));
            }
        }
    }
    Ok(())
}

impl Adopting {
    /// The files outside the tree whose inodes the tree takes: [`Adopting::complete`] gives
    /// them to `owner` too, until [`unshare`] gives them copies of their own.
    pub fn shared(&self) -> &[SharedFile] {
        &self.shared
    }

    /// Gives every entry (and the top directory) `owner` (when given), the slug's mode and no
    /// extended attributes. Blocking.
    pub fn complete(self, owner: Option<(u32, u32)>) -> Result<(), BuildError> {
        if owner.is_some() {
            if let Some(dir) = self.shared.iter().find(|f| f.path.is_dir()) {
                std::os::unix::fs::lchown(&dir.path, Some(0), Some(0))
                    .map_err(BuildError::io("changing the owner of", &dir.path))?;
            }
        }
        for (rel, kind, mode) in &self.entries {
            let full = self.root.join(rel);
            strip_xattrs(&full)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                    .map_err(BuildError::io("changing the owner of", &full))?;
            }
            if *kind != Kind::Symlink {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode))
                    .map_err(BuildError::io("setting permissions of", &full))?;
            }
        }
        strip_xattrs(&self.root)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&self.root, Some(uid), Some(gid))
                .map_err(BuildError::io("changing the owner of", &self.root))?;
        }
        Ok(())
    }
}

fn strip_xattrs(path: &Path) -> Result<(), BuildError> {
    // `list` and `remove` act on a symlink itself, never on its target.
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without extended attributes has none to strip.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(BuildError::io("listing the attributes of", path)(e)),
    };
    for name in names {
        xattr::remove(path, &name).map_err(BuildError::io("removing an attribute of", path))?;
    }
    Ok(())
}

/// Distinguishes the copies this process writes in a scratch directory.
static COPIES: AtomicU64 = AtomicU64::new(0);

/// The name prefix of a copy being written (`copy_over_as`): such a file is never part of a
/// tree, only what a stopped server left.
const COPY_PREFIX: &str = ".slipway-copy-";

/// Whether `name` is a copy being written, left by a server that stopped.
pub(crate) fn is_partial_copy(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(COPY_PREFIX))
}

/// Replaces the symlink at `path` with a new one (its own inode) to the same target.
fn relink(path: &Path) -> Result<(), BuildError> {
    let target = std::fs::read_link(path).map_err(BuildError::io("reading", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".slipway-link-{}-{n}", std::process::id()));
    std::os::unix::fs::symlink(&target, &tmp).map_err(BuildError::io("creating", &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        BuildError::io("replacing", path)(e)
    })
}

/// Whether the file at `path` has other links and another owner than `owner`.
pub(crate) fn shared_with_another_owner(
    path: &Path,
    owner: (u32, u32),
) -> Result<bool, BuildError> {
    let meta = std::fs::symlink_metadata(path).map_err(BuildError::io("reading", path))?;
    Ok(meta.is_file() && meta.nlink() > 1 && meta.uid() != owner.0)
}

/// Replaces the file at `path` (same mode) with a copy of its own owned by `owner`.
pub(crate) fn copy_over(path: &Path, scratch: &Path, owner: (u32, u32)) -> Result<(), BuildError> {
    let meta = std::fs::symlink_metadata(path).map_err(BuildError::io("reading", path))?;
    copy_over_as(path, scratch, meta.mode() & 0o7777, Some(owner))
}

/// Replaces the file at `path` with a copy of itself (its own inode) with `mode` and, when
/// given, owner `(uid, gid)`: written in `scratch`, then renamed over `path`.
fn copy_over_as(
    path: &Path,
    scratch: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), BuildError> {
    let n = COPIES.fetch_add(1, Ordering::Relaxed);
    let tmp = scratch.join(format!("{COPY_PREFIX}{}-{n}", std::process::id()));
    let copied = (|| {
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(BuildError::io("reading", path))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(BuildError::io("copying to", &tmp))?;
        std::io::copy(&mut src, &mut out).map_err(BuildError::io("copying to", &tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
                .map_err(BuildError::io("changing the owner of", &tmp))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(BuildError::io("setting permissions of", &tmp))?;
        std::fs::rename(&tmp, path).map_err(BuildError::io("replacing", path))
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied
}

/// Gives each file a release took ([`Adopting::complete`]) a copy of its own with the owner and
/// mode it had, written beside it (`scratch`: for a file without a parent).
/// A file that is gone meanwhile is skipped. Blocking.
pub fn unshare(files: &[SharedFile], scratch: &Path) -> Result<(), BuildError> {
    let copy = |part: &[SharedFile]| -> Result<(), BuildError> {
        for f in part {
            match std::fs::symlink_metadata(&f.path) {
                Ok(m) if m.is_file() => {}
                _ => continue,
            }
            // Written beside the file it replaces: a rename within one directory, and the two
            // threads seldom wait for the same directory's lock. A copy a stopped server left
            // half-written is removed by the next build's walk of the cache
            // (`pipeline::chown_tree`, see `is_partial_copy`).
            let dir = f.path.parent().unwrap_or(scratch);
            copy_over_as(&f.path, dir, f.mode, Some((f.uid, f.gid)))?;
        }
        Ok(())
    };
    // On two threads: most of the time is the kernel's, per file, and a core waits on the disk.
    let (first, second) = files.split_at(files.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| copy(second));
        let mine = copy(first);
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err(BuildError::Interrupted("a copying thread panicked".into())));
        mine.and(theirs)
    })?;
    // The directory holding them last (see `Adopting::complete`): its owner back says that
    // everything below it is that owner's again.
    for f in files {
        if std::fs::symlink_metadata(&f.path).is_ok_and(|m| m.is_dir()) {
            std::os::unix::fs::lchown(&f.path, Some(f.uid), Some(f.gid))
                .map_err(BuildError::io("changing the owner of", &f.path))?;
        }
    }
    Ok(())
}
