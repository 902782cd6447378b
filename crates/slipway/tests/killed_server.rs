//! A server killed with SIGKILL together with its dynos' monitors loses nothing: on the next
//! start it cleans up the dynos left without a monitor and runs the formation again from the
//! store. (A killed server alone leaves its dynos running: `outlive.rs`.)

mod support;

use support::{wait_for, Server};

#[test]
fn a_killed_server_reaps_its_orphans_and_serves_again() {
    let mut server = Server::start();
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", "sturdy"]);
    let repo = server.sample_repo("sturdy-src");
    server.cli_ok(&repo, &["git:remote", "-a", "sturdy"]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the app to serve", || {
        (server.app_get("sturdy", "/").0 == 200).then_some(())
    });
    let orphans = server.dyno_processes();
    assert!(!orphans.is_empty());

    server.kill9();
    let monitors = server.monitor_processes();
    assert!(!monitors.is_empty(), "no dyno monitors running");
    for pid in &monitors {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
    }
    // The dynos themselves outlive their SIGKILLed monitors (they are in their own process
    // group).
    assert!(orphans.iter().any(
        |pid| !monitors.contains(pid) && std::path::Path::new(&format!("/proc/{pid}")).exists()
    ));

    server.launch();
    let body = wait_for(60, "the app after the restart", || {
        let (status, body) = server.app_get("sturdy", "/");
        (status == 200).then_some(body)
    });
    assert!(body.starts_with("Hello from slipway"), "{body}");
    for pid in &orphans {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent: never still running.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "orphan {pid} still runs: {stat}"
        );
    }
    let releases = server.cli_ok(&root, &["releases", "-a", "sturdy"]);
    assert!(releases.contains("Current: v1"), "{releases}");
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("web.1: up"), "{ps}");
}
