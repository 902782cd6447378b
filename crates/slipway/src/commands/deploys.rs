//! deploys, deploys:info, deploys:wait, deploys:cancel, deploys:start, deploys:secrets*,
//! webhooks*: the deploy runner's records, live streams and settings.
//!
//! `deploys:wait` and `deploys:start` stream the steps as they happen and fail (exit 1) unless
//! the deploy passed, so they can sit inside anyone's CI.

use std::io::Write;

use anyhow::{bail, Context};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{app_path, s, when};
use crate::client::Client;

/// The last line of a deploy's stream (`slipway_api::deploys::RESULT_PREFIX`).
const RESULT_PREFIX: &str = "\u{1e}slipway-deploy-result: ";

pub async fn list(client: &Client, app: &str, json: bool) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/deploys", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    writeln!(out, "=== {app} Deploys")?;
    for d in list.as_array().into_iter().flatten().rev() {
        writeln!(
            out,
            "#{:<4} {:<12} {:<22} {:<8} {}  {}",
            d["number"],
            s(d, "status"),
            s(d, "description"),
            d["release"]
                .as_i64()
                .map(|v| format!("v{v}"))
                .unwrap_or_default(),
            s(&d["user"], "email"),
            when(&d["created_at"])
        )?;
    }
    Ok(())
}

pub async fn info(client: &Client, app: &str, deploy: &str, json: bool) -> anyhow::Result<()> {
    let d = client
        .get(&format!("{}/deploys/{deploy}", app_path(app)))
        .await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&d)?)?;
        return Ok(());
    }
    writeln!(out, "=== {app} Deploy #{}", d["number"])?;
    writeln!(out, "Status:    {}", s(&d, "status"))?;
    writeln!(out, "Source:    {}", s(&d, "description"))?;
    writeln!(out, "By:        {}", s(&d["user"], "email"))?;
    let v = |k: &str| {
        d[k].as_i64()
            .map(|v| format!("v{v}"))
            .unwrap_or_else(|| "-".into())
    };
    writeln!(
        out,
        "Releases:  before {}, made {}, rollback {}",
        v("previous_release"),
        v("release"),
        v("rollback_release")
    )?;
    if !s(&d, "failure").is_empty() {
        writeln!(out, "Failure:   {}", s(&d, "failure"))?;
    }
    writeln!(out, "Created:   {}", when(&d["created_at"]))?;
    writeln!(out)?;
    for step in d["steps"].as_array().into_iter().flatten() {
        let took = step["duration_ms"]
            .as_i64()
            .map(|ms| format!(" ({:.1} s)", ms as f64 / 1000.0))
            .unwrap_or_default();
        let note = match s(step, "note") {
            "" => String::new(),
            n => format!(": {n}"),
        };
        writeln!(
            out,
            "{:<12} {}{took}{note}",
            s(step, "name"),
            s(step, "status")
        )?;
        for line in s(step, "output").lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(())
}

/// Streams a deploy until it ends; fails unless it passed.
pub async fn wait(client: &Client, app: &str, deploy: &str) -> anyhow::Result<()> {
    let response = client
        .request(
            Method::GET,
            &format!("{}/deploys/{deploy}/stream", app_path(app)),
        )
        .send()
        .await?;
    if !response.status().is_success() {
        // The error body is the API's JSON; `send` turns it into a readable error.
        let req = client.request(Method::GET, &format!("{}/deploys/{deploy}", app_path(app)));
        client.send(req).await?;
        bail!(
            "could not follow deploy {deploy}: the server answered {}",
            response.status()
        );
    }
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut result: Option<String> = None;
    let mut err = std::io::stderr();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the deploy's stream")?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match line.strip_prefix(RESULT_PREFIX) {
                Some(r) => result = Some(r.to_string()),
                None => {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
    match result.as_deref() {
        Some("passed") => {
            println!("passed");
            Ok(())
        }
        Some(status) => {
            println!("{status}");
            bail!("deploy {deploy} of {app} {}", status.replace('_', " "))
        }
        None => bail!("the deploy's stream ended before its result (did the server stop?); `slipway deploys:info {deploy}` shows it"),
    }
}

pub async fn cancel(client: &Client, app: &str, deploy: &str) -> anyhow::Result<()> {
    let req = client.request(
        Method::POST,
        &format!("{}/deploys/{deploy}/actions/cancel", app_path(app)),
    );
    client.send(req).await?;
    eprintln!("Cancelling deploy {deploy} of {app}; `slipway deploys:wait {deploy}` shows where it stopped.");
    Ok(())
}

pub async fn start(
    client: &Client,
    app: &str,
    release: &str,
    no_rollback: bool,
    watch: Option<u64>,
) -> anyhow::Result<()> {
    let req = client
        .request(Method::POST, &format!("{}/deploys", app_path(app)))
        .json(&json!({"release": release, "no_rollback": no_rollback, "watch": watch}));
    let d = client.send(req).await?;
    let number = d["number"].to_string();
    eprintln!(
        "-----> Deploy #{number} of {app} ({})",
        s(&d, "description")
    );
    wait(client, app, &number).await
}

pub async fn secrets(client: &Client, app: &str) -> anyhow::Result<()> {
    let v = client
        .get(&format!("{}/deploy-secrets", app_path(app)))
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {app} Deploy Secrets")?;
    for name in v["names"].as_array().into_iter().flatten() {
        writeln!(out, "{}", name.as_str().unwrap_or_default())?;
    }
    Ok(())
}

pub async fn secrets_set(client: &Client, app: &str, pairs: &[String]) -> anyhow::Result<()> {
    let mut body = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("{pair:?} is not KEY=VALUE");
        };
        body.insert(k.to_string(), Value::String(v.to_string()));
    }
    let req = client
        .request(Method::PATCH, &format!("{}/deploy-secrets", app_path(app)))
        .json(&body);
    client.send(req).await?;
    let names: Vec<&str> = body.keys().map(String::as_str).collect();
    eprintln!(
        "Set deploy secrets {} on {app} (values are masked in every output).",
        names.join(", ")
    );
    Ok(())
}

pub async fn secrets_unset(client: &Client, app: &str, keys: &[String]) -> anyhow::Result<()> {
    let body: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let req = client
        .request(Method::PATCH, &format!("{}/deploy-secrets", app_path(app)))
        .json(&body);
    client.send(req).await?;
    eprintln!("Removed deploy secrets {} from {app}.", keys.join(", "));
    Ok(())
}

pub async fn webhooks(client: &Client, app: &str) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/webhooks", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {app} Webhooks")?;
    for h in list.as_array().into_iter().flatten() {
        writeln!(out, "{}  {}", s(h, "id"), s(h, "url"))?;
    }
    Ok(())
}

pub async fn webhooks_add(client: &Client, app: &str, url: &str) -> anyhow::Result<()> {
    let req = client
        .request(Method::POST, &format!("{}/webhooks", app_path(app)))
        .json(&json!({ "url": url }));
    let h = client.send(req).await?;
    eprintln!(
        "Deploy reports of {app} will be POSTed to {}.",
        s(&h, "url")
    );
    Ok(())
}

pub async fn webhooks_remove(client: &Client, app: &str, url_or_id: &str) -> anyhow::Result<()> {
    let path = format!("{}/webhooks/{}", app_path(app), url_encode(url_or_id));
    client.send(client.request(Method::DELETE, &path)).await?;
    eprintln!("Removed webhook {url_or_id} from {app}.");
    Ok(())
}

/// Percent-encodes a path segment.
fn url_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
