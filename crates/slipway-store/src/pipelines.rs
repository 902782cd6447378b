//! Pipelines (issue 10): a pipeline's ordered stages, each stage's strategy, targets and secret
//! environment, the pipeline's builds (a slug built and tested once per pushed commit) and the
//! deploys of those builds to stages.
//!
//! Stage environments hold secrets: they are stored here (the state database is the server's
//! own, like config vars) and the API never answers with their values.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{is_unique_violation, new_id, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

impl Pipeline {
    fn from_row(r: &SqliteRow) -> Self {
        Self {
            id: r.get("id"),
            name: r.get("name"),
            created_at: r.get("created_at"),
        }
    }
}

/// How builds reach a stage by themselves (Semaphore's strategies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStrategy {
    /// Only explicit deploys, promotions and `#stage` commit messages.
    Manual,
    /// Every passed build of this branch deploys (newest wins).
    Automatic { branch: String },
}

impl StageStrategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageStrategy::Manual => "manual",
            StageStrategy::Automatic { .. } => "automatic",
        }
    }

    pub fn branch(&self) -> Option<&str> {
        match self {
            StageStrategy::Manual => None,
            StageStrategy::Automatic { branch } => Some(branch),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub id: String,
    pub pipeline_id: String,
    pub name: String,
    pub position: i64,
    pub strategy: StageStrategy,
    pub watch_secs: i64,
    /// Secret values: never answered by the API.
    pub env: BTreeMap<String, String>,
    /// The build the stage runs (the last one deployed to it).
    pub current_build_id: Option<String>,
}

impl Stage {
    fn from_row(r: &SqliteRow) -> Result<Self> {
        let env: String = r.get("env");
        let strategy = match (
            r.get::<String, _>("strategy").as_str(),
            r.get::<Option<String>, _>("branch"),
        ) {
            ("automatic", Some(branch)) => StageStrategy::Automatic { branch },
            _ => StageStrategy::Manual,
        };
        Ok(Self {
            id: r.get("id"),
            pipeline_id: r.get("pipeline_id"),
            name: r.get("name"),
            position: r.get("position"),
            strategy,
            watch_secs: r.get("watch_secs"),
            env: serde_json::from_str(&env)?,
            current_build_id: r.get("current_build_id"),
        })
    }
}

/// What a stage deploys to: an app on this server (`kind` `app`: `app_id`, `app_name`) or a
/// host target of slipway-hosts (`kind` `host`: `host_target` is its name, the app fields are
/// empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    pub stage_id: String,
    pub kind: String,
    pub app_id: String,
    pub app_name: String,
    pub host_target: Option<String>,
}

/// A pipeline build's state: `pending` (queued), `building`, `testing`, then `passed` or
/// `failed` (with a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineBuildStatus {
    Pending,
    Building,
    Testing,
    Passed,
    Failed,
}

impl PipelineBuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Testing => "testing",
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "building" => Self::Building,
            "testing" => Self::Testing,
            "passed" => Self::Passed,
            _ => Self::Failed,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Passed | Self::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineBuild {
    pub id: String,
    pub pipeline_id: String,
    pub number: i64,
    pub branch: String,
    pub commit_sha: String,
    pub message: String,
    pub user_id: String,
    pub status: PipelineBuildStatus,
    /// Why it failed, or a notice (no test script).
    pub reason: String,
    pub slug_path: Option<String>,
    pub slug_checksum: Option<String>,
    pub slug_size: Option<i64>,
    pub process_types: BTreeMap<String, String>,
    pub output: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub built_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl PipelineBuild {
    fn from_row(r: &SqliteRow) -> Result<Self> {
        let types: String = r.get("process_types");
        Ok(Self {
            id: r.get("id"),
            pipeline_id: r.get("pipeline_id"),
            number: r.get("number"),
            branch: r.get("branch"),
            commit_sha: r.get("commit_sha"),
            message: r.get("message"),
            user_id: r.get("user_id"),
            status: PipelineBuildStatus::parse(&r.get::<String, _>("status")),
            reason: r.get("reason"),
            slug_path: r.get("slug_path"),
            slug_checksum: r.get("slug_checksum"),
            slug_size: r.get("slug_size"),
            process_types: serde_json::from_str(&types)?,
            output: r.get("output"),
            created_at: r.get("created_at"),
            started_at: r.get("started_at"),
            built_at: r.get("built_at"),
            finished_at: r.get("finished_at"),
        })
    }
}

/// A deploy of a build to a stage: `queued`, `deploying`, then `succeeded` or `failed`; or
/// `superseded` (a newer build took its place in the queue) or `skipped` (the stage already
/// runs a newer build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineDeployStatus {
    Queued,
    Deploying,
    Succeeded,
    Failed,
    Superseded,
    Skipped,
}

impl PipelineDeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deploying => "deploying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "deploying" => Self::Deploying,
            "succeeded" => Self::Succeeded,
            "superseded" => Self::Superseded,
            "skipped" => Self::Skipped,
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineDeploy {
    pub id: String,
    pub pipeline_id: String,
    pub build_id: String,
    pub build_number: i64,
    pub stage_id: String,
    pub stage_name: String,
    pub origin: String,
    pub status: PipelineDeployStatus,
    pub detail: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl PipelineDeploy {
    fn from_row(r: &SqliteRow) -> Self {
        Self {
            id: r.get("id"),
            pipeline_id: r.get("pipeline_id"),
            build_id: r.get("build_id"),
            build_number: r.get("build_number"),
            stage_id: r.get("stage_id"),
            stage_name: r.get("stage_name"),
            origin: r.get("origin"),
            status: PipelineDeployStatus::parse(&r.get::<String, _>("status")),
            detail: r.get("detail"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// The deploys' columns with their build's number and stage's name (a macro: SQL strings are
/// literals).
macro_rules! deploy_select {
    ($rest:literal) => {
        concat!(
            "SELECT d.*, b.number AS build_number, s.name AS stage_name ",
            "FROM pipeline_deploys d JOIN pipeline_builds b ON b.id = d.build_id ",
            "JOIN pipeline_stages s ON s.id = d.stage_id ",
            $rest
        )
    };
}

/// `INSERT INTO <$into>` a stage's target (`$1` the stage, `$3` now), its `created_at` last:
/// after every target the stage has, apps and host targets alike, even within one millisecond.
/// `$into` names the table and columns and opens `VALUES (` up to `created_at`'s place.
macro_rules! next_target_insert {
    ($into:literal) => {
        concat!(
            "INSERT INTO ",
            $into,
            "MAX($3, COALESCE((SELECT MAX(created_at) FROM (",
            "SELECT created_at FROM pipeline_targets WHERE stage_id = $1 UNION ALL ",
            "SELECT created_at FROM pipeline_host_targets WHERE stage_id = $1)), 0) + 1))"
        )
    };
}

/// The outcome of adding a stage's target: the same target twice is a conflict.
fn stage_target_added(
    done: std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
) -> Result<()> {
    match done {
        Err(e) if is_unique_violation(&e) => {
            Err(StoreError::Conflict("this target of the stage".into()))
        }
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

impl Store {
    pub async fn create_pipeline(&self, name: &str) -> Result<Pipeline> {
        let now = now_ms();
        let id = new_id();
        let done = sqlx::query(
            "INSERT INTO pipelines (id, name, next_build, created_at, updated_at) VALUES ($1, $2, 1, $3, $3)",
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("pipeline {name}")))
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(Pipeline {
                id,
                name: name.to_string(),
                created_at: now,
            }),
        }
    }

    /// A pipeline by name or id.
    pub async fn find_pipeline(&self, name_or_id: &str) -> Result<Option<Pipeline>> {
        Ok(
            sqlx::query("SELECT * FROM pipelines WHERE name = $1 OR id = $1")
                .bind(name_or_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Pipeline::from_row(&r)),
        )
    }

    pub async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        Ok(sqlx::query("SELECT * FROM pipelines ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Pipeline::from_row)
            .collect())
    }

    /// Deletes a pipeline with its stages, targets (not the apps), builds and deploys.
    pub async fn delete_pipeline(&self, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM pipelines WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("pipeline {id}")));
        }
        Ok(())
    }

    /// A pipeline's stages in order.
    pub async fn stages(&self, pipeline_id: &str) -> Result<Vec<Stage>> {
        sqlx::query("SELECT * FROM pipeline_stages WHERE pipeline_id = $1 ORDER BY position")
            .bind(pipeline_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Stage::from_row)
            .collect()
    }

    pub async fn stage(&self, stage_id: &str) -> Result<Stage> {
        sqlx::query("SELECT * FROM pipeline_stages WHERE id = $1")
            .bind(stage_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Stage::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("stage {stage_id}")))
    }

    /// Adds a stage at the end, or right after `after` (a stage name, which must exist).
    pub async fn add_stage(
        &self,
        pipeline_id: &str,
        name: &str,
        after: Option<&str>,
        strategy: &StageStrategy,
        watch_secs: i64,
    ) -> Result<Stage> {
        let mut tx = self.write_tx().await?;
        let position: i64 = match after {
            Some(after) => {
                let at: i64 = sqlx::query(
                    "SELECT position FROM pipeline_stages WHERE pipeline_id = $1 AND name = $2",
                )
                .bind(pipeline_id)
                .bind(after)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("stage {after}")))?
                .get("position");
                // Two steps, so the shifted positions never collide mid-update.
                sqlx::query(
                    "UPDATE pipeline_stages SET position = -position - 1 WHERE pipeline_id = $1 AND position > $2",
                )
                .bind(pipeline_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE pipeline_stages SET position = -position WHERE pipeline_id = $1 AND position < 0",
                )
                .bind(pipeline_id)
                .execute(&mut *tx)
                .await?;
                at + 1
            }
            None => sqlx::query(
                "SELECT COALESCE(MAX(position), 0) + 1 AS p FROM pipeline_stages WHERE pipeline_id = $1",
            )
            .bind(pipeline_id)
            .fetch_one(&mut *tx)
            .await?
            .get("p"),
        };
        let id = new_id();
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO pipeline_stages (id, pipeline_id, name, position, strategy, branch, watch_secs, env, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', $8, $8)",
        )
        .bind(&id)
        .bind(pipeline_id)
        .bind(name)
        .bind(position)
        .bind(strategy.as_str())
        .bind(strategy.branch())
        .bind(watch_secs)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("stage {name}")))
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        tx.commit().await?;
        self.stage(&id).await
    }

    /// Changes a stage's strategy.
    pub async fn set_stage_strategy(&self, stage_id: &str, strategy: &StageStrategy) -> Result<()> {
        sqlx::query(
            "UPDATE pipeline_stages SET strategy = $1, branch = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(strategy.as_str())
        .bind(strategy.branch())
        .bind(now_ms())
        .bind(stage_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_stage(&self, stage_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM pipeline_stages WHERE id = $1")
            .bind(stage_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets (`Some`) and unsets (`None`) a stage's environment variables in one change.
    pub async fn update_stage_env(
        &self,
        stage_id: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Stage> {
        let mut tx = self.write_tx().await?;
        let env: String = sqlx::query("SELECT env FROM pipeline_stages WHERE id = $1")
            .bind(stage_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("stage {stage_id}")))?
            .get("env");
        let mut env: BTreeMap<String, String> = serde_json::from_str(&env)?;
        for (key, value) in changes {
            match value {
                Some(v) => env.insert(key.clone(), v.clone()),
                None => env.remove(key),
            };
        }
        sqlx::query("UPDATE pipeline_stages SET env = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(&env)?)
            .bind(now_ms())
            .bind(stage_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.stage(stage_id).await
    }

    /// Records the build a stage now runs.
    pub async fn set_stage_current(&self, stage_id: &str, build_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE pipeline_stages SET current_build_id = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(build_id)
        .bind(now_ms())
        .bind(stage_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Targets of a stage are listed in the order they were added: each one's `created_at` is
    /// after every other target's of the stage, even within one millisecond.
    pub async fn add_stage_target(&self, stage_id: &str, app_id: &str) -> Result<()> {
        let done = sqlx::query(next_target_insert!(
            "pipeline_targets (stage_id, kind, app_id, created_at) VALUES ($1, 'app', $2, "
        ))
        .bind(stage_id)
        .bind(app_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        stage_target_added(done)
    }

    pub async fn remove_stage_target(&self, stage_id: &str, app_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM pipeline_targets WHERE stage_id = $1 AND app_id = $2")
            .bind(stage_id)
            .bind(app_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Makes host target `target` (a `host_targets` row) a target of the stage.
    pub async fn add_stage_host_target(&self, stage_id: &str, target: &str) -> Result<()> {
        let done = sqlx::query(next_target_insert!(
            "pipeline_host_targets (stage_id, target, created_at) VALUES ($1, $2, "
        ))
        .bind(stage_id)
        .bind(target)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        stage_target_added(done)
    }

    pub async fn remove_stage_host_target(&self, stage_id: &str, target: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM pipeline_host_targets WHERE stage_id = $1 AND target = $2")
                .bind(stage_id)
                .bind(target)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A stage's targets (apps and host targets), in the order they were added.
    pub async fn stage_targets(&self, stage_id: &str) -> Result<Vec<TargetRow>> {
        Ok(sqlx::query(
            "SELECT * FROM ( \
               SELECT t.stage_id, t.kind, t.app_id, a.name AS app_name, NULL AS host_target, \
                      t.created_at, a.name AS sort_name \
               FROM pipeline_targets t JOIN apps a ON a.id = t.app_id WHERE t.stage_id = $1 \
             UNION ALL \
               SELECT h.stage_id, 'host' AS kind, '' AS app_id, '' AS app_name, \
                      h.target AS host_target, h.created_at, h.target AS sort_name \
               FROM pipeline_host_targets h WHERE h.stage_id = $1 \
             ) ORDER BY created_at, sort_name",
        )
        .bind(stage_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| TargetRow {
            stage_id: r.get("stage_id"),
            kind: r.get("kind"),
            app_id: r.get("app_id"),
            app_name: r.get("app_name"),
            host_target: r.get("host_target"),
        })
        .collect())
    }

    /// Records a new build (status `pending`) with the pipeline's next number.
    pub async fn create_pipeline_build(
        &self,
        pipeline_id: &str,
        branch: &str,
        commit_sha: &str,
        message: &str,
        user_id: &str,
    ) -> Result<PipelineBuild> {
        let mut tx = self.write_tx().await?;
        let number: i64 = sqlx::query("SELECT next_build FROM pipelines WHERE id = $1")
            .bind(pipeline_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("pipeline {pipeline_id}")))?
            .get("next_build");
        sqlx::query("UPDATE pipelines SET next_build = next_build + 1 WHERE id = $1")
            .bind(pipeline_id)
            .execute(&mut *tx)
            .await?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO pipeline_builds (id, pipeline_id, number, branch, commit_sha, message, user_id, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
        )
        .bind(&id)
        .bind(pipeline_id)
        .bind(number)
        .bind(branch)
        .bind(commit_sha)
        .bind(message)
        .bind(user_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.pipeline_build_by_id(&id).await
    }

    pub async fn pipeline_build_by_id(&self, id: &str) -> Result<PipelineBuild> {
        sqlx::query("SELECT * FROM pipeline_builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| PipelineBuild::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("build {id}")))
    }

    /// A build of a pipeline by id or number.
    pub async fn pipeline_build(
        &self,
        pipeline_id: &str,
        id_or_number: &str,
    ) -> Result<PipelineBuild> {
        let number = id_or_number
            .trim_start_matches('#')
            .parse::<i64>()
            .unwrap_or(-1);
        sqlx::query(
            "SELECT * FROM pipeline_builds WHERE pipeline_id = $1 AND (id = $2 OR number = $3)",
        )
        .bind(pipeline_id)
        .bind(id_or_number)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| PipelineBuild::from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("build {id_or_number}")))
    }

    /// The build of `commit` in a pipeline, if it was built already.
    pub async fn pipeline_build_of_commit(
        &self,
        pipeline_id: &str,
        commit_sha: &str,
    ) -> Result<Option<PipelineBuild>> {
        sqlx::query("SELECT * FROM pipeline_builds WHERE pipeline_id = $1 AND commit_sha = $2 ORDER BY number LIMIT 1")
            .bind(pipeline_id)
            .bind(commit_sha)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| PipelineBuild::from_row(&r))
            .transpose()
    }

    /// A pipeline's builds, oldest first.
    pub async fn pipeline_builds(&self, pipeline_id: &str) -> Result<Vec<PipelineBuild>> {
        sqlx::query("SELECT * FROM pipeline_builds WHERE pipeline_id = $1 ORDER BY number")
            .bind(pipeline_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(PipelineBuild::from_row)
            .collect()
    }

    /// Moves a build to `status` (not finished: use [`Store::finish_pipeline_build`]).
    pub async fn set_pipeline_build_status(
        &self,
        id: &str,
        status: PipelineBuildStatus,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE pipeline_builds SET status = $1, started_at = COALESCE(started_at, $2) WHERE id = $3",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the slug a build made.
    pub async fn set_pipeline_build_slug(
        &self,
        id: &str,
        path: &str,
        checksum: &str,
        size: i64,
        process_types: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE pipeline_builds SET slug_path = $1, slug_checksum = $2, slug_size = $3, process_types = $4, built_at = $5 WHERE id = $6",
        )
        .bind(path)
        .bind(checksum)
        .bind(size)
        .bind(serde_json::to_string(process_types)?)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn finish_pipeline_build(
        &self,
        id: &str,
        status: PipelineBuildStatus,
        reason: &str,
        output: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE pipeline_builds SET status = $1, reason = $2, output = $3, finished_at = $4 WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(output)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At start: builds a stopped server left unfinished failed, and their deploys too.
    pub async fn fail_interrupted_pipeline_work(&self) -> Result<u64> {
        let now = now_ms();
        let builds = sqlx::query(
            "UPDATE pipeline_builds SET status = 'failed', reason = 'interrupted: the server stopped during the build', finished_at = $1 \
             WHERE status IN ('pending', 'building', 'testing')",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE pipeline_deploys SET status = 'failed', detail = 'interrupted: the server stopped during the deploy', updated_at = $1 \
             WHERE status IN ('queued', 'deploying')",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(builds.rows_affected())
    }

    pub async fn create_pipeline_deploy(
        &self,
        pipeline_id: &str,
        build_id: &str,
        stage_id: &str,
        origin: &str,
        status: PipelineDeployStatus,
        detail: &str,
    ) -> Result<String> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO pipeline_deploys (id, pipeline_id, build_id, stage_id, origin, status, detail, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&id)
        .bind(pipeline_id)
        .bind(build_id)
        .bind(stage_id)
        .bind(origin)
        .bind(status.as_str())
        .bind(detail)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn update_pipeline_deploy(
        &self,
        id: &str,
        status: PipelineDeployStatus,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE pipeline_deploys SET status = $1, detail = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(detail)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A pipeline's deploys, oldest first.
    pub async fn pipeline_deploys(&self, pipeline_id: &str) -> Result<Vec<PipelineDeploy>> {
        Ok(sqlx::query(deploy_select!(
            "WHERE d.pipeline_id = $1 ORDER BY d.created_at, b.number"
        ))
        .bind(pipeline_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(PipelineDeploy::from_row)
        .collect())
    }

    /// The deploys of one build, oldest first.
    pub async fn build_deploys(&self, build_id: &str) -> Result<Vec<PipelineDeploy>> {
        Ok(sqlx::query(deploy_select!(
            "WHERE d.build_id = $1 ORDER BY d.created_at"
        ))
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(PipelineDeploy::from_row)
        .collect())
    }
}
