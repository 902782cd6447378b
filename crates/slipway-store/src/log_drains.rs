//! Log drains (`drains:add`, Platform API `log-drains`): where an app's log lines are sent
//! besides its history. The URL is checked by the caller (`slipway_logs::DrainTarget`); here it
//! is stored once per app, with the drain's token (`d.<uuid>`, sent as `Logplex-Drain-Token`).

use sqlx::Row;

use crate::{now_ms, Result, Store, StoreError};

/// Most drains one app may have.
pub const MAX_LOG_DRAINS: i64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDrain {
    pub id: String,
    pub app_id: String,
    pub url: String,
    pub token: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn row(r: &sqlx::sqlite::SqliteRow) -> LogDrain {
    LogDrain {
        id: r.get("id"),
        app_id: r.get("app_id"),
        url: r.get("url"),
        token: r.get("token"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

impl Store {
    /// The app's drains, oldest first.
    pub async fn log_drains(&self, app_id: &str) -> Result<Vec<LogDrain>> {
        Ok(sqlx::query("SELECT id, app_id, url, token, created_at, updated_at FROM log_drains WHERE app_id = $1 ORDER BY created_at, id")
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect())
    }

    /// Every app's drains (to start them when the server starts).
    pub async fn all_log_drains(&self) -> Result<Vec<LogDrain>> {
        Ok(sqlx::query("SELECT id, app_id, url, token, created_at, updated_at FROM log_drains ORDER BY app_id, created_at, id")
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(row)
        .collect())
    }

    /// Adds a drain. `Conflict` if the app already drains to this URL or has
    /// [`MAX_LOG_DRAINS`]; `NotFound` if the app is gone.
    pub async fn add_log_drain(&self, app_id: &str, url: &str) -> Result<LogDrain> {
        let mut tx = self.write_tx().await?;
        let app: Option<String> = sqlx::query("SELECT id FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("id"));
        if app.is_none() {
            return Err(StoreError::NotFound(format!("app {app_id}")));
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM log_drains WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
        if count >= MAX_LOG_DRAINS {
            return Err(StoreError::Conflict(format!(
                "the app's {MAX_LOG_DRAINS}th log drain (the most an app may have)"
            )));
        }
        let exists = sqlx::query("SELECT id FROM log_drains WHERE app_id = $1 AND url = $2")
            .bind(app_id)
            .bind(url)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict("a log drain with this URL".into()));
        }
        let now = now_ms();
        let drain = LogDrain {
            id: uuid::Uuid::new_v4().to_string(),
            app_id: app_id.to_string(),
            url: url.to_string(),
            token: format!("d.{}", uuid::Uuid::new_v4()),
            created_at: now,
            updated_at: now,
        };
        sqlx::query("INSERT INTO log_drains (id, app_id, url, token, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&drain.id)
        .bind(&drain.app_id)
        .bind(&drain.url)
        .bind(&drain.token)
        .bind(drain.created_at)
        .bind(drain.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(drain)
    }

    /// Removes the drain with this id, or else with this URL; `NotFound` if neither.
    pub async fn remove_log_drain(&self, app_id: &str, id_or_url: &str) -> Result<LogDrain> {
        let mut tx = self.write_tx().await?;
        let found = sqlx::query("SELECT id, app_id, url, token, created_at, updated_at FROM log_drains WHERE app_id = $1 AND (id = $2 OR url = $2)")
        .bind(app_id)
        .bind(id_or_url)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| row(&r))
        .ok_or_else(|| StoreError::NotFound("log drain".into()))?;
        sqlx::query("DELETE FROM log_drains WHERE id = $1")
            .bind(&found.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreError};

    #[tokio::test]
    async fn drains_are_unique_per_app_found_by_id_or_url_and_go_with_the_app() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        let user = s.ensure_user("admin@example.com").await.expect("user");
        let app = s.create_app("hello", &user.id).await.expect("create");
        let a = s
            .add_log_drain(&app.id, "syslog://a.example:514")
            .await
            .expect("add");
        assert!(a.token.starts_with("d."));
        assert!(matches!(
            s.add_log_drain(&app.id, "syslog://a.example:514").await,
            Err(StoreError::Conflict(_))
        ));
        let b = s
            .add_log_drain(&app.id, "https://b.example/logs")
            .await
            .expect("add");
        assert_eq!(
            s.log_drains(&app.id).await.expect("list"),
            [a.clone(), b.clone()]
        );
        assert_eq!(
            s.remove_log_drain(&app.id, "https://b.example/logs")
                .await
                .expect("by url"),
            b
        );
        assert_eq!(s.remove_log_drain(&app.id, &a.id).await.expect("by id"), a);
        assert!(matches!(
            s.remove_log_drain(&app.id, &a.id).await,
            Err(StoreError::NotFound(_))
        ));
        s.add_log_drain(&app.id, "syslog://c.example:514")
            .await
            .expect("add");
        assert_eq!(s.all_log_drains().await.expect("all").len(), 1);
        s.delete_app(&app.id).await.expect("delete");
        assert!(s.all_log_drains().await.expect("all").is_empty());
        assert!(matches!(
            s.add_log_drain(&app.id, "syslog://d.example:514").await,
            Err(StoreError::NotFound(_))
        ));
    }
}
