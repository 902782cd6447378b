//! The build pipeline with real buildpacks: the built-in ones installing real dependencies from
//! PyPI and npm, custom ones from a local directory and a local git repository, failures,
//! runtime versions, the cache, time limits and cancellation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_build::{BuildError, BuildEvent, CompileSpec, Compiled, Phase};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A build's directories under one temporary directory; `app` is the build directory.
struct Site {
    root: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        Self { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// A fresh build directory `name` holding a copy of fixture `fixture`.
    fn source(&self, fixture: &str, name: &str) -> PathBuf {
        let dest = self.path(name);
        std::fs::create_dir_all(&dest).expect("mkdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&dest)
            .status()
            .expect("cp")
            .success();
        assert!(ok, "copying fixture {fixture}");
        dest
    }

    fn spec(&self, build_dir: &Path) -> CompileSpec {
        CompileSpec::new(
            build_dir.to_path_buf(),
            self.path("cache"),
            self.path("builtin"),
            self.path("fetched"),
        )
    }
}

struct Outcome {
    result: Result<Compiled, BuildError>,
    lines: Vec<String>,
    events: Vec<BuildEvent>,
}

impl Outcome {
    fn text(&self) -> String {
        self.lines.join("\n")
    }

    fn ok(self) -> (Compiled, String) {
        let text = self.text();
        match self.result {
            Ok(c) => (c, text),
            Err(e) => panic!("build failed: {e}\n{text}"),
        }
    }

    fn err(self) -> (BuildError, String) {
        let text = self.text();
        match self.result {
            Ok(c) => panic!("build succeeded: {c:?}\n{text}"),
            Err(e) => (e, text),
        }
    }
}

async fn build(spec: &CompileSpec) -> Outcome {
    build_with(spec, CancellationToken::new(), |_| {}).await
}

/// Runs a build, collecting its events; `on_event` sees each as it arrives.
async fn build_with(
    spec: &CompileSpec,
    cancel: CancellationToken,
    mut on_event: impl FnMut(&BuildEvent) + Send + 'static,
) -> Outcome {
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            on_event(&e);
            events.push(e);
        }
        events
    });
    let result = slipway_build::run_buildpacks(spec, &tx, cancel).await;
    drop(tx);
    let events = collector.await.expect("collector");
    let lines = events
        .iter()
        .filter_map(|e| e.line().map(str::to_string))
        .collect();
    Outcome {
        result,
        lines,
        events,
    }
}

/// Runs `script` with bash as a dyno would: HOME = the app directory, `.profile.d/*.sh` sourced
/// first, a bare environment.
fn in_dyno(app: &Path, script: &str) -> std::process::Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for f in \"$HOME\"/.profile.d/*.sh; do . \"$f\"; done; {script}"
        ))
        .env_clear()
        .env("HOME", app)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(app)
        .output()
        .expect("bash")
}

/// Files under `dir` (bytecode aside) whose bytes contain `needle`.
fn files_naming(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let kind = entry.file_type().expect("type");
        if kind.is_dir() {
            files_naming(&path, needle, found);
        } else if kind.is_file() && path.extension().is_none_or(|e| e != "pyc") {
            let bytes = std::fs::read(&path).expect("read");
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    found.into_iter().next().expect("one")
}

/// The PEP 552 flags of a `.pyc` file (0: timestamp-based, 0b01: unchecked hash, 0b11:
/// checked hash).
fn pyc_flags(path: &Path) -> u32 {
    let bytes = std::fs::read(path).expect("read pyc");
    u32::from_le_bytes(bytes[4..8].try_into().expect("pyc header"))
}

/// The `.pyc` files under `dir` and their inodes (Python replaces a `.pyc` it rewrites with a
/// new file).
fn pyc_files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let meta = entry.metadata().expect("meta");
        if meta.is_dir() {
            found.extend(pyc_files(&path));
        } else if path.extension().is_some_and(|e| e == "pyc") {
            found.insert(path, meta.ino());
        }
    }
    found
}

fn write_exe(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A buildpack in `dir` whose compile runs `compile` (bash) and whose release declares
/// `web: <web>`.
fn custom_buildpack(dir: &Path, compile: &str, web: &str) {
    write_exe(&dir.join("bin/detect"), "#!/bin/sh\necho Custom\nexit 0\n");
    write_exe(
        &dir.join("bin/compile"),
        &format!("#!/usr/bin/env bash\nset -euo pipefail\n{compile}\n"),
    );
    write_exe(
        &dir.join("bin/release"),
        &format!("#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: {web}\\n'\n"),
    );
}

#[tokio::test]
async fn flask_app_installs_from_pypi_runs_from_another_path_and_rebuilds_from_cache() {
    let site = Site::new();
    let app = site.source("flask", "build-1/app");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert_eq!(compiled.buildpacks, ["python"]);
    assert_eq!(
        compiled.process_types["web"],
        "gunicorn app:app --bind 0.0.0.0:$PORT"
    );
    assert!(text.contains("-----> Python app detected"), "{text}");
    assert!(text.contains("-----> Using Python 3."), "{text}");
    assert!(
        text.contains("Installing dependencies from requirements.txt with pip"),
        "{text}"
    );
    assert!(
        text.contains("Procfile declares types     -> web"),
        "{text}"
    );

    // The slug runs elsewhere: move it, and nothing may still point at the build directory.
    let moved = site.path("dyno/elsewhere/app");
    std::fs::create_dir_all(moved.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&app, &moved).expect("move");
    let mut naming = Vec::new();
    files_naming(&moved, &app.display().to_string(), &mut naming);
    assert!(
        naming.is_empty(),
        "files still name the build directory: {naming:?}"
    );
    let out = in_dyno(
        &moved,
        "gunicorn --version && python -c 'import flask, sys; print(sys.prefix)'",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("gunicorn (version 23.0.0)"),
        "{out:?}"
    );
    assert!(
        stdout.contains(&moved.join(".slipway/venv").display().to_string()),
        "python runs in the moved virtualenv: {stdout}"
    );

    // Same requirements: nothing is installed again, and the output says so.
    let again = site.source("flask", "build-2/app");
    let (_, text) = build(&site.spec(&again)).await.ok();
    assert!(
        text.contains("-----> Using cached dependencies (requirements.txt unchanged)"),
        "{text}"
    );
    assert!(!text.contains("Installing dependencies"), "{text}");
    let out = in_dyno(&again, "gunicorn --version");
    assert!(out.status.success(), "{out:?}");

    // Through a slug (file times zeroed), the bytecode is still valid: importing the app and
    // its dependencies in the dyno compiles and writes nothing.
    let slug = site.path("slug.tgz");
    let info =
        slipway_build::create_slug(&again, &slug, &slipway_build::Limits::default()).expect("slug");
    let dyno = site.path("dyno-2");
    slipway_build::unpack_slug(&slug, &info.checksum, &dyno).expect("unpack");
    let unpacked = dyno.join("app");
    let app_pyc = only_entry(&unpacked.join("__pycache__"), "app.cpython-");
    let lib = only_entry(&unpacked.join(".slipway/venv/lib"), "python3");
    let flask_pyc = only_entry(&lib.join("site-packages/flask/__pycache__"), "app.cpython-");
    // PEP 552 flags: 0b11 checked hash (the app's own code), 0b01 unchecked (installed).
    assert_eq!(pyc_flags(&app_pyc), 0b11, "{}", app_pyc.display());
    assert_eq!(pyc_flags(&flask_pyc), 0b01, "{}", flask_pyc.display());
    let before = pyc_files(&unpacked);
    let out = in_dyno(
        &unpacked,
        "python -c 'import app, flask, gunicorn.app.wsgiapp; print(app.index())'",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Hello from Flask"),
        "{out:?}"
    );
    let after = pyc_files(&unpacked);
    let written: Vec<&PathBuf> = after
        .iter()
        .filter(|(path, inode)| before.get(*path) != Some(inode))
        .map(|(path, _)| path)
        .collect();
    assert!(!before.is_empty());
    assert!(written.is_empty(), "imports wrote bytecode: {written:?}");

    // Changed requirements: installed again.
    let third = site.source("flask", "build-3/app");
    std::fs::write(
        third.join("requirements.txt"),
        "flask==3.0.3\ngunicorn==23.0.0\nitsdangerous\n",
    )
    .expect("write");
    let (_, text) = build(&site.spec(&third)).await.ok();
    assert!(text.contains("Installing dependencies"), "{text}");
    assert!(!text.contains("Using cached dependencies"), "{text}");
}

#[tokio::test]
async fn django_collectstatic_runs_with_config_vars_and_its_failure_fails_the_build() {
    let site = Site::new();
    let app = site.source("django", "b1/app");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert_eq!(
        compiled.process_types["web"],
        "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT"
    );
    assert!(
        text.contains("python manage.py collectstatic --noinput"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("staticfiles/site.css")).expect("collected css"),
        "body { color: #0a7; }\n"
    );

    // Config vars reach collectstatic (through ENV_DIR): this one breaks the settings.
    let broken = site.source("django", "b2/app");
    let mut spec = site.spec(&broken);
    spec.env.insert("BREAK_COLLECTSTATIC".into(), "1".into());
    let (err, text) = build(&spec).await.err();
    match &err {
        BuildError::BuildpackFailed {
            buildpack,
            phase: Phase::Compile,
            output,
            ..
        } => {
            assert_eq!(buildpack, "python");
            let output = output.join("\n");
            assert!(output.contains("STATIC_ROOT"), "{output}");
            assert!(output.contains("collectstatic failed"), "{output}");
        }
        other => panic!("unexpected error {other}\n{text}"),
    }
    assert!(text.contains("Using cached dependencies"), "{text}");
    // The failed build had the cached virtualenv moved into it: the cache has it back by the
    // time the build ends (the server ends a build's leftover processes right after it).
    assert!(site.path("cache/python/venv/bin").is_dir(), "{text}");
    assert!(!site.path("cache/python/venv.partial").exists(), "{text}");

    let skipped = site.source("django", "b3/app");
    let mut spec = site.spec(&skipped);
    spec.env.insert("BREAK_COLLECTSTATIC".into(), "1".into());
    spec.env.insert("DISABLE_COLLECTSTATIC".into(), "1".into());
    let (_, text) = build(&spec).await.ok();
    assert!(text.contains("Skipping Django collectstatic"), "{text}");
    assert!(text.contains("Using cached dependencies"), "{text}");
    assert!(!skipped.join("staticfiles").exists());
}

#[tokio::test]
async fn express_app_installs_with_npm_ci_builds_prunes_and_rebuilds_from_cache() {
    let site = Site::new();
    let app = site.source("express", "b1/app");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert_eq!(compiled.buildpacks, ["nodejs"]);
    assert_eq!(
        compiled.process_types["web"], "npm start",
        "the buildpack's default"
    );
    assert!(!compiled.has_procfile);
    assert!(text.contains("-----> Node.js app detected"), "{text}");
    // engines.node is advisory: a warning naming both, and the build goes on.
    assert!(
        text.contains(r#"asks for Node.js ">=99""#) && text.contains("/usr/bin/node"),
        "{text}"
    );
    assert!(app.join("node_modules/express/package.json").is_file());
    assert!(
        !app.join("node_modules/is-number").exists(),
        "dev dependencies are pruned"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("build-output.txt")).expect("build script ran"),
        "built with production"
    );
    let out = in_dyno(
        &app,
        "node -e \"require('express'); console.log(process.env.NODE_ENV)\"",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("production"),
        "{out:?}"
    );

    let again = site.source("express", "b2/app");
    let (_, text) = build(&site.spec(&again)).await.ok();
    assert!(
        text.contains("-----> Using cached dependencies (package-lock.json unchanged)"),
        "{text}"
    );
    assert!(!text.contains("Installing dependencies"), "{text}");
    assert!(again.join("node_modules/express/package.json").is_file());
    assert!(!again.join("node_modules/is-number").exists());
}

#[tokio::test]
async fn static_site_is_served_by_its_default_web_process() {
    let site = Site::new();
    let app = site.source("static-site", "b1/app");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert_eq!(compiled.buildpacks, ["static"]);
    assert!(text.contains("Static HTML app detected"), "{text}");
    assert!(
        text.contains("-----> Removed 1 paths listed in .slugignore"),
        "{text}"
    );
    assert!(!app.join("design.psd").exists() && app.join("style.css").exists());
    let web = compiled.process_types["web"].clone();

    let slug = site.path("slug.tgz");
    let (tx, mut rx) = mpsc::channel(8);
    let info = slipway_build::pack_slug(&app, &slug, &slipway_build::Limits::default(), &tx)
        .await
        .expect("slug");
    drop(tx);
    let mut said = Vec::new();
    while let Some(e) = rx.recv().await {
        said.extend(e.line().map(str::to_string));
    }
    assert_eq!(said[0], "-----> Compressing...");
    assert_eq!(
        said[1],
        format!(
            "       Done: {}",
            slipway_build::pipeline::human_size(info.size)
        )
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dyno = site.path("dyno");
    slipway_build::unpack_slug(&slug, &info.checksum, &dyno).expect("unpack");
    let mut server = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&web)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PORT", port.to_string())
        .current_dir(dyno.join("app"))
        .kill_on_drop(true)
        .spawn()
        .expect("start web");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, _, body) = slipway_testkit::wait_until(30, "the static server", || async {
        let r = slipway_testkit::http_async(addr, "GET", "/", &[], None).await;
        (r.0 != 0).then_some(r)
    })
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("Hello from a static site"), "{body}");
    let (status, _, body) = slipway_testkit::http_async(addr, "GET", "/style.css", &[], None).await;
    assert_eq!((status, body.as_str()), (200, "h1 { color: #333; }\n"));
    for hidden in ["/.slipway/static/server.py", "/.profile.d/", "/.slipway/"] {
        let (status, _, _) = slipway_testkit::http_async(addr, "GET", hidden, &[], None).await;
        assert_eq!(status, 404, "{hidden}");
    }
    server.kill().await.expect("kill");
}

#[tokio::test]
async fn custom_buildpack_from_a_local_git_repository_is_fetched_once() {
    let site = Site::new();
    let repo = site.path("bp-repo");
    custom_buildpack(
        &repo,
        "echo '-----> Custom compile'; echo \"cache=$2\"; ls \"$3\"; cat \"$3/GREETING\" > \"$1/greeting.txt\"",
        "./greet",
    );
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "v1"]);
    git(&["tag", "v1"]);
    // A later commit that must not be used: the entry pins v1.
    write_exe(
        &repo.join("bin/compile"),
        "#!/bin/sh\necho wrong version; exit 1\n",
    );
    git(&["commit", "-qam", "v2"]);

    let app = site.source("static-site", "b1/app");
    let url = format!("file://{}#v1", repo.display());
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![url.clone()];
    spec.env
        .insert("GREETING".into(), "hello from ENV_DIR".into());
    let (compiled, text) = build(&spec).await.ok();
    assert_eq!(compiled.buildpacks, std::slice::from_ref(&url));
    assert_eq!(compiled.process_types["web"], "./greet");
    assert!(
        text.contains(&format!("-----> Fetching buildpack {url}")),
        "{text}"
    );
    assert!(text.contains("-----> Custom app detected"), "{text}");
    assert!(text.contains("-----> Custom compile"), "{text}");
    assert!(
        text.contains(&format!("cache={}", site.path("cache").display())),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "GREETING"),
        "ENV_DIR holds one file per var: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("greeting.txt")).expect("compiled"),
        "hello from ENV_DIR"
    );

    let again = site.source("static-site", "b2/app");
    let mut spec = site.spec(&again);
    spec.buildpacks = vec![url.clone()];
    spec.env.insert("GREETING".into(), "again".into());
    // The Procfile wins over the buildpack's defaults; both are kept.
    std::fs::write(
        again.join("Procfile"),
        "web: ./from-procfile\nworker: ./work\n",
    )
    .expect("write");
    let (compiled, text) = build(&spec).await.ok();
    assert_eq!(
        compiled.process_types,
        BTreeMap::from([
            ("web".to_string(), "./from-procfile".to_string()),
            ("worker".to_string(), "./work".to_string())
        ])
    );
    assert!(
        text.contains(&format!("-----> Using buildpack {url} (fetched before)")),
        "{text}"
    );
    assert!(!text.contains("Fetching buildpack"), "{text}");

    let mut spec = site.spec(&again);
    spec.buildpacks = vec![format!("file://{}#no-such-tag", repo.display())];
    let (err, _) = build(&spec).await.err();
    assert!(matches!(err, BuildError::FetchFailed { .. }), "{err}");
}

#[tokio::test]
async fn a_failing_compile_fails_the_build_with_its_output() {
    let site = Site::new();
    let bp = site.path("failing-bp");
    custom_buildpack(
        &bp,
        "echo '-----> Doing things'; echo 'boom: the widget is missing' >&2; echo 'giving up'; exit 3",
        "x",
    );
    let app = site.source("static-site", "b1/app");
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![bp.display().to_string()];
    let outcome = build(&spec).await;
    let finished: Vec<_> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::PhaseFinished { phase, success, .. } => Some((*phase, *success)),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [(Phase::Detect, true), (Phase::Compile, false)]);
    let (err, text) = outcome.err();
    assert!(text.contains("boom: the widget is missing"), "{text}");
    match err {
        BuildError::BuildpackFailed {
            buildpack,
            phase: Phase::Compile,
            status,
            output,
        } => {
            assert_eq!(buildpack, bp.display().to_string());
            assert_eq!(status, "exit status 3");
            // stdout and stderr share one pipe: the lines come in the order they were written.
            assert_eq!(
                output,
                [
                    "-----> Doing things",
                    "boom: the widget is missing",
                    "giving up"
                ]
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn a_python_version_that_is_not_installed_is_refused_naming_it_and_the_installed_ones() {
    let site = Site::new();
    let app = site.source("flask", "b1/app");
    std::fs::write(app.join("runtime.txt"), "python-3.9.18\n").expect("write");
    let outcome = build(&site.spec(&app)).await;
    let compiled_ran = outcome.events.iter().any(|e| {
        matches!(
            e,
            BuildEvent::PhaseStarted {
                phase: Phase::Compile,
                ..
            }
        )
    });
    let (err, text) = outcome.err();
    let message = err.to_string();
    assert!(
        matches!(err, BuildError::RuntimeNotInstalled { .. }),
        "{message}"
    );
    assert!(
        message.contains("runtime.txt") && message.contains("python-3.9.18"),
        "{message}"
    );
    assert!(
        message.contains("3.11."),
        "names the installed versions: {message}"
    );
    assert!(!compiled_ran, "refused before compiling: {text}");

    // A runtimes directory the operator filled counts as installed.
    let runtimes = site.path("runtimes");
    let fake = runtimes.join("python-3.9.2/bin/python3");
    std::fs::create_dir_all(fake.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink("/usr/bin/python3", &fake).expect("symlink");
    let mut spec = site.spec(&app);
    spec.runtimes_dirs = vec![runtimes.clone()];
    spec.buildpacks = vec!["heroku/python".into()];
    std::fs::write(app.join("requirements.txt"), "").expect("write");
    let (_, text) = build(&spec).await.ok();
    assert!(
        text.contains(&format!(
            "Using Python 3.9.2 ({}): runtime.txt asks for python-3.9.18",
            fake.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("asks for Python 3.9.18, which is not installed; using Python 3.9.2"),
        "{text}"
    );
}

#[tokio::test]
async fn nothing_detected_names_what_each_buildpack_looks_for_and_a_procfile_alone_is_enough() {
    let site = Site::new();
    let app = site.path("b1/app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(app.join("README"), "nothing to build").expect("write");
    let (err, _) = build(&site.spec(&app)).await.err();
    let message = err.to_string();
    assert!(matches!(err, BuildError::NotDetected { .. }), "{message}");
    for file in [
        "requirements.txt",
        "package.json",
        "go.mod",
        "Cargo.toml",
        "index.html",
    ] {
        assert!(message.contains(file), "{file} in {message}");
    }

    std::fs::write(app.join("Procfile"), "web: ./serve\nworker: ./work\n").expect("write");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert!(compiled.buildpacks.is_empty());
    assert_eq!(compiled.process_types.len(), 2);
    assert!(
        text.contains("Procfile declares types     -> web, worker"),
        "{text}"
    );

    std::fs::write(app.join("Procfile"), "web ./serve\n").expect("write");
    let (err, _) = build(&site.spec(&app)).await.err();
    assert!(matches!(err, BuildError::Procfile(_)), "{err}");

    // A buildpack that ran but declares nothing, and no Procfile.
    std::fs::remove_file(app.join("Procfile")).expect("rm");
    std::fs::write(app.join("requirements.txt"), "").expect("write");
    let (err, _) = build(&site.spec(&app)).await.err();
    assert!(matches!(err, BuildError::NoProcessTypes { .. }), "{err}");
    assert!(err.to_string().contains("python"), "{err}");
}

#[tokio::test]
async fn the_time_limit_kills_the_whole_process_group() {
    let site = Site::new();
    let bp = site.path("slow-bp");
    let pidfile = site.path("child.pid");
    custom_buildpack(
        &bp,
        &format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        ),
        "x",
    );
    let app = site.source("static-site", "b1/app");
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![bp.display().to_string()];
    spec.timeout = Duration::from_secs(3);
    let (err, text) = build(&spec).await.err();
    assert!(
        matches!(
            err,
            BuildError::Timeout {
                phase: Phase::Compile,
                ..
            }
        ),
        "{err}\n{text}"
    );
    assert!(err.to_string().contains("3s"), "{err}");
    let pid = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .to_string();
    slipway_testkit::wait_for(10, "the background sleep to be killed", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    });
}

#[tokio::test]
async fn cancelling_stops_the_running_buildpack() {
    let site = Site::new();
    let bp = site.path("slow-bp");
    custom_buildpack(&bp, "echo waiting; sleep 300", "x");
    let app = site.source("static-site", "b1/app");
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![bp.display().to_string()];
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let started = std::time::Instant::now();
    let outcome = build_with(&spec, cancel, move |e| {
        if e.line() == Some("waiting") {
            trigger.cancel();
        }
    })
    .await;
    let (err, _) = outcome.err();
    assert!(matches!(err, BuildError::Cancelled), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn buildpacks_get_a_minimal_environment_and_can_run_as_another_user_with_a_memory_limit() {
    let site = Site::new();
    // The build user must be able to reach the directories.
    std::fs::set_permissions(site.root.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let bp = site.path("env-bp");
    custom_buildpack(
        &bp,
        "env | sort | cut -d= -f1 | tr '\\n' ' ' > \"$1/env.txt\"; id -u > \"$1/uid.txt\"; python3 -c 'bytearray(1024 * 1024 * 1024)' && echo allocated || echo 'allocation refused'",
        "x",
    );
    std::fs::set_permissions(&bp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let app = site.source("static-site", "b1/app");
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![bp.display().to_string()];
    spec.env.insert("SECRET_TOKEN".into(), "hunter2".into());
    spec.source_version = Some("abc123".into());
    spec.run_as = Some((65534, 65534));
    spec.memory_limit_bytes = Some(512 * 1024 * 1024);
    let (_, text) = build(&spec).await.ok();
    let env = std::fs::read_to_string(app.join("env.txt")).expect("env");
    let mut names: Vec<&str> = env.split_whitespace().collect();
    names.retain(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n));
    assert_eq!(
        names,
        ["HOME", "LANG", "PATH", "SOURCE_VERSION", "STACK"],
        "{env}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("uid.txt"))
            .expect("uid")
            .trim(),
        "65534"
    );
    assert!(text.contains("allocation refused"), "{text}");
    let meta = std::fs::metadata(site.path("cache")).expect("cache");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

#[test]
fn buildpack_choice_precedence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = BTreeMap::new();
    let none = slipway_build::resolve_buildpacks(&[], &env, dir.path()).expect("ok");
    assert!(none.is_empty());
    std::fs::write(
        dir.path().join(".buildpacks"),
        "# ours\nhttps://example.com/a.git#v1\n\nheroku/python\n",
    )
    .expect("write");
    let file = slipway_build::resolve_buildpacks(&[], &env, dir.path()).expect("ok");
    assert_eq!(file, ["https://example.com/a.git#v1", "heroku/python"]);
    env.insert("BUILDPACK_URL".into(), "https://example.com/b.git".into());
    let url = slipway_build::resolve_buildpacks(&[], &env, dir.path()).expect("ok");
    assert_eq!(url, ["https://example.com/b.git"]);
    let set = slipway_build::resolve_buildpacks(&["nodejs".into()], &env, dir.path()).expect("ok");
    assert_eq!(set, ["nodejs"]);

    use slipway_build::BuildpackRef;
    assert_eq!(
        BuildpackRef::parse("heroku/python").expect("builtin"),
        BuildpackRef::Builtin("python")
    );
    assert_eq!(
        BuildpackRef::parse("https://example.com/x.git#v2").expect("git"),
        BuildpackRef::Git {
            url: "https://example.com/x.git".into(),
            reference: Some("v2".into())
        }
    );
    for bad in [
        "ext::sh -c evil",
        "relative/path",
        "https://x/y.git#--upload-pack=evil",
    ] {
        assert!(BuildpackRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn purge_empties_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("python/venv")).expect("mkdir");
    std::fs::write(dir.path().join("python/venv.key"), "k").expect("write");
    slipway_build::purge_cache(dir.path()).expect("purge");
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    slipway_build::purge_cache(&dir.path().join("missing")).expect("missing is fine");
}

#[tokio::test]
async fn uv_project_installs_from_its_lockfile_with_uv_fetched_from_pypi_when_missing() {
    let site = Site::new();
    let app = site.source("uv-app", "b1/app");
    let (compiled, text) = build(&site.spec(&app)).await.ok();
    assert_eq!(compiled.buildpacks, ["python"]);
    assert!(
        text.contains("Installing dependencies from uv.lock with uv"),
        "{text}"
    );
    let moved = site.path("elsewhere/app");
    std::fs::create_dir_all(moved.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&app, &moved).expect("move");
    let out = in_dyno(
        &moved,
        "python -c 'import itsdangerous, sys; print(sys.prefix)'",
    );
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains(&moved.join(".slipway/venv").display().to_string()),
        "{out:?}"
    );

    let again = site.source("uv-app", "b2/app");
    let (_, text) = build(&site.spec(&again)).await.ok();
    assert!(
        text.contains("Using cached dependencies (pyproject.toml and uv.lock unchanged)"),
        "{text}"
    );
}

/// Go is built when a toolchain is on the build PATH; otherwise the error says what is missing.
#[tokio::test]
async fn go_module_builds_with_an_installed_toolchain_or_says_it_is_missing() {
    let site = Site::new();
    let app = site.source("go-app", "b1/app");
    let spec = site.spec(&app);
    let has_go = std::env::split_paths(slipway_build::pipeline::DEFAULT_PATH)
        .any(|d| d.join("go").is_file());
    let outcome = build(&spec).await;
    if has_go {
        let (compiled, _) = outcome.ok();
        assert_eq!(compiled.process_types["web"], "bin/hello");
        let out = std::process::Command::new(app.join("bin/hello"))
            .arg("--version")
            .output()
            .expect("run");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 1.0\n");
    } else {
        let (err, text) = outcome.err();
        assert!(matches!(err, BuildError::BuildpackFailed { .. }), "{err}");
        assert!(
            text.contains("go.mod found, but no Go toolchain is installed on this server"),
            "{text}"
        );
    }
}

/// A rustup toolchain is usable when the operator gives its PATH and RUSTUP_HOME.
#[tokio::test]
async fn rust_package_builds_its_binary_into_the_slug() {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        panic!("HOME is not set");
    };
    let cargo_bin = home.join(".cargo/bin");
    assert!(
        cargo_bin.join("cargo").is_file(),
        "these tests need cargo in {}",
        cargo_bin.display()
    );
    let site = Site::new();
    let app = site.source("rust-app", "b1/app");
    let mut spec = site.spec(&app);
    spec.extra_path = vec![cargo_bin];
    spec.extra_env.insert(
        "RUSTUP_HOME".into(),
        home.join(".rustup").display().to_string(),
    );
    let (compiled, text) = build(&spec).await.ok();
    assert_eq!(compiled.buildpacks, ["rust"]);
    assert_eq!(compiled.process_types["web"], "bin/hello-slipway", "{text}");
    let out = std::process::Command::new(app.join("bin/hello-slipway"))
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from Rust on slipway\n"
    );
    assert!(
        !app.join("target").exists(),
        "the build tree stays in the cache"
    );
}

/// The built-in Python buildpack works as an unprivileged build user.
#[tokio::test]
async fn python_builds_as_an_unprivileged_user() {
    let site = Site::new();
    std::fs::set_permissions(site.root.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let app = site.path("b1/app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(app.join("requirements.txt"), "itsdangerous==2.2.0\n").expect("write");
    std::fs::write(
        app.join("Procfile"),
        "worker: python -c 'import itsdangerous'\n",
    )
    .expect("write");
    let mut spec = site.spec(&app);
    spec.run_as = Some((65534, 65534));
    let (_, text) = build(&spec).await.ok();
    assert!(
        text.contains("Installing dependencies from requirements.txt"),
        "{text}"
    );
    let venv = std::fs::metadata(app.join(".slipway/venv")).expect("venv");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&venv), 65534);
    let out = in_dyno(&app, "python -c 'import itsdangerous'");
    assert!(out.status.success(), "{out:?}");
}

/// Classic buildpack API: what a buildpack writes to `$BP_DIR/export` is in the environment of
/// the buildpacks after it, and stays within its build (the buildpack's own directory, shared
/// by every build, is not written).
#[tokio::test]
async fn an_export_file_passes_environment_to_the_next_buildpack_and_only_in_its_build() {
    let site = Site::new();
    let first = site.path("first-bp");
    custom_buildpack(
        &first,
        r#"BP_DIR=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1/tools"
printf '#!/bin/sh\necho tool ran\n' > "$1/tools/made-by-first"
chmod +x "$1/tools/made-by-first"
printf 'export GREETING="hello from first"\nexport PATH=%q:"$PATH"\nexport HOME=/nowhere\nunset LANG\n' "$1/tools" > "$BP_DIR/export""#,
        "x",
    );
    let second = site.path("second-bp");
    custom_buildpack(
        &second,
        r#"{ echo "greeting=${GREETING:-unset}"; echo "lang=${LANG:-unset}"; echo "home=$HOME"; made-by-first; } > "$1/seen""#,
        "x",
    );
    let app = site.source("static-site", "b1/app");
    let mut spec = site.spec(&app);
    spec.buildpacks = vec![first.display().to_string(), second.display().to_string()];
    let (compiled, text) = build(&spec).await.ok();
    assert_eq!(compiled.buildpacks.len(), 2, "{text}");
    let seen = std::fs::read_to_string(app.join("seen")).expect("seen");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "greeting=hello from first", "{seen}");
    assert_eq!(
        lines[1], "lang=unset",
        "an export may unset a variable: {seen}"
    );
    assert!(
        lines[2].starts_with("home=/") && lines[2] != "home=/nowhere",
        "HOME stays the build's: {seen}"
    );
    assert_eq!(lines[3], "tool ran", "PATH from the export: {seen}");
    assert!(
        !first.join("export").exists(),
        "the shared buildpack directory was written"
    );

    // Another build with only the second buildpack: nothing of the first build's export.
    let other = site.source("static-site", "b2/app");
    let mut spec = site.spec(&other);
    spec.buildpacks = vec![second.display().to_string()];
    let (err, text) = build(&spec).await.err();
    assert!(matches!(err, BuildError::BuildpackFailed { .. }), "{err}");
    assert!(text.contains("made-by-first: command not found"), "{text}");
    let seen = std::fs::read_to_string(other.join("seen")).expect("seen");
    assert!(seen.starts_with("greeting=unset\n"), "{seen}");
}

/// Whether `tool` is on the buildpacks' PATH (these tests need a server without it).
fn on_build_path(tool: &str) -> bool {
    std::env::split_paths(slipway_build::pipeline::DEFAULT_PATH).any(|d| d.join(tool).exists())
}

/// A lockfile naming a package manager the server lacks fails the build with an error naming
/// the tool and how to fix it (before anything is installed).
#[tokio::test]
async fn a_lockfile_for_a_missing_package_manager_names_it_and_the_fix() {
    for (tool, lock) in [("yarn", "yarn.lock"), ("pnpm", "pnpm-lock.yaml")] {
        assert!(
            !on_build_path(tool),
            "this test needs a server without {tool} on {}",
            slipway_build::pipeline::DEFAULT_PATH
        );
        let site = Site::new();
        let app = site.source("express", "b1/app");
        std::fs::remove_file(app.join("package-lock.json")).expect("rm");
        std::fs::write(app.join(lock), "# lockfile\n").expect("write");
        let (err, text) = build(&site.spec(&app)).await.err();
        match &err {
            BuildError::BuildpackFailed {
                buildpack, output, ..
            } => {
                assert_eq!(buildpack, "nodejs");
                let output = output.join("\n");
                assert!(
                    output.contains(&format!(
                        "{lock} says this app uses {tool}, but {tool} is not installed on this server"
                    )),
                    "{output}"
                );
                assert!(output.contains("corepack enable"), "{output}");
                assert!(output.contains("package-lock.json instead"), "{output}");
            }
            other => panic!("unexpected error {other}\n{text}"),
        }
        assert!(!app.join("node_modules").exists(), "{text}");
    }
}

/// poetry.lock: poetry from the server, else from PyPI; when neither works the error names
/// poetry and the ways out. (PyPI is made unreachable for this build.)
#[tokio::test]
async fn a_poetry_lock_without_poetry_names_it_and_the_fix() {
    assert!(
        !on_build_path("poetry"),
        "this test needs a server without poetry on {}",
        slipway_build::pipeline::DEFAULT_PATH
    );
    let site = Site::new();
    let app = site.path("b1/app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(
        app.join("pyproject.toml"),
        "[tool.poetry]\nname = \"p\"\nversion = \"0.1.0\"\ndescription = \"\"\nauthors = []\n\n[tool.poetry.dependencies]\npython = \"^3.9\"\n",
    )
    .expect("write");
    std::fs::write(app.join("poetry.lock"), "# empty\n").expect("write");
    std::fs::write(app.join("Procfile"), "web: python -m http.server $PORT\n").expect("write");
    let mut spec = site.spec(&app);
    // A closed port: pip fails at once instead of reaching PyPI.
    spec.extra_env.extend([
        (
            "PIP_INDEX_URL".to_string(),
            "http://127.0.0.1:9/simple".to_string(),
        ),
        ("PIP_RETRIES".to_string(), "0".to_string()),
        ("PIP_TIMEOUT".to_string(), "2".to_string()),
    ]);
    let (err, text) = build(&spec).await.err();
    match &err {
        BuildError::BuildpackFailed {
            buildpack, output, ..
        } => {
            assert_eq!(buildpack, "python");
            let output = output.join("\n");
            assert!(
                output.contains("poetry.lock says this app uses poetry, which is not installed on this server, and installing it from PyPI failed"),
                "{output}"
            );
            assert!(output.contains("pipx install poetry"), "{output}");
            assert!(output.contains("poetry export"), "{output}");
        }
        other => panic!("unexpected error {other}\n{text}"),
    }
}

/// The previous build's release may still be giving the cache its files back (the API's cache
/// lock): detection runs meanwhile, and nothing touches the cache until the lock is free.
#[tokio::test]
async fn detection_runs_while_the_cache_is_busy_and_the_compile_waits_for_it() {
    let site = Site::new();
    let app = site.source("static-site", "b1/app");
    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let held = lock.clone().lock_owned().await;
    let mut spec = site.spec(&app);
    spec.cache_lock = Some(lock.clone());
    let (detected_tx, detected_rx) = tokio::sync::oneshot::channel();
    let mut detected_tx = Some(detected_tx);
    let build = tokio::spawn(async move {
        build_with(&spec, CancellationToken::new(), move |e| {
            if e.line().is_some_and(|l| l.contains("app detected")) {
                if let Some(tx) = detected_tx.take() {
                    let _ = tx.send(());
                }
            }
        })
        .await
    });
    // Detected while the lock is held; the cache directory is not even made yet.
    tokio::time::timeout(Duration::from_secs(120), detected_rx)
        .await
        .expect("detection happened while the cache was busy")
        .expect("detected");
    assert!(!site.path("cache").exists());
    drop(held);
    let (compiled, text) = build.await.expect("build task").ok();
    assert_eq!(compiled.buildpacks, ["static"]);
    let waiting = text
        .find("Waiting for the build cache...")
        .expect("the build said it waited");
    let detected = text.find("app detected").expect("detected");
    assert!(detected < waiting, "{text}");
    assert!(site.path("cache").is_dir());
}
