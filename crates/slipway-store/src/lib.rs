//! slipway's durable state in SQLite.
//!
//! One [`Store`] per server. Every state change that must be all-or-nothing (a deploy creates a
//! release *and* updates the formation) is one transaction. Times are stored as milliseconds
//! since the epoch (BIGINT), JSON documents as TEXT, booleans as INTEGER, so the schema carries
//! over to PostgreSQL later.

mod apps;
mod buildpacks;
mod config;
mod deploys;
mod formation;
mod log_drains;
mod model;
mod pipelines;
pub mod release_store;
mod releases;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

pub use apps::AppFootprint;
pub use config::{config_bytes, config_description, ConfigOutcome};
pub use deploys::{
    DeployRecord, DeployStepRecord, DeployUpdate, DeployWebhook, MAX_DEPLOY_SECRETS,
    MAX_DEPLOY_WEBHOOKS,
};
pub use formation::FormationUpdate;
pub use log_drains::{LogDrain, MAX_LOG_DRAINS};
pub use model::*;
pub use pipelines::{
    Pipeline, PipelineBuild, PipelineBuildStatus, PipelineDeploy, PipelineDeployStatus, Stage,
    StageStrategy, TargetRow,
};
pub use releases::{ReleaseStatus, RollbackRefusal};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("state database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt JSON in state database: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        // From the path itself, never a URL: a data directory may hold `?` or `%`.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(include_str!("schema.sql"))
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock at the start, so a
    /// transaction that reads and then writes never has to upgrade its lock (which fails with
    /// SQLITE_BUSY under concurrent writers instead of waiting); writers queue on the busy timeout.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- users and tokens ----

    pub async fn ensure_user(&self, email: &str) -> Result<User> {
        if let Some(row) = sqlx::query("SELECT * FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(User::from_row(&row));
        }
        let user = User {
            id: new_id(),
            email: email.to_string(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO users (id, email, created_at) VALUES ($1, $2, $3)")
            .bind(&user.id)
            .bind(&user.email)
            .bind(user.created_at)
            .execute(&self.pool)
            .await?;
        Ok(user)
    }

    pub async fn get_user(&self, id: &str) -> Result<User> {
        sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| User::from_row(&r))
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    /// Records a token by its SHA-256 (the token itself is never stored).
    pub async fn add_token(
        &self,
        user_id: &str,
        sha256_hex: &str,
        description: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, user_id, sha256, description, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(sha256_hex)
        .bind(description)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn user_by_token_hash(&self, sha256_hex: &str) -> Result<Option<User>> {
        Ok(sqlx::query(
            "SELECT users.* FROM users JOIN tokens ON tokens.user_id = users.id WHERE tokens.sha256 = $1",
        )
        .bind(sha256_hex)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| User::from_row(&r)))
    }

    pub async fn token_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM tokens")
            .fetch_one(&self.pool)
            .await?
            .get("n"))
    }

    // ---- apps ----

    pub async fn create_app(&self, name: &str, owner_id: &str) -> Result<App> {
        let now = now_ms();
        let id = new_id();
        let result = sqlx::query(
            "INSERT INTO apps (id, name, owner_id, maintenance, config, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, '{}', $4, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(owner_id)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!("app {name}"))),
            Err(e) => Err(e.into()),
            Ok(_) => self.app(&id).await,
        }
    }

    /// Finds an app by name or id.
    pub async fn find_app(&self, name_or_id: &str) -> Result<Option<App>> {
        let row = sqlx::query("SELECT * FROM apps WHERE name = $1 OR id = $1")
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| App::from_row(&r)).transpose()
    }

    pub async fn app(&self, name_or_id: &str) -> Result<App> {
        self.find_app(name_or_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("app {name_or_id}")))
    }

    pub async fn list_apps(&self) -> Result<Vec<App>> {
        sqlx::query("SELECT * FROM apps ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(App::from_row)
            .collect()
    }

    pub async fn set_maintenance(&self, id: &str, on: bool) -> Result<App> {
        sqlx::query("UPDATE apps SET maintenance = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(on))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.app(id).await
    }

    /// Deletes an app and everything that belongs to it (builds, slugs, releases, formation, dynos).
    pub async fn delete_app(&self, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM apps WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("app {id}")));
        }
        Ok(())
    }

    // ---- builds and slugs ----

    pub async fn create_build(&self, app_id: &str, user_id: &str, commit: &str) -> Result<Build> {
        let now = now_ms();
        let build = Build {
            id: new_id(),
            app_id: app_id.to_string(),
            user_id: user_id.to_string(),
            status: BuildStatus::Pending,
            commit_sha: commit.to_string(),
            slug_id: None,
            release_id: None,
            output: String::new(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO builds (id, app_id, user_id, status, commit_sha, output, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, '', $6, $6)",
        )
        .bind(&build.id)
        .bind(app_id)
        .bind(user_id)
        .bind(build.status.as_str())
        .bind(commit)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(build)
    }

    pub async fn finish_build(
        &self,
        build_id: &str,
        status: BuildStatus,
        slug_id: Option<&str>,
        release_id: Option<&str>,
        output: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET status = $1, slug_id = $2, release_id = $3, output = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(slug_id)
        .bind(release_id)
        .bind(output)
        .bind(now_ms())
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks builds still `pending` (a server that stopped mid-build left them) as failed,
    /// saying why in their output. Returns how many there were.
    pub async fn fail_interrupted_builds(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE builds SET status = 'failed', updated_at = $1, \
             output = output || $2 WHERE status = 'pending'",
        )
        .bind(now_ms())
        .bind(" !     The build was interrupted: the server stopped while it ran. Push again.\n")
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn list_builds(&self, app_id: &str) -> Result<Vec<Build>> {
        sqlx::query("SELECT * FROM builds WHERE app_id = $1 ORDER BY created_at, id")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Build::from_row)
            .collect()
    }

    pub async fn build(&self, app_id: &str, build_id: &str) -> Result<Build> {
        sqlx::query("SELECT * FROM builds WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(build_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Build::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("build {build_id}")))
    }

    pub async fn create_slug(&self, slug: &NewSlug) -> Result<Slug> {
        let slug = Slug {
            id: new_id(),
            app_id: slug.app_id.clone(),
            commit_sha: slug.commit_sha.clone(),
            checksum: slug.checksum.clone(),
            size: slug.size,
            path: slug.path.clone(),
            process_types: slug.process_types.clone(),
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO slugs (id, app_id, commit_sha, checksum, size, path, process_types, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&slug.id)
        .bind(&slug.app_id)
        .bind(&slug.commit_sha)
        .bind(&slug.checksum)
        .bind(slug.size)
        .bind(&slug.path)
        .bind(serde_json::to_string(&slug.process_types)?)
        .bind(slug.created_at)
        .execute(&self.pool)
        .await?;
        Ok(slug)
    }

    /// Forgets a slug (its file is the caller's to remove).
    pub async fn delete_slug(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM slugs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every slug's file path, to tell files the store still knows from leftovers.
    pub async fn slug_paths(&self) -> Result<Vec<String>> {
        Ok(sqlx::query("SELECT path FROM slugs")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get("path"))
            .collect())
    }

    /// Slugs that may be collected: created before `created_before` (ms since the epoch; newer
    /// ones may belong to a deploy in progress), used by none of their app's newest
    /// `keep_releases` releases nor by its current release.
    pub async fn collectable_slugs(
        &self,
        keep_releases: i64,
        created_before: i64,
    ) -> Result<Vec<Slug>> {
        sqlx::query(
            "SELECT s.* FROM slugs s WHERE s.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.slug_id = s.id AND r.version > \
                 (SELECT COALESCE(MAX(version), 0) FROM releases m WHERE m.app_id = s.app_id) - $2) \
             AND s.id NOT IN (SELECT c.slug_id FROM releases c WHERE c.app_id = s.app_id \
                 AND c.status = 'succeeded' AND c.slug_id IS NOT NULL ORDER BY c.version DESC LIMIT 1)",
        )
        .bind(created_before)
        .bind(keep_releases)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Slug::from_row)
        .collect()
    }

    pub async fn slug(&self, id: &str) -> Result<Slug> {
        sqlx::query("SELECT * FROM slugs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Slug::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("slug {id}")))
    }

    // ---- releases and formation ----

    /// Creates the next release of `app_id` with `slug` and the app's current config, and in the
    /// same transaction brings the formation in line with the slug's process types: new types
    /// appear (web at 1 the first time it appears, others at 0), vanished types go.
    pub async fn deploy_release(
        &self,
        app_id: &str,
        slug: &Slug,
        description: &str,
        user_id: &str,
    ) -> Result<Release> {
        self.deploy_release_with_status(
            app_id,
            slug,
            description,
            user_id,
            ReleaseStatus::Succeeded,
        )
        .await
    }

    /// [`Store::deploy_release`], or with `Pending` (a release phase must pass first): the
    /// release is created and the formation left alone until
    /// [`Store::set_release_status`] makes it succeed.
    pub async fn deploy_release_with_status(
        &self,
        app_id: &str,
        slug: &Slug,
        description: &str,
        user_id: &str,
        status: ReleaseStatus,
    ) -> Result<Release> {
        let mut tx = self.write_tx().await?;
        let config: String = sqlx::query("SELECT config FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("app {app_id}")))?
            .get("config");
        let release = insert_release(
            &mut tx,
            app_id,
            description,
            Some(&slug.id),
            &config,
            user_id,
            status,
        )
        .await?;
        if status == ReleaseStatus::Pending {
            tx.commit().await?;
            return Ok(release);
        }
        releases::shape_formation(&mut tx, app_id, &slug.process_types).await?;
        tx.commit().await?;
        Ok(release)
    }

    pub async fn list_releases(&self, app_id: &str) -> Result<Vec<Release>> {
        sqlx::query("SELECT * FROM releases WHERE app_id = $1 ORDER BY version")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Release::from_row)
            .collect()
    }

    /// A release by version number or id.
    pub async fn release(&self, app_id: &str, version_or_id: &str) -> Result<Release> {
        let version = version_or_id
            .trim_start_matches('v')
            .parse::<i64>()
            .unwrap_or(-1);
        sqlx::query("SELECT * FROM releases WHERE app_id = $1 AND (version = $2 OR id = $3)")
            .bind(app_id)
            .bind(version)
            .bind(version_or_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Release::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("release {version_or_id}")))
    }

    /// The release that serves traffic: the newest one that succeeded.
    pub async fn current_release(&self, app_id: &str) -> Result<Option<Release>> {
        sqlx::query(
            "SELECT * FROM releases WHERE app_id = $1 AND status = 'succeeded' ORDER BY version DESC LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| Release::from_row(&r))
        .transpose()
    }

    pub async fn formation(&self, app_id: &str) -> Result<Vec<Formation>> {
        Ok(
            sqlx::query("SELECT * FROM formation WHERE app_id = $1 ORDER BY process_type")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(Formation::from_row)
                .collect(),
        )
    }

    /// Sets the quantity of process types; every type must exist. All or nothing.
    pub async fn scale(
        &self,
        app_id: &str,
        quantities: &BTreeMap<String, i64>,
    ) -> Result<Vec<Formation>> {
        let mut tx = self.write_tx().await?;
        for (ptype, quantity) in quantities {
            let done = sqlx::query(
                "UPDATE formation SET quantity = $1, updated_at = $2 WHERE app_id = $3 AND process_type = $4",
            )
            .bind(quantity)
            .bind(now_ms())
            .bind(app_id)
            .bind(ptype)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("process type {ptype}")));
            }
        }
        tx.commit().await?;
        self.formation(app_id).await
    }

    // ---- dynos (the dyno manager's record, so dynos can be found again after a restart) ----

    pub async fn upsert_dyno(&self, dyno: &DynoRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO dynos (id, app_id, name, process_type, command, release_version, state, pid, port, dir, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET command = excluded.command, \
             release_version = excluded.release_version, state = excluded.state, pid = excluded.pid, \
             port = excluded.port, dir = excluded.dir, created_at = excluded.created_at, updated_at = excluded.updated_at",
        )
        .bind(&dyno.id)
        .bind(&dyno.app_id)
        .bind(&dyno.name)
        .bind(&dyno.process_type)
        .bind(&dyno.command)
        .bind(dyno.release_version)
        .bind(dyno.state.as_str())
        .bind(dyno.pid)
        .bind(dyno.port)
        .bind(&dyno.dir)
        .bind(dyno.created_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_dyno(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM dynos WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn all_dynos(&self) -> Result<Vec<DynoRecord>> {
        Ok(sqlx::query("SELECT * FROM dynos ORDER BY app_id, name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(DynoRecord::from_row)
            .collect())
    }
}

/// Appends the app's next release (version = last + 1, inside the caller's IMMEDIATE
/// transaction, so versions are gapless under concurrent writers).
pub(crate) async fn insert_release(
    tx: &mut Transaction<'_, Sqlite>,
    app_id: &str,
    description: &str,
    slug_id: Option<&str>,
    config: &str,
    user_id: &str,
    status: ReleaseStatus,
) -> Result<Release> {
    let version: i64 =
        sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM releases WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut **tx)
            .await?
            .get("v");
    let now = now_ms();
    let id = new_id();
    sqlx::query(
        "INSERT INTO releases (id, app_id, version, description, slug_id, config, status, user_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&id)
    .bind(app_id)
    .bind(version)
    .bind(description)
    .bind(slug_id)
    .bind(config)
    .bind(status.as_str())
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE apps SET released_at = $1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(app_id)
        .execute(&mut **tx)
        .await?;
    let row: SqliteRow = sqlx::query("SELECT * FROM releases WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut **tx)
        .await?;
    Release::from_row(&row)
}

#[cfg(test)]
mod tests;
