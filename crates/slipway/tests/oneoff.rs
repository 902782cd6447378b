//! One-off dynos, the release phase and single-dyno restarts through the real binary (issue 9):
//! `run` over pipes and a real pseudo-terminal, `run:detached`, `release:` commands that pass
//! and fail on deploys and config changes, `ps:restart web.1` of two.

#[allow(unused_imports)]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{text, wait_for, Server, BIN};

trait GitOut {
    fn git_out(&self, dir: &Path, args: &[&str]) -> String;
}

impl GitOut for Server {
    /// git's stdout (`git_ok` gives its stderr).
    fn git_out(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// The sample web app plus `files`, created as `app` and deployed.
fn deployed(server: &Server, app: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo = server.sample_repo(&format!("{app}-src"));
    for (name, content) in files {
        std::fs::write(repo.join(name), content).expect("write file");
    }
    server.commit_all(&repo, "app");
    server.cli_ok(&repo, &["apps:create", app]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the app to serve", || {
        (server.app_get(app, "/").0 == 200).then_some(())
    });
    repo
}

/// The CLI with stdin from `input`.
fn cli_with_input(
    server: &Server,
    dir: &Path,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("SLIPWAY_DATA_DIR", &server.data)
        .env("HOME", &server.home)
        .env_remove("SLIPWAY_API_URL")
        .env_remove("SLIPWAY_API_TOKEN")
        .env_remove("SLIPWAY_APP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start slipway");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait slipway")
}

#[test]
fn run_propagates_exit_status_stdin_config_and_files() {
    let server = Server::start();
    let repo = deployed(&server, "runner", &[("data.txt", "from the slug\n")]);
    server.cli_ok(&repo, &["config:set", "GREETING=hi-there"]);

    for code in [0, 1, 42] {
        let out = server.cli(&repo, &["run", "--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    }

    let out = cli_with_input(&server, &repo, &["run", "cat"], b"hi\nthere\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nthere\n");

    let out = server.cli(
        &repo,
        &[
            "run",
            "--env",
            "EXTRA=x1",
            "echo $GREETING $EXTRA $DYNO; cat data.txt",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.starts_with("hi-there x1 run."), "{said}");
    assert!(said.contains("from the slug"), "{said}");
}

/// Drives `slipway run bash` through a real pseudo-terminal made by python3's pty module.
#[test]
fn run_bash_on_a_terminal_echoes_and_sees_columns() {
    let server = Server::start();
    let repo = deployed(&server, "tty", &[]);
    let script = r#"
import os, pty, sys, time, select, struct, fcntl, termios
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "run", "bash"])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 97, 0, 0))
out = b""
def read_until(needle, secs):
    global out
    end = time.time() + secs
    while needle not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return needle in out
read_until(b"up, run.", 60)
time.sleep(0.5)
os.write(fd, b"echo cols=$COLUMNS; tty; exit 7\r")
read_until(b"cols=97", 60)
read_until(b"/dev/pts", 10)
status = None
end = time.time() + 30
while status is None and time.time() < end:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
    else:
        read_until(b"\0never", 0.2)
if status is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\nCLI-EXIT=%s\n" % status)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .current_dir(&repo)
        .env("SLIPWAY_DATA_DIR", &server.data)
        .env("HOME", &server.home)
        .env("TERM", "xterm")
        .env_remove("SLIPWAY_APP")
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    // The typed line comes back (the terminal echoes), then the output.
    assert!(said.contains("echo cols=$COLUMNS"), "{said}");
    assert!(said.contains("cols=97"), "{said}");
    assert!(
        said.contains("/dev/pts/"),
        "no terminal in the dyno: {said}"
    );
    assert!(said.contains("CLI-EXIT=7"), "{said}");
    assert!(!said.contains("heroku-command-exit-status"), "{said}");
}

#[test]
fn run_detached_output_goes_to_the_logs() {
    let server = Server::start();
    let repo = deployed(&server, "detach", &[]);
    let out = server.cli_ok(&repo, &["run:detached", "echo detached-$DYNO"]);
    let name = out.trim().to_string();
    assert!(name.starts_with("run.") && name.len() == 8, "{out}");
    // A long one is listed by `ps` while it runs, and `ps:stop` ends it.
    let long = server.cli_ok(&repo, &["run:detached", "--ttl", "600", "sleep 300"]);
    let long = long.trim().to_string();
    // (The echo one leaves the list once it has exited and been cleaned up.)
    wait_for(30, "ps to list the long one-off alone", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        (ps.contains("=== run: one-off processes (1)")
            && ps.contains(&format!("{long} (standard-1X): up")))
        .then_some(())
    });
    server.cli_ok(&repo, &["ps:stop", &long]);
    wait_for(30, "the stopped one-off to leave ps", || {
        (!server.cli_ok(&repo, &["ps"]).contains(&long)).then_some(())
    });
    let line = wait_for(30, "the detached output in the logs", || {
        let logs = server.cli_ok(&repo, &["logs", "-n", "200"]);
        logs.lines()
            .find(|l| l.contains(&format!("app[{name}]: detached-{name}")))
            .map(str::to_string)
    });
    assert!(line.contains(&name), "{line}");
}

const APP_WITH_RELEASE: &str =
    "web: python3 server.py\nrelease: echo migrated > /tmp/x; echo migrating; echo v=$GREETING\n";

#[test]
fn release_phase_failure_keeps_the_old_release_and_rejects_the_push() {
    let server = Server::start();
    let repo = deployed(&server, "relfail", &[]);
    // A new greeting in the code, and a release command that fails.
    let code = std::fs::read_to_string(repo.join("server.py")).expect("server.py");
    std::fs::write(
        repo.join("server.py"),
        code.replace("Hello from slipway", "Broken release"),
    )
    .expect("write");
    std::fs::write(
        repo.join("Procfile"),
        "web: python3 server.py\nrelease: echo about to fail; exit 3\n",
    )
    .expect("Procfile");
    let deployed_commit = server.git_out(&repo, &["rev-parse", "HEAD"]);
    server.commit_all(&repo, "failing release phase");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "the push should fail: {said}");
    assert!(said.contains("about to fail"), "{said}");
    assert!(said.contains("exited with status 3"), "{said}");
    // The branch did not move, and v1 keeps serving.
    let remote = server.git_out(&repo, &["ls-remote", "slipway", "main"]);
    assert!(
        remote.starts_with(deployed_commit.trim()),
        "{remote} vs {deployed_commit}"
    );
    let (status, body) = server.app_get("relfail", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from slipway"), "{body}");
    let (_, _, releases) = server.api("GET", "/apps/relfail/releases", None);
    let releases = json(&releases);
    let statuses: Vec<(i64, String, bool)> = releases
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| {
            (
                r["version"].as_i64().unwrap_or(0),
                r["status"].as_str().unwrap_or("").to_string(),
                r["current"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![(1, "succeeded".into(), true), (2, "failed".into(), false)]
    );
    let output = server.cli_ok(&repo, &["releases:output", "v2"]);
    assert!(output.contains("about to fail"), "{output}");
}

#[test]
fn release_phase_success_and_config_changes_run_it() {
    let server = Server::start();
    let repo = deployed(&server, "relok", &[("Procfile", APP_WITH_RELEASE)]);
    let output = server.cli_ok(&repo, &["releases:output", "v1"]);
    assert!(output.contains("migrating"), "{output}");
    let logs = server.cli_ok(&repo, &["logs", "-n", "200"]);
    assert!(logs.contains("app[release.1]: migrating"), "{logs}");

    server.cli_ok(&repo, &["config:set", "GREETING=second"]);
    let output = wait_for(60, "v2's release phase", || {
        let out = server.cli(&repo, &["releases:output", "v2"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert!(output.contains("v=second"), "{output}");
    // It succeeded, so the dynos moved onto v2.
    wait_for(60, "the new config to serve", || {
        let (status, body) = server.app_get("relok", "/");
        (status == 200 && body.contains("second (dyno")).then_some(())
    });

    // A rollback runs the release phase too, with the config it brings back.
    server.cli_ok(&repo, &["rollback", "v1"]);
    let output = wait_for(60, "v3's release phase", || {
        let out = server.cli(&repo, &["releases:output", "v3"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert!(output.contains("migrating\nv=\n"), "{output:?}");
    wait_for(60, "v1's config to serve again", || {
        let (status, body) = server.app_get("relok", "/");
        (status == 200 && body.contains("Hello from slipway (dyno")).then_some(())
    });
}

#[test]
fn restarting_one_web_dyno_of_two() {
    let server = Server::start();
    let repo = deployed(&server, "pair", &[]);
    server.cli_ok(&repo, &["ps:scale", "web=2"]);
    let ids = || -> Vec<(String, String, String)> {
        let (_, _, body) = server.api("GET", "/apps/pair/dynos", None);
        json(&body)
            .as_array()
            .expect("dynos")
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap_or("").to_string(),
                    d["id"].as_str().unwrap_or("").to_string(),
                    d["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let before = wait_for(60, "two web dynos up", || {
        let d = ids();
        (d.len() == 2 && d.iter().all(|(_, _, s)| s == "up")).then_some(d)
    });
    let said = text(&server.cli(&repo, &["ps:restart", "web.1"]));
    assert!(!said.contains("not supported"), "{said}");
    let after = wait_for(60, "web.1 replaced, web.2 kept", || {
        let d = ids();
        (d.len() == 2
            && d.iter().all(|(_, _, s)| s == "up")
            && d.iter().any(|x| x.0 == "web.1" && !before.contains(x)))
        .then_some(d)
    });
    let web2 = |list: &[(String, String, String)]| {
        list.iter()
            .find(|d| d.0 == "web.2")
            .cloned()
            .expect("web.2")
    };
    assert_eq!(web2(&before).1, web2(&after).1, "web.2 must not restart");
    assert_eq!(server.app_get("pair", "/").0, 200);
}
