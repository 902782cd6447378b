//! Killing every process a build user has, before root touches that build's files again.
//!
//! A buildpack can leave processes behind (`setsid`, a double fork): they escape the build's
//! process group, and could swap files under root while it chowns the cache or packs the slug.
//! Builds therefore run as a user of their own (no dyno shares it), and every process of that
//! user is killed before the build starts and once its buildpacks are done. `kill -9 -1`,
//! run as that user (through `setpriv`), reaches exactly the processes the user owns, and the
//! kernel walks the process list under a lock that forks wait for, so none slips through.

use std::path::Path;
use std::time::Duration;

use crate::BuildError;

/// How often the kill is repeated before giving up (each round re-checks `/proc`).
const ROUNDS: usize = 50;

/// Kills every process whose real uid is `owner.0` and waits until none is left.
pub async fn kill_user_processes(owner: (u32, u32)) -> Result<(), BuildError> {
    let (uid, gid) = owner;
    for _ in 0..ROUNDS {
        if alive(uid).is_empty() {
            return Ok(());
        }
        let status = tokio::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .args(["sh", "-c", "kill -9 -1 2>/dev/null; exit 0"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| BuildError::Interrupted(format!("could not run setpriv: {e}")))?;
        if !status.success() {
            return Err(BuildError::Interrupted(format!(
                "setpriv could not kill the processes of build user {uid} ({status})"
            )));
        }
        // Killed processes linger as zombies until their parent reaps them; those are skipped.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BuildError::Interrupted(format!(
        "processes of build user {uid} are still running: {:?}",
        alive(uid)
    )))
}

/// Pids of live (not zombie) processes whose real uid is `uid`.
pub(crate) fn alive(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((real, zombie)) = status_of(&entry.path()) {
            if real == uid && !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

fn status_of(proc_dir: &Path) -> Option<(u32, bool)> {
    let text = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let mut real = None;
    let mut zombie = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            real = rest.split_whitespace().next().and_then(|u| u.parse().ok());
        } else if let Some(rest) = line.strip_prefix("State:") {
            zombie = rest.trim_start().starts_with('Z');
        }
    }
    real.map(|r| (r, zombie))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that detached itself into its own session, as a buildpack could, is killed.
    #[tokio::test]
    async fn processes_left_behind_by_a_build_user_are_killed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to switch users");
            return;
        }
        let owner = (599_990, 599_990);
        let mut child = tokio::process::Command::new("setpriv")
            .args([
                "--reuid=599990",
                "--regid=599990",
                "--clear-groups",
                "setsid",
                "-f",
                "sh",
                "-c",
                "sleep 300",
            ])
            .spawn()
            .expect("start a detached process");
        let _ = child.wait().await;
        slipway_testkit::wait_until(10, "the detached process to run", || async {
            (!alive(599_990).is_empty()).then_some(())
        })
        .await;
        kill_user_processes(owner).await.expect("killed");
        assert!(alive(599_990).is_empty(), "{:?}", alive(599_990));
    }
}
