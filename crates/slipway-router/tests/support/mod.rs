//! What the router's tests share: a route table to resolve apps with.

use std::collections::HashMap;
use std::sync::Mutex;

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
