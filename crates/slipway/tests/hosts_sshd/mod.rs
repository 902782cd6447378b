//! Shared by the host tests: an `sshd` on a loopback port standing in for one of the user's
//! hosts (its own host key, authorized key and `$HOME`), a client key, and small tarballs
//! imported into the release store.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// One "host": an sshd with its own config, host key and home directory.
pub struct Sshd {
    pub dir: PathBuf,
    pub home: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sshd {
    pub fn start(root: &Path, name: &str, client_pub: &Path) -> Sshd {
        let dir = root.join(name);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all("/run/sshd").expect("privilege separation dir");
        std::fs::copy(client_pub, dir.join("authorized_keys")).expect("authorized_keys");
        let mut sshd = Sshd {
            dir,
            home,
            port: free_port(),
            child: None,
        };
        sshd.new_host_key();
        sshd.launch();
        sshd
    }

    pub fn new_host_key(&self) {
        let key = self.dir.join("hostkey");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(self.dir.join("hostkey.pub"));
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
    }

    pub fn fingerprint(&self) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.dir.join("hostkey.pub")),
        );
        out.split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string()
    }

    pub fn launch(&mut self) {
        let d = self.dir.display();
        let config = format!(
            "Port {}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin yes\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             SetEnv HOME={}\nMaxSessions 50\nMaxStartups 50\n",
            self.port,
            self.home.display()
        );
        std::fs::write(self.dir.join("sshd_config"), config).expect("config");
        let log = std::fs::File::create(self.dir.join("sshd.log")).expect("log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd (apt-get install openssh-server)");
        self.child = Some(child);
        let port = self.port;
        wait_for(20, "sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Stops the daemon and every session it serves (its children), by pid.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.kill_sessions();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts every connection this sshd serves (SIGTERM to its session processes).
    pub fn kill_sessions(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("pkill")
                .args(["-TERM", "-P", &child.id().to_string()])
                .status();
        }
    }

    /// Gives the host's app a free port, written to `$HOME/port` (where [`RESTART`] and the
    /// tests' health checks read it).
    pub fn give_port(&self) -> u16 {
        let port = free_port();
        std::fs::write(self.home.join("port"), port.to_string()).expect("port");
        port
    }

    pub fn spec(&self) -> String {
        format!("root@127.0.0.1:{}", self.port)
    }

    pub fn app(&self) -> PathBuf {
        self.home.join("app")
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.app().join("current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    pub fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.app().join("releases"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn state(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.app().join(".slipway/state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }

    pub fn page(&self) -> String {
        let port: u16 = std::fs::read_to_string(self.home.join("port"))
            .expect("port")
            .trim()
            .parse()
            .expect("port");
        // A host switched back after a failed health check elsewhere may still be starting
        // its app (its own check can fail too: the `unhealthy` marker); wait for the page.
        wait_for(30, "the host's app to answer", || {
            let (status, _, body) = http(port, "GET", "/", &[("Host", "x")], None);
            (status == 200).then_some(body)
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The app the restart command started.
        if let Ok(pid) = std::fs::read_to_string(self.app().join("app.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        self.stop();
    }
}

/// The set-up of most host tests: a client key (`client_key` in the server's directory, as
/// [`client_key`] makes it) and two hosts, `host-a` and `host-b`, that accept it. Returns the
/// key and the hosts (bind them after the server, so they stop before its directory goes).
pub fn two_hosts(server: &Server) -> (PathBuf, Sshd, Sshd) {
    let root = server.root.path();
    let key = client_key(root);
    let pub_key = root.join("client_key.pub");
    let a = Sshd::start(root, "host-a", &pub_key);
    let b = Sshd::start(root, "host-b", &pub_key);
    (key, a, b)
}

/// Starts the app from `current/app` (a relocatable slug: `.profile.d` with `HOME` = the app
/// directory), after stopping the one before; the port comes from the host's `$HOME/port`
/// (see [`Sshd::give_port`]); the app's output goes to the shared `log` directory.
pub const RESTART: &str = r#"P=$(cat "$HOME/port"); old=$(cat "$SLIPWAY_PATH/app.pid" 2>/dev/null || true); if [ -n "$old" ]; then kill "$old" 2>/dev/null || true; while kill -0 "$old" 2>/dev/null; do sleep 0.1; done; fi; cd app && HOME=$PWD PORT=$P DYNO=$SLIPWAY_RELEASE sh -c 'for f in .profile.d/*.sh; do [ -e "$f" ] && . "./$f"; done; exec python3 server.py' >> "$SLIPWAY_PATH/shared/log/app.log" 2>&1 & echo $! > "$SLIPWAY_PATH/app.pid""#;

/// The client key slipway uses for the hosts.
pub fn client_key(root: &Path) -> PathBuf {
    let key = root.join("client_key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    key
}

pub fn sha256_of(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

/// A small tarball in the store under `tag`, imported by the CLI.
pub fn import(server: &Server, root: &Path, tag: &str, bytes: usize) {
    let src = root.join(format!("src-{tag}"));
    std::fs::create_dir_all(src.join("app")).expect("dir");
    let mut data = vec![0u8; bytes];
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut f, &mut data).expect("random");
    std::fs::write(src.join("app/blob"), data).expect("blob");
    let tgz = root.join(format!("{tag}.tgz"));
    tar_app(&tgz, &src);
    store_import(server, root, &tgz, tag, &["--metadata", r#"{"by":"test"}"#]);
}

/// Packs `src`'s `app` directory as the gzipped tarball `tgz` (what a slug or release is).
pub fn tar_app(tgz: &Path, src: &Path) {
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(tgz)
            .arg("-C")
            .arg(src)
            .arg("app"),
    );
}

/// `slipway store:import` of the tarball `tgz` as release `blob` `tag`, `extra` flags after.
pub fn store_import(server: &Server, root: &Path, tgz: &Path, tag: &str, extra: &[&str]) {
    let mut args = vec![
        "store:import",
        tgz.to_str().expect("utf-8"),
        "--name",
        "blob",
        "--tag",
        tag,
    ];
    args.extend_from_slice(extra);
    server.cli_ok(root, &args);
}

/// Adds target `name` over `hosts`, trusting their keys, with more flags after.
pub fn add_target(
    server: &Server,
    root: &Path,
    name: &str,
    hosts: &[&Sshd],
    path: &str,
    key: &Path,
    extra: &[&str],
) {
    let list: Vec<String> = hosts.iter().map(|h| h.spec()).collect();
    let list = list.join(",");
    let fingerprints: Vec<String> = hosts.iter().map(|h| h.fingerprint()).collect();
    let mut args: Vec<&str> = vec![
        "targets:add",
        name,
        "--hosts",
        &list,
        "--path",
        path,
        "--key",
        key.to_str().expect("utf-8"),
    ];
    for f in &fingerprints {
        args.extend(["--accept-host-key", f.as_str()]);
    }
    args.extend(extra);
    server.cli_ok(root, &args);
}

/// The host's lock file, parsed, if there is one.
pub fn lock_of(app: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(app.join(".slipway/lock")).ok()?;
    Some(serde_json::from_str(&text).expect("the lock is JSON"))
}

/// Pids of the processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
    {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if cmdline.contains(needle) && !stat.contains(") Z ") && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}
