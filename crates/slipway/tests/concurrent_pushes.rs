//! Two pushes to one app at once: builds run one at a time, and a push whose branch moved while
//! it waited is rejected before it builds, so no release goes live for a commit git then refuses.

mod support;

use support::{lines_of, read_until, Gate, Server};

#[test]
fn a_push_that_waited_for_another_is_rejected_when_its_branch_moved() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", "racy"]);
    let first = server.sample_repo("racy-a");
    server.cli_ok(&first, &["git:remote", "-a", "racy"]);
    server.git_ok(&first, &["push", "slipway", "main"]);

    // B: a clone at the same commit, with a small change.
    let url = format!(
        "http://git:{}@127.0.0.1:{}/racy.git",
        server.token(),
        server.api_port
    );
    let second = root.join("racy-b");
    server.git_ok(
        &root,
        &["clone", "-q", &url, second.to_str().expect("utf-8 path")],
    );
    std::fs::write(second.join("NOTES"), "from B\n").expect("write");
    server.commit_all(&second, "B");

    // A: held at the gate buildpack until B has pushed and is waiting.
    let gate = Gate::new(&root);
    gate.use_in(&first);
    server.commit_all(&first, "A");
    let mut push_a = server.git_spawn(&first, &["push", "slipway", "main"]);
    let a_lines = lines_of(push_a.stderr.take().expect("stderr"));
    let mut a_said = read_until(&a_lines, "Gate: waiting", 60);

    // B pushes while A builds: it waits...
    let mut push_b = server.git_spawn(&second, &["push", &url, "main"]);
    let b_lines = lines_of(push_b.stderr.take().expect("stderr"));
    read_until(&b_lines, "Waiting for another deploy of racy to finish", 60);
    // ...and once A is done, finds main moved and is rejected.
    gate.open();
    let b_status = push_b.wait().expect("wait");
    let b_said = b_lines.iter().collect::<Vec<_>>().join("\n");
    assert!(!b_status.success(), "B was accepted: {b_said}");
    assert!(
        b_said.contains("main was updated by another push while this one waited"),
        "{b_said}"
    );

    a_said.extend(a_lines.iter());
    assert!(
        push_a.wait().expect("wait").success(),
        "A failed: {a_said:#?}"
    );
    let releases = server.cli_ok(&root, &["releases", "-a", "racy"]);
    assert!(
        releases.contains("Current: v2") && !releases.contains("v3"),
        "{releases}"
    );
    let head_a = server.git(&first, &["rev-parse", "HEAD"]);
    let remote = server.git(&first, &["ls-remote", "slipway", "main"]);
    assert!(String::from_utf8_lossy(&remote.stdout)
        .starts_with(String::from_utf8_lossy(&head_a.stdout).trim()));

    // B, rebased on A, goes through.
    server.git_ok(&second, &["pull", "-q", "--rebase", &url, "main"]);
    server.git_ok(&second, &["push", &url, "main"]);
    assert!(server
        .cli_ok(&root, &["releases", "-a", "racy"])
        .contains("Current: v3"));
}
