//! Pushes under attack and under load: the hook's token cannot be reused or pointed at another
//! commit, a queued push outlives the header-read timeout, and a build a crash interrupted is
//! marked failed. Builds are held at a "gate" buildpack, so every step waits for an event.

mod support;

use support::{http, lines_of, read_until, text, Gate, Server};

/// The environment of the push's `git receive-pack` (or its hook): the URL and token the hook
/// uses, as any process of the same user could read them.
fn push_credentials(app: &str) -> (String, String) {
    support::wait_for(30, "a receive-pack with a push token", || {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            let get = |name: &str| {
                vars.iter()
                    .find_map(|v| v.strip_prefix(&format!("{name}=")).map(str::to_string))
            };
            if get("SLIPWAY_APP").as_deref() == Some(app) {
                if let (Some(url), Some(token)) =
                    (get("SLIPWAY_HOOK_URL"), get("SLIPWAY_PUSH_TOKEN"))
                {
                    return Some((url, token));
                }
            }
        }
        None
    })
}

fn post_build(url: &str, token: &str, commit: &str, old: &str) -> u16 {
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("hook URL port");
    let auth = format!("Bearer {token}");
    let (status, _, _) = http(
        port,
        "POST",
        "/internal/push-builds",
        &[
            ("Authorization", &auth),
            ("X-Slipway-Commit", commit),
            ("X-Slipway-Old", old),
            ("X-Slipway-Ref", "refs/heads/main"),
        ],
        Some("not a tarball"),
    );
    status
}

const ZERO: &str = "0000000000000000000000000000000000000000";

#[test]
fn a_push_token_is_single_use_and_bound_to_the_pushed_commit() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let gate = Gate::new(&root);
    let repo = server.sample_repo("guarded-src");
    gate.use_in(&repo);
    server.commit_all(&repo, "built behind the gate");
    server.cli_ok(&repo, &["apps:create", "guarded"]);
    let commit = String::from_utf8_lossy(&server.git(&repo, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();

    let mut push = server.git_spawn(&repo, &["push", "slipway", "main"]);
    let said = lines_of(push.stderr.take().expect("stderr"));
    read_until(&said, "Gate: waiting", 60);

    // Another process reads the token while the push builds...
    let (url, token) = push_credentials("guarded");
    // ...and can neither deploy a commit of its own with it,
    let made_up = "ab".repeat(20);
    assert_eq!(post_build(&url, &token, &made_up, ZERO), 401);
    // nor use it a second time for the commit being pushed.
    assert_eq!(post_build(&url, &token, &commit, ZERO), 401);

    gate.open();
    let rest: Vec<String> = said.iter().collect();
    assert!(push.wait().expect("wait").success(), "{rest:#?}");
    let releases = server.cli_ok(&repo, &["releases"]);
    assert!(releases.contains("Current: v1"), "{releases}");
    assert!(!releases.contains("v2"), "{releases}");
    // Once the push is over its token is dead.
    assert_eq!(post_build(&url, &token, &commit, ZERO), 401);
}

#[test]
fn a_queued_push_waits_longer_than_the_header_read_timeout() {
    // The header-read timeout is 2 s; the second push waits for the first build far longer.
    let server = Server::start_with(&["--header-read-timeout", "2"]);
    let root = server.root.path().to_path_buf();
    let gate = Gate::new(&root);
    let first = server.sample_repo("queued-a");
    gate.use_in(&first);
    server.commit_all(&first, "A");
    server.cli_ok(&first, &["apps:create", "queued"]);
    let second = root.join("queued-b");
    server.git_ok(
        &root,
        &[
            "clone",
            "-q",
            first.to_str().expect("path"),
            second.to_str().expect("path"),
        ],
    );
    server.cli_ok(&second, &["git:remote", "-a", "queued"]);

    let mut push_a = server.git_spawn(&first, &["push", "slipway", "main"]);
    let a_said = lines_of(push_a.stderr.take().expect("stderr"));
    read_until(&a_said, "Gate: waiting", 60);
    // B deploys `master`, so it is not refused for a moved branch: it only has to wait.
    let mut push_b = server.git_spawn(&second, &["push", "slipway", "main:master"]);
    let b_said = lines_of(push_b.stderr.take().expect("stderr"));
    read_until(
        &b_said,
        "Waiting for another deploy of queued to finish",
        60,
    );
    // What is tested here is outlasting a timeout, so time has to pass: twice the limit.
    std::thread::sleep(std::time::Duration::from_secs(4));
    gate.open();

    let a_rest: Vec<String> = a_said.iter().collect();
    assert!(push_a.wait().expect("wait").success(), "{a_rest:#?}");
    let b_rest: Vec<String> = b_said.iter().collect();
    assert!(push_b.wait().expect("wait").success(), "{b_rest:#?}");
    assert!(
        b_rest.iter().any(|l| l.contains("Released v2")),
        "{b_rest:#?}"
    );
}

#[test]
fn a_build_interrupted_by_a_crash_is_marked_failed() {
    let mut server = Server::start();
    let root = server.root.path().to_path_buf();
    let gate = Gate::new(&root);
    let repo = server.sample_repo("crashed-src");
    gate.use_in(&repo);
    server.commit_all(&repo, "never finishes");
    server.cli_ok(&repo, &["apps:create", "crashed"]);
    let mut push = server.git_spawn(&repo, &["push", "slipway", "main"]);
    let said = lines_of(push.stderr.take().expect("stderr"));
    read_until(&said, "Gate: waiting", 60);

    server.kill9();
    assert!(
        !push.wait().expect("wait").success(),
        "the push cannot succeed"
    );
    // The orphaned buildpack process finishes once the gate opens.
    gate.open();
    server.launch();
    let (status, _, body) = server.api("GET", "/apps/crashed/builds", None);
    assert_eq!(status, 200, "{body}");
    let builds: serde_json::Value = serde_json::from_str(&body).expect("json");
    let builds = builds.as_array().expect("list");
    assert_eq!(builds.len(), 1, "{body}");
    assert_eq!(builds[0]["status"], "failed", "{body}");
    let out = server.cli(&repo, &["releases"]);
    assert!(!text(&out).contains("v1"), "no release: {}", text(&out));
}

/// Live (not zombie) processes whose command line contains `needle`.
fn processes_running(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(path.join("status"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn processes_a_build_leaves_behind_are_killed_before_root_packs_its_slug() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let bp = root.join("daemonizing-buildpack/bin");
    std::fs::create_dir_all(&bp).expect("buildpack dir");
    for (name, body) in [
        ("detect", "#!/bin/sh\necho Daemon\n"),
        (
            "compile",
            "#!/bin/sh\nsetsid -f sh -c 'exec sleep 613' </dev/null >/dev/null 2>&1\necho '-----> left a process behind'\n",
        ),
        ("release", "#!/bin/sh\necho '--- {}'\n"),
    ] {
        std::fs::write(bp.join(name), body).expect("write");
        std::fs::set_permissions(
            bp.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
    }
    let repo = server.sample_repo("daemon-src");
    std::fs::write(
        repo.join(".buildpacks"),
        format!("{}\n", root.join("daemonizing-buildpack").display()),
    )
    .expect("write .buildpacks");
    server.commit_all(&repo, "a buildpack that daemonizes");
    server.cli_ok(&repo, &["apps:create", "daemon"]);
    let out = server.git(&repo, &["push", "slipway", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("left a process behind"),
        "{}",
        text(&out)
    );
    // The slug was made after the kill: by the time the push is accepted, nothing is left.
    let left = processes_running("sleep 613");
    assert!(left.is_empty(), "still running after the build: {left:?}");
}
