use super::*;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("open");
    (dir, store)
}

fn slug(app_id: &str, types: &[(&str, &str)]) -> NewSlug {
    NewSlug {
        app_id: app_id.into(),
        commit_sha: "abc".into(),
        checksum: "SHA256:00".into(),
        size: 1,
        path: "/nowhere".into(),
        process_types: types
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

#[tokio::test]
async fn apps_are_unique_and_found_by_name_or_id() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("hello", &user.id).await.expect("create");
    assert!(matches!(
        s.create_app("hello", &user.id).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.app("hello").await.expect("by name").id, app.id);
    assert_eq!(s.app(&app.id).await.expect("by id").name, "hello");
    s.delete_app(&app.id).await.expect("delete");
    assert!(s.find_app("hello").await.expect("query").is_none());
}

#[tokio::test]
async fn deploys_number_releases_and_shape_the_formation() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("hello", &user.id).await.expect("create");
    let s1 = s
        .create_slug(&slug(
            &app.id,
            &[("web", "a"), ("worker", "b"), ("release", "m")],
        ))
        .await
        .expect("slug");
    let r1 = s
        .deploy_release(&app.id, &s1, "Deploy abc", &user.id)
        .await
        .expect("v1");
    assert_eq!(r1.version, 1);
    let f = s.formation(&app.id).await.expect("formation");
    let q: Vec<_> = f
        .iter()
        .map(|f| (f.process_type.as_str(), f.quantity))
        .collect();
    assert_eq!(q, [("web", 1), ("worker", 0)]);

    s.scale(&app.id, &BTreeMap::from([("web".to_string(), 3)]))
        .await
        .expect("scale");
    assert!(matches!(
        s.scale(&app.id, &BTreeMap::from([("nope".to_string(), 1)]))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let s2 = s
        .create_slug(&slug(&app.id, &[("web", "a2")]))
        .await
        .expect("slug");
    let r2 = s
        .deploy_release(&app.id, &s2, "Deploy def", &user.id)
        .await
        .expect("v2");
    assert_eq!(r2.version, 2);
    let f = s.formation(&app.id).await.expect("formation");
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].quantity, f[0].command.as_str()),
        (3, "a2"),
        "scale survives a deploy"
    );
    assert_eq!(
        s.current_release(&app.id)
            .await
            .expect("q")
            .map(|r| r.version),
        Some(2)
    );
    assert_eq!(s.release(&app.id, "v1").await.expect("v1").id, r1.id);
    assert_eq!(s.list_releases(&app.id).await.expect("list").len(), 2);
}

#[tokio::test]
async fn tokens_are_looked_up_by_hash() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    s.add_token(&user.id, "deadbeef", "admin")
        .await
        .expect("token");
    assert_eq!(
        s.user_by_token_hash("deadbeef").await.expect("q"),
        Some(user)
    );
    assert_eq!(s.user_by_token_hash("other").await.expect("q"), None);
    assert_eq!(s.token_count().await.expect("count"), 1);
}

/// Hundreds of state changes at once (deploys, scaling, maintenance switches) on one app: none
/// fails with SQLITE_BUSY, and the release ledger has no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_fail_and_the_ledger_stays_gapless() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("hello", &user.id).await.expect("create");
    let slug = s
        .create_slug(&slug(&app.id, &[("web", "a"), ("worker", "b")]))
        .await
        .expect("slug");
    s.deploy_release(&app.id, &slug, "Deploy v1", &user.id)
        .await
        .expect("first deploy");
    const EACH: usize = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..EACH {
        let (st, app_id, slug, user_id) =
            (s.clone(), app.id.clone(), slug.clone(), user.id.clone());
        tasks.spawn(async move {
            st.deploy_release(&app_id, &slug, &format!("Deploy {i}"), &user_id)
                .await
                .map(|_| ())
        });
        let (st, app_id) = (s.clone(), app.id.clone());
        tasks.spawn(async move {
            let q = BTreeMap::from([("worker".to_string(), (i % 7) as i64)]);
            st.scale(&app_id, &q).await.map(|_| ())
        });
        let (st, app_id) = (s.clone(), app.id.clone());
        tasks.spawn(async move { st.set_maintenance(&app_id, i % 2 == 0).await.map(|_| ()) });
    }
    let mut failures = Vec::new();
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        done += 1;
        if let Err(e) = result.expect("task") {
            failures.push(e.to_string());
        }
    }
    assert_eq!(done, 3 * EACH);
    assert!(
        failures.is_empty(),
        "{} of {done} failed: {failures:?}",
        failures.len()
    );
    let versions: Vec<i64> = s
        .list_releases(&app.id)
        .await
        .expect("releases")
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, (1..=(EACH as i64 + 1)).collect::<Vec<_>>());
}

#[tokio::test]
async fn interrupted_builds_are_failed_and_unused_slugs_collected() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("hello", &user.id).await.expect("create");
    let build = s
        .create_build(&app.id, &user.id, "abc")
        .await
        .expect("build");
    assert_eq!(s.fail_interrupted_builds().await.expect("fail"), 1);
    let after = s.build(&app.id, &build.id).await.expect("build");
    assert_eq!(after.status, BuildStatus::Failed);
    assert!(after.output.contains("interrupted"), "{}", after.output);
    assert_eq!(s.fail_interrupted_builds().await.expect("again"), 0);

    let mut slugs = Vec::new();
    for _ in 0..4 {
        let sl = s
            .create_slug(&slug(&app.id, &[("web", "a")]))
            .await
            .expect("slug");
        s.deploy_release(&app.id, &sl, "Deploy", &user.id)
            .await
            .expect("deploy");
        slugs.push(sl);
    }
    let orphan = s
        .create_slug(&slug(&app.id, &[("web", "a")]))
        .await
        .expect("orphan");
    let later = now_ms() + 1000;
    // Keep the newest 2 releases: v1's and v2's slugs go, and the orphan.
    let mut gone: Vec<String> = s
        .collectable_slugs(2, later)
        .await
        .expect("collectable")
        .into_iter()
        .map(|sl| sl.id)
        .collect();
    gone.sort();
    let mut expected = vec![slugs[0].id.clone(), slugs[1].id.clone(), orphan.id.clone()];
    expected.sort();
    assert_eq!(gone, expected);
    // Nothing is collected that is newer than the cut-off.
    assert!(s.collectable_slugs(2, 0).await.expect("none").is_empty());
    s.delete_slug(&orphan.id).await.expect("delete");
    assert!(matches!(
        s.slug(&orphan.id).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_data_directory_may_hold_url_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = dir.path().join("data?mode=ro&x=%41#frag");
    std::fs::create_dir_all(&odd).expect("odd dir");
    let path = odd.join("state.db");
    let s = Store::open(&path).await.expect("open");
    s.ensure_user("admin@example.com").await.expect("write");
    s.close().await;
    assert!(path.is_file(), "the database is where it was asked to be");
}

#[tokio::test]
async fn an_unhealthy_release_fails_and_puts_config_and_formation_back() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("hello", &user.id).await.expect("create");
    let s1 = s
        .create_slug(&slug(&app.id, &[("web", "a"), ("worker", "w")]))
        .await
        .expect("slug");
    let r1 = s
        .deploy_release(&app.id, &s1, "Deploy v1", &user.id)
        .await
        .expect("v1");
    s.scale(&app.id, &BTreeMap::from([("web".to_string(), 2)]))
        .await
        .expect("scale");
    // A config change whose dynos never become healthy.
    let changes = BTreeMap::from([("BROKEN".to_string(), Some("1".to_string()))]);
    let ConfigOutcome::Released { release: r2, .. } = s
        .update_config(&app.id, &changes, 65536, &user.id, ReleaseStatus::Succeeded)
        .await
        .expect("config")
    else {
        panic!("a release");
    };
    let failed = s
        .fail_unhealthy_release(&app.id, &r2.id)
        .await
        .expect("fail v2");
    assert_eq!(failed.status, "failed");
    assert_eq!(s.app(&app.id).await.expect("app").config, r1.config);
    // A deploy that drops `worker` and adds `clock`, never healthy either.
    let s3 = s
        .create_slug(&slug(&app.id, &[("web", "a3"), ("clock", "c")]))
        .await
        .expect("slug");
    let r3 = s
        .deploy_release(&app.id, &s3, "Deploy v3", &user.id)
        .await
        .expect("v3");
    s.fail_unhealthy_release(&app.id, &r3.id)
        .await
        .expect("fail v3");
    let f: Vec<_> = s
        .formation(&app.id)
        .await
        .expect("formation")
        .into_iter()
        .map(|f| (f.process_type, f.quantity, f.command))
        .collect();
    assert_eq!(
        f,
        [
            ("web".to_string(), 2, "a".to_string()),
            ("worker".to_string(), 0, "w".to_string())
        ]
    );
    assert_eq!(
        s.current_release(&app.id).await.expect("q").map(|r| r.id),
        Some(r1.id.clone())
    );
    // Only the current release can fail its rollout, and only once.
    assert!(matches!(
        s.fail_unhealthy_release(&app.id, &r3.id).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn a_stage_lists_app_and_host_targets_in_order_and_loses_a_removed_host_target() {
    let (_d, s) = store().await;
    let user = s.ensure_user("admin@example.com").await.expect("user");
    let app = s.create_app("shop-staging", &user.id).await.expect("app");
    let p = s.create_pipeline("shop").await.expect("pipeline");
    let stage = s
        .add_stage(&p.id, "production", None, &StageStrategy::Manual, 0)
        .await
        .expect("stage");
    s.create_host_target("web", "{}", "{}")
        .await
        .expect("target");
    s.add_stage_host_target(&stage.id, "web")
        .await
        .expect("host target");
    s.add_stage_target(&stage.id, &app.id).await.expect("app");
    assert!(matches!(
        s.add_stage_host_target(&stage.id, "web").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.add_stage_host_target(&stage.id, "nope").await.is_err());
    let targets = s.stage_targets(&stage.id).await.expect("targets");
    let kinds: Vec<(&str, Option<&str>, &str)> = targets
        .iter()
        .map(|t| {
            (
                t.kind.as_str(),
                t.host_target.as_deref(),
                t.app_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("host", Some("web"), ""), ("app", None, "shop-staging")]
    );
    // A deploy record, then the target goes: the stage and the records lose it.
    let d = s
        .create_target_deploy("web", "shop", "build-1", &user.id, "production")
        .await
        .expect("deploy");
    assert_eq!((d.number, d.status.as_str()), (1, "queued"));
    assert_eq!(s.interrupt_target_deploys().await.expect("interrupt"), 1);
    assert_eq!(
        s.target_deploys("web", 10).await.expect("list")[0].status,
        "interrupted"
    );
    s.delete_host_target("web").await.expect("delete");
    let targets = s.stage_targets(&stage.id).await.expect("targets");
    assert_eq!(targets.len(), 1);
    assert!(s.target_deploys("web", 10).await.expect("list").is_empty());
}
