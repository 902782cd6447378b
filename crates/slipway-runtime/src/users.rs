//! One unprivileged uid (and gid of the same number) per app, so that one app's dynos cannot
//! read another's files or signal its processes.
//!
//! The first time an app runs a dyno it gets the lowest free number from [`FIRST_UID`]; the
//! mapping is kept in one table per machine, [`HOST_TABLE`] (`<app id> <uid>` per line, written
//! whole to a temporary file and renamed, under an exclusive lock on `<table>.lock`), so an app
//! keeps its uid across server restarts and no two apps share one, even apps of two servers on
//! the same machine (a build's processes are killed by uid: a shared uid would kill another's). The range starts above the usual login users (1000-60000) and the
//! subordinate ids of rootless containers (100000-165535).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backend::RuntimeError;

/// The machine-wide uid table.
pub const HOST_TABLE: &str = "/var/lib/slipway/uids";

pub const FIRST_UID: u32 = 400_000;
pub const LAST_UID: u32 = 499_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
}

pub(crate) struct UidTable {
    path: PathBuf,
    map: Mutex<BTreeMap<String, u32>>,
}

impl UidTable {
    pub(crate) fn load(path: &Path) -> Result<Self, RuntimeError> {
        let mut map = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let mut parts = line.split_whitespace();
                    let (Some(app), Some(uid), None) = (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(RuntimeError::UidTable {
                            path: path.to_path_buf(),
                            line: n + 1,
                        });
                    };
                    let uid = uid
                        .parse::<u32>()
                        .ok()
                        .filter(|u| (FIRST_UID..=LAST_UID).contains(u))
                        .ok_or_else(|| RuntimeError::UidTable {
                            path: path.to_path_buf(),
                            line: n + 1,
                        })?;
                    map.insert(app.to_string(), uid);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io("reading", path)(e)),
        }
        Ok(Self {
            path: path.to_path_buf(),
            map: Mutex::new(map),
        })
    }

    /// The app's user, allocated (and saved) on first use.
    pub(crate) fn user_for(&self, app_id: &str) -> Result<AppUser, RuntimeError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(uid) = map.get(app_id) {
            return Ok(AppUser {
                uid: *uid,
                gid: *uid,
            });
        }
        // Another server on this machine may have added apps since: allocate under the lock,
        // from the table as it is on disk now.
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(RuntimeError::io("opening", &lock_path))?;
        lock.lock()
            .map_err(RuntimeError::io("locking", &lock_path))?;
        let on_disk = UidTable::load(&self.path)?;
        let current = on_disk.map.into_inner().unwrap_or_else(|p| p.into_inner());
        map.extend(current);
        if let Some(uid) = map.get(app_id) {
            return Ok(AppUser {
                uid: *uid,
                gid: *uid,
            });
        }
        let used: std::collections::BTreeSet<u32> = map.values().copied().collect();
        let uid = (FIRST_UID..=LAST_UID)
            .find(|u| !used.contains(u))
            .ok_or_else(|| RuntimeError::NoFreeUid {
                app: app_id.to_string(),
                first: FIRST_UID,
                last: LAST_UID,
            })?;
        let mut next = map.clone();
        next.insert(app_id.to_string(), uid);
        let text: String = next.iter().map(|(a, u)| format!("{a} {u}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(RuntimeError::io("writing", &tmp))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(RuntimeError::io("restricting", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(RuntimeError::io("replacing", &self.path))?;
        *map = next;
        Ok(AppUser { uid, gid: uid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_get_distinct_uids_that_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".uids");
        let table = UidTable::load(&path).expect("load");
        let a = table.user_for("app-a").expect("a");
        let b = table.user_for("app-b").expect("b");
        assert_ne!(a.uid, b.uid);
        assert!(a.uid >= FIRST_UID && b.uid >= FIRST_UID);
        assert_eq!(table.user_for("app-a").expect("again"), a);
        let reloaded = UidTable::load(&path).expect("reload");
        assert_eq!(reloaded.user_for("app-b").expect("b"), b);
        assert_ne!(reloaded.user_for("app-c").expect("c").uid, a.uid);
    }

    #[test]
    fn a_corrupt_table_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".uids");
        std::fs::write(&path, "app-a 400000\napp-b 0\n").expect("write");
        let err = UidTable::load(&path).err().expect("refused");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
