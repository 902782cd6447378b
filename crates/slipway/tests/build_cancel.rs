//! A push whose client goes away mid-build cancels the build, through the real binary, real
//! git (smart HTTP) and, for the OCI runtime, real runc: a custom buildpack's `bin/compile`
//! says it started and then sleeps (in the foreground and in the background); the test kills
//! the `git push` client (with its `git remote-http` helper, as Ctrl-C does) once that line
//! arrived, and waits until the buildpack's processes are gone, no build container is left,
//! the build is recorded as failed and no release was made.

#[allow(unused_imports)]
mod support;

use std::path::Path;

use support::{lines_of, read_until, wait_for, Server};

/// `bin/compile`: sleeps whose lengths (`{bg}`, `{fg}`) nothing else on the machine uses, so
/// the test finds them in `/proc`.
fn compile(bg: u32, fg: u32) -> String {
    format!(
        "#!/bin/sh\nsleep {bg} &\necho '-----> Compiling for a very long time'\nexec sleep {fg}\n"
    )
}
const DETECT: &str = "#!/bin/sh\necho Endless\n";
const RELEASE: &str = "#!/bin/sh\necho '--- {}'\n";

fn buildpack(dir: &Path, compile: &str) {
    support::write_scripts(
        &dir.join("bin"),
        &[
            ("detect", DETECT),
            ("compile", compile),
            ("release", RELEASE),
        ],
    );
}

/// Whether a process whose command line holds `needle` runs on this machine.
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        })
}

/// The build containers runc knows of on this server.
fn build_containers(server: &Server) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(server.dynos_dir().join(".oci/state"))
        .arg("list")
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("build-"))
        .map(str::to_string)
        .collect()
}

fn a_killed_push_cancels_its_build(runtime: &str, bg: u32, fg: u32) {
    let server = Server::start_logged(&["--dyno-runtime", runtime]);
    let bp = server.root.path().join("endless-buildpack");
    buildpack(&bp, &compile(bg, fg));
    let (bg, fg) = (format!("sleep {bg}"), format!("sleep {fg}"));
    let repo = server.repo_with("endless-src", &[("index.html", "x\n")]);
    server.cli_ok(&repo, &["apps:create", "endless"]);
    server.cli_ok(&repo, &["buildpacks:set", bp.to_str().expect("path")]);

    let mut push = server.git_spawn_group(&repo, &["push", "slipway", "main"]);
    let lines = lines_of(push.stderr.take().expect("stderr"));
    read_until(&lines, "Compiling for a very long time", 120);
    wait_for(30, "the buildpack's sleep", || running(&fg).then_some(()));
    // The client goes away, as with Ctrl-C: git and its remote helper.
    let group = nix::unistd::Pid::from_raw(i32::try_from(push.id()).expect("pid"));
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).expect("kill git");
    let _ = push.wait();

    let gone = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while running(&bg) || running(&fg) {
        assert!(
            std::time::Instant::now() < gone,
            "the buildpack's processes still run; server log:\n{}",
            server.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if runtime == "oci" {
        wait_for(30, "no build container left", || {
            build_containers(&server).is_empty().then_some(())
        });
    }
    let builds = wait_for(30, "the build recorded as failed", || {
        let (status, _, body) = server.api("GET", "/apps/endless/builds", None);
        (status == 200 && body.contains("\"failed\"")).then_some(body)
    });
    assert!(!builds.contains("\"succeeded\""), "{builds}");
    let (status, _, releases) = server.api("GET", "/apps/endless/releases", None);
    assert_eq!(status, 200, "{releases}");
    assert!(!releases.contains("\"version\""), "no release: {releases}");
}

#[test]
fn a_killed_git_push_cancels_its_build_on_the_host() {
    a_killed_push_cancels_its_build("process", 7781, 7782);
}

#[test]
fn a_killed_git_push_cancels_its_build_and_its_container() {
    a_killed_push_cancels_its_build("oci", 7791, 7792);
}
