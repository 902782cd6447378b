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
