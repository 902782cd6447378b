//! The reconciliation pass: what actually runs, compared with what should.
//!
//! [`DynoManager::converge`] runs on every change; each supervisor restarts its own dyno after
//! a crash and learns of its exit from its monitor. What neither sees is drift from outside:
//! a dyno the formation wants that no supervisor runs, one it does not want, one of a stale
//! release, or a dyno whose processes are gone while its monitor still holds its socket open
//! (a monitor that hung or was stopped, over a container someone `runc kill`ed and `runc
//! delete`d). The control plane calls [`DynoManager::reconcile`] for every app periodically
//! (`--reconcile-interval`) with the app's current release and formation; the pass corrects
//! what it finds, reports each correction as a [`DynoEvent::Reconciled`] (a `heroku[web.1]:
//! Reconciling: ...` line) and leaves an app alone while a rollout or a restart is under way
//! (it never fights one; the caller skips apps a deploy holds).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::attach::{monitor_dir, read_pids};
use crate::lifecycle::Lifecycle;
use crate::process::{pid_belongs_to_dyno, runs_as_child_of};
use crate::rollout::Rollout;
use crate::{effective_formation, Dyno, DynoEvent, DynoManager, ProcessSpec, ReleaseSpec};

/// One thing a pass corrected in an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correction {
    /// The formation wants this dyno and none ran it: started.
    Missing { name: String, version: i64 },
    /// A dyno the formation does not want (beyond its quantity, or of a process type it no
    /// longer has): stopped.
    Extra { name: String },
    /// A dyno of another release, command or size than the formation's: replaced the way a
    /// deploy replaces dynos (the new one first, then the old one drains and stops).
    Stale {
        name: String,
        running: i64,
        version: i64,
    },
    /// Its process is gone but its monitor never reported the exit (the monitor hung): the
    /// monitor is killed, so the supervisor sees the dyno end and restarts it.
    Lost { name: String, pid: u32 },
}

impl Correction {
    /// The dyno it is about: `web.2`.
    pub fn name(&self) -> &str {
        match self {
            Correction::Missing { name, .. }
            | Correction::Extra { name }
            | Correction::Stale { name, .. }
            | Correction::Lost { name, .. } => name,
        }
    }

    /// What the `heroku[web.2]` line says.
    pub fn message(&self) -> String {
        match self {
            Correction::Missing { version, .. } => {
                format!("Reconciling: not running but wanted by the formation of v{version}; starting it")
            }
            Correction::Extra { .. } => {
                "Reconciling: running but not wanted by the formation; stopping it".to_string()
            }
            Correction::Stale {
                running, version, ..
            } if running != version => format!(
                "Reconciling: runs v{running} but the current release is v{version}; replacing it"
            ),
            Correction::Stale { version, .. } => format!(
                "Reconciling: runs another command or size than the formation of v{version}; replacing it"
            ),
            Correction::Lost { pid, .. } => format!(
                "Reconciling: its process (pid {pid}) is gone but its monitor never reported an exit; restarting it"
            ),
        }
    }
}

/// How a pass went for one app.
pub enum Reconciled {
    /// What runs matches the release and formation.
    InStep,
    /// A rollout, restart or stop of the app is under way: left alone this time.
    Busy,
    /// Drift was found and corrected. `rollout`: the converge that started missing dynos
    /// and stopped extra or stale ones, if any (its outcome says whether replacements of a
    /// stale release became healthy).
    Corrected {
        corrections: Vec<Correction>,
        rollout: Option<Rollout>,
    },
}

/// Dynos whose process looked gone on the last pass (dyno id -> its app and pid): a dyno is
/// corrected only when it still looks gone on the next pass, so a monitor that is just
/// recording a normal exit is never killed for it.
#[derive(Default)]
pub(crate) struct Suspects(std::sync::Mutex<HashMap<String, (String, u32)>>);

impl DynoManager {
    /// Compares the app's dynos with `release` and `formation` (its current ones, from the
    /// control plane's store) and corrects the difference: see the module's documentation.
    pub fn reconcile(&self, release: ReleaseSpec, formation: &[ProcessSpec]) -> Reconciled {
        let app_id = release.app_id.clone();
        let dynos: Vec<Arc<Dyno>> = self
            .inner
            .lock_apps()
            .get(&app_id)
            .cloned()
            .unwrap_or_default();
        if dynos.iter().any(|d| d.retiring.load(Ordering::SeqCst)) || self.inner.rolling(&app_id) {
            return Reconciled::Busy;
        }
        let asleep = self
            .inner
            .lock_desired()
            .get(&app_id)
            .is_some_and(|d| d.asleep && crate::sleep_after(&release.env).is_some());
        let effective = effective_formation(formation, asleep);
        let mut corrections = Vec::new();
        let mut kept: Vec<&str> = Vec::new();
        for spec in &effective {
            for index in 1..=spec.quantity {
                let name = format!("{}.{}", spec.process_type, index);
                let matching = dynos.iter().find(|d| {
                    d.name == name
                        && d.release.version == release.version
                        && d.command == spec.command
                        && d.size == spec.size
                        && !kept.contains(&d.id.as_str())
                });
                match matching {
                    Some(d) => kept.push(&d.id),
                    None if dynos.iter().any(|d| d.name == name) => {}
                    None => corrections.push(Correction::Missing {
                        name,
                        version: release.version,
                    }),
                }
            }
        }
        let wanted: Vec<String> = effective
            .iter()
            .flat_map(|s| (1..=s.quantity).map(move |i| format!("{}.{}", s.process_type, i)))
            .collect();
        for d in dynos.iter().filter(|d| !kept.contains(&d.id.as_str())) {
            corrections.push(if wanted.contains(&d.name) {
                Correction::Stale {
                    name: d.name.clone(),
                    running: d.release.version,
                    version: release.version,
                }
            } else {
                Correction::Extra {
                    name: d.name.clone(),
                }
            });
        }
        let lost = self.lost(&dynos, &kept);
        let converge = !corrections.is_empty();
        corrections.extend(lost.iter().map(|(d, pid, _)| Correction::Lost {
            name: d.name.clone(),
            pid: *pid,
        }));
        if corrections.is_empty() {
            return Reconciled::InStep;
        }
        for c in &corrections {
            tracing::warn!(app = %app_id, dyno = c.name(), correction = ?c, "reconciling drift");
            self.inner.events.send(DynoEvent::Reconciled {
                app_id: app_id.clone(),
                name: c.name().to_string(),
                message: c.message(),
            });
        }
        for (d, _, monitor) in &lost {
            // The supervisor then learns of the end (the monitor's socket closes), kills
            // what is left of the dyno and restarts it.
            crate::kill_dyno_pids(&d.id, [*monitor]);
        }
        let rollout = converge.then(|| self.converge(release, formation));
        Reconciled::Corrected {
            corrections,
            rollout,
        }
    }

    /// Kept dynos that are up, whose monitor still runs, but whose process is gone, for the
    /// second pass in a row (with the same pid): (dyno, its pid, its monitor's pid).
    fn lost(&self, dynos: &[Arc<Dyno>], kept: &[&str]) -> Vec<(Arc<Dyno>, u32, u32)> {
        let mut suspects = self
            .inner
            .suspects
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut lost = Vec::new();
        for d in dynos.iter().filter(|d| kept.contains(&d.id.as_str())) {
            let gone = (d.lock_status().lifecycle == Lifecycle::Up)
                .then(|| read_pids(&monitor_dir(&self.inner.cfg.dynos_dir, &d.id)))
                .flatten()
                .filter(|p| p.dyno > 0 && p.monitor > 0)
                .filter(|p| {
                    pid_belongs_to_dyno(i64::from(p.monitor), &d.id)
                        && !runs_as_child_of(p.dyno, p.monitor)
                });
            match gone {
                Some(p) if suspects.get(&d.id).map(|(_, pid)| *pid) == Some(p.dyno) => {
                    suspects.remove(&d.id);
                    lost.push((d.clone(), p.dyno, p.monitor));
                }
                Some(p) => {
                    suspects.insert(d.id.clone(), (d.app_id.clone(), p.dyno));
                }
                None => {
                    suspects.remove(&d.id);
                }
            }
        }
        // Forget the suspects among this app's dynos that no longer run.
        let app_id = dynos.first().map(|d| d.app_id.as_str());
        suspects.retain(|id, (app, _)| {
            Some(app.as_str()) != app_id || dynos.iter().any(|d| d.id == *id)
        });
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_correction_says_what_was_wrong_and_what_was_done() {
        let said = |c: Correction| (c.name().to_string(), c.message());
        let cases = [
            (
                Correction::Missing {
                    name: "web.2".into(),
                    version: 3,
                },
                "Reconciling: not running but wanted by the formation of v3; starting it",
            ),
            (
                Correction::Extra {
                    name: "web.2".into(),
                },
                "Reconciling: running but not wanted by the formation; stopping it",
            ),
            (
                Correction::Stale {
                    name: "web.2".into(),
                    running: 2,
                    version: 3,
                },
                "Reconciling: runs v2 but the current release is v3; replacing it",
            ),
            (
                Correction::Stale {
                    name: "web.2".into(),
                    running: 3,
                    version: 3,
                },
                "Reconciling: runs another command or size than the formation of v3; replacing it",
            ),
            (
                Correction::Lost {
                    name: "web.2".into(),
                    pid: 42,
                },
                "Reconciling: its process (pid 42) is gone but its monitor never reported an exit; restarting it",
            ),
        ];
        for (correction, message) in cases {
            assert_eq!(said(correction), ("web.2".to_string(), message.to_string()));
        }
    }
}
