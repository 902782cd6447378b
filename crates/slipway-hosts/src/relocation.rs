//! Is a release relocatable? On a host it runs from `<path>/current` (really
//! `<path>/releases/<tag>`), never from the directory it was built in, so a file that names the
//! build directory (a virtualenv's console script with a shebang to the build's python, a
//! `pyvenv.cfg` `command =`, a generated config) breaks there, often only when that code path
//! runs. slipway's buildpacks rewrite or remove those (see slipway-build's README, "Relocatable
//! slugs"); this check is the deploy's guard: a release whose files still name a build
//! directory is refused before any host is touched, with the files listed.
//!
//! `.pyc` files are not looked at: the build path in them only shows in tracebacks.
//!
//! Build directories are `<data-dir>-builds/tmp/build-*` (slipway's own) and `/tmp/build_*`
//! (Heroku's and Dokku's herokuish), so those are the patterns looked for, plus any the caller
//! adds (the server adds its own builds directory).

use std::io::Read;
use std::path::Path;

/// Bytes read from one file; a build path sits in a header or a shebang, not deep in a blob.
const SCAN_BYTES_PER_FILE: u64 = 1024 * 1024;
/// Offending files listed in the error.
const MAX_LISTED: usize = 20;

/// The patterns every check looks for.
pub const BUILD_DIR_PATTERNS: [&str; 2] = ["-builds/tmp/build-", "/tmp/build_"];

#[derive(Debug, thiserror::Error)]
pub enum RelocationError {
    #[error("release {name} {tag} is not relocatable: {} the directory it was built in, so they would break when run from the target's path. Rebuild it with a buildpack that writes relocatable files (slipway's own do), or fix those files and import the release again", listed(.files))]
    NotRelocatable {
        name: String,
        tag: String,
        files: Vec<String>,
    },
    #[error("release {name} {tag} is not a readable gzipped tarball ({path}): {source}; import a .tgz of the release's directory")]
    Unreadable {
        name: String,
        tag: String,
        path: String,
        source: std::io::Error,
    },
}

/// "2 files (a, b)", at most [`MAX_LISTED`] named.
fn listed(files: &[String]) -> String {
    let shown = files[..files.len().min(MAX_LISTED)].join(", ");
    let more = if files.len() > MAX_LISTED {
        ", ..."
    } else {
        ""
    };
    match files.len() {
        1 => format!("1 file ({shown}) names"),
        n => format!("{n} files ({shown}{more}) name"),
    }
}

/// The files of the gzipped tarball at `path` that contain any of the patterns (the built-in
/// ones and `extra`), in archive order.
pub fn offending_files(path: &Path, extra: &[String]) -> std::io::Result<Vec<String>> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let mut patterns: Vec<&[u8]> = BUILD_DIR_PATTERNS.iter().map(|p| p.as_bytes()).collect();
    patterns.extend(extra.iter().filter(|p| p.len() > 1).map(|p| p.as_bytes()));
    let mut found = Vec::new();
    let mut buf = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let name = entry.path()?.display().to_string();
        let hit = if kind.is_symlink() || kind.is_hard_link() {
            entry
                .link_name_bytes()
                .is_some_and(|target| patterns.iter().any(|p| contains(&target, p)))
        } else if kind.is_file() && !name.ends_with(".pyc") {
            // Compiled Python keeps its source's path only for tracebacks (`co_filename`); the
            // bytecode is checked against the source's size and time, never its path.
            buf.clear();
            (&mut entry)
                .take(SCAN_BYTES_PER_FILE)
                .read_to_end(&mut buf)?;
            patterns.iter().any(|p| contains(&buf, p))
        } else {
            false
        };
        if hit {
            found.push(name);
        }
    }
    Ok(found)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Refuses `release` if any of its files names a build directory.
pub fn check(
    release: &slipway_store::release_store::StoredRelease,
    extra: &[String],
) -> Result<(), RelocationError> {
    let files = offending_files(Path::new(&release.path), extra).map_err(|source| {
        RelocationError::Unreadable {
            name: release.name.clone(),
            tag: release.tag.clone(),
            path: release.path.clone(),
            source,
        }
    })?;
    if files.is_empty() {
        Ok(())
    } else {
        Err(RelocationError::NotRelocatable {
            name: release.name.clone(),
            tag: release.tag.clone(),
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, files: &[(&str, &str)], links: &[(&str, &str)]) -> std::path::PathBuf {
        let path = dir.join("r.tgz");
        let file = std::fs::File::create(&path).expect("create");
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes()).expect("add");
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, name, target).expect("link");
        }
        b.into_inner().expect("tar").finish().expect("gzip");
        path
    }

    #[test]
    fn build_paths_in_scripts_and_links_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = tarball(
            dir.path(),
            &[
                ("app/server.py", "print('hello')\n"),
                (
                    "app/.venv/bin/gunicorn",
                    "#!/var/lib/slipway-builds/tmp/build-x1/.venv/bin/python\nimport x\n",
                ),
                ("app/conf", "root = /srv/own/path\n"),
                (
                    "app/__pycache__/m.cpython-311.pyc",
                    "\0\0/var/lib/slipway-builds/tmp/build-x1/m.py",
                ),
            ],
            &[("app/.venv/lib64", "/tmp/build_abc/.venv/lib")],
        );
        assert_eq!(
            offending_files(&path, &[]).expect("scan"),
            ["app/.venv/bin/gunicorn", "app/.venv/lib64"]
        );
        assert_eq!(
            offending_files(&path, &["/srv/own".into()])
                .expect("scan")
                .len(),
            3
        );
        let clean = tempfile::tempdir().expect("tempdir");
        let ok = tarball(
            clean.path(),
            &[("app/.venv/bin/gunicorn", "#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/python \"$0\" \"$@\"\n' '''\n")],
            &[("app/.venv/bin/python", "/usr/bin/python3")],
        );
        assert!(offending_files(&ok, &[]).expect("scan").is_empty());
    }
}
