//! Formation: how many dynos of each process type run, and their size.
//!
//! Quantities are absolute (`3`, `"3"`) or relative (`"+1"`, `"-1"`; a decrease stops at 0),
//! computed with checked arithmetic and kept between 0 and the server's
//! `--max-dynos-per-type` (422 `invalid_params` naming the limit otherwise). Sizes are
//! `standard-1X`, `standard-2X` and `performance-M` (any letter case); the size is recorded on
//! the formation and shown on its dynos; memory limits per size come with the dyno sandbox.
//! A process type the current release does not declare is a 404 naming the types it does.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use slipway_store::{App, Formation, FormationUpdate, User};

use crate::auth::Auth;
use crate::control::{find_app, start_converge};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::{AppLock, Shared};
use crate::views;

/// Dyno sizes this server accepts, in their canonical spelling.
pub const SIZES: [&str; 3] = ["standard-1X", "standard-2X", "performance-M"];

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/apps/{app}/formation",
            get(list_formation).patch(batch_update),
        )
        .route(
            "/apps/{app}/formation/{ptype}",
            get(formation_info).patch(update_one),
        )
}

fn render(app: &App, formation: &[Formation]) -> Json<Value> {
    Json(Value::Array(
        formation.iter().map(|f| views::formation(app, f)).collect(),
    ))
}

async fn list_formation(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath(app): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let formation = state.store.formation(&app.id).await?;
    Ok(render(&app, &formation))
}

async fn formation_info(
    State(state): State<Shared>,
    _auth: Auth,
    ApiPath((app, ptype)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let formation = state.store.formation(&app.id).await?;
    let f = formation
        .iter()
        .find(|f| f.process_type == ptype || f.id == ptype)
        .ok_or_else(|| unknown_type(&app, &ptype, &formation))?;
    Ok(Json(views::formation(&app, f)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchUpdate {
    updates: Vec<Update>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(rename = "type")]
    process_type: String,
    quantity: Option<Value>,
    size: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneUpdate {
    quantity: Option<Value>,
    size: Option<String>,
}

fn unknown_type(app: &App, ptype: &str, formation: &[Formation]) -> ApiError {
    let known: Vec<&str> = formation.iter().map(|f| f.process_type.as_str()).collect();
    ApiError::not_found(format!(
        "Couldn't find that process type ({ptype}). {}'s Procfile declares: {}.",
        app.name,
        if known.is_empty() {
            "nothing yet (deploy first)".to_string()
        } else {
            known.join(", ")
        }
    ))
}

/// A size in its canonical spelling, or a 422 listing the sizes there are.
pub fn canonical_size(raw: &str) -> ApiResult<&'static str> {
    SIZES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(raw.trim()))
        .copied()
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Dyno size {raw:?} is not available; this server offers {}.",
                SIZES.join(", ")
            ))
        })
}

/// `web=3` is `3` or `"3"`; `worker+1` is `"+1"`, `"-1"` (a decrease stops at 0). The result
/// is between 0 and `max`, or a 422 that names the limit; nothing ever wraps.
pub fn new_quantity(current: i64, raw: &Value, ptype: &str, max: u32) -> ApiResult<i64> {
    let max = i64::from(max);
    let out_of_range = |wanted: &str| {
        ApiError::invalid(format!(
            "Cannot scale {ptype} to {wanted}: the quantity must be between 0 and {max}, this server's most dynos per process type (--max-dynos-per-type)."
        ))
    };
    let bad = || {
        ApiError::invalid(format!(
            "Invalid quantity for {ptype}: {raw}; use a whole number such as 2, \"+1\" or \"-1\"."
        ))
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let quantity = match raw {
        Value::Number(n) => match n.as_i64() {
            Some(q) => q,
            None if n.is_u64() => return Err(out_of_range(&n.to_string())),
            None => return Err(bad()),
        },
        Value::String(s) => {
            let (sign, magnitude) = match s.strip_prefix('+') {
                Some(rest) => (Some(1), rest),
                None => match s.strip_prefix('-') {
                    Some(rest) => (Some(-1), rest),
                    None => (None, s.as_str()),
                },
            };
            if !digits(magnitude) {
                return Err(bad());
            }
            // All digits: the only way to fail parsing is to be too large.
            let Ok(magnitude) = magnitude.parse::<i64>() else {
                return Err(out_of_range(s));
            };
            match sign {
                None => magnitude,
                Some(1) => current
                    .checked_add(magnitude)
                    .ok_or_else(|| out_of_range(&format!("{current}{s}")))?,
                Some(_) => current.saturating_sub(magnitude).max(0),
            }
        }
        _ => return Err(bad()),
    };
    if !(0..=max).contains(&quantity) {
        return Err(out_of_range(&quantity.to_string()));
    }
    Ok(quantity)
}

async fn batch_update(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath(app): ApiPath<String>,
    ApiJson(body): ApiJson<BatchUpdate>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    apply(&state, &app, &user, body.updates).await
}

async fn update_one(
    State(state): State<Shared>,
    Auth(user): Auth,
    ApiPath((app, ptype)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<OneUpdate>,
) -> ApiResult<Json<Value>> {
    let app = find_app(&state, &app).await?;
    let update = Update {
        process_type: ptype,
        quantity: body.quantity,
        size: body.size,
    };
    let formation = apply(&state, &app, &user, vec![update]).await?;
    // The single-type endpoint answers with that type alone.
    Ok(Json(
        formation
            .0
            .as_array()
            .and_then(|all| all.first().cloned())
            .unwrap_or(Value::Null),
    ))
}

/// Checks every update, then applies them all in one transaction and converges the dynos.
/// Answers the types that were updated.
async fn apply(
    state: &Shared,
    app: &App,
    user: &User,
    updates: Vec<Update>,
) -> ApiResult<Json<Value>> {
    let lock = state.app_lock(AppLock::Release, &app.id);
    let _guard = lock.lock().await;
    let formation = state.store.formation(&app.id).await?;
    let mut seen = BTreeSet::new();
    let mut changes = Vec::new();
    let mut summary = Vec::new();
    for update in &updates {
        let ptype = &update.process_type;
        let current = formation
            .iter()
            .find(|f| &f.process_type == ptype)
            .ok_or_else(|| unknown_type(app, ptype, &formation))?;
        if !seen.insert(ptype.clone()) {
            return Err(ApiError::invalid(format!(
                "{ptype} appears twice in one update; give each process type once."
            )));
        }
        let quantity = update
            .quantity
            .as_ref()
            .map(|raw| {
                new_quantity(
                    current.quantity,
                    raw,
                    ptype,
                    state.settings.max_dynos_per_type,
                )
            })
            .transpose()?;
        let size = update.size.as_deref().map(canonical_size).transpose()?;
        let shown_quantity = quantity.unwrap_or(current.quantity);
        let shown_size = size.unwrap_or(&current.size);
        summary.push(format!("{ptype}={shown_quantity}:{shown_size}"));
        changes.push(FormationUpdate {
            process_type: ptype.clone(),
            quantity,
            size: size.map(str::to_string),
        });
    }
    let all = state.store.update_formation(&app.id, &changes).await?;
    if !summary.is_empty() {
        state.api_log(
            &app.id,
            &format!("Scale to {} by user {}", summary.join(", "), user.email),
        );
    }
    start_converge(state, &app.id).await?;
    let updated: Vec<Formation> = all
        .into_iter()
        .filter(|f| seen.contains(&f.process_type))
        .collect();
    Ok(render(app, &updated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_are_absolute_or_relative_and_bounded() {
        let q = |current, raw: Value| new_quantity(current, &raw, "web", 100);
        assert_eq!(q(1, json!(3)).expect("n"), 3);
        assert_eq!(q(1, json!("2")).expect("s"), 2);
        assert_eq!(q(1, json!("+2")).expect("+"), 3);
        assert_eq!(q(1, json!("-5")).expect("-"), 0);
        assert_eq!(q(1, json!("100")).expect("max"), 100);
        for bad in [
            json!("many"),
            json!(1000),
            json!(-1),
            json!(null),
            json!(2.5),
            json!(" 2"),
            json!("+"),
            json!("1e3"),
            json!("101"),
            json!("+9223372036854775807"),
            json!("+99999999999999999999"),
            json!("99999999999999999999"),
            json!(18446744073709551615u64),
        ] {
            let err = q(1, bad.clone()).expect_err(&bad.to_string());
            assert_eq!(err.id, "invalid_params", "{bad}");
        }
        let err = q(1, json!("+9223372036854775807")).expect_err("overflow");
        assert!(err.message.contains("between 0 and 100"), "{}", err.message);
    }

    #[test]
    fn sizes_are_canonical() {
        assert_eq!(canonical_size("Standard-2x").expect("2x"), "standard-2X");
        assert_eq!(canonical_size("performance-m").expect("m"), "performance-M");
        assert!(canonical_size("huge").is_err());
    }
}
