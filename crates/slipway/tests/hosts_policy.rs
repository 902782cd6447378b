//! What a host target keeps and refuses (issue 11), over real SSH to two `sshd`s on loopback:
//! the target's environment (masked in every output) written into each release so a rollback
//! restores code and config together; releases that name their build directory refused;
//! uploads to a batch of hosts at once.

mod hosts_sshd;
mod support;

use std::path::Path;
use std::process::Command;

use hosts_sshd::*;
use support::*;

fn env_of(app: &Path, tag: &str) -> String {
    std::fs::read_to_string(app.join(format!("releases/{tag}/.slipway/env"))).expect("env file")
}

#[test]
fn the_environment_travels_with_each_release_and_rollback_restores_it() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, a, b) = two_hosts(&server);
    add_target(
        &server,
        &root,
        "t",
        &[&a, &b],
        "app",
        &key,
        &["--env", "GREETING=one", "--env", "OLD_TOKEN=old-s3cret"],
    );
    import(&server, &root, "r1", 1000);
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r1"]);

    // Set and unset: only names are ever shown.
    let set = server.cli(
        &root,
        &[
            "targets:env:set",
            "t",
            "GREETING=two",
            "NEW_TOKEN=new-s3cret",
        ],
    );
    let said = text(&set);
    assert!(set.status.success(), "{said}");
    assert!(said.contains("NEW_TOKEN=[masked]"), "{said}");
    let unset = server.cli(&root, &["targets:env:unset", "t", "OLD_TOKEN"]);
    assert!(unset.status.success(), "{}", text(&unset));
    let info = server.cli_ok(&root, &["targets:info", "t"]);
    let listed = server.cli_ok(&root, &["targets", "--json"]);
    for out in [&said, &text(&unset), &info, &listed] {
        assert!(
            !out.contains("s3cret") && !out.contains("two"),
            "a value was shown: {out}"
        );
    }
    assert!(
        info.contains("GREETING=[masked]") && !info.contains("OLD_TOKEN"),
        "{info}"
    );
    let missing = server.cli(&root, &["targets:env:unset", "t", "NOPE"]);
    assert!(
        !missing.status.success() && text(&missing).contains("NOPE is not set"),
        "{}",
        text(&missing)
    );
    let bad = server.cli(&root, &["targets:env:set", "t", "1BAD=x"]);
    assert!(!bad.status.success(), "{}", text(&bad));

    // r2 carries the new environment; r1 keeps the one it was deployed with.
    import(&server, &root, "r2", 1000);
    let deployed = text(&server.cli(&root, &["targets:deploy", "t", "blob", "r2"]));
    assert!(!deployed.contains("s3cret"), "{deployed}");
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/r2"), "{deployed}");
        let (r1, r2) = (env_of(&h.app(), "r1"), env_of(&h.app(), "r2"));
        assert!(
            r1.contains("GREETING='one'") && r1.contains("OLD_TOKEN="),
            "{r1}"
        );
        assert!(
            r2.contains("GREETING='two'") && r2.contains("NEW_TOKEN='new-s3cret'"),
            "{r2}"
        );
        assert!(!r2.contains("OLD_TOKEN"), "{r2}");
    }
    let now = server.cli(&root, &["targets:exec", "t", "echo \"$GREETING\""]);
    assert_eq!(String::from_utf8_lossy(&now.stdout), "two\ntwo\n");

    // A rollback brings back r1's code and its config.
    server.cli_ok(&root, &["targets:rollback", "t"]);
    let then = server.cli(
        &root,
        &["targets:exec", "t", "echo \"$GREETING ${NEW_TOKEN:-none}\""],
    );
    assert_eq!(
        String::from_utf8_lossy(&then.stdout),
        "one none\none none\n"
    );
}

#[test]
fn a_release_naming_its_build_directory_is_refused_before_any_host_is_touched() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, a, b) = two_hosts(&server);
    add_target(
        &server,
        &root,
        "t",
        &[&a, &b],
        "app",
        &key,
        &["--batch", "2"],
    );
    import(&server, &root, "r1", 1000);
    // Both hosts receive a batch's release at once: both uploads start before either is
    // unpacked.
    let first = text(&server.cli(&root, &["targets:deploy", "t", "blob", "r1"]));
    let pos = |what: &str, h: &Sshd| {
        first
            .find(&format!("{}: {what}", h.spec()))
            .unwrap_or_else(|| panic!("no '{what}' for {}: {first}", h.spec()))
    };
    assert!(
        pos("uploading", &b) < pos("releases/r1 unpacked", &a),
        "the uploads ran one after the other: {first}"
    );

    // A venv script whose shebang names the build directory (what a non-relocating buildpack
    // leaves): refused with the file named.
    let src = root.join("src-bad");
    let bin = src.join("app/.venv/bin");
    std::fs::create_dir_all(&bin).expect("dir");
    let builds = format!("{}-builds/tmp/build-1a2b", server.data.display());
    std::fs::write(
        bin.join("gunicorn"),
        format!("#!{builds}/app/.venv/bin/python\nimport gunicorn\n"),
    )
    .expect("script");
    std::fs::write(src.join("app/server.py"), "print('hi')\n").expect("app");
    let tgz = root.join("bad.tgz");
    tar_app(&tgz, &src);
    store_import(&server, &root, &tgz, "bad", &[]);
    let refused = server.cli(&root, &["targets:deploy", "t", "blob", "bad"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("not relocatable") && said.contains("app/.venv/bin/gunicorn"),
        "{said}"
    );
    for h in [&a, &b] {
        assert_eq!(h.releases(), ["r1"], "{said}");
        assert_eq!(h.current().as_deref(), Some("releases/r1"));
        assert!(lock_of(&h.app()).is_none());
    }
}

/// Starts gunicorn from `current/app` as a dyno would (`.profile.d` sourced with `HOME` = the
/// app directory), on the port in the host's `$HOME/port`, after stopping the one before.
const GUNICORN: &str = r#"P=$(cat "$HOME/port"); old=$(cat "$SLIPWAY_PATH/app.pid" 2>/dev/null || true); if [ -n "$old" ]; then kill "$old" 2>/dev/null || true; while kill -0 "$old" 2>/dev/null; do sleep 0.1; done; fi; cd app && HOME=$PWD PORT=$P sh -c 'for f in .profile.d/*.sh; do [ -e "$f" ] && . "./$f"; done; exec gunicorn app:app --bind 127.0.0.1:$PORT' >> "$SLIPWAY_PATH/app.log" 2>&1 & echo $! > "$SLIPWAY_PATH/app.pid""#;

#[test]
fn a_python_app_built_by_the_buildpack_runs_from_current_on_a_host() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let key = client_key(&root);
    let pub_key = root.join("client_key.pub");
    let a = Sshd::start(&root, "host-a", &pub_key);
    let port = a.give_port();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/flask");
    let repo = root.join("flask-src");
    std::fs::create_dir_all(&repo).expect("dir");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&repo),
    );
    server.git_ok(&repo, &["init", "-q", "-b", "main"]);
    server.commit_all(&repo, "initial");
    server.cli_ok(&repo, &["apps:create", "flaskapp"]);
    server.cli_ok(&repo, &["git:remote", "-a", "flaskapp"]);
    let pushed = text(&server.git(&repo, &["push", "slipway", "main"]));
    assert!(pushed.contains("Released v1"), "{pushed}");

    // The slug (a virtualenv with console scripts) passes the relocation check and runs from
    // `<path>/current`, far from the directory it was built in.
    let health = format!("curl -fsS -o /dev/null http://127.0.0.1:{port}/");
    add_target(
        &server,
        &root,
        "py",
        &[&a],
        "app",
        &key,
        &[
            "--restart",
            GUNICORN,
            "--health",
            &health,
            "--health-attempts",
            "60",
        ],
    );
    let deployed = server.cli(&root, &["targets:deploy", "py", "flaskapp", "v1"]);
    let said = text(&deployed);
    assert!(deployed.status.success(), "{said}");
    let script = a.app().join("releases/v1/app/.slipway/venv/bin/gunicorn");
    let first_line = std::fs::read_to_string(&script).expect("gunicorn script");
    assert!(!first_line.contains("-builds/"), "{first_line}");
    let (status, _, body) = http(port, "GET", "/", &[("Host", "x")], None);
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from Flask on slipway\n")
    );
}
