//! git:remote (with this CLI as git's credential helper), and the helper itself.

use std::io::BufRead;

use anyhow::{bail, Context};

use super::{app_path, s};
use crate::cli::Global;
use crate::client::{own_binary, Client};

pub async fn remote(
    client: &Client,
    global: &Global,
    app: &str,
    remote: &str,
) -> anyhow::Result<()> {
    let info = client.get(&app_path(app)).await?;
    let url = s(&info, "git_url").to_string();
    set_remote(client, global, remote, &url)
}

/// Points `remote` at `url` in the repository here, with this CLI as git's credential helper.
pub(super) fn set_remote(
    client: &Client,
    global: &Global,
    remote: &str,
    url: &str,
) -> anyhow::Result<()> {
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
    let done = git(&["remote", action, remote, url])?;
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
pub fn git_credential(global: &Global, operation: &str) -> anyhow::Result<()> {
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
