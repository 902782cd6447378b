//! Zero-downtime deploys through the real binary, under load (`bench/loadgen.py`: keep-alive
//! connections and a new connection per request, every non-2xx and socket error counted).
//!
//! - 20 deploys in a row of an app with an `app.json` health check: no request fails, and
//!   only the newest release's dyno is left;
//! - a release whose health check fails never gets a request (its `/` answers 503, which the
//!   load would count), the push is rejected naming the check, the old release keeps serving,
//!   the release is marked failed; the same check failing after a config change is refused
//!   with 422 `unhealthy_release` and the config stays as it was;
//! - a release crashing at boot is rejected while the old one serves.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{text, wait_for, Server};

/// How many deploys follow the first one under load (issue 12 asks for 20).
const DEPLOYS: u32 = 20;

/// The test app: `/health` says ok unless the release is `bad-*` or `FAIL_HEALTH` is set; then
/// every request answers 503 (so a request routed to it is a failure the load counts).
/// `/slow` takes 200 ms, so requests are in flight on the old dyno whenever traffic moves:
/// stopping it without draining loses them.
const APP: &str = r#"import http.server, os, time
VERSION = open("VERSION").read().strip()
SICK = VERSION.startswith("bad") or bool(os.environ.get("FAIL_HEALTH"))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.2)
        if self.path == "/health":
            code, body = (500, b"sick\n") if SICK else (200, b"ok\n")
        else:
            code, body = (503, b"a sick release got traffic\n") if SICK else (200, f"version {VERSION}\n".encode())
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const CHECKS: &str = r#"{"healthchecks": {"web": [
  {"type": "startup", "name": "web check", "path": "/health", "content": "ok",
   "attempts": 3, "wait": 1, "timeout": 2}
]}}"#;

fn app_repo(server: &Server, name: &str) -> PathBuf {
    server.repo_with(
        name,
        &[
            ("Procfile", "web: python3 server.py\n"),
            ("server.py", APP),
            ("app.json", CHECKS),
            ("VERSION", "1\n"),
        ],
    )
}

/// Creates the app, deploys version 1 and waits until it serves.
fn deployed(server: &Server, app: &str) -> PathBuf {
    let repo = app_repo(server, &format!("{app}-src"));
    server.cli_ok(&repo, &["apps:create", app]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    serves(server, app, "version 1");
    repo
}

fn serves(server: &Server, app: &str, body: &str) {
    wait_for(60, &format!("{app} to serve {body:?}"), || {
        let (status, got) = server.app_get(app, "/");
        (status == 200 && got.trim() == body).then_some(())
    });
}

/// `bench/loadgen.py` against the app until [`Load::stop`].
struct Load {
    child: Child,
    stop_file: PathBuf,
}

impl Load {
    fn start(server: &Server, app: &str, path: &str) -> Load {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/loadgen.py");
        let stop_file = server.root.path().join(format!("{app}-load.stop"));
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &server.router_port.to_string()])
            .args(["--host", &format!("{app}.localhost")])
            .args(["--keepalive", "2", "--fresh", "1", "--path", path])
            .arg("--stop-file")
            .arg(&stop_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bench/loadgen.py");
        // Every load thread has had a response before the test goes on.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, "ready", "loadgen did not start");
        std::thread::spawn(move || for _ in lines {});
        Load { child, stop_file }
    }

    /// Stops the load and returns its report.
    fn stop(mut self) -> serde_json::Value {
        std::fs::write(&self.stop_file, b"").expect("stop file");
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"))
            .wait_with_output()
            .expect("loadgen output");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(report.trim())
            .unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}): {report:?}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, b"");
        let _ = self.child.wait();
    }
}

/// The load saw no failure, and did send requests.
fn assert_no_failures(report: &serde_json::Value) {
    assert_eq!(report["failures"], 0, "requests failed: {report:#}");
    let requests = report["requests"].as_u64().unwrap_or(0);
    // Every load thread had a response before the push started (`ready`), and the load ran
    // until it ended: the whole switch-over was under load.
    assert!(requests >= 3, "the load sent nothing: {report:#}");
    assert_eq!(report["ok"].as_u64(), Some(requests), "{report:#}");
}

#[test]
fn twenty_deploys_under_load_lose_no_request() {
    let server = Server::start();
    let repo = deployed(&server, "steady");
    let load = Load::start(&server, "steady", "/slow");
    for n in 2..=DEPLOYS + 1 {
        std::fs::write(repo.join("VERSION"), format!("{n}\n")).expect("write");
        server.commit_all(&repo, &format!("version {n}"));
        let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
        assert!(pushed.contains(&format!("Released v{n}")), "{pushed}");
        // The push returns once traffic moved: the new release serves at once.
        let (status, body) = server.app_get("steady", "/");
        assert_eq!(
            (status, body.trim()),
            (200, format!("version {n}").as_str())
        );
    }
    let report = load.stop();
    eprintln!("load over {DEPLOYS} deploys: {report}");
    assert_no_failures(&report);
    // The replaced dynos drained and stopped: only the newest release's web.1 is left.
    let last = DEPLOYS + 1;
    wait_for(60, "only the newest release's dyno to run", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        let web: Vec<&str> = ps.lines().filter(|l| l.starts_with("web.")).collect();
        (web.len() == 1 && web[0].contains(&format!(" (v{last})"))).then_some(())
    });
}

#[test]
fn a_release_failing_its_health_check_never_gets_traffic_and_is_rejected() {
    let server = Server::start();
    let repo = deployed(&server, "checked");
    let load = Load::start(&server, "checked", "/");

    std::fs::write(repo.join("VERSION"), "bad-2\n").expect("write");
    server.commit_all(&repo, "a release whose health check fails");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "the push must be rejected:\n{said}");
    assert!(
        said.contains("web.1 of v2 failed health check /health: 500 (3 attempts)"),
        "{said}"
    );
    assert!(said.contains("Push rejected"), "{said}");
    serves(&server, "checked", "version 1");
    let (status, _, body) = server.api("GET", "/apps/checked/releases/2", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"failed""#), "{body}");

    // A config change that makes the check fail is refused; the config stays as it was.
    let (status, _, body) = server.api(
        "PATCH",
        "/apps/checked/config-vars",
        Some(r#"{"FAIL_HEALTH": "1"}"#),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(r#""id":"unhealthy_release""#), "{body}");
    assert!(
        body.contains("web.1 of v3 failed health check /health: 500 (3 attempts)"),
        "{body}"
    );
    let (_, _, config) = server.api("GET", "/apps/checked/config-vars", None);
    assert!(!config.contains("FAIL_HEALTH"), "{config}");
    serves(&server, "checked", "version 1");

    let report = load.stop();
    eprintln!("load while unhealthy releases were refused: {report}");
    assert_no_failures(&report);
    // The sick dynos are gone; version 1's keeps running.
    wait_for(60, "only v1's dyno to run", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        let web: Vec<&str> = ps.lines().filter(|l| l.starts_with("web.")).collect();
        (web.len() == 1 && web[0].contains(" (v1)")).then_some(())
    });
}

#[test]
fn a_release_crashing_at_boot_is_rejected_while_the_old_one_serves() {
    let server = Server::start();
    let repo = deployed(&server, "crashboot");
    let load = Load::start(&server, "crashboot", "/");
    std::fs::write(
        repo.join("Procfile"),
        "web: echo 'boom: missing DATABASE_URL' >&2; exit 1\n",
    )
    .expect("write");
    server.commit_all(&repo, "crashes at boot");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "the push must be rejected:\n{said}");
    assert!(
        said.contains("web.1 of v2 crashed before it came up"),
        "{said}"
    );
    serves(&server, "crashboot", "version 1");
    let report = load.stop();
    eprintln!("load while a crashing release was refused: {report}");
    assert_no_failures(&report);
}
