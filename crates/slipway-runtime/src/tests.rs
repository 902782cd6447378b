use super::*;
use slipway_logs::Filter;
use std::time::Instant;

struct Fixture {
    _dir: tempfile::TempDir,
    manager: DynoManager,
    logs: LogHub,
    store: Store,
    release: ReleaseSpec,
    dynos_dir: PathBuf,
    app: String,
}

async fn fixture(stop_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("index.html"), "hello from the slug").expect("write");
    let slug = dir.path().join("slug.tgz");
    let info =
        slipway_build::create_slug(&src, &slug, &slipway_build::Limits::default()).expect("slug");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    let user = store.ensure_user("t@example.com").await.expect("user");
    let app = store.create_app("app1", &user.id).await.expect("app");
    let logs = LogHub::new();
    let dynos_dir = dir.path().join("dynos");
    let mut cfg = RuntimeConfig::new(dynos_dir.clone());
    cfg.stop_timeout = stop_timeout;
    cfg.boot_timeout = Duration::from_secs(20);
    let manager = DynoManager::new(cfg, store.clone(), logs.clone());
    let release = ReleaseSpec {
        app_id: app.id.clone(),
        version: 1,
        slug_path: slug,
        slug_checksum: info.checksum,
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
    };
    Fixture {
        _dir: dir,
        manager,
        logs,
        store,
        release,
        dynos_dir,
        app: app.id,
    }
}

fn spec(process_type: &str, quantity: u32, command: &str) -> ProcessSpec {
    ProcessSpec {
        process_type: process_type.into(),
        quantity,
        command: command.into(),
    }
}

async fn wait_for_log(f: &Fixture, needle: &str) -> Vec<String> {
    let what = format!("a log line containing {needle:?}");
    slipway_testkit::wait_until(20, &what, || async {
        let lines: Vec<String> = f
            .logs
            .history(&f.app, &Filter::default(), usize::MAX)
            .iter()
            .map(|l| l.format())
            .collect();
        lines.iter().any(|l| l.contains(needle)).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn web_dyno_boots_serves_from_its_own_copy_and_stops() {
    let f = fixture(Duration::from_secs(10)).await;
    let web = spec("web", 1, "echo \"greeting=$GREETING dyno=$DYNO\"; exec python3 -m http.server $PORT --bind 127.0.0.1");
    f.manager.converge(f.release.clone(), &[web]);
    wait_for_log(&f, "State changed from starting to up").await;
    let lines = wait_for_log(&f, "greeting=hi dyno=web.1").await;
    assert!(lines
        .iter()
        .any(|l| l.contains("heroku[web.1]: Starting process with command `echo")));
    let WebStatus::Up(backends) = f.manager.web_status(&f.app) else {
        panic!("web dyno not up")
    };
    assert_eq!(backends.len(), 1);
    let body = http_get(backends[0].addr).await;
    assert!(body.contains("hello from the slug"), "{body}");

    let listed = f.manager.list(&f.app);
    assert_eq!(listed.len(), 1);
    let dir = f.dynos_dir.join(&f.app).join(&listed[0].id);
    assert!(dir.join("app/index.html").exists());
    let records = f.store.all_dynos().await.expect("records");
    assert_eq!(records[0].port, listed[0].port.map(i64::from));
    assert!(records[0].pid.is_some());

    f.manager.stop_app(&f.app).await;
    let lines = wait_for_log(&f, "State changed from up to down").await;
    assert!(lines
        .iter()
        .any(|l| l.contains("Stopping all processes with SIGTERM")));
    assert!(!dir.exists(), "the dyno's filesystem is thrown away");
    assert!(f.store.all_dynos().await.expect("records").is_empty());
    assert_eq!(f.manager.web_status(&f.app), WebStatus::NoWebDynos);
}

#[tokio::test]
async fn crashing_dynos_are_logged_and_restarted() {
    let f = fixture(Duration::from_secs(5)).await;
    f.manager
        .converge(f.release.clone(), &[spec("worker", 1, "echo boom; exit 3")]);
    let lines = wait_for_log(&f, "State changed from crashed to starting").await;
    assert!(lines.iter().any(|l| l.contains("app[worker.1]: boom")));
    assert!(lines
        .iter()
        .any(|l| l.contains("heroku[worker.1]: Process exited with status 3")));
    assert!(lines
        .iter()
        .any(|l| l.contains("State changed from up to crashed")));
    f.manager.stop_app(&f.app).await;
    assert!(f.manager.list(&f.app).is_empty());
}

#[tokio::test]
async fn sigterm_then_sigkill_after_the_stop_timeout() {
    let f = fixture(Duration::from_secs(1)).await;
    f.manager.converge(
        f.release.clone(),
        &[spec(
            "worker",
            1,
            "trap '' TERM; echo ready; while true; do sleep 1; done",
        )],
    );
    wait_for_log(&f, "app[worker.1]: ready").await;
    f.manager.stop_app(&f.app).await;
    let lines = wait_for_log(&f, "Error R12 (Exit timeout)").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Process exited with status 137")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn scaling_and_new_releases_replace_the_right_dynos() {
    let f = fixture(Duration::from_secs(5)).await;
    let cmd = "exec sleep 1000";
    f.manager
        .converge(f.release.clone(), &[spec("worker", 2, cmd)]);
    wait_for_log(&f, "heroku[worker.2]: State changed from starting to up").await;
    let before: Vec<String> = f
        .manager
        .list(&f.app)
        .iter()
        .map(|d| d.id.clone())
        .collect();
    // Same release and quantity: nothing changes.
    f.manager
        .converge(f.release.clone(), &[spec("worker", 2, cmd)]);
    let same: Vec<String> = f
        .manager
        .list(&f.app)
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(before, same);
    // Scale down: worker.2 goes.
    f.manager
        .converge(f.release.clone(), &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "heroku[worker.2]: State changed from up to down").await;
    // A new release replaces worker.1.
    let mut v2 = f.release.clone();
    v2.version = 2;
    f.manager.converge(v2, &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "heroku[worker.1]: State changed from up to down").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.manager.list(&f.app).len() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = f.manager.list(&f.app);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].release_version, 2);
    f.manager.stop_all().await;
}

async fn http_get(addr: SocketAddr) -> String {
    let (_, _, body) =
        slipway_testkit::http_async(addr, "GET", "/index.html", &[("Host", "x")], None).await;
    body
}
