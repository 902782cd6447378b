//! Config vars. Each change is one release, created in the same IMMEDIATE transaction as the
//! config update itself: concurrent changes queue on SQLite's write lock, each reads the config
//! the previous one wrote, so none is lost and release versions stay gapless.
//!
//! Values are secrets: nothing here logs them, and errors name keys only.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::releases::ReleaseStatus;
use crate::{insert_release, now_ms, Release, Result, Store, StoreError};

/// What [`Store::update_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// Nothing changed (every value was already set so, every removed key already absent):
    /// no release. Carries the config as it is.
    Unchanged(BTreeMap<String, String>),
    /// The config would exceed the size limit (keys and values together); nothing changed.
    TooLarge { bytes: usize, limit: usize },
    /// The new config and the release that carries it.
    Released {
        release: Release,
        config: BTreeMap<String, String>,
    },
}

/// Bytes a config takes toward its limit: every key and value.
pub fn config_bytes(config: &BTreeMap<String, String>) -> usize {
    config.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// `Set A, B config vars`, `Remove A config vars`, `Set A config vars and remove B`, as
/// Heroku describes config releases.
pub fn config_description(set: &[&str], removed: &[&str]) -> String {
    match (set.is_empty(), removed.is_empty()) {
        (false, true) => format!("Set {} config vars", set.join(", ")),
        (true, false) => format!("Remove {} config vars", removed.join(", ")),
        _ => format!(
            "Set {} config vars and remove {}",
            set.join(", "),
            removed.join(", ")
        ),
    }
}

impl Store {
    /// Applies `changes` (a value sets, `None` removes) to the app's config and creates the
    /// release that carries it, with the current release's slug. Changes that change nothing
    /// are left out of the description; if nothing changes, no release is made.
    ///
    /// `status` is `Succeeded` unless a release phase must run first (then `Pending`).
    pub async fn update_config(
        &self,
        app_id: &str,
        changes: &BTreeMap<String, Option<String>>,
        max_bytes: usize,
        user_id: &str,
        status: ReleaseStatus,
    ) -> Result<ConfigOutcome> {
        let mut tx = self.write_tx().await?;
        let raw: String = sqlx::query("SELECT config FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("app {app_id}")))?
            .get("config");
        let mut config: BTreeMap<String, String> = serde_json::from_str(&raw)?;
        let (mut set, mut removed) = (Vec::new(), Vec::new());
        for (key, value) in changes {
            match value {
                Some(v) if config.get(key) != Some(v) => {
                    config.insert(key.clone(), v.clone());
                    set.push(key.as_str());
                }
                None if config.remove(key).is_some() => removed.push(key.as_str()),
                _ => {}
            }
        }
        if set.is_empty() && removed.is_empty() {
            return Ok(ConfigOutcome::Unchanged(config));
        }
        let bytes = config_bytes(&config);
        if bytes > max_bytes {
            return Ok(ConfigOutcome::TooLarge {
                bytes,
                limit: max_bytes,
            });
        }
        let slug_id: Option<String> = sqlx::query(
            "SELECT slug_id FROM releases WHERE app_id = $1 AND status = 'succeeded' ORDER BY version DESC LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?
        .and_then(|r| r.get("slug_id"));
        let encoded = serde_json::to_string(&config)?;
        sqlx::query("UPDATE apps SET config = $1, updated_at = $2 WHERE id = $3")
            .bind(&encoded)
            .bind(now_ms())
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        let release = insert_release(
            &mut tx,
            app_id,
            &config_description(&set, &removed),
            slug_id.as_deref(),
            &encoded,
            user_id,
            status,
        )
        .await?;
        tx.commit().await?;
        Ok(ConfigOutcome::Released { release, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewSlug;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        (dir, store)
    }

    fn set(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[tokio::test]
    async fn each_change_is_one_release_and_no_op_changes_make_none() {
        let (_d, s) = store().await;
        let user = s.ensure_user("a@example.com").await.expect("user");
        let app = s.create_app("conf", &user.id).await.expect("app");
        let slug = s
            .create_slug(&NewSlug {
                app_id: app.id.clone(),
                commit_sha: "abc".into(),
                checksum: "SHA256:00".into(),
                size: 1,
                path: "/nowhere".into(),
                process_types: BTreeMap::from([("web".into(), "serve".into())]),
            })
            .await
            .expect("slug");
        s.deploy_release(&app.id, &slug, "Deploy abc", &user.id)
            .await
            .expect("v1");
        let ok = ReleaseStatus::Succeeded;
        let changes = set(&[("A", Some("1")), ("B", Some("x=y\n'\""))]);
        let ConfigOutcome::Released { release, config } = s
            .update_config(&app.id, &changes, 1024, &user.id, ok)
            .await
            .expect("set")
        else {
            panic!("expected a release");
        };
        assert_eq!(release.version, 2);
        assert_eq!(release.description, "Set A, B config vars");
        assert_eq!(release.slug_id.as_deref(), Some(slug.id.as_str()));
        assert_eq!(config["B"], "x=y\n'\"");
        assert_eq!(release.config, config);

        // Setting the same value and removing an absent key change nothing.
        let same = set(&[("A", Some("1")), ("GONE", None)]);
        assert!(matches!(
            s.update_config(&app.id, &same, 1024, &user.id, ok)
                .await
                .expect("same"),
            ConfigOutcome::Unchanged(_)
        ));
        let ConfigOutcome::Released { release, .. } = s
            .update_config(&app.id, &set(&[("A", None)]), 1024, &user.id, ok)
            .await
            .expect("unset")
        else {
            panic!("expected a release");
        };
        assert_eq!(
            (release.version, release.description.as_str()),
            (3, "Remove A config vars")
        );
        // Over the limit: refused, nothing written.
        let big = set(&[("C", Some(&"x".repeat(2000)))]);
        assert!(matches!(
            s.update_config(&app.id, &big, 1024, &user.id, ok)
                .await
                .expect("big"),
            ConfigOutcome::TooLarge { limit: 1024, .. }
        ));
        assert!(!s.app(&app.id).await.expect("app").config.contains_key("C"));
        assert_eq!(s.list_releases(&app.id).await.expect("list").len(), 3);
    }

    #[tokio::test]
    async fn concurrent_changes_all_land_in_a_gapless_ledger() {
        let (_d, s) = store().await;
        let user = s.ensure_user("a@example.com").await.expect("user");
        let app = s.create_app("busy", &user.id).await.expect("app");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (s, app, user) = (s.clone(), app.id.clone(), user.id.clone());
                tokio::spawn(async move {
                    let changes = BTreeMap::from([(format!("K{i}"), Some(i.to_string()))]);
                    s.update_config(&app, &changes, 1 << 20, &user, ReleaseStatus::Succeeded)
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(
                t.await.expect("task").expect("update"),
                ConfigOutcome::Released { .. }
            ));
        }
        let config = s.app(&app.id).await.expect("app").config;
        assert_eq!(config.len(), 200);
        let versions: Vec<i64> = s
            .list_releases(&app.id)
            .await
            .expect("list")
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, (1..=200).collect::<Vec<i64>>());
    }
}
