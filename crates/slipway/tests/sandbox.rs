//! Dynos are sandboxed, probed from inside through the real binary, the router and real
//! runc: two apps whose web process is a small Python server answering questions about what
//! it can see (its uid, `/proc`, files by path), and a third whose Procfile serves
//! `../../../..` over HTTP (the trick that once served the platform's admin token).
//! Each check runs under the OCI runtime and again under the process fallback.

#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{wait_for, Server};

/// The probe: `python3 probe.py NAME` answers `/id`, `/procs`, `/read?path=`, `/list?path=`.
const PROBE: &str = r#"import http.server, json, os, sys, urllib.parse

def procs():
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        entry = {"pid": int(p)}
        for key in ("cmdline", "environ"):
            try:
                with open(f"/proc/{p}/{key}", "rb") as f:
                    entry[key] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except Exception as e:
                entry[key + "_error"] = type(e).__name__
        out.append(entry)
    return out

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:
        return {"ok": False, "error": type(e).__name__}

class Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        path = urllib.parse.parse_qs(url.query).get("path", [""])[0]
        answers = {
            "/id": lambda: {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "cwd": os.getcwd(), "name": sys.argv[1]},
            "/procs": procs,
            "/env": lambda: dict(os.environ),
            "/read": lambda: attempt(lambda: open(path, errors="replace").read(100000)),
            "/list": lambda: attempt(lambda: sorted(os.listdir(path))),
        }
        body = json.dumps(answers.get(url.path, lambda: None)()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Probe).serve_forever()
"#;

const MARKER: &str = "b-secret-4242-marker";

fn deploy(server: &Server, app: &str, files: &[(&str, &str)]) {
    let repo = server.app_repo(app, files);
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
}

fn ask(server: &Server, app: &str, path: &str) -> Value {
    let what = format!("{app} to answer {path}");
    let body = wait_for(60, &what, || {
        let (status, body) = server.app_get(app, path);
        (status == 200).then_some(body)
    });
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Files under `dir` named `name` (as root, from the host).
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(find(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

fn isolation(runtime: &str) {
    let server = Server::start_with(&["--dyno-runtime", runtime]);
    let said = server
        .stdout_lines
        .iter()
        .find(|l| l.starts_with("dyno runtime: "))
        .unwrap_or_else(|| panic!("no runtime line: {:?}", server.stdout_lines));
    assert!(
        said.starts_with(&format!("dyno runtime: {runtime} (")),
        "{said}"
    );
    let oci = runtime == "oci";

    deploy(
        &server,
        "probe-a",
        &[
            ("Procfile", "web: exec python3 probe.py a\n"),
            ("probe.py", PROBE),
        ],
    );
    deploy(
        &server,
        "probe-b",
        &[
            (
                "Procfile",
                "web: export SECRET_MARKER=$(cat marker.txt); exec python3 probe.py b\n",
            ),
            ("probe.py", PROBE),
            ("marker.txt", MARKER),
        ],
    );
    deploy(
        &server,
        "leaky",
        &[(
            "Procfile",
            "web: python3 -m http.server $PORT --directory ../../../..\n",
        )],
    );

    // Each app runs under its own unprivileged uid.
    let a = ask(&server, "probe-a", "/id");
    let b = ask(&server, "probe-b", "/id");
    let (uid_a, uid_b) = (a["uid"].as_u64(), b["uid"].as_u64());
    assert!(uid_a.is_some_and(|u| u >= 400_000), "{a}");
    assert!(uid_b.is_some_and(|u| u >= 400_000), "{b}");
    assert_ne!(uid_a, uid_b);
    assert_eq!(a["gid"], a["uid"]);
    if oci {
        assert_eq!(a["cwd"], "/app", "{a}");
    }

    // B's environment holds the marker (seen from B itself)...
    let env_b = ask(&server, "probe-b", "/env");
    assert_eq!(env_b["SECRET_MARKER"], MARKER, "{env_b}");
    // ...and nothing A can read of /proc shows it.
    let procs = ask(&server, "probe-a", "/procs");
    let procs = procs.as_array().expect("process list");
    let own = a["pid"].as_u64().expect("own pid");
    let me = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(own))
        .unwrap_or_else(|| panic!("A does not see itself: {procs:?}"));
    assert!(
        me["environ"]
            .as_str()
            .is_some_and(|e| e.contains("DYNO=web.1")),
        "A reads its own environment: {me}"
    );
    let text = serde_json::to_string(procs).expect("json");
    assert!(!text.contains(MARKER), "A sees B's environment: {text}");
    let b_visible = procs.iter().any(|p| {
        p["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("probe.py b"))
    });
    if oci {
        // Its own PID namespace: only A's processes.
        assert!(!b_visible, "A sees B's processes: {text}");
        assert!(procs.len() < 10, "{text}");
    } else {
        // Processes share /proc: B's is listed, its environment unreadable.
        assert!(b_visible, "{text}");
    }

    // Files: B's copy of its slug, the data directory, the admin token.
    let token = server.token();
    let markers = find(&server.dynos_dir(), "marker.txt");
    assert_eq!(markers.len(), 1, "{markers:?}");
    let own_file = if oci {
        "/app/probe.py".to_string()
    } else {
        format!("{}/probe.py", a["cwd"].as_str().expect("cwd"))
    };
    let read = |app: &str, path: &str| ask(&server, app, &format!("/read?path={path}"));
    assert_eq!(
        read("probe-a", &own_file)["ok"],
        true,
        "A reads its own files"
    );
    assert_eq!(read("probe-b", "marker.txt")["value"], MARKER);
    let data = server.data.display().to_string();
    for path in [
        markers[0].display().to_string(),
        format!("{data}/admin.token"),
        format!("{data}/state.db"),
    ] {
        let answer = read("probe-a", &path);
        assert_eq!(answer["ok"], false, "A read {path}: {answer}");
    }
    let listing = ask(&server, "probe-a", &format!("/list?path={data}"));
    assert_eq!(
        listing["ok"], false,
        "A lists the data directory: {listing}"
    );

    // `python -m http.server --directory ../../../..` serves nothing of the platform.
    let relative_token = server
        .data
        .join("admin.token")
        .strip_prefix(server.root.path())
        .expect("token under the root")
        .display()
        .to_string();
    let absolute_token = server.data.join("admin.token").display().to_string();
    for path in [
        format!("/{relative_token}"),
        absolute_token.clone(),
        "/data/".to_string(),
        "/data/state.db".to_string(),
    ] {
        let (status, body) = wait_for(60, "the leaky app to answer", || {
            let (status, body) = server.app_get("leaky", &path);
            // The dyno itself answers (http.server's error page), not the router.
            (status == 200 || body.contains("Error response")).then_some((status, body))
        });
        assert_eq!(status, 404, "{path} served: {body}");
        assert!(!body.contains(&token), "{path} leaked the token");
    }
}

#[test]
fn oci_dynos_cannot_see_other_apps_or_the_platform() {
    isolation("oci");
}

#[test]
fn process_dynos_cannot_read_other_apps_or_the_platform() {
    isolation("process");
}
