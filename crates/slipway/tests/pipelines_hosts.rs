//! A pipeline stage whose target is a host target (issue 11 built into issue 10's pipelines):
//! the real slipway server and CLI, a staging stage on an app of this server and a production
//! stage on two "hosts" (two `sshd`s on loopback ports with their own keys and `$HOME`s), the
//! same slug promoted from one to the other, served from `<path>/current` on each host.

mod hosts_sshd;
mod support;

use std::path::Path;

use hosts_sshd::*;
use serde_json::Value;
use support::*;

/// Healthy when the page answers on the host's port.
const HEALTH: &str = r#"curl -fsS -o /dev/null "http://127.0.0.1:$(cat "$HOME/port")/""#;

/// Host target `web` on two new hosts (`host-a`, `host-b`, each with its own port), path `app`,
/// started by [`RESTART`] with the shared `log` directory, checked by `health`, `extra` flags
/// after. Bind the hosts after the server.
fn web_on_two_hosts(server: &Server, health: &str, extra: &[&str]) -> (Sshd, Sshd) {
    let (key, a, b) = two_hosts(server);
    for host in [&a, &b] {
        host.give_port();
    }
    let mut flags = vec!["--restart", RESTART, "--health", health, "--shared", "log"];
    flags.extend_from_slice(extra);
    add_target(
        server,
        server.root.path(),
        "web",
        &[&a, &b],
        "app",
        &key,
        &flags,
    );
    (a, b)
}

/// Pipeline `name` (its remote added to `repo`) with one stage, production: manual, watched
/// for `watch` seconds after a deploy, its target host target `web`.
fn production_on_web(server: &Server, repo: &Path, name: &str, watch: &str) {
    ok(server, repo, &["pipelines:create", name]);
    let stage = [
        "pipelines:stages:add",
        name,
        "production",
        "--manual",
        "--watch",
        watch,
    ];
    ok(server, repo, &stage);
    ok(
        server,
        repo,
        &["pipelines:targets:add", name, "production", "host:web"],
    );
}

fn target_deploys(server: &Server, target: &str) -> Vec<Value> {
    let (status, _, body) = server.api("GET", &format!("/targets/{target}/deploys"), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .expect("json")
        .as_array()
        .cloned()
        .expect("array")
}

fn step<'a>(deploy: &'a Value, name: &str) -> &'a Value {
    deploy["report"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {deploy}"))
}

/// Every host of the report, with the release it runs.
fn hosts_running(deploy: &Value) -> Vec<(String, String)> {
    let hosts = deploy["report"]["hosts"].as_array().expect("hosts");
    assert!(!hosts.is_empty(), "no hosts in {deploy}");
    hosts
        .iter()
        .map(|h| {
            (
                h["host"].as_str().expect("host").to_string(),
                h["running"].as_str().unwrap_or("nothing").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_stage_on_own_hosts_gets_the_promoted_slug_and_rolls_back_when_smoke_fails() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (a, b) = web_on_two_hosts(&server, HEALTH, &["--batch", "2"]);

    let repo = server.sample_repo("shop-src");
    set_greeting(&repo, "Build one");
    server.commit_all(&repo, "build one");
    ok(&server, &repo, &["pipelines:create", "shop"]);
    ok(
        &server,
        &repo,
        &[
            "pipelines:stages:add",
            "shop",
            "staging",
            "--automatic",
            "main",
        ],
    );
    ok(
        &server,
        &repo,
        &[
            "pipelines:stages:add",
            "shop",
            "production",
            "--manual",
            "--watch",
            "0",
        ],
    );
    ok(
        &server,
        &repo,
        &["apps:create", "shop-staging", "--no-remote"],
    );
    ok(
        &server,
        &repo,
        &["pipelines:targets:add", "shop", "staging", "shop-staging"],
    );

    // A host target that does not exist, or a name that cannot be one, is refused clearly
    // and changes nothing.
    let missing = server.cli(
        &repo,
        &["pipelines:targets:add", "shop", "production", "host:nope"],
    );
    assert!(!missing.status.success());
    let said = text(&missing);
    assert!(
        said.contains("Couldn't find host target nope") && said.contains("slipway targets"),
        "{said}"
    );
    let bad = server.cli(
        &repo,
        &["pipelines:targets:add", "shop", "production", "host:-x;rm"],
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not valid"), "{}", text(&bad));
    let info = ok(&server, &repo, &["pipelines:info", "shop"]);
    assert!(info.contains("production: manual; targets: none"), "{info}");

    let added = ok(
        &server,
        &repo,
        &["pipelines:targets:add", "shop", "production", "host:web"],
    );
    assert!(added.contains("targets: host:web"), "{added}");

    // Build #1 goes to staging by itself, then is promoted to the hosts.
    let pushed = server.git_ok(&repo, &["push", "pipeline", "main"]);
    assert!(pushed.contains("Build #1 passed"), "{pushed}");
    wait_for(120, "staging to run build one", || {
        let info = ok(&server, &repo, &["pipelines:info", "shop"]);
        info.contains("staging: automatic on main; targets: shop-staging; runs build #1")
            .then_some(())
    });
    let promoted = ok(
        &server,
        &repo,
        &["pipelines:promote", "shop", "--from", "staging"],
    );
    assert!(promoted.contains("shop build-1"), "{promoted}");
    for h in [&a, &b] {
        assert_eq!(
            h.current().as_deref(),
            Some("releases/build-1"),
            "{promoted}"
        );
        assert!(h.page().contains("Build one"), "{promoted}");
        assert!(!h.app().join(".slipway/lock").exists(), "lock left behind");
    }
    // The same slug: the stored release is the pipeline build's file, checksum and commit.
    let stored: Value =
        serde_json::from_str(&ok(&server, &root, &["store:info", "shop", "build-1"]))
            .expect("json");
    let build: Value = {
        let (status, _, body) = server.api("GET", "/pipelines/shop/builds/1", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    };
    let checksum = build["slug"]["checksum"].as_str().expect("checksum");
    assert_eq!(
        format!("SHA256:{}", stored["sha256"].as_str().expect("sha256")),
        checksum.to_string(),
        "{stored} vs {build}"
    );
    assert_eq!(stored["commit"], build["commit"], "{stored} vs {build}");
    let deploys = target_deploys(&server, "web");
    assert_eq!(deploys[0]["status"], "passed", "{}", deploys[0]);
    assert_eq!(step(&deploys[0], "deploy")["status"], "passed");
    assert_eq!(
        hosts_running(&deploys[0]),
        vec![
            (a.spec(), "build-1".to_string()),
            (b.spec(), "build-1".to_string())
        ]
    );

    // Build #2 has a smoke test that fails on production only: staging takes it, the hosts
    // are switched, the smoke test fails, both go back to build-1 and the deploy fails.
    set_greeting(&repo, "Build two");
    std::fs::write(
        repo.join("app.json"),
        r#"{"slipway": {"smoke": ["echo smoke on $SLIPWAY_STAGE at $SLIPWAY_RELEASE; test \"$SLIPWAY_STAGE\" != production"]}}"#,
    )
    .expect("app.json");
    server.commit_all(&repo, "build two");
    let pushed = server.git_ok(&repo, &["push", "pipeline", "main"]);
    assert!(pushed.contains("Build #2 passed"), "{pushed}");
    // The stage runs build #2 once its deploy is live (after its smoke test), which is after
    // the app serves it: promotion takes what the stage runs.
    wait_for(120, "staging to run build two", || {
        let info = ok(&server, &repo, &["pipelines:info", "shop"]);
        info.contains("staging: automatic on main; targets: shop-staging; runs build #2")
            .then_some(())
    });
    let failed = server.cli(&repo, &["pipelines:promote", "shop", "--from", "staging"]);
    let said = text(&failed);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("smoke on production at build-2"), "{said}");
    assert!(said.contains("rolled_back"), "{said}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/build-1"), "{said}");
        assert!(h.page().contains("Build one"), "{said}");
        assert_eq!(h.releases(), ["build-1", "build-2"]);
        assert!(!h.app().join(".slipway/lock").exists(), "lock left behind");
    }
    let deploys = target_deploys(&server, "web");
    let last = &deploys[0];
    assert_eq!(last["tag"], "build-2", "{last}");
    assert_eq!(last["status"], "rolled_back", "{last}");
    assert_eq!(step(last, "deploy")["status"], "passed", "{last}");
    assert_eq!(step(last, "smoke")["status"], "failed", "{last}");
    assert_eq!(step(last, "rollback")["status"], "passed", "{last}");
    assert_eq!(
        hosts_running(last),
        vec![
            (a.spec(), "build-1".to_string()),
            (b.spec(), "build-1".to_string())
        ]
    );
    // The pipeline's production stage still runs build #1.
    let info = ok(&server, &repo, &["pipelines:info", "shop"]);
    assert!(
        info.contains("production: manual; targets: host:web; runs build #1"),
        "{info}"
    );
    let listed = ok(&server, &root, &["targets:deploys", "web"]);
    assert!(
        listed.contains("shop build-2 rolled_back (stage production)")
            && listed.contains(&format!("{} runs build-1", a.spec()))
            && listed.contains(&format!("{} runs build-1", b.spec())),
        "{listed}"
    );

    // The stage can drop the host target again (and says so when it is not one).
    let removed = ok(
        &server,
        &repo,
        &["pipelines:targets:remove", "shop", "production", "host:web"],
    );
    assert!(
        removed.contains("production: manual; targets: none"),
        "{removed}"
    );
    let again = server.cli(
        &repo,
        &["pipelines:targets:remove", "shop", "production", "host:web"],
    );
    assert!(!again.status.success());
    assert!(
        text(&again).contains("host:web is not a target of production"),
        "{}",
        text(&again)
    );
}

#[test]
fn host_stage_predeploy_runs_once_before_any_switch_and_failures_leave_the_old_release() {
    let server = Server::start();
    let health = format!("{HEALTH} && [ ! -e \"$HOME/unhealthy\" ]");
    let (a, b) = web_on_two_hosts(&server, &health, &["--health-attempts", "2"]);
    let repo = server.sample_repo("solo-src");
    let predeploy = |cmd: &str| {
        std::fs::write(
            repo.join("app.json"),
            serde_json::json!({"scripts": {"dokku": {"predeploy": cmd}}}).to_string(),
        )
        .expect("app.json");
    };
    set_greeting(&repo, "Build one");
    predeploy(r#"echo "migrated in $PWD" >> "$SLIPWAY_PATH/migrations""#);
    server.commit_all(&repo, "build one");
    production_on_web(&server, &repo, "solo", "0");
    let pushed = server.git_ok(&repo, &["push", "pipeline", "main"]);
    assert!(pushed.contains("Build #1 passed"), "{pushed}");
    let out = ok(
        &server,
        &repo,
        &["pipelines:deploy", "1", "--to", "production", "-p", "solo"],
    );
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/build-1"), "{out}");
        assert!(h.page().contains("Build one"));
    }
    // Once, on the first host, in the new release before it was current.
    let migrations = std::fs::read_to_string(a.app().join("migrations")).expect("migrations");
    assert_eq!(migrations.lines().count(), 1, "{migrations}");
    assert!(
        migrations.contains(&format!("{}/releases/build-1", a.app().display())),
        "{migrations}"
    );
    assert!(!b.app().join("migrations").exists(), "pre-deploy ran twice");

    // A failing pre-deploy: the release is on the hosts, no host switched.
    predeploy("echo migration failed; exit 7");
    server.commit_all(&repo, "build two");
    assert!(server
        .git_ok(&repo, &["push", "pipeline", "main"])
        .contains("Build #2 passed"));
    let failed = server.cli(
        &repo,
        &["pipelines:deploy", "2", "--to", "production", "-p", "solo"],
    );
    let said = text(&failed);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("pre-deploy failed"), "{said}");
    assert!(said.contains("migration failed"), "{said}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/build-1"), "{said}");
        assert!(!h.app().join(".slipway/lock").exists(), "lock left behind");
    }
    let last = &target_deploys(&server, "web")[0];
    assert_eq!(
        (last["tag"].as_str(), last["status"].as_str()),
        (Some("build-2"), Some("failed")),
        "{last}"
    );
    assert_eq!(step(last, "pre-deploy")["status"], "failed", "{last}");
    assert_eq!(step(last, "deploy")["status"], "skipped", "{last}");

    // The second host's health check fails: the target switches the first back itself, the
    // deploy fails, and its report names every host with build-1.
    predeploy("true");
    server.commit_all(&repo, "build three");
    assert!(server
        .git_ok(&repo, &["push", "pipeline", "main"])
        .contains("Build #3 passed"));
    std::fs::write(b.home.join("unhealthy"), "").expect("marker");
    let failed = server.cli(
        &repo,
        &["pipelines:deploy", "3", "--to", "production", "-p", "solo"],
    );
    let said = text(&failed);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("health check"), "{said}");
    std::fs::remove_file(b.home.join("unhealthy")).expect("marker");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/build-1"), "{said}");
        assert!(h.page().contains("Build one"), "{said}");
    }
    let last = &target_deploys(&server, "web")[0];
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(step(last, "deploy")["status"], "failed", "{last}");
    assert_eq!(
        hosts_running(last),
        vec![
            (a.spec(), "build-1".to_string()),
            (b.spec(), "build-1".to_string())
        ]
    );
    let info = ok(&server, &repo, &["pipelines:info", "solo"]);
    assert!(info.contains("runs build #1"), "{info}");
}

#[test]
fn a_host_stage_heartbeat_failing_in_the_watch_window_rolls_every_host_back() {
    let server = Server::start();
    // Build two goes bad on a host once its `unhealthy` marker appears; build one never does.
    let health = format!(
        "{HEALTH} && {{ [ ! -e \"$HOME/unhealthy\" ] || ! grep -q 'Build two' app/server.py; }}"
    );
    let (a, b) = web_on_two_hosts(
        &server,
        &health,
        &["--health-attempts", "2", "--batch", "2"],
    );
    let repo = server.sample_repo("beat-src");
    set_greeting(&repo, "Build one");
    server.commit_all(&repo, "build one");
    production_on_web(&server, &repo, "beat", "120");
    assert!(server
        .git_ok(&repo, &["push", "pipeline", "main"])
        .contains("Build #1 passed"));
    ok(
        &server,
        &repo,
        &["pipelines:deploy", "1", "--to", "production", "-p", "beat"],
    );
    set_greeting(&repo, "Build two");
    std::fs::write(
        repo.join("app.json"),
        r#"{"slipway": {"heartbeat": {"path": "/", "interval": 1, "misses": 1}}}"#,
    )
    .expect("app.json");
    server.commit_all(&repo, "build two");
    assert!(server
        .git_ok(&repo, &["push", "pipeline", "main"])
        .contains("Build #2 passed"));
    // Live and watching: the command returns, build two serves on both hosts.
    let out = ok(
        &server,
        &repo,
        &["pipelines:deploy", "2", "--to", "production", "-p", "beat"],
    );
    assert!(out.contains("Watching build-2 on target web"), "{out}");
    for h in [&a, &b] {
        assert!(h.page().contains("Build two"), "{out}");
    }
    std::fs::write(b.home.join("unhealthy"), "").expect("marker");
    let last = wait_for(120, "the heartbeat to roll the hosts back", || {
        let d = target_deploys(&server, "web").into_iter().next()?;
        (d["status"] != "running" && d["status"] != "queued").then_some(d)
    });
    assert_eq!(last["tag"], "build-2", "{last}");
    assert_eq!(last["status"], "rolled_back", "{last}");
    assert_eq!(step(&last, "heartbeat")["status"], "failed", "{last}");
    assert_eq!(step(&last, "log-test")["status"], "inconclusive", "{last}");
    assert_eq!(step(&last, "rollback")["status"], "passed", "{last}");
    assert_eq!(
        hosts_running(&last),
        vec![
            (a.spec(), "build-1".to_string()),
            (b.spec(), "build-1".to_string())
        ]
    );
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/build-1"));
        assert!(h.page().contains("Build one"));
    }
}
