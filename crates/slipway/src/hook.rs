//! `slipway hook pre-receive`: git runs this for each push received through the server.
//!
//! It reads the ref updates from stdin, sends the commit to deploy (`git archive`, as a tar
//! stream) to the server's internal build endpoint with the push's single-use token, and prints
//! the build output as it arrives (git shows it as `remote:` lines). Its exit status accepts or
//! rejects the push.

use std::io::{BufRead, Write};
use std::process::Stdio;

use anyhow::Context;
use futures::StreamExt;
use slipway_api::RESULT_PREFIX;
use tokio_util::io::ReaderStream;

const ZERO: &str = "0000000000000000000000000000000000000000";
const DEPLOY_REFS: [&str; 2] = ["refs/heads/main", "refs/heads/master"];

pub async fn pre_receive() -> anyhow::Result<i32> {
    let (Ok(url), Ok(token)) = (
        std::env::var("SLIPWAY_HOOK_URL"),
        std::env::var("SLIPWAY_PUSH_TOKEN"),
    ) else {
        eprintln!(" !     This hook only runs for pushes received by `slipway server`.");
        return Ok(1);
    };
    let mut deploy: Option<(String, String, String)> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading ref updates from git")?;
        let mut parts = line.split_whitespace();
        let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !DEPLOY_REFS.contains(&refname) {
            println!("-----> Pushed to {refname}, which is not deployed (push main or master to deploy); skipping build.");
            continue;
        }
        if new.chars().all(|c| c == '0') || new == ZERO {
            println!(" !     Deleting {refname} is not allowed: it is the deployed branch.");
            return Ok(1);
        }
        if let Some((_, _, other)) = &deploy {
            println!(" !     Push one of main or master at a time (this push updates {other} and {refname}).");
            return Ok(1);
        }
        deploy = Some((old.to_string(), new.to_string(), refname.to_string()));
    }
    let Some((old, commit, refname)) = deploy else {
        return Ok(0);
    };
    let mut archive = tokio::process::Command::new("git")
        .args(["archive", "--format=tar", &commit])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive has no output")?;
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("x-slipway-commit", &commit)
        .header("x-slipway-old", &old)
        .header("x-slipway-ref", &refname)
        .body(reqwest::Body::wrap_stream(ReaderStream::new(stdout)))
        .send()
        .await;
    let Some(response) = build_started(response) else {
        return Ok(1);
    };
    let mut result: Option<bool> = None;
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match line.strip_prefix(RESULT_PREFIX) {
                Some(r) => result = Some(r == "ok"),
                None => {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }
    }
    let _ = archive.wait().await;
    match result {
        Some(true) => Ok(0),
        Some(false) => Ok(1),
        None => {
            println!(
                " !     The build was interrupted (the server went away); the push was rejected."
            );
            Ok(1)
        }
    }
}

/// `slipway hook post-receive`: git runs this in a pipeline's repository once the pushed
/// commits are stored. It posts the ref updates to the server, which builds and tests each
/// updated branch, and prints the output as it arrives (git shows it as `remote:` lines).
/// The push has succeeded already; the exit status is 0 whatever the builds did.
pub async fn post_receive() -> anyhow::Result<i32> {
    let (Ok(url), Ok(token)) = (
        std::env::var("SLIPWAY_HOOK_URL"),
        std::env::var("SLIPWAY_PUSH_TOKEN"),
    ) else {
        eprintln!(" !     This hook only runs for pushes received by `slipway server`.");
        return Ok(0);
    };
    let mut updates = String::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading ref updates from git")?;
        updates.push_str(&line);
        updates.push('\n');
    }
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .body(updates)
        .send()
        .await;
    let Some(response) = build_started(response) else {
        return Ok(0);
    };
    let mut stream = response.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let _ = out.write_all(&chunk);
        let _ = out.flush();
    }
    Ok(0)
}

/// The server's answer to a hook's request if it took it; otherwise says why the build could
/// not start (git shows it as a `remote:` line).
fn build_started(response: reqwest::Result<reqwest::Response>) -> Option<reqwest::Response> {
    match response {
        Ok(r) if r.status().is_success() => Some(r),
        Ok(r) => {
            println!(
                " !     The build could not start: the server answered {}.",
                r.status()
            );
            None
        }
        Err(e) => {
            println!(" !     The build could not start: {e}");
            None
        }
    }
}
