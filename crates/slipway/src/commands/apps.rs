//! apps, apps:create, apps:info, apps:rename, apps:destroy, maintenance:on|off.

use std::io::Write;

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use super::{app_path, progress, s, when};
use crate::cli::Global;
use crate::client::Client;

pub async fn list(client: &Client) -> anyhow::Result<()> {
    let list = client.get("/apps").await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== Apps")?;
    for app in list.as_array().into_iter().flatten() {
        writeln!(out, "{}", s(app, "name"))?;
    }
    Ok(())
}

pub async fn create(
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
        return super::git::remote(client, global, created, "slipway").await;
    }
    eprintln!("hint: run `slipway git:remote -a {created}` in your repository, then `git push slipway main`");
    Ok(())
}

pub async fn info(client: &Client, app: &str) -> anyhow::Result<()> {
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

pub async fn destroy(client: &Client, app: &str, confirm: Option<String>) -> anyhow::Result<()> {
    if confirm.as_deref() != Some(app) {
        bail!(
            "this destroys {app} for good: its dynos, releases, slugs, repository and logs. To proceed, run again with --confirm {app}"
        );
    }
    let gone = progress(
        &format!("Destroying {app}"),
        client.send(client.request(Method::DELETE, &app_path(app))),
    )
    .await?;
    eprintln!("done");
    let r = &gone["removed"];
    let n = |k: &str| r[k].as_i64().unwrap_or(0);
    println!(
        "Removed {} dyno(s), {} release(s), {} build(s), {} slug(s) ({} bytes), {}, {} log line(s).",
        n("dynos"),
        n("releases"),
        n("builds"),
        n("slugs"),
        n("slug_bytes"),
        if r["repository"].as_bool() == Some(true) {
            "the git repository"
        } else {
            "no git repository (none was left)"
        },
        n("log_lines"),
    );
    Ok(())
}

/// Renames the app. Inside a repository whose `slipway` remote points at the old name, the
/// remote follows (as `heroku apps:rename` updates the `heroku` remote).
pub async fn rename(client: &Client, app: &str, newname: &str) -> anyhow::Result<()> {
    let req = client
        .request(Method::PATCH, &app_path(app))
        .json(&json!({ "name": newname }));
    let renamed: Value =
        progress(&format!("Renaming {app} to {newname}"), client.send(req)).await?;
    eprintln!("done");
    let git_url = s(&renamed, "git_url");
    println!("{} | {git_url}", s(&renamed, "web_url"));
    let remote = std::process::Command::new("git")
        .args(["remote", "get-url", "slipway"])
        .output();
    if let Ok(out) = remote {
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && url.ends_with(&format!("/{app}.git")) {
            let set = std::process::Command::new("git")
                .args(["remote", "set-url", "slipway", git_url])
                .status();
            match set {
                Ok(st) if st.success() => eprintln!("Git remote slipway updated to {git_url}"),
                _ => {
                    eprintln!("hint: update your git remote: git remote set-url slipway {git_url}")
                }
            }
        }
    }
    Ok(())
}

pub async fn maintenance(client: &Client, app: &str, on: bool) -> anyhow::Result<()> {
    let word = if on { "Enabling" } else { "Disabling" };
    eprint!("{word} maintenance mode for {app}... ");
    let req = client
        .request(Method::PATCH, &app_path(app))
        .json(&json!({ "maintenance": on }));
    client.send(req).await?;
    eprintln!("done");
    Ok(())
}
