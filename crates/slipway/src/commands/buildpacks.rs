//! buildpacks, buildpacks:set|add|remove|clear, builds:cache:purge: which buildpacks an app's
//! builds run (Platform API `buildpack-installations`), and emptying its build cache.
//!
//! An entry is a built-in's name (`heroku/python`, `python`), a directory on the server, or a
//! git URL pinned by `#ref`. With none set, builds detect among the built-ins.

use std::io::Write;

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use super::app_path;
use crate::client::Client;

async fn current(client: &Client, app: &str) -> anyhow::Result<Vec<String>> {
    let list = client
        .get(&format!("{}/buildpack-installations", app_path(app)))
        .await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["buildpack"]["url"].as_str().map(str::to_string))
        .collect())
}

async fn replace(client: &Client, app: &str, urls: &[String]) -> anyhow::Result<Vec<String>> {
    let updates: Vec<Value> = urls.iter().map(|u| json!({ "buildpack": u })).collect();
    let req = client
        .request(
            Method::PUT,
            &format!("{}/buildpack-installations", app_path(app)),
        )
        .json(&json!({ "updates": updates }));
    let list = client.send(req).await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["buildpack"]["url"].as_str().map(str::to_string))
        .collect())
}

fn print(app: &str, urls: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if urls.is_empty() {
        writeln!(
            out,
            "{app} has no buildpacks set: builds detect among the built-ins (or use BUILDPACK_URL or the app's .buildpacks file)."
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "=== {app} Buildpack URL{}",
        if urls.len() > 1 { "s" } else { "" }
    )?;
    if urls.len() == 1 {
        writeln!(out, "{}", urls[0])?;
    } else {
        for (i, url) in urls.iter().enumerate() {
            writeln!(out, "{}. {url}", i + 1)?;
        }
    }
    Ok(())
}

pub async fn list(client: &Client, app: &str) -> anyhow::Result<()> {
    print(app, &current(client, app).await?)
}

/// `buildpacks:set URL`: the only buildpack, or the one at `index` (1-based) replaced.
pub async fn set(
    client: &Client,
    app: &str,
    url: &str,
    index: Option<usize>,
) -> anyhow::Result<()> {
    let mut urls = current(client, app).await?;
    match index {
        None => urls = vec![url.to_string()],
        Some(i) if i >= 1 && i <= urls.len() => urls[i - 1] = url.to_string(),
        Some(i) if i == urls.len() + 1 => urls.push(url.to_string()),
        Some(i) => bail!(
            "index {i} is out of range: {app} has {} buildpack(s); use 1 to {}",
            urls.len(),
            urls.len() + 1
        ),
    }
    let urls = replace(client, app, &urls).await?;
    eprintln!(
        "Buildpack set. Next release on {app} will use {}.",
        urls.join(", ")
    );
    print(app, &urls)
}

/// `buildpacks:add URL`: appended, or inserted at `index` (1-based).
pub async fn add(
    client: &Client,
    app: &str,
    url: &str,
    index: Option<usize>,
) -> anyhow::Result<()> {
    let mut urls = current(client, app).await?;
    if urls.iter().any(|u| u == url) {
        bail!("{url} is already set on {app}");
    }
    match index {
        None => urls.push(url.to_string()),
        Some(i) if i >= 1 && i <= urls.len() + 1 => urls.insert(i - 1, url.to_string()),
        Some(i) => bail!("index {i} is out of range: use 1 to {}", urls.len() + 1),
    }
    let urls = replace(client, app, &urls).await?;
    eprintln!(
        "Buildpack added. Next release on {app} will use {}.",
        urls.join(", ")
    );
    print(app, &urls)
}

/// `buildpacks:remove URL` or `buildpacks:remove -i N`.
pub async fn remove(
    client: &Client,
    app: &str,
    url: Option<&str>,
    index: Option<usize>,
) -> anyhow::Result<()> {
    let mut urls = current(client, app).await?;
    match (url, index) {
        (Some(url), None) => {
            let before = urls.len();
            urls.retain(|u| u != url);
            if urls.len() == before {
                bail!("{url} is not set on {app}; `slipway buildpacks -a {app}` lists them");
            }
        }
        (None, Some(i)) if i >= 1 && i <= urls.len() => {
            urls.remove(i - 1);
        }
        (None, Some(i)) => bail!(
            "index {i} is out of range: {app} has {} buildpack(s)",
            urls.len()
        ),
        _ => bail!("give either a buildpack URL or --index, not both"),
    }
    let urls = replace(client, app, &urls).await?;
    eprintln!("Buildpack removed.");
    print(app, &urls)
}

pub async fn clear(client: &Client, app: &str) -> anyhow::Result<()> {
    replace(client, app, &[]).await?;
    eprintln!("Buildpacks cleared. Next release on {app} will detect the buildpack to use.");
    Ok(())
}

pub async fn purge_cache(client: &Client, app: &str, confirm: Option<&str>) -> anyhow::Result<()> {
    if confirm != Some(app) {
        bail!("this empties {app}'s build cache; the next build installs everything again. Confirm with --confirm {app}");
    }
    client
        .send(client.request(Method::DELETE, &format!("{}/build-cache", app_path(app))))
        .await?;
    eprintln!("Build cache of {app} purged: the next build installs all dependencies.");
    Ok(())
}
