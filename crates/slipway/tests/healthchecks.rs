//! Health checks that keep running (issue 12), through the real binary with real apps:
//!
//! - a `liveness` check that starts failing restarts the dyno (a `heroku[web.1]` line names
//!   the check and its result), and the replacement serves;
//! - a `readiness` check failing after boot takes that dyno out of rotation (the other one
//!   gets every request) until it passes again;
//! - a `command` check runs inside the dyno (its directory and config vars) and gates a
//!   deploy: a release whose command check fails is rejected, the old one keeps serving.

mod support;

use std::path::PathBuf;

use support::{text, wait_for, Server};

/// `/` answers `boot <id>` (a random id per process start). `/break` makes `/live` answer
/// 500 from then on; `/unready/N` makes `/ready` answer 503 for N seconds.
const APP: &str = r#"import http.server, os, time, uuid
BOOT = uuid.uuid4().hex
state = {"broken": False, "unready_until": 0.0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code, body = 200, f"boot {BOOT}\n"
        if self.path == "/break":
            state["broken"] = True
        elif self.path.startswith("/unready/"):
            state["unready_until"] = time.time() + float(self.path.rsplit("/", 1)[1])
        elif self.path == "/live":
            code, body = (500, "dead\n") if state["broken"] else (200, "alive\n")
        elif self.path == "/ready":
            code, body = (503, "busy\n") if time.time() < state["unready_until"] else (200, "ready\n")
        body = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn deploy(server: &Server, app: &str, checks: &str, extra: &[(&str, &str)]) -> PathBuf {
    let mut files = vec![
        ("Procfile", "web: python3 server.py\n"),
        ("server.py", APP),
        ("app.json", checks),
    ];
    files.extend_from_slice(extra);
    let repo = server.repo_with(&format!("{app}-src"), &files);
    server.cli_ok(&repo, &["apps:create", app]);
    repo
}

fn push(server: &Server, repo: &std::path::Path, app: &str) {
    server.git_ok(repo, &["push", "slipway", "main"]);
    wait_for(90, &format!("{app} to serve"), || {
        (server.app_get(app, "/").0 == 200).then_some(())
    });
}

/// The boot id the app answered `/` with, through the router.
fn boot(server: &Server, app: &str) -> String {
    let (status, body) = server.app_get(app, "/");
    assert_eq!(status, 200, "{body}");
    body.trim()
        .strip_prefix("boot ")
        .unwrap_or_else(|| panic!("not a boot id: {body:?}"))
        .to_string()
}

fn logs(server: &Server, repo: &std::path::Path) -> String {
    server.cli_ok(repo, &["logs", "-n", "1500"])
}

#[test]
fn a_failing_liveness_check_restarts_the_dyno() {
    let server = Server::start();
    let checks = r#"{"healthchecks": {"web": [
      {"type": "liveness", "name": "alive", "path": "/live", "attempts": 2, "wait": 1, "timeout": 2}
    ]}}"#;
    let repo = deploy(&server, "lively", checks, &[]);
    push(&server, &repo, "lively");
    let first = boot(&server, "lively");
    // Passing liveness checks change nothing: still the same process a few checks later.
    wait_for(30, "a few liveness checks", || {
        let (status, body) = server.app_get("lively", "/live");
        (status == 200 && body.trim() == "alive").then_some(())
    });
    assert_eq!(boot(&server, "lively"), first);
    assert!(!logs(&server, &repo).contains("Liveness check"));

    assert_eq!(server.app_get("lively", "/break").0, 200);
    let said = wait_for(60, "the liveness failure line", || {
        let logs = logs(&server, &repo);
        logs.lines()
            .find(|l| {
                l.contains("heroku[web.1]: Liveness check /live failed: 500 (2 consecutive attempts); restarting the dyno")
            })
            .map(str::to_string)
    });
    eprintln!("{said}");
    // The replacement is a new process that serves; the broken one is stopped.
    wait_for(90, "a new boot of web.1", || {
        let (status, body) = server.app_get("lively", "/");
        (status == 200 && !body.contains(&first)).then_some(())
    });
    wait_for(60, "one web dyno again", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        let web: Vec<&str> = ps.lines().filter(|l| l.starts_with("web.")).collect();
        (web.len() == 1 && web[0].contains("up")).then_some(())
    });
    assert_eq!(server.app_get("lively", "/live").0, 200);
}

#[test]
fn a_failing_readiness_check_takes_the_dyno_out_of_rotation_until_it_passes() {
    let server = Server::start();
    let checks = r#"{"healthchecks": {"web": [
      {"type": "readiness", "name": "ready", "path": "/ready", "attempts": 2, "wait": 1, "timeout": 2}
    ]}}"#;
    let repo = deploy(&server, "steady", checks, &[]);
    push(&server, &repo, "steady");
    server.cli_ok(&repo, &["ps:scale", "web=2"]);
    // Both dynos in rotation: two distinct boots answer.
    let mut boots = std::collections::BTreeSet::new();
    wait_for(90, "both dynos in rotation", || {
        boots.insert(boot(&server, "steady"));
        (boots.len() == 2).then_some(())
    });

    // One dyno busy for 25 s: out of rotation after two failed checks, back after.
    let (status, body) = server.app_get("steady", "/unready/25");
    assert_eq!(status, 200, "{body}");
    let busy = body.trim().trim_start_matches("boot ").to_string();
    let out = wait_for(30, "the out-of-rotation line", || {
        logs(&server, &repo)
            .lines()
            .find(|l| l.contains("Readiness check /ready failed: 503 (2 consecutive attempts); out of rotation until it passes"))
            .map(str::to_string)
    });
    eprintln!("{out}");
    for _ in 0..10 {
        assert_ne!(
            boot(&server, "steady"),
            busy,
            "a request reached the unready dyno"
        );
    }
    wait_for(60, "the back-in-rotation line", || {
        logs(&server, &repo)
            .contains("Readiness check /ready passed: back in rotation")
            .then_some(())
    });
    wait_for(30, "the busy dyno to get requests again", || {
        (boot(&server, "steady") == busy).then_some(())
    });
}

#[test]
fn a_command_check_runs_in_the_dyno_and_gates_a_deploy() {
    let server = Server::start();
    // Runs in the dyno: its directory (ready.txt from the slug) and its config vars.
    let checks = r#"{"healthchecks": {"web": [
      {"type": "startup", "name": "files", "command": ["sh", "-c", "echo \"$(cat ready.txt)-$HEALTH_WORD\""],
       "content": "ok-fine", "attempts": 2, "wait": 1, "timeout": 5}
    ]}}"#;
    let repo = deploy(&server, "cmdcheck", checks, &[("ready.txt", "ok\n")]);
    server.cli_ok(&repo, &["config:set", "HEALTH_WORD=fine", "-a", "cmdcheck"]);
    push(&server, &repo, "cmdcheck");
    let first = boot(&server, "cmdcheck");
    let passed = logs(&server, &repo);
    assert!(
        passed.contains("Health check `sh -c echo \"$(cat ready.txt)-$HEALTH_WORD\"` passed"),
        "{passed}"
    );

    std::fs::write(repo.join("ready.txt"), "broken\n").expect("write");
    server.commit_all(&repo, "a release whose command check fails");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "the push must be rejected:\n{said}");
    assert!(
        said.contains("failed health check `sh -c echo \"$(cat ready.txt)-$HEALTH_WORD\"`: exit status 0 without \"ok-fine\" in the output (2 attempts)"),
        "{said}"
    );
    // The old release keeps serving, same process.
    assert_eq!(boot(&server, "cmdcheck"), first);
}
