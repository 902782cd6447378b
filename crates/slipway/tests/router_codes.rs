//! Each H code the router emits, through the real binary with a real app (issue 12's proof
//! list; platform-semantics.md "Router"): the status the client gets and the `at=error`
//! router line. H10 and H14 are covered in `bad_input.rs` and `walking_skeleton.rs`.
//!
//! Also: oversized request headers get 431 and never reach a dyno, and a dyno that refuses
//! connections is taken out of rotation with its requests retried on another dyno (nothing of
//! them was sent), so clients see no error.
//!
//! The timeouts are Heroku's (30 s to the first byte, 55 s idle, 75 s boot wait), so the
//! slow codes (H12, H15, H20) share one test and run side by side.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{http, wait_for, Server};

/// `/` answers `boot <id>`; the other paths misbehave as their names say.
const APP: &str = r#"import http.server, os, socket, threading, time, uuid
BOOT = uuid.uuid4().hex
CONNS = set()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        CONNS.add(self.connection)
    def send(self, code, body):
        body = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/close":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif self.path == "/partial":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            self.close_connection = True
        elif self.path == "/stall":
            time.sleep(45)
            self.send(200, "late\n")
        elif self.path == "/idle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"first")
            self.wfile.flush()
            time.sleep(70)
            self.close_connection = True
        elif self.path == "/unbind":
            # Stop listening but keep running: connections to this dyno are refused. Open
            # keep-alive connections (the router's pool) are closed too.
            # Shut the listening socket down before answering, so the next request after
            # the answer cannot land in its backlog.
            SERVER.socket.shutdown(socket.SHUT_RDWR)
            threading.Thread(target=SERVER.shutdown).start()
            self.close_connection = True
            body = f"boot {BOOT}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            for c in list(CONNS):
                if c is not self.connection:
                    try:
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        else:
            self.send(200, f"boot {BOOT}\n")
    def log_message(self, *args):
        pass
SERVER = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
SERVER.daemon_threads = True
SERVER.serve_forever()
SERVER.server_close()
time.sleep(100000)
"#;

fn deploy(server: &Server, app: &str, procfile: &str) -> PathBuf {
    let repo = server.repo_with(
        &format!("{app}-src"),
        &[("Procfile", procfile), ("server.py", APP)],
    );
    server.cli_ok(&repo, &["apps:create", app]);
    repo
}

fn push_and_serve(server: &Server, repo: &Path, app: &str) {
    server.git_ok(repo, &["push", "slipway", "main"]);
    wait_for(90, &format!("{app} to serve"), || {
        (server.app_get(app, "/").0 == 200).then_some(())
    });
}

/// The app's router line for `path`, once it is written.
fn router_line(server: &Server, repo: &Path, path: &str, code: &str, secs: u64) -> String {
    wait_for(secs, &format!("the {code} router line for {path}"), || {
        let logs = server.cli_ok(repo, &["logs", "--dyno", "router", "-n", "1500"]);
        logs.lines()
            .find(|l| l.contains(&format!("path=\"{path}\"")) && l.contains(code))
            .map(str::to_string)
    })
}

/// A GET through the router on a connection of its own, reading until the router closes it
/// (or `secs` pass): the status (0 if none) and everything read.
fn raw_get(port: u16, host: &str, path: &str, secs: u64) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn h13_h18_h25_h27_h80_and_431_through_the_binary() {
    let server = Server::start();
    let repo = deploy(&server, "codes", "web: python3 server.py\n");
    push_and_serve(&server, &repo, "codes");
    let host = format!("codes.localhost:{}", server.router_port);

    // H13: the dyno closed the connection without a response.
    let (status, body) = server.app_get("codes", "/close");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Application error"), "{body}");
    let line = router_line(&server, &repo, "/close", "code=H13", 30);
    assert!(
        line.contains("at=error code=H13 desc=\"Connection closed without response\""),
        "{line}"
    );
    assert!(line.contains("status=503"), "{line}");

    // H18: the dyno closed the connection in the middle of its response.
    let (_, got) = raw_get(server.router_port, &host, "/partial", 30);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let line = router_line(&server, &repo, "/partial", "code=H18", 30);
    assert!(
        line.contains("desc=\"Server Request Interrupted\""),
        "{line}"
    );

    // H27: the client went away in the middle of the response.
    {
        let mut stream = TcpStream::connect(("127.0.0.1", server.router_port)).expect("connect");
        write!(stream, "GET /trickle HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("request");
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).expect("first bytes");
        assert!(n > 0);
    }
    let line = router_line(&server, &repo, "/trickle", "code=H27", 60);
    assert!(
        line.contains("desc=\"Client Request Interrupted\"") && line.contains("status=499"),
        "{line}"
    );

    // H25: two Host headers name two apps; the request is refused (400).
    let (status, _, body) = http(
        server.router_port,
        "GET",
        "/twohosts",
        &[("Host", "codes.localhost"), ("Host", "codes.localhost:1")],
        None,
    );
    assert_eq!(status, 400, "{body}");
    let line = router_line(&server, &repo, "/twohosts", "code=H25", 30);
    assert!(line.contains("status=400"), "{line}");

    // 431: headers over 32 KiB never reach the dyno.
    let big = "x".repeat(40 * 1024);
    let (status, _, _) = http(
        server.router_port,
        "GET",
        "/big",
        &[("Host", &host), ("X-Big", &big)],
        None,
    );
    assert_eq!(status, 431);
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("X-Field-{i}"), "v".to_string()))
        .collect();
    let mut headers: Vec<(&str, &str)> = vec![("Host", &host)];
    headers.extend(many.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (status, _, _) = http(server.router_port, "GET", "/many", &headers, None);
    assert_eq!(status, 431);
    let logs = server.cli_ok(&repo, &["logs", "-n", "1500"]);
    assert!(
        !logs.contains("path=\"/big\"") && !logs.contains("path=\"/many\""),
        "oversized requests must not reach the app: {logs}"
    );

    // H80: maintenance mode answers the maintenance page without touching the dyno.
    server.cli_ok(&repo, &["maintenance:on", "-a", "codes"]);
    let (status, body) = server.app_get("codes", "/maint");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Offline for Maintenance"), "{body}");
    let line = router_line(&server, &repo, "/maint", "code=H80", 30);
    assert!(line.contains("desc=\"Maintenance mode\""), "{line}");
    server.cli_ok(&repo, &["maintenance:off", "-a", "codes"]);
    assert_eq!(server.app_get("codes", "/").0, 200);
}

#[test]
fn a_dyno_refusing_connections_is_skipped_and_its_requests_retried_on_another() {
    let server = Server::start_logged(&[]);
    let repo = deploy(&server, "refuse", "web: python3 server.py\n");
    push_and_serve(&server, &repo, "refuse");
    server.cli_ok(&repo, &["ps:scale", "web=2", "-a", "refuse"]);
    let mut boots = std::collections::BTreeSet::new();
    wait_for(90, "both dynos serving", || {
        let (status, body) = server.app_get("refuse", "/");
        if status == 200 {
            boots.insert(body);
        }
        (boots.len() == 2).then_some(())
    });

    // One dyno stops listening but keeps running: connecting to it is refused.
    let (status, gone) = server.app_get("refuse", "/unbind");
    assert_eq!(status, 200, "{gone}");
    // Every request is served by the other dyno: none fails, none reaches the closed one.
    for i in 0..20 {
        let (status, body) = server.app_get("refuse", &format!("/after/{i}"));
        if status != 200 {
            eprintln!("{}", server.cli_ok(&repo, &["logs", "-n", "1500"]));
            eprintln!("{}", server.server_log());
        }
        assert_eq!(status, 200, "request {i}: {body}");
        assert_ne!(
            body, gone,
            "request {i} reached the dyno that stopped listening"
        );
    }
    let log = server.server_log();
    assert!(
        log.contains("dyno refused the connection: out of rotation"),
        "{log}"
    );
    let logs = server.cli_ok(&repo, &["logs", "--dyno", "router", "-n", "1500"]);
    assert!(!logs.contains("at=error"), "{logs}");
}

#[test]
fn h12_h15_and_h20_after_herokus_timeouts() {
    let server = Server::start();
    let repo = deploy(&server, "slow", "web: python3 server.py\n");
    push_and_serve(&server, &repo, "slow");
    // An app whose web dyno takes 100 s to bind (its boot timeout allows it): requests wait
    // for it the router's 75 s, then H20.
    let late = deploy(&server, "late", "web: sleep 100 && python3 server.py\n");
    server.cli_ok(
        &late,
        &["config:set", "SLIPWAY_BOOT_TIMEOUT=300", "-a", "late"],
    );
    // The push waits for the dyno to come up; the requests go out while it is starting.
    let mut pushing = server.git_spawn(&late, &["push", "slipway", "main"]);
    wait_for(90, "late's web.1 to be starting", || {
        let ps = server.cli_ok(&late, &["ps", "-a", "late"]);
        ps.lines()
            .any(|l| l.starts_with("web.1") && l.contains("starting"))
            .then_some(())
    });

    let port = server.router_port;
    let slow_host = format!("slow.localhost:{port}");
    let late_host = format!("late.localhost:{port}");
    let (h12, h15, h20) = std::thread::scope(|s| {
        let h12 = s.spawn(|| raw_get(port, &slow_host, "/stall", 90));
        let h15 = s.spawn(|| raw_get(port, &slow_host, "/idle", 120));
        let h20 = s.spawn(|| raw_get(port, &late_host, "/waiting", 120));
        (
            h12.join().expect("h12"),
            h15.join().expect("h15"),
            h20.join().expect("h20"),
        )
    });

    let _ = pushing.kill();
    let _ = pushing.wait();

    // H12: nothing within 30 s: 503 and the error page.
    assert_eq!(h12.0, 503, "{}", h12.1);
    let line = router_line(&server, &repo, "/stall", "code=H12", 30);
    assert!(line.contains("desc=\"Request timeout\""), "{line}");
    // H15: the first bytes came, then 55 s of nothing: the response is cut.
    assert_eq!(h15.0, 200, "{}", h15.1);
    assert!(h15.1.ends_with("first"), "{}", h15.1);
    let line = router_line(&server, &repo, "/idle", "code=H15", 30);
    assert!(line.contains("desc=\"Idle connection\""), "{line}");
    // H20: no dyno came up in the router's boot wait.
    assert_eq!(h20.0, 503, "{}", h20.1);
    let line = router_line(&server, &late, "/waiting", "code=H20", 30);
    assert!(line.contains("desc=\"App boot timeout\""), "{line}");
}
