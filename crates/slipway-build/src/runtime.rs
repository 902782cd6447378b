//! Runtime versions, resolved the way each ecosystem says, against the interpreters installed
//! on the server: in the operator's runtimes directories (`<dir>/python-3.12.1/bin/python3`,
//! `<dir>/node-20.11.0/bin/node`) and on the buildpacks' PATH.
//!
//! Python: `runtime.txt` (`python-3.11.4`) or `.python-version` (`3.11`) must match an installed
//! interpreter by major.minor; another patch level is used with a notice naming both; no match
//! fails the build naming what was asked and what is installed. Node.js: `engines.node` in
//! package.json is advisory (as in npm): a range the installed Node.js does not satisfy gives a
//! warning naming both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::pipeline::read_source_file;
use crate::BuildError;

/// An interpreter found on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: (u64, u64, u64),
    /// The executable (`.../bin/python3`, `.../bin/node`).
    pub path: PathBuf,
}

impl Installed {
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.version_string(), self.path.display())
    }
}

/// The choice made, and why, in words for the build output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub installed: Installed,
    pub reason: String,
    /// A notice to show as a warning (a different patch level, an unmet engines range).
    pub warning: Option<String>,
}

/// Parses `3`, `3.11`, `3.11.4` (with an optional `v`) into numbers.
fn parse_version(text: &str) -> Option<(u64, Option<u64>, Option<u64>)> {
    let text = text.trim().trim_start_matches('v');
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map(str::parse).transpose().ok()?;
    let patch = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// What the app asks for: the file, its text, and the version in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonRequest {
    pub file: &'static str,
    pub requested: String,
    pub major: u64,
    pub minor: u64,
    pub patch: Option<u64>,
}

pub fn python_request(build_dir: &Path) -> Result<Option<PythonRequest>, BuildError> {
    for file in ["runtime.txt", ".python-version"] {
        let Some(text) = read_source_file(build_dir, file, 1024)? else {
            continue;
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("")
            .to_string();
        let version = if file == "runtime.txt" {
            line.strip_prefix("python-")
        } else {
            Some(line.as_str())
        };
        let parsed = version.and_then(parse_version);
        let Some((major, Some(minor), patch)) = parsed else {
            return Err(BuildError::BadRuntimeFile {
                file,
                found: line.chars().take(80).collect(),
                expected: if file == "runtime.txt" {
                    "python-3.12.1 or python-3.12"
                } else {
                    "3.12 or 3.12.1"
                },
            });
        };
        return Ok(Some(PythonRequest {
            file,
            requested: line,
            major,
            minor,
            patch,
        }));
    }
    Ok(None)
}

/// Every Python 3 interpreter installed: `<runtimes>/python-X.Y.Z/bin/python3`, then
/// `python3.N` on `path_dirs` (whose patch level is asked from the interpreter).
pub async fn installed_pythons(runtimes_dirs: &[PathBuf], path_dirs: &[PathBuf]) -> Vec<Installed> {
    let mut found = from_runtimes_dirs(runtimes_dirs, "python-", "bin/python3");
    for dir in path_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix("python3.").is_some_and(|minor| {
                    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
                })
            })
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if let Some(version) = ask_version(
                &path,
                &["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            )
            .await
            {
                push_unique(&mut found, Installed { version, path });
            }
        }
    }
    found
}

/// Every Node.js installed: `<runtimes>/node-X.Y.Z/bin/node`, then `node` on `path_dirs`.
pub async fn installed_nodes(runtimes_dirs: &[PathBuf], path_dirs: &[PathBuf]) -> Vec<Installed> {
    let mut found = from_runtimes_dirs(runtimes_dirs, "node-", "bin/node");
    for dir in path_dirs {
        let path = dir.join("node");
        if path.is_file() {
            if let Some(version) = ask_version(&path, &["--version"]).await {
                push_unique(&mut found, Installed { version, path });
            }
        }
    }
    found
}

fn push_unique(found: &mut Vec<Installed>, candidate: Installed) {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let c = canonical(&candidate.path);
    if !found.iter().any(|f| canonical(&f.path) == c) {
        found.push(candidate);
    }
}

fn from_runtimes_dirs(dirs: &[PathBuf], prefix: &str, exe: &str) -> Vec<Installed> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut list: Vec<Installed> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (major, minor, patch) = parse_version(name.strip_prefix(prefix)?)?;
                let path = e.path().join(exe);
                path.is_file().then(|| Installed {
                    version: (major, minor.unwrap_or(0), patch.unwrap_or(0)),
                    path,
                })
            })
            .collect();
        list.sort_by_key(|i| std::cmp::Reverse(i.version));
        found.extend(list);
    }
    found
}

/// What an executable said its version was, by the file it was (device, inode, size, change
/// time): asked once per installed interpreter, not once per build. A replaced or upgraded
/// interpreter is another file, and is asked again.
type VersionKey = (PathBuf, u64, u64, u64, i64, i64);
type Versions = HashMap<VersionKey, (u64, u64, u64)>;
static VERSIONS: std::sync::Mutex<Option<Versions>> = std::sync::Mutex::new(None);

async fn ask_version(exe: &Path, args: &[&str]) -> Option<(u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(exe).ok().map(|m| {
        (
            exe.to_path_buf(),
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
        )
    });
    let known = |key: &VersionKey| {
        let versions = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
        versions.as_ref().and_then(|v| v.get(key).copied())
    };
    if let Some(version) = key.as_ref().and_then(known) {
        return Some(version);
    }
    let version = run_for_version(exe, args).await?;
    if let Some(key) = key {
        let mut versions = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
        versions
            .get_or_insert_with(HashMap::new)
            .insert(key, version);
    }
    Some(version)
}

async fn run_for_version(exe: &Path, args: &[&str]) -> Option<(u64, u64, u64)> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::process::Command::new(exe)
            .args(args)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (a, b, c) = parse_version(text.trim())?;
    Some((a, b?, c.unwrap_or(0)))
}

/// Chooses the Python interpreter for `request` among `installed`.
pub fn choose_python(
    request: Option<&PythonRequest>,
    installed: &[Installed],
) -> Result<Option<Chosen>, BuildError> {
    let Some(req) = request else {
        let newest = installed.iter().max_by_key(|i| i.version);
        return Ok(newest.map(|i| Chosen {
            installed: i.clone(),
            reason: "no runtime.txt or .python-version; the newest installed Python".into(),
            warning: None,
        }));
    };
    let same_minor = installed
        .iter()
        .filter(|i| i.version.0 == req.major && i.version.1 == req.minor);
    let exact = req.patch.and_then(|p| {
        installed
            .iter()
            .find(|i| i.version == (req.major, req.minor, p))
    });
    let Some(pick) = exact.or_else(|| same_minor.max_by_key(|i| i.version)) else {
        return Err(BuildError::RuntimeNotInstalled {
            runtime: "Python",
            requested: req.requested.clone(),
            file: req.file,
            available: installed.iter().map(Installed::describe).collect(),
        });
    };
    let warning = match req.patch {
        Some(p) if p != pick.version.2 => Some(format!(
            "{} asks for Python {}.{}.{p}, which is not installed; using Python {} instead (same {}.{})",
            req.file,
            req.major,
            req.minor,
            pick.version_string(),
            req.major,
            req.minor
        )),
        _ => None,
    };
    Ok(Some(Chosen {
        installed: pick.clone(),
        reason: format!("{} asks for {}", req.file, req.requested),
        warning,
    }))
}

/// `engines.node` from package.json, if any.
pub fn node_engines(build_dir: &Path) -> Result<Option<String>, BuildError> {
    let Some(text) = read_source_file(build_dir, "package.json", 1024 * 1024)? else {
        return Ok(None);
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BuildError::BadPackageJson(e.to_string()))?;
    Ok(json
        .get("engines")
        .and_then(|e| e.get("node"))
        .and_then(|v| v.as_str())
        .map(|s| s.trim().to_string()))
}

/// Whether `version` satisfies the npm range `range` (`>=18 <21`, `^20.1`, `18.x`, `16 || 18`,
/// `1.2 - 2`). `None`: the range could not be understood.
pub fn satisfies(range: &str, version: (u64, u64, u64)) -> Option<bool> {
    let v = semver::Version::new(version.0, version.1, version.2);
    let range = range.trim();
    if range.is_empty() || range == "*" || range == "latest" {
        return Some(true);
    }
    let mut any = false;
    for alternative in range.split("||") {
        let words: Vec<&str> = alternative.split_whitespace().collect();
        let comparators: Vec<String> = match words.as_slice() {
            [low, "-", high] => vec![format!(">={low}"), format!("<={high}")],
            _ => {
                // `>= 18` is one comparator written as two words.
                let mut out: Vec<String> = Vec::new();
                let mut pending = String::new();
                for w in words {
                    if w.chars().all(|c| "<>=~^".contains(c)) {
                        pending.push_str(w);
                    } else {
                        out.push(format!("{pending}{w}"));
                        pending.clear();
                    }
                }
                out
            }
        };
        if comparators.is_empty() {
            return None;
        }
        let req = semver::VersionReq::parse(&comparators.join(", ")).ok()?;
        any |= req.matches(&v);
    }
    Some(any)
}

/// Chooses Node.js: the newest installed that satisfies `engines`, else the newest, with a
/// warning naming both.
pub fn choose_node(engines: Option<&str>, installed: &[Installed]) -> Option<Chosen> {
    let newest = installed.iter().max_by_key(|i| i.version)?;
    let Some(range) = engines else {
        return Some(Chosen {
            installed: newest.clone(),
            reason: "no engines.node in package.json; the newest installed Node.js".into(),
            warning: None,
        });
    };
    let fitting = installed
        .iter()
        .filter(|i| satisfies(range, i.version) == Some(true))
        .max_by_key(|i| i.version);
    Some(match (fitting, satisfies(range, newest.version)) {
        (Some(fit), _) => Chosen {
            installed: fit.clone(),
            reason: format!("package.json engines.node is {range:?}"),
            warning: None,
        },
        (None, None) => Chosen {
            installed: newest.clone(),
            reason: "the newest installed Node.js".into(),
            warning: Some(format!(
                "package.json engines.node {range:?} is not a range slipway understands; building with Node.js {} anyway",
                newest.version_string()
            )),
        },
        (None, Some(_)) => Chosen {
            installed: newest.clone(),
            reason: "the newest installed Node.js".into(),
            warning: Some(format!(
                "package.json asks for Node.js {range:?} (engines.node) but the installed Node.js is {}; building with it anyway (install a matching one in a runtimes directory as node-<version>/)",
                installed
                    .iter()
                    .map(Installed::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(v: (u64, u64, u64)) -> Installed {
        Installed {
            version: v,
            path: PathBuf::from(format!("/opt/python-{}.{}.{}/bin/python3", v.0, v.1, v.2)),
        }
    }

    fn req(major: u64, minor: u64, patch: Option<u64>) -> PythonRequest {
        PythonRequest {
            file: "runtime.txt",
            requested: format!(
                "python-{major}.{minor}{}",
                patch.map(|p| format!(".{p}")).unwrap_or_default()
            ),
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn python_matches_by_major_minor_and_names_a_patch_difference() {
        let installed = [py((3, 11, 2)), py((3, 12, 1))];
        let exact = choose_python(Some(&req(3, 12, Some(1))), &installed)
            .expect("ok")
            .expect("chosen");
        assert_eq!(exact.installed.version, (3, 12, 1));
        assert_eq!(exact.warning, None);
        let near = choose_python(Some(&req(3, 11, Some(4))), &installed)
            .expect("ok")
            .expect("chosen");
        assert_eq!(near.installed.version, (3, 11, 2));
        let warning = near.warning.expect("a notice naming both");
        assert!(
            warning.contains("3.11.4") && warning.contains("3.11.2"),
            "{warning}"
        );
        let err = choose_python(Some(&req(3, 9, None)), &installed).expect_err("3.9 missing");
        let text = err.to_string();
        assert!(
            text.contains("python-3.9") && text.contains("3.11.2") && text.contains("3.12.1"),
            "{text}"
        );
        let default = choose_python(None, &installed)
            .expect("ok")
            .expect("chosen");
        assert_eq!(default.installed.version, (3, 12, 1));
    }

    #[test]
    fn runtime_files_are_read_and_bad_ones_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(python_request(dir.path()).expect("none"), None);
        std::fs::write(dir.path().join(".python-version"), "# pinned\n3.11\n").expect("write");
        let r = python_request(dir.path()).expect("ok").expect("some");
        assert_eq!(
            (r.file, r.major, r.minor, r.patch),
            (".python-version", 3, 11, None)
        );
        std::fs::write(dir.path().join("runtime.txt"), "python-3.12.1\n").expect("write");
        let r = python_request(dir.path()).expect("ok").expect("some");
        assert_eq!(
            (r.file, r.major, r.minor, r.patch),
            ("runtime.txt", 3, 12, Some(1))
        );
        std::fs::write(dir.path().join("runtime.txt"), "ruby-3.2\n").expect("write");
        let err = python_request(dir.path()).expect_err("bad");
        assert!(err.to_string().contains("ruby-3.2"), "{err}");
    }

    #[test]
    fn npm_ranges() {
        assert_eq!(satisfies(">=18 <21", (20, 1, 0)), Some(true));
        assert_eq!(satisfies(">=18 <21", (22, 0, 0)), Some(false));
        assert_eq!(satisfies(">= 18", (20, 0, 0)), Some(true));
        assert_eq!(satisfies("18.x", (20, 0, 0)), Some(false));
        assert_eq!(satisfies("16 || 20", (20, 3, 1)), Some(true));
        assert_eq!(satisfies("^22.1", (20, 3, 1)), Some(false));
        assert_eq!(satisfies("18 - 20", (20, 3, 1)), Some(true));
        assert_eq!(satisfies("not a range", (20, 3, 1)), None);
        let node = Installed {
            version: (20, 20, 2),
            path: PathBuf::from("/usr/bin/node"),
        };
        let c = choose_node(Some(">=22"), std::slice::from_ref(&node)).expect("chosen");
        let w = c.warning.expect("warned");
        assert!(w.contains(">=22") && w.contains("20.20.2"), "{w}");
        let c = choose_node(Some("20.x"), &[node]).expect("chosen");
        assert_eq!(c.warning, None);
    }
}
