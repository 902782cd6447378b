//! Bad input gets a clear error (HTTP status + message, non-zero CLI exit) and changes nothing.

mod support;

use support::{header, http, text, wait_for, Server};

#[test]
fn names_tokens_and_unknown_apps_are_refused_clearly() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();

    // Invalid names.
    for (bad, reason) in [
        ("Bad_Name", "must start with a lowercase letter"),
        ("ab", "too short"),
        ("1app", "must start"),
    ] {
        let out = server.cli(&root, &["apps:create", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(text(&out).contains(reason), "{bad}: {}", text(&out));
    }
    let (status, _, body) = server.api("POST", "/apps", Some(r#"{"name":"UPPER"}"#));
    assert_eq!(status, 422, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(json["id"], "invalid_params");
    assert!(json["message"]
        .as_str()
        .is_some_and(|m| m.contains("UPPER")));
    let (status, _, body) = server.api("POST", "/apps", Some("{not json"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"id\":\"bad_request\"") && body.contains("Invalid request body"),
        "{body}"
    );

    // Duplicates.
    server.cli_ok(&root, &["apps:create", "dup"]);
    let out = server.cli(&root, &["apps:create", "dup"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Name dup is already taken"),
        "{}",
        text(&out)
    );
    assert_eq!(
        server
            .cli_ok(&root, &["apps"])
            .lines()
            .filter(|l| *l == "dup")
            .count(),
        1
    );

    // A generated name when none is given.
    let out = server.cli_ok(&root, &["apps:create"]);
    assert!(out.contains(".localhost:"), "{out}");

    // Wrong or missing tokens.
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.args([
        "apps",
        "--api-url",
        &format!("http://127.0.0.1:{}", server.api_port),
        "--token",
        "wrong",
    ]);
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    assert!(text(&out).contains("Invalid credentials"), "{}", text(&out));
    let (status, headers, body) = http(server.api_port, "GET", "/apps", &[], None);
    assert_eq!(status, 401);
    assert!(body.contains("\"id\":\"unauthorized\""), "{body}");
    assert!(header(&headers, "www-authenticate").is_some());
    let (status, _, _) = http(
        server.api_port,
        "GET",
        "/account",
        &[("Authorization", "Bearer nope")],
        None,
    );
    assert_eq!(status, 401);
    let (status, _, body) = server.api("GET", "/account", None);
    assert_eq!(status, 200);
    assert!(body.contains("admin@localhost"), "{body}");

    // Unknown apps, in the API, the CLI and git.
    let (status, _, body) = server.api("GET", "/apps/nope", None);
    assert_eq!(status, 404);
    assert!(body.contains("\"id\":\"not_found\""), "{body}");
    let out = server.cli(&root, &["releases", "-a", "nope"]);
    assert!(
        !out.status.success() && text(&out).contains("Couldn't find that app"),
        "{}",
        text(&out)
    );
    let repo = server.sample_repo("src");
    let url = format!(
        "http://git:{}@127.0.0.1:{}/nope.git",
        server.token(),
        server.api_port
    );
    let out = server.git(&repo, &["push", &url, "main"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("No such app: nope"), "{}", text(&out));

    // A push with a wrong password is refused and leaves the repository untouched.
    server.cli_ok(&root, &["apps:create", "guarded"]);
    let url = format!("http://git:wrong@127.0.0.1:{}/guarded.git", server.api_port);
    let out = server.git(&repo, &["push", &url, "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    let good = format!(
        "http://git:{}@127.0.0.1:{}/guarded.git",
        server.token(),
        server.api_port
    );
    let refs = server.git(&repo, &["ls-remote", &good]);
    assert!(
        refs.status.success() && refs.stdout.is_empty(),
        "{}",
        text(&refs)
    );

    // A second server on the same data directory refuses to start, and the first keeps going.
    let second = std::process::Command::new(support::BIN)
        .args([
            "server",
            "--api-listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&server.data)
        .output()
        .expect("run a second server");
    assert!(!second.status.success());
    assert!(
        text(&second).contains("another slipway server is already using the data directory"),
        "{}",
        text(&second)
    );
    assert_eq!(http(server.api_port, "GET", "/health", &[], None).0, 200);

    // Destroy needs confirmation.
    let out = server.cli(&root, &["apps:destroy", "-a", "dup"]);
    assert!(
        !out.status.success() && text(&out).contains("--confirm dup"),
        "{}",
        text(&out)
    );
    let out = server.cli(&root, &["apps:destroy", "-a", "dup", "--confirm", "other"]);
    assert!(!out.status.success());
    server.cli_ok(&root, &["apps:destroy", "-a", "dup", "--confirm", "dup"]);
    assert!(!server.cli_ok(&root, &["apps"]).lines().any(|l| l == "dup"));

    // Scaling a process type that does not exist.
    let out = server.cli(&root, &["ps:scale", "-a", "guarded", "web=2"]);
    assert!(
        !out.status.success() && text(&out).contains("Couldn't find that process type"),
        "{}",
        text(&out)
    );
    let out = server.cli(&root, &["ps:scale", "-a", "guarded", "web=lots"]);
    assert!(
        !out.status.success() && text(&out).contains("invalid scale argument"),
        "{}",
        text(&out)
    );
}

#[test]
fn broken_procfiles_reject_the_push_and_keep_the_previous_release() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", "careful"]);
    let repo = server.sample_repo("careful-src");
    server.cli_ok(&repo, &["git:remote", "-a", "careful"]);

    // No Procfile: rejected, no release, no ref.
    std::fs::remove_file(repo.join("Procfile")).expect("rm");
    server.commit_all(&repo, "no procfile");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    assert!(!out.status.success());
    let said = text(&out);
    // Nothing to detect and no Procfile: the push says what each buildpack looks for.
    assert!(
        said.contains("no buildpack recognised this app and it has no Procfile"),
        "{said}"
    );
    assert!(
        said.contains("python: requirements.txt") && said.contains("nodejs: package.json"),
        "{said}"
    );
    assert!(said.contains("pre-receive hook declined"), "{said}");
    let releases = server.cli_ok(&root, &["releases", "-a", "careful"]);
    assert!(
        releases.contains("Current: none") && releases.contains("no releases yet"),
        "{releases}"
    );
    let refs = server.git(&repo, &["ls-remote", "slipway"]);
    assert!(
        refs.stdout.is_empty(),
        "a rejected push must not move the branch"
    );

    // A good push, then a malformed Procfile: v1 keeps serving.
    std::fs::write(repo.join("Procfile"), "web: python3 server.py\n").expect("write");
    server.commit_all(&repo, "good");
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "v1 to serve", || {
        (server.app_get("careful", "/").0 == 200).then_some(())
    });
    let good_head = String::from_utf8_lossy(&server.git(&repo, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();

    for (procfile, complaint) in [
        (
            "web python3 server.py\n",
            "Procfile line 1: expected `type: command`",
        ),
        ("web: a\nweb: b\n", "declared twice"),
        ("# only comments\n", "declares no process types"),
    ] {
        std::fs::write(repo.join("Procfile"), procfile).expect("write");
        server.commit_all(&repo, "broken");
        let out = server.git(&repo, &["push", "slipway", "main"]);
        assert!(!out.status.success(), "{procfile:?} was accepted");
        assert!(
            text(&out).contains(complaint),
            "{procfile:?}: {}",
            text(&out)
        );
    }
    let refs =
        String::from_utf8_lossy(&server.git(&repo, &["ls-remote", "slipway", "main"]).stdout)
            .into_owned();
    assert!(refs.starts_with(&good_head), "remote main moved: {refs}");
    let releases = server.cli_ok(&root, &["releases", "-a", "careful"]);
    assert!(
        releases.contains("Current: v1") && !releases.contains("v2"),
        "{releases}"
    );
    let (status, body) = server.app_get("careful", "/");
    assert_eq!(status, 200, "{body}");
    let (_, _, builds) = server.api("GET", "/apps/careful/builds", None);
    let builds: serde_json::Value = serde_json::from_str(&builds).expect("JSON");
    let statuses: Vec<&str> = builds
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["failed", "succeeded", "failed", "failed", "failed"]
    );

    // The deployed branch cannot be deleted.
    let out = server.git(&repo, &["push", "slipway", ":main"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Deleting refs/heads/main is not allowed"),
        "{}",
        text(&out)
    );

    // Pushing another branch does not deploy.
    server.git_ok(&repo, &["checkout", "-q", "-b", "feature"]);
    let said = server.git_ok(&repo, &["push", "slipway", "feature"]);
    assert!(said.contains("not deployed"), "{said}");
    assert!(server
        .cli_ok(&root, &["releases", "-a", "careful"])
        .contains("Current: v1"));
}

#[test]
fn lists_page_with_range_headers() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    for name in ["app-a", "app-b", "app-c"] {
        server.cli_ok(&root, &["apps:create", name]);
    }
    let auth = format!("Bearer {}", server.token());
    let get = |range: &str| {
        http(
            server.api_port,
            "GET",
            "/apps",
            &[("Authorization", &auth), ("Range", range)],
            None,
        )
    };
    let (status, headers, body) = get("name ..; max=2");
    assert_eq!(status, 206, "{body}");
    let names: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(names.as_array().map(Vec::len), Some(2));
    let next = header(&headers, "next-range")
        .expect("Next-Range")
        .to_string();
    let (status, headers, body) = get(&next);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("app-c") && !body.contains("app-a"), "{body}");
    assert!(
        header(&headers, "next-range").is_none(),
        "the last page has no Next-Range"
    );
    let (status, _, body) = get("colour ..");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_crashing_app_gets_h10_clear_logs_and_recovers_on_the_next_push() {
    let server = Server::start();
    let repo = server.sample_repo("crashy-src");
    // Inside a repository, apps:create adds the `slipway` remote, as `heroku create` does.
    let created = server.cli_ok(&repo, &["apps:create", "crashy"]);
    assert!(created.contains("set git remote slipway to"), "{created}");
    std::fs::write(
        repo.join("Procfile"),
        "web: echo 'boom: missing DATABASE_URL' >&2; exit 1\n",
    )
    .expect("write");
    server.commit_all(&repo, "crashes at boot");
    // The build succeeds: the crash only shows at run time, as on Heroku.
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "H10 from the router", || {
        let (status, body) = server.app_get("crashy", "/");
        (status == 503 && body.contains("Application error")).then_some(())
    });
    let logs = wait_for(30, "the crash in the logs", || {
        let logs = server.cli_ok(&repo, &["logs", "-n", "200"]);
        (logs.contains("code=H10 desc=\"App crashed\"")
            && logs.contains("State changed from starting to crashed"))
        .then_some(logs)
    });
    assert!(
        logs.contains("app[web.1]: boom: missing DATABASE_URL"),
        "{logs}"
    );
    assert!(
        logs.contains("heroku[web.1]: Process exited with status 1"),
        "{logs}"
    );
    // Restarts back off (1 s, 2 s, 4 s ...), so `ps` soon shows the dyno crashed between tries.
    wait_for(30, "ps to show web.1 crashed", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        ps.contains("web.1: crashed").then_some(())
    });

    // Fixing the Procfile and pushing again brings it up.
    std::fs::write(repo.join("Procfile"), "web: python3 server.py\n").expect("write");
    server.commit_all(&repo, "fixed");
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the fixed app to serve", || {
        (server.app_get("crashy", "/").0 == 200).then_some(())
    });
}

/// Values a client controls cannot forge fields of the router's log line, and a request naming
/// two hosts is refused rather than routed by one of them.
#[test]
fn clients_cannot_forge_router_log_fields_or_pick_between_two_hosts() {
    let server = Server::start();
    let repo = server.sample_repo("forge-src");
    server.cli_ok(&repo, &["apps:create", "forge"]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the app to serve", || {
        (server.app_get("forge", "/").0 == 200).then_some(())
    });

    let forged = "1.2.3.4\" at=info status=200 host=bank.example.com x=\"";
    let (status, _, _) = http(
        server.router_port,
        "GET",
        "/forged",
        &[("Host", "forge.localhost"), ("X-Forwarded-For", forged)],
        None,
    );
    assert_eq!(status, 200);
    let line = wait_for(30, "the router line of the forged request", || {
        let logs = server.cli_ok(&repo, &["logs", "--dyno", "router", "-n", "200"]);
        logs.lines()
            .find(|l| l.contains("path=\"/forged\""))
            .map(str::to_string)
    });
    // Outside quoted values, each field appears once, with the router's own value.
    let mut bare = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, c) => bare.push(c),
            _ => {}
        }
    }
    assert_eq!(bare.matches(" status=").count(), 1, "{line}");
    assert_eq!(bare.matches(" at=").count(), 1, "{line}");
    assert!(bare.contains(" status=200 "), "{line}");
    assert!(!bare.contains("bank.example.com"), "{line}");

    let (status, _, body) = http(
        server.router_port,
        "GET",
        "/two-hosts",
        &[("Host", "forge.localhost"), ("Host", "other.localhost")],
        None,
    );
    assert_eq!(status, 400, "{body}");
    // No dyno saw it: the app's log has no served request for that path.
    let logs = server.cli_ok(&repo, &["logs", "-n", "200"]);
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("at=info") && l.contains("path=\"/two-hosts\"")),
        "{logs}"
    );
}

/// A slug over the server's limit is refused with what to do, and nothing is released.
#[test]
fn a_slug_over_the_limit_is_refused_naming_the_limit() {
    let server = Server::start_with(&["--max-slug-size", "1"]);
    let repo = server.sample_repo("big-src");
    // 2 MB that do not compress.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(repo.join("blob.bin"), noise).expect("write");
    server.commit_all(&repo, "too big");
    server.cli_ok(&repo, &["apps:create", "biggie"]);
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("larger than the 1048576-byte limit"),
        "{said}"
    );
    assert!(said.contains(".slugignore"), "{said}");
    let releases = server.cli_ok(&repo, &["releases"]);
    assert!(!releases.contains("v1"), "{releases}");
}
