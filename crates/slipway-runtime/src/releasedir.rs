//! Release directories: each slug unpacked once, shared by every container dyno that runs it.
//!
//! `<dynos-dir>/.releases/<app id>/<sha256 hex>/app` is the slug unpacked (its checksum checked
//! in the same pass) and given to the app's user, made once per app and slug by the first dyno
//! (or one-off, or release phase) that needs it. Each container dyno's `/app` is then an
//! overlay (`oci.rs`): this directory as the read-only lower layer, and an upper and work
//! directory of the dyno's own (`<dyno dir>/upper`, `<dyno dir>/work`), so the dyno writes
//! where it likes and what it wrote goes with its directory when it stops, as with a copy.
//! runc mounts the overlay inside the container's own mount namespace, so nothing is mounted
//! on the host and a re-adopted dyno keeps its `/app` for as long as its container lives.
//!
//! `.releases` is root's (0700): app users never reach a release directory on the host (their
//! files there are theirs so that an overlay copy-up keeps the owner, but only root and the
//! overlay see them). Each dyno directory names the release directory it uses in its
//! `release` file; a release directory no dyno directory names is removed when a dyno of the
//! app is cleaned up (a rollback to it unpacks it again).
//! One lock per app orders unpacking and collecting, so a directory is never removed between
//! its unpacking and the dyno naming it.
//!
//! A push does not wait for the unpacking: the finished build directory is moved into
//! `.staged-N` ([`take`]; `slipway_build::prepare_adoption` makes its names the slug's), the
//! slug is packed from there while the tree is given the app's user and the slug's modes in
//! place ([`TakenRelease::own`]), and it becomes the release directory under the slug's
//! checksum once that is known ([`finish`]), so the new dyno finds its release directory ready
//! and no file data was copied. A build directory on another filesystem is copied as the slug
//! holds it instead (`slipway_build::copy_as_slug`, [`stage`]) while the slug is compressed. Staged and partial
//! directories a stopped server left are removed at start.
//!
//! [`stage`]: ReleaseDirs::stage
//! [`take`]: ReleaseDirs::take
//! [`finish`]: ReleaseDirs::finish

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backend::{chown_tree, make_dir, remove_dir, DynoSpec, RuntimeError};
use crate::users::AppUser;

/// Names staged directories uniquely within this server.
static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const STAGED_PREFIX: &str = ".staged-";

/// The file in a dyno's directory naming the release directory it runs from.
const REFERENCE: &str = "release";

pub(crate) struct ReleaseDirs {
    /// `<dynos-dir>/.releases`.
    root: PathBuf,
    /// `<dynos-dir>`: where each app's dyno directories are (`<app id>/<dyno id>`).
    dynos_dir: PathBuf,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Per app, the release directory a push staged that no dyno names yet: `collect` keeps it
    /// (an old dyno stopping meanwhile must not remove what the new one is about to use).
    fresh: Mutex<HashMap<String, String>>,
}

/// A dyno's share of a release directory: the lower layer of its `/app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lower {
    /// `<root>/<app id>/<hex>/app`.
    pub app: PathBuf,
}

impl ReleaseDirs {
    pub(crate) fn new(dynos_dir: &Path) -> Result<Self, RuntimeError> {
        let root = dynos_dir.join(".releases");
        make_dir(&root, 0o700, None)?;
        // What a stopped server was making: nothing is being made yet.
        for app in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(app.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(STAGED_PREFIX) || name.starts_with(".partial-") {
                    remove_dir(&entry.path())?;
                }
            }
        }
        Ok(Self {
            root,
            dynos_dir: dynos_dir.to_path_buf(),
            locks: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashMap::new()),
        })
    }

    fn fresh_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn app_lock(&self, app_id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app_id.to_string()).or_default().clone()
    }

    /// Where the dyno's release directory is, when the dyno can use one: its slug checksum is
    /// a `SHA256:` of 64 hex digits and no path involved holds a character that overlay mount
    /// options cannot carry (`,` `:` `\`). `None`: the dyno gets a copy.
    fn release_dir(&self, dyno: &DynoSpec) -> Option<PathBuf> {
        let dir = self.dir_of(&dyno.app_id, &dyno.slug_checksum)?;
        (mountable(&dir) && mountable(&dyno.dir)).then_some(dir)
    }

    /// `<root>/<app id>/<hex>` for a `SHA256:` checksum, when both are well formed.
    fn dir_of(&self, app_id: &str, checksum: &str) -> Option<PathBuf> {
        let hex = checksum.strip_prefix("SHA256:")?;
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok && app_ok(app_id)).then(|| self.root.join(app_id).join(hex.to_ascii_lowercase()))
    }

    /// Copies a build directory as its slug will hold it into a new staged directory of the
    /// app, given to the app's user (`user`), while the slug is packed. Blocking. `Ok(None)`
    /// for an app id that cannot name a directory.
    pub(crate) fn stage(
        &self,
        app_id: &str,
        user: Option<&AppUser>,
        build_dir: &Path,
    ) -> Result<Option<PathBuf>, RuntimeError> {
        let Some(staged) = self.new_staged(app_id)? else {
            return Ok(None);
        };
        let app = staged.join("app");
        let done = slipway_build::copy_as_slug(build_dir, &app)
            .map_err(|e| RuntimeError::Bundle {
                dyno: format!("the release directory of app {app_id}"),
                detail: e.to_string(),
            })
            .and_then(|()| {
                std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(RuntimeError::io("setting permissions of", &app))?;
                match user {
                    Some(u) => chown_tree(&app, u),
                    None => Ok(()),
                }
            });
        match done {
            Ok(()) => Ok(Some(staged)),
            Err(e) => {
                let _ = remove_dir(&staged);
                Err(e)
            }
        }
    }

    /// A new, empty `.staged-N` directory of the app (`None` for an app id that cannot name a
    /// directory).
    fn new_staged(&self, app_id: &str) -> Result<Option<PathBuf>, RuntimeError> {
        if !app_ok(app_id) {
            return Ok(None);
        }
        let parent = self.root.join(app_id);
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = parent.join(format!("{STAGED_PREFIX}{n}"));
        // Not while `collect` may remove the (empty) parent.
        let lock = self.app_lock(app_id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        make_dir(&parent, 0o700, None)?;
        remove_dir(&staged)?;
        make_dir(&staged, 0o700, None)?;
        Ok(Some(staged))
    }

    /// Moves a build directory (its buildpacks done, every process of the build user gone) into
    /// a new staged directory of the app and makes its names those of its slug
    /// (`slipway_build::prepare_adoption`; `cache_dir`: the app's build cache, whose hard links
    /// into the build may be taken). Blocking. `Ok(None)`: nothing was moved (an app id that
    /// cannot name a directory, or the build directory on another filesystem): the caller
    /// copies instead ([`ReleaseDirs::stage`]).
    pub(crate) fn take(
        &self,
        app_id: &str,
        user: Option<&AppUser>,
        build_dir: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<Option<TakenRelease>, RuntimeError> {
        let Some(staged) = self.new_staged(app_id)? else {
            return Ok(None);
        };
        let app = staged.join("app");
        if let Err(e) = std::fs::rename(build_dir, &app) {
            let _ = remove_dir(&staged);
            if e.raw_os_error() == Some(nix::libc::EXDEV) {
                return Ok(None);
            }
            return Err(RuntimeError::io("moving the build to", &app)(e));
        }
        // Without an app user the cache's files stay the server's: none are taken.
        let others = cache_dir.filter(|_| user.is_some());
        match slipway_build::prepare_adoption(&app, others, &staged) {
            Ok(adopting) => Ok(Some(TakenRelease {
                staged,
                app,
                user: user.copied(),
                shared: adopting.shared().to_vec(),
                adopting: Some(adopting),
            })),
            Err(e) => {
                // Back where it was (what was changed, a slug does not hold anyway): the
                // caller packs and copies it as before.
                if std::fs::rename(&app, build_dir).is_ok() {
                    let _ = remove_dir(&staged);
                }
                Err(RuntimeError::Bundle {
                    dyno: format!("the release directory of app {app_id}"),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Makes a directory [`ReleaseDirs::stage`] made the release directory of the slug with
    /// `checksum` (unless one exists already), or removes it (`None`: no slug was made).
    pub(crate) fn finish(&self, app_id: &str, staged: &Path, checksum: Option<&str>) {
        let parent = self.root.join(app_id);
        let ours = staged.parent() == Some(parent.as_path())
            && staged
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(STAGED_PREFIX));
        if !ours || !app_ok(app_id) {
            return;
        }
        let lock = self.app_lock(app_id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = checksum.and_then(|c| self.dir_of(app_id, c)) {
            if !dir.exists() {
                match std::fs::rename(staged, &dir) {
                    Ok(()) => {
                        let name = dir.file_name().unwrap_or_default().to_string_lossy();
                        self.fresh_map()
                            .insert(app_id.to_string(), name.into_owned());
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not keep a staged release directory")
                    }
                }
            }
        }
        if let Err(e) = remove_dir(staged) {
            tracing::warn!(error = %e, "could not remove a staged release directory");
        }
    }

    /// Makes the dyno's directory (`dyno.dir`, root's 0711, emptied first) with an empty upper
    /// layer (the app user's, 0700, which `/app` itself becomes), a work directory and the
    /// `release` reference, unpacking the release directory first if no dyno made it yet.
    /// `Ok(None)` when the dyno cannot share one (see [`ReleaseDirs::release_dir`]): nothing
    /// was done, the caller makes a copy.
    pub(crate) fn prepare(&self, dyno: &DynoSpec) -> Result<Option<Lower>, RuntimeError> {
        let Some(dir) = self.release_dir(dyno) else {
            return Ok(None);
        };
        let lock = self.app_lock(&dyno.app_id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !dir.is_dir() {
            self.unpack(dyno, &dir)?;
        }
        crate::backend::empty_dyno_dir(dyno)?;
        make_dir(&dyno.dir.join("upper"), 0o700, dyno.user.as_ref())?;
        make_dir(&dyno.dir.join("work"), 0o700, None)?;
        let name = dir.file_name().unwrap_or_default();
        {
            let mut fresh = self.fresh_map();
            if fresh.get(&dyno.app_id).map(|f| f.as_str()) == name.to_str() {
                fresh.remove(&dyno.app_id);
            }
        }
        let reference = dyno.dir.join(REFERENCE);
        std::fs::write(&reference, name.as_encoded_bytes())
            .map_err(RuntimeError::io("writing", &reference))?;
        Ok(Some(Lower {
            app: dir.join("app"),
        }))
    }

    /// Unpacks the slug beside `dir` and renames it into place once it is complete and given
    /// to the app's user: a release directory is whole or absent.
    fn unpack(&self, dyno: &DynoSpec, dir: &Path) -> Result<(), RuntimeError> {
        let parent = dir.parent().unwrap_or(&self.root);
        make_dir(parent, 0o700, None)?;
        let partial = parent.join(format!(
            ".partial-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        remove_dir(&partial)?;
        make_dir(&partial, 0o700, None)?;
        let done = slipway_build::unpack_slug(&dyno.slug_path, &dyno.slug_checksum, &partial)
            .map_err(|source| RuntimeError::Slug {
                dyno: dyno.name.clone(),
                source,
            })
            .and_then(|()| {
                let app = partial.join("app");
                std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(RuntimeError::io("setting permissions of", &app))?;
                match &dyno.user {
                    Some(u) => chown_tree(&app, u),
                    None => Ok(()),
                }
            })
            .and_then(|()| std::fs::rename(&partial, dir).map_err(RuntimeError::io("saving", dir)));
        if done.is_err() {
            let _ = remove_dir(&partial);
        }
        done
    }

    /// Removes the app's release directories that no dyno directory names. Called after a dyno
    /// of the app was cleaned up; errors are logged, never fatal.
    pub(crate) fn collect(&self, app_id: &str) {
        let lock = self.app_lock(app_id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let releases = self.root.join(app_id);
        let Ok(entries) = std::fs::read_dir(&releases) else {
            return;
        };
        let mut used = self.referenced(app_id);
        let fresh = self.fresh_map().get(app_id).cloned();
        let in_use = !used.is_empty();
        used.extend(fresh);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGED_PREFIX) {
                // A push's, until its slug is packed (`finish`).
                continue;
            }
            if name.starts_with(".partial-") {
                // Only an unpacking that died leaves one (unpacking holds the lock).
                let _ = remove_dir(&entry.path());
                continue;
            }
            if used.contains(&name) {
                continue;
            }
            if let Err(e) = remove_dir(&entry.path()) {
                tracing::warn!(error = %e, "could not remove an unused release directory");
            }
        }
        if !in_use && std::fs::read_dir(&releases).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::fs::remove_dir(&releases);
        }
    }

    /// The release directories the app's dyno directories name.
    fn referenced(&self, app_id: &str) -> std::collections::HashSet<String> {
        let mut used = std::collections::HashSet::new();
        let Ok(dynos) = std::fs::read_dir(self.dynos_dir.join(app_id)) else {
            return used;
        };
        for dyno in dynos.flatten() {
            if let Ok(name) = std::fs::read_to_string(dyno.path().join(REFERENCE)) {
                used.insert(name.trim().to_string());
            }
        }
        used
    }
}

/// A build directory moved into a staged release directory ([`ReleaseDirs::take`]): its names
/// are the slug's; [`TakenRelease::own`] gives it the app user and the slug's modes (while the
/// slug is packed from [`TakenRelease::app`]); `DynoManager::finish_release` with
/// [`TakenRelease::staged`] makes it the release directory or removes it.
#[derive(Debug)]
pub struct TakenRelease {
    staged: PathBuf,
    app: PathBuf,
    user: Option<AppUser>,
    adopting: Option<slipway_build::Adopting>,
    shared: Vec<slipway_build::SharedFile>,
}

impl TakenRelease {
    /// The staged directory (`.staged-N`), for `finish_release`.
    pub fn staged(&self) -> &Path {
        &self.staged
    }

    /// Where the build now is: pack the slug from here.
    pub fn app(&self) -> &Path {
        &self.app
    }

    /// The files of the build cache whose inodes the release takes (once [`TakenRelease::own`]
    /// ran, even in part, they may be the app user's): give them copies of their own
    /// (`slipway_build::unshare`) before the cache is used again.
    pub fn shared(&self) -> &[slipway_build::SharedFile] {
        &self.shared
    }

    /// Gives the tree the app's user and the slug's modes. Blocking; once.
    pub fn own(&mut self) -> Result<(), RuntimeError> {
        let Some(adopting) = self.adopting.take() else {
            return Ok(());
        };
        std::fs::set_permissions(
            &self.app,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(RuntimeError::io("setting permissions of", &self.app))?;
        adopting
            .complete(self.user.map(|u| (u.uid, u.gid)))
            .map_err(|e| RuntimeError::Bundle {
                dyno: "a release directory".to_string(),
                detail: e.to_string(),
            })
    }
}

/// Whether an app id can name a directory (slipway's are UUIDs).
fn app_ok(app_id: &str) -> bool {
    !app_id.is_empty()
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `path` can go into overlay's `lowerdir=`/`upperdir=` options as it is.
fn mountable(path: &Path) -> bool {
    path.is_absolute()
        && !path
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\\'))
}
