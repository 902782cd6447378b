//! Control-plane operations, shared by the API handlers, git pushes and server start-up.

use axum::http::StatusCode;
use slipway_core::AppName;
use slipway_runtime::{ProcessSpec, ReleaseSpec};
use slipway_store::{App, User};

use crate::error::{ApiError, ApiResult};
use crate::state::{AppEntry, AppLock, Shared};

/// Creates an app and its git repository. Either both exist afterwards, or neither.
pub async fn create_app(state: &Shared, user: &User, name: Option<&str>) -> ApiResult<App> {
    let name = match name {
        Some(n) => AppName::parse(n).map_err(|e| ApiError::invalid(e.to_string()))?,
        None => generated_name(state).await?,
    };
    let app = state
        .store
        .create_app(name.as_str(), &user.id)
        .await
        .map_err(|e| match e {
            slipway_store::StoreError::Conflict(_) => ApiError::invalid(format!(
                "Name {name} is already taken; choose another app name."
            )),
            other => other.into(),
        })?;
    let repo = state.settings.repo_dir(&app.id);
    let init = tokio::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main"])
        .arg(&repo)
        .output()
        .await;
    let failure = match init {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Some(format!("could not run git: {e}")),
    };
    if let Some(err) = failure {
        let _ = state.store.delete_app(&app.id).await;
        let _ = tokio::fs::remove_dir_all(&repo).await;
        return Err(ApiError::internal("creating the app's git repository", err));
    }
    state.remember_app(
        &app.name,
        AppEntry {
            id: app.id.clone(),
            maintenance: app.maintenance,
        },
    );
    state.api_log(
        &app.id,
        &format!("Create app {} by user {}", app.name, user.email),
    );
    Ok(app)
}

async fn generated_name(state: &Shared) -> ApiResult<AppName> {
    const ADJECTIVES: [&str; 8] = [
        "calm", "bright", "swift", "quiet", "bold", "gentle", "brave", "lucky",
    ];
    const NOUNS: [&str; 8] = [
        "harbor", "river", "meadow", "summit", "forest", "canyon", "island", "glacier",
    ];
    for _ in 0..20 {
        let n: u32 = rand::random();
        let raw = format!(
            "{}-{}-{:05}",
            ADJECTIVES[(n % 8) as usize],
            NOUNS[((n / 8) % 8) as usize],
            (n / 64) % 100_000
        );
        if state.store.find_app(&raw).await?.is_none() {
            return AppName::parse(&raw)
                .map_err(|e| ApiError::internal("generating an app name", e));
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "Could not find a free app name; pass one explicitly.",
    ))
}

/// Destroys an app: stops its dynos, then removes its records, repository, slugs and logs.
pub async fn destroy_app(state: &Shared, app: &App) -> ApiResult<()> {
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    state.forget_app(&app.name);
    state.dynos.stop_app(&app.id).await;
    state.store.delete_app(&app.id).await?;
    for dir in [
        state.settings.repo_dir(&app.id),
        state.settings.slug_dir(&app.id),
    ] {
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove app files");
            }
        }
    }
    state.logs.remove(&app.id);
    Ok(())
}

/// Brings the app's dynos in line with its current release and formation.
pub async fn converge_app(state: &Shared, app_id: &str) -> ApiResult<()> {
    let Some(release) = state.store.current_release(app_id).await? else {
        return Ok(());
    };
    let Some(slug_id) = release.slug_id.as_deref() else {
        return Ok(());
    };
    let slug = state.store.slug(slug_id).await?;
    let formation = state.store.formation(app_id).await?;
    let specs: Vec<ProcessSpec> = formation
        .iter()
        .map(|f| ProcessSpec {
            process_type: f.process_type.clone(),
            quantity: u32::try_from(f.quantity).unwrap_or(0),
            command: f.command.clone(),
        })
        .collect();
    state.dynos.converge(
        ReleaseSpec {
            app_id: app_id.to_string(),
            version: release.version,
            slug_path: slug.path.into(),
            slug_checksum: slug.checksum,
            env: release.config,
        },
        &specs,
    );
    Ok(())
}

/// Loads an app by name or id, or answers Heroku's 404.
pub async fn find_app(state: &Shared, name_or_id: &str) -> ApiResult<App> {
    state
        .store
        .find_app(name_or_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Couldn't find that app: {name_or_id}.")))
}
