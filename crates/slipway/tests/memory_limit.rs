//! R15 through the real binary and real runc: a web dyno that allocates past its size's memory
//! limit (standard-1X: 512 MB quota, the kernel kills at twice it) is killed by the kernel,
//! the app's log says `Error R15 (Memory quota vastly exceeded)` (platform-semantics.md), and
//! the dyno restarts: a new run of it serves. Every wait is for an event (a log line, a new run
//! answering), never a fixed sleep.

mod support;

use support::{runc_unavailable, wait_for, Server};

/// Answers `/` with a token it drew at start (`boot=...`: each run of the dyno has its own;
/// pids do not tell runs apart, the container's process is pid 1 each time); `/hog` starts a thread that allocates (and writes to) 64 MiB at a
/// time until the kernel kills the process.
const HOG: &str = r#"import http.server, os, threading

BOOT = os.urandom(8).hex()

def hog():
    held = []
    while True:
        held.append(b"x" * (64 << 20))

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hog":
            print("allocating past the limit", flush=True)
            threading.Thread(target=hog, daemon=True).start()
        body = f"boot={BOOT}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("serving", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
"#;

fn boot_serving(server: &Server, app: &str) -> String {
    wait_for(90, &format!("{app} to serve"), || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.starts_with("boot=")).then_some(body)
    })
}

#[test]
fn oci_a_web_dyno_past_its_memory_limit_is_r15_and_restarts() {
    if let Some(reason) = runc_unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let server = Server::start_with(&["--dyno-runtime", "oci"]);
    let app = "hungry";
    let repo = server.app_repo(
        app,
        &[("Procfile", "web: exec python3 hog.py\n"), ("hog.py", HOG)],
    );
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("standard-1X"), "the smallest size: {ps}");

    let before = boot_serving(&server, app);
    let (status, body) = server.app_get(app, "/hog");
    assert_eq!((status, body.as_str()), (200, before.as_str()));

    let lines = server.wait_for_log_in_order(
        &repo,
        120,
        "R15 and the restart in the log",
        "heroku[web.1]: Error R15 (Memory quota vastly exceeded)",
        "heroku[web.1]: State changed from starting to up",
    );
    let r15 = lines
        .iter()
        .position(|l| l.contains("Error R15 (Memory quota vastly exceeded)"))
        .expect("R15");
    let after_r15 = &lines[r15..];
    for needle in [
        "heroku[web.1]: Process exited with status 137",
        "heroku[web.1]: State changed from up to crashed",
        "heroku[web.1]: State changed from crashed to starting",
    ] {
        assert!(
            after_r15.iter().any(|l| l.contains(needle)),
            "no {needle:?} after the R15: {lines:#?}"
        );
    }
    assert!(
        lines[..r15]
            .iter()
            .any(|l| l.contains("app[web.1]: allocating past the limit")),
        "{lines:#?}"
    );

    // A new run serves (the restarted dyno), and it is up in `ps`.
    let after = wait_for(90, "a new run of the dyno to serve", || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.starts_with("boot=") && body != before).then_some(body)
    });
    assert_ne!(after, before);
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(ps.contains("web.1: up"), "{ps}");
}
