//! config, config:get, config:set, config:unset: an app's config vars.
//!
//! `config -s` prints `KEY=value` lines a POSIX shell reads back exactly (`eval`, `. file`):
//! values other than plain words are single-quoted, with `'` written as `'\''`; newlines stay
//! inside the quotes.

use std::io::Write;

use anyhow::bail;
use reqwest::Method;
use serde_json::{Map, Value};

use super::{app_path, latest_version, progress};
use crate::client::Client;

/// A value quoted for a POSIX shell.
pub fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

async fn config_of(client: &Client, app: &str) -> anyhow::Result<Map<String, Value>> {
    match client
        .get(&format!("{}/config-vars", app_path(app)))
        .await?
    {
        Value::Object(map) => Ok(map),
        other => bail!("the API answered config vars that are not an object: {other}"),
    }
}

pub async fn show(client: &Client, app: &str, shell: bool, json: bool) -> anyhow::Result<()> {
    let config = config_of(client, app).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&config)?)?;
        return Ok(());
    }
    if shell {
        for (k, v) in &config {
            writeln!(out, "{k}={}", shell_quote(v.as_str().unwrap_or_default()))?;
        }
        return Ok(());
    }
    writeln!(out, "=== {app} Config Vars")?;
    let width = config.keys().map(String::len).max().unwrap_or(0) + 1;
    for (k, v) in &config {
        writeln!(
            out,
            "{:<width$} {}",
            format!("{k}:"),
            v.as_str().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// Prints the value exactly, then a newline (nothing but the newline when it is not set).
pub async fn get(client: &Client, app: &str, key: &str, shell: bool) -> anyhow::Result<()> {
    let config = config_of(client, app).await?;
    let value = config.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if shell {
        writeln!(out, "{key}={}", shell_quote(value))?;
    } else {
        out.write_all(value.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `A=1` -> ("A", "1"); the value is everything after the first `=` and may be empty.
pub fn parse_pair(pair: &str) -> anyhow::Result<(&str, &str)> {
    match pair.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!(
            "invalid argument {:?}: use KEY=VALUE, e.g. RACK_ENV=production",
            pair.chars().take(40).collect::<String>()
        ),
    }
}

pub async fn set(client: &Client, app: &str, pairs: &[String]) -> anyhow::Result<()> {
    let mut body = Map::new();
    for pair in pairs {
        let (k, v) = parse_pair(pair)?;
        body.insert(k.to_string(), Value::String(v.to_string()));
    }
    let names: Vec<&str> = body.keys().map(String::as_str).collect();
    let doing = format!("Setting {} and restarting {app}", names.join(", "));
    patch(client, app, &doing, body.clone()).await?;
    let mut out = std::io::stdout().lock();
    for (k, v) in &body {
        writeln!(out, "{k}: {}", v.as_str().unwrap_or_default())?;
    }
    Ok(())
}

pub async fn unset(client: &Client, app: &str, keys: &[String]) -> anyhow::Result<()> {
    let body: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let doing = format!("Unsetting {} and restarting {app}", keys.join(", "));
    patch(client, app, &doing, body).await
}

async fn patch(
    client: &Client,
    app: &str,
    doing: &str,
    body: Map<String, Value>,
) -> anyhow::Result<()> {
    let req = client
        .request(Method::PATCH, &format!("{}/config-vars", app_path(app)))
        .json(&body);
    progress(doing, client.send(req)).await?;
    eprintln!("done, {}", latest_version(client, app).await?);
    Ok(())
}

/// `labs`: `[+] log-runtime-metrics  Emit dyno ...` (`+` when on), as Heroku lists them.
pub async fn labs(client: &Client, app: &str) -> anyhow::Result<()> {
    let features = client.get(&format!("{}/features", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "=== App Features ({app})")?;
    for f in features.as_array().into_iter().flatten() {
        let mark = if f["enabled"] == Value::Bool(true) {
            '+'
        } else {
            ' '
        };
        writeln!(
            out,
            "[{mark}] {:<22} {}",
            f["name"].as_str().unwrap_or_default(),
            f["description"].as_str().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `labs:enable F` / `labs:disable F` (`PATCH /apps/A/features/F`): the server sets or unsets
/// the feature's config var, a new release the dynos restart onto (Heroku's features need a
/// restart too).
pub async fn labs_set(client: &Client, app: &str, name: &str, on: bool) -> anyhow::Result<()> {
    let req = client
        .request(
            Method::PATCH,
            &format!("{}/features/{}", app_path(app), urlencoding_path(name)),
        )
        .json(&serde_json::json!({ "enabled": on }));
    let doing = format!(
        "{} {name} for {app} and restarting it",
        if on { "Enabling" } else { "Disabling" }
    );
    progress(&doing, client.send(req)).await?;
    eprintln!("done, {}", latest_version(client, app).await?);
    Ok(())
}

/// A feature name as one path segment: anything but `[A-Za-z0-9-_.]` percent-encoded.
fn urlencoding_path(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_are_one_path_segment() {
        assert_eq!(
            urlencoding_path("log-runtime-metrics"),
            "log-runtime-metrics"
        );
        assert_eq!(urlencoding_path("a/../b c"), "a%2F..%2Fb%20c");
    }

    #[test]
    fn values_are_quoted_for_the_shell_round_trip() {
        let values = [
            "plain",
            "",
            "it's",
            "a b",
            "x=1\n'y'\n\"z\"",
            "naïve $HOME `x`",
        ];
        for value in values {
            let script = format!("V={}; printf %s \"$V\"", shell_quote(value));
            let out = std::process::Command::new("sh")
                .args(["-c", &script])
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{script}");
        }
        assert_eq!(shell_quote("plain"), "plain");
    }

    #[test]
    fn pairs_split_at_the_first_equals() {
        assert_eq!(parse_pair("A=1").expect("ok"), ("A", "1"));
        assert_eq!(parse_pair("A=x=y").expect("ok"), ("A", "x=y"));
        assert_eq!(parse_pair("A=").expect("ok"), ("A", ""));
        assert!(parse_pair("=1").is_err() && parse_pair("A").is_err());
    }
}
