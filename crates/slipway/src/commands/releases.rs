//! releases, releases:info, rollback: the release ledger.

use std::io::Write;

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use super::{app_path, progress, s, when};
use crate::client::Client;

async fn newest_first(client: &Client, app: &str, max: usize) -> anyhow::Result<Vec<Value>> {
    let req = client
        .request(Method::GET, &format!("{}/releases", app_path(app)))
        .header(
            "Range",
            format!("version ..; max={}, order=desc", max.clamp(1, 1000)),
        );
    Ok(client
        .send(req)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// `Deploy abc`, or `Deploy abc (failed)` for a release that is not live-able.
fn description(r: &Value) -> String {
    match s(r, "status") {
        "succeeded" | "" => s(r, "description").to_string(),
        status => format!("{} ({status})", s(r, "description")),
    }
}

pub async fn list(client: &Client, app: &str, num: usize, json: bool) -> anyhow::Result<()> {
    let rows = newest_first(client, app, num).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let current = rows
        .iter()
        .find(|r| r["current"].as_bool() == Some(true))
        .map(|r| format!("v{}", r["version"]))
        .unwrap_or_else(|| "none".into());
    writeln!(out, "=== {app} Releases - Current: {current}")?;
    if rows.is_empty() {
        writeln!(
            out,
            "{app} has no releases yet: push with `git push slipway main`"
        )?;
    }
    let width = rows.iter().map(|r| description(r).len()).max().unwrap_or(0);
    for r in &rows {
        writeln!(
            out,
            "{:<5} {:<width$}  {}  {}",
            format!("v{}", r["version"]),
            description(r),
            s(&r["user"], "email"),
            when(&r["created_at"])
        )?;
    }
    Ok(())
}

pub async fn info(
    client: &Client,
    app: &str,
    release: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let release = match release {
        Some(r) => {
            client
                .get(&format!("{}/releases/{r}", app_path(app)))
                .await?
        }
        None => newest_first(client, app, 1000)
            .await?
            .into_iter()
            .find(|r| r["current"].as_bool() == Some(true))
            .ok_or_else(|| anyhow::anyhow!("{app} has no current release yet"))?,
    };
    let version = &release["version"];
    let config = client
        .get(&format!("{}/releases/{version}/config-vars", app_path(app)))
        .await?;
    // Names only: the values are in `slipway config` (they may have changed since).
    let keys: Vec<&str> = config
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json {
        let mut view = release.clone();
        view["config_var_names"] = json!(keys);
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
        return Ok(());
    }
    writeln!(out, "=== Release v{version}")?;
    writeln!(out, "By:          {}", s(&release["user"], "email"))?;
    writeln!(out, "Change:      {}", s(&release, "description"))?;
    writeln!(out, "Status:      {}", s(&release, "status"))?;
    writeln!(out, "When:        {}", when(&release["created_at"]))?;
    writeln!(
        out,
        "Current:     {}",
        release["current"].as_bool() == Some(true)
    )?;
    writeln!(out)?;
    writeln!(out, "=== v{version} Config vars (names)")?;
    for k in keys {
        writeln!(out, "{k}")?;
    }
    Ok(())
}

/// Without a version: the newest succeeded release before the current one that has code.
pub async fn rollback(client: &Client, app: &str, release: Option<String>) -> anyhow::Result<()> {
    let target = match release {
        Some(r) => r,
        None => {
            let rows = newest_first(client, app, 1000).await?;
            let Some(current) = rows
                .iter()
                .find(|r| r["current"].as_bool() == Some(true))
                .and_then(|r| r["version"].as_i64())
            else {
                bail!("{app} has no current release to roll back from");
            };
            rows.iter()
                .filter(|r| r["version"].as_i64().is_some_and(|v| v < current))
                .find(|r| s(r, "status") == "succeeded" && !r["slug"].is_null())
                .map(|r| format!("v{}", r["version"]))
                .ok_or_else(|| {
                    anyhow::anyhow!("{app} has no earlier release with code to roll back to")
                })?
        }
    };
    let req = client
        .request(Method::POST, &format!("{}/releases", app_path(app)))
        .json(&json!({ "release": target }));
    let created = progress(&format!("Rolling back {app} to {target}"), client.send(req)).await?;
    eprintln!("done, v{}", created["version"]);
    eprintln!(
        "Rollback restores the code and the config vars of {target}; add-ons are not rolled back."
    );
    Ok(())
}

/// `releases:output vN`: the release phase's output, as it was printed.
pub async fn output(client: &Client, app: &str, release: &str) -> anyhow::Result<()> {
    let response = client
        .request(
            reqwest::Method::GET,
            &format!("{}/releases/{release}/output", app_path(app)),
        )
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        anyhow::bail!("{}", body["message"].as_str().unwrap_or(text.trim()));
    }
    print!("{text}");
    Ok(())
}
