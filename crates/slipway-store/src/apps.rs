//! App changes beyond create and delete: renaming, and what an app holds (for destroy to say
//! what it removed).

use sqlx::Row;

use crate::{is_unique_violation, now_ms, App, Result, Store, StoreError};

/// What an app holds in the state database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppFootprint {
    pub releases: i64,
    pub builds: i64,
    pub slugs: i64,
    pub slug_bytes: i64,
}

impl Store {
    /// Renames an app. Its id, repository, slugs and releases stay; only the name changes.
    pub async fn rename_app(&self, id: &str, new_name: &str) -> Result<App> {
        let result = sqlx::query("UPDATE apps SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(new_name)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await;
        match result {
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("app {new_name}")))
            }
            Err(e) => Err(e.into()),
            Ok(done) if done.rows_affected() == 0 => Err(StoreError::NotFound(format!("app {id}"))),
            Ok(_) => self.app(id).await,
        }
    }

    pub async fn app_footprint(&self, id: &str) -> Result<AppFootprint> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM releases WHERE app_id = $1) AS releases, \
                    (SELECT COUNT(*) FROM builds WHERE app_id = $1) AS builds, \
                    (SELECT COUNT(*) FROM slugs WHERE app_id = $1) AS slugs, \
                    (SELECT COALESCE(SUM(size), 0) FROM slugs WHERE app_id = $1) AS slug_bytes",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(AppFootprint {
            releases: row.get("releases"),
            builds: row.get("builds"),
            slugs: row.get("slugs"),
            slug_bytes: row.get("slug_bytes"),
        })
    }
}
