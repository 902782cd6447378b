//! Who holds a host's lock, precisely enough to tell that the holder is gone: the slipway
//! installation (a random id kept in `<data>/installation-id`), the server's process id, and
//! the process's identity on this machine (boot id and start time, so a reused pid is not
//! mistaken for the holder).
//!
//! A lock whose installation is this one and whose process is no longer running was left by a
//! slipway that was killed (kill -9, OOM, power loss): nothing can still be using it, so the
//! next operation breaks it by itself and says so. A lock of another installation (another
//! server, a CI runner) is only reported; `targets:unlock` breaks it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file under the data directory holding the installation's id.
const INSTALLATION_FILE: &str = "installation-id";

/// This installation's id, created on first use (written through a temp file and a rename).
pub fn installation_id(data_dir: &Path) -> std::io::Result<String> {
    let file = data_dir.join(INSTALLATION_FILE);
    if let Ok(text) = std::fs::read_to_string(&file) {
        let id = text.trim();
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = data_dir.join(format!("{INSTALLATION_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &file)?;
    // Two first uses at once: whichever rename came last is the id.
    let text = std::fs::read_to_string(&file)?;
    Ok(text.trim().to_string())
}

/// A process on this machine: pid, and `<boot id>:<start time in clock ticks>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start: String,
}

impl ProcessId {
    /// The running process.
    pub fn this() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: start_of(pid).unwrap_or_default(),
        }
    }

    /// Is this very process still running (not another one with the same pid)?
    pub fn is_alive(&self) -> bool {
        !self.start.is_empty() && start_of(self.pid).as_deref() == Some(self.start.as_str())
    }

    /// `<pid>-<start ticks>`: a name for the process's own files.
    pub fn file_name(&self) -> String {
        let ticks = self.start.rsplit(':').next().unwrap_or("0");
        format!("{}-{ticks}", self.pid)
    }

    /// The inverse of [`ProcessId::file_name`] (on this boot).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let (pid, ticks) = name.split_once('-')?;
        let pid: u32 = pid.parse().ok()?;
        if ticks.is_empty() || !ticks.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            pid,
            start: format!("{}:{ticks}", boot_id()?),
        })
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `<boot id>:<starttime>` of `pid` (field 22 of `/proc/<pid>/stat`), if it runs.
fn start_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); a zombie is gone for our purposes.
    if fields.first() == Some(&"Z") {
        return None;
    }
    let ticks = fields.get(19)?;
    Some(format!("{}:{ticks}", boot_id()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let me = ProcessId::this();
        assert!(me.is_alive());
        assert_eq!(ProcessId::from_file_name(&me.file_name()), Some(me.clone()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let gone = ProcessId {
            pid,
            start: me.start.clone(),
        };
        assert!(!gone.is_alive());
        let reused = ProcessId {
            pid: me.pid,
            start: format!("{}0", me.start),
        };
        assert!(!reused.is_alive(), "a reused pid passed for the holder");
    }

    #[test]
    fn the_installation_id_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = installation_id(dir.path()).expect("id");
        assert_eq!(installation_id(dir.path()).expect("id"), a);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
