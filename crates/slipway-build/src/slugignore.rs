//! `.slugignore`: paths removed from the source before the buildpacks run (as on Heroku), so
//! they never reach the slug.
//!
//! One pattern per line; blank lines and `#` comments are skipped. A pattern without `/`
//! matches a file or directory name at any depth (`*.psd`); one with `/` matches from the root
//! (`/docs`, `spec/fixtures`). `*` and `?` do not cross `/`; `**` does. Symlinks are removed as
//! links, never followed; patterns with `..` are ignored.

use std::path::Path;

use crate::pipeline::read_source_file;
use crate::BuildError;

/// Applies the source's `.slugignore` (if any); returns how many paths were removed.
pub(crate) fn apply(build_dir: &Path) -> Result<usize, BuildError> {
    let Some(text) = read_source_file(build_dir, ".slugignore", 64 * 1024)? else {
        return Ok(0);
    };
    let patterns: Vec<Pattern> = text.lines().filter_map(Pattern::parse).collect();
    if patterns.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    walk(build_dir, "", &patterns, &mut removed)?;
    Ok(removed)
}

struct Pattern {
    glob: String,
    anchored: bool,
}

impl Pattern {
    fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.split('/').any(|p| p == "..") {
            return None;
        }
        let body = line.trim_end_matches('/');
        let anchored = body.contains('/');
        let glob = body.trim_start_matches('/').to_string();
        (!glob.is_empty()).then_some(Self { glob, anchored })
    }

    fn matches(&self, rel: &str, name: &str) -> bool {
        if self.anchored {
            glob(self.glob.as_bytes(), rel.as_bytes())
        } else {
            glob(self.glob.as_bytes(), name.as_bytes())
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let limit = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
            (0..=limit).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && glob(rest, tail)),
        [c, rest @ ..] => matches!(s, [d, tail @ ..] if d == c && glob(rest, tail)),
    }
}

fn walk(
    dir: &Path,
    prefix: &str,
    patterns: &[Pattern],
    removed: &mut usize,
) -> Result<(), BuildError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(BuildError::io("listing", dir))?
        .collect::<Result<_, _>>()
        .map_err(BuildError::io("listing", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(BuildError::io("reading", &path))?;
        if patterns.iter().any(|p| p.matches(&rel, &name)) {
            let result = if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(BuildError::io("removing (.slugignore)", &path))?;
            *removed += 1;
        } else if kind.is_dir() {
            walk(&path, &rel, patterns, removed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*.psd", b"a.psd"));
        assert!(!glob(b"*.psd", b"dir/a.psd"));
        assert!(glob(b"docs/**", b"docs/a/b"));
        assert!(glob(b"te?t", b"test"));
        assert!(!glob(b"te?t", b"te/t"));
    }

    #[test]
    fn removes_what_it_lists_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for f in [
            "keep.txt",
            "art/logo.psd",
            "logo.psd",
            "docs/guide.md",
            "src/docs/keep.md",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, "x").expect("write");
        }
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("victim.psd"), "x").expect("write");
        std::os::unix::fs::symlink(outside.path(), d.join("link")).expect("symlink");
        std::fs::write(d.join(".slugignore"), "# art\n*.psd\n/docs\n../keep.txt\n").expect("write");
        assert_eq!(apply(d).expect("apply"), 3);
        assert!(!d.join("logo.psd").exists() && !d.join("art/logo.psd").exists());
        assert!(!d.join("docs").exists());
        assert!(d.join("src/docs/keep.md").exists() && d.join("keep.txt").exists());
        assert!(
            outside.path().join("victim.psd").exists(),
            "symlinks are not followed"
        );
    }
}
