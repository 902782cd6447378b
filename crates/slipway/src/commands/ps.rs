//! ps, ps:scale, ps:type, ps:restart, ps:stop: the formation and its dynos.

use std::io::Write;

use reqwest::Method;
use serde_json::{json, Value};

use super::{app_path, progress, s, when};
use crate::client::Client;

pub async fn list(client: &Client, app: &str, json: bool) -> anyhow::Result<()> {
    let formation = client.get(&format!("{}/formation", app_path(app))).await?;
    let dynos = client.get(&format!("{}/dynos", app_path(app))).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&dynos)?)?;
        return Ok(());
    }
    let formation: Vec<&Value> = formation.as_array().into_iter().flatten().collect();
    if formation.is_empty() {
        writeln!(
            out,
            "No dynos on {app}: push a Procfile with `git push slipway main`"
        )?;
    }
    let one_offs: Vec<&Value> = dynos
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| s(d, "type") == "run")
        .collect();
    if !one_offs.is_empty() {
        writeln!(out, "=== run: one-off processes ({})", one_offs.len())?;
        for d in one_offs {
            writeln!(
                out,
                "{} ({}): {} {}: {}",
                s(d, "name"),
                s(d, "size"),
                s(d, "state"),
                when(&d["updated_at"]),
                s(d, "command")
            )?;
        }
        writeln!(out)?;
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
                "{}: {} {} (v{}){}",
                s(d, "name"),
                s(d, "state"),
                when(&d["updated_at"]),
                d["release"]["version"],
                memory(d)
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// ` mem 21.4 MB / 512 MB` for a dyno whose memory was measured, else nothing.
fn memory(d: &Value) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    match (
        d["memory_total_bytes"].as_u64(),
        d["memory_quota_bytes"].as_u64(),
    ) {
        (Some(used), Some(quota)) => format!(
            " mem {:.1} MB / {:.0} MB",
            used as f64 / MB,
            quota as f64 / MB
        ),
        _ => String::new(),
    }
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

pub async fn scale(client: &Client, app: &str, changes: &[String]) -> anyhow::Result<()> {
    let mut updates = Vec::new();
    for change in changes {
        let arg = parse_scale(change)?;
        let mut update = json!({ "type": arg.process_type, "quantity": arg.quantity });
        if let Some(size) = arg.size {
            update["size"] = json!(size);
        }
        updates.push(update);
    }
    update_formation(client, app, "Scaling dynos", updates).await
}

/// `ps:type web=standard-2X`: sizes only.
pub async fn resize(client: &Client, app: &str, changes: &[String]) -> anyhow::Result<()> {
    let mut updates = Vec::new();
    for change in changes {
        let Some((ptype, size)) = change
            .split_once('=')
            .filter(|(t, z)| !t.is_empty() && !z.is_empty())
        else {
            anyhow::bail!("invalid argument {change:?}: use TYPE=SIZE, e.g. web=standard-2X");
        };
        updates.push(json!({ "type": ptype, "size": size }));
    }
    update_formation(client, app, "Resizing dynos", updates).await
}

async fn update_formation(
    client: &Client,
    app: &str,
    doing: &str,
    updates: Vec<Value>,
) -> anyhow::Result<()> {
    let req = client
        .request(Method::PATCH, &format!("{}/formation", app_path(app)))
        .json(&json!({ "updates": updates }));
    let formation = progress(doing, client.send(req)).await?;
    let now: Vec<String> = formation
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{} at {}:{}", s(f, "type"), f["quantity"], s(f, "size")))
        .collect();
    eprintln!("done, now running {}", now.join(", "));
    Ok(())
}

/// `ps:restart`, `ps:restart web`, `ps:restart web.1`.
pub async fn restart(client: &Client, app: &str, target: Option<&str>) -> anyhow::Result<()> {
    let (path, what) = match target {
        Some(t) => (format!("{}/dynos/{t}", app_path(app)), t.to_string()),
        None => (format!("{}/dynos", app_path(app)), "all dynos".to_string()),
    };
    let answer = progress(
        &format!("Restarting {what} on {app}"),
        client.send(client.request(Method::DELETE, &path)),
    )
    .await?;
    eprintln!("done");
    print_restarted(&answer);
    Ok(())
}

/// `ps:stop web.1`: a formation dyno is started again, as on Heroku.
pub async fn stop(client: &Client, app: &str, target: &str) -> anyhow::Result<()> {
    let path = format!("{}/dynos/{target}/actions/stop", app_path(app));
    let answer = progress(
        &format!("Stopping {target} on {app}"),
        client.send(client.request(Method::POST, &path)),
    )
    .await?;
    eprintln!("done; formation dynos are started again");
    print_restarted(&answer);
    Ok(())
}

fn print_restarted(answer: &Value) {
    for name in answer["restarted"].as_array().into_iter().flatten() {
        println!("{}", name.as_str().unwrap_or_default());
    }
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
