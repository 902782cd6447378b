//! Dyno resources through the real binary (runc by default, and the plain-process fallback):
//! Heroku's `log-runtime-metrics` lines (opt-in with `labs:enable`), memory and CPU per dyno in
//! `ps --json` and `ps`, the per-app boot timeout (`SLIPWAY_BOOT_TIMEOUT`, checked at
//! `config:set`), and a process type's dyno size applied to its dynos (read from inside one).
//! Every wait is for an event (a log line, a field in the API), never a fixed sleep.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{text, wait_for, Server};

const MIB: u64 = 1024 * 1024;

/// A web app holding 40 MiB it has written to (so it is resident), answering `/` with `ok`
/// and `/cgroup?file=PATH` with the file under `/sys/fs/cgroup` it sees (inside the dyno).
const HOLDER: &str = r#"import http.server, os, urllib.parse

held = bytearray(os.urandom(1024)) * (40 * 1024)

def cgroup_file(name):
    path = os.path.normpath(os.path.join("/sys/fs/cgroup", name))
    if not path.startswith("/sys/fs/cgroup/"):
        return "refused"
    try:
        return open(path).read().strip()
    except OSError as e:
        return f"unreadable: {e}"

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/cgroup":
            name = urllib.parse.parse_qs(url.query).get("file", [""])[0]
            body = cgroup_file(name).encode()
        else:
            body = f"ok {len(held)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
"#;

fn deploy(server: &Server, app: &str, files: &[(&str, &str)], config: &[&str]) -> PathBuf {
    let repo = server.app_repo(app, files);
    if !config.is_empty() {
        let mut args = vec!["config:set"];
        args.extend_from_slice(config);
        server.cli_ok(&repo, &args);
    }
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v"), "{pushed}");
    repo
}

fn deploy_holder(server: &Server, app: &str) -> PathBuf {
    let repo = deploy(
        server,
        app,
        &[("Procfile", "web: python3 -u app.py\n"), ("app.py", HOLDER)],
        &[],
    );
    wait_for(60, "the app to serve", || {
        let (status, body) = server.app_get(app, "/");
        (status == 200 && body.starts_with("ok")).then_some(())
    });
    repo
}

fn ps_json(server: &Server, repo: &Path) -> Vec<Value> {
    let out = server.cli_ok(repo, &["ps", "--json"]);
    match serde_json::from_str(&out) {
        Ok(Value::Array(list)) => list,
        other => panic!("ps --json: {other:?}: {out}"),
    }
}

/// `web.1` in `ps --json` once it is up and `ready` holds for it.
fn web1_when(server: &Server, repo: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for(60, what, || {
        ps_json(server, repo)
            .into_iter()
            .find(|d| d["name"] == "web.1" && d["state"] == "up" && ready(d))
    })
}

/// `sample#NAME=VALUE` of a metrics line.
fn sample<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("sample#{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
}

fn megabytes(line: &str, name: &str) -> f64 {
    let v = sample(line, name).unwrap_or_else(|| panic!("no {name}: {line}"));
    v.strip_suffix("MB")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}={v} is not N.NNMB: {line}"))
}

fn app_id(server: &Server, app: &str) -> String {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}"), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("app json");
    v["id"].as_str().expect("app id").to_string()
}

fn cgroup_v1() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.stat").exists()
}

#[test]
fn runtime_metrics_are_logged_once_enabled_and_ps_shows_memory() {
    runtime_metrics("oci");
}

#[test]
fn runtime_metrics_of_process_dynos_come_from_proc() {
    runtime_metrics("process");
}

fn runtime_metrics(runtime: &str) {
    let server = Server::start_with(&["--dyno-runtime", runtime, "--dyno-metrics-interval", "1"]);
    let app = format!("metered-{runtime}");
    let repo = deploy_holder(&server, &app);

    // Measured whether or not the app logs metrics: `ps --json` has the figures.
    let before = web1_when(&server, &repo, "web.1's memory in ps --json", |d| {
        d["memory_total_bytes"].is_u64()
    });
    assert_eq!(before["memory_quota_bytes"], 512 * MIB, "{before:#}");
    let total = before["memory_total_bytes"].as_u64().expect("measured");
    assert!(
        (40 * MIB..512 * MIB).contains(&total),
        "{total} bytes: {before:#}"
    );
    assert!(
        before["memory_rss_bytes"].as_u64().expect("rss") >= 40 * MIB,
        "{before:#}"
    );
    assert!(before["sampled_at"].is_string(), "{before:#}");
    // The first sample has been taken (sampled_at is set), and metrics are off: no line.
    let quiet = server.log_lines(&repo);
    assert!(
        !quiet.iter().any(|l| l.contains("sample#")),
        "metrics logged before they were enabled: {quiet:#?}"
    );
    // The plain listing shows it too.
    let ps = server.cli_ok(&repo, &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("web.1: up") && l.contains("MB / 512 MB")),
        "{ps}"
    );

    let labs = server.cli_ok(&repo, &["labs"]);
    assert!(labs.contains("[ ] log-runtime-metrics"), "{labs}");
    server.cli_ok(&repo, &["labs:enable", "log-runtime-metrics"]);
    let labs = server.cli_ok(&repo, &["labs"]);
    assert!(labs.contains("[+] log-runtime-metrics"), "{labs}");
    let config = server.cli_ok(&repo, &["config:get", "SLIPWAY_LOG_RUNTIME_METRICS"]);
    assert_eq!(config.trim(), "1");
    let (status, _, body) = server.api(
        "GET",
        &format!("/apps/{app}/features/log-runtime-metrics"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let feature: Value = serde_json::from_str(&body).expect("feature json");
    assert_eq!(feature["enabled"], true, "{feature:#}");

    // The restarted dyno logs both lines every second; wait for a load line after a memory
    // line (the load needs two samples).
    let lines = server.wait_for_log_in_order(
        &repo,
        60,
        "memory and load sample lines",
        "sample#memory_total=",
        "sample#load_avg_1m=",
    );
    let memory = lines
        .iter()
        .find(|l| l.contains("sample#memory_total="))
        .expect("memory line");
    let load = lines
        .iter()
        .find(|l| l.contains("sample#load_avg_1m="))
        .expect("load line");
    let web1 = web1_when(&server, &repo, "the restarted web.1", |d| {
        d["release"]["version"].as_i64() >= Some(2)
    });
    let prefix = format!(
        "heroku[web.1]: source=web.1 dyno=heroku.{}.{} sample#",
        app_id(&server, &app),
        web1["id"].as_str().expect("dyno id")
    );
    for line in [memory, load] {
        assert!(line.contains(&prefix), "{line}\nwanted {prefix}");
    }
    assert_eq!(megabytes(memory, "memory_quota"), 512.0, "{memory}");
    let total = megabytes(memory, "memory_total");
    assert!((40.0..512.0).contains(&total), "{memory}");
    assert!(megabytes(memory, "memory_rss") >= 40.0, "{memory}");
    for field in ["memory_cache", "memory_swap"] {
        assert!(megabytes(memory, field) >= 0.0, "{memory}");
    }
    let pages = ["memory_pgpgin", "memory_pgpgout"].map(|f| sample(memory, f));
    if runtime == "oci" && cgroup_v1() {
        for p in pages {
            let p = p.unwrap_or_else(|| panic!("pgpgin/pgpgout missing: {memory}"));
            assert!(
                p.strip_suffix("pages")
                    .is_some_and(|n| n.parse::<u64>().is_ok()),
                "{memory}"
            );
        }
    } else {
        assert_eq!(pages, [None, None], "not counted per dyno here: {memory}");
    }
    for field in ["load_avg_1m", "load_avg_5m", "load_avg_15m"] {
        let v: f64 = sample(load, field)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field}: {load}"));
        assert!((0.0..64.0).contains(&v), "{load}");
    }
    let web1 = web1_when(&server, &repo, "web.1's CPU time and load", |d| {
        d["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0) && d["load_avg_1m"].is_f64()
    });
    assert!(
        web1["memory_total_bytes"].as_u64() >= Some(40 * MIB),
        "{web1:#}"
    );

    server.cli_ok(&repo, &["labs:disable", "log-runtime-metrics"]);
    let config = server.cli_ok(&repo, &["config"]);
    assert!(!config.contains("SLIPWAY_LOG_RUNTIME_METRICS"), "{config}");
    let unknown = server.cli(&repo, &["labs:enable", "preboot"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("log-runtime-metrics"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn an_app_s_own_boot_timeout_gives_r10_and_bad_values_are_refused() {
    // The server's boot timeout stays 60 s: only the app's own setting can make R10 quick.
    let server = Server::start();
    let repo = server.app_repo("impatient", &[("Procfile", "web: sleep 1000\n")]);
    server.cli_ok(&repo, &["config:set", "SLIPWAY_BOOT_TIMEOUT=2"]);
    // web.1 never binds: R10 (within the boot timeout). Nothing served before, so as on Heroku
    // the first release is released all the same and the push is accepted.
    let pushed = server.git(&repo, &["push", "slipway", "main"]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    for bad in ["0", "3601", "abc", "1.5", "-3"] {
        let out = server.cli(
            &repo,
            &["config:set", &format!("SLIPWAY_BOOT_TIMEOUT={bad}")],
        );
        assert!(!out.status.success(), "{bad} accepted");
        let said = text(&out);
        assert!(
            said.contains("SLIPWAY_BOOT_TIMEOUT must be a whole number of seconds from 1 to 3600"),
            "{bad}: {said}"
        );
    }
    let kept = server.cli_ok(&repo, &["config:get", "SLIPWAY_BOOT_TIMEOUT"]);
    assert_eq!(kept.trim(), "2", "a refused change changed the config");
    let bad_flag = server.cli(&repo, &["config:set", "SLIPWAY_LOG_RUNTIME_METRICS=yes"]);
    assert!(!bad_flag.status.success());
    assert!(
        text(&bad_flag).contains("SLIPWAY_LOG_RUNTIME_METRICS must be 1 or true"),
        "{}",
        text(&bad_flag)
    );

    let lines = server.wait_for_r10_crash(&repo, 40, "Error R10");
    let r10 = lines
        .iter()
        .find(|l| l.contains("Error R10"))
        .expect("R10 line");
    assert!(
        r10.contains("failed to bind to $PORT within 2 seconds of launch"),
        "{r10}"
    );
}

/// The dyno's soft memory limit (its quota), hard limit and process limit, as the app reads
/// them under `/sys/fs/cgroup` inside its dyno.
fn limits_inside(server: &Server, app: &str) -> [String; 3] {
    let files = if cgroup_v1() {
        [
            "memory/memory.soft_limit_in_bytes",
            "memory/memory.limit_in_bytes",
            "pids/pids.max",
        ]
    } else {
        ["memory.low", "memory.max", "pids.max"]
    };
    files.map(|file| {
        let (status, body) = server.app_get(app, &format!("/cgroup?file={file}"));
        assert_eq!(status, 200, "{file}: {body}");
        body
    })
}

/// `web.1` once it is the only web dyno, up, at `size`.
fn only_web1(server: &Server, repo: &Path, size: &str) -> Value {
    let what = format!("web.1 alone, up at {size}");
    wait_for(90, &what, || {
        let web: Vec<Value> = ps_json(server, repo)
            .into_iter()
            .filter(|d| d["type"] == "web")
            .collect();
        (web.len() == 1 && web[0]["state"] == "up" && web[0]["size"] == size)
            .then(|| web[0].clone())
    })
}

#[test]
fn a_process_type_s_size_sets_its_dynos_limits() {
    let mut server = Server::start();
    // Dynos outlive the server here, to check a re-adopted dyno keeps its size.
    server.stop_dynos_on_exit = false;
    server.terminate();
    server.launch();
    let app = "roomy";
    let repo = deploy_holder(&server, app);
    let mib = |n: u64| (n * MIB).to_string();

    let first = only_web1(&server, &repo, "standard-1X");
    assert_eq!(first["memory_quota_bytes"], 512 * MIB, "{first:#}");
    // The quota is the soft limit; the kernel kills at twice it (R15).
    assert_eq!(
        limits_inside(&server, app),
        [mib(512), mib(1024), "256".to_string()]
    );

    server.cli_ok(&repo, &["ps:type", "web=standard-2X"]);
    let resized = only_web1(&server, &repo, "standard-2X");
    assert_ne!(resized["id"], first["id"], "the dyno was not replaced");
    assert_eq!(resized["memory_quota_bytes"], 1024 * MIB, "{resized:#}");
    let wanted = [mib(1024), mib(2048), "512".to_string()];
    assert_eq!(limits_inside(&server, app), wanted);

    // A server killed and started again re-adopts the dyno with its size: not replaced.
    server.kill9();
    server.launch();
    let adopted = only_web1(&server, &repo, "standard-2X");
    assert_eq!(
        adopted["id"], resized["id"],
        "the dyno was replaced: {adopted:#}"
    );
    assert_eq!(limits_inside(&server, app), wanted);
}
