//! Client commands. Data goes to stdout, progress and hints to stderr.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use chrono::{DateTime, Local, Utc};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{Command, Global};
use crate::client::{own_binary, resolve_app, Client};

pub async fn run(global: Global, command: Command) -> anyhow::Result<()> {
    if let Command::GitCredential { operation } = &command {
        return git_credential(&global, operation);
    }
    let client = Client::from_global(&global)?;
    match command {
        Command::Apps => apps(&client).await,
        Command::AppsCreate { name, no_remote } => {
            apps_create(&client, &global, name, no_remote).await
        }
        Command::AppsInfo { app, name } => {
            apps_info(&client, &resolve_app(app.app.or(name))?).await
        }
        Command::AppsDestroy { app, confirm } => {
            apps_destroy(&client, &resolve_app(app.app)?, confirm).await
        }
        Command::GitRemote { app, remote } => {
            git_remote(&client, &global, &resolve_app(app.app)?, &remote).await
        }
        Command::Releases { app, num } => releases(&client, &resolve_app(app.app)?, num).await,
        Command::Ps { app } => ps(&client, &resolve_app(app.app)?).await,
        Command::PsScale { app, changes } => {
            ps_scale(&client, &resolve_app(app.app)?, &changes).await
        }
        Command::Builds { app } => builds(&client, &resolve_app(app.app)?).await,
        Command::MaintenanceOn { app } => maintenance(&client, &resolve_app(app.app)?, true).await,
        Command::MaintenanceOff { app } => {
            maintenance(&client, &resolve_app(app.app)?, false).await
        }
        Command::Logs {
            app,
            num,
            tail,
            dyno,
            source,
        } => logs(&client, &resolve_app(app.app)?, num, tail, dyno, source).await,
        Command::Server(_) | Command::Hook(_) | Command::GitCredential { .. } => {
            bail!("internal error: command dispatched to the wrong place")
        }
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// `2026/11/22 04:10:00 (~ 5m ago)`, as the Heroku CLI shows times.
fn when(v: &Value) -> String {
    let Some(t) = v
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return String::new();
    };
    let t = t.with_timezone(&Utc);
    let ago = (Utc::now() - t).num_seconds().max(0);
    let rel = match ago {
        a if a < 60 => format!("{a}s"),
        a if a < 3600 => format!("{}m", a / 60),
        a if a < 86400 => format!("{}h", a / 3600),
        a => format!("{}d", a / 86400),
    };
    format!(
        "{} (~ {rel} ago)",
        t.with_timezone(&Local).format("%Y/%m/%d %H:%M:%S")
    )
}

fn app_path(app: &str) -> String {
    format!("/apps/{app}")
}

async fn apps(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/apps").await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== Apps")?;
    for app in list.as_array().into_iter().flatten() {
        writeln!(out, "{}", s(app, "name"))?;
    }
    Ok(())
}

async fn apps_create(
    client: &Client,
    global: &Global,
    name: Option<String>,
    no_remote: bool,
) -> anyhow::Result<()> {
    let body = match &name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    eprint!("Creating {}... ", name.as_deref().unwrap_or("app"));
    let app = match client
        .send(client.request(Method::POST, "/apps").json(&body))
        .await
    {
        Ok(app) => app,
        Err(e) => {
            eprintln!("failed");
            return Err(e);
        }
    };
    let created = s(&app, "name");
    eprintln!("done, {created}");
    println!("{} | {}", s(&app, "web_url"), s(&app, "git_url"));
    // Like `heroku create`: inside a repository without a slipway remote, add one.
    let in_repo = std::process::Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .is_ok_and(|o| o.status.success());
    let has_remote = std::process::Command::new("git")
        .args(["remote", "get-url", "slipway"])
        .output()
        .is_ok_and(|o| o.status.success());
    if in_repo && !has_remote && !no_remote {
        return git_remote(client, global, created, "slipway").await;
    }
    eprintln!("hint: run `slipway git:remote -a {created}` in your repository, then `git push slipway main`");
    Ok(())
}

async fn apps_info(client: &Client, app: &str) -> anyhow::Result<()> {
    let info = client.get(&app_path(app)).await?;
    let formation = client.get(&format!("{}/formation", app_path(app))).await?;
    let dynos: Vec<String> = formation
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{}: {}", s(f, "type"), f["quantity"]))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {}", s(&info, "name"))?;
    writeln!(out, "Dynos:       {}", dynos.join(", "))?;
    writeln!(out, "Git URL:     {}", s(&info, "git_url"))?;
    writeln!(
        out,
        "Maintenance: {}",
        info["maintenance"].as_bool().unwrap_or(false)
    )?;
    writeln!(out, "Owner:       {}", s(&info["owner"], "email"))?;
    writeln!(out, "Region:      {}", s(&info["region"], "name"))?;
    writeln!(out, "Released:    {}", when(&info["released_at"]))?;
    match info["slug_size"].as_u64() {
        Some(size) => writeln!(out, "Slug size:   {size} B")?,
        None => writeln!(out, "Slug size:   (not deployed yet)")?,
    }
    writeln!(out, "Stack:       {}", s(&info["stack"], "name"))?;
    writeln!(out, "Web URL:     {}", s(&info, "web_url"))?;
    Ok(())
}

async fn apps_destroy(client: &Client, app: &str, confirm: Option<String>) -> anyhow::Result<()> {
    if confirm.as_deref() != Some(app) {
        bail!(
            "this destroys {app}, its dynos, releases, slugs and repository. To proceed, run again with --confirm {app}"
        );
    }
    eprint!("Destroying {app} (including all add-ons)... ");
    client
        .send(client.request(Method::DELETE, &app_path(app)))
        .await?;
    eprintln!("done");
    Ok(())
}

async fn git_remote(
    client: &Client,
    global: &Global,
    app: &str,
    remote: &str,
) -> anyhow::Result<()> {
    let info = client.get(&app_path(app)).await?;
    let url = s(&info, "git_url").to_string();
    let git = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        std::process::Command::new("git")
            .args(args)
            .output()
            .with_context(|| format!("running git {}", args.join(" ")))
    };
    let inside = git(&["rev-parse", "--git-dir"])?;
    if !inside.status.success() {
        bail!(
            "not inside a git repository; run `git init` first, or cd into your app's repository"
        );
    }
    let exists = git(&["remote", "get-url", remote])?.status.success();
    let action = if exists { "set-url" } else { "add" };
    let done = git(&["remote", action, remote, &url])?;
    if !done.status.success() {
        bail!(
            "git remote {action} failed: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    // The credential helper hands git the token at push time; it is never written to config.
    let mut helper = format!(
        "!'{}'",
        own_binary()?.display().to_string().replace('\'', "'\\''")
    );
    if let Some(dir) = &global.data_dir {
        helper.push_str(&format!(
            " --data-dir '{}'",
            dir.display().to_string().replace('\'', "'\\''")
        ));
    }
    helper.push_str(" git:credential");
    let key = format!("credential.{}.helper", client.base);
    // An empty value first resets helpers configured elsewhere for this URL.
    for args in [
        vec!["config", "--replace-all", key.as_str(), ""],
        vec!["config", "--add", key.as_str(), helper.as_str()],
    ] {
        let out = git(&args)?;
        if !out.status.success() {
            bail!(
                "git config failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!("set git remote {remote} to {url}");
    Ok(())
}

/// git's credential helper protocol: for `get`, answer with the API token as the password.
fn git_credential(global: &Global, operation: &str) -> anyhow::Result<()> {
    // Read (and ignore) what git says; it ends with a blank line or EOF.
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.context("reading from git")?.is_empty() {
            break;
        }
    }
    if operation != "get" {
        return Ok(());
    }
    let client = Client::from_global(global)?;
    println!("username=slipway\npassword={}", client.token());
    Ok(())
}

async fn releases(client: &Client, app: &str, num: usize) -> anyhow::Result<()> {
    let req = client
        .request(Method::GET, &format!("{}/releases", app_path(app)))
        .header(
            "Range",
            format!("version ..; max={}, order=desc", num.clamp(1, 1000)),
        );
    let list = client.send(req).await?;
    let rows: Vec<&Value> = list.as_array().into_iter().flatten().collect();
    let current = rows
        .iter()
        .find(|r| r["current"].as_bool() == Some(true))
        .map(|r| format!("v{}", r["version"]))
        .unwrap_or_else(|| "none".into());
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {app} Releases - Current: {current}")?;
    if rows.is_empty() {
        writeln!(
            out,
            "{app} has no releases yet: push with `git push slipway main`"
        )?;
    }
    let width = rows
        .iter()
        .map(|r| s(r, "description").len())
        .max()
        .unwrap_or(0);
    for r in rows {
        writeln!(
            out,
            "{:<5} {:<width$}  {}  {}",
            format!("v{}", r["version"]),
            s(r, "description"),
            s(&r["user"], "email"),
            when(&r["created_at"])
        )?;
    }
    Ok(())
}

async fn ps(client: &Client, app: &str) -> anyhow::Result<()> {
    let formation = client.get(&format!("{}/formation", app_path(app))).await?;
    let dynos = client.get(&format!("{}/dynos", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    let formation: Vec<&Value> = formation.as_array().into_iter().flatten().collect();
    if formation.is_empty() {
        writeln!(
            out,
            "No dynos on {app}: push a Procfile with `git push slipway main`"
        )?;
    }
    for f in formation {
        let ptype = s(f, "type");
        writeln!(
            out,
            "=== {ptype} ({}): {} ({})",
            s(f, "size"),
            s(f, "command"),
            f["quantity"]
        )?;
        for d in dynos
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| s(d, "type") == ptype)
        {
            writeln!(
                out,
                "{}: {} {} (v{})",
                s(d, "name"),
                s(d, "state"),
                when(&d["updated_at"]),
                d["release"]["version"]
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// One `ps:scale` argument: `web=2`, `worker+1`, `worker-1`, optionally with a size
/// (`web=2:standard-2X`). The quantity's range is the server's to check.
#[derive(Debug, PartialEq, Eq)]
pub struct ScaleArg {
    pub process_type: String,
    pub quantity: String,
    pub size: Option<String>,
}

pub fn parse_scale(change: &str) -> anyhow::Result<ScaleArg> {
    let bad = || {
        anyhow::anyhow!(
            "invalid scale argument {change:?}: use TYPE=N, TYPE+N or TYPE-N, optionally with :SIZE, e.g. web=2 or web=2:standard-2X"
        )
    };
    let (spec, size) = match change.split_once(':') {
        Some((spec, size)) if !size.is_empty() => (spec, Some(size.to_string())),
        Some(_) => return Err(bad()),
        None => (change, None),
    };
    let pos = spec.find(['=', '+', '-']).ok_or_else(bad)?;
    let (t, rest) = spec.split_at(pos);
    let quantity = rest.strip_prefix('=').unwrap_or(rest);
    let digits = quantity.strip_prefix(['+', '-']).unwrap_or(quantity);
    if t.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(ScaleArg {
        process_type: t.to_string(),
        quantity: quantity.to_string(),
        size,
    })
}

async fn ps_scale(client: &Client, app: &str, changes: &[String]) -> anyhow::Result<()> {
    let mut updates = Vec::new();
    for change in changes {
        let arg = parse_scale(change)?;
        let mut update = json!({ "type": arg.process_type, "quantity": arg.quantity });
        if let Some(size) = arg.size {
            update["size"] = json!(size);
        }
        updates.push(update);
    }
    eprint!("Scaling dynos... ");
    let req = client
        .request(Method::PATCH, &format!("{}/formation", app_path(app)))
        .json(&json!({ "updates": updates }));
    let formation = match client.send(req).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("failed");
            return Err(e);
        }
    };
    let now: Vec<String> = formation
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{} at {}:{}", s(f, "type"), f["quantity"], s(f, "size")))
        .collect();
    eprintln!("done, now running {}", now.join(", "));
    Ok(())
}

async fn builds(client: &Client, app: &str) -> anyhow::Result<()> {
    let list = client.get(&format!("{}/builds", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== {app} Builds")?;
    for b in list.as_array().into_iter().flatten().rev() {
        writeln!(
            out,
            "{}  {:<9}  {}  {}  {}",
            s(b, "id"),
            s(b, "status"),
            &s(&b["source_blob"], "version")
                .chars()
                .take(7)
                .collect::<String>(),
            s(&b["user"], "email"),
            when(&b["created_at"])
        )?;
    }
    Ok(())
}

async fn maintenance(client: &Client, app: &str, on: bool) -> anyhow::Result<()> {
    let word = if on { "Enabling" } else { "Disabling" };
    eprint!("{word} maintenance mode for {app}... ");
    let req = client
        .request(Method::PATCH, &app_path(app))
        .json(&json!({ "maintenance": on }));
    client.send(req).await?;
    eprintln!("done");
    Ok(())
}

async fn logs(
    client: &Client,
    app: &str,
    num: usize,
    tail: bool,
    dyno: Option<String>,
    source: Option<String>,
) -> anyhow::Result<()> {
    let req = client
        .request(Method::POST, &format!("{}/log-sessions", app_path(app)))
        .json(&json!({ "lines": num, "tail": tail, "dyno": dyno, "source": source }));
    let session = client.send(req).await?;
    let url = session["logplex_url"]
        .as_str()
        .context("the API returned a log session without logplex_url")?;
    let response = reqwest::Client::new()
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the log stream answered {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("reading the log stream")?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end_matches(['\n', '\r']).strip_prefix("data: ") {
                writeln!(out, "{data}")?;
                out.flush()?;
            }
        }
        if buf.len() > 64 * 1024 {
            buf.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_scale, ScaleArg};

    #[test]
    fn scale_arguments() {
        let arg = |t: &str, q: &str, size: Option<&str>| ScaleArg {
            process_type: t.into(),
            quantity: q.into(),
            size: size.map(str::to_string),
        };
        assert_eq!(parse_scale("web=2").expect("ok"), arg("web", "2", None));
        assert_eq!(
            parse_scale("web=2:standard-2X").expect("ok"),
            arg("web", "2", Some("standard-2X"))
        );
        assert_eq!(
            parse_scale("worker+1").expect("ok"),
            arg("worker", "+1", None)
        );
        assert_eq!(
            parse_scale("worker-3").expect("ok"),
            arg("worker", "-3", None)
        );
        // The range is the server's to check, so it can name its limit.
        assert_eq!(
            parse_scale("web=+9223372036854775807").expect("ok"),
            arg("web", "+9223372036854775807", None)
        );
        for bad in ["web", "=2", "web=x", "web+", "+1", "web=2:", "web=-"] {
            assert!(parse_scale(bad).is_err(), "{bad}");
        }
    }
}
