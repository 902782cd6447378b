//! Per-app settings of the dyno manager, carried as config vars (as `SLIPWAY_SLEEP_AFTER`
//! is): they follow releases (a rollback restores them), need no schema, and take effect the
//! way Heroku's do, on the dynos the config change restarts.
//!
//! - [`BOOT_TIMEOUT_VAR`] `SLIPWAY_BOOT_TIMEOUT=<seconds>` (1..=3600): how long a web dyno has
//!   to bind `$PORT` before R10; unset, the server's `--dyno-boot-timeout` (60 s).
//! - [`RUNTIME_METRICS_VAR`] `SLIPWAY_LOG_RUNTIME_METRICS=1`: Heroku's `log-runtime-metrics`
//!   lab (`slipway labs:enable log-runtime-metrics` sets it): each dyno logs its memory and
//!   load every `--dyno-metrics-interval`.
//!
//! [`check_setting`] is what `config:set` runs before anything changes, so a bad value is
//! refused with an error naming the variable and what it accepts (never the value: config
//! values are secrets); readers of a release's config treat any other value as unset.

use std::collections::BTreeMap;
use std::time::Duration;

pub const BOOT_TIMEOUT_VAR: &str = "SLIPWAY_BOOT_TIMEOUT";
pub const MAX_BOOT_TIMEOUT_SECS: u64 = 3600;
pub const RUNTIME_METRICS_VAR: &str = "SLIPWAY_LOG_RUNTIME_METRICS";

/// Heroku labs features slipway has: each is a config var set to `1` while enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// `log-runtime-metrics`
    pub name: &'static str,
    pub config_var: &'static str,
    pub description: &'static str,
    pub doc_url: &'static str,
}

pub const FEATURES: [Feature; 1] = [Feature {
    name: "log-runtime-metrics",
    config_var: RUNTIME_METRICS_VAR,
    description: "Emit dyno resource usage information into app logs",
    doc_url: "https://devcenter.heroku.com/articles/log-runtime-metrics",
}];

/// The feature called `name` (any letter case).
pub fn feature(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// Whether a feature is on in an app's config.
pub fn feature_enabled(feature: &Feature, env: &BTreeMap<String, String>) -> bool {
    env.get(feature.config_var)
        .and_then(|v| parse_flag(v))
        .unwrap_or(false)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("{BOOT_TIMEOUT_VAR} must be a whole number of seconds from 1 to {MAX_BOOT_TIMEOUT_SECS} (how long a web dyno has to bind $PORT before R10); unset it to use the server's default")]
    BootTimeout,
    #[error("{RUNTIME_METRICS_VAR} must be 1 or true (runtime metrics on) or 0 or false (off); `slipway labs:enable log-runtime-metrics` sets it")]
    RuntimeMetrics,
}

/// Whether `value` is acceptable for the config var `name` (any value is, for a var that is
/// not one of these settings).
pub fn check_setting(name: &str, value: &str) -> Result<(), SettingError> {
    match name {
        BOOT_TIMEOUT_VAR => parse_boot_timeout(value)
            .map(|_| ())
            .ok_or(SettingError::BootTimeout),
        RUNTIME_METRICS_VAR => parse_flag(value)
            .map(|_| ())
            .ok_or(SettingError::RuntimeMetrics),
        _ => Ok(()),
    }
}

fn parse_boot_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_BOOT_TIMEOUT_SECS).contains(s))
        .map(Duration::from_secs)
}

fn parse_flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The app's own boot timeout, when its config sets a valid one.
pub fn boot_timeout(env: &BTreeMap<String, String>) -> Option<Duration> {
    env.get(BOOT_TIMEOUT_VAR)
        .and_then(|v| parse_boot_timeout(v))
}

/// Whether the app's dynos log runtime metrics.
pub fn runtime_metrics(env: &BTreeMap<String, String>) -> bool {
    env.get(RUNTIME_METRICS_VAR)
        .and_then(|v| parse_flag(v))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timeout_is_bounded() {
        for good in ["1", "60", " 3600 "] {
            assert_eq!(check_setting(BOOT_TIMEOUT_VAR, good), Ok(()), "{good}");
        }
        for bad in [
            "0",
            "3601",
            "-1",
            "+5",
            "1.5",
            "",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(
                check_setting(BOOT_TIMEOUT_VAR, bad),
                Err(SettingError::BootTimeout),
                "{bad}"
            );
        }
        let env = |v: &str| BTreeMap::from([(BOOT_TIMEOUT_VAR.to_string(), v.to_string())]);
        assert_eq!(boot_timeout(&env("2")), Some(Duration::from_secs(2)));
        assert_eq!(boot_timeout(&env("0")), None);
        assert_eq!(boot_timeout(&BTreeMap::new()), None);
    }

    #[test]
    fn runtime_metrics_flag() {
        let env = |v: &str| BTreeMap::from([(RUNTIME_METRICS_VAR.to_string(), v.to_string())]);
        assert!(runtime_metrics(&env("1")));
        assert!(runtime_metrics(&env("TRUE")));
        assert!(!runtime_metrics(&env("0")));
        assert!(!runtime_metrics(&env("yes")));
        assert!(!runtime_metrics(&BTreeMap::new()));
        assert_eq!(
            check_setting(RUNTIME_METRICS_VAR, "yes"),
            Err(SettingError::RuntimeMetrics)
        );
        assert_eq!(check_setting("OTHER", "anything"), Ok(()));
    }
}
