//! The deploy runner through the real binary (issue 10): pushes go through setup, pre-deploy,
//! deploy, post-deploy and smoke steps; checks that fail after the release went live roll it
//! back (code and config, as a new release); the log test and heartbeat watch the release;
//! target secrets never show; a server restart leaves the deploy interrupted and the app on a
//! whole release; `deploys:wait` exits non-zero unless the deploy passed; webhooks get the
//! report.

#[allow(unused_imports)]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde_json::Value;
use support::{text, wait_for, Server};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A web app answering `GET /` with `body`; `/` answers 500 from its `fail_after`th request
/// on, `/health` answers 503 from its `health_fail_after`th on (counted per process).
fn server_py(body: &str, fail_after: u32, health_fail_after: u32) -> String {
    format!(
        r#"import http.server, os, sys
hits = {{"/": 0, "/health": 0}}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path if self.path in hits else "/"
        hits[path] += 1
        status = 200
        if path == "/" and {fail_after} and hits[path] >= {fail_after}:
            status = 500
        if path == "/health" and {health_fail_after} and hits[path] >= {health_fail_after}:
            status = 503
        data = ("{body} " + os.environ.get("GREETING", "-") + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#
    )
}

/// `app` created from a repository serving `body`, deployed (v1), with `GREETING` set (v2).
fn deployed(server: &Server, app: &str, body: &str) -> PathBuf {
    let repo = server.repo_with(
        &format!("{app}-src"),
        &[
            ("Procfile", "web: python3 server.py\n"),
            ("server.py", &server_py(body, 0, 0)),
        ],
    );
    server.cli_ok(&repo, &["apps:create", app]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    server.cli_ok(&repo, &["config:set", "GREETING=first-config"]);
    serves(server, app, &format!("{body} first-config"));
    repo
}

fn serves(server: &Server, app: &str, expected: &str) -> String {
    wait_for(90, &format!("{app} to answer {expected:?}"), || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.contains(expected)).then_some(body)
    })
}

/// Replaces the app's code and app.json and pushes; the push's output and success.
fn push_change(server: &Server, repo: &Path, server_code: &str, app_json: &str) -> (bool, String) {
    std::fs::write(repo.join("server.py"), server_code).expect("server.py");
    std::fs::write(repo.join("app.json"), app_json).expect("app.json");
    server.commit_all(repo, "change");
    let out = server.git(repo, &["push", "slipway", "main"]);
    (out.status.success(), text(&out))
}

fn deploy(server: &Server, app: &str, n: i64) -> Value {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/deploys/{n}"), None);
    assert_eq!(status, 200, "{body}");
    json(&body)
}

fn step<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {d:#}"))
}

fn releases(server: &Server, app: &str) -> Vec<Value> {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/releases"), None);
    assert_eq!(status, 200, "{body}");
    json(&body).as_array().expect("releases").clone()
}

fn release_config(server: &Server, app: &str, v: i64) -> Value {
    let (status, _, body) = server.api(
        "GET",
        &format!("/apps/{app}/releases/{v}/config-vars"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    json(&body)
}

fn wait_status(server: &Server, app: &str, n: i64, wanted: &str) -> Value {
    wait_for(120, &format!("deploy #{n} of {app} to be {wanted}"), || {
        let d = deploy(server, app, n);
        (d["status"] == wanted).then_some(d)
    })
}

/// A one-request-at-a-time HTTP receiver on 127.0.0.1: every request body comes out of the
/// channel (the test's webhook).
fn receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let url = format!(
        "http://{}/hooks/deploys",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_failing_smoke_test_rolls_back_code_and_config() {
    let server = Server::start();
    let repo = deployed(&server, "smoky", "old-page");
    let before = releases(&server, "smoky");
    let served_before = before.last().expect("v2")["version"].as_i64().expect("v");

    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"slipway": {"smoke": ["curl -fsS $URL | grep welcome"], "watch": 0}}"#,
    );
    assert!(!ok, "a failing smoke test rejects the push:\n{out}");
    assert!(out.contains("smoke failed"), "{out}");
    assert!(out.contains("rollback passed"), "{out}");
    serves(&server, "smoky", "old-page first-config");

    let d = deploy(&server, "smoky", 2);
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert_eq!(step(&d, "smoke")["status"], "failed");
    assert_eq!(step(&d, "deploy")["status"], "passed");
    assert!(
        step(&d, "smoke")["output"]
            .as_str()
            .is_some_and(|o| o.contains("curl -fsS $URL | grep welcome")),
        "{d:#}"
    );
    let after = releases(&server, "smoky");
    let rollback = after.last().expect("rollback release");
    let rollback_v = rollback["version"].as_i64().expect("v");
    assert_eq!(d["rollback_release"], rollback_v);
    assert_eq!(
        rollback["description"],
        format!("Rollback to v{served_before}")
    );
    assert_eq!(
        rollback["slug"]["id"],
        before.last().expect("v2")["slug"]["id"]
    );
    assert_eq!(
        release_config(&server, "smoky", rollback_v),
        release_config(&server, "smoky", served_before)
    );
    // deploys:wait of a rolled-back deploy fails; of a passed one (the first push) succeeds.
    let waited = server.cli(&repo, &["deploys:wait", "2"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    assert!(String::from_utf8_lossy(&waited.stdout).contains("rolled_back"));
    let first = server.cli(&repo, &["deploys:wait", "1"]);
    assert!(first.status.success(), "{}", text(&first));
}

#[test]
fn a_failing_predeploy_command_stops_before_anything_goes_live() {
    let server = Server::start();
    let repo = deployed(&server, "migrate", "old-page");
    let before = releases(&server, "migrate").len();
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"scripts": {"dokku": {"predeploy": "echo migrating; exit 1"}}, "slipway": {"watch": 0}}"#,
    );
    assert!(!ok, "{out}");
    assert!(out.contains("migrating"), "{out}");
    assert!(out.contains("pre-deploy failed"), "{out}");
    assert!(out.contains("exited with status 1"), "{out}");
    assert_eq!(
        releases(&server, "migrate").len(),
        before,
        "no release was made"
    );
    serves(&server, "migrate", "old-page first-config");
    let d = deploy(&server, "migrate", 2);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["release"], Value::Null);
    assert_eq!(step(&d, "deploy")["status"], "skipped");
    let waited = server.cli(&repo, &["deploys:wait", "2"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    let info = server.cli_ok(&repo, &["deploys:info", "2"]);
    assert!(info.contains("pre-deploy"), "{info}");
    assert!(info.contains("migrating"), "{info}");

    // A passing one runs in a one-off of the new slug before it goes live.
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("newer-page", 0, 0),
        r#"{"scripts": {"dokku": {"predeploy": "test -f server.py && echo ran-in-slug"}}, "slipway": {"watch": 0}}"#,
    );
    assert!(ok, "{out}");
    assert!(out.contains("ran-in-slug"), "{out}");
    serves(&server, "migrate", "newer-page first-config");
    let waited = server.cli(&repo, &["deploys:wait", "3"]);
    assert!(waited.status.success(), "{}", text(&waited));
}

#[test]
fn the_log_test_catches_an_app_that_starts_throwing_500s() {
    let server = Server::start();
    let repo = deployed(&server, "noisy", "old-page");
    // `/` answers 500 from its second request on: the smoke test's request passes.
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 2, 0),
        r#"{"slipway": {"smoke": "curl -fsS $URL", "watch": 120, "log_test": {"threshold": 2}}}"#,
    );
    assert!(
        ok,
        "the push waits up to the smoke test, which passes:\n{out}"
    );
    assert!(out.contains("deploys:wait 2"), "{out}");
    // Traffic: the new release answers 500 until the log test rolls it back.
    let d = wait_for(120, "the log test to roll the deploy back", || {
        let _ = server.app_get("noisy", "/");
        let d = deploy(&server, "noisy", 2);
        (d["status"] == "rolled_back").then_some(d)
    });
    let log = step(&d, "log-test");
    assert_eq!(log["status"], "failed", "{d:#}");
    assert!(
        log["output"]
            .as_str()
            .is_some_and(|o| o.contains("status=500")),
        "the report shows the lines that tripped it: {d:#}"
    );
    serves(&server, "noisy", "old-page first-config");
    let waited = server.cli(&repo, &["deploys:wait", "2"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
}

#[test]
fn the_heartbeat_catches_an_app_that_stops_answering() {
    let server = Server::start();
    let repo = deployed(&server, "beat", "old-page");
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 3),
        r#"{"slipway": {"watch": 120, "heartbeat": {"path": "/health", "interval": 1, "misses": 0},
            "log_test": {"builtin": false}}}"#,
    );
    assert!(ok, "{out}");
    let d = wait_status(&server, "beat", 2, "rolled_back");
    assert_eq!(step(&d, "heartbeat")["status"], "failed", "{d:#}");
    assert!(
        step(&d, "heartbeat")["note"]
            .as_str()
            .is_some_and(|n| n.contains("answered 503")),
        "{d:#}"
    );
    assert_eq!(step(&d, "log-test")["status"], "passed", "{d:#}");
    serves(&server, "beat", "old-page first-config");
}

#[test]
fn a_target_secret_never_appears_in_any_output() {
    let server = Server::start();
    let repo = deployed(&server, "secretive", "old-page");
    let secret = "s3cr3t-Value-4711";
    server.cli_ok(
        &repo,
        &["deploys:secrets:set", &format!("API_KEY={secret}")],
    );
    let (url, bodies) = receiver();
    server.cli_ok(&repo, &["webhooks:add", &url]);
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"scripts": {"dokku": {"predeploy": "echo pre=$API_KEY", "postdeploy": "echo post=$API_KEY >&2"}},
            "slipway": {"smoke": ["echo smoke=$API_KEY", "test \"$API_KEY\" = s3cr3t-Value-4711"], "watch": 0}}"#,
    );
    assert!(ok, "{out}");
    // The commands saw the value (the smoke test compared it), every output masks it.
    for shown in ["pre=[masked]", "post=[masked]", "smoke=[masked]"] {
        assert!(out.contains(shown), "{shown} in the push output:\n{out}");
    }
    let report = wait_for(60, "the report of deploy #2", || {
        let body = bodies
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the webhook got the report");
        (json(&body)["deploy"]["number"] == 2).then_some(body)
    });
    let info = server.cli_ok(&repo, &["deploys:info", "2"]);
    let info_json = server.cli_ok(&repo, &["deploys:info", "2", "--json"]);
    let logs = server.cli_ok(&repo, &["logs", "-n", "1500"]);
    let secrets = server.cli_ok(&repo, &["deploys:secrets"]);
    for (what, text) in [
        ("push output", &out),
        ("deploys:info", &info),
        ("deploys:info --json", &info_json),
        ("logs", &logs),
        ("webhook body", &report),
        ("deploys:secrets", &secrets),
    ] {
        assert!(
            !text.contains(secret),
            "the secret shows in {what}:\n{text}"
        );
    }
    assert!(info.contains("smoke=[masked]"), "{info}");
    assert!(secrets.contains("API_KEY"), "{secrets}");
    let report = json(&report);
    assert_eq!(report["deploy"]["status"], "passed", "{report:#}");
    assert_eq!(report["deploy"]["app"], "secretive");
}

#[test]
fn webhooks_receive_the_report_of_a_failed_deploy() {
    let server = Server::start();
    let repo = deployed(&server, "hooked", "old-page");
    let (url, bodies) = receiver();
    server.cli_ok(&repo, &["webhooks:add", &url]);
    let listed = server.cli_ok(&repo, &["webhooks"]);
    assert!(listed.contains(&url), "{listed}");
    let refused = server.cli(&repo, &["webhooks:add", "ftp://example.com/x"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("http://"), "{}", text(&refused));
    let (ok, _) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"slipway": {"smoke": "exit 3", "watch": 0}}"#,
    );
    assert!(!ok);
    // The first push's deploy was still watching: the second ends its window, and its report
    // comes first.
    let report = wait_for(60, "the report of deploy #2", || {
        let body = bodies
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("report");
        let report = json(&body);
        (report["deploy"]["number"] == 2).then_some(report)
    });
    let d = &report["deploy"];
    assert_eq!(d["status"], "rolled_back", "{report:#}");
    assert!(
        d["failure"].as_str().is_some_and(|f| f.contains("exit 3")),
        "{report:#}"
    );
    let smoke = d["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "smoke")
        .expect("smoke step");
    assert_eq!(smoke["status"], "failed");
}

#[test]
fn bad_slipway_settings_are_refused_at_push_time() {
    let server = Server::start();
    let repo = deployed(&server, "strict", "old-page");
    let before = releases(&server, "strict").len();
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"slipway": {"smoke": "true", "wacth": 10}}"#,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("app.json: `slipway.wacth` is not a known setting"),
        "{out}"
    );
    assert_eq!(releases(&server, "strict").len(), before);
    serves(&server, "strict", "old-page first-config");
}

#[test]
fn a_server_restart_mid_deploy_leaves_it_interrupted_on_a_whole_release() {
    let mut server = Server::start();
    let repo = deployed(&server, "restarted", "old-page");
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"slipway": {"watch": 600}}"#,
    );
    assert!(ok, "{out}");
    assert_eq!(deploy(&server, "restarted", 2)["status"], "running");
    server.kill9();
    server.launch();
    let d = deploy(&server, "restarted", 2);
    assert_eq!(d["status"], "interrupted", "{d:#}");
    assert_eq!(step(&d, "log-test")["status"], "interrupted", "{d:#}");
    // The release that went live is whole: current, and it serves.
    let all = releases(&server, "restarted");
    assert!(all.iter().all(|r| r["status"] != "pending"), "{all:#?}");
    let current = all.iter().find(|r| r["current"] == true).expect("current");
    assert_eq!(current["version"], d["release"]);
    serves(&server, "restarted", "new-page first-config");
    let waited = server.cli(&repo, &["deploys:wait", "2"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
}

#[test]
fn deploys_queue_per_app_and_a_queued_one_can_be_cancelled() {
    let server = Server::start();
    let repo = deployed(&server, "queued", "old-page");
    // A deploy that watches for a long time holds the queue only until the next one comes.
    let (ok, out) = push_change(
        &server,
        &repo,
        &server_py("new-page", 0, 0),
        r#"{"slipway": {"watch": 600}}"#,
    );
    assert!(ok, "{out}");
    let started = server.cli(&repo, &["deploys:start", "--release", "v1", "--watch", "0"]);
    assert!(started.status.success(), "{}", text(&started));
    let first = deploy(&server, "queued", 2);
    assert_eq!(
        first["status"], "passed",
        "a newer deploy ends the watch: {first:#}"
    );
    assert!(
        step(&first, "log-test")["note"]
            .as_str()
            .is_some_and(|n| n.contains("cut short")),
        "{first:#}"
    );
    serves(&server, "queued", "old-page -");
    let list = server.cli_ok(&repo, &["deploys"]);
    assert!(
        list.contains("#3") && list.contains("rollback to v1"),
        "{list}"
    );
    let done = server.cli(&repo, &["deploys:cancel", "3"]);
    assert!(
        !done.status.success(),
        "a finished deploy can't be cancelled"
    );
    assert!(text(&done).contains("has finished"), "{}", text(&done));
}
