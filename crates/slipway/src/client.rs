//! The API client: finds the server and token, sends Platform-API-style requests, and turns
//! `{"id","message"}` errors into readable ones.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use slipway_core::Secret;

use crate::cli::Global;
use crate::server_cmd::{default_data_dir, DEFAULT_API_LISTEN};

pub const ACCEPT: &str = "application/vnd.heroku+json; version=3";

/// An API error as the server reported it.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub id: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.message, self.status.as_u16(), self.id)
    }
}

impl std::error::Error for ApiFailure {}

/// A `hint:` line for errors a user can fix.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    if let Some(f) = err.downcast_ref::<ApiFailure>() {
        if f.status == StatusCode::UNAUTHORIZED {
            return Some("set SLIPWAY_API_TOKEN to a valid token (the server writes one to <data-dir>/admin.token)".into());
        }
    }
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        if e.is_connect() {
            return Some(
                "is `slipway server` running? Point at it with --api-url or SLIPWAY_API_URL".into(),
            );
        }
    }
    None
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: Secret,
    http: reqwest::Client,
}

impl Client {
    pub fn from_global(global: &Global) -> anyhow::Result<Self> {
        let data_dir = global.data_dir.clone().unwrap_or_else(default_data_dir);
        let base = match &global.api_url {
            Some(url) => url.clone(),
            None => discover_api_url(&data_dir)
                .unwrap_or_else(|| format!("http://{DEFAULT_API_LISTEN}")),
        };
        let token = match &global.token {
            Some(t) => Secret::new(t.expose().trim()),
            None => {
                let path = data_dir.join(slipway_api::ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| Secret::new(t.trim()))
                    .map_err(|e| {
                        anyhow!(
                            "no API token: set SLIPWAY_API_TOKEN (or --token), or run where {} is readable ({e})",
                            path.display()
                        )
                    })?
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("slipway-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn token(&self) -> &str {
        self.token.expose()
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, ACCEPT)
            .bearer_auth(self.token.expose())
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = req.send().await?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the API response")?;
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = body["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ApiFailure {
                status,
                id: body["id"].as_str().unwrap_or("error").to_string(),
                message,
            }
            .into());
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).context("the API answered with something that is not JSON")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }
}

/// The API URL a running local server wrote to `<data-dir>/server.json`.
fn discover_api_url(data_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(slipway_api::SERVER_FILE)).ok()?;
    let info: Value = serde_json::from_str(&text).ok()?;
    info["api_url"].as_str().map(str::to_string)
}

/// The app to act on: `-a`, `SLIPWAY_APP`, or the app the `slipway` git remote points at.
pub fn resolve_app(explicit: Option<String>) -> anyhow::Result<String> {
    if let Some(app) = explicit.filter(|a| !a.is_empty()) {
        return Ok(app);
    }
    let output = std::process::Command::new("git")
        .args(["remote", "get-url", "slipway"])
        .output();
    if let Ok(out) = output {
        if out.status.success() {
            let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(name) = url.rsplit('/').next().and_then(|n| n.strip_suffix(".git")) {
                if !name.is_empty() {
                    return Ok(name.to_string());
                }
            }
        }
    }
    bail!("no app given: pass --app APP (or -a APP), set SLIPWAY_APP, or run inside a repository with a `slipway` git remote")
}

/// Where the CLI's own binary is, for git's credential helper setting.
pub fn own_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the slipway binary")
}
