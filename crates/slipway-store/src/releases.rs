//! The release ledger beyond deploys: release statuses and their transitions, rollbacks, and
//! the formation a release's slug implies.
//!
//! A release is created `pending` when something must still run before it may serve (the
//! release phase, later), or `succeeded` at once; a pending release then becomes `succeeded`
//! or `failed`, and nothing else ever changes in the ledger. The current release is the newest
//! succeeded one, so a pending or failed release never serves traffic.

use std::collections::BTreeMap;

use sqlx::{Row, Sqlite, Transaction};

use crate::{insert_release, new_id, now_ms, Release, Result, Store, StoreError};

/// A release's status, as the Platform API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    /// Created; the release phase has not finished yet. Never serves traffic.
    Pending,
    /// May serve traffic: the newest succeeded release is the current one.
    Succeeded,
    /// Its release phase failed: it never serves, and can't be rolled back to.
    Failed,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Succeeded => "succeeded",
            ReleaseStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ReleaseStatus::Pending),
            "succeeded" => Some(ReleaseStatus::Succeeded),
            "failed" => Some(ReleaseStatus::Failed),
            _ => None,
        }
    }

    /// Only a pending release changes status, and only once.
    pub fn can_become(self, next: ReleaseStatus) -> bool {
        self == ReleaseStatus::Pending && next != ReleaseStatus::Pending
    }
}

/// Why a release can't be rolled back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackRefusal {
    /// The release failed (its release phase did not pass): it never ran.
    Failed,
    /// The release is still pending.
    Pending,
    /// The release has no slug (a config change made before the first deploy).
    NoSlug,
}

impl Store {
    /// Creates `Rollback to vN`: a new release with `target`'s slug and config, the app's config
    /// set back to that config, and the formation shaped by that slug's process types, all in
    /// one transaction. The caller checks that the slug's file still exists.
    pub async fn rollback_release(
        &self,
        app_id: &str,
        target_version: i64,
        user_id: &str,
    ) -> Result<std::result::Result<Release, RollbackRefusal>> {
        self.rollback_release_with_status(app_id, target_version, user_id, ReleaseStatus::Succeeded)
            .await
    }

    /// [`Store::rollback_release`], or `Pending` (a release phase must pass first): the
    /// formation is then shaped when [`Store::set_release_status`] makes it succeed.
    pub async fn rollback_release_with_status(
        &self,
        app_id: &str,
        target_version: i64,
        user_id: &str,
        status: ReleaseStatus,
    ) -> Result<std::result::Result<Release, RollbackRefusal>> {
        let mut tx = self.write_tx().await?;
        let target = sqlx::query("SELECT * FROM releases WHERE app_id = $1 AND version = $2")
            .bind(app_id)
            .bind(target_version)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Release::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("release v{target_version}")))?;
        match ReleaseStatus::parse(&target.status) {
            Some(ReleaseStatus::Succeeded) => {}
            Some(ReleaseStatus::Pending) => return Ok(Err(RollbackRefusal::Pending)),
            _ => return Ok(Err(RollbackRefusal::Failed)),
        }
        let Some(slug_id) = target.slug_id.as_deref() else {
            return Ok(Err(RollbackRefusal::NoSlug));
        };
        let types: String = sqlx::query("SELECT process_types FROM slugs WHERE id = $1")
            .bind(slug_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("slug {slug_id}")))?
            .get("process_types");
        let types: BTreeMap<String, String> = serde_json::from_str(&types)?;
        let config = serde_json::to_string(&target.config)?;
        sqlx::query("UPDATE apps SET config = $1, updated_at = $2 WHERE id = $3")
            .bind(&config)
            .bind(now_ms())
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        let release = insert_release(
            &mut tx,
            app_id,
            &format!("Rollback to v{}", target.version),
            Some(slug_id),
            &config,
            user_id,
            status,
        )
        .await?;
        if status == ReleaseStatus::Succeeded {
            shape_formation(&mut tx, app_id, &types).await?;
        }
        tx.commit().await?;
        Ok(Ok(release))
    }

    /// The current release's new dynos never became healthy (a failed health check, a crash
    /// at boot): it becomes `failed`, and in the same transaction the app goes back to the
    /// release before it: its config is that release's config again and the formation is
    /// shaped by that release's slug (quantities of types both have are kept; a type only
    /// the failed release dropped comes back at 0 (web at 1)). With no earlier release that has
    /// a slug the formation is emptied. Only the current release can fail this way (it is the one being
    /// rolled out); anything else is a `Conflict`.
    pub async fn fail_unhealthy_release(&self, app_id: &str, release_id: &str) -> Result<Release> {
        let mut tx = self.write_tx().await?;
        let current = sqlx::query(
            "SELECT * FROM releases WHERE app_id = $1 AND status = 'succeeded' ORDER BY version DESC LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| Release::from_row(&r))
        .transpose()?;
        let Some(current) = current.filter(|r| r.id == release_id) else {
            return Err(StoreError::Conflict(format!(
                "release {release_id} is not the current release of the app, so it can't fail its rollout: the status"
            )));
        };
        sqlx::query("UPDATE releases SET status = 'failed', updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(release_id)
            .execute(&mut *tx)
            .await?;
        let previous = sqlx::query(
            "SELECT * FROM releases WHERE app_id = $1 AND status = 'succeeded' ORDER BY version DESC LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| Release::from_row(&r))
        .transpose()?;
        let mut types = BTreeMap::new();
        if let Some(previous) = &previous {
            sqlx::query("UPDATE apps SET config = $1, updated_at = $2 WHERE id = $3")
                .bind(serde_json::to_string(&previous.config)?)
                .bind(now_ms())
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            if let Some(slug_id) = previous.slug_id.as_deref() {
                let row = sqlx::query("SELECT process_types FROM slugs WHERE id = $1")
                    .bind(slug_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = row {
                    types = serde_json::from_str(&row.get::<String, _>("process_types"))?;
                }
            }
        }
        shape_formation(&mut tx, app_id, &types).await?;
        tx.commit().await?;
        Ok(Release {
            status: ReleaseStatus::Failed.as_str().to_string(),
            ..current
        })
    }

    /// A release phase's output (bounded by the caller), kept with its release.
    pub async fn set_release_output(&self, release_id: &str, output: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO release_outputs (release_id, output) VALUES ($1, $2) \
             ON CONFLICT (release_id) DO UPDATE SET output = excluded.output",
        )
        .bind(release_id)
        .bind(output)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The release phase's output of a release, if one ran.
    pub async fn release_output(&self, release_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT output FROM release_outputs WHERE release_id = $1")
                .bind(release_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get("output")),
        )
    }

    /// Moves a pending release to succeeded or failed (the end of its release phase). A
    /// release that succeeds shapes the formation by its slug's process types in the same
    /// transaction (a deploy or rollback made pending left it alone).
    pub async fn set_release_status(
        &self,
        release_id: &str,
        status: ReleaseStatus,
    ) -> Result<Release> {
        let mut tx = self.write_tx().await?;
        let release = sqlx::query("SELECT * FROM releases WHERE id = $1")
            .bind(release_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Release::from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("release {release_id}")))?;
        let from = ReleaseStatus::parse(&release.status);
        if !from.is_some_and(|f| f.can_become(status)) {
            return Err(StoreError::Conflict(format!(
                "release v{} is {} and can't become {}: the status",
                release.version,
                release.status,
                status.as_str()
            )));
        }
        sqlx::query("UPDATE releases SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now_ms())
            .bind(release_id)
            .execute(&mut *tx)
            .await?;
        if let (ReleaseStatus::Succeeded, Some(slug_id)) = (status, release.slug_id.as_deref()) {
            let types: Option<String> =
                sqlx::query("SELECT process_types FROM slugs WHERE id = $1")
                    .bind(slug_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.get("process_types"));
            if let Some(types) = types {
                let types: BTreeMap<String, String> = serde_json::from_str(&types)?;
                shape_formation(&mut tx, &release.app_id, &types).await?;
            }
        }
        let row = sqlx::query("SELECT * FROM releases WHERE id = $1")
            .bind(release_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Release::from_row(&row)
    }
}

/// Brings the formation in line with a slug's process types: new types appear (web at 1 the
/// first time it appears, others at 0), vanished types go, commands follow the slug; quantities
/// and sizes of types that stay are kept. `release` is not a dyno type.
pub(crate) async fn shape_formation(
    tx: &mut Transaction<'_, Sqlite>,
    app_id: &str,
    process_types: &BTreeMap<String, String>,
) -> Result<()> {
    let now = now_ms();
    let existing: Vec<String> = sqlx::query("SELECT process_type FROM formation WHERE app_id = $1")
        .bind(app_id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.get("process_type"))
        .collect();
    let dyno_types = process_types.iter().filter(|(t, _)| *t != "release");
    for (ptype, command) in dyno_types {
        if existing.contains(ptype) {
            sqlx::query(
                "UPDATE formation SET command = $1, updated_at = $2 WHERE app_id = $3 AND process_type = $4",
            )
            .bind(command)
            .bind(now)
            .bind(app_id)
            .bind(ptype)
            .execute(&mut **tx)
            .await?;
        } else {
            let quantity: i64 = if ptype == "web" { 1 } else { 0 };
            sqlx::query(
                "INSERT INTO formation (id, app_id, process_type, quantity, size, command, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'standard-1X', $5, $6, $6)",
            )
            .bind(new_id())
            .bind(app_id)
            .bind(ptype)
            .bind(quantity)
            .bind(command)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
    }
    for gone in existing
        .iter()
        .filter(|t| !process_types.contains_key(*t) || t.as_str() == "release")
    {
        sqlx::query("DELETE FROM formation WHERE app_id = $1 AND process_type = $2")
            .bind(app_id)
            .bind(gone)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigOutcome, FormationUpdate, NewSlug};

    #[test]
    fn only_pending_releases_change_status() {
        use ReleaseStatus::*;
        assert!(Pending.can_become(Succeeded) && Pending.can_become(Failed));
        assert!(!Pending.can_become(Pending));
        assert!(!Succeeded.can_become(Failed) && !Failed.can_become(Succeeded));
    }

    #[tokio::test]
    async fn rollback_brings_back_slug_config_and_process_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        let user = s.ensure_user("a@example.com").await.expect("user");
        let app = s.create_app("back", &user.id).await.expect("app");
        let slug = |types: &[(&str, &str)]| NewSlug {
            app_id: app.id.clone(),
            commit_sha: "abc".into(),
            checksum: "SHA256:00".into(),
            size: 1,
            path: "/nowhere".into(),
            process_types: types
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let ok = ReleaseStatus::Succeeded;
        // v1: config before any deploy, no slug.
        let first = BTreeMap::from([("GREETING".to_string(), Some("one".to_string()))]);
        s.update_config(&app.id, &first, 4096, &user.id, ok)
            .await
            .expect("v1");
        let s1 = s.create_slug(&slug(&[("web", "one")])).await.expect("s1");
        s.deploy_release(&app.id, &s1, "Deploy one", &user.id)
            .await
            .expect("v2");
        s.update_formation(
            &app.id,
            &[FormationUpdate {
                process_type: "web".into(),
                quantity: Some(2),
                size: Some("standard-2X".into()),
            }],
        )
        .await
        .expect("scale");
        let s2 = s
            .create_slug(&slug(&[("web", "two"), ("worker", "work")]))
            .await
            .expect("s2");
        s.deploy_release(&app.id, &s2, "Deploy two", &user.id)
            .await
            .expect("v3");
        let second = BTreeMap::from([("GREETING".to_string(), Some("two".to_string()))]);
        assert!(matches!(
            s.update_config(&app.id, &second, 4096, &user.id, ok)
                .await
                .expect("v4"),
            ConfigOutcome::Released { .. }
        ));

        assert_eq!(
            s.rollback_release(&app.id, 1, &user.id).await.expect("q"),
            Err(RollbackRefusal::NoSlug)
        );
        let r = s
            .rollback_release(&app.id, 2, &user.id)
            .await
            .expect("q")
            .expect("rolled back");
        assert_eq!((r.version, r.description.as_str()), (5, "Rollback to v2"));
        assert_eq!(r.slug_id.as_deref(), Some(s1.id.as_str()));
        assert_eq!(r.config["GREETING"], "one");
        assert_eq!(s.app(&app.id).await.expect("app").config["GREETING"], "one");
        let f = s.formation(&app.id).await.expect("formation");
        let shape: Vec<_> = f
            .iter()
            .map(|f| {
                (
                    f.process_type.as_str(),
                    f.quantity,
                    f.size.as_str(),
                    f.command.as_str(),
                )
            })
            .collect();
        assert_eq!(shape, [("web", 2, "standard-2X", "one")]);
        assert!(matches!(
            s.rollback_release(&app.id, 99, &user.id).await,
            Err(StoreError::NotFound(_))
        ));

        // A pending release becomes succeeded once, then never changes again.
        let third = BTreeMap::from([("X".to_string(), Some("1".to_string()))]);
        let ConfigOutcome::Released { release, .. } = s
            .update_config(&app.id, &third, 4096, &user.id, ReleaseStatus::Pending)
            .await
            .expect("pending")
        else {
            panic!("expected a release");
        };
        assert_eq!(
            s.current_release(&app.id)
                .await
                .expect("q")
                .map(|r| r.version),
            Some(5),
            "a pending release does not serve"
        );
        assert_eq!(
            s.rollback_release(&app.id, release.version, &user.id)
                .await
                .expect("q"),
            Err(RollbackRefusal::Pending)
        );
        s.set_release_status(&release.id, ReleaseStatus::Succeeded)
            .await
            .expect("succeed");
        assert!(matches!(
            s.set_release_status(&release.id, ReleaseStatus::Failed)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.current_release(&app.id)
                .await
                .expect("q")
                .map(|r| r.version),
            Some(6)
        );
    }

    #[tokio::test]
    async fn renames_keep_the_app_and_refuse_taken_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        let user = s.ensure_user("a@example.com").await.expect("user");
        let a = s.create_app("first", &user.id).await.expect("a");
        s.create_app("second", &user.id).await.expect("b");
        assert!(matches!(
            s.rename_app(&a.id, "second").await,
            Err(StoreError::Conflict(_))
        ));
        let renamed = s.rename_app(&a.id, "third").await.expect("rename");
        assert_eq!((renamed.id, renamed.name.as_str()), (a.id.clone(), "third"));
        assert!(s.find_app("first").await.expect("q").is_none());
        assert_eq!(s.app_footprint(&a.id).await.expect("fp").releases, 0);
    }
}
