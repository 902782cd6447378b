//! Deploys (`slipway_api::deploys`): one row per deploy and one per step, the webhooks that
//! receive deploy reports, and the deploy target's secrets (environment for its commands).
//!
//! Statuses are stored as the text the API's enums give (`queued`, `running`, `passed`...);
//! the store does not interpret them, except that [`Store::interrupt_deploys`] turns the
//! unfinished ones (`queued`, `running`) into `interrupted` at server start. Step output is
//! bounded by the caller (64 KiB each).

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{new_id, now_ms, Result, Store, StoreError};

/// Most webhooks one app may have.
pub const MAX_DEPLOY_WEBHOOKS: i64 = 10;
/// Most deploy secrets one app may have.
pub const MAX_DEPLOY_SECRETS: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRecord {
    pub id: String,
    pub app_id: String,
    /// 1, 2, 3... per app.
    pub number: i64,
    /// JSON: what is deployed (a build's slug, a slug, a rollback).
    pub source: serde_json::Value,
    pub user_id: String,
    pub status: String,
    /// JSON: the deploy's options.
    pub options: serde_json::Value,
    /// The release that served when the deploy began.
    pub previous_version: Option<i64>,
    /// The release the deploy made.
    pub release_version: Option<i64>,
    /// The release a rollback made.
    pub rollback_version: Option<i64>,
    /// The deploy turned maintenance mode on (and must turn it off).
    pub maintenance_on: bool,
    /// Why it failed, in a sentence ("" when it did not).
    pub failure: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployStepRecord {
    pub ordinal: i64,
    pub name: String,
    pub status: String,
    pub note: String,
    pub output: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployWebhook {
    pub id: String,
    pub app_id: String,
    pub url: String,
    pub created_at: i64,
}

/// Changes to a deploy's row; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct DeployUpdate<'a> {
    pub status: Option<&'a str>,
    pub previous_version: Option<i64>,
    pub release_version: Option<i64>,
    pub rollback_version: Option<i64>,
    pub maintenance_on: Option<bool>,
    pub failure: Option<&'a str>,
    pub started: bool,
    pub finished: bool,
}

fn deploy_row(r: &SqliteRow) -> Result<DeployRecord> {
    let source: String = r.get("source");
    let options: String = r.get("options");
    let maintenance: i64 = r.get("maintenance_on");
    Ok(DeployRecord {
        id: r.get("id"),
        app_id: r.get("app_id"),
        number: r.get("number"),
        source: serde_json::from_str(&source)?,
        user_id: r.get("user_id"),
        status: r.get("status"),
        options: serde_json::from_str(&options)?,
        previous_version: r.get("previous_version"),
        release_version: r.get("release_version"),
        rollback_version: r.get("rollback_version"),
        maintenance_on: maintenance != 0,
        failure: r.get("failure"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    })
}

fn step_row(r: &SqliteRow) -> DeployStepRecord {
    DeployStepRecord {
        ordinal: r.get("ordinal"),
        name: r.get("name"),
        status: r.get("status"),
        note: r.get("note"),
        output: r.get("output"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    }
}

impl Store {
    /// Records a new deploy, `queued`, with its steps `pending`, numbered after the app's last.
    pub async fn create_deploy(
        &self,
        app_id: &str,
        source: &serde_json::Value,
        user_id: &str,
        options: &serde_json::Value,
        steps: &[&str],
    ) -> Result<DeployRecord> {
        let mut tx = self.write_tx().await?;
        let number: i64 =
            sqlx::query("SELECT COALESCE(MAX(number), 0) + 1 AS n FROM deploys WHERE app_id = $1")
                .bind(app_id)
                .fetch_one(&mut *tx)
                .await?
                .get("n");
        let id = new_id();
        sqlx::query(
            "INSERT INTO deploys (id, app_id, number, source, user_id, status, options, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7)",
        )
        .bind(&id)
        .bind(app_id)
        .bind(number)
        .bind(serde_json::to_string(source)?)
        .bind(user_id)
        .bind(serde_json::to_string(options)?)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        for (i, name) in steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO deploy_steps (deploy_id, ordinal, name, status) VALUES ($1, $2, $3, 'pending')",
            )
            .bind(&id)
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query("SELECT * FROM deploys WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let record = deploy_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn update_deploy(&self, id: &str, update: &DeployUpdate<'_>) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE deploys SET status = COALESCE($1, status), \
             previous_version = COALESCE($2, previous_version), \
             release_version = COALESCE($3, release_version), \
             rollback_version = COALESCE($4, rollback_version), \
             maintenance_on = COALESCE($5, maintenance_on), \
             failure = COALESCE($6, failure), \
             started_at = CASE WHEN $7 = 1 THEN $9 ELSE started_at END, \
             finished_at = CASE WHEN $8 = 1 THEN $9 ELSE finished_at END \
             WHERE id = $10",
        )
        .bind(update.status)
        .bind(update.previous_version)
        .bind(update.release_version)
        .bind(update.rollback_version)
        .bind(update.maintenance_on.map(i64::from))
        .bind(update.failure)
        .bind(i64::from(update.started))
        .bind(i64::from(update.finished))
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a step's status, note and output; `started`/`finished` stamp the time now.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_deploy_step(
        &self,
        deploy_id: &str,
        ordinal: i64,
        status: &str,
        note: &str,
        output: &str,
        started: bool,
        finished: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deploy_steps SET status = $1, note = $2, output = $3, \
             started_at = CASE WHEN $4 = 1 THEN $6 ELSE started_at END, \
             finished_at = CASE WHEN $5 = 1 THEN $6 ELSE finished_at END \
             WHERE deploy_id = $7 AND ordinal = $8",
        )
        .bind(status)
        .bind(note)
        .bind(output)
        .bind(i64::from(started))
        .bind(i64::from(finished))
        .bind(now_ms())
        .bind(deploy_id)
        .bind(ordinal)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A deploy of an app by id or number.
    pub async fn deploy(&self, app_id: &str, id_or_number: &str) -> Result<DeployRecord> {
        let number = id_or_number.parse::<i64>().unwrap_or(-1);
        sqlx::query("SELECT * FROM deploys WHERE app_id = $1 AND (id = $2 OR number = $3)")
            .bind(app_id)
            .bind(id_or_number)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| deploy_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("deploy {id_or_number}")))
    }

    /// An app's deploys, oldest first.
    pub async fn list_deploys(&self, app_id: &str) -> Result<Vec<DeployRecord>> {
        sqlx::query("SELECT * FROM deploys WHERE app_id = $1 ORDER BY number")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(deploy_row)
            .collect()
    }

    pub async fn deploy_steps(&self, deploy_id: &str) -> Result<Vec<DeployStepRecord>> {
        Ok(
            sqlx::query("SELECT * FROM deploy_steps WHERE deploy_id = $1 ORDER BY ordinal")
                .bind(deploy_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(step_row)
                .collect(),
        )
    }

    /// At server start: every deploy a stopped server left `queued` or `running` becomes
    /// `interrupted` (and its unfinished steps too). Returns those deploys.
    pub async fn interrupt_deploys(&self, note: &str) -> Result<Vec<DeployRecord>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query("SELECT * FROM deploys WHERE status IN ('queued', 'running')")
            .fetch_all(&mut *tx)
            .await?;
        let deploys = rows.iter().map(deploy_row).collect::<Result<Vec<_>>>()?;
        let now = now_ms();
        for d in &deploys {
            sqlx::query(
                "UPDATE deploys SET status = 'interrupted', finished_at = $1, \
                 failure = CASE WHEN failure = '' THEN $2 ELSE failure END WHERE id = $3",
            )
            .bind(now)
            .bind(note)
            .bind(&d.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE deploy_steps SET status = 'interrupted', note = $1, finished_at = $2 \
                 WHERE deploy_id = $3 AND status IN ('pending', 'running')",
            )
            .bind(note)
            .bind(now)
            .bind(&d.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deploys)
    }

    // ---- webhooks ----

    pub async fn deploy_webhooks(&self, app_id: &str) -> Result<Vec<DeployWebhook>> {
        Ok(
            sqlx::query("SELECT * FROM deploy_webhooks WHERE app_id = $1 ORDER BY created_at, id")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| DeployWebhook {
                    id: r.get("id"),
                    app_id: r.get("app_id"),
                    url: r.get("url"),
                    created_at: r.get("created_at"),
                })
                .collect(),
        )
    }

    /// Adds a webhook; `Conflict` when the app has it already or has the most it may have.
    pub async fn add_deploy_webhook(&self, app_id: &str, url: &str) -> Result<DeployWebhook> {
        let mut tx = self.write_tx().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM deploy_webhooks WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
        if count >= MAX_DEPLOY_WEBHOOKS {
            return Err(StoreError::Conflict(format!(
                "the app's {MAX_DEPLOY_WEBHOOKS}th webhook (the most an app may have)"
            )));
        }
        let hook = DeployWebhook {
            id: new_id(),
            app_id: app_id.to_string(),
            url: url.to_string(),
            created_at: now_ms(),
        };
        let done = sqlx::query(
            "INSERT INTO deploy_webhooks (id, app_id, url, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&hook.id)
        .bind(app_id)
        .bind(url)
        .bind(hook.created_at)
        .execute(&mut *tx)
        .await;
        match done {
            Err(e) if crate::is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("webhook {url}")))
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        tx.commit().await?;
        Ok(hook)
    }

    /// Removes a webhook by id or URL; `false` when there was none.
    pub async fn remove_deploy_webhook(&self, app_id: &str, id_or_url: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM deploy_webhooks WHERE app_id = $1 AND (id = $2 OR url = $2)")
                .bind(app_id)
                .bind(id_or_url)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- deploy secrets ----

    /// The app's deploy secrets (name -> value).
    pub async fn deploy_secrets(&self, app_id: &str) -> Result<BTreeMap<String, String>> {
        Ok(
            sqlx::query("SELECT name, value FROM deploy_secrets WHERE app_id = $1")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| (r.get("name"), r.get("value")))
                .collect(),
        )
    }

    /// Sets (`Some`) and removes (`None`) deploy secrets, all or nothing.
    pub async fn change_deploy_secrets(
        &self,
        app_id: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        for (name, value) in changes {
            match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO deploy_secrets (app_id, name, value, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (app_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    )
                    .bind(app_id)
                    .bind(name)
                    .bind(v)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM deploy_secrets WHERE app_id = $1 AND name = $2")
                        .bind(app_id)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM deploy_secrets WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
        if count > MAX_DEPLOY_SECRETS {
            return Err(StoreError::Conflict(format!(
                "more than {MAX_DEPLOY_SECRETS} deploy secrets"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a release that never finished its release phase (a deploy interrupted by a
    /// stopped server) as failed, so it can never become current.
    pub async fn fail_pending_release(&self, app_id: &str, version: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE releases SET status = 'failed', updated_at = $1 \
             WHERE app_id = $2 AND version = $3 AND status = 'pending'",
        )
        .bind(now_ms())
        .bind(app_id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
