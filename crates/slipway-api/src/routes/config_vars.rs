//! Config Vars: read an app's config (or the one a release carried) and change it.
//!
//! `PATCH /apps/{app}/config-vars` takes `{"NAME": "value", "OTHER": null}`: a string sets,
//! null removes. The whole change is one release (`Set A, B config vars`, `Remove A config
//! vars`) written in one transaction with the config, then the dynos are restarted onto it the
//! way a deploy does (new dynos up before old ones stop).
//!
//! Rules (checked before anything changes; errors name the keys, never the values):
//! - names: ASCII letters, digits and `_`, not starting with a digit, at most 256 bytes
//!   (what a POSIX shell accepts as a variable name; Heroku's rule too);
//! - values: any text JSON can carry (quotes, newlines, `=`, unicode) except the NUL
//!   character, which no environment variable can hold; at most 32 KiB each;
//! - the whole config (names and values) at most 64 KiB;
//! - the dyno manager's own settings (`SLIPWAY_BOOT_TIMEOUT`, `SLIPWAY_LOG_RUNTIME_METRICS`,
//!   see `slipway_runtime::settings`) must hold a value it accepts.
//!
//! Values are secrets: they are never logged, and never echoed in errors.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use slipway_store::{ConfigOutcome, ReleaseStatus};

use crate::auth::Auth;
use crate::control::{converge_app, find_app};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::{AppLock, Shared};

pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/apps/{app}/config-vars",
            get(app_config).patch(update_config),
        )
        .route(
            "/apps/{app}/releases/{release}/config-vars",
            get(release_config),
        )
}

async fn app_config(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    Ok(Json(json!(app.config)))
}

/// The config vars a release was made with (its snapshot, not the app's current ones).
async fn release_config(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, release)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let r = state.store.release(&app.id, &release).await?;
    Ok(Json(json!(r.config)))
}

/// A config var name a shell could export.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_NAME_BYTES
}

/// Reads a PATCH body into changes, or says every key that is wrong and why.
fn parse_changes(body: &Value) -> ApiResult<BTreeMap<String, Option<String>>> {
    let Value::Object(map) = body else {
        return Err(ApiError::invalid(
            "The body must be a JSON object of config vars: {\"NAME\": \"value\", \"OTHER\": null}.",
        ));
    };
    let mut changes = BTreeMap::new();
    let (mut bad_names, mut problems) = (Vec::new(), Vec::new());
    for (name, value) in map {
        if !valid_name(name) {
            // A name may be pasted from a value by mistake: show it bounded, as JSON.
            let shown: String = name.chars().take(64).collect();
            bad_names.push(serde_json::to_string(&shown).unwrap_or_default());
            continue;
        }
        match value {
            Value::Null => {
                changes.insert(name.clone(), None);
            }
            Value::String(v) if v.contains('\0') => problems.push(format!(
                "{name} contains a NUL character, which no environment variable can hold"
            )),
            Value::String(v) if v.len() > MAX_VALUE_BYTES => problems.push(format!(
                "{name} is {} bytes; a value may be at most {MAX_VALUE_BYTES} bytes (32 KiB)",
                v.len()
            )),
            Value::String(v) => match slipway_runtime::settings::check_setting(name, v) {
                Ok(()) => {
                    changes.insert(name.clone(), Some(v.clone()));
                }
                Err(e) => problems.push(e.to_string()),
            },
            _ => problems.push(format!("{name} must be a string (or null to remove it)")),
        }
    }
    if !bad_names.is_empty() {
        return Err(ApiError::invalid(format!(
            "Invalid config var name{} {}: names hold ASCII letters, digits and underscores, do not start with a digit, and are at most {MAX_NAME_BYTES} bytes.",
            if bad_names.len() == 1 { "" } else { "s" },
            bad_names.join(", ")
        )));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(format!(
            "Invalid config vars: {}.",
            problems.join("; ")
        )));
    }
    Ok(changes)
}

async fn update_config(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let changes = parse_changes(&body)?;
    change_config(&state, &app, &user, &changes).await.map(Json)
}

/// Applies checked config changes: one release, the dynos restarted onto it (after a release
/// phase, if the slug has one). Answers the app's config as it is now.
pub(crate) async fn change_config(
    state: &Shared,
    app: &slipway_store::App,
    user: &slipway_store::User,
    changes: &BTreeMap<String, Option<String>>,
) -> ApiResult<Value> {
    // Held across the release and the converge: two changes never converge out of order.
    let lock = state.app_lock(AppLock::Release, &app.id);
    let guard = lock.lock_owned().await;
    // With a release phase the release is created `Pending`, the phase runs in the
    // background (holding the lock), and only a succeeded release is converged onto.
    let release_command = match state.store.current_release(&app.id).await? {
        Some(current) => crate::oneoff::release_command(state, &current).await?,
        None => None,
    };
    let status = match release_command {
        Some(_) => ReleaseStatus::Pending,
        None => ReleaseStatus::Succeeded,
    };
    let outcome = state
        .store
        .update_config(&app.id, changes, MAX_CONFIG_BYTES, &user.id, status)
        .await?;
    match outcome {
        ConfigOutcome::Unchanged(config) => Ok(json!(config)),
        ConfigOutcome::TooLarge { bytes, limit } => Err(ApiError::invalid(format!(
            "{}'s config vars would take {bytes} bytes (names and values together); the limit is {limit} bytes (64 KiB). Nothing was changed.",
            app.name
        ))),
        ConfigOutcome::Released { release, config } => {
            state.api_log(
                &app.id,
                &format!("{} by user {}", release.description, user.email),
            );
            state.api_log(
                &app.id,
                &format!(
                    "Release v{} created by user {}",
                    release.version, user.email
                ),
            );
            match release_command {
                Some(command) => crate::oneoff::finish_in_background(
                    state.clone(),
                    app.clone(),
                    release,
                    command,
                    guard,
                ),
                None => converge_app(state, &app.id).await?.into_result()?,
            }
            Ok(json!(config))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shell_variable_names() {
        for good in ["A", "_X", "DATABASE_URL", "a1", "x_2_y"] {
            assert!(valid_name(good), "{good}");
        }
        let long = "A".repeat(MAX_NAME_BYTES + 1);
        for bad in ["", "1A", "A-B", "A B", "A=B", "É", "A.B", long.as_str()] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn changes_name_bad_keys_and_never_values() {
        let secret = "hunter2-secret";
        let body = json!({ "GOOD": secret, "BAD-NAME": secret, "9LIVES": null });
        let err = parse_changes(&body).expect_err("bad names");
        assert!(
            err.message.contains("\"9LIVES\", \"BAD-NAME\""),
            "{}",
            err.message
        );
        assert!(!err.message.contains(secret), "{}", err.message);

        let body = json!({ "NUM": 5, "NUL": "a\u{0}b", "BIG": "x".repeat(MAX_VALUE_BYTES + 1) });
        let err = parse_changes(&body).expect_err("bad values");
        for part in [
            "NUM must be a string",
            "NUL contains a NUL",
            "BIG is 32769 bytes",
        ] {
            assert!(err.message.contains(part), "{}", err.message);
        }
        assert_eq!(err.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);

        let ok = parse_changes(&json!({ "A": "x='1'\n=\"é\"", "B": null })).expect("ok");
        assert_eq!(ok["A"].as_deref(), Some("x='1'\n=\"é\""));
        assert_eq!(ok["B"], None);
        assert!(parse_changes(&json!(["A"])).is_err());
    }
}
