//! Faults of deploys to the user's own hosts (issue 11), over real SSH to two `sshd`s on
//! loopback: slipway killed with SIGKILL mid-deploy, a full disk on a host, an unreachable host,
//! a refused client key. Each must give a clear error, leave every host on a whole release,
//! leave no lock the next deploy cannot see and break, and lose nothing in the store.

mod hosts_sshd;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hosts_sshd::*;
use support::*;

/// The restart command stops at a gate the test controls: when `$HOME/gate` is a FIFO, it says
/// it arrived (`$HOME/at-gate`) and waits until the test opens the FIFO.
const GATED_RESTART: &str =
    r#"if [ -p "$HOME/gate" ]; then touch "$HOME/at-gate"; cat "$HOME/gate" >/dev/null; fi"#;

fn deploy_in_background(server: &Server, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .env("SLIPWAY_DATA_DIR", &server.data)
        .env("HOME", &server.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deploy")
}

#[test]
fn a_server_killed_mid_deploy_leaves_whole_releases_and_a_lock_the_next_deploy_breaks() {
    let mut server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, a, b) = two_hosts(&server);
    add_target(
        &server,
        &root,
        "t",
        &[&a, &b],
        "app",
        &key,
        &["--restart", GATED_RESTART],
    );
    import(&server, &root, "r1", 1000);
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r1"]);
    import(&server, &root, "r2", 4 * 1024 * 1024);

    // The deploy of r2 stops in a's restart, after a switched and before b did.
    let gate = a.home.join("gate");
    run_ok(Command::new("mkfifo").arg(&gate));
    let deploy = deploy_in_background(&server, &["targets:deploy", "t", "blob", "r2"]);
    let at_gate = a.home.join("at-gate");
    wait_for(120, "a's restart to reach the gate", || {
        at_gate.exists().then_some(())
    });
    assert_eq!(a.current().as_deref(), Some("releases/r2"));
    assert_eq!(b.current().as_deref(), Some("releases/r1"));
    let lock = lock_of(&a.app()).expect("a is locked while its restart runs");
    let same_holder = |other: &serde_json::Value| {
        other["deploy_id"] == lock["deploy_id"] && other["process"] == lock["process"]
    };
    assert!(same_holder(&lock_of(&b.app()).expect("b is locked")));
    assert!(
        lock["owner"].as_str().is_some_and(|o| !o.is_empty()),
        "{lock}"
    );
    assert!(
        lock["deploy_id"].as_str().is_some_and(|d| d.len() == 36),
        "{lock}"
    );
    assert!(
        lock["acquired_at"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000),
        "{lock}"
    );
    let installation = std::fs::read_to_string(server.data.join("installation-id"))
        .expect("installation id")
        .trim()
        .to_string();
    assert_eq!(lock["installation"], installation.as_str(), "{lock}");
    let pid = lock["process"]["pid"].as_u64().expect("pid in the lock") as u32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the holder runs");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("server"),
        "the lock names process {pid}, which is not the server"
    );
    let masters = format!("targets/t/control/{pid}-");
    assert!(
        !processes_with(&masters).is_empty(),
        "no ssh master of the server found"
    );

    server.kill9();
    let out = deploy.wait_with_output().expect("the client ends");
    assert!(!out.status.success(), "{}", text(&out));
    // Let the orphaned restart command finish, and take the gate away.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&gate)
            .expect("open the gate"),
    );
    std::fs::remove_file(&gate).expect("remove the gate");

    // Every host is on a whole release (a on the new one, b on the old), both still locked
    // by the dead server, and the dead server's ssh masters still run.
    assert_eq!(a.current().as_deref(), Some("releases/r2"));
    assert_eq!(
        std::fs::metadata(a.app().join("releases/r2/app/blob"))
            .expect("r2 on a")
            .len(),
        4 * 1024 * 1024
    );
    assert_eq!(b.current().as_deref(), Some("releases/r1"));
    assert_eq!(
        std::fs::metadata(b.app().join("releases/r2/app/blob"))
            .expect("r2 unpacked on b")
            .len(),
        4 * 1024 * 1024
    );
    for h in [&a, &b] {
        assert!(same_holder(&lock_of(&h.app()).expect("still locked")));
    }
    assert!(!processes_with(&masters).is_empty());

    // After a restart the lock is shown as left by a process that is gone, and the next deploy
    // breaks it by itself, stops the dead server's ssh masters and finishes the job.
    server.launch();
    // What each host ran was recorded as it switched (so the store protects r2 on a),
    // although the deploy never finished.
    let info = server.cli_ok(&root, &["targets:info", "t"]);
    assert!(
        info.contains(&format!("Running: {} blob r2", a.spec()))
            && info.contains(&format!("Running: {} blob r1", b.spec())),
        "{info}"
    );
    let listed = server.cli_ok(&root, &["targets:releases", "t"]);
    assert_eq!(
        listed.matches("that slipway process is gone").count(),
        2,
        "{listed}"
    );
    assert!(
        listed.contains(&format!("slipway process {pid} ")),
        "{listed}"
    );
    let redeploy = server.cli(&root, &["targets:deploy", "t", "blob", "r2"]);
    let said = text(&redeploy);
    assert!(redeploy.status.success(), "{said}");
    assert_eq!(
        said.matches("breaking the lock left by").count(),
        2,
        "{said}"
    );
    for h in [&a, &b] {
        assert_eq!(h.current().as_deref(), Some("releases/r2"), "{said}");
        assert!(lock_of(&h.app()).is_none(), "lock left behind");
    }
    wait_for(30, "the dead server's ssh masters to end", || {
        processes_with(&masters).is_empty().then_some(())
    });
    let control = server.data.join("targets/t/control");
    let dirs: Vec<String> = std::fs::read_dir(&control)
        .expect("control dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dirs.iter().all(|d| !d.starts_with(&format!("{pid}-"))),
        "{dirs:?}"
    );

    // Nothing was lost in the store.
    for tag in ["r1", "r2"] {
        let info = server.cli_ok(&root, &["store:info", "blob", tag]);
        let v: serde_json::Value = serde_json::from_str(&info).expect("json");
        let file = server.data.join(format!("store/blob/{tag}.tgz"));
        assert_eq!(v["sha256"].as_str(), Some(sha256_of(&file).as_str()));
    }
}

/// A small tmpfs mounted over a directory for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn tmp_entries(app: &Path) -> Vec<String> {
    std::fs::read_dir(app.join(".slipway/tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_disk_an_unreachable_host_and_a_refused_key_change_nothing() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (key, a, mut b) = two_hosts(&server);
    // b's target directory is a 8 MB disk.
    let _disk = Tmpfs::mount(&b.home.join("small"), "8m");
    add_target(&server, &root, "t", &[&a, &b], "small", &key, &[]);
    import(&server, &root, "r1", 1000);
    server.cli_ok(&root, &["targets:deploy", "t", "blob", "r1"]);

    // A release that does not fit on b: a clear error naming b and the full disk; no host is
    // switched, b has no trace of r2, no lock is left.
    import(&server, &root, "r2", 12 * 1024 * 1024);
    let full = server.cli(&root, &["targets:deploy", "t", "blob", "r2"]);
    let said = text(&full);
    assert!(!full.status.success(), "{said}");
    assert!(
        said.contains(&b.spec()) && said.contains("disk is full"),
        "{said}"
    );
    for h in [&a, &b] {
        let app = h.home.join("small");
        assert_eq!(
            std::fs::read_link(app.join("current")).expect("current"),
            Path::new("releases/r1"),
            "{said}"
        );
        assert!(lock_of(&app).is_none(), "a lock was left on {}", h.spec());
    }
    let b_app = b.home.join("small");
    assert!(!b_app.join("releases/r2").exists(), "{said}");
    assert_eq!(
        tmp_entries(&b_app),
        Vec::<String>::new(),
        "partial upload left"
    );

    // A client key the hosts do not accept: the error says so; nothing changes.
    let other = root.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let wrong_key = client_key(&other);
    add_target(&server, &root, "wrong", &[&a], "small", &wrong_key, &[]);
    let refused = server.cli(&root, &["targets:deploy", "wrong", "blob", "r1"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(&format!("could not connect to {}", a.spec()))
            && said.contains("Permission denied"),
        "{said}"
    );

    // An unreachable host: a clear error naming it, and the other host is left as it was
    // (connections are opened before any host is locked or touched).
    b.stop();
    let unreachable = server.cli(&root, &["targets:deploy", "t", "blob", "r2"]);
    let said = text(&unreachable);
    assert!(!unreachable.status.success(), "{said}");
    assert!(
        said.contains(&format!("could not connect to {}", b.spec())),
        "{said}"
    );
    let a_app = a.home.join("small");
    assert_eq!(
        std::fs::read_link(a_app.join("current")).expect("current"),
        Path::new("releases/r1")
    );
    assert!(lock_of(&a_app).is_none(), "a was locked");
}
