//! logs [--tail]: a log session, read as Server-Sent Events.

use std::io::Write;

use anyhow::{bail, Context};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use super::app_path;
use crate::client::Client;

pub async fn show(
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
