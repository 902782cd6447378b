//! Restarting one dyno of the formation (`ps:restart web.2`, `ps:stop web.2`).
//!
//! The dyno is marked retiring and its replacement starts beside it with the same name,
//! release and command; a web dyno is stopped once its replacement is up (or has failed to
//! come up), any other at once, so a web app never loses the capacity of the restarted dyno.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::Lifecycle;
use crate::{health, supervisor, Dyno, DynoManager, Inner, ProcessSpec};

impl DynoManager {
    /// Restarts the dyno `name` (`web.2`) of an app. Returns false when no such dyno runs.
    pub fn restart(&self, app_id: &str, name: &str) -> bool {
        restart_dyno(&self.inner, app_id, name)
    }
}

/// [`DynoManager::restart`], also used by failing liveness checks (`health.rs`).
pub(crate) fn restart_dyno(inner: &Arc<Inner>, app_id: &str, name: &str) -> bool {
    let (old, new) = {
        let mut apps = inner.lock_apps();
        let Some(list) = apps.get_mut(app_id) else {
            return false;
        };
        let Some(old) = list
            .iter()
            .rev()
            .find(|d| d.name == name && !d.retiring.load(Ordering::SeqCst))
            .cloned()
        else {
            return false;
        };
        old.retiring.store(true, Ordering::SeqCst);
        let spec = ProcessSpec {
            process_type: old.process_type.clone(),
            quantity: 1,
            command: old.command.clone(),
            size: old.size.clone(),
        };
        let new = supervisor::spawn(inner, &old.release, &spec, old.name.clone());
        list.push(new.clone());
        (old, new)
    };
    if new.process_type == "web" && !new.release.healthchecks.is_empty() {
        health::follow(inner.clone(), new.clone());
    }
    let boot_timeout = inner.boot_timeout(&new.release);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if new.process_type == "web" {
                let _ = tokio::time::timeout(boot_timeout + Duration::from_secs(5), settled(&new))
                    .await;
            }
            old.request_stop();
            old.stopped().await;
        },
        tracing::info_span!("restart", app = %app_id, dyno = %name),
    ));
    true
}

/// Waits until a new dyno is past starting (up, crashed, or gone).
async fn settled(d: &Arc<Dyno>) {
    loop {
        let state = d.lock_status().lifecycle;
        if state != Lifecycle::Starting || *d.done_rx.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
