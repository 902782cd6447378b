//! The walking skeleton, as a user drives it: start the server, create an app, `git push`,
//! reach it through the router, read its logs, push again, stop the server.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{header, http, text, wait_for, walk, Server};

#[test]
fn push_build_release_route_log_and_redeploy() {
    let mut server = Server::start();
    let root = server.root.path().to_path_buf();

    // 1. First start: an admin token, 0600, and a health check without credentials.
    assert!(
        server
            .stdout_lines
            .iter()
            .any(|l| l.contains("created the admin API token")),
        "{:?}",
        server.stdout_lines
    );
    let mode = std::fs::metadata(server.data.join("admin.token"))
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, _, body) = http(server.api_port, "GET", "/health", &[], None);
    assert_eq!((status, body.contains("ok")), (200, true));

    // 2. Apps.
    let created = server.cli_ok(&root, &["apps:create", "hello"]);
    assert!(
        created.contains(&format!("http://hello.localhost:{}/", server.router_port)),
        "{created}"
    );
    assert!(server
        .cli_ok(&root, &["apps"])
        .lines()
        .any(|l| l == "hello"));
    let info = server.cli_ok(&root, &["apps:info", "-a", "hello"]);
    assert!(
        info.contains("=== hello") && info.contains(&format!("{}/hello.git", server.api_port)),
        "{info}"
    );

    // Before any deploy the router answers H14.
    let (status, _) = server.app_get("hello", "/");
    assert_eq!(status, 503);

    // 3-5. git push builds, releases v1 and starts web.1.
    let repo = server.sample_repo("hello-src");
    let remote = server.cli_ok(&repo, &["git:remote", "-a", "hello"]);
    assert!(remote.contains("set git remote slipway"), "{remote}");
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("remote: -----> Building hello"), "{pushed}");
    assert!(
        pushed.contains("remote:        Procfile declares types     -> web"),
        "{pushed}"
    );
    assert!(pushed.contains("remote:        Released v1"), "{pushed}");
    let sha_out = server.git(&repo, &["log", "-1", "--format=%H"]);
    let full_sha = String::from_utf8_lossy(&sha_out.stdout).trim().to_string();
    let short = &full_sha[..7];

    // The slug: a tarball under the data directory whose SHA-256 the build reports.
    let (status, _, builds) = server.api("GET", "/apps/hello/builds", None);
    assert_eq!(status, 200, "{builds}");
    let builds: serde_json::Value = serde_json::from_str(&builds).expect("builds JSON");
    assert_eq!(builds[0]["status"], "succeeded");
    assert_eq!(builds[0]["source_blob"]["version"], full_sha.as_str());
    let checksum = builds[0]["source_blob"]["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();
    let slugs: Vec<_> = walk(&server.data.join("slugs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tgz"))
        .collect();
    assert_eq!(slugs.len(), 1, "{slugs:?}");
    let sum = std::process::Command::new("sha256sum")
        .arg(&slugs[0])
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        checksum,
        format!(
            "SHA256:{}",
            sum.split_whitespace().next().unwrap_or_default()
        )
    );

    let releases = server.cli_ok(&root, &["releases", "-a", "hello"]);
    assert!(
        releases.contains("=== hello Releases - Current: v1"),
        "{releases}"
    );
    assert!(
        releases.contains(&format!("v1    Deploy {short}  admin@localhost")),
        "{releases}"
    );

    // 6. Through the router, by Host header.
    let body = wait_for(60, "the app to answer through the router", || {
        let (status, body) = server.app_get("hello", "/");
        (status == 200).then_some(body)
    });
    assert!(
        body.starts_with("Hello from slipway (dyno web.1)"),
        "{body}"
    );
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(
        ps.contains("=== web (standard-1X): python3 server.py (1)") && ps.contains("web.1: up"),
        "{ps}"
    );

    // 7. Logs: build, release, dyno state, app output, router line.
    let logs = wait_for(20, "the router line in the logs", || {
        let logs = server.cli_ok(&repo, &["logs", "-a", "hello"]);
        // The app's own line comes through its dyno monitor's log, the router's directly:
        // wait for both.
        (logs.contains("heroku[router]: at=info method=GET path=\"/\" host=hello.localhost")
            && logs.contains("app[web.1]: GET / -> 200"))
        .then_some(logs)
    });
    for expected in [
        "app[api]: Build started by user admin@localhost",
        "app[api]: Release v1 created by user admin@localhost",
        &format!("app[api]: Deploy {short} by user admin@localhost"),
        "heroku[web.1]: Starting process with command `python3 server.py`",
        "heroku[web.1]: State changed from starting to up",
        "app[web.1]: listening on port",
        "app[web.1]: GET / -> 200",
        "dyno=web.1 connect=",
        "status=200 bytes=",
    ] {
        assert!(logs.contains(expected), "logs lack {expected:?}:\n{logs}");
    }
    let first = logs.lines().next().unwrap_or_default();
    let stamp = first.split_whitespace().next().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with("+00:00"),
        "{first}"
    );
    // --tail streams lines as they happen.
    let mut tail = server.cli_spawn(&repo, &["logs", "--tail", "-n", "1"]);
    let lines = support::lines_of(tail.stdout.take().expect("stdout"));
    // Once the history line is out, the tail is subscribed: the next line must arrive live.
    lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the history line");
    let (status, _) = server.app_get("hello", "/tail-check");
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no tailed router line ({e}); got {seen:#?}"));
        if line.contains("heroku[router]") && line.contains("path=\"/tail-check\"") {
            break;
        }
        seen.push(line);
    }
    let _ = tail.kill();
    let _ = tail.wait();
    // The filter keeps the router's lines (there are three: H14, the first page, the tail check)
    // and only those, though the unfiltered stream has others.
    let everything = server.cli_ok(&repo, &["logs", "-n", "200"]);
    assert!(everything.contains(" app[api]: "), "{everything}");
    let router_only = server.cli_ok(&repo, &["logs", "--dyno", "router", "-n", "200"]);
    let lines: Vec<&str> = router_only.lines().collect();
    assert_eq!(lines.len(), 3, "{router_only}");
    assert!(
        lines.iter().all(|l| l.contains(" heroku[router]: ")),
        "{router_only}"
    );
    assert!(
        router_only.contains("path=\"/tail-check\""),
        "{router_only}"
    );

    // 8. A second push deploys v2 and replaces the dyno.
    let source = std::fs::read_to_string(repo.join("server.py")).expect("read");
    std::fs::write(
        repo.join("server.py"),
        source.replace("Hello from slipway", "Hello again"),
    )
    .expect("write");
    server.commit_all(&repo, "second");
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v2"), "{pushed}");
    wait_for(60, "v2 to serve", || {
        let (status, body) = server.app_get("hello", "/");
        (status == 200 && body.starts_with("Hello again")).then_some(())
    });
    let releases = server.cli_ok(&root, &["releases", "-a", "hello"]);
    assert!(
        releases.contains("Current: v2") && releases.contains("v2 ") && releases.contains("v1 "),
        "{releases}"
    );
    wait_for(30, "the v1 dyno to stop", || {
        let logs = server.cli_ok(&repo, &["logs", "-n", "300"]);
        logs.contains("heroku[web.1]: Stopping all processes with SIGTERM")
            .then_some(())
    });
    wait_for(30, "only the v2 dyno to remain", || {
        let (_, _, d) = server.api("GET", "/apps/hello/dynos", None);
        let d: serde_json::Value = serde_json::from_str(&d).ok()?;
        (d.as_array()?.len() == 1 && d[0]["release"]["version"] == 2).then_some(())
    });

    // Scaling web to 0 stops the dyno (H14), back to 1 serves again.
    let scaled = server.cli(&repo, &["ps:scale", "web=0"]);
    assert!(scaled.status.success(), "{}", text(&scaled));
    wait_for(30, "H14 after scaling to 0", || {
        (server.app_get("hello", "/").0 == 503).then_some(())
    });
    server.cli_ok(&repo, &["ps:scale", "web=1"]);
    wait_for(60, "the app to serve after scaling up", || {
        (server.app_get("hello", "/").0 == 200).then_some(())
    });

    // The app's repository can be cloned back (git-upload-pack).
    let clone = root.join("hello-clone");
    let url = format!(
        "http://git:{}@127.0.0.1:{}/hello.git",
        server.token(),
        server.api_port
    );
    server.git_ok(
        &root,
        &["clone", "-q", &url, clone.to_str().expect("utf-8 path")],
    );
    let cloned = server.git(&clone, &["rev-parse", "HEAD"]);
    let pushed_head = server.git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(cloned.stdout, pushed_head.stdout);

    // Names or ids in paths.
    let (_, _, app_json) = server.api("GET", "/apps/hello", None);
    let app_json: serde_json::Value = serde_json::from_str(&app_json).expect("app JSON");
    let id = app_json["id"].as_str().expect("id").to_string();
    let (status, _, v1) = server.api("GET", &format!("/apps/{id}/releases/1"), None);
    assert_eq!(status, 200, "{v1}");
    assert!(
        v1.contains(&format!("\"description\":\"Deploy {short}\"")),
        "{v1}"
    );
    let (status, _, config) =
        server.api("GET", &format!("/apps/{id}/releases/v1/config-vars"), None);
    assert_eq!((status, config.as_str()), (200, "{}"));
    let (status, _, addons) = server.api("GET", "/apps/hello/addons", None);
    assert_eq!((status, addons.as_str()), (200, "[]"));
    let (status, _, formation) = server.api("GET", &format!("/apps/{id}/formation/web"), None);
    assert!(
        status == 200 && formation.contains("\"quantity\":1"),
        "{formation}"
    );

    // Graceful shutdown: SIGTERM stops API, router and (by default) dynos within the
    // deadline, even with a log tail holding a connection open.
    assert!(!server.dyno_processes().is_empty());
    let mut tail = server.cli_spawn(&repo, &["logs", "--tail"]);
    let tail_lines = support::lines_of(tail.stdout.take().expect("stdout"));
    tail_lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the tail is open");
    let stopping = std::time::Instant::now();
    let status = server.terminate();
    assert!(status.success(), "server exit status {status}");
    // --shutdown-timeout 5 and --dyno-stop-timeout 5: well under 20 s in all.
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(20),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    // A tail outlives the server: it reconnects to the next one (tests/logs.rs). Stop it.
    assert!(
        tail.try_wait().expect("wait").is_none(),
        "the tail ended with the server"
    );
    tail.kill().expect("kill the tail");
    tail.wait().expect("wait for the tail");
    assert!(
        server.dyno_processes().is_empty(),
        "dynos left running: {:?}",
        server.dyno_processes()
    );
    assert!(!server.data.join("server.json").exists());

    // A restart brings the app back from the store, on the same token.
    let token = server.token();
    server.launch();
    assert!(!server
        .stdout_lines
        .iter()
        .any(|l| l.contains("created the admin API token")));
    assert_eq!(server.token(), token);
    let body = wait_for(60, "the app after a restart", || {
        let (status, body) = server.app_get("hello", "/");
        (status == 200).then_some(body)
    });
    assert!(body.starts_with("Hello again"), "{body}");
    let (status, headers, _) = server.api("GET", "/apps/hello/releases", None);
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("application/json")));
}
