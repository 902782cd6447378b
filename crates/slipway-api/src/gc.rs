//! Collecting what nothing uses any more: slugs beyond the rollback window, and slug files a
//! crash left without a record. Runs at start-up and after each deploy.
//!
//! The rollback window is the newest [`KEEP_RELEASES`] releases of each app (and always the
//! current one): their slugs stay, so `rollback` to any of them works; an older release keeps
//! its ledger entry, and rolling back to it is refused because its slug is gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use slipway_store::StoreError;

use crate::state::Shared;

/// Releases per app whose slugs are kept for rollbacks.
pub const KEEP_RELEASES: i64 = 20;
/// Anything younger may belong to a deploy still in progress.
const GRACE: Duration = Duration::from_secs(3600);

/// What one collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub slugs: usize,
    pub stray_files: usize,
}

pub async fn collect(state: &Shared) -> Result<Collected, StoreError> {
    let mut collected = Collected::default();
    let cutoff = chrono::Utc::now().timestamp_millis() - GRACE.as_millis() as i64;
    for slug in state.store.collectable_slugs(KEEP_RELEASES, cutoff).await? {
        remove_file(PathBuf::from(&slug.path)).await;
        state.store.delete_slug(&slug.id).await?;
        collected.slugs += 1;
    }
    let known: HashSet<PathBuf> = state
        .store
        .slug_paths()
        .await?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let root = state.settings.data_dir.join("slugs");
    let strays = tokio::task::spawn_blocking(move || stray_files(&root, &known))
        .await
        .unwrap_or_default();
    for path in strays {
        remove_file(path).await;
        collected.stray_files += 1;
    }
    if collected != Collected::default() {
        tracing::info!(
            slugs = collected.slugs,
            stray_files = collected.stray_files,
            "collected unused slugs"
        );
    }
    Ok(collected)
}

async fn remove_file(path: PathBuf) {
    if let Err(e) = tokio::fs::remove_file(&path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove slug file");
        }
    }
}

/// Files under `<data>/slugs/<app>/` that no slug record names and that are older than the grace
/// period (a `.partial` file of a build that died, a slug whose record was never written).
fn stray_files(root: &std::path::Path, known: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let old_enough = |meta: &std::fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > GRACE)
    };
    let mut out = Vec::new();
    for app_dir in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(app_dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            let Ok(meta) = file.metadata() else { continue };
            if meta.is_file() && !known.contains(&path) && old_enough(&meta) {
                out.push(path);
            }
        }
    }
    out
}
