//! The release store on disk: `<data>/store/<name>/<tag>.tgz`. A tarball is written to a temp
//! file in `<data>/store/.tmp/`, hashed while it is written, synced, renamed into place, and only
//! then recorded in the database; so a half-written tarball is never listed, and a crash leaves
//! at most a stray temp file (removed by [`ReleaseStore::clean_temp`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use slipway_store::release_store::{NewStoredRelease, StoreDelete, StoredRelease};
use slipway_store::{Store, StoreError};

use crate::target::validate_name;

/// Largest tarball the store accepts (slugs are capped at 500 MB; imports may be bigger).
pub const MAX_TARBALL_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Largest metadata document.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseStoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("release {name} {tag} is already in the store; tags are immutable (delete it first, or use a new tag)")]
    Exists { name: String, tag: String },
    #[error(
        "release {name} {tag} is not in the store; `slipway store --name {name}` lists its tags"
    )]
    NotFound { name: String, tag: String },
    #[error("release {name} {tag} runs on {users}; deploy another release there first")]
    InUse {
        name: String,
        tag: String,
        users: String,
    },
    #[error("the tarball is larger than {MAX_TARBALL_BYTES} bytes")]
    TooLarge,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the release store's database: {0}")]
    Db(StoreError),
}

impl From<StoreError> for ReleaseStoreError {
    fn from(e: StoreError) -> Self {
        Self::Db(e)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseStoreError + '_ {
    move |source| ReleaseStoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The store's files, under one data directory.
#[derive(Debug, Clone)]
pub struct ReleaseStore {
    root: PathBuf,
}

/// What to record with a tarball.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub tag: String,
    pub commit_sha: String,
    pub metadata: serde_json::Value,
}

impl Entry {
    fn check(&self) -> Result<(), ReleaseStoreError> {
        validate_name("release name", &self.name).map_err(ReleaseStoreError::Invalid)?;
        validate_name("tag", &self.tag).map_err(ReleaseStoreError::Invalid)?;
        if self.commit_sha.len() > 64 || !self.commit_sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReleaseStoreError::Invalid(
                "the commit must be a hexadecimal commit id".into(),
            ));
        }
        if !self.metadata.is_object() {
            return Err(ReleaseStoreError::Invalid(
                "metadata must be a JSON object".into(),
            ));
        }
        if self.metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(ReleaseStoreError::Invalid(format!(
                "metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"
            )));
        }
        Ok(())
    }
}

impl ReleaseStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("store"),
        }
    }

    fn temp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    fn final_path(&self, name: &str, tag: &str) -> PathBuf {
        self.root.join(name).join(format!("{tag}.tgz"))
    }

    /// Removes temp files a crashed write left (call at start, before any write runs).
    pub fn clean_temp(&self) {
        let _ = std::fs::remove_dir_all(self.temp_dir());
    }

    /// Writes `reader` (blocking) to the store and records it. Refuses an existing name and
    /// tag before reading anything.
    pub fn write_blocking(
        &self,
        entry: &Entry,
        mut reader: impl Read,
    ) -> Result<(PathBuf, String, u64), ReleaseStoreError> {
        entry.check()?;
        let tmp_dir = self.temp_dir();
        std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(io(tmp.path()))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > MAX_TARBALL_BYTES {
                return Err(ReleaseStoreError::TooLarge);
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
        }
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        let dest = self.final_path(&entry.name, &entry.tag);
        let dir = self.root.join(&entry.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if dest.exists() {
            return Err(ReleaseStoreError::Exists {
                name: entry.name.clone(),
                tag: entry.tag.clone(),
            });
        }
        tmp.persist(&dest).map_err(|e| ReleaseStoreError::Io {
            path: dest.display().to_string(),
            source: e.error,
        })?;
        Ok((dest, hex::encode(hasher.finalize()), size))
    }

    /// Imports a tarball streamed by `reader` as `entry`.
    pub async fn import(
        &self,
        db: &Store,
        entry: Entry,
        reader: impl Read + Send + 'static,
    ) -> Result<StoredRelease, ReleaseStoreError> {
        entry.check()?;
        if db.stored_release(&entry.name, &entry.tag).await.is_ok() {
            return Err(ReleaseStoreError::Exists {
                name: entry.name,
                tag: entry.tag,
            });
        }
        let this = self.clone();
        let e = entry.clone();
        let (path, sha256, size) =
            tokio::task::spawn_blocking(move || this.write_blocking(&e, reader))
                .await
                .map_err(|e| ReleaseStoreError::Io {
                    path: "(import)".into(),
                    source: std::io::Error::other(e),
                })??;
        self.record(db, entry, path, sha256, size).await
    }

    /// Keeps a copy of a file already on the server (a built slug): a hard link when the file
    /// is on the same filesystem (the slug's own cleanup then leaves the store's copy), else a
    /// copy; `sha256` is the file's known checksum.
    pub async fn keep_file(
        &self,
        db: &Store,
        entry: Entry,
        source: &Path,
        sha256: &str,
    ) -> Result<StoredRelease, ReleaseStoreError> {
        entry.check()?;
        let dest = self.final_path(&entry.name, &entry.tag);
        let (tmp_dir, dir) = (self.temp_dir(), self.root.join(&entry.name));
        for d in [&tmp_dir, &dir] {
            tokio::fs::create_dir_all(d).await.map_err(io(d))?;
        }
        let tmp = tmp_dir.join(format!("{}.tgz", uuid::Uuid::new_v4()));
        if tokio::fs::hard_link(source, &tmp).await.is_err() {
            tokio::fs::copy(source, &tmp).await.map_err(io(source))?;
        }
        let size = tokio::fs::metadata(&tmp).await.map_err(io(&tmp))?.len();
        if dest.exists() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ReleaseStoreError::Exists {
                name: entry.name,
                tag: entry.tag,
            });
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
        let sha256 = sha256.trim_start_matches("SHA256:").to_ascii_lowercase();
        self.record(db, entry, dest, sha256, size).await
    }

    async fn record(
        &self,
        db: &Store,
        entry: Entry,
        path: PathBuf,
        sha256: String,
        size: u64,
    ) -> Result<StoredRelease, ReleaseStoreError> {
        let new = NewStoredRelease {
            name: entry.name.clone(),
            tag: entry.tag.clone(),
            sha256,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            commit_sha: entry.commit_sha,
            metadata: entry.metadata,
            path: path.display().to_string(),
        };
        match db.add_stored_release(&new).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // Not recorded: the file must not stay behind (it would shadow a later import).
                let _ = tokio::fs::remove_file(&path).await;
                Err(match e {
                    StoreError::Conflict(_) => ReleaseStoreError::Exists {
                        name: entry.name,
                        tag: entry.tag,
                    },
                    e => e.into(),
                })
            }
        }
    }

    /// Deletes one release, unless a target's host runs it.
    pub async fn delete(
        &self,
        db: &Store,
        name: &str,
        tag: &str,
    ) -> Result<StoredRelease, ReleaseStoreError> {
        let outcome = db
            .delete_stored_release(name, tag)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ReleaseStoreError::NotFound {
                    name: name.into(),
                    tag: tag.into(),
                },
                e => e.into(),
            })?;
        match outcome {
            StoreDelete::Deleted(release) => {
                remove_quietly(Path::new(&release.path)).await;
                Ok(release)
            }
            StoreDelete::InUse(users) => Err(ReleaseStoreError::InUse {
                name: name.into(),
                tag: tag.into(),
                users: users.join(", "),
            }),
        }
    }

    /// Keeps the newest `keep` of `name` (always the latest, and every release a target's host
    /// runs); deletes the rest.
    pub async fn prune(
        &self,
        db: &Store,
        name: &str,
        keep: usize,
    ) -> Result<Vec<StoredRelease>, ReleaseStoreError> {
        validate_name("release name", name).map_err(ReleaseStoreError::Invalid)?;
        let removed = db.prune_stored_releases(name, keep).await?;
        for r in &removed {
            remove_quietly(Path::new(&r.path)).await;
        }
        Ok(removed)
    }

    /// Deletes every release of `name` but those a target's host runs (`apps:destroy`: a host
    /// keeps running what it runs, and can still be rolled back to it from the store).
    pub async fn forget(
        &self,
        db: &Store,
        name: &str,
    ) -> Result<Vec<StoredRelease>, ReleaseStoreError> {
        let removed = db.forget_stored_releases(name).await?;
        for r in &removed {
            remove_quietly(Path::new(&r.path)).await;
        }
        Ok(removed)
    }

    /// Opens a stored release's tarball, checking it is still what was recorded.
    pub fn verify_blocking(release: &StoredRelease) -> Result<(), ReleaseStoreError> {
        let path = Path::new(&release.path);
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
        let got = hex::encode(hasher.finalize());
        if got != release.sha256 {
            return Err(ReleaseStoreError::Invalid(format!(
                "{} has checksum {got}, but the store recorded {}: the file was changed on disk",
                release.path, release.sha256
            )));
        }
        Ok(())
    }
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a stored tarball");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection cut"));
            }
            self.0 -= 1;
            buf[..4].copy_from_slice(b"data");
            Ok(4)
        }
    }

    fn entry(tag: &str) -> Entry {
        Entry {
            name: "hello".into(),
            tag: tag.into(),
            commit_sha: "abc123".into(),
            metadata: serde_json::json!({"by": "test"}),
        }
    }

    #[tokio::test]
    async fn import_records_checksum_and_a_cut_stream_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::open(&dir.path().join("state.db")).await.expect("db");
        let store = ReleaseStore::new(dir.path());
        let r = store
            .import(&db, entry("v1"), std::io::Cursor::new(b"hello".to_vec()))
            .await
            .expect("import");
        assert_eq!(
            r.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(std::fs::read(&r.path).expect("file"), b"hello");
        assert!(matches!(
            store
                .import(&db, entry("v1"), std::io::Cursor::new(b"x".to_vec()))
                .await,
            Err(ReleaseStoreError::Exists { .. })
        ));
        let cut = store.import(&db, entry("v2"), Failing(3)).await;
        assert!(matches!(cut, Err(ReleaseStoreError::Io { .. })), "{cut:?}");
        assert_eq!(
            db.stored_releases(Some("hello")).await.expect("list").len(),
            1
        );
        assert!(!dir.path().join("store/hello/v2.tgz").exists());
        let temp_left = std::fs::read_dir(dir.path().join("store/.tmp"))
            .expect("tmp dir")
            .count();
        assert_eq!(temp_left, 0, "a temp file was left behind");
        store.delete(&db, "hello", "v1").await.expect("delete");
        assert!(!Path::new(&r.path).exists());
    }
}
