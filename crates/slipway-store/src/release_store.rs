//! The release store's records and the host targets (issue 11): which tarballs slipway keeps
//! (name, tag, checksum, size, source commit, build time, free-form metadata), which targets
//! exist (their spec and secret environment as JSON documents, owned by `slipway-hosts`), and
//! which release each host of each target runs, so pruning the store never removes one.
//!
//! The tarballs themselves live on disk (`slipway-hosts::store`); a row is only inserted once
//! its file is complete, so a half-written tarball is never listed.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{is_unique_violation, now_ms, Result, Store, StoreError};

/// One kept release: a tarball and what is known about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredRelease {
    pub name: String,
    pub tag: String,
    /// Lowercase hex SHA-256 of the tarball.
    pub sha256: String,
    pub size: i64,
    /// The source commit it was built from (empty when unknown, e.g. an import without one).
    pub commit_sha: String,
    pub metadata: serde_json::Value,
    /// The tarball's path on the server.
    pub path: String,
    /// When it was built (or imported), milliseconds since the epoch.
    pub built_at: i64,
}

impl StoredRelease {
    fn from_row(row: &SqliteRow) -> Result<Self> {
        let metadata: String = row.get("metadata");
        Ok(Self {
            name: row.get("name"),
            tag: row.get("tag"),
            sha256: row.get("sha256"),
            size: row.get("size"),
            commit_sha: row.get("commit_sha"),
            metadata: serde_json::from_str(&metadata)?,
            path: row.get("path"),
            built_at: row.get("built_at"),
        })
    }
}

/// A release to record (its file already complete on disk).
#[derive(Debug, Clone)]
pub struct NewStoredRelease {
    pub name: String,
    pub tag: String,
    pub sha256: String,
    pub size: i64,
    pub commit_sha: String,
    pub metadata: serde_json::Value,
    pub path: String,
}

/// What deleting a stored release did.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreDelete {
    /// The row is gone; the caller removes the file.
    Deleted(StoredRelease),
    /// Refused: these `target/host` pairs run it.
    InUse(Vec<String>),
}

/// A host target as stored: its spec and environment are JSON documents that `slipway-hosts`
/// reads (the environment holds secrets and never leaves the server unmasked).
#[derive(Debug, Clone)]
pub struct HostTargetRow {
    pub name: String,
    pub spec: String,
    pub env: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The release one host of a target runs, as slipway last left it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetCurrent {
    pub target: String,
    pub host: String,
    pub store_name: String,
    pub tag: String,
    pub updated_at: i64,
}

impl Store {
    /// Records a release whose tarball is complete at `path`. `Conflict` if the name and tag
    /// are taken (tags are immutable: delete the old one first).
    pub async fn add_stored_release(&self, new: &NewStoredRelease) -> Result<StoredRelease> {
        let built_at = now_ms();
        let result = sqlx::query(
            "INSERT INTO release_store (name, tag, sha256, size, commit_sha, metadata, path, built_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&new.name)
        .bind(&new.tag)
        .bind(&new.sha256)
        .bind(new.size)
        .bind(&new.commit_sha)
        .bind(serde_json::to_string(&new.metadata)?)
        .bind(&new.path)
        .bind(built_at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "release {} {} in the release store",
                    new.name, new.tag
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.stored_release(&new.name, &new.tag).await
    }

    /// Kept releases, newest first; only those named `name` when given.
    pub async fn stored_releases(&self, name: Option<&str>) -> Result<Vec<StoredRelease>> {
        let rows = match name {
            Some(name) => sqlx::query(
                "SELECT * FROM release_store WHERE name = $1 ORDER BY built_at DESC, rowid DESC",
            )
            .bind(name)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query("SELECT * FROM release_store ORDER BY name, built_at DESC, rowid DESC")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(StoredRelease::from_row).collect()
    }

    pub async fn stored_release(&self, name: &str, tag: &str) -> Result<StoredRelease> {
        let row = sqlx::query("SELECT * FROM release_store WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("release {name} {tag} in the store")))?;
        StoredRelease::from_row(&row)
    }

    /// `target/host` pairs whose current release is `name tag`.
    async fn users_of(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        name: &str,
        tag: &str,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query(
            "SELECT target, host FROM target_current WHERE store_name = $1 AND tag = $2 ORDER BY target, host",
        )
        .bind(name)
        .bind(tag)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| format!("{}/{}", r.get::<String, _>("target"), r.get::<String, _>("host")))
        .collect())
    }

    /// Deletes the record, unless a target's host runs it. The caller removes the file after.
    pub async fn delete_stored_release(&self, name: &str, tag: &str) -> Result<StoreDelete> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT * FROM release_store WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("release {name} {tag} in the store")))?;
        let release = StoredRelease::from_row(&row)?;
        let users = Self::users_of(&mut tx, name, tag).await?;
        if !users.is_empty() {
            return Ok(StoreDelete::InUse(users));
        }
        sqlx::query("DELETE FROM release_store WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StoreDelete::Deleted(release))
    }

    /// Deletes the records of `name`'s releases beyond the newest `keep`, never the latest one
    /// and never one a target's host runs. Returns what was deleted (the caller removes files).
    pub async fn prune_stored_releases(
        &self,
        name: &str,
        keep: usize,
    ) -> Result<Vec<StoredRelease>> {
        self.delete_stored_beyond(name, keep.max(1)).await
    }

    /// Deletes the records of all of `name`'s releases but those a target's host runs (its app
    /// was destroyed). Returns what was deleted (the caller removes files).
    pub async fn forget_stored_releases(&self, name: &str) -> Result<Vec<StoredRelease>> {
        self.delete_stored_beyond(name, 0).await
    }

    async fn delete_stored_beyond(&self, name: &str, keep: usize) -> Result<Vec<StoredRelease>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "SELECT * FROM release_store WHERE name = $1 ORDER BY built_at DESC, rowid DESC",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let all = rows
            .iter()
            .map(StoredRelease::from_row)
            .collect::<Result<Vec<_>>>()?;
        let mut removed = Vec::new();
        for release in all.into_iter().skip(keep) {
            if !Self::users_of(&mut tx, &release.name, &release.tag)
                .await?
                .is_empty()
            {
                continue;
            }
            sqlx::query("DELETE FROM release_store WHERE name = $1 AND tag = $2")
                .bind(&release.name)
                .bind(&release.tag)
                .execute(&mut *tx)
                .await?;
            removed.push(release);
        }
        tx.commit().await?;
        Ok(removed)
    }

    // ---- host targets ----

    pub async fn create_host_target(&self, name: &str, spec: &str, env: &str) -> Result<()> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO host_targets (name, spec, env, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(name)
        .bind(spec)
        .bind(env)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("target {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn target_from_row(row: &SqliteRow) -> HostTargetRow {
        HostTargetRow {
            name: row.get("name"),
            spec: row.get("spec"),
            env: row.get("env"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }

    pub async fn host_target(&self, name: &str) -> Result<HostTargetRow> {
        sqlx::query("SELECT * FROM host_targets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Self::target_from_row(&r))
            .ok_or_else(|| StoreError::NotFound(format!("target {name}")))
    }

    pub async fn host_targets(&self) -> Result<Vec<HostTargetRow>> {
        Ok(sqlx::query("SELECT * FROM host_targets ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::target_from_row)
            .collect())
    }

    /// Replaces a target's environment (its JSON) with what `change` makes of the stored one,
    /// in one write transaction (two changes at once never lose one). `change` refusing leaves
    /// it as it was; its error is returned inside `Ok`.
    pub async fn update_host_target_env<E>(
        &self,
        name: &str,
        change: impl FnOnce(&str) -> std::result::Result<String, E>,
    ) -> Result<std::result::Result<String, E>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT env FROM host_targets WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("target {name}")))?;
        let env: String = row.get("env");
        let new = match change(&env) {
            Ok(new) => new,
            Err(e) => return Ok(Err(e)),
        };
        sqlx::query("UPDATE host_targets SET env = $1, updated_at = $2 WHERE name = $3")
            .bind(&new)
            .bind(now_ms())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(new))
    }

    pub async fn delete_host_target(&self, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM host_targets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("target {name}")));
        }
        Ok(())
    }

    /// Records what each host now runs (after a deploy or rollback), all in one transaction.
    pub async fn set_target_currents(
        &self,
        target: &str,
        currents: &[(String, String, String)],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        for (host, store_name, tag) in currents {
            sqlx::query(
                "INSERT INTO target_current (target, host, store_name, tag, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (target, host) DO UPDATE SET store_name = $3, tag = $4, updated_at = $5",
            )
            .bind(target)
            .bind(host)
            .bind(store_name)
            .bind(tag)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn target_currents(&self, target: &str) -> Result<Vec<TargetCurrent>> {
        Ok(
            sqlx::query("SELECT * FROM target_current WHERE target = $1 ORDER BY host")
                .bind(target)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| TargetCurrent {
                    target: r.get("target"),
                    host: r.get("host"),
                    store_name: r.get("store_name"),
                    tag: r.get("tag"),
                    updated_at: r.get("updated_at"),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        (dir, store)
    }

    fn release(tag: &str) -> NewStoredRelease {
        NewStoredRelease {
            name: "hello".into(),
            tag: tag.into(),
            sha256: "ab".repeat(32),
            size: 10,
            commit_sha: String::new(),
            metadata: serde_json::json!({"k": tag}),
            path: format!("/x/{tag}.tgz"),
        }
    }

    #[tokio::test]
    async fn prune_keeps_newest_latest_and_running_ones() {
        let (_dir, store) = store().await;
        for tag in ["v1", "v2", "v3", "v4"] {
            store.add_stored_release(&release(tag)).await.expect("add");
        }
        assert!(matches!(
            store.add_stored_release(&release("v2")).await,
            Err(StoreError::Conflict(_))
        ));
        store
            .create_host_target("prod", "{}", "{}")
            .await
            .expect("target");
        store
            .set_target_currents("prod", &[("h1".into(), "hello".into(), "v1".into())])
            .await
            .expect("current");
        assert!(matches!(
            store.delete_stored_release("hello", "v1").await.expect("delete"),
            StoreDelete::InUse(users) if users == vec!["prod/h1".to_string()]
        ));
        let removed = store
            .prune_stored_releases("hello", 0)
            .await
            .expect("prune");
        let tags: Vec<_> = removed.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["v3", "v2"]);
        let left: Vec<_> = store
            .stored_releases(Some("hello"))
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.tag)
            .collect();
        assert_eq!(left, ["v4", "v1"]);
        assert_eq!(
            store
                .stored_release("hello", "v4")
                .await
                .expect("get")
                .metadata,
            serde_json::json!({"k": "v4"})
        );
        // Its app destroyed: even the latest goes; what a host runs stays.
        let forgotten = store.forget_stored_releases("hello").await.expect("forget");
        let tags: Vec<_> = forgotten.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["v4"]);
        let left = store.stored_releases(Some("hello")).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].tag, "v1");
    }
}

/// One deploy of the deploy runner to a host target (a pipeline stage's host target): what
/// it deployed, how it ended, and its report (steps, each host with the release it runs) as
/// a JSON document the runner writes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetDeployRecord {
    pub id: String,
    pub target: String,
    /// 1, 2, 3... per target.
    pub number: i64,
    pub store_name: String,
    pub tag: String,
    pub user_id: String,
    /// The pipeline stage it deployed for ("" when none).
    pub stage: String,
    pub status: String,
    pub failure: String,
    pub report: serde_json::Value,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

fn target_deploy_row(r: &SqliteRow) -> TargetDeployRecord {
    let report: String = r.get("report");
    TargetDeployRecord {
        id: r.get("id"),
        target: r.get("target"),
        number: r.get("number"),
        store_name: r.get("store_name"),
        tag: r.get("tag"),
        user_id: r.get("user_id"),
        stage: r.get("stage"),
        status: r.get("status"),
        failure: r.get("failure"),
        report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
        created_at: r.get("created_at"),
        finished_at: r.get("finished_at"),
    }
}

impl Store {
    /// Records a new deploy to host target `target` (status `queued`) with its next number.
    pub async fn create_target_deploy(
        &self,
        target: &str,
        store_name: &str,
        tag: &str,
        user_id: &str,
        stage: &str,
    ) -> Result<TargetDeployRecord> {
        let mut tx = self.write_tx().await?;
        let number: i64 = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) + 1 AS n FROM target_deploys WHERE target = $1",
        )
        .bind(target)
        .fetch_one(&mut *tx)
        .await?
        .get("n");
        let id = crate::new_id();
        sqlx::query(
            "INSERT INTO target_deploys (id, target, number, store_name, tag, user_id, stage, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)",
        )
        .bind(&id)
        .bind(target)
        .bind(number)
        .bind(store_name)
        .bind(tag)
        .bind(user_id)
        .bind(stage)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM target_deploys WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(target_deploy_row(&row))
    }

    /// Writes a target deploy's status, failure and report (`finished` stamps its end).
    pub async fn update_target_deploy(
        &self,
        id: &str,
        status: &str,
        failure: &str,
        report: &serde_json::Value,
        finished: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE target_deploys SET status = $1, failure = $2, report = $3, \
             finished_at = CASE WHEN $4 THEN $5 ELSE finished_at END WHERE id = $6",
        )
        .bind(status)
        .bind(failure)
        .bind(report.to_string())
        .bind(finished)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A target's deploys, newest first (at most `limit`).
    pub async fn target_deploys(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<TargetDeployRecord>> {
        Ok(sqlx::query(
            "SELECT * FROM target_deploys WHERE target = $1 ORDER BY number DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(target_deploy_row)
        .collect())
    }

    /// At server start: target deploys a stopped server left `queued` or `running` become
    /// `interrupted` (the hosts' own state says what each runs; their locks name a dead
    /// process and are broken by the next operation).
    pub async fn interrupt_target_deploys(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE target_deploys SET status = 'interrupted', \
             failure = 'the server stopped during this deploy', finished_at = $1 \
             WHERE status IN ('queued', 'running')",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
