//! Deploy reports POSTed as JSON to an app's webhooks (`webhooks:add URL`): `http://` only
//! for now (the API's HTTP client has no TLS yet), a 5 s connect and 10 s total limit per hook, at most one redirect-free try each;
//! a hook that fails is noted in the report step and never fails the deploy.

use std::time::Duration;

use serde_json::Value;

/// Longest webhook URL accepted.
pub const MAX_WEBHOOK_URL: usize = 2048;

/// Checks a webhook URL: absolute `http(s)://host[:port]/...` without credentials.
pub fn check_webhook_url(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_WEBHOOK_URL {
        return Err(format!(
            "The webhook URL is longer than {MAX_WEBHOOK_URL} characters."
        ));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| {
        format!("{raw:?} is not a URL ({e}); give one such as http://ci.example.com/hooks/slipway.")
    })?;
    if url.scheme() != "http" {
        return Err(format!(
            "Webhooks are http:// URLs for now (https:// is not supported yet); {raw:?} is {}://.",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host."));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "Put no credentials in a webhook URL (they would be shown in `webhooks`); use a secret path instead."
                .into(),
        );
    }
    Ok(url.to_string())
}

/// Sends `report` to each URL; one line per hook saying how it went.
pub async fn deliver(urls: &[String], report: &Value) -> (Vec<String>, usize) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                vec![format!("could not set up the HTTP client: {e}")],
                urls.len(),
            )
        }
    };
    let body = report.to_string();
    let mut lines = Vec::new();
    let mut failed = 0;
    for url in urls {
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                lines.push(format!("{url}: {}", r.status().as_u16()))
            }
            Ok(r) => {
                failed += 1;
                lines.push(format!("{url}: answered {}", r.status().as_u16()));
            }
            Err(e) => {
                failed += 1;
                lines.push(format!("{url}: {}", e.without_url()));
            }
        }
    }
    (lines, failed)
}

#[cfg(test)]
mod tests {
    use super::check_webhook_url;

    #[test]
    fn only_plain_http_urls_without_credentials() {
        assert!(check_webhook_url("http://127.0.0.1:9/hook").is_ok());
        for bad in [
            "https://ci.example.com/x",
            "ftp://x/",
            "not a url",
            "http://user:pw@host/",
            "/relative",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }
}
