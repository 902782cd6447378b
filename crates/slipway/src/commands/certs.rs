//! `certs`, `certs:add CERT KEY`, `certs:info [NAME]`, `certs:remove [NAME]`: TLS certificates
//! the HTTPS listener serves by SNI (Platform API `sni-endpoints`). With `--app` they are the
//! app's; without, the server's own (e.g. a wildcard for every `<app>.<domain>`). The key is
//! sent once and never shown again.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::{app_path, s, when};
use crate::client::Client;

/// Largest certificate or key file read (the server's bounds are smaller).
const MAX_FILE: u64 = 1024 * 1024;

fn base(app: Option<&str>) -> String {
    match app {
        Some(app) => format!("{}/sni-endpoints", app_path(app)),
        None => "/sni-endpoints".into(),
    }
}

fn whose(app: Option<&str>) -> String {
    app.map_or_else(|| "the server".into(), str::to_string)
}

fn domains(c: &Value) -> String {
    c["ssl_cert"]["cert_domains"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub async fn list(client: &Client, app: Option<&str>, json: bool) -> anyhow::Result<()> {
    let list = client.get(&base(app)).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let certs = list.as_array().cloned().unwrap_or_default();
    if certs.is_empty() {
        writeln!(out, "{} has no certificates.", whose(app))?;
        return Ok(());
    }
    writeln!(out, "=== {} Certificates", whose(app))?;
    for c in &certs {
        let expired = if c["ssl_cert"]["expired"] == true {
            " (EXPIRED)"
        } else {
            ""
        };
        writeln!(
            out,
            "{}  {}  expires {}{expired}",
            s(c, "name"),
            domains(c),
            s(&c["ssl_cert"], "expires_at")
        )?;
    }
    Ok(())
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    if meta.len() > MAX_FILE {
        bail!(
            "the {what} file {} is larger than 1 MiB; is it the right file?",
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {} (PEM text)", path.display()))
}

pub async fn add(
    client: &Client,
    app: Option<&str>,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let chain = read_pem(cert, "certificate")?;
    let key = read_pem(key, "private key")?;
    let req = client
        .request(Method::POST, &base(app))
        .json(&json!({ "certificate_chain": chain, "private_key": key }));
    let added = client.send(req).await?;
    println!(
        "Added certificate {} to {} for {} (expires {}).",
        s(&added, "name"),
        whose(app),
        domains(&added),
        s(&added["ssl_cert"], "expires_at")
    );
    Ok(())
}

/// The certificate `name`, or the only one when no name is given.
async fn pick(client: &Client, app: Option<&str>, name: Option<&str>) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name.to_string());
    }
    let list = client.get(&base(app)).await?;
    let names: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().map(|c| s(c, "name")).collect())
        .unwrap_or_default();
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("{} has no certificates", whose(app)),
        many => bail!(
            "{} has {} certificates; name one: {}",
            whose(app),
            many.len(),
            many.join(", ")
        ),
    }
}

pub async fn info(client: &Client, app: Option<&str>, name: Option<&str>) -> anyhow::Result<()> {
    let name = pick(client, app, name).await?;
    let c = client.get(&format!("{}/{name}", base(app))).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== Certificate {} ({})", s(&c, "name"), whose(app))?;
    writeln!(out, "Domains:    {}", domains(&c))?;
    writeln!(out, "Issuer:     {}", s(&c["ssl_cert"], "issuer"))?;
    writeln!(out, "Starts at:  {}", when(&c["ssl_cert"]["starts_at"]))?;
    writeln!(out, "Expires at: {}", when(&c["ssl_cert"]["expires_at"]))?;
    if c["ssl_cert"]["expired"] == true {
        writeln!(out, "Status:     EXPIRED (not served)")?;
    }
    if let Some(covered) = c["domains"].as_array().filter(|d| !d.is_empty()) {
        let covered: Vec<&str> = covered.iter().filter_map(|d| d.as_str()).collect();
        writeln!(out, "Covers the app's domains: {}", covered.join(", "))?;
    }
    Ok(())
}

pub async fn remove(client: &Client, app: Option<&str>, name: Option<&str>) -> anyhow::Result<()> {
    let name = pick(client, app, name).await?;
    let path = format!("{}/{name}", base(app));
    let removed = client.send(client.request(Method::DELETE, &path)).await?;
    println!(
        "Removed certificate {} ({}) from {}.",
        s(&removed, "name"),
        domains(&removed),
        whose(app)
    );
    Ok(())
}
