//! JSON shapes of the Platform API v3 resources slipway serves.

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};
use slipway_runtime::DynoInfo;
use slipway_store::{App, Build, Formation, Release, Slug, User};

use crate::control::Removed;
use crate::state::Settings;

/// The one region and stack this server has (see ARCHITECTURE.md).
pub const REGION: &str = "local";
pub const STACK: &str = "slipway-24";
pub const STACK_ID: &str = "00000000-0000-0000-0000-000000000024";

pub fn time(ms: i64) -> Value {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        None => Value::Null,
    }
}

pub fn account(user: &User) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "name": user.email.split('@').next().unwrap_or_default(),
        "allow_tracking": false,
        "beta": false,
        "verified": true,
        "two_factor_authentication": false,
        "created_at": time(user.created_at),
        "updated_at": time(user.created_at),
        "last_login": Value::Null,
        "default_organization": Value::Null,
        "default_team": Value::Null,
    })
}

pub fn app(settings: &Settings, app: &App, owner: &User, slug_size: Option<i64>) -> Value {
    json!({
        "id": app.id,
        "name": app.name,
        "web_url": settings.web_url(&app.name),
        "git_url": settings.git_url(&app.name),
        "maintenance": app.maintenance,
        "owner": { "id": owner.id, "email": owner.email },
        "region": { "id": "00000000-0000-0000-0000-000000000001", "name": REGION },
        "stack": { "id": STACK_ID, "name": STACK },
        "build_stack": { "id": STACK_ID, "name": STACK },
        "generation": { "id": "00000000-0000-0000-0000-000000000001", "name": "cedar" },
        "create_status": "complete",
        "created_at": time(app.created_at),
        "updated_at": time(app.updated_at),
        "released_at": app.released_at.map(time).unwrap_or(Value::Null),
        "slug_size": slug_size,
        "repo_size": Value::Null,
        "buildpack_provided_description": Value::Null,
        "archived_at": Value::Null,
        "acm": false,
        "internal_routing": Value::Null,
        "organization": Value::Null,
        "team": Value::Null,
        "space": Value::Null,
    })
}

pub fn release(app: &App, release: &Release, user: &User, current: bool) -> Value {
    json!({
        "id": release.id,
        "version": release.version,
        "description": release.description,
        "status": release.status,
        "current": current,
        "created_at": time(release.created_at),
        "updated_at": time(release.updated_at),
        "slug": release.slug_id.as_ref().map(|id| json!({ "id": id })),
        "user": { "id": user.id, "email": user.email },
        "app": { "id": app.id, "name": app.name },
        "addon_plan_names": [],
        "artifacts": [],
        "output_stream_url": Value::Null,
    })
}

pub fn formation(app: &App, f: &Formation) -> Value {
    json!({
        "id": f.id,
        "type": f.process_type,
        "quantity": f.quantity,
        "size": f.size,
        "command": f.command,
        "created_at": time(f.created_at),
        "updated_at": time(f.updated_at),
        "app": { "id": app.id, "name": app.name },
    })
}

/// What `DELETE /apps/{app}` removed, next to the app it answers with.
pub fn removed(r: &Removed) -> Value {
    json!({
        "dynos": r.dynos,
        "releases": r.releases,
        "builds": r.builds,
        "slugs": r.slugs,
        "slug_bytes": r.slug_bytes,
        "repository": r.repository,
        "log_lines": r.log_lines,
    })
}

/// A dyno: Heroku's fields (`size` is the size it runs with), then slipway's measurements,
/// `null` until the dyno's first sample (every `--dyno-metrics-interval` while it is up):
/// `memory_total_bytes` (what the quota counts: R14 compares it with `memory_quota_bytes`),
/// `memory_rss_bytes`, `memory_cache_bytes`, `memory_swap_bytes`, `cpu_seconds` (CPU time
/// used since it started), `load_avg_1m`/`_5m`/`_15m` (CPUs kept busy, from the second
/// sample), `sampled_at`.
pub fn dyno(app: &App, d: &DynoInfo, release_id: Option<&str>) -> Value {
    let usage = d.usage.as_ref();
    let round = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "id": d.id,
        "name": d.name,
        "type": d.process_type,
        "command": d.command,
        "state": d.state.as_str(),
        "size": d.size,
        "attach_url": Value::Null,
        "created_at": d.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "updated_at": d.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "release": { "id": release_id, "version": d.release_version },
        "app": { "id": app.id, "name": app.name },
        "memory_quota_bytes": d.memory_quota_bytes,
        "memory_total_bytes": usage.map(|u| u.memory_bytes),
        "memory_rss_bytes": usage.map(|u| u.memory_rss_bytes),
        "memory_cache_bytes": usage.map(|u| u.memory_cache_bytes),
        "memory_swap_bytes": usage.map(|u| u.memory_swap_bytes),
        "cpu_seconds": usage.and_then(|u| u.cpu_nanos).map(|n| round(n as f64 / 1e9)),
        "load_avg_1m": d.load.map(|l| round(l.one)),
        "load_avg_5m": d.load.map(|l| round(l.five)),
        "load_avg_15m": d.load.map(|l| round(l.fifteen)),
        "sampled_at": d.sampled_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    })
}

pub fn build(app: &App, b: &Build, user: &User, slug: Option<&Slug>) -> Value {
    json!({
        "id": b.id,
        "status": b.status.as_str(),
        "created_at": time(b.created_at),
        "updated_at": time(b.updated_at),
        "app": { "id": app.id, "name": app.name },
        "user": { "id": user.id, "email": user.email },
        "slug": b.slug_id.as_ref().map(|id| json!({ "id": id })),
        "release": b.release_id.as_ref().map(|id| json!({ "id": id })),
        "source_blob": {
            "checksum": slug.map(|s| s.checksum.clone()),
            "url": Value::Null,
            "version": b.commit_sha,
            "version_description": Value::Null,
        },
        "buildpacks": [],
        "stack": STACK,
        "output_stream_url": Value::Null,
    })
}
