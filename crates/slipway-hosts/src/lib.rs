//! The release store and host targets (issue 11): build a release once, keep it with its tag,
//! checksum and metadata, and deploy it over SSH to hosts the user owns.
//!
//! - `store.rs`: tarballs on disk under `<data>/store/<name>/<tag>.tgz`, written through a temp
//!   file and a rename; their records in the state database (`slipway_store::release_store`).
//! - `target.rs`: a target's spec (hosts, path, restart and health commands, shared dirs, batch
//!   size) and its secret environment, validated.
//! - `ssh.rs`: the OpenSSH client (through the `openssh` crate: one ControlMaster connection
//!   per host for a whole operation), the target's own `known_hosts` and first-contact
//!   fingerprints.
//! - `remote.rs`: the small POSIX shell scripts slipway runs on a host, one per step.
//! - `relocation.rs`: refuses a release whose files name the directory it was built in (it
//!   runs from `<path>/current` on a host).
//! - `holder.rs`: who holds a lock (installation, process), to tell a dead holder.
//! - `deploy.rs`: [`HostTarget`], which implements [`DeployTarget`]: locking, upload, atomic
//!   switch, restart, health checks, rollback, prune, exec.
//!
//! On a host, under the target's path:
//!
//! ```text
//! releases/<tag>/          one directory per release, complete or absent
//! releases/<tag>/.slipway/env   the target's environment it was deployed with (mode 600)
//! current -> releases/<tag>     switched by renaming a new symlink over it
//! shared/<dir>             linked into each release (--shared)
//! .slipway/lock            {"owner","deploy_id","acquired_at","ttl_secs","operation",
//!                          "installation","process":{"pid","start"},"machine"} while an
//!                          operation runs (a killed slipway's is broken by the next one)
//! .slipway/state.json      releases present (tag, store name, sha256, status, pinned), current,
//!                          previous known-good; written to a temp file and renamed
//! .slipway/tmp/            uploads and unpacks in progress (invisible; emptied under the lock)
//! ```

mod deploy;
mod holder;
pub mod relocation;
mod remote;
mod ssh;
pub mod store;
mod target;

use std::future::Future;

pub use deploy::{
    DeployOptions, DeployReport, ExecResult, HostOutcome, HostReleases, HostTarget, Progress,
    PruneReport, Switch,
};
pub use holder::{installation_id, ProcessId};
pub use remote::{HostState, LockInfo, ReleaseEntry, ReleaseStatus};
pub use ssh::{scan_host_keys, HostKey, KnownHosts};
pub use store::{ReleaseStore, ReleaseStoreError};
pub use target::{env_file, validate_env, validate_name, HostSpec, TargetSpec};

/// Why an operation on a target failed. Messages name the host and say how to fix it; the
/// target's environment values never appear in them.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target: {0}")]
    Invalid(String),
    #[error("could not connect to {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the host key of {host} has changed (it now presents {presented}); slipway refuses to connect. If the host was really re-keyed, check the new key and run `slipway targets:trust TARGET --accept-host-key {presented}`")]
    HostKeyChanged { host: String, presented: String },
    #[error("{host} is not trusted yet; it presents {fingerprints}. Check the fingerprint with the host's owner and pass --accept-host-key FINGERPRINT")]
    HostKeyUnknown { host: String, fingerprints: String },
    #[error("{host} is locked by {holder}{stale}; wait for it (--lock-wait SECS) or break it with `slipway targets:unlock TARGET`")]
    Locked {
        host: String,
        holder: String,
        stale: String,
    },
    #[error("on {host}: {step} failed: {detail}")]
    Remote {
        host: String,
        step: String,
        detail: String,
    },
    #[error("ssh to {host}: {detail}")]
    Ssh { host: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("the operation was cancelled")]
    Cancelled,
    #[error("release store: {0}")]
    Store(#[from] ReleaseStoreError),
    #[error(transparent)]
    NotRelocatable(#[from] relocation::RelocationError),
    #[error("local I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Something a pipeline can deploy releases to and check, the same way for every kind of
/// target (slipway's own dynos, a set of SSH hosts, later others).
pub trait DeployTarget {
    /// Deploys `release` (whose tarball is at `release.path`), host by host, and reports what
    /// every host runs afterwards. A failed health check rolls back (see the implementation).
    fn deploy(
        &self,
        release: &slipway_store::release_store::StoredRelease,
        options: &DeployOptions,
        progress: &Progress,
    ) -> impl Future<Output = Result<DeployReport, TargetError>> + Send;

    /// Switches back to `tag`, or to the previous known-good release when `None`.
    fn rollback(
        &self,
        tag: Option<&str>,
        options: &DeployOptions,
        progress: &Progress,
    ) -> impl Future<Output = Result<DeployReport, TargetError>> + Send;

    /// What each host has and runs.
    fn releases(&self) -> impl Future<Output = Result<Vec<HostReleases>, TargetError>> + Send;

    /// Runs the health check once (with its attempts) on every host: `Ok` per healthy host.
    fn health(
        &self,
        progress: &Progress,
    ) -> impl Future<Output = Result<HealthReport, TargetError>> + Send;
}

/// Per host: healthy, or why not.
pub type HealthReport = Vec<(String, Result<(), String>)>;
