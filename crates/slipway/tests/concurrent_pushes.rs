//! Two pushes to one app at once: builds run one at a time, and a push whose branch moved while
//! it waited is rejected before it builds, so no release goes live for a commit git then refuses.

mod support;

use std::io::{BufRead, BufReader};

use support::{text, Server};

/// Bytes that do not compress, so building them takes a moment.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

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

    // A: a big commit whose build takes a while.
    std::fs::write(first.join("blob.bin"), noise(40 * 1024 * 1024)).expect("write");
    server.commit_all(&first, "A");
    let mut push_a = server.git_spawn(&first, &["push", "slipway", "main"]);
    let mut a_lines = BufReader::new(push_a.stderr.take().expect("stderr")).lines();
    let mut a_said = Vec::new();
    for line in a_lines.by_ref() {
        let line = line.expect("read");
        let building = line.contains("-----> Building racy");
        a_said.push(line);
        if building {
            break;
        }
    }
    assert!(
        a_said.iter().any(|l| l.contains("Building")),
        "A never started building: {a_said:?}"
    );

    // B pushes while A builds: it waits, then finds main moved and is rejected.
    let b = server.git(&second, &["push", &url, "main"]);
    assert!(!b.status.success(), "B was accepted: {}", text(&b));
    let b_said = text(&b);
    assert!(
        b_said.contains("Waiting for another deploy of racy to finish"),
        "{b_said}"
    );
    assert!(
        b_said.contains("main was updated by another push while this one waited"),
        "{b_said}"
    );

    a_said.extend(a_lines.map_while(Result::ok));
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
