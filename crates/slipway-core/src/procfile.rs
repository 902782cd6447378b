//! The Procfile: `type: command` lines naming the app's process types.
//!
//! Rules (Heroku's, made strict so mistakes surface at build time instead of at run time):
//! blank lines and lines starting with `#` are ignored; a process type is 1 to 63 ASCII letters,
//! digits, `_` or `-`; the command is everything after the first `:` with surrounding white
//! space trimmed and must not be empty; a type may appear only once. The file is at most
//! [`MAX_PROCFILE_BYTES`] and must be UTF-8.

use std::collections::BTreeMap;

pub const MAX_PROCFILE_BYTES: usize = 64 * 1024;
pub const MAX_PROCESS_TYPE_LEN: usize = 63;

/// Process types in file order are not significant; a `BTreeMap` keeps listings stable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Procfile {
    pub processes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    #[error("Procfile is {0} bytes; at most {MAX_PROCFILE_BYTES} are allowed")]
    TooLarge(usize),
    #[error("Procfile is not valid UTF-8")]
    NotUtf8,
    #[error("Procfile line {line}: expected `type: command`, found {text:?}")]
    Malformed { line: usize, text: String },
    #[error("Procfile line {line}: process type {name:?} must be 1-{MAX_PROCESS_TYPE_LEN} letters, digits, `_` or `-`")]
    BadType { line: usize, name: String },
    #[error("Procfile line {line}: process type {name:?} has an empty command")]
    EmptyCommand { line: usize, name: String },
    #[error(
        "Procfile line {line}: process type {name:?} is declared twice (first on line {first})"
    )]
    Duplicate {
        line: usize,
        first: usize,
        name: String,
    },
    #[error("Procfile declares no process types; add a line such as `web: ./server --port $PORT`")]
    Empty,
}

impl Procfile {
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ProcfileError> {
        if bytes.len() > MAX_PROCFILE_BYTES {
            return Err(ProcfileError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ProcfileError::NotUtf8)?;
        Self::parse(text)
    }

    pub fn parse(text: &str) -> Result<Self, ProcfileError> {
        if text.len() > MAX_PROCFILE_BYTES {
            return Err(ProcfileError::TooLarge(text.len()));
        }
        let mut processes = BTreeMap::new();
        let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(ProcfileError::Malformed {
                    line,
                    text: truncate(trimmed),
                });
            };
            let name = name.trim();
            let valid_name = !name.is_empty()
                && name.len() <= MAX_PROCESS_TYPE_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(ProcfileError::BadType {
                    line,
                    name: truncate(name),
                });
            }
            let command = command.trim();
            if command.is_empty() {
                return Err(ProcfileError::EmptyCommand {
                    line,
                    name: name.to_string(),
                });
            }
            if let Some(first) = first_seen.get(name) {
                return Err(ProcfileError::Duplicate {
                    line,
                    first: *first,
                    name: name.to_string(),
                });
            }
            first_seen.insert(name.to_string(), line);
            processes.insert(name.to_string(), command.to_string());
        }
        if processes.is_empty() {
            return Err(ProcfileError::Empty);
        }
        Ok(Self { processes })
    }

    /// Process types that run as dynos (`release` is the release phase, not a dyno).
    pub fn dyno_types(&self) -> impl Iterator<Item = (&String, &String)> {
        self.processes.iter().filter(|(name, _)| *name != "release")
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_types_comments_and_blank_lines() {
        let p = Procfile::parse(
            "# my app\r\nweb: ./server --port $PORT\n\n worker:  python w.py  \nrelease: ./migrate\n",
        )
        .expect("valid Procfile");
        assert_eq!(p.processes["web"], "./server --port $PORT");
        assert_eq!(p.processes["worker"], "python w.py");
        assert_eq!(p.processes["release"], "./migrate");
        let dynos: Vec<_> = p.dyno_types().map(|(n, _)| n.as_str()).collect();
        assert_eq!(dynos, ["web", "worker"]);
    }

    #[test]
    fn command_may_contain_colons() {
        let p = Procfile::parse("web: echo a:b http://x").expect("valid");
        assert_eq!(p.processes["web"], "echo a:b http://x");
    }

    #[test]
    fn reports_each_kind_of_mistake_with_its_line() {
        assert_eq!(
            Procfile::parse("web: a\nnonsense"),
            Err(ProcfileError::Malformed {
                line: 2,
                text: "nonsense".into()
            })
        );
        assert!(matches!(
            Procfile::parse("we b: x"),
            Err(ProcfileError::BadType { line: 1, .. })
        ));
        assert!(matches!(
            Procfile::parse("web:"),
            Err(ProcfileError::EmptyCommand { line: 1, .. })
        ));
        assert_eq!(
            Procfile::parse("web: a\n\nweb: b"),
            Err(ProcfileError::Duplicate {
                line: 3,
                first: 1,
                name: "web".into()
            })
        );
        assert_eq!(Procfile::parse("# nothing\n\n"), Err(ProcfileError::Empty));
        assert_eq!(
            Procfile::parse_bytes(&[0xff, 0xfe]),
            Err(ProcfileError::NotUtf8)
        );
        assert!(matches!(
            Procfile::parse_bytes(&vec![b'#'; MAX_PROCFILE_BYTES + 1]),
            Err(ProcfileError::TooLarge(_))
        ));
    }

    proptest! {
        /// Arbitrary input never panics, and whatever parses obeys the documented rules.
        #[test]
        fn never_panics_and_upholds_invariants(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(p) = Procfile::parse_bytes(&input) {
                prop_assert!(!p.processes.is_empty());
                for (name, command) in &p.processes {
                    prop_assert!(!name.is_empty() && name.len() <= MAX_PROCESS_TYPE_LEN);
                    prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                    prop_assert!(!command.is_empty());
                    prop_assert_eq!(command.trim(), command.as_str());
                }
            }
        }

        /// A Procfile rendered from valid entries parses back to the same entries.
        #[test]
        fn round_trips(entries in proptest::collection::btree_map("[A-Za-z0-9_-]{1,20}", "[!-~][ -~]{0,60}[!-~]", 1..8)) {
            let text: String = entries.iter().map(|(n, c)| format!("{n}: {c}\n")).collect();
            let parsed = Procfile::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.processes, entries);
        }
    }
}
