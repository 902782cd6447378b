//! What the router's tests share: a route table to resolve apps with, and the router lines
//! it writes.

use std::collections::HashMap;
use std::sync::Mutex;

use slipway_logs::{Filter, LogHub};
use slipway_router::{Resolution, Resolver, Target};

/// Apps by name, each found with the id `<name>-id`; any other name is no app.
#[derive(Default)]
pub struct Table(Mutex<HashMap<String, Resolution>>);

impl Resolver for Table {
    fn resolve(&self, app: &str) -> Resolution {
        self.lock()
            .get(app)
            .cloned()
            .unwrap_or(Resolution::NoSuchApp)
    }
}

impl Table {
    /// Routes `app` to `target`.
    pub fn set(&self, app: &str, target: Target) {
        let found = Resolution::Found {
            app_id: format!("{app}-id"),
            target,
        };
        self.lock().insert(app.to_string(), found);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolution>> {
        self.0.lock().expect("the route table's lock")
    }
}

/// The router lines in `app`'s log (its id is `<app>-id`), formatted.
#[allow(dead_code)]
pub fn router_lines(logs: &LogHub, app: &str) -> Vec<String> {
    logs.history(&format!("{app}-id"), &Filter::default(), 100)
        .iter()
        .map(|l| l.format())
        .collect()
}

/// `app`'s router lines once there are at least `n` of them.
#[allow(dead_code)]
pub async fn wait_for_lines(logs: &LogHub, app: &str, n: usize) -> Vec<String> {
    let what = format!("{n} router lines for {app}");
    slipway_testkit::wait_until(5, &what, || async {
        let lines = router_lines(logs, app);
        (lines.len() >= n).then_some(lines)
    })
    .await
}
