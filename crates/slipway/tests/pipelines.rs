//! Pipelines through the real binary (issue 10): a pipeline's own git remote, builds tested
//! in one-off dynos, strategies, `#stage` tags, manual deploys, promotion, stage secrets.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{ok, set_greeting, text, wait_for, Server};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// The sample web app answering `greeting`, with `app_json` (if any), committed on main in a
/// repository of its own.
fn app_repo(server: &Server, name: &str, greeting: &str, app_json: Option<&str>) -> PathBuf {
    let repo = server.sample_repo(name);
    set_greeting(&repo, greeting);
    if let Some(a) = app_json {
        std::fs::write(repo.join("app.json"), a).expect("app.json");
    }
    server.commit_all(&repo, "app");
    repo
}

fn test_json(script: &str, env: &str) -> String {
    format!(
        r#"{{"environments": {{"test": {{"scripts": {{"test": {}}}, "env": {env}}}}}}}"#,
        serde_json::to_string(script).expect("script")
    )
}

/// A pipeline with stages `(name, strategy args)` whose targets are new apps named
/// `<stage>-<suffix>`; its remote `pipeline` is added to `repo`.
fn pipeline(server: &Server, repo: &Path, name: &str, stages: &[(&str, &[&str])], suffix: &str) {
    ok(server, repo, &["pipelines:create", name]);
    for (stage, strategy) in stages {
        let mut args = vec!["pipelines:stages:add", name, stage];
        args.extend_from_slice(strategy);
        ok(server, repo, &args);
        let app = format!("{stage}-{suffix}");
        ok(server, repo, &["apps:create", &app, "--no-remote"]);
        ok(server, repo, &["pipelines:targets:add", name, stage, &app]);
    }
}

fn build(server: &Server, pipeline: &str, number: i64) -> Value {
    let (status, _, body) = server.api(
        "GET",
        &format!("/pipelines/{pipeline}/builds/{number}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    json(&body)
}

fn releases(server: &Server, app: &str) -> Vec<Value> {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/releases"), None);
    assert_eq!(status, 200, "{body}");
    json(&body).as_array().cloned().unwrap_or_default()
}

fn serves(server: &Server, app: &str, needle: &str) {
    wait_for(120, &format!("{app} to serve {needle:?}"), || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.contains(needle)).then_some(())
    });
}

fn push(server: &Server, repo: &Path, refspec: &str) -> String {
    server.git_ok(repo, &["push", "pipeline", refspec])
}

#[test]
fn failing_tests_never_deploy_and_a_stage_tag_deploys_once_passed() {
    // Pipeline builds run in the OCI sandbox like app builds (the same compile spec).
    let server = Server::start_with(&["--dyno-runtime", "oci"]);
    let repo = app_repo(
        &server,
        "tagged",
        "Build one",
        Some(&test_json(
            "echo testing with $SHOULD_PASS; test \"$SHOULD_PASS\" = yes",
            r#"{"SHOULD_PASS": "no"}"#,
        )),
    );
    pipeline(
        &server,
        &repo,
        "shop",
        &[
            ("staging", &["--automatic", "main"]),
            ("production", &["--manual"]),
        ],
        "tag",
    );

    // Build #1: the tests fail, so nothing deploys, not even to the automatic stage.
    let pushed = push(&server, &repo, "main");
    assert!(pushed.contains("Building in a container: oci"), "{pushed}");
    assert!(pushed.contains("testing with no"), "{pushed}");
    assert!(pushed.contains("Build #1 failed"), "{pushed}");
    let b1 = build(&server, "shop", 1);
    assert_eq!(b1["status"], "failed", "{b1}");
    assert!(
        b1["reason"]
            .as_str()
            .unwrap_or("")
            .contains("exited with status 1"),
        "{b1}"
    );
    assert_eq!(b1["deploys"], Value::Array(vec![]), "{b1}");
    assert!(releases(&server, "staging-tag").is_empty());
    // A manual deploy of it is refused, naming why, and the CLI exits non-zero.
    let refused = server.cli(
        &repo,
        &["pipelines:deploy", "1", "--to", "production", "-p", "shop"],
    );
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("build #1 did not pass (failed: the tests failed"),
        "{said}"
    );
    assert!(releases(&server, "production-tag").is_empty());
    let output = ok(
        &server,
        &repo,
        &["builds:output", "1", "--pipeline", "shop"],
    );
    assert!(output.contains("testing with no"), "{output}");

    // Build #2 passes and says #production: production gets it (and staging, automatic).
    std::fs::write(
        repo.join("app.json"),
        test_json("test \"$SHOULD_PASS\" = yes", r#"{"SHOULD_PASS": "yes"}"#),
    )
    .expect("app.json");
    set_greeting(&repo, "Build two");
    server.commit_all(&repo, "Fix the tests #production");
    let pushed = push(&server, &repo, "main");
    assert!(pushed.contains("Build #2 passed"), "{pushed}");
    assert!(
        pushed.contains("Deploying build #2 to production (commit message tag)"),
        "{pushed}"
    );
    serves(&server, "production-tag", "Build two");
    serves(&server, "staging-tag", "Build two");
    let listed = ok(&server, &repo, &["builds", "--pipeline", "shop"]);
    assert!(listed.contains("Fix the tests #production"), "{listed}");
    assert!(listed.contains("failed"), "{listed}");
}

/// sha256 of every slug file of an app.
fn slug_files(server: &Server, app: &str) -> Vec<String> {
    let (_, _, body) = server.api("GET", &format!("/apps/{app}"), None);
    let id = json(&body)["id"].as_str().expect("app id").to_string();
    let dir = server.data.join("slugs").join(id);
    let mut sums = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("slug dir").flatten() {
        let out = std::process::Command::new("sha256sum")
            .arg(entry.path())
            .output()
            .expect("sha256sum");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        sums.push(line.split_whitespace().next().unwrap_or("").to_string());
    }
    sums
}

#[test]
fn automatic_strategy_deploys_only_its_branch_and_promotion_reuses_the_slug() {
    let server = Server::start();
    let repo = app_repo(&server, "promoted", "From main", None);
    pipeline(
        &server,
        &repo,
        "flow",
        &[("staging", &["--automatic", "main"]), ("production", &[])],
        "flow",
    );

    // Bad input is refused, naming what and how to fix it, and changes nothing.
    for (args, says) in [
        (
            &["pipelines:stages:add", "flow", "Bad_Name"][..],
            "Invalid stage name \"Bad_Name\"",
        ),
        (
            &["pipelines:stages:add", "flow", "qa", "--automatic", "a..b"],
            "Invalid branch name",
        ),
        (
            &["pipelines:stages:add", "flow", "qa", "--after", "nowhere"],
            "has no stage nowhere; its stages: staging, production",
        ),
        (
            &["pipelines:targets:add", "flow", "staging", "no-such-app"],
            "Couldn't find that app",
        ),
        (
            &["pipelines:env:set", "flow", "staging", "1BAD=x"],
            "Invalid environment variable name",
        ),
        (
            &["pipelines:deploy", "7", "--to", "staging", "-p", "flow"],
            "has no build 7",
        ),
    ] {
        let out = server.cli(&repo, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let (_, _, body) = server.api("GET", "/pipelines/flow", None);
    assert_eq!(
        json(&body)["stages"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    // A passed build of another branch deploys nowhere.
    server.git_ok(&repo, &["checkout", "-q", "-b", "feature"]);
    set_greeting(&repo, "From feature");
    server.commit_all(&repo, "feature work");
    let pushed = push(&server, &repo, "feature");
    assert!(pushed.contains("Build #1 passed"), "{pushed}");
    assert!(pushed.contains("passed without tests"), "{pushed}");
    assert_eq!(build(&server, "flow", 1)["deploys"], Value::Array(vec![]));
    assert!(releases(&server, "staging-flow").is_empty());

    // main's build deploys to staging by itself.
    server.git_ok(&repo, &["checkout", "-q", "main"]);
    let pushed = push(&server, &repo, "main");
    assert!(pushed.contains("Build #2 passed"), "{pushed}");
    serves(&server, "staging-flow", "From main");
    assert!(releases(&server, "production-flow").is_empty());
    let b2 = build(&server, "flow", 2);
    let checksum = b2["slug"]["checksum"]
        .as_str()
        .expect("checksum")
        .to_string();

    // Promotion: the same slug, no new build.
    let promoted = ok(
        &server,
        &repo,
        &["pipelines:promote", "flow", "--from", "staging"],
    );
    assert!(promoted.contains(&checksum), "{promoted}");
    serves(&server, "production-flow", "From main");
    let (_, _, body) = server.api("GET", "/pipelines/flow/builds", None);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(2), "no build");
    let staging = slug_files(&server, "staging-flow");
    let production = slug_files(&server, "production-flow");
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert_eq!(staging, production, "the promoted slug is the same file");
    let info = ok(&server, &repo, &["pipelines:info", "flow"]);
    assert!(
        info.contains("production: manual; targets: production-flow; runs build #2"),
        "{info}"
    );
    // main fast-forwarded to the feature commit (built and passed before, not rebuilt) now
    // deploys to staging: it is newer than what staging runs.
    let pushed = push(&server, &repo, "feature:main");
    assert!(
        pushed.contains("was built before as build #1 (passed)"),
        "{pushed}"
    );
    serves(&server, "staging-flow", "From feature");
    // The last stage has nowhere to promote to.
    let out = server.cli(
        &repo,
        &["pipelines:promote", "flow", "--from", "production"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("production is the last stage"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_stage_secret_never_appears_in_any_output() {
    const SECRET: &str = "tok-5f3a9c1e-very-secret";
    let server = Server::start_logged(&[]);
    let repo = app_repo(&server, "secretive", "Secret keeper", None);
    // The repository holds only the secret's hash: the release phase checks it got the value.
    let hash = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{SECRET}' | sha256sum")])
        .output()
        .expect("sha256sum");
    let hash = String::from_utf8_lossy(&hash.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string();
    // The deploy's pre-deploy command (Dokku's app.json key) gets the stage's environment.
    let predeploy = format!(
        "printf %s \"$DEPLOY_TOKEN\" | sha256sum | grep -q {hash} && echo \"token ok: $DEPLOY_TOKEN\""
    );
    let app_json = serde_json::json!({"scripts": {"dokku": {"predeploy": predeploy}}});
    std::fs::write(repo.join("app.json"), app_json.to_string()).expect("app.json");
    server.commit_all(&repo, "pre-deploy checks the token");
    pipeline(&server, &repo, "vault", &[("production", &[])], "sec");
    let mut seen = Vec::new();
    seen.push(ok(
        &server,
        &repo,
        &[
            "pipelines:env:set",
            "vault",
            "production",
            &format!("DEPLOY_TOKEN={SECRET}"),
        ],
    ));
    seen.push(push(&server, &repo, "main"));
    let deployed = ok(
        &server,
        &repo,
        &["pipelines:deploy", "1", "--to", "production", "-p", "vault"],
    );
    // The pre-deploy command got the secret (its check passed) and printed it masked.
    assert!(deployed.contains("token ok: [masked]"), "{deployed}");
    serves(&server, "production-sec", "Secret keeper");
    seen.push(deployed);
    for args in [
        &["pipelines:env", "vault", "production"][..],
        &["pipelines:info", "vault"],
        &["pipelines:info", "vault", "--json"],
        &["pipelines"],
        &["pipelines:deploys", "vault"],
        &["builds", "--pipeline", "vault"],
        &["builds:info", "1", "--pipeline", "vault", "--json"],
        &["builds:output", "1", "--pipeline", "vault"],
        &["deploys:info", "1", "-a", "production-sec"],
        &["releases", "-a", "production-sec"],
        &["config", "-a", "production-sec"],
        &["logs", "-a", "production-sec", "-n", "1500"],
        &["releases:info", "-a", "production-sec"],
    ] {
        seen.push(ok(&server, &repo, args));
    }
    let (_, _, env) = server.api("GET", "/pipelines/vault/stages/production/env", None);
    assert_eq!(json(&env)["DEPLOY_TOKEN"], "*****", "{env}");
    seen.push(env);
    // Without the secret the pre-deploy command fails: the deploy fails, the CLI exits non-zero
    // and the previous release keeps serving.
    seen.push(ok(
        &server,
        &repo,
        &["pipelines:env:unset", "vault", "production", "DEPLOY_TOKEN"],
    ));
    let failed = server.cli(
        &repo,
        &["pipelines:deploy", "1", "--to", "production", "-p", "vault"],
    );
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("exited with status 1"),
        "{}",
        text(&failed)
    );
    seen.push(text(&failed));
    let (status, body) = server.app_get("production-sec", "/");
    assert_eq!(
        (status, body.contains("Secret keeper")),
        (200, true),
        "{body}"
    );
    // The hook's endpoint takes only a live push's token.
    let (status, _, _) = slipway_testkit::http(
        server.api_port,
        "POST",
        "/internal/pipeline-builds",
        &[("Authorization", &format!("Bearer {}", server.token()))],
        Some(&format!(
            "{} {} refs/heads/main\n",
            "0".repeat(40),
            "1".repeat(40)
        )),
    );
    assert_eq!(status, 401);
    let (_, _, body) = server.api("GET", "/pipelines/vault", None);
    seen.push(body);
    seen.push(server.server_log());
    let logs = seen.last().expect("log").clone();
    assert!(!logs.is_empty(), "the server log was kept");
    for out in &seen {
        assert!(!out.contains(SECRET), "the secret leaked:\n{out}");
        assert!(
            !out.contains("5f3a9c1e"),
            "part of the secret leaked:\n{out}"
        );
    }
}

#[test]
fn an_older_build_never_overrides_a_newer_one_through_a_strategy() {
    let server = Server::start();
    // Build #1's tests wait until the test says so (a byte on this socket), so it passes
    // after build #2.
    let gate = TcpListener::bind("127.0.0.1:0").expect("gate");
    let port = gate.local_addr().expect("addr").port();
    let slow = test_json(
        &format!(
            "python3 -c \"import socket,sys; s=socket.create_connection(('127.0.0.1', {port})); sys.exit(0 if s.recv(1) == b'y' else 1)\""
        ),
        "{}",
    );
    let repo = app_repo(&server, "racing", "Old build", Some(&slow));
    pipeline(
        &server,
        &repo,
        "race",
        &[("staging", &["--automatic", "main"])],
        "race",
    );
    let mut first = server.git_spawn(&repo, &["push", "pipeline", "main"]);
    gate.set_nonblocking(true).expect("nonblocking gate");
    let mut held = wait_for(180, "build #1's tests to connect to the gate", || {
        gate.accept().ok().map(|(s, _)| s)
    });
    held.set_nonblocking(false).expect("blocking stream");
    assert_eq!(build(&server, "race", 1)["status"], "testing");

    std::fs::write(repo.join("app.json"), test_json("true", "{}")).expect("app.json");
    set_greeting(&repo, "New build");
    server.commit_all(&repo, "newer");
    let pushed = push(&server, &repo, "HEAD:main");
    assert!(pushed.contains("Build #2 passed"), "{pushed}");
    serves(&server, "staging-race", "New build");

    // Now the older build passes: the strategy skips it.
    held.write_all(b"y").expect("open the gate");
    let mut rest = String::new();
    first
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut rest)
        .expect("first push output");
    assert!(first.wait().expect("first push").success());
    assert!(rest.contains("Build #1 passed"), "{rest}");
    let deploy = wait_for(60, "build #1's deploy to be settled", || {
        let b = build(&server, "race", 1);
        let d = b["deploys"].as_array()?.first()?.clone();
        (d["status"] != "queued" && d["status"] != "deploying").then_some(d)
    });
    assert_eq!(deploy["status"], "skipped", "{deploy}");
    assert!(
        deploy["detail"]
            .as_str()
            .unwrap_or("")
            .contains("runs newer build #2"),
        "{deploy}"
    );
    let (_, body) = server.app_get("staging-race", "/");
    assert!(body.contains("New build"), "{body}");
    assert_eq!(releases(&server, "staging-race").len(), 1);
}
