//! Builds in the OCI sandbox, through the real binary, real git and real runc: a custom
//! buildpack's `bin/compile` probes what it can see (the platform's data, another app's slug,
//! cache and dyno, the host's processes) and says it in the push output; a build over its
//! memory limit fails naming it; a build over its time limit is killed, container and all.

#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};

use support::{text, wait_for, Server};

const MARKER: &str = "victim-cache-4242";

/// `bin/compile`: keeps a marker in its cache, then prints its uid, whether each path listed in
/// the app's `probe-paths` is MISSING (not there at all), DENIED or READ, every process it
/// can see in `/proc`, and `ps`.
const PROBE_COMPILE: &str = r#"#!/bin/sh
set -e
echo "$(cat "$1/name.txt")-cache-4242" > "$2/cache-marker"
rm -f "$2/linked"
if ln "$1/name.txt" "$2/linked"; then echo "-----> Hard link build to cache: ok"; fi
python3 - "$1" <<'PY'
import os, sys
build = sys.argv[1]
print("-----> Probe uid=%d gid=%d" % (os.getuid(), os.getgid()))
paths = open(os.path.join(build, "probe-paths")).read().split()
for p in paths:
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p, "rb").read(1)
        s = "READ"
    except FileNotFoundError:
        s = "MISSING"
    except PermissionError:
        s = "DENIED"
    except Exception as e:
        s = type(e).__name__
    print("       probe %s: %s" % (p, s))
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        cmd = open("/proc/%s/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode()
    except Exception as e:
        cmd = type(e).__name__
    print("       proc %s: %s" % (pid, cmd))
PY
ps -eo pid,user,args | sed 's/^/       ps: /'
"#;

const DETECT: &str = "#!/bin/sh\necho Probe\n";
const RELEASE: &str = "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: python3 -m http.server $PORT --bind 127.0.0.1\\n'\n";

/// A buildpack in its own git repository, tagged `v1`, with this `bin/compile`.
fn buildpack(server: &Server, name: &str, compile: &str) -> String {
    let dir = server.root.path().join(name);
    support::write_scripts(
        &dir.join("bin"),
        &[
            ("detect", DETECT),
            ("compile", compile),
            ("release", RELEASE),
        ],
    );
    server.git_ok(&dir, &["init", "-q", "-b", "main"]);
    server.commit_all(&dir, "buildpack");
    server.git_ok(&dir, &["tag", "v1"]);
    format!("file://{}#v1", dir.display())
}

/// Creates `app` with `buildpack` and pushes `files`; the push's output and whether it was
/// accepted.
fn push(server: &Server, app: &str, buildpack: &str, files: &[(&str, &str)]) -> (bool, String) {
    let repo = server.repo_with(&format!("{app}-src"), files);
    server.cli_ok(&repo, &["apps:create", app]);
    server.cli_ok(&repo, &["buildpacks:set", buildpack]);
    let out = server.git(&repo, &["push", "slipway", "main"]);
    (out.status.success(), text(&out))
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
        } else if entry.file_name().to_string_lossy().contains(name) {
            found.push(path);
        }
    }
    found
}

/// The lines of the push output starting with `prefix` (after `remote:` and spaces).
fn said<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output
        .lines()
        .map(|l| l.trim_start_matches("remote:").trim())
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[test]
fn a_buildpack_in_the_oci_sandbox_sees_no_other_app_nor_the_platform() {
    let server = Server::start_with(&["--dyno-runtime", "oci"]);
    let probe = buildpack(&server, "probe-buildpack", PROBE_COMPILE);

    // The victim: built with the same buildpack (its cache gets a marker), released, running.
    let (ok, out) = push(
        &server,
        "victim",
        &probe,
        &[
            ("name.txt", "victim\n"),
            ("probe-paths", ""),
            ("index.html", "victim page\n"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("Building in a container: oci ("), "{out}");
    wait_for(60, "the victim to serve", || {
        let (status, body) = server.app_get("victim", "/index.html");
        (status == 200 && body.contains("victim page")).then_some(())
    });
    let builds = PathBuf::from(format!("{}-builds", server.data.display()));
    let victim_cache = find(&builds.join("cache"), "cache-marker");
    assert_eq!(victim_cache.len(), 1, "{victim_cache:?}");
    assert_eq!(
        std::fs::read_to_string(&victim_cache[0]).expect("marker"),
        format!("{MARKER}\n")
    );
    let victim_slugs = find(&server.data.join("slugs"), "");
    assert!(!victim_slugs.is_empty(), "no slug under {:?}", server.data);
    let victim_page = find(&server.dynos_dir(), "index.html");
    assert!(
        !victim_page.is_empty(),
        "the victim's dyno has no index.html"
    );

    // The prober lists what it looks for.
    let data = server.data.display().to_string();
    let mut invisible: Vec<String> = vec![
        data.clone(),
        format!("{data}/admin.token"),
        format!("{data}/state.db"),
        victim_cache[0].display().to_string(),
        server.dynos_dir().display().to_string(),
        victim_page[0].display().to_string(),
    ];
    invisible.extend(victim_slugs.iter().map(|p| p.display().to_string()));
    // Its own files (relative to the build directory) are there.
    let paths = format!("name.txt\n{}", invisible.join("\n"));
    let (ok, out) = push(
        &server,
        "prober",
        &probe,
        &[
            ("name.txt", "prober\n"),
            ("probe-paths", &paths),
            ("index.html", "prober page\n"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("Building in a container: oci ("), "{out}");

    // The build and cache directories are one mount: the Python buildpack's cached
    // virtualenv is restored by hard links, not copied.
    assert!(out.contains("Hard link build to cache: ok"), "{out}");

    // Not root: the build user (an app's uid + 100000).
    let id = said(&out, "-----> Probe uid=");
    assert_eq!(id.len(), 1, "{out}");
    let uid: u32 = id[0]
        .trim_start_matches("-----> Probe uid=")
        .split(' ')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("{}", id[0]));
    assert!(uid >= 500_000, "build uid {uid}: {out}");

    assert!(
        said(&out, "probe ").contains(&"probe name.txt: READ"),
        "the build cannot read its own source:\n{out}"
    );
    // Every path of the platform and of the other app is simply not there. (The parents of
    // the build's own directories are there, holding only those.)
    for path in &invisible {
        let line = format!("probe {path}: MISSING");
        assert!(
            said(&out, "probe ").contains(&line.as_str()),
            "{path} is visible to the build:\n{out}"
        );
    }

    // Only the build's own processes: the probe, its shell, ps; not the server, not the
    // victim's dyno, nothing of the host.
    let procs = said(&out, "proc ");
    assert!(
        procs.iter().any(|l| l.contains("python3 -")),
        "the probe does not see itself:\n{out}"
    );
    assert!(procs.len() < 10, "{} processes seen:\n{out}", procs.len());
    for forbidden in ["http.server", "server --data-dir", "runc", "sshd"] {
        assert!(
            !procs.iter().any(|l| l.contains(forbidden)),
            "the build sees {forbidden}:\n{out}"
        );
    }
    let ps = said(&out, "ps: ");
    assert!(ps.len() >= 3 && ps.len() < 12, "{out}");
    assert!(
        !ps.iter().any(|l| l.contains("root ")),
        "a root process is visible:\n{out}"
    );
}

const HOG_COMPILE: &str = r#"#!/bin/sh
echo "-----> Allocating 600 MB"
python3 -c "b = b'x' * (600 * 1024 * 1024); print(len(b))"
"#;

const SLOW_COMPILE: &str = r#"#!/bin/sh
echo "-----> Sleeping beyond the time limit"
sleep 7771 &
sleep 7772
"#;

#[test]
fn oci_builds_over_their_memory_or_time_limit_fail_and_leave_no_container() {
    let server = Server::start_with(&[
        "--dyno-runtime",
        "oci",
        "--build-memory-limit",
        "256",
        "--build-timeout",
        "20",
    ]);

    let hog = buildpack(&server, "hog-buildpack", HOG_COMPILE);
    let (ok, out) = push(
        &server,
        "hog",
        &hog,
        &[("name.txt", "hog\n"), ("index.html", "x\n")],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Allocating 600 MB"), "{out}");
    assert!(
        out.contains("bin/compile ran out of memory: the build's limit is 256 MiB"),
        "{out}"
    );
    assert!(out.contains("pre-receive hook declined"), "{out}");

    let slow = buildpack(&server, "slow-buildpack", SLOW_COMPILE);
    let (ok, out) = push(
        &server,
        "slow",
        &slow,
        &[("name.txt", "slow\n"), ("index.html", "x\n")],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Sleeping beyond the time limit"), "{out}");
    assert!(
        out.contains("bin/compile did not finish within the build time limit of 20s"),
        "{out}"
    );
    assert!(out.contains("pre-receive hook declined"), "{out}");

    // The container is gone, with everything that ran in it (the background sleep too).
    wait_for(30, "no build container left", || {
        build_containers(&server).is_empty().then_some(())
    });
    wait_for(30, "the build's processes to end", || {
        let sleeping = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("7771") || c.contains("7772")
            });
        (!sleeping).then_some(())
    });
    let bundles = server.dynos_dir().join(".oci/builds");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
}

/// The build containers runc knows of on this server.
fn build_containers(server: &Server) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(server.dynos_dir().join(".oci/state"))
        .arg("list")
        .output()
        .expect("runc list");
    assert!(out.status.success(), "runc list: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("build-"))
        .map(str::to_string)
        .collect()
}
