//! Real apps, unmodified, built by `git push` with the buildpacks and served through the
//! router: a Flask app and a Django app from PyPI, an Express app from npm, a static site, a
//! custom buildpack from a git repository; failures that reject the push and keep the old
//! release serving. These install real packages from PyPI and npm. Builds run in the OCI
//! sandbox (real runc), as on a production server.

mod support;

use std::path::{Path, PathBuf};

use support::{text, wait_for, Server};

/// A git repository holding a copy of `tests/apps/<app>`, committed on main.
fn app_repo(server: &Server, app: &str, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(app);
    let dir = server.root.path().join(name);
    copy_dir(&src, &dir);
    server.git_ok(&dir, &["init", "-q", "-b", "main"]);
    server.commit_all(&dir, "initial");
    dir
}

fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dest)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copying {}", src.display());
}

/// A server whose dynos, and so builds, run in runc containers.
fn oci_server() -> Server {
    Server::start_with(&["--dyno-runtime", "oci"])
}

fn push_ok(server: &Server, repo: &Path) -> String {
    let out = server.git(repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(out.status.success(), "push failed:\n{said}");
    assert!(said.contains("Building in a container: oci"), "{said}");
    said
}

fn page(server: &Server, app: &str, path: &str, needle: &str) -> String {
    wait_for(90, &format!("{app}{path} to show {needle:?}"), || {
        let (status, body) = server.app_get(app, path);
        (status == 200 && body.contains(needle)).then_some(body)
    })
}

#[test]
fn a_flask_app_builds_from_pypi_and_a_redeploy_reuses_its_dependencies() {
    let server = oci_server();
    let repo = app_repo(&server, "flask", "flask-src");
    server.cli_ok(&repo, &["apps:create", "flasky"]);
    let said = push_ok(&server, &repo);
    assert!(said.contains("Released v1"), "{said}");
    assert!(said.contains("requirements.txt"), "{said}");
    page(&server, "flasky", "/", "Hello from Flask on slipway");

    // Only the code changes: the dependencies come from the cache, and the new code serves.
    let app_py = repo.join("app.py");
    let source = std::fs::read_to_string(&app_py).expect("read");
    std::fs::write(&app_py, source.replace("'Hello'", "'Howdy'")).expect("write");
    server.commit_all(&repo, "greet differently");
    let said = push_ok(&server, &repo);
    assert!(said.contains("Using cached dependencies"), "{said}");
    // The build and its cache are on one file system: nothing of the virtualenv is copied.
    assert!(
        said.contains("virtualenv restored from the cache by a move"),
        "{said}"
    );
    assert!(!said.contains("Collecting flask"), "{said}");
    assert!(
        !said.contains("could not be kept in the build cache"),
        "{said}"
    );
    page(&server, "flasky", "/", "Howdy from Flask on slipway");

    // The virtualenv moved into that release, and the cache got it back: a third deploy
    // reuses it again.
    std::fs::write(&app_py, source.replace("'Hello'", "'Hi'")).expect("write");
    server.commit_all(&repo, "greet once more");
    let said = push_ok(&server, &repo);
    assert!(
        said.contains("virtualenv restored from the cache by a move"),
        "{said}"
    );
    assert!(!said.contains("Collecting flask"), "{said}");
    page(&server, "flasky", "/", "Hi from Flask on slipway");
}

#[test]
fn a_django_app_collects_the_static_files_its_page_links() {
    let server = oci_server();
    let repo = app_repo(&server, "django", "django-src");
    server.cli_ok(&repo, &["apps:create", "djangle"]);
    let said = push_ok(&server, &repo);
    assert!(said.contains("collectstatic --noinput"), "{said}");
    let body = page(&server, "djangle", "/", "Hello from Django");
    assert!(body.contains("href=\"/static/site.css\""), "{body}");
    page(&server, "djangle", "/static/site.css", "rebeccapurple");
}

#[test]
fn an_express_app_builds_with_npm_and_serves() {
    let server = oci_server();
    let repo = app_repo(&server, "express", "express-src");
    server.cli_ok(&repo, &["apps:create", "expressive"]);
    let said = push_ok(&server, &repo);
    assert!(said.contains("Running build"), "{said}");
    assert!(said.contains("Pruning devDependencies"), "{said}");
    page(&server, "expressive", "/", "Hello from Express on slipway");
}

#[test]
fn a_static_site_is_served() {
    let server = oci_server();
    let repo = app_repo(&server, "static", "static-src");
    server.cli_ok(&repo, &["apps:create", "staticky"]);
    push_ok(&server, &repo);
    page(&server, "staticky", "/", "A static site on slipway");
}

/// A buildpack in its own git repository, tagged `v1`.
fn buildpack_repo(server: &Server, name: &str, compile: Option<&str>) -> PathBuf {
    let dir = server.root.path().join(name);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/custom-buildpack"),
        &dir,
    );
    if let Some(script) = compile {
        std::fs::write(dir.join("bin/compile"), script).expect("write compile");
    }
    server.git_ok(&dir, &["init", "-q", "-b", "main"]);
    server.commit_all(&dir, "buildpack");
    server.git_ok(&dir, &["tag", "v1"]);
    dir
}

#[test]
fn a_custom_buildpack_from_git_builds_and_a_failing_one_keeps_the_old_release() {
    let server = oci_server();
    let good = buildpack_repo(&server, "hello-buildpack", None);
    let bad = buildpack_repo(
        &server,
        "broken-buildpack",
        Some("#!/bin/sh\necho '-----> Broken buildpack'\necho 'compile failed: no hello.cfg' >&2\nexit 1\n"),
    );
    let repo = server.repo_with(
        "custom-src",
        &[("hello.txt", "hello from a custom buildpack\n")],
    );
    server.cli_ok(&repo, &["apps:create", "custom"]);
    let url = format!("file://{}#v1", good.display());
    server.cli_ok(&repo, &["buildpacks:set", &url]);
    let listed = server.cli_ok(&repo, &["buildpacks"]);
    assert!(listed.contains(&url), "{listed}");
    let said = push_ok(&server, &repo);
    assert!(said.contains("Hello buildpack compiling"), "{said}");
    page(&server, "custom", "/", "HELLO FROM A CUSTOM BUILDPACK");

    server.cli_ok(
        &repo,
        &["buildpacks:set", &format!("file://{}#v1", bad.display())],
    );
    std::fs::write(repo.join("hello.txt"), "changed\n").expect("write");
    server.commit_all(&repo, "with the broken buildpack");
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("compile failed: no hello.cfg"), "{said}");
    assert!(said.contains("pre-receive hook declined"), "{said}");
    // The old release keeps serving, and no release was made.
    page(&server, "custom", "/", "HELLO FROM A CUSTOM BUILDPACK");
    let releases = server.cli_ok(&repo, &["releases"]);
    assert!(
        releases.contains("Current: v1") && !releases.contains("v2"),
        "{releases}"
    );

    server.cli_ok(&repo, &["buildpacks:clear"]);
    assert!(server
        .cli_ok(&repo, &["buildpacks"])
        .contains("no buildpacks set"));
}

#[test]
fn a_python_version_that_is_not_installed_is_refused_naming_it() {
    let server = oci_server();
    let repo = app_repo(&server, "flask", "old-python-src");
    std::fs::write(repo.join("runtime.txt"), "python-3.9.18\n").expect("write");
    server.commit_all(&repo, "asks for python 3.9");
    server.cli_ok(&repo, &["apps:create", "oldpy"]);
    let out = server.git(&repo, &["push", "slipway", "main"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("3.9"), "{said}");
    assert!(
        said.contains("3.11"),
        "the installed version is named: {said}"
    );
    let releases = server.cli_ok(&repo, &["releases"]);
    assert!(!releases.contains("v1"), "{releases}");
}
