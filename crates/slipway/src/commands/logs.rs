//! `logs [-n N] [--ps web.1] [--source app|heroku] [--tail] [--json]`: a log session, read as
//! Server-Sent Events.
//!
//! A tail outlives the server it started on: when the stream ends or breaks (a server restart
//! or upgrade), the CLI says so on stderr, finds the server again (a restarted local server
//! may listen on a new port: `server.json` is read again) and opens a new session with
//! `Last-Event-ID` set to the last line it printed, so lines are neither repeated nor lost
//! while the server still keeps them. Ctrl-C ends it cleanly.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::app_path;
use crate::cli::Global;
use crate::client::{ApiFailure, Client};

/// Longest SSE line the CLI holds (a log line is at most 10,000 bytes, plus its prefix).
const MAX_EVENT_LINE: usize = 64 * 1024;

pub struct LogsArgs {
    pub num: usize,
    pub tail: bool,
    pub dyno: Option<String>,
    pub source: Option<String>,
    pub json: bool,
}

/// How one log session ended.
enum End {
    /// The server closed the stream (a finished non-tail session, or a server going away).
    Closed,
    /// The reader stopped (stdout closed).
    Stop,
}

pub async fn show(
    client: &Client,
    global: &Global,
    app: &str,
    args: LogsArgs,
) -> anyhow::Result<()> {
    let mut last_id: Option<u64> = None;
    let run = async {
        let mut first = true;
        let mut failures: u32 = 0;
        loop {
            let fresh;
            let c = if first {
                client
            } else {
                // Find the server again: a restarted one may have a new address.
                fresh = match Client::from_global(global) {
                    Ok(c) => c,
                    Err(e) => {
                        failures += 1;
                        retry_wait(failures, &e).await;
                        continue;
                    }
                };
                &fresh
            };
            match session(c, app, &args, &mut last_id, !first).await {
                Ok(End::Stop) => return Ok(()),
                Ok(End::Closed) if !args.tail => return Ok(()),
                Ok(End::Closed) => {
                    failures = 0;
                    eprintln!(
                        "slipway: the log stream ended (server restarting?); reconnecting..."
                    );
                }
                // An app that is gone, a bad filter or token: reconnecting cannot help.
                Err(e) if first || is_final(&e) => return Err(e),
                Err(e) => {
                    failures += 1;
                    retry_wait(failures, &e).await;
                }
            }
            first = false;
        }
    };
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Errors a reconnect cannot fix: the API refused the request itself.
fn is_final(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiFailure>().is_some_and(|f| {
        matches!(
            f.status,
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::UNPROCESSABLE_ENTITY
        )
    })
}

async fn retry_wait(failures: u32, err: &anyhow::Error) {
    let delay = Duration::from_millis(200 * u64::from(failures.min(10)));
    if failures == 1 || failures.is_multiple_of(20) {
        eprintln!("slipway: log stream unavailable ({err:#}); retrying...");
    }
    tokio::time::sleep(delay).await;
}

/// One log session: prints its lines and remembers the last line's id.
async fn session(
    client: &Client,
    app: &str,
    args: &LogsArgs,
    last_id: &mut Option<u64>,
    resumed: bool,
) -> anyhow::Result<End> {
    let req = client
        .request(Method::POST, &format!("{}/log-sessions", app_path(app)))
        .json(&json!({
            "lines": args.num,
            "tail": args.tail,
            "dyno": args.dyno,
            "source": args.source,
        }));
    let session = client.send(req).await?;
    let url = session["logplex_url"]
        .as_str()
        .context("the API returned a log session without logplex_url")?;
    let mut get = reqwest::Client::new()
        .get(url)
        .header("Accept", "text/event-stream");
    if let Some(id) = last_id {
        get = get.header("Last-Event-ID", id.to_string());
    }
    let response = get.send().await.context("opening the log stream")?;
    if !response.status().is_success() {
        bail!("the log stream answered {}", response.status());
    }
    if resumed {
        match last_id {
            Some(id) => eprintln!("slipway: reconnected; resuming after line {id}"),
            None => eprintln!("slipway: reconnected"),
        }
    }
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut event_id: Option<u64> = None;
    let mut data: Option<String> = None;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        // A stream that breaks (the server went away) ends the session; a tail reconnects.
        let Ok(chunk) = chunk else {
            return Ok(End::Closed);
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // The end of an event.
                if let Some(text) = data.take() {
                    let printed = if args.json {
                        writeln!(out, "{}", as_json(&text, event_id))
                    } else {
                        writeln!(out, "{text}")
                    };
                    if printed.and_then(|()| out.flush()).is_err() {
                        return Ok(End::Stop);
                    }
                    if let Some(id) = event_id {
                        *last_id = Some(id);
                    }
                }
                event_id = None;
            } else if let Some(v) = line.strip_prefix("id:") {
                event_id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = Some(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if buf.len() > MAX_EVENT_LINE {
            buf.clear();
        }
    }
    Ok(End::Closed)
}

/// `2013-02-11T15:19:10.123456+00:00 app[web.1]: message` as a JSON object.
fn as_json(line: &str, seq: Option<u64>) -> serde_json::Value {
    let parsed = line.split_once(' ').and_then(|(time, rest)| {
        let (source, rest) = rest.split_once('[')?;
        let (dyno, message) = rest.split_once("]: ")?;
        Some((time, source, dyno, message))
    });
    match parsed {
        Some((time, source, dyno, message)) => json!({
            "seq": seq,
            "time": time,
            "source": source,
            "dyno": dyno,
            "message": message,
        }),
        None => json!({ "seq": seq, "message": line }),
    }
}

#[cfg(test)]
mod tests {
    use super::as_json;

    #[test]
    fn json_lines_carry_the_fields() {
        let v = as_json(
            "2013-02-11T15:19:10.123456+00:00 app[web.1]: hello [x]: y",
            Some(7),
        );
        assert_eq!(v["seq"], 7);
        assert_eq!(v["time"], "2013-02-11T15:19:10.123456+00:00");
        assert_eq!(v["source"], "app");
        assert_eq!(v["dyno"], "web.1");
        assert_eq!(v["message"], "hello [x]: y");
    }
}
