//! slipway's own key in `app.json`, `slipway`: how a deploy is checked once it is live.
//!
//! ```json
//! "slipway": {
//!   "smoke": ["curl -fsS $URL | grep welcome"],
//!   "watch": 300,
//!   "log_test": {"patterns": ["FATAL", "panicked at"], "threshold": 3, "builtin": true},
//!   "heartbeat": {"path": "/health", "interval": 30, "misses": 1},
//!   "maintenance": false,
//!   "rollback": true,
//!   "inconclusive": "pass",
//!   "timeouts": {"predeploy": 3600, "postdeploy": 3600, "smoke": 300}
//! }
//! ```
//!
//! Every field is optional; [`DeploySpec::default`] is what an app without the key gets. A wrong
//! value is refused at push time with [`AppJsonError::Key`], which names the file, the key and
//! the reason. `docs/app-json.md` and `docs/app-json.schema.json` document the same shape.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::appjson::{AppJson, AppJsonError};

/// Default watch window after a deploy (the issue's 5 minutes).
pub const DEFAULT_WATCH: Duration = Duration::from_secs(300);
/// Default heartbeat interval (Wercker's 30 s).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Most smoke commands and log patterns one app may declare.
pub const MAX_COMMANDS: usize = 32;
/// Longest a watch window may be: one day.
pub const MAX_WATCH_SECS: u64 = 24 * 3600;
/// A user pattern's compiled size limit, so a pattern can't take the server's memory.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// What a check that saw nothing to judge (no log lines, no probe) makes of the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InconclusivePolicy {
    /// The deploy passes; the check shows `inconclusive` in the report (default).
    #[default]
    Pass,
    /// The deploy fails (and rolls back, if it went live).
    Fail,
}

impl InconclusivePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InconclusivePolicy::Pass => "pass",
            InconclusivePolicy::Fail => "fail",
        }
    }
}

/// The log test: error lines counted over the watch window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTest {
    /// The user's own patterns (regular expressions, matched against the message).
    pub patterns: Vec<String>,
    /// More error lines than this fails the deploy.
    pub threshold: u32,
    /// Count the platform's error lines too (router H1x/H2x, R10/R14/R15, crashes, 5xx).
    pub builtin: bool,
}

impl Default for LogTest {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            threshold: 3,
            builtin: true,
        }
    }
}

/// The heartbeat test: the health URL must answer 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// A path on the app's URL (`/health`).
    pub path: String,
    pub interval: Duration,
    /// Consecutive failed probes tolerated; one more fails the deploy.
    pub misses: u32,
}

/// Time limits of the deploy's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub predeploy: Duration,
    pub postdeploy: Duration,
    pub smoke: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            predeploy: Duration::from_secs(3600),
            postdeploy: Duration::from_secs(3600),
            smoke: Duration::from_secs(300),
        }
    }
}

/// Everything a deploy needs from `app.json`: Dokku's commands and slipway's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySpec {
    /// `scripts.dokku.predeploy`.
    pub predeploy: Option<String>,
    /// `scripts.dokku.postdeploy`.
    pub postdeploy: Option<String>,
    /// `slipway.smoke`: run on the server, in order, each must exit 0.
    pub smoke: Vec<String>,
    /// `slipway.watch`: zero skips the log and heartbeat tests.
    pub watch: Duration,
    pub log_test: LogTest,
    /// `slipway.heartbeat`, or the first HTTP `healthchecks.web` path; `None`: not probed.
    pub heartbeat: Option<Heartbeat>,
    /// Maintenance mode on during pre-deploy, off after post-deploy.
    pub maintenance: bool,
    /// Roll back when a step fails after the release went live.
    pub rollback: bool,
    pub inconclusive: InconclusivePolicy,
    pub timeouts: Timeouts,
}

impl Default for DeploySpec {
    fn default() -> Self {
        Self {
            predeploy: None,
            postdeploy: None,
            smoke: Vec::new(),
            watch: DEFAULT_WATCH,
            log_test: LogTest::default(),
            heartbeat: None,
            maintenance: false,
            rollback: true,
            inconclusive: InconclusivePolicy::Pass,
            timeouts: Timeouts::default(),
        }
    }
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> AppJsonError {
    AppJsonError::Key {
        key: key.into(),
        reason: reason.into(),
    }
}

const KNOWN: [&str; 8] = [
    "smoke",
    "watch",
    "log_test",
    "heartbeat",
    "maintenance",
    "rollback",
    "inconclusive",
    "timeouts",
];

impl DeploySpec {
    /// The deploy definition of an app with this `app.json` (or none).
    pub fn from_app_json(app_json: Option<&AppJson>) -> Result<DeploySpec, AppJsonError> {
        let mut spec = DeploySpec::default();
        let Some(app_json) = app_json else {
            return Ok(spec);
        };
        spec.predeploy = app_json.predeploy.clone();
        spec.postdeploy = app_json.postdeploy.clone();
        spec.heartbeat = app_json
            .healthchecks
            .iter()
            .find_map(|h| h.path.clone())
            .map(|path| Heartbeat {
                path,
                interval: DEFAULT_HEARTBEAT_INTERVAL,
                misses: 1,
            });
        let Some(Value::Object(root)) = &app_json.slipway else {
            return Ok(spec);
        };
        // Unlike the rest of app.json, slipway's own key is ours: a misspelt field would
        // silently turn a check off, so unknown fields are refused.
        for key in root.keys() {
            if !KNOWN.contains(&key.as_str()) {
                return Err(bad(
                    format!("slipway.{key}"),
                    format!("is not a known setting; use one of {}", KNOWN.join(", ")),
                ));
            }
        }
        spec.smoke = commands(root.get("smoke"), "slipway.smoke")?;
        if let Some(v) = root.get("watch").filter(|v| !v.is_null()) {
            spec.watch = Duration::from_secs(seconds(v, "slipway.watch", 0, MAX_WATCH_SECS)?);
        }
        if let Some(v) = root.get("log_test").filter(|v| !v.is_null()) {
            let o = object(v, "slipway.log_test")?;
            only(o, "slipway.log_test", &["patterns", "threshold", "builtin"])?;
            let patterns = match o.get("patterns") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => {
                    if items.len() > MAX_COMMANDS {
                        return Err(bad(
                            "slipway.log_test.patterns",
                            format!("has {} patterns; at most {MAX_COMMANDS}", items.len()),
                        ));
                    }
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("slipway.log_test.patterns[{i}]");
                        let Some(p) = item.as_str().filter(|p| !p.is_empty()) else {
                            return Err(bad(key, "must be a non-empty string"));
                        };
                        regex::RegexBuilder::new(p)
                            .size_limit(PATTERN_SIZE_LIMIT)
                            .build()
                            .map_err(|e| {
                                bad(key, format!("is not a valid regular expression: {e}"))
                            })?;
                        out.push(p.to_string());
                    }
                    out
                }
                Some(_) => {
                    return Err(bad(
                        "slipway.log_test.patterns",
                        "must be an array of regular expressions",
                    ))
                }
            };
            spec.log_test = LogTest {
                patterns,
                threshold: match o.get("threshold").filter(|v| !v.is_null()) {
                    Some(v) => {
                        u32::try_from(seconds(v, "slipway.log_test.threshold", 0, 1_000_000)?)
                            .unwrap_or(u32::MAX)
                    }
                    None => LogTest::default().threshold,
                },
                builtin: boolean(o.get("builtin"), "slipway.log_test.builtin", true)?,
            };
        }
        if let Some(v) = root.get("heartbeat") {
            match v {
                Value::Null => {}
                Value::Bool(false) => spec.heartbeat = None,
                _ => {
                    let o = object(v, "slipway.heartbeat")?;
                    only(o, "slipway.heartbeat", &["path", "interval", "misses"])?;
                    let path = match o.get("path") {
                        Some(Value::String(p)) => p.clone(),
                        None | Some(Value::Null) => match &spec.heartbeat {
                            Some(h) => h.path.clone(),
                            None => {
                                return Err(bad(
                                    "slipway.heartbeat.path",
                                    "is missing; give the health URL's path, e.g. \"/health\"",
                                ))
                            }
                        },
                        Some(_) => return Err(bad("slipway.heartbeat.path", "must be a string")),
                    };
                    if !path.starts_with('/')
                        || path.len() > 2048
                        || path.chars().any(|c| c.is_control() || c == ' ')
                    {
                        return Err(bad(
                            "slipway.heartbeat.path",
                            "must be a URL path starting with / (no spaces)",
                        ));
                    }
                    let interval = match o.get("interval").filter(|v| !v.is_null()) {
                        Some(v) => {
                            Duration::from_secs(seconds(v, "slipway.heartbeat.interval", 1, 3600)?)
                        }
                        None => DEFAULT_HEARTBEAT_INTERVAL,
                    };
                    let misses = match o.get("misses").filter(|v| !v.is_null()) {
                        Some(v) => u32::try_from(seconds(v, "slipway.heartbeat.misses", 0, 100)?)
                            .unwrap_or(100),
                        None => 1,
                    };
                    spec.heartbeat = Some(Heartbeat {
                        path,
                        interval,
                        misses,
                    });
                }
            }
        }
        spec.maintenance = boolean(root.get("maintenance"), "slipway.maintenance", false)?;
        spec.rollback = boolean(root.get("rollback"), "slipway.rollback", true)?;
        spec.inconclusive = match root.get("inconclusive") {
            None | Some(Value::Null) => InconclusivePolicy::Pass,
            Some(Value::String(s)) if s == "pass" => InconclusivePolicy::Pass,
            Some(Value::String(s)) if s == "fail" => InconclusivePolicy::Fail,
            Some(_) => return Err(bad("slipway.inconclusive", "must be \"pass\" or \"fail\"")),
        };
        if let Some(v) = root.get("timeouts").filter(|v| !v.is_null()) {
            let o = object(v, "slipway.timeouts")?;
            only(o, "slipway.timeouts", &["predeploy", "postdeploy", "smoke"])?;
            let mut t = Timeouts::default();
            for (field, slot) in [
                ("predeploy", &mut t.predeploy),
                ("postdeploy", &mut t.postdeploy),
                ("smoke", &mut t.smoke),
            ] {
                if let Some(v) = o.get(field).filter(|v| !v.is_null()) {
                    *slot = Duration::from_secs(seconds(
                        v,
                        &format!("slipway.timeouts.{field}"),
                        1,
                        24 * 3600,
                    )?);
                }
            }
            spec.timeouts = t;
        }
        Ok(spec)
    }
}

fn object<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>, AppJsonError> {
    v.as_object().ok_or_else(|| bad(key, "must be an object"))
}

fn only(o: &Map<String, Value>, key: &str, fields: &[&str]) -> Result<(), AppJsonError> {
    for k in o.keys() {
        if !fields.contains(&k.as_str()) {
            return Err(bad(
                format!("{key}.{k}"),
                format!("is not a known setting; use one of {}", fields.join(", ")),
            ));
        }
    }
    Ok(())
}

fn seconds(v: &Value, key: &str, min: u64, max: u64) -> Result<u64, AppJsonError> {
    v.as_u64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad(key, format!("must be a whole number from {min} to {max}")))
}

fn boolean(v: Option<&Value>, key: &str, default: bool) -> Result<bool, AppJsonError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(key, "must be true or false")),
    }
}

/// A command or an array of commands (shell lines).
fn commands(v: Option<&Value>, key: &str) -> Result<Vec<String>, AppJsonError> {
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(s @ Value::String(_)) => vec![s],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(_) => {
            return Err(bad(
                key,
                "must be a shell command or an array of shell commands",
            ))
        }
    };
    if items.len() > MAX_COMMANDS {
        return Err(bad(
            key,
            format!("has {} commands; at most {MAX_COMMANDS}", items.len()),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if s.trim().is_empty() => Err(bad(format!("{key}[{i}]"), "is empty")),
            Value::String(s) if s.contains('\0') => {
                Err(bad(format!("{key}[{i}]"), "contains a NUL byte"))
            }
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(
                format!("{key}[{i}]"),
                "must be a string (a shell command)",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<DeploySpec, AppJsonError> {
        DeploySpec::from_app_json(Some(&AppJson::parse(text)?))
    }

    #[test]
    fn defaults_without_app_json_or_key() {
        assert_eq!(
            DeploySpec::from_app_json(None).expect("none"),
            DeploySpec::default()
        );
        let d = spec("{}").expect("empty");
        assert_eq!(d.watch, DEFAULT_WATCH);
        assert!(d.rollback && d.log_test.builtin && d.heartbeat.is_none());
        assert_eq!(d.inconclusive, InconclusivePolicy::Pass);
    }

    #[test]
    fn reads_every_setting() {
        let d = spec(
            r#"{"scripts": {"dokku": {"predeploy": "migrate", "postdeploy": "notify"}},
                "healthchecks": {"web": [{"path": "/up"}]},
                "slipway": {"smoke": "curl -fsS $URL", "watch": 5,
                  "log_test": {"patterns": ["FATAL", "panic(ked)? at"], "threshold": 0, "builtin": false},
                  "heartbeat": {"interval": 2, "misses": 0},
                  "maintenance": true, "rollback": false, "inconclusive": "fail",
                  "timeouts": {"smoke": 10}}}"#,
        )
        .expect("valid");
        assert_eq!(d.predeploy.as_deref(), Some("migrate"));
        assert_eq!(d.smoke, vec!["curl -fsS $URL".to_string()]);
        assert_eq!(d.watch, Duration::from_secs(5));
        assert_eq!(d.log_test.patterns.len(), 2);
        assert_eq!((d.log_test.threshold, d.log_test.builtin), (0, false));
        let hb = d.heartbeat.expect("heartbeat from healthchecks path");
        assert_eq!(
            (hb.path.as_str(), hb.interval, hb.misses),
            ("/up", Duration::from_secs(2), 0)
        );
        assert!(d.maintenance && !d.rollback);
        assert_eq!(d.inconclusive, InconclusivePolicy::Fail);
        assert_eq!(d.timeouts.smoke, Duration::from_secs(10));
        assert_eq!(d.timeouts.predeploy, Duration::from_secs(3600));
    }

    #[test]
    fn wrong_settings_name_file_key_and_reason() {
        let cases = [
            (r#"{"slipway": {"smok": []}}"#, "`slipway.smok`"),
            (r#"{"slipway": {"smoke": [1]}}"#, "`slipway.smoke[0]`"),
            (r#"{"slipway": {"smoke": {"a": 1}}}"#, "`slipway.smoke`"),
            (r#"{"slipway": {"watch": -1}}"#, "`slipway.watch`"),
            (r#"{"slipway": {"watch": "5m"}}"#, "`slipway.watch`"),
            (
                r#"{"slipway": {"log_test": {"patterns": ["(unclosed"]}}}"#,
                "`slipway.log_test.patterns[0]` is not a valid regular expression",
            ),
            (
                r#"{"slipway": {"log_test": {"limit": 1}}}"#,
                "`slipway.log_test.limit`",
            ),
            (
                r#"{"slipway": {"heartbeat": {"interval": 5}}}"#,
                "`slipway.heartbeat.path` is missing",
            ),
            (
                r#"{"slipway": {"heartbeat": {"path": "health"}}}"#,
                "`slipway.heartbeat.path`",
            ),
            (
                r#"{"slipway": {"heartbeat": {"path": "/", "interval": 0}}}"#,
                "`slipway.heartbeat.interval`",
            ),
            (r#"{"slipway": {"rollback": "no"}}"#, "`slipway.rollback`"),
            (
                r#"{"slipway": {"inconclusive": "maybe"}}"#,
                "`slipway.inconclusive`",
            ),
            (
                r#"{"slipway": {"timeouts": {"smoke": 0}}}"#,
                "`slipway.timeouts.smoke`",
            ),
        ];
        for (text, expected) in cases {
            let err = spec(text).expect_err(text).to_string();
            assert!(err.starts_with("app.json: "), "{text}: {err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
