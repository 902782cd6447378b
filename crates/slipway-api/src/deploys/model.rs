//! The deploy's vocabulary: what is deployed, its steps and statuses, and the masking of
//! target secrets in everything a deploy says.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use slipway_core::{DeploySpec, Secret};

/// A deploy's id (a UUID; its per-app number works wherever an id does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeployId(pub String);

impl std::fmt::Display for DeployId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a deploy puts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploySource {
    /// The slug a push's build made (the push waits for the deploy).
    Build {
        build_id: String,
        slug_id: String,
        commit: String,
    },
    /// A slug that exists already (promotion from another stage, a redeploy): no build.
    Slug { slug_id: String },
    /// Back to an earlier release: its slug and its config, as a new release.
    Rollback { version: i64 },
}

impl DeploySource {
    pub fn to_json(&self) -> Value {
        match self {
            DeploySource::Build {
                build_id,
                slug_id,
                commit,
            } => {
                json!({"kind": "build", "build_id": build_id, "slug_id": slug_id, "commit": commit})
            }
            DeploySource::Slug { slug_id } => json!({"kind": "slug", "slug_id": slug_id}),
            DeploySource::Rollback { version } => json!({"kind": "rollback", "version": version}),
        }
    }

    /// A sentence for reports: `build abc1234`, `slug ...`, `rollback to v3`.
    pub fn describe(value: &Value) -> String {
        match value["kind"].as_str() {
            Some("build") => format!(
                "build of {}",
                value["commit"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(7)
                    .collect::<String>()
            ),
            Some("slug") => format!("slug {}", value["slug_id"].as_str().unwrap_or("?")),
            Some("rollback") => format!("rollback to v{}", value["version"].as_i64().unwrap_or(0)),
            _ => "unknown source".into(),
        }
    }
}

/// How a deploy may differ from its `app.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// Keep a failed release live instead of rolling back (`--no-rollback`).
    pub no_rollback: bool,
    /// Overrides `slipway.watch`.
    pub watch: Option<Duration>,
    /// `$SLIPWAY_STAGE` of smoke commands (pipelines set it; `production` otherwise).
    pub stage: Option<String>,
}

impl DeployOptions {
    pub fn to_json(&self) -> Value {
        json!({
            "no_rollback": self.no_rollback,
            "watch_secs": self.watch.map(|w| w.as_secs()),
            "stage": self.stage,
        })
    }
}

/// Everything [`super::start`] needs.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub app_id: String,
    pub source: DeploySource,
    pub user_id: String,
    pub options: DeployOptions,
    /// The target's environment for the deploy's commands, masked in all output.
    pub secrets: BTreeMap<String, Secret>,
    /// The deploy definition; `None` reads it from the slug's `app.json`.
    pub spec: Option<DeploySpec>,
}

/// A deploy's steps, in Wercker's order (the log test and heartbeat run side by side during
/// the watch window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Setup,
    PreDeploy,
    Deploy,
    PostDeploy,
    Smoke,
    LogTest,
    Heartbeat,
    Rollback,
    Report,
}

impl Step {
    /// `setup passed (0.3 s)`, or with `: note` after it: how a step's end is said.
    pub fn summary(self, status: StepStatus, took: std::time::Duration, note: &str) -> String {
        let took = took.as_secs_f64();
        if note.is_empty() {
            format!("{} {} ({took:.1} s)", self.as_str(), status.as_str())
        } else {
            format!(
                "{} {} ({took:.1} s): {note}",
                self.as_str(),
                status.as_str()
            )
        }
    }

    pub const ALL: [Step; 9] = [
        Step::Setup,
        Step::PreDeploy,
        Step::Deploy,
        Step::PostDeploy,
        Step::Smoke,
        Step::LogTest,
        Step::Heartbeat,
        Step::Rollback,
        Step::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Setup => "setup",
            Step::PreDeploy => "pre-deploy",
            Step::Deploy => "deploy",
            Step::PostDeploy => "post-deploy",
            Step::Smoke => "smoke",
            Step::LogTest => "log-test",
            Step::Heartbeat => "heartbeat",
            Step::Rollback => "rollback",
            Step::Report => "report",
        }
    }

    pub fn ordinal(self) -> i64 {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0) as i64
    }
}

/// A step's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Pending,
    Running,
    Passed,
    Failed,
    /// Nothing to do (no command declared, no watch window, nothing to roll back).
    Skipped,
    /// The check saw nothing to judge; the inconclusive policy decided the deploy.
    Inconclusive,
    Cancelled,
    Interrupted,
}

impl StepStatus {
    /// `summary` as a line of the push's output: failures marked ` !`, the rest indented.
    pub fn indent(self, summary: &str) -> String {
        match self {
            StepStatus::Failed | StepStatus::Cancelled => format!(" !     {summary}"),
            _ => format!("       {summary}"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Inconclusive => "inconclusive",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Interrupted => "interrupted",
        }
    }
}

/// A deploy's status. `Queued` and `Running` are unfinished; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployStatus {
    Queued,
    Running,
    Passed,
    /// A step failed and nothing was rolled back (it failed before going live, or rollback
    /// was off or impossible).
    Failed,
    /// A step failed after the release went live and the previous release is back.
    RolledBack,
    Cancelled,
    /// The server stopped during the deploy.
    Interrupted,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Queued => "queued",
            DeployStatus::Running => "running",
            DeployStatus::Passed => "passed",
            DeployStatus::Failed => "failed",
            DeployStatus::RolledBack => "rolled_back",
            DeployStatus::Cancelled => "cancelled",
            DeployStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => DeployStatus::Queued,
            "running" => DeployStatus::Running,
            "passed" => DeployStatus::Passed,
            "failed" => DeployStatus::Failed,
            "rolled_back" => DeployStatus::RolledBack,
            "cancelled" => DeployStatus::Cancelled,
            "interrupted" => DeployStatus::Interrupted,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, DeployStatus::Queued | DeployStatus::Running)
    }
}

/// Secret values shorter than this are not masked: they would mask ordinary text (a `1`, a
/// `yes`) and are no secret anyway.
pub const MIN_MASKED: usize = 4;

/// Replaces every target secret's value (of at least [`MIN_MASKED`] bytes) in text with
/// `[masked]`, longest first (so a secret that contains another is masked whole). The one
/// masker of deploys and pipelines.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    pub fn new(secrets: &BTreeMap<String, Secret>) -> Self {
        let mut values: Vec<String> = secrets
            .values()
            .map(|s| s.expose().to_string())
            .filter(|v| v.len() >= MIN_MASKED)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "[masked]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_secret_longest_first() {
        let secrets: BTreeMap<String, Secret> = [
            ("A".to_string(), Secret::new("hunter2")),
            ("B".to_string(), Secret::new("hunter2-extra")),
            ("C".to_string(), Secret::new("")),
            ("D".to_string(), Secret::new("no")),
        ]
        .into();
        let m = Masker::new(&secrets);
        assert_eq!(
            m.mask("x hunter2-extra y hunter2 z"),
            "x [masked] y [masked] z"
        );
        assert_eq!(m.mask("nothing"), "nothing");
        assert_eq!(m.mask("no, yes"), "no, yes", "too short to mask");
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            DeployStatus::Queued,
            DeployStatus::Running,
            DeployStatus::Passed,
            DeployStatus::Failed,
            DeployStatus::RolledBack,
            DeployStatus::Cancelled,
            DeployStatus::Interrupted,
        ] {
            assert_eq!(DeployStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::Report.ordinal(), 8);
    }
}
