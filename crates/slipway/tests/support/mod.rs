//! Test support: a real `slipway server` on port 0 in a temporary directory, the real CLI,
//! real git, and a minimal HTTP/1.0 client (so the tests check bytes on the wire).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use slipway_testkit::{header, http, lines_of, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_slipway");

pub struct Server {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub home: PathBuf,
    pub api_port: u16,
    pub router_port: u16,
    pub stdout_lines: Vec<String>,
    /// Server flags beyond the harness's own (see [`Server::start_with`]).
    pub extra_args: Vec<String>,
    /// Pass `--stop-dynos-on-exit true` (unless the flags set it), so a test's dynos end with
    /// its server. Tests of dynos outliving the server turn it off.
    pub stop_dynos_on_exit: bool,
    child: Option<Child>,
    /// Where the server's stderr (its tracing log) goes; discarded when `None`.
    stderr_log: Option<PathBuf>,
}

fn port_in(line: &str) -> Option<u16> {
    let rest = line.split("http://127.0.0.1:").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra flags, e.g. `["--header-read-timeout", "2"]`.
    pub fn start_with(extra_args: &[&str]) -> Server {
        Server::create(extra_args, false)
    }

    /// Like [`Server::start_with`], and the server's stderr (its own log) is kept in
    /// `<root>/server-stderr.log`; read it with [`Server::server_log`].
    pub fn start_logged(extra_args: &[&str]) -> Server {
        Server::create(extra_args, true)
    }

    fn create(extra_args: &[&str], keep_stderr: bool) -> Server {
        let root = tempfile::tempdir().expect("tempdir");
        // Traversable (not listable), as a data directory's parent usually is: builds and dynos
        // run as other users in directories beside the data directory.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod tempdir");
        let data = root.path().join("data");
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let mut server = Server {
            root,
            data,
            home,
            api_port: 0,
            router_port: 0,
            stdout_lines: Vec::new(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            stop_dynos_on_exit: true,
            child: None,
            stderr_log: None,
        };
        if keep_stderr {
            server.stderr_log = Some(server.root.path().join("server-stderr.log"));
        }
        server.launch();
        server
    }

    /// Starts (or restarts) the server process on the same data directory.
    pub fn launch(&mut self) {
        self.launch_with(&[]);
    }

    /// Starts (or restarts) the server with extra flags.
    pub fn launch_with(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--data-dir"])
            .arg(&self.data)
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--router-listen",
                "127.0.0.1:0",
                "--dyno-stop-timeout",
                "5",
                "--shutdown-timeout",
                "5",
            ])
            .args(&self.extra_args)
            .args(extra)
            .stdout(Stdio::piped());
        let flag = "--stop-dynos-on-exit";
        let set = self.extra_args.iter().any(|a| a == flag) || extra.contains(&flag);
        if self.stop_dynos_on_exit && !set {
            cmd.args([flag, "true"]);
        }
        match &self.stderr_log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("server stderr log");
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        isolate(&mut cmd, &self.home);
        let mut child = cmd.spawn().expect("start slipway server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not get ready; it printed {lines:?}"));
            let done = line == "ready";
            lines.push(line);
            if done {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.api_port = lines
            .iter()
            .find(|l| l.contains("API listening"))
            .and_then(|l| port_in(l))
            .expect("API port printed");
        self.router_port = lines
            .iter()
            .find(|l| l.contains("router listening"))
            .and_then(|l| port_in(l))
            .expect("router port printed");
        self.stdout_lines = lines;
        self.child = Some(child);
        let port = self.api_port;
        wait_for(30, "GET /health", || {
            (http(port, "GET", "/health", &[], None).0 == 200).then_some(())
        });
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        wait_for(30, "the server to exit after SIGTERM", || {
            child.try_wait().expect("wait")
        })
    }

    /// The running server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Kills the server with SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// `program` in `dir`, kept away from the user's git and slipway settings, finding the
    /// server through its data directory.
    fn command(&self, program: &str, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        isolate(&mut cmd, &self.home);
        cmd.args(args)
            .current_dir(dir)
            .env("SLIPWAY_DATA_DIR", &self.data)
            .stdin(Stdio::null());
        cmd
    }

    /// The real CLI in `dir`, finding the server through its data directory.
    fn cli_command(&self, dir: &Path, args: &[&str]) -> Command {
        self.command(BIN, dir, args)
    }

    pub fn cli(&self, dir: &Path, args: &[&str]) -> Output {
        self.cli_command(dir, args).output().expect("run slipway")
    }

    /// Starts the CLI without waiting for it (for `logs --tail`).
    pub fn cli_spawn(&self, dir: &Path, args: &[&str]) -> Child {
        let mut cmd = self.cli_command(dir, args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        cmd.spawn().expect("start slipway")
    }

    pub fn cli_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.cli(dir, args);
        assert!(
            out.status.success(),
            "slipway {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Real git in `dir`, kept away from the user's git and slipway settings.
    fn git_command(&self, dir: &Path, args: &[&str]) -> Command {
        self.command("git", dir, args)
    }

    pub fn git(&self, dir: &Path, args: &[&str]) -> Output {
        self.git_command(dir, args).output().expect("run git")
    }

    /// Starts git without waiting for it; its stderr (where `remote:` lines go) is piped.
    pub fn git_spawn(&self, dir: &Path, args: &[&str]) -> Child {
        let mut cmd = self.git_command(dir, args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().expect("start git")
    }

    /// Like [`Server::git_spawn`], in a process group of its own (numbered as git's pid), so
    /// that a test can kill git with the helpers it started (`git remote-http`), as Ctrl-C does.
    pub fn git_spawn_group(&self, dir: &Path, args: &[&str]) -> Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.git_command(dir, args);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd.spawn().expect("start git")
    }

    pub fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A git repository holding the sample app (examples/hello), committed on main.
    pub fn sample_repo(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("repo dir");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
        for file in ["Procfile", "server.py"] {
            std::fs::copy(example.join(file), dir.join(file)).expect("copy sample app");
        }
        self.git_ok(&dir, &["init", "-q", "-b", "main"]);
        self.commit_all(&dir, "initial");
        dir
    }

    pub fn commit_all(&self, dir: &Path, message: &str) {
        self.git_ok(dir, &["add", "-A"]);
        self.git_ok(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    }

    pub fn app_get(&self, app: &str, path: &str) -> (u16, String) {
        let (status, _, body) = http(
            self.router_port,
            "GET",
            path,
            &[("Host", &format!("{app}.localhost"))],
            None,
        );
        (status, body)
    }

    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Vec<(String, String)>, String) {
        let auth = format!("Bearer {}", self.token());
        http(
            self.api_port,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Accept", "application/vnd.heroku+json; version=3"),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// Processes whose working directory is inside the dynos directory (the dynos).
    pub fn dyno_processes(&self) -> Vec<u32> {
        let dynos = self.dynos_dir();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
                if cwd.starts_with(&dynos) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Server {
    /// What the server wrote to stderr so far, without terminal colour codes.
    pub fn server_log(&self) -> String {
        let path = self
            .stderr_log
            .as_ref()
            .expect("a server started with Server::start_logged");
        let raw = std::fs::read(path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }
}

/// Writes each (name, body) as an executable script in `bin` (made if missing): a buildpack's
/// `bin/detect`, `bin/compile` and `bin/release`.
pub fn write_scripts(bin: &Path, scripts: &[(&str, impl AsRef<str>)]) {
    std::fs::create_dir_all(bin).expect("mkdir bin");
    for (name, body) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, body.as_ref()).expect("write script");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod script");
    }
}

/// Removes `ESC [ ... letter` sequences (colours) from text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Dynos and their monitors outlive a server that does not stop them: end this test's.
        for pid in self
            .monitor_processes()
            .into_iter()
            .chain(self.dyno_processes())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        // Containers: their processes are not found by their working directory.
        let state = self.dynos_dir().join(".oci/state");
        for entry in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Server {
    /// `slipway dyno-monitor` processes of this server's dynos.
    pub fn monitor_processes(&self) -> Vec<u32> {
        let needle = self.dynos_dir().join(".monitors");
        let needle = needle.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("dyno-monitor") && cmdline.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Keeps the user's git and slipway settings out of the test.
fn isolate(cmd: &mut Command, home: &Path) {
    for var in [
        "SLIPWAY_API_URL",
        "SLIPWAY_API_TOKEN",
        "SLIPWAY_DATA_DIR",
        "SLIPWAY_APP",
        "SLIPWAY_CONFIG",
        "GIT_DIR",
        "GIT_WORK_TREE",
        // A test names the CA git trusts (`-c http.sslCAInfo`); the host's must not win.
        "GIT_SSL_CAINFO",
        "GIT_SSL_NO_VERIFY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com");
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir`, in its subdirectories too.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `slipway` expecting success; stdout and stderr together.
pub fn ok(server: &Server, dir: &Path, args: &[&str]) -> String {
    let out = server.cli(dir, args);
    let all = text(&out);
    assert!(out.status.success(), "slipway {args:?} failed:\n{all}");
    all
}

/// Makes the sample app (see [`Server::sample_repo`]) answer `greeting` unless the `GREETING`
/// config var says otherwise; not committed.
pub fn set_greeting(repo: &Path, greeting: &str) {
    let code = std::fs::read_to_string(repo.join("server.py")).expect("server.py");
    let code = code
        .lines()
        .map(|l| {
            if l.starts_with("GREETING = ") {
                format!("GREETING = os.environ.get(\"GREETING\", {greeting:?})")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(repo.join("server.py"), code + "\n").expect("server.py");
}

/// A buildpack that holds every build at `bin/compile` until [`Gate::open`]: builds that take
/// exactly as long as a test needs, ordered by events rather than timing. The buildpack waits
/// for a byte from a port the test listens on (over the loopback, which builds share with the
/// host even inside the OCI sandbox, where no file of the test's is visible).
pub struct Gate {
    pub buildpack: PathBuf,
    listener: std::net::TcpListener,
}

impl Gate {
    pub fn new(root: &Path) -> Gate {
        let buildpack = root.join("gate-buildpack");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("gate listener");
        let port = listener.local_addr().expect("gate port").port();
        let bin = buildpack.join("bin");
        std::fs::create_dir_all(&bin).expect("gate buildpack");
        let scripts = [
            ("detect", "#!/bin/sh\necho Gate\n".to_string()),
            (
                "compile",
                format!(
                    "#!/bin/sh\necho '-----> Gate: waiting'\npython3 - <<'PY'\nimport socket, time\nwhile True:\n    try:\n        if socket.create_connection(('127.0.0.1', {port})).recv(1) == b'o':\n            break\n    except OSError:\n        pass\n    time.sleep(0.05)\nPY\necho '-----> Gate: open'\n"
                ),
            ),
            ("release", "#!/bin/sh\necho '--- {}'\n".to_string()),
        ];
        write_scripts(&bin, &scripts);
        Gate {
            buildpack,
            listener,
        }
    }

    /// Makes the app in `repo` build with this buildpack (a `.buildpacks` file).
    pub fn use_in(&self, repo: &Path) {
        std::fs::write(
            repo.join(".buildpacks"),
            format!("{}\n", self.buildpack.display()),
        )
        .expect("write .buildpacks");
    }

    /// From now on every build waiting at the gate (and every later one) goes through.
    pub fn open(&self) {
        let listener = self.listener.try_clone().expect("gate listener");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = std::io::Write::write_all(&mut &stream, b"o");
            }
        });
    }
}

/// Waits until a line containing `needle` comes from `lines` (a child's output), returning
/// every line read so far.
pub fn read_until(lines: &mpsc::Receiver<String>, needle: &str, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("no line containing {needle:?} ({e}); got {seen:#?}"),
        }
    }
}

impl Server {
    /// Where the server runs dynos by default: beside the data directory, never inside it.
    pub fn dynos_dir(&self) -> PathBuf {
        self.root.path().join("data-dynos")
    }

    /// A git repository on main holding `files` (name, content).
    pub fn repo_with(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("repo dir");
        for (file, content) in files {
            std::fs::write(dir.join(file), content).expect("write app file");
        }
        self.git_ok(&dir, &["init", "-q", "-b", "main"]);
        self.commit_all(&dir, "initial");
        dir
    }
}

impl Server {
    /// Creates `app` and a repository `<app>-src` holding `files` (committed on main) with the
    /// app's `slipway` remote; nothing is pushed.
    pub fn app_repo(&self, app: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.root.path().to_path_buf();
        self.cli_ok(&root, &["apps:create", app]);
        let repo = self.repo_with(&format!("{app}-src"), files);
        self.cli_ok(&repo, &["git:remote", "-a", app]);
        repo
    }

    /// The last 1500 lines of the log of the app in `repo` (`slipway logs -n 1500`).
    pub fn log_lines(&self, repo: &Path) -> Vec<String> {
        self.cli_ok(repo, &["logs", "-n", "1500"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits up to `secs` until the log of the app in `repo` has a line containing `r10` and,
    /// after it, the dyno's crash; returns the log lines then.
    pub fn wait_for_r10_crash(&self, repo: &Path, secs: u64, r10: &str) -> Vec<String> {
        self.wait_for_log_in_order(
            repo,
            secs,
            "R10 and the crash it causes",
            r10,
            "State changed from starting to crashed",
        )
    }

    /// Waits up to `secs` (saying `what` if it times out) until the log of the app in `repo`
    /// has a line containing `first` and, at or after it, one containing `then`; returns the
    /// log lines then.
    pub fn wait_for_log_in_order(
        &self,
        repo: &Path,
        secs: u64,
        what: &str,
        first: &str,
        then: &str,
    ) -> Vec<String> {
        wait_for(secs, what, || {
            let lines = self.log_lines(repo);
            let at = lines.iter().position(|l| l.contains(first))?;
            lines[at..]
                .iter()
                .any(|l| l.contains(then))
                .then_some(lines)
        })
    }
}

/// An app that answers `app=<name>` and the request headers it saw, one per line.
pub const ECHO_APP: &str = r#"import http.server, os
NAME = open("name.txt").read().strip()
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        lines = [f"app={NAME}", f"method={self.command}", f"path={self.path}"]
        lines += [f"{k.lower()}: {v}" for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = answer
    do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Creates `app` from the echo app and deploys it; waits until it serves.
pub fn deploy_echo(server: &Server, app: &str) {
    let repo = server.repo_with(
        &format!("{app}-src"),
        &[
            ("Procfile", "web: python3 server.py\n"),
            ("server.py", ECHO_APP),
            ("name.txt", app),
        ],
    );
    server.cli_ok(&repo, &["apps:create", app]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(90, &format!("{app} to serve"), || {
        (server.app_get(app, "/").0 == 200).then_some(())
    });
}

/// Why runc cannot run dynos here (not root, or no runc), if it cannot: tests of the OCI
/// runtime then skip, printing it.
pub fn runc_unavailable() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the effective user.
    if std::fs::metadata("/proc/self").map_or(1, |m| m.uid()) != 0 {
        return Some("not root: runc needs root".into());
    }
    let runs = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!runs).then(|| "runc is not installed (.ci/run installs it)".into())
}
