//! Day-2 operations through the real binary (issue 9): config vars, releases and rollback,
//! formation sizes, restarts, renames and destroy.

// Not every test file uses every helper the shared support module re-exports.
#[allow(unused_imports)]
mod support;

use serde_json::Value;
use support::{text, wait_for, walk, Server};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Creates `app` from the sample app in a new repository and deploys it (v1).
fn deployed(server: &Server, app: &str) -> std::path::PathBuf {
    let repo = server.sample_repo(&format!("{app}-src"));
    server.cli_ok(&repo, &["apps:create", app]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the app to serve", || {
        (server.app_get(app, "/").0 == 200).then_some(())
    });
    repo
}

/// Waits until the router answers `app` with a page containing `expected`.
fn serves(server: &Server, app: &str, expected: &str) -> String {
    wait_for(60, &format!("{app} to answer {expected:?}"), || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.contains(expected)).then_some(body)
    })
}

fn versions(server: &Server, app: &str) -> Vec<i64> {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/releases"), None);
    assert_eq!(status, 200, "{body}");
    json(&body)
        .as_array()
        .expect("releases")
        .iter()
        .filter_map(|r| r["version"].as_i64())
        .collect()
}

#[test]
fn rollback_restores_code_and_config() {
    let server = Server::start();
    let repo = deployed(&server, "roll");
    serves(&server, "roll", "Hello from slipway (dyno web.1)");

    // v2: config. v3: code. v4: config again.
    let said = text(&server.cli(&repo, &["config:set", "GREETING=first"]));
    assert!(
        said.contains("Setting GREETING and restarting roll... done, v2"),
        "{said}"
    );
    serves(&server, "roll", "first (dyno web.1)");
    let code = std::fs::read_to_string(repo.join("server.py")).expect("server.py");
    let changed = code.replace("f\"{GREETING} (dyno", "f\"{GREETING} new-code (dyno");
    assert_ne!(
        code, changed,
        "the sample app's greeting line changed; update this test"
    );
    std::fs::write(repo.join("server.py"), changed).expect("write");
    server.commit_all(&repo, "new code");
    server.git_ok(&repo, &["push", "slipway", "main"]);
    serves(&server, "roll", "first new-code (dyno");
    server.cli_ok(&repo, &["config:set", "GREETING=second"]);
    serves(&server, "roll", "second new-code (dyno");

    // Back to v2: its code and its config.
    let said = text(&server.cli(&repo, &["rollback", "v2"]));
    assert!(
        said.contains("Rolling back roll to v2... done, v5"),
        "{said}"
    );
    let body = serves(&server, "roll", "first (dyno");
    assert!(!body.contains("new-code"), "{body}");
    assert_eq!(server.cli_ok(&repo, &["config:get", "GREETING"]), "first\n");
    let releases = server.cli_ok(&repo, &["releases"]);
    assert!(
        releases.contains("=== roll Releases - Current: v5"),
        "{releases}"
    );
    assert!(releases.contains("v5    Rollback to v2"), "{releases}");
    assert!(
        releases.contains("v4    Set GREETING config vars"),
        "{releases}"
    );
    let info = server.cli_ok(&repo, &["releases:info", "v5"]);
    assert!(
        info.contains("Change:      Rollback to v2") && info.contains("\nGREETING\n"),
        "{info}"
    );
    assert!(
        !info.contains("first"),
        "releases:info shows names, not values: {info}"
    );

    // Without a version: the release before the current one (v4).
    server.cli_ok(&repo, &["rollback"]);
    serves(&server, "roll", "second new-code (dyno");
    assert_eq!(versions(&server, "roll"), (1..=6).collect::<Vec<_>>());

    // Through the API, by number; then refusals: unknown, no slug, slug gone.
    let (status, _, body) = server.api("POST", "/apps/roll/releases", Some(r#"{"release":3}"#));
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["description"], "Rollback to v3");
    let (status, _, body) = server.api("POST", "/apps/roll/releases", Some(r#"{"release":"v42"}"#));
    assert_eq!(
        (status, json(&body)["id"].clone()),
        (404, "not_found".into()),
        "{body}"
    );
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", "early"]);
    server.cli_ok(&root, &["config:set", "-a", "early", "X=1"]);
    let out = server.cli(&root, &["rollback", "-a", "early", "v1"]);
    assert!(
        !out.status.success() && text(&out).contains("it has no slug"),
        "{}",
        text(&out)
    );
    // v1's slug file (the older of the two) disappears: v1 and v2 can't come back.
    let mut slugs: Vec<_> = walk(&server.data.join("slugs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tgz"))
        .map(|p| {
            (
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .expect("mtime"),
                p,
            )
        })
        .collect();
    slugs.sort();
    assert_eq!(slugs.len(), 2, "{slugs:?}");
    std::fs::remove_file(&slugs[0].1).expect("remove slug");
    let out = server.cli(&repo, &["rollback", "v2"]);
    assert!(
        !out.status.success() && text(&out).contains("its slug is gone"),
        "{}",
        text(&out)
    );
    assert_eq!(
        versions(&server, "roll").len(),
        7,
        "a refused rollback adds no release"
    );
}

#[test]
fn twenty_concurrent_config_sets_all_land_in_a_gapless_ledger() {
    let server = Server::start();
    let repo = deployed(&server, "busy");
    let outputs: Vec<std::process::Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (server, repo) = (&server, &repo);
                scope
                    .spawn(move || server.cli(repo, &["config:set", &format!("KEY_{i}=value-{i}")]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for out in &outputs {
        assert!(out.status.success(), "{}", text(out));
    }
    let (_, _, body) = server.api("GET", "/apps/busy/config-vars", None);
    let config = json(&body);
    for i in 0..20 {
        assert_eq!(config[format!("KEY_{i}")], format!("value-{i}"), "{body}");
    }
    assert_eq!(versions(&server, "busy"), (1..=21).collect::<Vec<_>>());
    let listed = json(&server.cli_ok(&repo, &["releases", "-n", "3", "--json"]));
    let listed: Vec<i64> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["version"].as_i64())
        .collect();
    assert_eq!(listed, [21, 20, 19]);
    let (_, _, body) = server.api("GET", "/apps/busy/releases/21", None);
    let last = json(&body);
    assert_eq!(last["current"], true, "{body}");
    // The dynos end up on the last release, which carries all twenty.
    wait_for(60, "web.1 to run v21", || {
        let (_, _, body) = server.api("GET", "/apps/busy/dynos", None);
        let dynos = json(&body);
        let list = dynos.as_array().cloned().unwrap_or_default();
        (list.len() == 1 && list[0]["release"]["version"] == 21 && list[0]["state"] == "up")
            .then_some(())
    });
    let (_, _, body) = server.api("GET", "/apps/busy/releases/21/config-vars", None);
    assert_eq!(json(&body).as_object().map(|m| m.len()), Some(20), "{body}");
}

#[test]
fn config_values_round_trip_reach_dynos_and_never_reach_the_platform_log() {
    let server = Server::start_logged(&[]);
    let repo = deployed(&server, "secretive");
    let secret = "s3cr3t-7f3a9b";
    let tricky = format!("it's \"{secret}\"\nline two = x=y\n\tnaïve ✓ $HOME `id` \\ end");

    // Through the API, byte for byte.
    let body = serde_json::json!({ "TRICKY": tricky }).to_string();
    let (status, _, answer) = server.api("PATCH", "/apps/secretive/config-vars", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let (_, _, body) = server.api("GET", "/apps/secretive/config-vars", None);
    assert_eq!(json(&body)["TRICKY"], tricky.as_str());
    // Through the CLI: set as one argument, read back exactly.
    server.cli_ok(&repo, &["config:set", &format!("OTHER={tricky}")]);
    assert_eq!(
        server.cli_ok(&repo, &["config:get", "OTHER"]),
        format!("{tricky}\n")
    );
    let (_, _, body) = server.api("GET", "/apps/secretive/config-vars", None);
    assert_eq!(json(&body)["OTHER"], tricky.as_str());
    // `config -s` reads back in a shell; `config --json` parses.
    let shell = server.cli_ok(&repo, &["config", "-s"]);
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{shell}\nprintf %s \"$OTHER\"")])
        .output()
        .expect("sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), tricky, "{shell}");
    let parsed = json(&server.cli_ok(&repo, &["config", "--json"]));
    assert_eq!(parsed["TRICKY"], tricky.as_str());

    // Config vars reach the dyno (the sample app shows GREETING).
    server.cli_ok(&repo, &["config:set", &format!("GREETING=hi-{secret}")]);
    serves(&server, "secretive", &format!("hi-{secret} (dyno web.1)"));

    // Bad input: refused, naming keys, never echoing values.
    for bad in [
        serde_json::json!({ "BAD-NAME": secret }),
        serde_json::json!({ "OK": secret, "9": secret }),
        serde_json::json!({ "NUM": 7, "NUL": format!("{secret}\u{0}") }),
        serde_json::json!({ "BIG": format!("{secret}{}", "x".repeat(40 * 1024)) }),
        serde_json::json!(secret),
    ] {
        let (status, _, answer) = server.api(
            "PATCH",
            "/apps/secretive/config-vars",
            Some(&bad.to_string()),
        );
        assert_eq!(status, 422, "{answer}");
        assert_eq!(json(&answer)["id"], "invalid_params");
        assert!(
            !answer.contains(secret),
            "the error echoes a value: {answer}"
        );
    }
    let out = server.cli(&repo, &["config:set", "NOT-OK=1"]);
    assert!(
        !out.status.success() && text(&out).contains("\"NOT-OK\""),
        "{}",
        text(&out)
    );
    // Unset: one release, the key gone.
    let said = text(&server.cli(&repo, &["config:unset", "TRICKY", "OTHER"]));
    assert!(
        said.contains("Unsetting TRICKY, OTHER and restarting secretive... done"),
        "{said}"
    );
    let releases = server.cli_ok(&repo, &["releases", "-n", "1"]);
    assert!(
        releases.contains("Remove OTHER, TRICKY config vars"),
        "{releases}"
    );
    assert_eq!(server.cli_ok(&repo, &["config:get", "TRICKY"]), "\n");

    // The platform's own log (the server's stderr) and the app's platform lines name the
    // changes, never the values.
    let log = wait_for(10, "config-vars requests in the server log", || {
        let log = server.server_log();
        log.contains("route=/apps/{app}/config-vars").then_some(log)
    });
    assert!(
        !log.contains(secret),
        "a config value is in the server log:\n{log}"
    );
    let logs = server.cli_ok(&repo, &["logs", "-n", "1500", "--source", "app"]);
    let api_lines: Vec<&str> = logs.lines().filter(|l| l.contains("app[api]:")).collect();
    assert!(
        api_lines
            .iter()
            .any(|l| l.contains("Set GREETING config vars by user")),
        "{logs}"
    );
    for line in api_lines {
        assert!(!line.contains(secret), "{line}");
    }
}

#[test]
fn rename_keeps_serving_and_git_pushes_to_the_new_remote() {
    let server = Server::start();
    let repo = deployed(&server, "before");
    let said = text(&server.cli(&repo, &["apps:rename", "after"]));
    assert!(said.contains("Renaming before to after... done"), "{said}");
    assert!(said.contains("Git remote slipway updated"), "{said}");
    serves(&server, "after", "Hello from slipway (dyno web.1)");
    let (status, _) = server.app_get("before", "/");
    assert_eq!(status, 404, "the old name no longer routes");
    let remote = server.git_ok(&repo, &["remote", "-v"]);
    let url = String::from_utf8_lossy(&server.git(&repo, &["remote", "get-url", "slipway"]).stdout)
        .trim()
        .to_string();
    assert!(url.ends_with("/after.git"), "{url} {remote}");

    // A push to the new remote deploys.
    server.cli_ok(&repo, &["config:set", "GREETING=renamed"]);
    std::fs::write(repo.join("extra.txt"), "new commit").expect("write");
    server.commit_all(&repo, "after the rename");
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v3"), "{pushed}");
    serves(&server, "after", "renamed (dyno web.1)");
    assert!(server
        .cli_ok(&repo, &["apps"])
        .lines()
        .any(|l| l == "after"));

    // A field the API does not implement is refused, and nothing changes.
    let (status, _, body) = server.api(
        "PATCH",
        "/apps/after",
        Some(r#"{"name":"again","region":"eu"}"#),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(server.api("GET", "/apps/after", None).0, 200);
    assert_eq!(server.api("GET", "/apps/again", None).0, 404);
}

fn dynos(server: &Server, app: &str) -> Vec<Value> {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/dynos"), None);
    assert_eq!(status, 200, "{body}");
    json(&body).as_array().cloned().unwrap_or_default()
}

/// Waits until the app runs exactly `names`, all up, none of them with an id in `old`.
fn runs_fresh(server: &Server, app: &str, names: &[&str], old: &[String]) -> Vec<Value> {
    wait_for(60, &format!("fresh {names:?} up"), || {
        let list = dynos(server, app);
        let mut got: Vec<&str> = list.iter().filter_map(|d| d["name"].as_str()).collect();
        got.sort();
        let fresh = list
            .iter()
            .all(|d| d["state"] == "up" && !old.iter().any(|o| d["id"] == o.as_str()));
        (got == names && fresh).then_some(list.clone())
    })
}

fn ids(list: &[Value], name: &str) -> Vec<String> {
    list.iter()
        .filter(|d| name.is_empty() || d["name"] == name)
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn formation_sizes_restarts_and_destroy() {
    let server = Server::start();
    let repo = deployed(&server, "shape");

    // Sizes: on the formation and its dynos.
    server.cli_ok(&repo, &["ps:scale", "web=2:standard-2X"]);
    let list = runs_fresh(&server, "shape", &["web.1", "web.2"], &[]);
    assert!(list.iter().all(|d| d["size"] == "standard-2X"), "{list:?}");
    server.cli_ok(&repo, &["ps:type", "web=performance-m"]);
    let (_, _, body) = server.api("GET", "/apps/shape/formation/web", None);
    assert_eq!(json(&body)["size"], "performance-M");
    // A new size replaces the type's dynos (their limits come from it).
    let list = runs_fresh(&server, "shape", &["web.1", "web.2"], &ids(&list, ""));
    assert!(
        list.iter().all(|d| d["size"] == "performance-M"),
        "{list:?}"
    );
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(
        ps.contains("=== web (performance-M): python3 server.py (2)"),
        "{ps}"
    );
    for (args, complaint) in [
        (
            vec!["ps:type", "web=huge"],
            "standard-1X, standard-2X, performance-M",
        ),
        (
            vec!["ps:scale", "worker=1"],
            "Couldn't find that process type (worker)",
        ),
        (
            vec!["ps:restart", "worker"],
            "Couldn't find that process type (worker)",
        ),
        (
            vec!["ps:restart", "web.3"],
            "Couldn't find that dyno (web.3)",
        ),
    ] {
        let out = server.cli(&repo, &args);
        assert!(
            !out.status.success() && text(&out).contains(complaint),
            "{args:?}: {}",
            text(&out)
        );
    }

    // Restarts: a dyno, a type, everything; each replaced by a fresh one.
    let before = dynos(&server, "shape");
    let said = server.cli_ok(&repo, &["ps:restart", "web.2"]);
    assert_eq!(said, "web.2\n");
    let mut old = ids(&before, "web.2");
    let after = runs_fresh(&server, "shape", &["web.1", "web.2"], &old);
    assert_eq!(
        ids(&after, "web.1"),
        ids(&before, "web.1"),
        "web.1 kept running"
    );
    old = ids(&after, "");
    let said = server.cli_ok(&repo, &["ps:restart", "web"]);
    assert_eq!(said, "web.1\nweb.2\n");
    let after = runs_fresh(&server, "shape", &["web.1", "web.2"], &old);
    let said = server.cli_ok(&repo, &["ps:stop", "web.2"]);
    assert_eq!(said, "web.2\n");
    let after_stop = runs_fresh(&server, "shape", &["web.1", "web.2"], &ids(&after, "web.2"));
    let said = server.cli_ok(&repo, &["ps:restart"]);
    assert_eq!(said, "web.1\nweb.2\n");
    let after_all = runs_fresh(&server, "shape", &["web.1", "web.2"], &ids(&after_stop, ""));
    // The Platform API's other spelling for a type restart.
    let (status, _, body) = server.api("DELETE", "/apps/shape/formations/web", None);
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        json(&body)["restarted"],
        serde_json::json!(["web.1", "web.2"])
    );
    runs_fresh(&server, "shape", &["web.1", "web.2"], &ids(&after_all, ""));
    let ps = json(&server.cli_ok(&repo, &["ps", "--json"]));
    assert_eq!(ps.as_array().map(Vec::len), Some(2), "{ps}");
    serves(&server, "shape", "Hello from slipway");
    let logs = server.cli_ok(&repo, &["logs", "-n", "1500"]);
    assert!(logs.contains("app[api]: Restart web.2 by user"), "{logs}");

    // A one-off needs a command (one-off dynos are tested in oneoff.rs).
    let (status, _, body) = server.api("POST", "/apps/shape/dynos", Some(r#"{"command":" "}"#));
    assert_eq!(status, 422, "{body}");
    assert_eq!(json(&body)["id"], "invalid_params");

    // Destroy says what it removed, and removes it.
    let app_id = json(&server.api("GET", "/apps/shape", None).2)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let said = server.cli_ok(
        &repo,
        &["apps:destroy", "-a", "shape", "--confirm", "shape"],
    );
    assert!(
        said.contains("Removed 2 dyno(s), 1 release(s), 1 build(s), 1 slug(s)")
            && said.contains("the git repository"),
        "{said}"
    );
    assert!(!server
        .data
        .join("repos")
        .join(format!("{app_id}.git"))
        .exists());
    assert!(!server.data.join("slugs").join(&app_id).exists());
    assert!(server.dyno_processes().is_empty(), "dynos left running");
    assert_eq!(server.api("GET", "/apps/shape", None).0, 404);
}
