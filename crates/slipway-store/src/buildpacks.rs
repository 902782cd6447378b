//! The buildpacks an app has chosen (`buildpacks:set`, Platform API `buildpack-installations`).
//! None chosen: the build detects among the built-ins.

use sqlx::Row;

use crate::{Result, Store};

impl Store {
    /// The app's buildpacks in the order they run.
    pub async fn buildpacks(&self, app_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query(
            "SELECT url FROM buildpack_installations WHERE app_id = $1 ORDER BY ordinal",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get("url"))
        .collect())
    }

    /// Replaces the app's buildpacks, all at once.
    pub async fn set_buildpacks(&self, app_id: &str, urls: &[String]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM buildpack_installations WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        for (ordinal, url) in urls.iter().enumerate() {
            sqlx::query(
                "INSERT INTO buildpack_installations (app_id, ordinal, url) VALUES ($1, $2, $3)",
            )
            .bind(app_id)
            .bind(ordinal as i64)
            .bind(url)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
