//! Logs through the real binary: an app whose web dynos print numbered lines; ordering across
//! two dynos, each filter, history across a server restart and a redeploy, a tail that
//! survives a redeploy, a scale change and a server restart, and drains to real receivers on
//! loopback (syslog over TCP, HTTP) beside one that accepts and never reads.

#[allow(unused_imports)]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use slipway_logs::drain::parse_frames;
use support::{wait_for, Server, BIN};

/// A web dyno that serves `PORT` and prints `<DYNO> tick N` every 20 ms; at start one line
/// with invalid UTF-8 and one of 15,000 bytes; `BURST` lines of 1,000 bytes at once if set.
const APP: &str = r#"import http.server, os, sys, threading, time

dyno = os.environ.get("DYNO", "?")
out = sys.stdout.buffer

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

threading.Thread(target=http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever, daemon=True).start()
out.write(b"bad \xff byte from " + dyno.encode() + b"\n")
out.write(b"L" * 15000 + b"\n")
out.flush()
for i in range(int(os.environ.get("BURST", "0"))):
    out.write(("%s burst %d " % (dyno, i)).encode() + b"b" * 1000 + b"\n")
out.flush()
n = 0
while True:
    out.write(("%s tick %d %s\n" % (dyno, n, os.environ.get("VERSION", "v1"))).encode())
    out.flush()
    n += 1
    time.sleep(0.02)
"#;

fn deploy(server: &Server, app: &str) -> std::path::PathBuf {
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", app]);
    let repo = server.repo_with(
        &format!("{app}-src"),
        &[("Procfile", "web: python3 -u app.py\n"), ("app.py", APP)],
    );
    server.cli_ok(&repo, &["git:remote", "-a", app]);
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    repo
}

/// `logs --json` as parsed lines.
fn json_logs(server: &Server, repo: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["logs", "--json"];
    args.extend_from_slice(extra);
    server
        .cli_ok(repo, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or("")
}

/// Waits until the history holds a line whose message contains `needle`.
fn wait_line(server: &Server, repo: &Path, needle: &str) -> Vec<Value> {
    wait_for(60, needle, || {
        let lines = json_logs(server, repo, &["-n", "1500"]);
        lines
            .iter()
            .any(|l| field(l, "message").contains(needle))
            .then_some(lines)
    })
}

/// Each dyno's tick numbers, in the order they appear.
fn ticks(lines: &[Value]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for l in lines {
        let msg = field(l, "message");
        let mut parts = msg.split(' ');
        if let (Some(dyno), Some("tick"), Some(n)) = (parts.next(), parts.next(), parts.next()) {
            if let Ok(n) = n.parse() {
                out.entry(dyno.to_string()).or_default().push(n);
            }
        }
    }
    out
}

fn assert_increasing(name: &str, seq: &[u64]) {
    for w in seq.windows(2) {
        assert!(w[1] > w[0], "{name} out of order: {} then {}", w[0], w[1]);
    }
}

#[test]
fn ordering_filters_and_history_across_restart_and_redeploy() {
    let mut server = Server::start();
    let repo = deploy(&server, "ticker");
    server.cli_ok(&repo, &["ps:scale", "web=2"]);
    wait_line(&server, &repo, "web.2 tick 60");

    // One stream, ordered: consecutive sequence numbers, time never going back, and each
    // dyno's own lines in the order it wrote them.
    let all = json_logs(&server, &repo, &["-n", "1500"]);
    assert!(all.len() > 100, "only {} lines", all.len());
    let seqs: Vec<u64> = all.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), all.len(), "every line has a seq");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap or repeat in the history");
    }
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = all
        .iter()
        .map(|l| chrono::DateTime::parse_from_rfc3339(field(l, "time")).expect("time"))
        .collect();
    for w in times.windows(2) {
        assert!(w[1] >= w[0], "time went back: {} then {}", w[0], w[1]);
    }
    assert!(all
        .iter()
        .all(|l| field(l, "time").len() == "2013-02-11T15:19:10.123456+00:00".len()));
    let by_dyno = ticks(&all);
    for dyno in ["web.1", "web.2"] {
        let t = by_dyno
            .get(dyno)
            .unwrap_or_else(|| panic!("no ticks from {dyno}"));
        assert!(t.len() > 5, "{dyno}: {t:?}");
        assert_increasing(dyno, t);
    }
    // Invalid UTF-8 is shown, a 15,000-byte line is split at 10,000 bytes.
    assert!(all
        .iter()
        .any(|l| field(l, "message") == "bad \u{fffd} byte from web.1"));
    let long: Vec<usize> = all
        .iter()
        .filter(|l| field(l, "dyno") == "web.1" && field(l, "message").starts_with("LLLL"))
        .map(|l| field(l, "message").len())
        .collect();
    assert_eq!(long, [10_000, 5_000]);

    // Filters.
    let web2 = json_logs(&server, &repo, &["-n", "200", "--ps", "web.2"]);
    assert!(!web2.is_empty());
    assert!(web2.iter().all(|l| field(l, "dyno") == "web.2"), "{web2:?}");
    let heroku = json_logs(&server, &repo, &["-n", "200", "--source", "heroku"]);
    assert!(heroku
        .iter()
        .any(|l| field(l, "message").contains("State changed")));
    assert!(heroku.iter().all(|l| field(l, "source") == "heroku"));
    let app_only = json_logs(&server, &repo, &["-n", "200", "--source", "app"]);
    assert!(!app_only.is_empty());
    assert!(app_only.iter().all(|l| field(l, "source") == "app"));
    let five = json_logs(&server, &repo, &["-n", "5"]);
    assert_eq!(five.len(), 5);
    let text = server.cli_ok(&repo, &["logs", "-n", "3", "--ps", "web"]);
    assert_eq!(text.lines().count(), 3);
    assert!(text.lines().all(|l| l.contains(" app[web.")), "{text}");
    let refused = server.cli(&repo, &["logs", "-n", "1501"]);
    assert!(!refused.status.success());

    // History survives a server restart: every line from before is still there.
    let before = json_logs(&server, &repo, &["-n", "1500"]);
    server.terminate();
    server.launch();
    let after = wait_line(&server, &repo, "web.1 tick 5 v1");
    let after_by_seq: HashMap<u64, &Value> = after
        .iter()
        .filter_map(|l| l["seq"].as_u64().map(|s| (s, l)))
        .collect();
    let last_before = before.last().expect("lines before");
    let kept = after_by_seq
        .get(&last_before["seq"].as_u64().expect("seq"))
        .unwrap_or_else(|| panic!("{last_before} lost in the restart"));
    assert_eq!(kept["message"], last_before["message"]);
    let after_seqs: Vec<u64> = after.iter().filter_map(|l| l["seq"].as_u64()).collect();
    for w in after_seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap or repeat across the restart");
    }

    // And a redeploy (the restarted server listens on a new port: point git at it).
    server.cli_ok(&repo, &["git:remote", "-a", "ticker"]);
    std::fs::write(
        repo.join("Procfile"),
        "web: env VERSION=v2 python3 -u app.py\n",
    )
    .expect("Procfile");
    server.commit_all(&repo, "v2");
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v2"), "{pushed}");
    let after_deploy = wait_line(&server, &repo, "tick 5 v2");
    assert!(
        after_deploy
            .iter()
            .any(|l| l["seq"] == last_before["seq"] && l["message"] == last_before["message"]),
        "history from before the restart and the redeploy is gone"
    );

    // Destroying the app deletes its history on disk.
    let app_id = api_json(&server, "GET", "/apps/ticker").1["id"]
        .as_str()
        .expect("app id")
        .to_string();
    assert!(server.data.join("logs").join(&app_id).exists());
    server.cli_ok(
        &repo,
        &["apps:destroy", "-a", "ticker", "--confirm", "ticker"],
    );
    assert!(!server.data.join("logs").join(&app_id).exists());
}

/// The CLI with its stdout and stderr piped (a tail).
fn spawn_tail(server: &Server, dir: &Path) -> Child {
    let mut cmd = Command::new(BIN);
    for var in ["SLIPWAY_API_URL", "SLIPWAY_API_TOKEN", "SLIPWAY_APP"] {
        cmd.env_remove(var);
    }
    cmd.args(["logs", "--tail", "--json", "-n", "1"])
        .current_dir(dir)
        .env("HOME", &server.home)
        .env("XDG_CONFIG_HOME", server.home.join(".config"))
        .env("XDG_DATA_HOME", server.home.join(".local/share"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("SLIPWAY_DATA_DIR", &server.data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start the tail")
}

fn collect_lines(out: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

fn seen(lines: &Arc<Mutex<Vec<String>>>, needle: &str) -> bool {
    lines
        .lock()
        .expect("lines")
        .iter()
        .any(|l| l.contains(needle))
}

#[test]
fn a_tail_survives_a_redeploy_a_scale_change_and_a_server_restart() {
    let mut server = Server::start();
    let repo = deploy(&server, "tailed");
    wait_line(&server, &repo, "web.1 tick 3");
    let mut tail = spawn_tail(&server, &repo);
    let out = collect_lines(tail.stdout.take().expect("stdout"));
    let err = collect_lines(tail.stderr.take().expect("stderr"));
    wait_for(30, "the tail to stream", || {
        seen(&out, "web.1 tick").then_some(())
    });

    // A redeploy.
    std::fs::write(
        repo.join("Procfile"),
        "web: env VERSION=v2 python3 -u app.py\n",
    )
    .expect("Procfile");
    server.commit_all(&repo, "v2");
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(60, "the tail to show the new release", || {
        seen(&out, "tick 3 v2").then_some(())
    });
    // A scale change.
    server.cli_ok(&repo, &["ps:scale", "web=2"]);
    wait_for(60, "the tail to show web.2", || {
        seen(&out, "web.2 tick 3 v2").then_some(())
    });
    // A server restart: the tail reconnects on its own and says so.
    server.terminate();
    server.launch();
    wait_for(60, "the tail to reconnect", || {
        seen(&err, "reconnected").then_some(())
    });
    let marker_count = out.lock().expect("lines").len();
    // The dynos go on (re-adopted by the new server, or started again): their lines keep coming.
    wait_for(60, "lines from web.2 after the server restart", || {
        let lines = out.lock().expect("lines");
        lines[marker_count..]
            .iter()
            .any(|l| l.contains("web.2 tick") && l.contains(" v2"))
            .then_some(())
    });
    // Ctrl-C ends it cleanly.
    let pid = tail.id().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    let status = wait_for(20, "the tail to exit", || tail.try_wait().expect("wait"));
    assert!(status.success(), "the tail exited with {status}");
    let stderr = err.lock().expect("stderr").join("\n");
    assert!(stderr.contains("reconnecting"), "{stderr}");

    // No line repeated or missing: the tail's sequence numbers run without a gap, and each
    // line is the history's line with that number.
    let got: Vec<Value> = out
        .lock()
        .expect("lines")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let numbered: Vec<&Value> = got.iter().filter(|l| l["seq"].is_u64()).collect();
    assert!(numbered.len() > 50, "only {} lines", numbered.len());
    for w in numbered.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64(),
            w[0]["seq"].as_u64().map(|s| s + 1),
            "a gap or repeat in the tail between {} and {}",
            w[0],
            w[1]
        );
    }
    let history = json_logs(&server, &repo, &["-n", "1500"]);
    let by_seq: HashMap<u64, &Value> = history
        .iter()
        .filter_map(|l| l["seq"].as_u64().map(|s| (s, l)))
        .collect();
    let mut compared = 0;
    for line in &numbered {
        if let Some(h) = by_seq.get(&line["seq"].as_u64().expect("seq")) {
            assert_eq!(h["message"], line["message"]);
            compared += 1;
        }
    }
    assert!(
        compared > 50,
        "only {compared} lines compared with the history"
    );
    // The shutdown's own lines (said after the tail was cut) reached it after the reconnect.
    assert!(
        got.iter()
            .any(|l| field(l, "message").contains("Stopping all processes with SIGTERM")),
        "the tail missed the lines from the server's shutdown"
    );
}

type Frames = Arc<Mutex<Vec<String>>>;

/// A syslog receiver: a TCP listener whose connections' octet-counted frames are collected.
fn syslog_receiver() -> (SocketAddr, Frames) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frames: Frames = Arc::default();
    let sink = frames.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let (got, used) = parse_frames(&buf).expect("octet-counted frames");
                    buf.drain(..used);
                    sink.lock().expect("frames").extend(got);
                }
            });
        }
    });
    (addr, frames)
}

/// An HTTP receiver: each POST's headers (lowercased) and frames.
type Posts = Arc<Mutex<Vec<(HashMap<String, String>, Vec<String>)>>>;

fn http_receiver() -> (SocketAddr, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts: Posts = Arc::default();
    let sink = posts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let sink = sink.clone();
            std::thread::spawn(move || serve_posts(stream, sink));
        }
    });
    (addr, posts)
}

fn serve_posts(stream: TcpStream, sink: Posts) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST "), "{line}");
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (frames, used) = parse_frames(&body).expect("octet-counted body");
        assert_eq!(used, body.len());
        sink.lock().expect("posts").push((headers, frames));
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// `N` in the app lines `web.1 tick N ...` among syslog frames.
fn frame_ticks(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| f.split_once(" - web.1 tick "))
        .filter_map(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn drains_receive_the_apps_lines_and_a_stalled_one_blocks_nothing() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    let (syslog_addr, syslog_frames) = syslog_receiver();
    let (http_addr, posts) = http_receiver();
    // Accepts and never reads.
    let stalled = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stalled_addr = stalled.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in stalled.incoming().flatten() {
            keep.lock().expect("held").push(s);
        }
    });

    server.cli_ok(&root, &["apps:create", "drained"]);
    let syslog_url = format!("syslog://{syslog_addr}");
    let http_url = format!("http://{http_addr}/logs");
    let stalled_url = format!("syslog://{stalled_addr}");
    for url in [&syslog_url, &http_url, &stalled_url] {
        let added = server.cli_ok(&root, &["drains:add", "-a", "drained", url]);
        assert!(added.contains("Successfully added drain"), "{added}");
    }
    let listed = server.cli_ok(&root, &["drains", "-a", "drained"]);
    for url in [&syslog_url, &http_url, &stalled_url] {
        assert!(listed.contains(url.as_str()), "{listed}");
    }
    let bad = server.cli(&root, &["drains:add", "-a", "drained", "ftp://x:1"]);
    assert!(!bad.status.success());
    let dup = server.cli(&root, &["drains:add", "-a", "drained", &syslog_url]);
    assert!(!dup.status.success());

    // A burst of 20,000 lines of 1 kB fills the stalled drain's socket and queue.
    let repo = server.repo_with(
        "drained-src",
        &[
            ("Procfile", "web: env BURST=20000 python3 -u app.py\n"),
            ("app.py", APP),
        ],
    );
    server.cli_ok(&repo, &["git:remote", "-a", "drained"]);
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");

    // The app is not held up: its ticks after the burst show in the logs, and the overflow
    // is said there.
    let lines = wait_line(&server, &repo, "web.1 tick 50 ");
    let l10 = wait_for(30, "the L10 line", || {
        json_logs(&server, &repo, &["-n", "1500", "--ps", "logplex"])
            .into_iter()
            .find(|l| field(l, "message").starts_with("Error L10 (output buffer overflow): "))
    });
    assert_eq!(field(&l10, "source"), "heroku");
    assert!(field(&l10, "message").contains(" messages dropped since "));
    assert!(!lines.is_empty());

    // The other drains keep receiving, in order, with Logplex's framing.
    let frames = wait_for(60, "tick 50 at the syslog drain", || {
        let f = syslog_frames.lock().expect("frames").clone();
        frame_ticks(&f).contains(&50).then_some(f)
    });
    let t = frame_ticks(&frames);
    assert_increasing("syslog drain ticks", &t);
    let sample = frames
        .iter()
        .find(|f| f.contains(" - web.1 tick "))
        .expect("a tick frame");
    let parts: Vec<&str> = sample.splitn(7, ' ').collect();
    assert_eq!(parts[0], "<190>1", "{sample}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(parts[1]).is_ok(),
        "{sample}"
    );
    assert_eq!(&parts[2..6], ["drained", "app", "web.1", "-"], "{sample}");
    assert!(frames
        .iter()
        .any(|f| f.contains(" drained heroku web.1 - State changed")));

    let got = wait_for(60, "tick 50 at the HTTP drain", || {
        let p = posts.lock().expect("posts").clone();
        let all: Vec<String> = p.iter().flat_map(|(_, f)| f.clone()).collect();
        frame_ticks(&all).contains(&50).then_some(p)
    });
    let drains = api_json(&server, "GET", "/apps/drained/log-drains").1;
    let http_token = drains
        .as_array()
        .expect("drains")
        .iter()
        .find(|d| d["url"] == http_url.as_str())
        .and_then(|d| d["token"].as_str())
        .expect("the HTTP drain's token")
        .to_string();
    for (headers, frames) in &got {
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/logplex-1")
        );
        assert_eq!(
            headers.get("logplex-msg-count"),
            Some(&frames.len().to_string())
        );
        assert!(headers.contains_key("logplex-frame-id"));
        assert_eq!(headers.get("logplex-drain-token"), Some(&http_token));
    }
    let all: Vec<String> = got.iter().flat_map(|(_, f)| f.clone()).collect();
    assert_increasing("HTTP drain ticks", &frame_ticks(&all));

    // Removing drains, by URL and by id.
    let removed = server.cli_ok(&root, &["drains:remove", "-a", "drained", &stalled_url]);
    assert!(removed.contains("Successfully removed drain"), "{removed}");
    let id = drains
        .as_array()
        .expect("drains")
        .iter()
        .find(|d| d["url"] == syslog_url.as_str())
        .and_then(|d| d["id"].as_str())
        .expect("id")
        .to_string();
    let (status, _) = api_json(&server, "DELETE", &format!("/apps/drained/log-drains/{id}"));
    assert_eq!(status, 200);
    let listed = server.cli_ok(&root, &["drains", "-a", "drained"]);
    assert!(
        !listed.contains(&stalled_url) && !listed.contains(&syslog_url),
        "{listed}"
    );
    assert!(listed.contains(&http_url), "{listed}");
    let gone = server.cli(&root, &["drains:remove", "-a", "drained", &stalled_url]);
    assert!(!gone.status.success());
}

fn api_json(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let (status, _, body) = server.api(method, path, None);
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// Web dynos that serve `PORT` and write lines without pause, faster than a debug server can
/// read them.
const FLOOD_APP: &str = r#"import http.server, os, sys, threading, time

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

threading.Thread(target=http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever, daemon=True).start()
dyno = os.environ.get("DYNO", "?").encode()
out = sys.stdout.buffer
n = 0
while True:
    out.write(b"".join(b"%s flood %d %s\n" % (dyno, n + i, b"x" * 40) for i in range(200)))
    n += 200
"#;

#[test]
fn flooding_dynos_never_starve_the_control_plane() {
    // Each dyno's output is read on the server from its monitor's log; a reader that never
    // caught up with its dyno once held a control-plane thread for ever, and with as many
    // flooding dynos as threads no push, config change or shutdown was served again.
    let server = Server::start();
    let repo = server.app_repo(
        "flood",
        &[
            ("Procfile", "web: python3 -u app.py\n"),
            ("app.py", FLOOD_APP),
        ],
    );
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    server.cli_ok(&repo, &["ps:scale", "web=4"]);
    wait_for(120, "four flooding web dynos up", || {
        let ps: Value = serde_json::from_str(&server.cli_ok(&repo, &["ps", "--json"])).ok()?;
        let up = ps.as_array()?.iter().filter(|d| d["state"] == "up").count();
        (up == 4).then_some(())
    });
    wait_line(&server, &repo, "web.4 flood");

    // Every dyno floods now. A config change (a new release, rolled out) and a read of the
    // app must still be served; a starved server never answers them.
    let mut change = server.cli_spawn(&repo, &["config:set", "CALM=no"]);
    let status = wait_for(180, "config:set to finish while four dynos flood", || {
        change.try_wait().expect("poll config:set")
    });
    assert!(status.success(), "config:set failed: {status}");
    let info = server.cli_ok(&repo, &["config:get", "CALM"]);
    assert_eq!(info.trim(), "no");
    server.cli_ok(&repo, &["ps:scale", "web=0"]);
}
