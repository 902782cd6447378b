//! The reconciliation pass through the real binary, under real runc and under the process
//! runtime: drift made behind slipway's back is found and corrected, with a `Reconciling:`
//! line in the app's log, and a healthy app is left alone pass after pass. Passes are counted
//! in `GET /health` (`reconcile.passes`), so the tests wait for passes to have happened, never
//! a fixed time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{http, runc_unavailable, wait_for, Server};

/// Answers `/` with a token drawn at start: each run of the dyno has its own (pids do not
/// tell runs apart: a container's process is pid 1 every time).
/// With `BOOT_DELAY=N` set, it waits N seconds before binding `PORT` (a slow boot).
const BOOT: &str = r#"import http.server, os, time

BOOT = os.urandom(8).hex()

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"boot={BOOT}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

time.sleep(int(os.environ.get("BOOT_DELAY", "0")))
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
"#;

fn server(runtime: &str) -> Option<Server> {
    if runtime == "oci" {
        if let Some(reason) = runc_unavailable() {
            eprintln!("skipped: {reason}");
            return None;
        }
    }
    Some(Server::start_with(&[
        "--dyno-runtime",
        runtime,
        "--reconcile-interval",
        "1",
    ]))
}

fn deploy(server: &Server, app: &str) -> PathBuf {
    let repo = server.app_repo(
        app,
        &[
            // The worker's process has an empty environment (as one that overwrites it,
            // like gunicorn's setproctitle, may have): it is still seen to run.
            (
                "Procfile",
                "web: exec python3 app.py\nworker: exec env -i /bin/sleep 100000\n",
            ),
            ("app.py", BOOT),
        ],
    );
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    server.cli_ok(&repo, &["ps:scale", "web=2", "worker=1"]);
    repo
}

fn boot(server: &Server, app: &str) -> String {
    wait_for(90, &format!("{app} to serve"), || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.starts_with("boot=")).then_some(body)
    })
}

fn ps_json(server: &Server, repo: &Path) -> Vec<Value> {
    let out = server.cli_ok(repo, &["ps", "--json"]);
    match serde_json::from_str(&out) {
        Ok(Value::Array(list)) => list,
        other => panic!("ps --json: {other:?}: {out}"),
    }
}

/// `(name, id)` of every dyno, once all three are up.
fn all_up(server: &Server, repo: &Path) -> Vec<(String, String)> {
    wait_for(90, "web.1, web.2 and worker.1 up", || {
        let dynos = ps_json(server, repo);
        let mut up: Vec<(String, String)> = dynos
            .iter()
            .filter(|d| d["state"] == "up")
            .map(|d| {
                (
                    d["name"].as_str().unwrap_or_default().to_string(),
                    d["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        up.sort();
        let names: Vec<&str> = up.iter().map(|(n, _)| n.as_str()).collect();
        (dynos.len() == 3 && names == ["web.1", "web.2", "worker.1"]).then_some(up)
    })
}

/// `reconcile.passes` and `reconcile.corrections` from `GET /health`.
fn passes(server: &Server) -> (u64, u64) {
    let (status, _, body) = http(server.api_port, "GET", "/health", &[], None);
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("health json");
    (
        health["reconcile"]["passes"].as_u64().expect("passes"),
        health["reconcile"]["corrections"]
            .as_u64()
            .expect("corrections"),
    )
}

/// Waits until `n` more passes have finished than had when called.
fn wait_passes(server: &Server, n: u64) {
    let (from, _) = passes(server);
    wait_for(60, &format!("{n} reconciliation passes"), || {
        (passes(server).0 >= from + n).then_some(())
    });
}

/// `pid.json` of a dyno's monitor: (monitor pid, dyno pid).
fn pids(server: &Server, dyno_id: &str) -> (u32, u32) {
    let path = server
        .dynos_dir()
        .join(".monitors")
        .join(dyno_id)
        .join("pid.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let pids: Value = serde_json::from_str(&text).expect("pid.json");
    let pid = |k: &str| pids[k].as_u64().and_then(|p| u32::try_from(p).ok());
    (
        pid("monitor").expect("monitor pid"),
        pid("dyno").expect("dyno pid"),
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .starts_with('Z')
    })
}

fn kill(signal: &str, target: &str) {
    let ok = Command::new("kill")
        .args([signal, "--", target])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {signal} {target}");
}

/// Ends a dyno's processes behind slipway's back: `runc kill` + `runc delete` of its container,
/// or SIGKILL to its process group.
fn kill_dyno(server: &Server, runtime: &str, dyno_id: &str, dyno_pid: u32) {
    if runtime == "oci" {
        let state = server.dynos_dir().join(".oci/state");
        for args in [
            vec!["kill", dyno_id, "KILL"],
            vec!["delete", "--force", dyno_id],
        ] {
            let out = Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(&args)
                .output()
                .expect("runc");
            assert!(out.status.success(), "runc {args:?}: {out:?}");
        }
    } else {
        kill("-KILL", &format!("-{dyno_pid}"));
    }
}

fn drift_is_corrected(runtime: &str) {
    let Some(server) = server(runtime) else {
        return;
    };
    let app = "drifty";
    let repo = deploy(&server, app);
    let dynos = all_up(&server, &repo);
    let web1 = dynos[0].1.clone();
    let first = boot(&server, app);

    // The container and the monitor both killed (runc kill + delete, kill -9; the monitor
    // stopped first so that it cannot record the exit): the supervisor learns of it from
    // the monitor's socket closing and restarts the dyno.
    let (monitor, dyno) = pids(&server, &web1);
    kill("-STOP", &monitor.to_string());
    kill_dyno(&server, runtime, &web1, dyno);
    kill("-KILL", &monitor.to_string());
    server.wait_for_log_in_order(
        &repo,
        60,
        "the monitor's death and the restart in the log",
        "heroku[web.1]: Error: the dyno's monitor process died",
        "heroku[web.1]: State changed from crashed to starting",
    );
    all_up(&server, &repo);

    // A monitor that hangs (stopped) over a dyno killed behind slipway's back: nothing tells
    // the supervisor; the reconciliation pass finds the process gone and restarts the dyno.
    let dynos = all_up(&server, &repo);
    let web1 = dynos[0].1.clone();
    let (monitor, dyno) = pids(&server, &web1);
    kill("-STOP", &monitor.to_string());
    kill_dyno(&server, runtime, &web1, dyno);
    let lines = wait_for(60, "the pass to correct web.1", || {
        let lines = server.log_lines(&repo);
        lines
            .iter()
            .any(|l| {
                l.contains("heroku[web.1]: Reconciling: its process")
                    && l.contains("is gone but its monitor never reported an exit")
            })
            .then_some(lines)
    });
    let at = lines
        .iter()
        .position(|l| l.contains("heroku[web.1]: Reconciling:"))
        .expect("the line");
    wait_for(60, "web.1 restarted after the correction", || {
        let lines = server.log_lines(&repo);
        lines[at..]
            .iter()
            .any(|l| l.contains("heroku[web.1]: State changed from starting to up"))
            .then_some(())
    });
    assert!(!alive(monitor), "the hung monitor {monitor} was not ended");
    let after = all_up(&server, &repo);
    assert_eq!(after[0].0, "web.1");
    assert_ne!(
        pids(&server, &after[0].1).0,
        monitor,
        "web.1 has a new monitor"
    );
    // Both web dynos serve again (round robin): the restarted one has a new boot token.
    wait_for(60, "a new run of web.1 to serve", || {
        let now = boot(&server, app);
        (now != first).then_some(())
    });
    assert!(passes(&server).1 >= 1, "{:?}", passes(&server));
    // Corrected once: later passes find it in step.
    wait_passes(&server, 3);
    let lines = server.log_lines(&repo);
    let corrections = lines.iter().filter(|l| l.contains("Reconciling:")).count();
    assert_eq!(corrections, 1, "{lines:#?}");
}

#[test]
fn oci_drift_behind_slipways_back_is_corrected() {
    drift_is_corrected("oci");
}

#[test]
fn process_drift_behind_slipways_back_is_corrected() {
    drift_is_corrected("process");
}

fn a_healthy_app_is_left_alone(runtime: &str) {
    let Some(server) = server(runtime) else {
        return;
    };
    let app = "steady";
    let repo = deploy(&server, app);
    let before = all_up(&server, &repo);
    let pids_before: Vec<(u32, u32)> = before.iter().map(|(_, id)| pids(&server, id)).collect();
    let boots_before: Vec<String> = (0..4).map(|_| boot(&server, app)).collect();

    wait_passes(&server, 4);

    let after = all_up(&server, &repo);
    assert_eq!(after, before, "the dynos were replaced");
    let pids_after: Vec<(u32, u32)> = after.iter().map(|(_, id)| pids(&server, id)).collect();
    assert_eq!(pids_after, pids_before, "a dyno was restarted");
    for (monitor, dyno) in &pids_after {
        assert!(alive(*monitor) && alive(*dyno), "{monitor} {dyno}");
    }
    let mut boots_after: Vec<String> = (0..4).map(|_| boot(&server, app)).collect();
    let mut boots_before = boots_before;
    boots_before.sort();
    boots_before.dedup();
    boots_after.sort();
    boots_after.dedup();
    assert!(
        boots_after.iter().all(|b| boots_before.contains(b)),
        "a web dyno was restarted: {boots_before:?} then {boots_after:?}"
    );
    assert_eq!(passes(&server).1, 0, "corrections were made");
    let lines = server.log_lines(&repo);
    assert!(
        !lines.iter().any(|l| l.contains("Reconciling:")),
        "{lines:#?}"
    );
}

#[test]
fn oci_a_healthy_app_is_left_alone_by_the_passes() {
    a_healthy_app_is_left_alone("oci");
}

#[test]
fn process_a_healthy_app_is_left_alone_by_the_passes() {
    a_healthy_app_is_left_alone("process");
}

/// `(name, release version, state)` of every web dyno.
fn web_dynos(server: &Server, repo: &Path) -> Vec<(String, i64, String)> {
    let mut web: Vec<(String, i64, String)> = ps_json(server, repo)
        .iter()
        .filter(|d| d["type"] == "web")
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_string(),
                d["release"]["version"].as_i64().unwrap_or_default(),
                d["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    web.sort();
    web
}

/// Waits until a replacement of web.1 is starting beside the old one, which still serves.
fn replacing_web1(server: &Server, repo: &Path, old: i64, new: i64) {
    let what = format!("web.1 of v{new} starting beside web.1 of v{old}");
    wait_for(60, &what, || {
        let web = web_dynos(server, repo);
        let up = |v: i64| {
            web.iter()
                .any(|(n, r, s)| n == "web.1" && *r == v && s == "up")
        };
        let starting = web
            .iter()
            .any(|(n, r, s)| n == "web.1" && *r == new && s == "starting");
        (up(old) && starting).then_some(())
    });
}

/// Passes run while a rollout (a config change, which holds the app) and a restart (which
/// does not: the runtime says it is under way) replace a slow-booting web dyno: neither is
/// disturbed, and no pass corrects anything.
fn rollouts_in_progress_are_left_alone(runtime: &str) {
    let Some(server) = server(runtime) else {
        return;
    };
    let app = "patient";
    let repo = server.app_repo(
        app,
        &[("Procfile", "web: exec python3 app.py\n"), ("app.py", BOOT)],
    );
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    boot(&server, app);

    // A config change rolls out v2, whose web dyno takes 8 s to bind.
    let mut change = server.cli_spawn(&repo, &["config:set", "BOOT_DELAY=8"]);
    replacing_web1(&server, &repo, 1, 2);
    wait_passes(&server, 3);
    replacing_web1(&server, &repo, 1, 2);
    assert!(change.wait().expect("config:set").success());
    wait_for(60, "v2 alone", || {
        let web = web_dynos(&server, &repo);
        (web == [("web.1".to_string(), 2, "up".to_string())]).then_some(())
    });

    // A restart: the replacement boots beside the old dyno, which is retiring meanwhile.
    server.cli_ok(&repo, &["ps:restart", "web.1"]);
    replacing_web1(&server, &repo, 2, 2);
    wait_passes(&server, 3);
    replacing_web1(&server, &repo, 2, 2);
    wait_for(60, "the restarted web.1 alone", || {
        let web = web_dynos(&server, &repo);
        (web == [("web.1".to_string(), 2, "up".to_string())]).then_some(())
    });
    wait_passes(&server, 2);

    let lines = server.log_lines(&repo);
    assert!(
        !lines.iter().any(|l| l.contains("Reconciling:")),
        "{lines:#?}"
    );
    assert_eq!(passes(&server).1, 0, "corrections were made");
    let started = lines
        .iter()
        .filter(|l| l.contains("heroku[web.1]: Starting process"))
        .count();
    assert_eq!(started, 3, "v1, v2 and the restart: {lines:#?}");
}

#[test]
fn oci_rollouts_in_progress_are_left_alone_by_the_passes() {
    rollouts_in_progress_are_left_alone("oci");
}

#[test]
fn process_rollouts_in_progress_are_left_alone_by_the_passes() {
    rollouts_in_progress_are_left_alone("process");
}
