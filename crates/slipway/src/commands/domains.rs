//! `domains`, `domains:add HOST`, `domains:remove HOST`, `domains:redirect-https on|off`: the
//! host names an app is served at besides `<app>.<domain>` (Platform API `domains`), and
//! whether its plain-HTTP requests are sent to HTTPS.

use std::io::Write;

use anyhow::bail;
use reqwest::Method;
use serde_json::json;

use super::{app_path, s};
use crate::client::Client;

pub async fn list(client: &Client, app: &str, json: bool) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/domains", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let domains = list.as_array().cloned().unwrap_or_default();
    writeln!(out, "=== {app} Default Domain")?;
    for d in domains.iter().filter(|d| s(d, "kind") != "custom") {
        writeln!(out, "{}", s(d, "hostname"))?;
    }
    let custom: Vec<_> = domains
        .iter()
        .filter(|d| s(d, "kind") == "custom")
        .collect();
    writeln!(out)?;
    if custom.is_empty() {
        writeln!(out, "{app} has no custom domains.")?;
        return Ok(());
    }
    writeln!(out, "=== {app} Custom Domains")?;
    let width = custom
        .iter()
        .map(|d| s(d, "hostname").len())
        .max()
        .unwrap_or(0)
        .max("Domain Name".len());
    writeln!(
        out,
        "{:width$}  DNS Record Type  DNS Target  SNI Endpoint",
        "Domain Name"
    )?;
    for d in custom {
        let host = s(d, "hostname");
        // An apex domain cannot be a CNAME; ALIAS/ANAME records do the same job there.
        let kind = if host.starts_with("*.") || host.matches('.').count() >= 2 {
            "CNAME"
        } else {
            "ALIAS or ANAME"
        };
        let cert = d["sni_endpoint"]["name"].as_str().unwrap_or("-");
        writeln!(out, "{host:width$}  {kind:15}  {}  {cert}", s(d, "cname"))?;
    }
    Ok(())
}

pub async fn add(client: &Client, app: &str, host: &str) -> anyhow::Result<()> {
    let req = client
        .request(Method::POST, &format!("{}/domains", app_path(app)))
        .json(&json!({ "hostname": host }));
    let domain = client.send(req).await?;
    println!(
        "Added {} to {app}. Point its DNS at {} (a CNAME, or ALIAS/ANAME for an apex domain).",
        s(&domain, "hostname"),
        s(&domain, "cname")
    );
    if domain["sni_endpoint"].is_null() {
        eprintln!("hint: no certificate covers it yet; `slipway certs:add CERT KEY -a {app}` adds one for HTTPS");
    }
    Ok(())
}

pub async fn remove(client: &Client, app: &str, host: &str) -> anyhow::Result<()> {
    let path = format!("{}/domains/{}", app_path(app), host.trim());
    let domain = client.send(client.request(Method::DELETE, &path)).await?;
    println!("Removed {} from {app}.", s(&domain, "hostname"));
    Ok(())
}

pub async fn redirect_https(client: &Client, app: &str, switch: &str) -> anyhow::Result<()> {
    let on = match switch {
        "on" | "true" => true,
        "off" | "false" => false,
        other => bail!("expected on or off, not {other:?}"),
    };
    let req = client
        .request(Method::PATCH, &format!("{}/domain-settings", app_path(app)))
        .json(&json!({ "redirect_https": on }));
    let settings = client.send(req).await?;
    if on {
        println!("HTTP requests for {app} are now redirected to HTTPS.");
        if settings["https_listener"] == false {
            eprintln!("hint: this server has no HTTPS listener, so nothing is redirected until it runs with --tls-listen");
        }
    } else {
        println!("HTTP requests for {app} are served over HTTP again.");
    }
    Ok(())
}
