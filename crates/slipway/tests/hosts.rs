//! Deploys to the user's own hosts over real SSH (issue 11): two `sshd`s on loopback ports, each
//! its own host key, authorized key and `$HOME` (the two "hosts"), the real slipway server and
//! CLI, real builds of examples/hello kept in the release store, the app served from
//! `<path>/current` on each host.

mod hosts_sshd;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use hosts_sshd::*;
use support::*;

/// Healthy when the page answers, and the host has no `unhealthy` marker.
const HEALTH: &str = r#"curl -fsS -o /dev/null "http://127.0.0.1:$(cat "$HOME/port")/" && [ ! -e "$HOME/unhealthy" ]"#;

fn push_release(server: &Server, repo: &Path, n: u32) {
    if n > 1 {
        std::fs::write(repo.join("CHANGES"), format!("release {n}\n")).expect("write");
        server.commit_all(repo, &format!("change {n}"));
    }
    let pushed = server.git_ok(repo, &["push", "slipway", "main"]);
    assert!(pushed.contains(&format!("Released v{n}")), "{pushed}");
}

fn store_tags(server: &Server, dir: &Path) -> Vec<String> {
    let out = server.cli_ok(dir, &["store", "--name", "hello", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let mut tags: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["tag"].as_str().expect("tag").to_string())
        .collect();
    tags.sort();
    tags
}

#[test]
fn builds_deploy_to_two_hosts_roll_back_and_prune() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, a, b) = two_hosts(&server);
    for host in [&a, &b] {
        host.give_port();
    }

    // Every build lands in the release store, with its checksum.
    server.cli_ok(&root, &["apps:create", "hello"]);
    let repo = server.sample_repo("hello-src");
    server.cli_ok(&repo, &["git:remote", "-a", "hello"]);
    push_release(&server, &repo, 1);
    let info = server.cli_ok(&root, &["store:info", "hello", "v1"]);
    let v1: serde_json::Value = serde_json::from_str(&info).expect("json");
    let stored = server.data.join("store/hello/v1.tgz");
    assert_eq!(v1["sha256"].as_str(), Some(sha256_of(&stored).as_str()));
    assert!(v1["commit"].as_str().is_some_and(|c| c.len() == 40), "{v1}");

    // No silent trust on first use: the fingerprints are shown, nothing is saved.
    let hosts = format!("{},{}", a.spec(), b.spec());
    let key_arg = key.display().to_string();
    let mut add: Vec<&str> = vec![
        "targets:add",
        "web",
        "--hosts",
        &hosts,
        "--path",
        "app",
        "--key",
        &key_arg,
        "--restart",
        RESTART,
        "--health",
        HEALTH,
        "--shared",
        "log",
        "--env",
        "GREETING=Hello from my own hosts",
        "--env",
        "SECRET_TOKEN=s3cr3t-value",
    ];
    let refused = server.cli(&root, &add);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&a.fingerprint()) && said.contains(&b.fingerprint()),
        "{said}"
    );
    assert!(server.cli_ok(&root, &["targets"]).trim().is_empty());
    let (fa, fb) = (a.fingerprint(), b.fingerprint());
    add.extend(["--accept-host-key", &fa, "--accept-host-key", &fb]);
    let added = text(&server.cli(&root, &add));
    assert!(added.contains("Target web added"), "{added}");
    assert!(
        !added.contains("s3cr3t-value"),
        "a secret was shown: {added}"
    );
    assert!(!server
        .cli_ok(&root, &["targets:info", "web"])
        .contains("s3cr3t"));

    // Deploy v1: both hosts serve it from current, with the target's env.
    let out = text(&server.cli(&root, &["targets:deploy", "web", "hello", "v1"]));
    assert!(!out.contains("s3cr3t"), "{out}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/v1"), "{out}");
        assert_eq!(h.releases(), ["v1"]);
        assert!(h.app().join("releases/v1/app/server.py").is_file());
        let env = h.app().join("releases/v1/.slipway/env");
        assert!(std::fs::read_to_string(&env)
            .expect("env")
            .contains("SECRET_TOKEN='s3cr3t-value'"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&env).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the env file is readable by others");
        assert_eq!(
            std::fs::read_link(h.app().join("releases/v1/log")).expect("shared link"),
            h.app().join("shared/log")
        );
        assert!(!h.app().join(".slipway/lock").exists(), "lock left behind");
        assert_eq!(h.state()["current"], "v1");
        assert_eq!(h.page(), "Hello from my own hosts (dyno v1)\n");
    }

    // v2 replaces it on both hosts; v1 becomes the previous known-good.
    push_release(&server, &repo, 2);
    server.cli_ok(&root, &["targets:deploy", "web", "hello", "v2"]);
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/v2"));
        assert_eq!(h.releases(), ["v1", "v2"]);
        assert_eq!(h.state()["previous_good"], "v1");
        assert_eq!(h.page(), "Hello from my own hosts (dyno v2)\n");
    }

    // Rollback without a tag: the previous known-good, no upload.
    let rolled = text(&server.cli(&root, &["targets:rollback", "web"]));
    assert!(!rolled.contains("uploading"), "{rolled}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/v1"), "{rolled}");
        assert_eq!(h.page(), "Hello from my own hosts (dyno v1)\n");
    }
    let listed = server.cli_ok(&root, &["targets:releases", "web"]);
    assert_eq!(listed.matches("* current  v1").count(), 2, "{listed}");

    // v3 (deployed while v1 ran, so v1 is its previous known-good), then prune keeping 1:
    // v3 (current) and v1 (previous known-good) stay, v2 goes.
    push_release(&server, &repo, 3);
    server.cli_ok(&root, &["targets:deploy", "web", "hello", "v3"]);
    server.cli_ok(&root, &["targets:prune", "web", "--keep", "1"]);
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/v3"));
        assert_eq!(h.releases(), ["v1", "v3"]);
        assert_eq!(h.state()["previous_good"], "v1");
        assert_eq!(h.page(), "Hello from my own hosts (dyno v3)\n");
    }
    // The store keeps the latest and what runs; the files of the others are gone.
    server.cli_ok(&root, &["store:prune", "--name", "hello", "--keep", "1"]);
    assert_eq!(store_tags(&server, &root), ["v3"]);
    assert!(!server.data.join("store/hello/v1.tgz").exists());
    let deleting = server.cli(&root, &["store:delete", "hello", "v3"]);
    assert!(
        !deleting.status.success() && text(&deleting).contains("web/"),
        "{}",
        text(&deleting)
    );

    // A failing health check on the second host switches both back to v3.
    push_release(&server, &repo, 4);
    std::fs::write(b.home.join("unhealthy"), "").expect("marker");
    let failed = server.cli(&root, &["targets:deploy", "web", "hello", "v4"]);
    let said = text(&failed);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("health check"), "{said}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/v3"), "{said}");
        assert_eq!(h.page(), "Hello from my own hosts (dyno v3)\n");
        assert!(!h.app().join(".slipway/lock").exists(), "lock left behind");
    }
    assert_eq!(
        String::from_utf8_lossy(&failed.stdout)
            .matches("running v3")
            .count(),
        2,
        "{said}"
    );
    let v4_on_b = b.state()["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .find(|r| r["tag"] == "v4")
        .cloned()
        .expect("v4 recorded on b");
    assert_eq!(v4_on_b["status"], "failed");

    // exec runs on each host and propagates the exit status.
    let ok = server.cli(
        &root,
        &["targets:exec", "web", "test", "-f", ".slipway/env"],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let bad = server.cli(&root, &["targets:exec", "web", "exit 3"]);
    assert_eq!(bad.status.code(), Some(3), "{}", text(&bad));

    // Destroying the app keeps in the store only what a target's host runs (v3), so the hosts
    // can still be rolled back to it; the rest goes, files included.
    assert_eq!(store_tags(&server, &root), ["v3", "v4"]);
    server.cli_ok(
        &root,
        &["apps:destroy", "-a", "hello", "--confirm", "hello"],
    );
    assert_eq!(store_tags(&server, &root), ["v3"]);
    assert!(!server.data.join("store/hello/v4.tgz").exists());
    assert!(server.data.join("store/hello/v3.tgz").exists());
}

#[test]
fn locks_host_keys_and_cut_uploads() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, mut a, b) = two_hosts(&server);
    let hosts = format!("{},{}", a.spec(), b.spec());
    let (fa, fb) = (a.fingerprint(), b.fingerprint());
    server.cli_ok(
        &root,
        &[
            "targets:add",
            "t",
            "--hosts",
            &hosts,
            "--path",
            "app",
            "--key",
            key.to_str().expect("utf-8"),
            "--accept-host-key",
            &fa,
            "--accept-host-key",
            &fb,
        ],
    );
    import(&server, &root, "r1", 1000);
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r1"]);

    // A stale lock (its owner died) is reported with who holds it, and unlock breaks it.
    let stale = r#"{"owner":"ci-runner-7","deploy_id":"d-123","acquired_at":1000,"ttl_secs":60,"operation":"deploy"}"#;
    std::fs::write(b.app().join(".slipway/lock"), stale).expect("lock");
    import(&server, &root, "r2", 1000);
    let locked = server.cli(&root, &["targets:deploy", "t", "blob", "r2"]);
    let said = text(&locked);
    assert!(!locked.status.success());
    assert!(
        said.contains("ci-runner-7") && said.contains("stale"),
        "{said}"
    );
    assert!(
        !a.app().join(".slipway/lock").exists(),
        "a's lock was not released"
    );
    let listed = server.cli_ok(&root, &["targets:releases", "t"]);
    assert!(listed.contains("STALE"), "{listed}");
    let broke = text(&server.cli(&root, &["targets:unlock", "t"]));
    assert!(broke.contains("ci-runner-7"), "{broke}");
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r2"]);
    assert_eq!(b.current().as_deref(), Some("releases/r2"));

    // A connection cut mid-upload leaves no visible release and every host on r2.
    import(&server, &root, "r3", 48 * 1024 * 1024);
    let mut deploy = Command::new(BIN);
    deploy
        .args(["targets:deploy", "t", "blob", "r3"])
        .env("SLIPWAY_DATA_DIR", &server.data)
        .env("HOME", &server.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let deploy = deploy.spawn().expect("deploy");
    let tmp = b.app().join(".slipway/tmp");
    wait_for(60, "the upload to b to start", || {
        std::fs::read_dir(&tmp)
            .ok()?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
            .then_some(())
    });
    b.kill_sessions();
    let out = deploy.wait_with_output().expect("deploy ends");
    let said = text(&out);
    assert!(!out.status.success(), "the deploy survived the cut: {said}");
    assert!(said.contains(&b.spec()), "{said}");
    assert_eq!(b.releases(), ["r1", "r2"], "{said}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/r2"));
    }

    // The cut connection could not release b's lock: the next deploy sees who holds it.
    let blocked = server.cli(&root, &["targets:deploy", "t", "blob", "r3"]);
    let said = text(&blocked);
    assert!(
        !blocked.status.success() && said.contains("locked by admin"),
        "{said}"
    );
    server.cli_ok(&root, &["targets:unlock", "t"]);

    // A tarball that is not one is refused before any host is touched.
    let junk = root.join("junk.tgz");
    std::fs::write(&junk, b"this is not a tarball").expect("junk");
    store_import(&server, &root, &junk, "notgz", &[]);
    let refused = server.cli(&root, &["targets:deploy", "t", "blob", "notgz"]);
    let said = text(&refused);
    assert!(
        !refused.status.success() && said.contains("not a readable gzipped tarball"),
        "{said}"
    );
    assert!(lock_of(&a.app()).is_none(), "{said}");

    // A tarball that does not unpack on the host (a file where a directory must go) leaves no
    // visible release either.
    let (d1, d2) = (root.join("junk-1"), root.join("junk-2/app"));
    std::fs::create_dir_all(&d1).expect("dir");
    std::fs::create_dir_all(&d2).expect("dir");
    std::fs::write(d1.join("app"), "a file").expect("file");
    std::fs::write(d2.join("x"), "under it").expect("file");
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&junk)
            .arg("-C")
            .arg(&d1)
            .arg("app")
            .arg("-C")
            .arg(root.join("junk-2"))
            .arg("app/x"),
    );
    store_import(&server, &root, &junk, "junk", &[]);
    let failed = server.cli(&root, &["targets:deploy", "t", "blob", "junk"]);
    let said = text(&failed);
    assert!(
        !failed.status.success() && said.contains("unpacking"),
        "{said}"
    );
    assert_eq!(a.releases(), ["r1", "r2", "r3"], "{said}");
    assert_eq!(a.current().as_deref(), Some("releases/r2"));
    let leftovers = std::fs::read_dir(a.app().join(".slipway/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(leftovers, 0, "the failed unpack left files in .slipway/tmp");

    // Ctrl-C in the middle of a deploy (here: during a's health check) puts a back and
    // releases every lock.
    server.cli_ok(
        &root,
        &[
            "targets:add",
            "slow",
            "--hosts",
            &hosts,
            "--path",
            "slow",
            "--key",
            key.to_str().expect("utf-8"),
            "--health",
            r#"[ ! -e "$HOME/slow-health" ] || sleep 120"#,
            "--accept-host-key",
            &fa,
            "--accept-host-key",
            &fb,
        ],
    );
    server.cli_ok(&root, &["targets:deploy", "slow", "blob", "r1"]);
    std::fs::write(a.home.join("slow-health"), "").expect("marker");
    let mut deploy = Command::new(BIN);
    deploy
        .args(["targets:deploy", "slow", "blob", "r2"])
        .env("SLIPWAY_DATA_DIR", &server.data)
        .env("HOME", &server.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut deploy = deploy.spawn().expect("deploy");
    let slow_a = a.home.join("slow");
    wait_for(60, "a to switch to r2", || {
        (std::fs::read_link(slow_a.join("current")).ok()? == Path::new("releases/r2")).then_some(())
    });
    run_ok(Command::new("kill").args(["-INT", &deploy.id().to_string()]));
    let _ = deploy.wait();
    wait_for(30, "a to be switched back and every lock released", || {
        let back = std::fs::read_link(slow_a.join("current")).ok()? == Path::new("releases/r1");
        let unlocked =
            !slow_a.join(".slipway/lock").exists() && !b.home.join("slow/.slipway/lock").exists();
        (back && unlocked).then_some(())
    });
    assert_eq!(
        std::fs::read_link(b.home.join("slow/current")).expect("b current"),
        Path::new("releases/r1")
    );

    // A changed host key is refused, and nothing changes there.
    a.stop();
    a.new_host_key();
    a.launch();
    let refused = server.cli(
        &root,
        &["targets:deploy", "t", "blob", "r3", "--lock-wait", "0"],
    );
    let said = text(&refused);
    assert!(!refused.status.success());
    assert!(
        said.contains("has changed") && said.contains(&a.fingerprint()),
        "{said}"
    );
    assert_eq!(a.current().as_deref(), Some("releases/r2"));
    // After checking it, the user trusts the new key and deploys.
    server.cli_ok(
        &root,
        &["targets:trust", "t", "--accept-host-key", &a.fingerprint()],
    );
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r3"]);
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/r3"));
        assert_eq!(h.releases(), ["r1", "r2", "r3"]);
    }
    drop(b);
}
