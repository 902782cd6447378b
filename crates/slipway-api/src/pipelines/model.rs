//! The pipeline model: names, `#stage` tags, targets and the errors of pipeline operations.
//!
//! A **pipeline** (name) has ordered **stages** (name, strategy: automatic on a branch or
//! manual, watch window, secret environment); each stage has **targets**. Rows live in
//! `slipway-store/src/pipelines.rs`.

use std::collections::BTreeSet;

use slipway_store::{App, StoreError};

use crate::error::ApiError;

/// Longest pipeline or stage name.
pub const MAX_NAME: usize = 30;
/// Most stages in one pipeline, targets in one stage, variables in one stage's environment.
pub const MAX_STAGES: usize = 20;
pub const MAX_TARGETS: usize = 20;
pub const MAX_ENV_VARS: usize = 100;
/// Longest environment value, in bytes.
pub const MAX_ENV_VALUE: usize = 32 * 1024;
/// Longest branch name a strategy may follow.
pub const MAX_BRANCH: usize = 200;
/// The default watch window of a stage (the deploy runner's log and heartbeat tests use it).
pub const DEFAULT_WATCH_SECS: i64 = 300;

/// Why a pipeline operation failed. Each names what failed and how to fix it; none carries a
/// secret value.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("build #{number} did not pass ({status}{}); only passed builds deploy", reason_suffix(.reason))]
    NotPassed {
        number: i64,
        status: &'static str,
        reason: String,
    },
    #[error("deploying build #{number} to {target} failed: {reason}")]
    Deploy {
        number: i64,
        target: String,
        reason: String,
    },
    #[error("state database: {0}")]
    Store(#[from] StoreError),
    #[error("{context}: {message}")]
    Internal {
        context: &'static str,
        message: String,
    },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> Self {
        match err {
            PipelineError::NotFound(m) => ApiError::not_found(m),
            PipelineError::Invalid(m) => ApiError::invalid(m),
            e @ PipelineError::NotPassed { .. } => ApiError::invalid(e.to_string()),
            e @ PipelineError::Deploy { .. } => ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "deploy_failed",
                e.to_string(),
            ),
            PipelineError::Store(e) => e.into(),
            PipelineError::Internal { context, message } => ApiError::internal(context, message),
        }
    }
}

/// Checks a pipeline or stage name: 1-30 of `[a-z0-9-]`, a letter first (a pipeline's name is
/// part of its git URL, a stage's is a `#stage` tag).
pub fn check_name(kind: &str, name: &str) -> Result<(), PipelineError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PipelineError::Invalid(format!(
            "Invalid {kind} name {name:?}: use 1-{MAX_NAME} lowercase letters, digits and dashes, starting with a letter."
        )))
    }
}

/// Checks a branch a strategy follows (`main`, `release/2.x`), as git's check-ref-format
/// would accept it, bounded.
pub fn check_branch(branch: &str) -> Result<(), PipelineError> {
    let bad = branch.is_empty()
        || branch.len() > MAX_BRANCH
        || branch.starts_with(['-', '/'])
        || branch.ends_with(['/', '.'])
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch.ends_with(".lock")
        || branch
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err(PipelineError::Invalid(format!(
            "Invalid branch name {branch:?} for --automatic: give a git branch name such as main."
        )))
    } else {
        Ok(())
    }
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 200 bytes.
pub fn check_env_key(key: &str) -> Result<(), PipelineError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PipelineError::Invalid(format!(
            "Invalid environment variable name {key:?}: use letters, digits and underscores, not starting with a digit."
        )))
    }
}

/// The stage names a commit message tags with `#<stage>` (Wercker's deploy-by-message): a
/// `#` at the start or after whitespace, then a stage name.
pub fn stage_tags(message: &str) -> BTreeSet<String> {
    let mut tags = BTreeSet::new();
    for word in message.split_whitespace() {
        let Some(rest) = word.strip_prefix('#') else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if check_name("stage", &name).is_ok() {
            tags.insert(name);
        }
    }
    tags
}

/// Where a stage deploys: an app on this server, or a host target (issue 11: a set of the
/// user's own SSH hosts, `slipway targets:add`, deployed by slipway-hosts' `DeployTarget`).
/// Everything above `deploy.rs` only sees this type.
#[derive(Debug, Clone)]
pub enum Target {
    App(App),
    /// The host target's name.
    Host(String),
}

impl Target {
    /// How the target is named in output: `app <name>`, `host target <name>`.
    pub fn describe(&self) -> String {
        match self {
            Target::App(app) => format!("app {}", app.name),
            Target::Host(name) => format!("host target {name}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Target::App(_) => "app",
            Target::Host(_) => "host",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::App(app) => &app.name,
            Target::Host(name) => name,
        }
    }
}

/// Why a deploy happened, as kept with it and shown in `builds:info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployOrigin {
    /// The stage follows the build's branch.
    Automatic { branch: String },
    /// `#<stage>` in the commit message.
    Tag,
    /// `pipelines:deploy`.
    Manual,
    /// `pipelines:promote` from another stage.
    Promotion { from: String },
}

impl DeployOrigin {
    pub fn describe(&self) -> String {
        match self {
            DeployOrigin::Automatic { branch } => format!("automatic ({branch})"),
            DeployOrigin::Tag => "commit message tag".into(),
            DeployOrigin::Manual => "manual".into(),
            DeployOrigin::Promotion { from } => format!("promotion from {from}"),
        }
    }

    /// Strategies (automatic, tags) are held to "never older than what the stage runs";
    /// explicit deploys and promotions are not.
    pub fn is_strategy(&self) -> bool {
        matches!(self, DeployOrigin::Automatic { .. } | DeployOrigin::Tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stage_names_after_a_hash() {
        let tags = stage_tags("Fix login #production, see #12 and x#staging\n#qa-2");
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            vec!["production".to_string(), "qa-2".to_string()]
        );
        assert!(stage_tags("no tags here").is_empty());
    }

    #[test]
    fn names_and_branches_are_checked() {
        assert!(check_name("stage", "qa").is_ok());
        for bad in ["", "Prod", "1st", "a_b", &"a".repeat(31)] {
            assert!(check_name("stage", bad).is_err(), "{bad}");
        }
        assert!(check_branch("release/2.x").is_ok());
        for bad in ["", "a..b", "-x", "a b", "x.lock", "a/"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
        assert!(check_env_key("DEPLOY_TOKEN").is_ok());
        assert!(check_env_key("1X").is_err());
    }
}
