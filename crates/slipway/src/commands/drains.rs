//! `drains`, `drains:add URL`, `drains:remove URL|ID`: where an app's logs are sent (Platform
//! API `log-drains`).

use std::io::Write;

use reqwest::Method;
use serde_json::json;

use super::{app_path, s};
use crate::client::Client;

pub async fn list(client: &Client, app: &str, json: bool) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/log-drains", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let drains = list.as_array().cloned().unwrap_or_default();
    if drains.is_empty() {
        writeln!(out, "{app} has no drains.")?;
        return Ok(());
    }
    writeln!(out, "=== {app} Drains")?;
    for d in &drains {
        writeln!(
            out,
            "{} ({})  id={}",
            s(d, "url"),
            s(d, "token"),
            s(d, "id")
        )?;
    }
    Ok(())
}

pub async fn add(client: &Client, app: &str, url: &str) -> anyhow::Result<()> {
    let req = client
        .request(Method::POST, &format!("{}/log-drains", app_path(app)))
        .json(&json!({ "url": url }));
    let drain = client.send(req).await?;
    println!("Successfully added drain {}", s(&drain, "url"));
    Ok(())
}

pub async fn remove(client: &Client, app: &str, target: &str) -> anyhow::Result<()> {
    let path = format!(
        "{}/log-drains/{}",
        app_path(app),
        utf8_percent_encode(target)
    );
    let drain = client.send(client.request(Method::DELETE, &path)).await?;
    println!("Successfully removed drain {}", s(&drain, "url"));
    Ok(())
}

/// Percent-encodes everything but unreserved characters, so a drain URL fits in one path
/// segment.
fn utf8_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
