//! What a build says while it runs: the events `pipeline::compile` sends on its channel.
//!
//! The API only carries them: `BuildEvent::line` is the text to show the pusher (git prints it
//! as `remote:` lines), keep in the build record and send to the app's log. Phase events carry
//! timings for whoever wants them (the build record, metrics).

use std::fmt;
use std::time::Duration;

/// A step of the classic buildpack API, plus fetching the buildpack itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Cloning a buildpack given as a git URL.
    Fetch,
    /// `bin/detect BUILD_DIR`.
    Detect,
    /// `bin/compile BUILD_DIR CACHE_DIR ENV_DIR`.
    Compile,
    /// `bin/release BUILD_DIR`.
    Release,
}

impl Phase {
    /// The executable that runs this phase, as a buildpack author knows it.
    pub fn script(self) -> &'static str {
        match self {
            Phase::Fetch => "git fetch",
            Phase::Detect => "bin/detect",
            Phase::Compile => "bin/compile",
            Phase::Release => "bin/release",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Fetch => "fetch",
            Phase::Detect => "detect",
            Phase::Compile => "compile",
            Phase::Release => "release",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A line a buildpack printed (stdout or stderr of `bin/compile`, stderr of the others),
    /// as printed, cut at [`crate::pipeline::MAX_LINE_BYTES`].
    Output {
        buildpack: String,
        phase: Phase,
        line: String,
    },
    /// A line of the pipeline's own, already formatted the Heroku way (`-----> Title`,
    /// `       detail`, ` !     warning`).
    Notice {
        line: String,
    },
    PhaseStarted {
        phase: Phase,
        buildpack: String,
    },
    PhaseFinished {
        phase: Phase,
        buildpack: String,
        duration: Duration,
        success: bool,
    },
}

impl BuildEvent {
    /// The text to show the user for this event, if it is one they should see.
    pub fn line(&self) -> Option<&str> {
        match self {
            BuildEvent::Output { line, .. } | BuildEvent::Notice { line } => Some(line),
            BuildEvent::PhaseStarted { .. } | BuildEvent::PhaseFinished { .. } => None,
        }
    }

    pub(crate) fn title(text: impl fmt::Display) -> Self {
        BuildEvent::Notice {
            line: format!("-----> {text}"),
        }
    }

    pub(crate) fn detail(text: impl fmt::Display) -> Self {
        BuildEvent::Notice {
            line: format!("       {text}"),
        }
    }

    pub(crate) fn warning(text: impl fmt::Display) -> Self {
        BuildEvent::Notice {
            line: format!(" !     {text}"),
        }
    }
}
