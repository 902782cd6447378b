//! The watch window's checks: which log lines are errors (the log test), and one heartbeat
//! probe of the app's health URL through the router.

use std::time::Duration;

use slipway_logs::{LogLine, Source};

/// Why a log line counts as an error, or `None`.
pub fn classify(line: &LogLine, builtin: bool, patterns: &[regex::Regex]) -> Option<String> {
    // The deploy's own lines and the API's are reports, not the app's behaviour.
    if line.source == Source::App && (line.dyno == "deploy" || line.dyno == "api") {
        return None;
    }
    if builtin {
        if let Some(why) = builtin_error(line) {
            return Some(why);
        }
    }
    patterns
        .iter()
        .find(|p| p.is_match(&line.message))
        .map(|p| format!("matches pattern {:?}", p.as_str()))
}

fn builtin_error(line: &LogLine) -> Option<String> {
    if line.source != Source::Heroku {
        return None;
    }
    let m = &line.message;
    if line.dyno == "router" {
        let fields = logfmt_fields(m);
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        if let Some(code) = get("code") {
            if (code.starts_with("H1") || code.starts_with("H2")) && code.len() == 3 {
                return Some(format!("router error {code}"));
            }
            // H80 (maintenance) and other platform answers are not the app's errors.
            return None;
        }
        if let Some(status) = get("status") {
            if status.len() == 3 && status.starts_with('5') {
                return Some(format!("status={status}"));
            }
        }
        return None;
    }
    for code in ["R10", "R14", "R15"] {
        if m.starts_with(&format!("Error {code}")) {
            return Some(format!("dyno error {code}"));
        }
    }
    if m.starts_with("State changed from ") && m.ends_with(" to crashed") {
        return Some("a dyno crashed".into());
    }
    None
}

/// `key=value` pairs of a logfmt line; quoted values may hold spaces and `key=` text, which
/// is never taken for a field (router lines quote every client-supplied value).
fn logfmt_fields(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    out
}

/// One heartbeat: `GET path` on the app through the router. `Ok(status)` with a 2xx status;
/// `Err(why)` otherwise.
pub async fn probe(
    client: &reqwest::Client,
    router_port: u16,
    host: &str,
    path: &str,
) -> Result<u16, String> {
    let response = client
        .get(format!("http://127.0.0.1:{router_port}{path}"))
        .header(reqwest::header::HOST, host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "no answer within 10 s".to_string()
            } else {
                format!("no answer ({})", e.without_url())
            }
        })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: Source, dyno: &str, message: &str) -> LogLine {
        LogLine {
            seq: 0,
            time: chrono::Utc::now(),
            source,
            dyno: dyno.into(),
            message: message.into(),
        }
    }

    #[test]
    fn platform_errors_are_counted() {
        let errs = [
            line(
                Source::Heroku,
                "router",
                "at=error code=H12 desc=\"Request timeout\" method=GET path=\"/\" status=503",
            ),
            line(
                Source::Heroku,
                "router",
                "at=info method=GET path=\"/\" host=a status=500 bytes=3",
            ),
            line(Source::Heroku, "web.1", "Error R14 (Memory quota exceeded)"),
            line(
                Source::Heroku,
                "web.1",
                "Error R10 (Boot timeout) -> Web process failed",
            ),
            line(Source::Heroku, "web.1", "State changed from up to crashed"),
        ];
        for l in &errs {
            assert!(classify(l, true, &[]).is_some(), "{l:?}");
            assert!(classify(l, false, &[]).is_none(), "{l:?}");
        }
    }

    #[test]
    fn quoted_client_values_and_ok_lines_are_not_errors() {
        let fine = [
            line(
                Source::Heroku,
                "router",
                "at=info method=GET path=\"/x status=500 code=H12\" host=a status=200 bytes=3",
            ),
            line(
                Source::Heroku,
                "router",
                "at=error code=H80 desc=\"Maintenance mode\" status=503",
            ),
            line(Source::Heroku, "web.1", "State changed from starting to up"),
            line(Source::App, "web.1", "Error R14 is what I print"),
            line(Source::Heroku, "web.1", "Error R12 (Exit timeout)"),
        ];
        for l in &fine {
            assert_eq!(classify(l, true, &[]), None, "{l:?}");
        }
    }

    #[test]
    fn user_patterns_match_app_lines_but_not_reports() {
        let p = vec![regex::Regex::new("FATAL|panicked at").expect("regex")];
        assert!(classify(&line(Source::App, "web.1", "FATAL: db gone"), false, &p).is_some());
        assert!(classify(&line(Source::App, "deploy", "FATAL: db gone"), false, &p).is_none());
        assert!(classify(&line(Source::App, "web.1", "all good"), true, &p).is_none());
    }
}
