//! Dynos outlive the server: through the real binary and real runc (the default runtime when
//! root), a server killed with SIGKILL or stopped with SIGTERM leaves its dynos running under
//! their monitors, and the next server re-adopts them: the same processes serve, nothing is
//! restarted, and what they wrote while no server was there is delivered exactly once.
//! Also the supervision the monitors take part in: boot timeout (R10) and crash backoff.

mod support;

use support::{wait_for, Server};

/// A web app that answers with its pid and writes `tick N` (N = 1, 2, 3...) every 50 ms.
const TICKER: &str = r#"import http.server, os, threading, time

def ticker():
    n = 0
    while True:
        n += 1
        print(f"tick {n}", flush=True)
        time.sleep(0.05)

class Pid(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"pid={os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

threading.Thread(target=ticker, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Pid).serve_forever()
"#;

fn deploy(server: &Server, app: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let repo = server.app_repo(app, files);
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    repo
}

fn deploy_ticker(server: &Server, app: &str) -> (std::path::PathBuf, String) {
    let repo = deploy(
        server,
        app,
        &[("Procfile", "web: python3 -u app.py\n"), ("app.py", TICKER)],
    );
    let body = wait_for(60, "the ticker to serve", || {
        let (status, body) = server.app_get(app, "/");
        (status == 200).then_some(body)
    });
    (repo, body)
}

/// The app's log as the server has it now.
/// The N of every `tick N` line, in order.
fn ticks(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.split("app[web.1]: tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// The ticks in the dyno's on-disk log after the server's saved read position: what the dyno
/// wrote that no server has delivered yet.
fn undelivered_ticks(server: &Server) -> Vec<u64> {
    let monitors = server.dynos_dir().join(".monitors");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&monitors)
        .expect("monitors dir")
        .flatten()
    {
        let dir = entry.path();
        let cursor = std::fs::read_to_string(dir.join("cursor")).unwrap_or_default();
        let mut parts = cursor.split_whitespace();
        let segment: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let offset: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let raw = std::fs::read(dir.join(format!("out.{segment}"))).unwrap_or_default();
        let text = String::from_utf8_lossy(raw.get(offset..).unwrap_or_default()).into_owned();
        out.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("tick "))
                .filter_map(|n| n.parse::<u64>().ok()),
        );
    }
    out
}

#[test]
fn a_killed_server_leaves_dynos_running_and_the_next_one_adopts_them() {
    killed_server_adopts("oci");
}

#[test]
fn a_killed_server_leaves_process_dynos_running_and_the_next_one_adopts_them() {
    killed_server_adopts("process");
}

fn killed_server_adopts(runtime: &str) {
    let mut server = Server::start_with(&["--dyno-runtime", runtime]);
    server.stop_dynos_on_exit = false;
    server.terminate();
    server.launch();
    let (repo, body) = deploy_ticker(&server, "steady");
    let pids_before = {
        let mut p = server.dyno_processes();
        p.sort();
        p
    };
    let monitors_before = server.monitor_processes();
    assert_eq!(monitors_before.len(), 1, "one monitor for web.1");

    server.kill9();
    // The dyno keeps running and writing while no server is there: wait until it has
    // written at least 10 lines that no server delivered.
    let outage = wait_for(30, "output written during the outage", || {
        let t = undelivered_ticks(&server);
        (t.len() >= 10).then_some(t)
    });
    for pid in &pids_before {
        assert!(alive(*pid), "dyno process {pid} died with the server");
    }

    server.launch();
    // Served at once by the same process, no waiting for a boot.
    let (status, again) = server.app_get("steady", "/");
    assert_eq!((status, again.as_str()), (200, body.as_str()));
    let pids_after = {
        let mut p = server.dyno_processes();
        p.sort();
        p
    };
    assert_eq!(pids_after, pids_before, "no dyno started, none lost");
    assert_eq!(server.monitor_processes(), monitors_before);

    // Everything written during the outage arrives, once, and the stream goes on from there.
    let last_outage = *outage.last().expect("outage ticks");
    let lines = wait_for(30, "the outage's output in the log", || {
        let lines = server.log_lines(&repo);
        ticks(&lines)
            .iter()
            .any(|t| *t > last_outage + 5)
            .then_some(lines)
    });
    // The history is kept on disk across the restart, so the stream holds every tick from the
    // first: the old server's, the outage's and the new server's, none lost. (Known gap: a line
    // the old server delivered just before its kill -9 can come again, because the monitor's
    // cursor and the disk history are not written together; see ARCHITECTURE.md.)
    let seen = ticks(&lines);
    for t in &outage {
        assert!(seen.contains(t), "outage line {t} missing: {seen:?}");
    }
    let mut distinct = seen.clone();
    distinct.dedup();
    for pair in distinct.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a line lost or out of order: {seen:?}"
        );
    }
    let starts = lines
        .iter()
        .filter(|l| l.contains("Starting process"))
        .count();
    assert_eq!(
        starts, 1,
        "the dyno was started once, never restarted: {lines:#?}"
    );
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("web.1: up"), "{ps}");
}

#[test]
fn a_stopped_server_leaves_dynos_running_by_default_unless_told_otherwise() {
    let mut server = Server::start();
    server.stop_dynos_on_exit = false;
    server.terminate();
    server.launch();
    let (repo, body) = deploy_ticker(&server, "calm");
    let pids = server.dyno_processes();
    assert!(!pids.is_empty());

    assert!(server.terminate().success());
    for pid in &pids {
        assert!(alive(*pid), "dyno process {pid} stopped with the server");
    }
    server.launch();
    let (status, again) = server.app_get("calm", "/");
    assert_eq!((status, again.as_str()), (200, body.as_str()));
    wait_for(30, "the ticks to flow again", || {
        (ticks(&server.log_lines(&repo)).len() > 3).then_some(())
    });
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("web.1: up"), "{ps}");
    assert_eq!(ps.matches("web.").count(), 1, "{ps}");

    // --stop-dynos-on-exit true: the dynos and their monitors end with the server.
    server.terminate();
    server.launch_with(&["--stop-dynos-on-exit", "true"]);
    assert!(server.terminate().success());
    let left: Vec<u32> = server
        .dyno_processes()
        .into_iter()
        .chain(server.monitor_processes())
        .filter(|p| alive(*p))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

/// `2026-11-23T17:10:43.123456+00:00 heroku[web.1]: ...` -> the time.
fn time_of(line: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(stamp).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn a_web_dyno_that_does_not_bind_in_the_boot_timeout_is_killed_r10() {
    let server = Server::start_with(&["--dyno-boot-timeout", "2"]);
    let repo = server.app_repo("sleepy", &[("Procfile", "web: sleep 1000\n")]);
    // web.1 never binds: R10 (within the boot timeout). Nothing served before, so as on Heroku
    // the first release is released all the same and the push is accepted.
    let pushed = server.git(&repo, &["push", "slipway", "main"]);
    assert!(pushed.status.success(), "{}", support::text(&pushed));
    let lines = server.wait_for_r10_crash(&repo, 30, "Error R10 (Boot timeout)");
    let r10 = lines
        .iter()
        .find(|l| l.contains("Error R10"))
        .expect("R10 line");
    assert!(
        r10.contains("failed to bind to $PORT within 2 seconds of launch"),
        "{r10}"
    );
    let started = lines
        .iter()
        .find(|l| l.contains("Starting process with command `sleep 1000`"))
        .expect("start line");
    let waited = time_of(r10) - time_of(started);
    assert!(
        waited >= chrono::Duration::milliseconds(1900) && waited < chrono::Duration::seconds(10),
        "R10 after {waited}"
    );
    let after = &lines[lines.iter().position(|l| l == r10).expect("r10")..];
    assert!(
        after
            .iter()
            .any(|l| l.contains("Stopping process with SIGKILL")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("State changed from starting to crashed")),
        "{after:#?}"
    );
}

#[test]
fn a_crashing_dyno_is_restarted_with_growing_delays() {
    let server = Server::start();
    let repo = deploy(
        &server,
        "crashy",
        &[("Procfile", "web: echo about to crash; exit 3\n")],
    );
    let starts = wait_for(60, "five starts of the crashing dyno", || {
        let starts: Vec<String> = server
            .log_lines(&repo)
            .into_iter()
            .filter(|l| l.contains("heroku[web.1]: Starting process"))
            .collect();
        (starts.len() >= 5).then_some(starts)
    });
    let times: Vec<_> = starts.iter().map(|l| time_of(l)).collect();
    let gaps: Vec<i64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] >= pair[0], "the delay shrank: {gaps:?} ms");
    }
    // At once, then 1 s, 2 s, 4 s.
    assert!(gaps[0] < 1000, "{gaps:?}");
    assert!(gaps[3] >= 4000, "{gaps:?}");
    let lines = server.log_lines(&repo);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("app[web.1]: about to crash")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Process exited with status 3")),
        "{lines:#?}"
    );
}

#[test]
fn an_app_that_may_sleep_idles_without_requests_and_the_next_request_wakes_it() {
    let server = Server::start();
    let (repo, _) = deploy_ticker(&server, "dozy");
    server.cli_ok(&repo, &["config:set", "SLIPWAY_SLEEP_AFTER=2"]);
    // The new release's dyno serves; from its last request on, the app is idle.
    wait_for(60, "v2 to serve", || {
        let ps = server.cli_ok(&repo, &["ps"]);
        (ps.contains("web.1: up")
            && ps.contains("v2")
            && !ps.contains("v1")
            && server.app_get("dozy", "/").0 == 200)
            .then_some(())
    });
    let last_request = chrono::Utc::now();
    let lines = wait_for(30, "the app to fall asleep", || {
        let lines = server.log_lines(&repo);
        let idling = lines
            .iter()
            .position(|l| l.contains("heroku[web.1]: Idling"))?;
        (lines[idling..]
            .iter()
            .any(|l| l.contains("heroku[web.1]: State changed from up to down"))
            && server.dyno_processes().is_empty())
        .then_some(lines)
    });
    let idling = lines
        .iter()
        .find(|l| l.contains("Idling"))
        .expect("Idling line");
    let idle = time_of(idling).with_timezone(&chrono::Utc) - last_request;
    assert!(
        idle >= chrono::Duration::milliseconds(1500),
        "slept after {idle} of idleness, not 2 s"
    );
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(!ps.contains("web.1: up"), "{ps}");

    // One request wakes it and is served once the dyno is up.
    let (status, body) = server.app_get("dozy", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("pid="), "{body}");
    let lines = server.log_lines(&repo);
    assert!(lines.iter().any(|l| l.contains("Unidling")), "{lines:#?}");
    assert!(!server.dyno_processes().is_empty());
}

#[test]
fn a_dyno_whose_monitor_dies_is_stopped_and_started_again() {
    monitor_dies("oci");
}

#[test]
fn a_process_dyno_whose_monitor_dies_is_stopped_and_started_again() {
    monitor_dies("process");
}

fn monitor_dies(runtime: &str) {
    let server = Server::start_with(&["--dyno-runtime", runtime]);
    let (repo, _) = deploy_ticker(&server, "orphaned");
    let dynos = server.dyno_processes();
    let monitors = server.monitor_processes();
    assert_eq!(monitors.len(), 1);
    std::process::Command::new("kill")
        .args(["-KILL", &monitors[0].to_string()])
        .status()
        .expect("kill");
    // (The pid the app reports is its pid inside the container: the same for every run.)
    let lines = wait_for(60, "a new dyno serving", || {
        let lines = server.log_lines(&repo);
        let starts = lines
            .iter()
            .filter(|l| l.contains("Starting process"))
            .count();
        (starts == 2 && server.app_get("orphaned", "/").0 == 200).then_some(lines)
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the dyno's monitor process died")),
        "{lines:#?}"
    );
    for pid in dynos.iter().filter(|p| !monitors.contains(p)) {
        assert!(!alive(*pid), "process {pid} of the old dyno still runs");
    }
    assert_eq!(server.monitor_processes().len(), 1);
}

/// Answers `/` with a token drawn at start and what `/etc/hostname` holds now (read on each
/// request, from the stack `/etc` the dyno's container mounts).
const ETC_READER: &str = r#"import http.server, os

BOOT = os.urandom(8).hex()

def hostname():
    try:
        return open("/etc/hostname").read().strip()
    except OSError as e:
        return f"unreadable ({type(e).__name__})"

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"boot={BOOT} hostname={hostname()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
"#;

fn serving(server: &Server, what: &str) -> String {
    wait_for(60, what, || {
        let (status, body) = server.app_get("etcetera", "/");
        (status == 200 && body.starts_with("boot=")).then_some(body)
    })
}

/// The stack `/etc` copies (`etc-<n>`) in the server's shared OCI directory.
fn etc_dirs(server: &Server) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(server.dynos_dir().join(".oci"))
        .expect("the shared OCI directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("etc-"))
        .collect();
    dirs.sort();
    dirs
}

/// A server starting again builds the stack `/etc` and must not remove the one its
/// re-adopted containers still mount (that emptied their `/etc`: DNS, certificates).
#[test]
fn a_restarted_server_keeps_the_etc_its_re_adopted_dynos_mount() {
    let mut server = Server::start_with(&["--dyno-runtime", "oci"]);
    server.stop_dynos_on_exit = false;
    server.terminate();
    server.launch();
    let repo = deploy(
        &server,
        "etcetera",
        &[
            ("Procfile", "web: exec python3 app.py\n"),
            ("app.py", ETC_READER),
        ],
    );
    let before = serving(&server, "the app to serve");
    assert!(before.ends_with(" hostname=dyno"), "{before}");
    let etc_before = etc_dirs(&server);
    assert_eq!(etc_before.len(), 1, "{etc_before:?}");

    server.kill9();
    server.launch();
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("web.1: up"), "{ps}");
    let after = serving(&server, "the re-adopted dyno to serve");
    // The same run of the dyno (re-adopted, not restarted) still reads its /etc.
    assert_eq!(after, before);
    // The host's /etc did not change: the same copy is reused, not one more made.
    assert_eq!(etc_dirs(&server), etc_before);
}
