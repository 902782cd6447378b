//! pipelines:* and the pipeline side of builds (`builds --pipeline`, `builds:info`,
//! `builds:output`). Stage environment values are secrets: they are sent, never shown.

use std::io::Write;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use slipway_core::Secret;

use super::{progress, s, when};
use crate::cli::Global;
use crate::client::Client;

fn path(pipeline: &str) -> String {
    format!("/pipelines/{pipeline}")
}

async fn send_json(
    client: &Client,
    method: Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    client.send(client.request(method, path).json(&body)).await
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let list = client.get("/pipelines").await?;
    if json {
        return print_json(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== Pipelines")?;
    for p in list.as_array().into_iter().flatten() {
        let stages: Vec<&str> = p["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|st| s(st, "name"))
            .collect();
        writeln!(out, "{}  ({})", s(p, "name"), stages.join(" -> "))?;
    }
    Ok(())
}

pub async fn create(
    client: &Client,
    global: &Global,
    name: &str,
    remote: Option<&str>,
) -> anyhow::Result<()> {
    let p = progress(
        &format!("Creating pipeline {name}"),
        send_json(client, Method::POST, "/pipelines", json!({ "name": name })),
    )
    .await?;
    eprintln!("done");
    println!("{}", s(&p, "git_url"));
    if let Some(remote) = remote {
        git_remote(client, global, name, remote, false).await?;
    }
    Ok(())
}

/// Adds the pipeline's remote; `required` makes "not in a git repository" an error.
pub async fn git_remote(
    client: &Client,
    global: &Global,
    name: &str,
    remote: &str,
    required: bool,
) -> anyhow::Result<()> {
    let inside = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !inside {
        if required {
            bail!("not inside a git repository; run `git init` first, or cd into your app's repository");
        }
        return Ok(());
    }
    let p = client.get(&path(name)).await?;
    super::git::set_remote(client, global, remote, s(&p, "git_url"))
}

fn stage_line(st: &Value) -> String {
    let strategy = match st["branch"].as_str() {
        Some(branch) => format!("automatic on {branch}"),
        None => "manual".to_string(),
    };
    let targets: Vec<String> = st["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| match t["host_target"]["name"].as_str() {
            Some(name) => format!("host:{name}"),
            None => s(&t["app"], "name").to_string(),
        })
        .collect();
    let current = match st["current_build"]["number"].as_i64() {
        Some(n) => format!(
            "runs build #{n} ({})",
            s(&st["current_build"], "commit")
                .chars()
                .take(7)
                .collect::<String>()
        ),
        None => "runs no pipeline build yet".to_string(),
    };
    let env: Vec<&str> = st["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str())
        .collect();
    format!(
        "{}: {strategy}; targets: {}; {current}; env: {}; watch {}s",
        s(st, "name"),
        if targets.is_empty() {
            "none".to_string()
        } else {
            targets.join(", ")
        },
        if env.is_empty() {
            "none".to_string()
        } else {
            env.join(", ")
        },
        st["watch_window"]
    )
}

pub async fn info(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let p = client.get(&path(name)).await?;
    if json {
        return print_json(&p);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {}", s(&p, "name"))?;
    writeln!(out, "Git URL: {}", s(&p, "git_url"))?;
    writeln!(out, "Stages:")?;
    for st in p["stages"].as_array().into_iter().flatten() {
        writeln!(out, "  {}", stage_line(st))?;
    }
    Ok(())
}

pub async fn destroy(client: &Client, name: &str, confirm: Option<&str>) -> anyhow::Result<()> {
    if confirm != Some(name) {
        bail!("this destroys pipeline {name}, its builds and repository; run again with --confirm {name}");
    }
    progress(
        &format!("Destroying pipeline {name}"),
        client.send(client.request(Method::DELETE, &path(name))),
    )
    .await?;
    eprintln!("done");
    Ok(())
}

pub async fn stages_add(
    client: &Client,
    pipeline: &str,
    stage: &str,
    after: Option<String>,
    automatic: Option<String>,
    watch: Option<i64>,
) -> anyhow::Result<()> {
    let mut body = json!({
        "name": stage,
        "strategy": if automatic.is_some() { "automatic" } else { "manual" },
    });
    if let Some(after) = after {
        body["after"] = json!(after);
    }
    if let Some(branch) = automatic {
        body["branch"] = json!(branch);
    }
    if let Some(watch) = watch {
        body["watch_window"] = json!(watch);
    }
    let st = progress(
        &format!("Adding stage {stage} to {pipeline}"),
        send_json(
            client,
            Method::POST,
            &format!("{}/stages", path(pipeline)),
            body,
        ),
    )
    .await?;
    eprintln!("done");
    println!("{}", stage_line(&st));
    Ok(())
}

pub async fn stages_update(
    client: &Client,
    pipeline: &str,
    stage: &str,
    automatic: Option<String>,
) -> anyhow::Result<()> {
    let body = match automatic {
        Some(branch) => json!({"strategy": "automatic", "branch": branch}),
        None => json!({"strategy": "manual"}),
    };
    let st = send_json(
        client,
        Method::PATCH,
        &format!("{}/stages/{stage}", path(pipeline)),
        body,
    )
    .await?;
    println!("{}", stage_line(&st));
    Ok(())
}

pub async fn stages_remove(client: &Client, pipeline: &str, stage: &str) -> anyhow::Result<()> {
    client
        .send(client.request(
            Method::DELETE,
            &format!("{}/stages/{stage}", path(pipeline)),
        ))
        .await?;
    eprintln!("Removed stage {stage} from {pipeline}");
    Ok(())
}

pub async fn targets_add(
    client: &Client,
    pipeline: &str,
    stage: &str,
    app: &str,
) -> anyhow::Result<()> {
    let st = send_json(
        client,
        Method::POST,
        &format!("{}/stages/{stage}/targets", path(pipeline)),
        match app.strip_prefix("host:") {
            Some(host) => json!({ "host": host }),
            None => json!({ "app": app }),
        },
    )
    .await?;
    println!("{}", stage_line(&st));
    Ok(())
}

pub async fn targets_remove(
    client: &Client,
    pipeline: &str,
    stage: &str,
    app: &str,
) -> anyhow::Result<()> {
    let st = client
        .send(client.request(
            Method::DELETE,
            &format!("{}/stages/{stage}/targets/{app}", path(pipeline)),
        ))
        .await?;
    println!("{}", stage_line(&st));
    Ok(())
}

fn print_env(env: &Value) {
    for (k, v) in env.as_object().into_iter().flatten() {
        println!("{k}: {}", v.as_str().unwrap_or(""));
    }
}

pub async fn env(client: &Client, pipeline: &str, stage: &str) -> anyhow::Result<()> {
    let env = client
        .get(&format!("{}/stages/{stage}/env", path(pipeline)))
        .await?;
    println!("=== {pipeline} {stage} environment (values are secret)");
    print_env(&env);
    Ok(())
}

pub async fn env_set(
    client: &Client,
    pipeline: &str,
    stage: &str,
    pairs: &[Secret],
) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        // Never repeat the value in an error: only the key (or that there was none).
        let Some((key, value)) = pair.expose().split_once('=') else {
            bail!("each argument must be KEY=VALUE (one had no `=`)");
        };
        body.insert(key.to_string(), Value::String(value.to_string()));
    }
    let env = send_json(
        client,
        Method::PATCH,
        &format!("{}/stages/{stage}/env", path(pipeline)),
        Value::Object(body),
    )
    .await?;
    eprintln!("Set {} variable(s) on {pipeline} {stage}", pairs.len());
    print_env(&env);
    Ok(())
}

pub async fn env_unset(
    client: &Client,
    pipeline: &str,
    stage: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    let body: serde_json::Map<String, Value> =
        keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let env = send_json(
        client,
        Method::PATCH,
        &format!("{}/stages/{stage}/env", path(pipeline)),
        Value::Object(body),
    )
    .await?;
    eprintln!("Unset {} on {pipeline} {stage}", keys.join(", "));
    print_env(&env);
    Ok(())
}

fn secs(v: &Value) -> String {
    v.as_f64()
        .map(|s| format!("{s:.1}s"))
        .unwrap_or_else(|| "-".into())
}

fn build_line(b: &Value) -> String {
    let message = s(b, "message").lines().next().unwrap_or("").to_string();
    format!(
        "#{:<4} {:<8} {:<12} {}  {}  build {} test {}  {}",
        b["number"],
        s(b, "status"),
        s(b, "branch"),
        s(b, "commit").chars().take(7).collect::<String>(),
        when(&b["created_at"]),
        secs(&b["durations"]["build"]),
        secs(&b["durations"]["test"]),
        message
    )
}

pub async fn builds(client: &Client, pipeline: &str, json: bool) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/builds", path(pipeline))).await?;
    if json {
        return print_json(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {pipeline} Builds")?;
    for b in list.as_array().into_iter().flatten().rev() {
        writeln!(out, "{}", build_line(b))?;
    }
    Ok(())
}

/// Finds a build by number within `--pipeline`, or by id alone.
async fn find_build(client: &Client, build: &str, pipeline: Option<&str>) -> anyhow::Result<Value> {
    match pipeline {
        Some(p) => client.get(&format!("{}/builds/{build}", path(p))).await,
        None if build.trim_start_matches('#').parse::<i64>().is_ok() => {
            bail!("build {build} is a number: say which pipeline's with --pipeline P")
        }
        None => client.get(&format!("/pipeline-builds/{build}")).await,
    }
}

pub async fn build_info(
    client: &Client,
    build: &str,
    pipeline: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let b = find_build(client, build, pipeline).await?;
    if json {
        return print_json(&b);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "=== {} build #{}",
        s(&b["pipeline"], "name"),
        b["number"]
    )?;
    writeln!(out, "Id:        {}", s(&b, "id"))?;
    writeln!(out, "Status:    {}", s(&b, "status"))?;
    if !s(&b, "reason").is_empty() {
        writeln!(out, "Reason:    {}", s(&b, "reason"))?;
    }
    writeln!(out, "Branch:    {}", s(&b, "branch"))?;
    writeln!(out, "Commit:    {}", s(&b, "commit"))?;
    writeln!(
        out,
        "Message:   {}",
        s(&b, "message").replace('\n', "\n           ")
    )?;
    writeln!(out, "Slug:      {}", s(&b["slug"], "checksum"))?;
    writeln!(out, "Created:   {}", when(&b["created_at"]))?;
    writeln!(
        out,
        "Durations: build {}, test {}, total {}",
        secs(&b["durations"]["build"]),
        secs(&b["durations"]["test"]),
        secs(&b["durations"]["total"])
    )?;
    writeln!(out, "Deploys:")?;
    for d in b["deploys"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {}: {} ({}) {}",
            s(d, "stage"),
            s(d, "status"),
            s(d, "origin"),
            s(d, "detail")
        )?;
    }
    Ok(())
}

pub async fn build_output(
    client: &Client,
    build: &str,
    pipeline: Option<&str>,
) -> anyhow::Result<()> {
    let b = find_build(client, build, pipeline).await?;
    let url = format!(
        "{}/builds/{}/output",
        path(s(&b["pipeline"], "name")),
        s(&b, "id")
    );
    let response = client
        .request(Method::GET, &url)
        .send()
        .await?
        .error_for_status()
        .context("reading the build's output")?;
    print!("{}", response.text().await?);
    Ok(())
}

/// Prints a deploy's output and result; an error (non-zero exit) when it failed.
fn report(result: &Value) -> anyhow::Result<()> {
    for line in result["output"].as_array().into_iter().flatten() {
        eprintln!("{}", line.as_str().unwrap_or(""));
    }
    if s(result, "status") != "succeeded" {
        bail!("{}", s(result, "message"));
    }
    for r in result["releases"].as_array().into_iter().flatten() {
        let release = match r["release"].as_str() {
            Some(release) => release.to_string(),
            None => format!("v{}", r["version"]),
        };
        println!(
            "Released {release} on {} ({}) in {}",
            s(r, "target"),
            s(r, "slug_checksum"),
            s(result, "stage")
        );
    }
    Ok(())
}

pub async fn deploy(
    client: &Client,
    build: &str,
    stage: &str,
    pipeline: Option<&str>,
) -> anyhow::Result<()> {
    let b = find_build(client, build, pipeline).await?;
    let pipeline = s(&b["pipeline"], "name").to_string();
    eprintln!(
        "Deploying build #{} of {pipeline} to {stage}...",
        b["number"]
    );
    let result = send_json(
        client,
        Method::POST,
        &format!("{}/deploys", path(&pipeline)),
        json!({"build": s(&b, "id"), "stage": stage}),
    )
    .await?;
    report(&result)
}

pub async fn promote(client: &Client, pipeline: &str, from: &str) -> anyhow::Result<()> {
    eprintln!("Promoting what {from} runs in {pipeline} to the next stage...");
    let result = send_json(
        client,
        Method::POST,
        &format!("{}/promotions", path(pipeline)),
        json!({ "from": from }),
    )
    .await?;
    report(&result)
}

pub async fn deploys(client: &Client, pipeline: &str, json: bool) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/deploys", path(pipeline))).await?;
    if json {
        return print_json(&list);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {pipeline} Deploys")?;
    for d in list.as_array().into_iter().flatten().rev() {
        writeln!(
            out,
            "build #{:<4} -> {:<12} {:<10} {}  ({}) {}",
            d["build"]["number"],
            s(d, "stage"),
            s(d, "status"),
            when(&d["created_at"]),
            s(d, "origin"),
            s(d, "detail")
        )?;
    }
    Ok(())
}
