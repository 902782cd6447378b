//! `app.json`: the deploy definition that lives in the app's repository.
//!
//! Heroku's and Dokku's keys keep their meaning so existing apps carry over:
//! - `scripts.dokku.predeploy` / `scripts.dokku.postdeploy` (Dokku): commands run in a one-off
//!   dyno of the new slug before / after it goes live;
//! - `environments.test.scripts.test` and `environments.test.env` (Heroku CI): the test command
//!   of a pipeline build and the config it runs with;
//! - `healthchecks.web[]` (Dokku): checks new web dynos must pass before traffic moves to them.
//!
//! slipway's own key, `slipway`, is kept as JSON here and typed by the code that uses it
//! (pipelines and deploy checks), so this file stays the one parser of `app.json`. Unknown keys
//! are ignored (app.json files carry many keys other tools use); keys this file knows are
//! checked, and a wrong one is refused naming the key and the reason.
//!
//! [`AppJson::read`] is the only I/O in this crate: one bounded file read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// An `app.json` larger than this is refused (it is read whole, from pushed source).
pub const MAX_APP_JSON: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppJsonError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("app.json is {size} bytes; the limit is {MAX_APP_JSON} bytes")]
    TooLarge { size: u64 },
    #[error("app.json is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("app.json: `{key}` {reason}")]
    Key { key: String, reason: String },
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> AppJsonError {
    AppJsonError::Key {
        key: key.into(),
        reason: reason.into(),
    }
}

/// What a Dokku health check waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthcheckKind {
    /// Must pass before traffic moves to a new dyno (Dokku's default).
    Startup,
    /// Keeps being probed while the dyno runs.
    Liveness,
    /// Says whether the dyno should receive traffic.
    Readiness,
}

/// One entry of `healthchecks.web[]`, with Dokku's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub kind: HealthcheckKind,
    pub name: String,
    /// An HTTP path probed on the dyno's port (`GET`), or `None` with a `command`.
    pub path: Option<String>,
    /// Text the response body must contain.
    pub content: Option<String>,
    /// A command run in the dyno instead of an HTTP probe.
    pub command: Option<Vec<String>>,
    /// Tries before the check fails (Dokku's default: 5).
    pub attempts: u32,
    /// Each try's time limit in seconds (default 5).
    pub timeout_secs: u32,
    /// Seconds between tries (default 5).
    pub wait_secs: u32,
    /// Seconds before the first try (default 0).
    pub initial_delay_secs: u32,
    /// The port to probe instead of the dyno's `PORT`.
    pub port: Option<u16>,
}

/// A parsed `app.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppJson {
    /// `scripts.dokku.predeploy`.
    pub predeploy: Option<String>,
    /// `scripts.dokku.postdeploy`.
    pub postdeploy: Option<String>,
    /// `environments.test.scripts.test`.
    pub test_script: Option<String>,
    /// `environments.test.env`.
    pub test_env: BTreeMap<String, String>,
    /// `healthchecks.web[]`.
    pub healthchecks: Vec<Healthcheck>,
    /// slipway's own key, typed by its users.
    pub slipway: Option<Value>,
}

impl AppJson {
    /// Reads `<dir>/app.json`: `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<AppJson>, AppJsonError> {
        use std::io::Read;
        let path = dir.join("app.json");
        let io = |source| AppJsonError::Io {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_APP_JSON {
            return Err(AppJsonError::TooLarge { size });
        }
        let mut text = String::new();
        file.take(MAX_APP_JSON + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_APP_JSON {
            return Err(AppJsonError::TooLarge {
                size: text.len() as u64,
            });
        }
        Self::parse(&text).map(Some)
    }

    pub fn parse(text: &str) -> Result<AppJson, AppJsonError> {
        if text.len() as u64 > MAX_APP_JSON {
            return Err(AppJsonError::TooLarge {
                size: text.len() as u64,
            });
        }
        let root: Value = serde_json::from_str(text).map_err(AppJsonError::Json)?;
        let root = root
            .as_object()
            .ok_or_else(|| bad("(top level)", "must be a JSON object"))?;
        let scripts = object_at(root, "scripts", "scripts")?;
        let dokku = match scripts {
            Some(s) => object_at(s, "dokku", "scripts.dokku")?,
            None => None,
        };
        let (predeploy, postdeploy) = match dokku {
            Some(d) => (
                command_at(d, "predeploy", "scripts.dokku.predeploy")?,
                command_at(d, "postdeploy", "scripts.dokku.postdeploy")?,
            ),
            None => (None, None),
        };
        let test = match object_at(root, "environments", "environments")? {
            Some(envs) => object_at(envs, "test", "environments.test")?,
            None => None,
        };
        let (test_script, test_env) = match test {
            Some(t) => {
                let script = match object_at(t, "scripts", "environments.test.scripts")? {
                    Some(s) => command_at(s, "test", "environments.test.scripts.test")?,
                    None => None,
                };
                (script, env_at(t, "env", "environments.test.env")?)
            }
            None => (None, BTreeMap::new()),
        };
        let healthchecks = match object_at(root, "healthchecks", "healthchecks")? {
            Some(h) => match h.get("web") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| healthcheck(item, &format!("healthchecks.web[{i}]")))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad("healthchecks.web", "must be an array of checks")),
            },
            None => Vec::new(),
        };
        let slipway = match root.get("slipway") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(bad("slipway", "must be an object")),
        };
        Ok(AppJson {
            predeploy,
            postdeploy,
            test_script,
            test_env,
            healthchecks,
            slipway,
        })
    }
}

fn object_at<'a>(
    parent: &'a Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, AppJsonError> {
    match parent.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(key, "must be an object")),
    }
}

/// A shell command: a non-empty string without NUL.
fn command_at(
    parent: &Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<String>, AppJsonError> {
    match parent.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad(key, "is empty")),
        Some(Value::String(s)) if s.contains('\0') => Err(bad(key, "contains a NUL byte")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(key, "must be a string (a shell command)")),
    }
}

/// Config vars: shell-variable names, string (or number/boolean) values.
fn env_at(
    parent: &Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<BTreeMap<String, String>, AppJsonError> {
    let map = match parent.get(field) {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(key, "must be an object of NAME: value")),
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(
                format!("{key}.{name}"),
                "is not a valid variable name (letters, digits and _, not starting with a digit)",
            ));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(bad(
                    format!("{key}.{name}"),
                    "must be a string, number or boolean",
                ))
            }
        };
        if value.contains('\0') {
            return Err(bad(format!("{key}.{name}"), "contains a NUL byte"));
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

fn uint_at(
    check: &Map<String, Value>,
    field: &str,
    key: &str,
    default: u32,
    max: u32,
) -> Result<u32, AppJsonError> {
    match check.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|v| *v <= u64::from(max))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                bad(
                    format!("{key}.{field}"),
                    format!("must be a whole number from 0 to {max}"),
                )
            }),
        Some(_) => Err(bad(format!("{key}.{field}"), "must be a number")),
    }
}

fn string_at(
    check: &Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<String>, AppJsonError> {
    match check.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{key}.{field}"), "must be a string")),
    }
}

fn healthcheck(item: &Value, key: &str) -> Result<Healthcheck, AppJsonError> {
    let check = item
        .as_object()
        .ok_or_else(|| bad(key, "must be an object"))?;
    let kind = match string_at(check, "type", key)?.as_deref() {
        None | Some("startup") => HealthcheckKind::Startup,
        Some("liveness") => HealthcheckKind::Liveness,
        Some("readiness") => HealthcheckKind::Readiness,
        Some(other) => {
            return Err(bad(
                format!("{key}.type"),
                format!("is {other:?}; use startup, liveness or readiness"),
            ))
        }
    };
    let path = string_at(check, "path", key)?;
    if let Some(p) = &path {
        if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad(
                format!("{key}.path"),
                "must be a URL path starting with / (no spaces)",
            ));
        }
    }
    let command = match check.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::Array(parts)) if !parts.is_empty() => Some(
            parts
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{key}.command"), "must be an array of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(bad(
                format!("{key}.command"),
                "must be a non-empty array of strings",
            ))
        }
    };
    if path.is_some() && command.is_some() {
        return Err(bad(key, "has both `path` and `command`; use one"));
    }
    let port = match check.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| bad(format!("{key}.port"), "must be a port number 1 to 65535"))?,
        ),
        Some(_) => return Err(bad(format!("{key}.port"), "must be a number")),
    };
    let attempts = uint_at(check, "attempts", key, 5, 1000)?;
    if attempts == 0 {
        return Err(bad(format!("{key}.attempts"), "must be at least 1"));
    }
    let timeout_secs = uint_at(check, "timeout", key, 5, 3600)?;
    if timeout_secs == 0 {
        return Err(bad(format!("{key}.timeout"), "must be at least 1 second"));
    }
    Ok(Healthcheck {
        kind,
        name: string_at(check, "name", key)?.unwrap_or_else(|| key.to_string()),
        path: if command.is_none() {
            Some(path.unwrap_or_else(|| "/".to_string()))
        } else {
            None
        },
        content: string_at(check, "content", key)?,
        command,
        attempts,
        timeout_secs,
        wait_secs: uint_at(check, "wait", key, 5, 3600)?,
        initial_delay_secs: uint_at(check, "initialDelay", key, 0, 3600)?,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heroku_and_dokku_keys_and_ignores_others() {
        let parsed = AppJson::parse(
            r#"{
              "name": "demo", "addons": ["heroku-postgresql"], "formation": {"web": {"quantity": 1}},
              "scripts": {"dokku": {"predeploy": "python manage.py migrate", "postdeploy": "echo done"}},
              "environments": {"test": {"scripts": {"test": "pytest -q"}, "env": {"DEBUG": "1", "WORKERS": 2, "CI": true}}},
              "healthchecks": {"web": [
                {"type": "startup", "name": "home", "path": "/health", "content": "ok", "attempts": 3, "timeout": 2, "wait": 1, "initialDelay": 1},
                {"command": ["/app/check.sh", "--quick"]}
              ]},
              "slipway": {"smoke": ["curl -fsS $URL"]}
            }"#,
        )
        .expect("valid");
        assert_eq!(
            parsed.predeploy.as_deref(),
            Some("python manage.py migrate")
        );
        assert_eq!(parsed.postdeploy.as_deref(), Some("echo done"));
        assert_eq!(parsed.test_script.as_deref(), Some("pytest -q"));
        assert_eq!(parsed.test_env["WORKERS"], "2");
        assert_eq!(parsed.test_env["CI"], "true");
        assert_eq!(parsed.healthchecks.len(), 2);
        let home = &parsed.healthchecks[0];
        assert_eq!(
            (home.kind, home.path.as_deref(), home.content.as_deref()),
            (HealthcheckKind::Startup, Some("/health"), Some("ok"))
        );
        assert_eq!(
            (
                home.attempts,
                home.timeout_secs,
                home.wait_secs,
                home.initial_delay_secs
            ),
            (3, 2, 1, 1)
        );
        let cmd = &parsed.healthchecks[1];
        assert_eq!(cmd.path, None);
        assert_eq!(cmd.command.as_deref().map(<[String]>::len), Some(2));
        assert_eq!((cmd.attempts, cmd.timeout_secs, cmd.wait_secs), (5, 5, 5));
        assert!(parsed.slipway.is_some());
    }

    #[test]
    fn an_empty_object_means_nothing_declared() {
        let parsed = AppJson::parse("{}").expect("valid");
        assert_eq!(parsed, AppJson::default());
        let web_only = AppJson::parse(r#"{"healthchecks": {"web": [{}]}}"#).expect("valid");
        assert_eq!(web_only.healthchecks[0].path.as_deref(), Some("/"));
    }

    #[test]
    fn wrong_keys_are_named_with_the_reason() {
        let cases = [
            ("[]", "(top level)"),
            (r#"{"scripts": "migrate"}"#, "`scripts`"),
            (
                r#"{"scripts": {"dokku": {"predeploy": 1}}}"#,
                "scripts.dokku.predeploy",
            ),
            (r#"{"scripts": {"dokku": {"predeploy": "  "}}}"#, "is empty"),
            (
                r#"{"environments": {"test": {"env": {"1X": "a"}}}}"#,
                "environments.test.env.1X",
            ),
            (
                r#"{"environments": {"test": {"env": {"A": [1]}}}}"#,
                "environments.test.env.A",
            ),
            (r#"{"healthchecks": {"web": {}}}"#, "healthchecks.web"),
            (
                r#"{"healthchecks": {"web": [{"type": "sometimes"}]}}"#,
                "healthchecks.web[0].type",
            ),
            (
                r#"{"healthchecks": {"web": [{"path": "health"}]}}"#,
                "healthchecks.web[0].path",
            ),
            (
                r#"{"healthchecks": {"web": [{"attempts": 0}]}}"#,
                "healthchecks.web[0].attempts",
            ),
            (
                r#"{"healthchecks": {"web": [{"attempts": -1}]}}"#,
                "healthchecks.web[0].attempts",
            ),
            (
                r#"{"healthchecks": {"web": [{}, {"port": 70000}]}}"#,
                "healthchecks.web[1].port",
            ),
            (
                r#"{"healthchecks": {"web": [{"path": "/", "command": ["x"]}]}}"#,
                "both",
            ),
            (r#"{"slipway": []}"#, "`slipway`"),
        ];
        for (text, expected) in cases {
            let err = AppJson::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(matches!(
            AppJson::parse("{ not json"),
            Err(AppJsonError::Json(_))
        ));
    }

    #[test]
    fn read_is_bounded_and_absent_is_none() {
        let dir = std::env::temp_dir().join(format!("slipway-appjson-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert!(AppJson::read(&dir).expect("absent").is_none());
        std::fs::write(
            dir.join("app.json"),
            r#"{"scripts":{"dokku":{"predeploy":"true"}}}"#,
        )
        .expect("write");
        let read = AppJson::read(&dir).expect("read").expect("present");
        assert_eq!(read.predeploy.as_deref(), Some("true"));
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_APP_JSON as usize));
        std::fs::write(dir.join("app.json"), big).expect("write");
        assert!(matches!(
            AppJson::read(&dir),
            Err(AppJsonError::TooLarge { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
