//! A command in a one-off dyno (the build's tests, a release phase on a pipeline deploy), its
//! output collected line by line with every secret value masked.

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_runtime::{DynoSize, OneOff, OneOffIo, OneOffMode, OneOffRequest, ReleaseSpec};
use tokio::sync::mpsc;

pub use crate::deploys::Masker;
use crate::state::Shared;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    pub code: i32,
    pub timed_out: bool,
}

/// What to run.
pub struct Command<'a> {
    pub release: ReleaseSpec,
    /// `test.7`, `release.3`: the dyno's name.
    pub name: String,
    pub command: &'a str,
    /// Added to the release's config; values are masked in the output.
    pub env: BTreeMap<String, String>,
    pub time_to_live: Duration,
}

/// Runs `cmd` and gives each output line (stdout and stderr, masked) to `on_line`.
pub async fn run_command(
    state: &Shared,
    cmd: Command<'_>,
    masker: &Masker,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<Ran, String> {
    let one_off = state
        .dynos
        .run_one_off(OneOffRequest {
            release: cmd.release,
            name: cmd.name.clone(),
            command: cmd.command.to_string(),
            env: cmd.env,
            size: DynoSize::standard_1x(),
            time_to_live: cmd.time_to_live,
            mode: OneOffMode::Pipes,
        })
        .await
        .map_err(|e| format!("the {} dyno could not start: {e}", cmd.name))?;
    let OneOff {
        io, exit, handle, ..
    } = one_off;
    let OneOffIo::Pipes { stdout, stderr, .. } = io else {
        handle.stop();
        return Err(format!("the {} dyno got no output pipes", cmd.name));
    };
    let (tx, mut lines) = mpsc::channel::<String>(256);
    for pipe in [stdout, stderr] {
        crate::oneoff::pump_lines(pipe, tx.clone());
    }
    drop(tx);
    while let Some(line) = lines.recv().await {
        on_line(&masker.mask(&line));
    }
    let exit = exit
        .await
        .map_err(|_| format!("the {} dyno was lost", cmd.name))?;
    Ok(Ran {
        code: exit.code,
        timed_out: exit.timed_out,
    })
}
