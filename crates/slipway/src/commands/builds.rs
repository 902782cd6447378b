//! builds: the builds git pushes made.

use std::io::Write;

use super::{app_path, s, when};
use crate::client::Client;

pub async fn list(client: &Client, app: &str) -> anyhow::Result<()> {
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
