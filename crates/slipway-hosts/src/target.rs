//! A host target's spec and its checks. Everything here ends up in shell scripts on the hosts
//! or in file names, so every value is validated to a narrow alphabet before it is used.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use slipway_core::Secret;

use crate::TargetError;

/// Names of targets and of stored releases, and tags: 1-64 of `[A-Za-z0-9._-]`, starting with a
/// letter or digit (so never `.`, `..`, an option, or a path).
pub fn validate_name(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// `user@host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl HostSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (user, rest) = text
            .split_once('@')
            .ok_or_else(|| format!("host {text:?} must be user@host or user@host:port"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("host {text:?}: {port:?} is not a port"))?,
            ),
            None => (rest, 22),
        };
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !user.starts_with('-');
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && !host.starts_with('-');
        if !user_ok || !host_ok {
            return Err(format!(
                "host {text:?} must be user@host[:port] with a plain user name and a host name or IPv4 address"
            ));
        }
        Ok(Self {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// How `known_hosts` names it.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 22 {
            write!(f, "{}@{}", self.user, self.host)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// What a target is. Stored as JSON; the environment is kept apart (it holds secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    pub name: String,
    pub hosts: Vec<HostSpec>,
    /// Absolute, or relative to the login user's `$HOME` on each host.
    pub path: String,
    /// A private key file on the server (otherwise ssh's defaults).
    pub key: Option<String>,
    /// Run on the host in `<path>/current` after each switch, with the release's env exported.
    pub restart: Option<String>,
    /// `http(s)://...` (fetched on the host) or a command (run on the host in `current`).
    pub health: Option<String>,
    pub health_attempts: u32,
    pub health_interval_secs: u32,
    pub health_timeout_secs: u32,
    /// Run in the new release's directory before the switch; failing stops the deploy there.
    pub pre_switch: Option<String>,
    /// Directories under `<path>/shared` linked into each release at the same relative path.
    pub shared: Vec<String>,
    /// Hosts switched at a time.
    pub batch: usize,
    /// Where the target serves (`http(s)://...`, reached from the slipway server): `$URL` of
    /// a pipeline deploy's smoke commands. Without it, `$URL` is the health check when that
    /// is a URL.
    #[serde(default)]
    pub url: Option<String>,
}

pub const MAX_HOSTS: usize = 100;
const MAX_COMMAND: usize = 4096;

fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl TargetSpec {
    pub fn validate(&self) -> Result<(), TargetError> {
        fn bad(m: String) -> Result<(), TargetError> {
            Err(TargetError::Invalid(m))
        }
        validate_name("target name", &self.name).or_else(bad)?;
        if self.hosts.is_empty() || self.hosts.len() > MAX_HOSTS {
            return bad(format!("a target needs 1 to {MAX_HOSTS} hosts"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            HostSpec::parse(&h.to_string()).map_err(TargetError::Invalid)?;
            if self.hosts[..i].contains(h) {
                return bad(format!("host {h} is listed twice"));
            }
        }
        let path_ok = self.path.len() <= 1024
            && !self.path.is_empty()
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
            && self.path.split('/').all(|c| c != "..");
        if !path_ok || self.path == "/" {
            return bad(format!(
                "path {:?} must be a directory path of letters, digits, '.', '_', '-' and '/' (absolute, or relative to the login's home), not /",
                self.path
            ));
        }
        for dir in &self.shared {
            if !safe_relative(dir) || dir == ".slipway" || dir.starts_with(".slipway/") {
                return bad(format!("shared directory {dir:?} must be a relative path inside the release (letters, digits, '.', '_', '-', '/'; no '..')"));
            }
        }
        for (what, cmd) in [
            ("restart", &self.restart),
            ("health", &self.health),
            ("pre-switch", &self.pre_switch),
        ] {
            if let Some(cmd) = cmd {
                if cmd.trim().is_empty() || cmd.len() > MAX_COMMAND || cmd.contains('\0') {
                    return bad(format!(
                        "the {what} command must be 1 to {MAX_COMMAND} bytes"
                    ));
                }
            }
        }
        if let Some(url) = &self.url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 2048
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return bad(format!(
                    "--url {url:?} must be an http:// or https:// URL (at most 2048 bytes, no spaces)"
                ));
            }
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if self.health_attempts == 0 || self.health_attempts > 1000 {
            return bad("health attempts must be 1 to 1000".into());
        }
        if self.health_timeout_secs == 0 || self.health_timeout_secs > 3600 {
            return bad("the health timeout must be 1 to 3600 seconds".into());
        }
        if self.health_interval_secs > 3600 {
            return bad("the health interval must be at most 3600 seconds".into());
        }
        Ok(())
    }

    /// `$URL` of smoke commands: `--url`, else the health check when it is a URL.
    pub fn public_url(&self) -> Option<&str> {
        self.url
            .as_deref()
            .or(self.health.as_deref().filter(|_| self.health_is_url()))
    }

    /// Is the health check a URL (fetched on the host) rather than a command?
    pub fn health_is_url(&self) -> bool {
        self.health
            .as_deref()
            .is_some_and(|h| h.starts_with("http://") || h.starts_with("https://"))
    }
}

/// Checks a target's environment: names are shell variable names, values bounded.
pub fn validate_env(env: &BTreeMap<String, Secret>) -> Result<(), TargetError> {
    if env.len() > 500 {
        return Err(TargetError::Invalid(
            "a target's environment holds at most 500 variables".into(),
        ));
    }
    for (key, value) in env {
        let ok = !key.is_empty()
            && key.len() <= 256
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(TargetError::Invalid(format!(
                "environment variable name {key:?} must be letters, digits and '_', not starting with a digit"
            )));
        }
        if value.expose().len() > 32 * 1024 || value.expose().contains('\0') {
            return Err(TargetError::Invalid(format!(
                "the value of {key} must be at most 32 KiB without NUL bytes"
            )));
        }
    }
    Ok(())
}

/// The env file written into each release: `export K='v'` lines a POSIX shell sources.
pub fn env_file(env: &BTreeMap<String, Secret>) -> String {
    let mut out = String::new();
    for (key, value) in env {
        out.push_str("export ");
        out.push_str(key);
        out.push_str("='");
        out.push_str(&value.expose().replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_and_refuse_options() {
        let h = HostSpec::parse("deploy@web1.example.com:2222").expect("parse");
        assert_eq!((h.user.as_str(), h.port), ("deploy", 2222));
        assert_eq!(h.known_hosts_name(), "[web1.example.com]:2222");
        assert_eq!(HostSpec::parse("root@h").expect("parse").port, 22);
        for bad in [
            "h1",
            "u@-oProxyCommand=x",
            "u@h:0",
            "u@h:x",
            "@h",
            "u@h;rm",
            "-x@h",
        ] {
            assert!(HostSpec::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_and_env_are_checked() {
        assert!(validate_name("tag", "v1.2-rc_3").is_ok());
        for bad in ["", ".", "..", "-v", "a/b", "a b", "v1;x"] {
            assert!(validate_name("tag", bad).is_err(), "{bad:?} accepted");
        }
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), Secret::new("it's 'quoted'"));
        assert_eq!(
            env_file(&env),
            "export GREETING='it'\\''s '\\''quoted'\\'''\n"
        );
        env.insert("1BAD".to_string(), Secret::new("x"));
        assert!(validate_env(&env).is_err());
    }
}
