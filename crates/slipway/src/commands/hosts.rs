//! store, store:import|info|delete|prune, targets, targets:add|info|remove|trust|deploy|
//! rollback|releases|prune|pin|exec|unlock: the release store and deploys to the user's own
//! hosts over SSH (API: `/release-store`, `/targets`; see slipway-api's `routes/targets.rs`).
//!
//! Data goes to stdout; progress to stderr. A target's environment is never printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use super::s;
use crate::client::Client;

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn size(bytes: i64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    }
}

fn print_release(out: &mut impl Write, r: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{}  {}  {}  {}  sha256:{}  {}",
        s(r, "name"),
        s(r, "tag"),
        s(r, "built_at"),
        size(r["size"].as_i64().unwrap_or(0)),
        s(r, "sha256"),
        s(r, "commit")
    )
}

pub async fn store_list(client: &Client, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match name {
        Some(n) => format!("/release-store?name={}", encode(n)),
        None => "/release-store".to_string(),
    };
    let list = client.get(&path).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        eprintln!(
            "The release store is empty{}.",
            name.map(|n| format!(" for {n}")).unwrap_or_default()
        );
    }
    for r in &items {
        print_release(&mut out, r)?;
    }
    Ok(())
}

pub async fn store_import(
    client: &Client,
    file: &Path,
    name: &str,
    tag: &str,
    commit: Option<String>,
    metadata: Option<String>,
) -> anyhow::Result<()> {
    if let Some(m) = &metadata {
        let v: Value = serde_json::from_str(m).context("--metadata must be a JSON object")?;
        if !v.is_object() {
            bail!("--metadata must be a JSON object, like '{{\"by\": \"ci\"}}'");
        }
    }
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
    let mut path = format!("/release-store?name={}&tag={}", encode(name), encode(tag));
    if let Some(c) = commit {
        path.push_str(&format!("&commit={}", encode(&c)));
    }
    let mut req = client
        .request(Method::POST, &path)
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(body);
    if let Some(m) = metadata {
        req = req.header("x-slipway-metadata", m);
    }
    let r = client.send(req).await?;
    eprintln!("Imported {name} {tag} into the release store.");
    print_release(&mut std::io::stdout().lock(), &r)?;
    Ok(())
}

pub async fn store_info(client: &Client, name: &str, tag: &str) -> anyhow::Result<()> {
    let r = client.get(&format!("/release-store/{name}/{tag}")).await?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&r)?
    )?;
    Ok(())
}

pub async fn store_delete(client: &Client, name: &str, tag: &str) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/release-store/{name}/{tag}")))
        .await?;
    eprintln!("Deleted {name} {tag} from the release store.");
    Ok(())
}

pub async fn store_prune(client: &Client, name: &str, keep: usize) -> anyhow::Result<()> {
    let removed = client
        .send(
            client
                .request(
                    Method::POST,
                    &format!("/release-store/{name}/actions/prune"),
                )
                .json(&json!({ "keep": keep })),
        )
        .await?;
    let tags: Vec<&str> = removed
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(r, "tag"))
        .collect();
    if tags.is_empty() {
        eprintln!("Nothing to prune for {name}.");
    } else {
        eprintln!("Pruned {name}: removed {}.", tags.join(", "));
    }
    for t in tags {
        writeln!(std::io::stdout().lock(), "{t}")?;
    }
    Ok(())
}

/// `KEY=VALUE` pairs; values are secrets, so errors never repeat them.
pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--env takes KEY=VALUE; one argument has no '='");
        };
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

fn print_target(out: &mut impl Write, t: &Value) -> std::io::Result<()> {
    writeln!(out, "=== {}", s(t, "name"))?;
    let hosts: Vec<&str> = t["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    writeln!(out, "Hosts:   {}", hosts.join(", "))?;
    writeln!(out, "Path:    {}", s(t, "path"))?;
    for (label, key) in [
        ("Restart", "restart"),
        ("Health", "health"),
        ("URL", "url"),
        ("Key", "key"),
    ] {
        if let Some(v) = t[key].as_str() {
            writeln!(out, "{label}: {v}")?;
        }
    }
    writeln!(out, "Batch:   {}", t["batch"])?;
    let env: Vec<String> = t["env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("[masked]")))
        .collect();
    if !env.is_empty() {
        writeln!(out, "Env:     {}", env.join(" "))?;
    }
    for r in t["running"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "Running: {} {} {}",
            s(r, "host"),
            s(r, "store_name"),
            s(r, "tag")
        )?;
    }
    Ok(())
}

pub async fn targets_list(client: &Client, json: bool) -> anyhow::Result<()> {
    let list = client.get("/targets").await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    for t in list.as_array().into_iter().flatten() {
        print_target(&mut out, t)?;
    }
    Ok(())
}

pub async fn targets_add(client: &Client, body: Value) -> anyhow::Result<()> {
    let t = client
        .send(client.request(Method::POST, "/targets").json(&body))
        .await?;
    for k in t["trusted_host_keys"].as_array().into_iter().flatten() {
        eprintln!("Trusted {} with key {}", s(k, "host"), s(k, "fingerprint"));
    }
    eprintln!("Target {} added.", s(&t, "name"));
    print_target(&mut std::io::stdout().lock(), &t)?;
    Ok(())
}

pub async fn targets_info(client: &Client, name: &str) -> anyhow::Result<()> {
    let t = client.get(&format!("/targets/{name}")).await?;
    print_target(&mut std::io::stdout().lock(), &t)?;
    Ok(())
}

pub async fn targets_remove(
    client: &Client,
    name: &str,
    confirm: Option<&str>,
) -> anyhow::Result<()> {
    if confirm != Some(name) {
        bail!("this forgets target {name} and its trusted host keys (the hosts are left as they are). Confirm with --confirm {name}");
    }
    client
        .send(client.request(Method::DELETE, &format!("/targets/{name}")))
        .await?;
    eprintln!("Target {name} removed.");
    Ok(())
}

/// Changes a target's environment; prints the variable names (values stay on the server).
pub async fn targets_env(
    client: &Client,
    name: &str,
    set: BTreeMap<String, String>,
    unset: Vec<String>,
) -> anyhow::Result<()> {
    let names: Vec<String> = set.keys().cloned().collect();
    let t = client
        .send(
            client
                .request(Method::PATCH, &format!("/targets/{name}/env"))
                .json(&json!({ "set": set, "unset": unset })),
        )
        .await?;
    if !names.is_empty() {
        eprintln!("Set {} on {name}.", names.join(", "));
    }
    if !unset.is_empty() {
        eprintln!("Unset {} on {name}.", unset.join(", "));
    }
    eprintln!("Releases deployed from now on carry it; each release on a host keeps the environment it was deployed with (a rollback brings it back).");
    let mut out = std::io::stdout().lock();
    for (k, v) in t["env"].as_object().into_iter().flatten() {
        writeln!(out, "{k}={}", v.as_str().unwrap_or("[masked]"))?;
    }
    Ok(())
}

pub async fn targets_trust(client: &Client, name: &str, keys: &[String]) -> anyhow::Result<()> {
    let trusted = client
        .send(
            client
                .request(Method::POST, &format!("/targets/{name}/actions/trust"))
                .json(&json!({ "accept_host_keys": keys })),
        )
        .await?;
    for k in trusted.as_array().into_iter().flatten() {
        eprintln!("Trusted {} with key {}", s(k, "host"), s(k, "fingerprint"));
    }
    Ok(())
}

/// Sends a streaming operation and prints its progress; the report goes to stdout.
async fn streamed(client: &Client, path: &str, body: Value, what: &str) -> anyhow::Result<()> {
    let response = client
        .request(Method::POST, path)
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!(
            "{} ({status})",
            v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
        );
    }
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut outcome: Option<Value> = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("the server stopped answering mid-operation")?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(l) = v["line"].as_str() {
                eprintln!("-----> {l}");
            } else {
                outcome = Some(v);
            }
        }
    }
    let Some(outcome) = outcome else {
        bail!("the server ended the {what} without a report; `slipway targets:releases` shows where each host is");
    };
    if let Some(err) = outcome.get("error") {
        bail!("{}", s(err, "message"));
    }
    let report = &outcome["report"];
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "=== {what} {} ({})",
        s(report, "tag"),
        s(report, "deploy_id")
    )?;
    for h in report["hosts"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{}  running {}  {}",
            s(h, "host"),
            h["running"].as_str().unwrap_or("nothing"),
            s(h, "outcome")
        )?;
    }
    if report["ok"].as_bool() != Some(true) {
        bail!(
            "the {what} failed: {}; every host runs the release listed above",
            s(report, "error")
        );
    }
    Ok(())
}

pub async fn targets_deploy(
    client: &Client,
    name: &str,
    store_name: &str,
    tag: &str,
    lock_wait: u64,
    lock_ttl: u64,
) -> anyhow::Result<()> {
    streamed(
        client,
        &format!("/targets/{name}/deploys"),
        json!({"store_name": store_name, "tag": tag, "lock_wait": lock_wait, "lock_ttl": lock_ttl}),
        "deploy",
    )
    .await
}

pub async fn targets_rollback(
    client: &Client,
    name: &str,
    tag: Option<String>,
    lock_wait: u64,
) -> anyhow::Result<()> {
    streamed(
        client,
        &format!("/targets/{name}/rollbacks"),
        json!({"tag": tag, "lock_wait": lock_wait}),
        "rollback",
    )
    .await
}

/// The deploy runner's deploys to a target, newest first: each with its steps and every host
/// with the release it runs after it.
pub async fn targets_deploys(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let deploys = client.get(&format!("/targets/{name}/deploys")).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&deploys)?)?;
        return Ok(());
    }
    for d in deploys.as_array().into_iter().flatten() {
        writeln!(
            out,
            "=== #{} {} {} {}{}",
            d["number"],
            s(d, "store_name"),
            s(d, "tag"),
            s(d, "status"),
            match d["stage"].as_str() {
                Some(stage) if !stage.is_empty() => format!(" (stage {stage})"),
                _ => String::new(),
            }
        )?;
        if let Some(f) = d["failure"].as_str().filter(|f| !f.is_empty()) {
            writeln!(out, "failure: {f}")?;
        }
        for st in d["report"]["steps"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {:<12} {:<12} {}",
                s(st, "name"),
                s(st, "status"),
                s(st, "note")
            )?;
        }
        for h in d["report"]["hosts"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {} runs {}",
                s(h, "host"),
                h["running"].as_str().unwrap_or("nothing")
            )?;
        }
    }
    Ok(())
}

pub async fn targets_releases(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let hosts = client.get(&format!("/targets/{name}/releases")).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&hosts)?)?;
        return Ok(());
    }
    for h in hosts.as_array().into_iter().flatten() {
        writeln!(out, "=== {}", s(h, "host"))?;
        if let Some(e) = h["error"].as_str() {
            writeln!(out, "unreachable: {e}")?;
            continue;
        }
        let state = &h["state"];
        let current = state["current"].as_str().unwrap_or("");
        let previous = state["previous_good"].as_str().unwrap_or("");
        for r in state["releases"].as_array().into_iter().flatten() {
            let tag = s(r, "tag");
            let mark = if tag == current {
                "* current"
            } else if tag == previous {
                "  previous"
            } else {
                "         "
            };
            writeln!(
                out,
                "{mark}  {tag}  {}  {}{}  {}",
                s(r, "store_name"),
                s(r, "status"),
                if r["pinned"].as_bool() == Some(true) {
                    " pinned"
                } else {
                    ""
                },
                s(r, "deployed_at")
            )?;
        }
        if let Some(lock) = h["lock"].as_object() {
            let at = lock
                .get("acquired_at")
                .and_then(Value::as_i64)
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "?".into());
            let process = lock
                .get("process")
                .and_then(|p| p.get("pid"))
                .and_then(Value::as_u64)
                .map(|pid| {
                    format!(
                        ", slipway process {pid} on {}",
                        lock.get("machine").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .unwrap_or_default();
            writeln!(
                out,
                "locked by {} ({} {}, since {at}{process}){}",
                lock.get("owner").and_then(Value::as_str).unwrap_or("?"),
                lock.get("operation").and_then(Value::as_str).unwrap_or("?"),
                lock.get("deploy_id").and_then(Value::as_str).unwrap_or("?"),
                if h["holder_gone"].as_bool() == Some(true) {
                    " - STALE: that slipway process is gone; the next deploy breaks it (or `slipway targets:unlock`)"
                } else if h["stale_lock"].as_bool() == Some(true) {
                    " - STALE: break it with `slipway targets:unlock`"
                } else {
                    ""
                }
            )?;
        }
    }
    Ok(())
}

pub async fn targets_prune(client: &Client, name: &str, keep: usize) -> anyhow::Result<()> {
    let reports = client
        .send(
            client
                .request(Method::POST, &format!("/targets/{name}/actions/prune"))
                .json(&json!({ "keep": keep })),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    for r in reports.as_array().into_iter().flatten() {
        let list = |k: &str| -> String {
            r[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "{}  removed: {}  kept: {}",
            s(r, "host"),
            list("removed"),
            list("kept")
        )?;
    }
    Ok(())
}

pub async fn targets_pin(
    client: &Client,
    name: &str,
    tag: &str,
    pinned: bool,
) -> anyhow::Result<()> {
    client
        .send(
            client
                .request(Method::POST, &format!("/targets/{name}/actions/pin"))
                .json(&json!({ "tag": tag, "pinned": pinned })),
        )
        .await?;
    eprintln!(
        "{tag} is {} on {name}.",
        if pinned { "pinned" } else { "no longer pinned" }
    );
    Ok(())
}

pub async fn targets_exec(client: &Client, name: &str, command: &str) -> anyhow::Result<()> {
    let results = client
        .send(
            client
                .request(Method::POST, &format!("/targets/{name}/actions/exec"))
                .json(&json!({ "command": command })),
        )
        .await?;
    let mut first_failure: Option<i32> = None;
    for r in results.as_array().into_iter().flatten() {
        let code = r["code"].as_i64().map(|c| c as i32);
        eprintln!(
            "=== {} (exit status {})",
            s(r, "host"),
            code.map_or("none".to_string(), |c| c.to_string())
        );
        print!("{}", s(r, "stdout"));
        eprint!("{}", s(r, "stderr"));
        if code != Some(0) {
            first_failure.get_or_insert(code.unwrap_or(255));
        }
    }
    std::io::stdout().flush()?;
    if let Some(code) = first_failure {
        // The command's own status, as ssh would give it.
        std::process::exit(code);
    }
    Ok(())
}

pub async fn targets_unlock(client: &Client, name: &str) -> anyhow::Result<()> {
    let removed = client
        .send(client.request(Method::DELETE, &format!("/targets/{name}/lock")))
        .await?;
    for r in removed.as_array().into_iter().flatten() {
        match r["removed"].as_object() {
            Some(lock) => eprintln!(
                "{}: broke the lock held by {} ({} {})",
                s(r, "host"),
                lock.get("owner").and_then(Value::as_str).unwrap_or("?"),
                lock.get("operation").and_then(Value::as_str).unwrap_or("?"),
                lock.get("deploy_id").and_then(Value::as_str).unwrap_or("?"),
            ),
            None => eprintln!("{}: was not locked", s(r, "host")),
        }
    }
    Ok(())
}
