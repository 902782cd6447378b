//! The runtime's own durable record of each dyno, kept in its monitor directory as `dyno.json`
//! (as conmon and containerd's shims keep theirs in the runtime's state directory): what a
//! later server needs to find the dyno again, re-adopt it with the same limits, or clean up
//! after it. It is written before the dyno's monitor starts and at each lifecycle transition
//! (write to a temporary file, fsync, rename), and removed only with the monitor directory,
//! after the dyno's clean-up: a dyno is never running without a record naming it.
//!
//! The control plane keeps its own copy in the store from [`crate::DynoEvent::Recorded`] and
//! [`crate::DynoEvent::Removed`]; re-adoption reads only these files.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::RuntimeError;

/// `<monitor dir>/dyno.json`.
pub(crate) const RECORD_FILE: &str = "dyno.json";

/// The largest record file read back (a record is a few hundred bytes; the command is the
/// biggest field, bounded by the Procfile's line length).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// A dyno's state as Heroku names it (in `ps`, the API and the log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DynoState {
    Starting,
    Up,
    Crashed,
    Down,
}

impl DynoState {
    pub fn as_str(self) -> &'static str {
        match self {
            DynoState::Starting => "starting",
            DynoState::Up => "up",
            DynoState::Crashed => "crashed",
            DynoState::Down => "down",
        }
    }
}

/// What the runtime keeps about one dyno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynoRecord {
    pub id: String,
    pub app_id: String,
    /// `web.1`
    pub name: String,
    pub process_type: String,
    pub command: String,
    pub release_version: i64,
    pub state: DynoState,
    /// The dyno's main process under its monitor.
    pub pid: Option<u32>,
    /// A web dyno's port (on loopback).
    pub port: Option<u16>,
    /// The dyno's own directory, `<dynos dir>/<app id>/<dyno id>`.
    pub dir: String,
    /// `standard-1X`: the limits it runs under.
    pub size: String,
    /// Milliseconds since the epoch, when this run began.
    pub created_at: i64,
}

impl DynoRecord {
    /// Writes the record into `monitor_dir` so that a crash at any point leaves either the old
    /// record or the new one, whole.
    pub(crate) fn save(&self, monitor_dir: &Path) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec(self).map_err(|e| RuntimeError::Monitor {
            dyno: self.id.clone(),
            detail: format!("encoding its record: {e}"),
        })?;
        let tmp = monitor_dir.join(format!("{RECORD_FILE}.tmp"));
        let path = monitor_dir.join(RECORD_FILE);
        {
            let mut file =
                std::fs::File::create(&tmp).map_err(RuntimeError::io("writing", &tmp))?;
            file.write_all(&json)
                .map_err(RuntimeError::io("writing", &tmp))?;
            file.sync_all().map_err(RuntimeError::io("syncing", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(RuntimeError::io("replacing", &path))
    }

    /// The record in `monitor_dir`, if there is a readable one.
    pub(crate) fn load(monitor_dir: &Path) -> Option<Self> {
        use std::io::Read;
        let file = std::fs::File::open(monitor_dir.join(RECORD_FILE)).ok()?;
        let mut raw = Vec::new();
        file.take(MAX_RECORD_BYTES).read_to_end(&mut raw).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_save_and_load_and_a_broken_one_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = DynoRecord {
            id: "d1".into(),
            app_id: "a1".into(),
            name: "web.1".into(),
            process_type: "web".into(),
            command: "python3 -m http.server $PORT".into(),
            release_version: 3,
            state: DynoState::Up,
            pid: Some(42),
            port: Some(5000),
            dir: "/var/lib/slipway-dynos/a1/d1".into(),
            size: "standard-2X".into(),
            created_at: 1,
        };
        record.save(dir.path()).expect("save");
        assert_eq!(DynoRecord::load(dir.path()), Some(record));
        std::fs::write(dir.path().join(RECORD_FILE), b"{\"id\":").expect("write");
        assert_eq!(DynoRecord::load(dir.path()), None);
    }
}
