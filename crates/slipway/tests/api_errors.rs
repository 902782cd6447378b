//! The API's answers to bad requests (issue 6): quantities are range-checked and never wrap,
//! fields the API does not implement are refused rather than ignored, every error is
//! `{"id","message"}` with the Platform API's ids (404, 405, 400, 422 included), and every
//! request is logged with its `Request-Id`, which the client gets back.

// Not every test file uses every helper the shared support module re-exports.
#[allow(unused_imports)]
mod support;

use serde_json::Value;
use support::{header, http, text, wait_for, Server};

type Response = (u16, Vec<(String, String)>, String);

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Checks the status and the `{"id","message"}` shape; returns the message.
fn error_of(resp: &Response, status: u16, id: &str) -> String {
    let (got, headers, body) = resp;
    assert_eq!(*got, status, "{body}");
    assert!(
        header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")),
        "{headers:?}"
    );
    let v = json(body);
    assert_eq!(v["id"], id, "{body}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
    message.to_string()
}

fn web_quantity(server: &Server, app: &str) -> i64 {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/formation/web"), None);
    assert_eq!(status, 200, "{body}");
    json(&body)["quantity"].as_i64().expect("quantity")
}

#[test]
fn scale_quantities_are_range_checked_and_never_wrap() {
    let server = Server::start_with(&["--max-dynos-per-type", "3"]);
    let repo = server.sample_repo("bounded-src");
    server.cli_ok(&repo, &["apps:create", "bounded"]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    assert_eq!(web_quantity(&server, "bounded"), 1);

    // Through the API: out of range (overflowing or not) names the limit; nonsense is 422 too.
    for quantity in [
        r#""+9223372036854775807""#,
        r#""9223372036854775808""#,
        "9223372036854775808",
        r#""+3""#,
        "4",
        "-1",
    ] {
        let body = format!(r#"{{"updates":[{{"type":"web","quantity":{quantity}}}]}}"#);
        let resp = server.api("PATCH", "/apps/bounded/formation", Some(&body));
        assert_eq!(resp.0, 422, "{quantity}: {}", resp.2);
        let message = error_of(&resp, 422, "invalid_params");
        assert!(message.contains("between 0 and 3"), "{quantity}: {message}");
    }
    for quantity in ["2.5", r#""two""#, "true", r#"" 2""#] {
        let body = format!(r#"{{"updates":[{{"type":"web","quantity":{quantity}}}]}}"#);
        let resp = server.api("PATCH", "/apps/bounded/formation", Some(&body));
        assert_eq!(resp.0, 422, "{quantity}: {}", resp.2);
        error_of(&resp, 422, "invalid_params");
    }
    let resp = server.api(
        "PATCH",
        "/apps/bounded/formation/web",
        Some(r#"{"quantity":"+9223372036854775807"}"#),
    );
    error_of(&resp, 422, "invalid_params");
    assert_eq!(web_quantity(&server, "bounded"), 1, "nothing changed");

    // Through the CLI.
    for change in [
        "web=+9223372036854775807",
        "web+9223372036854775807",
        "web=4",
    ] {
        let out = server.cli(&repo, &["ps:scale", change]);
        assert!(!out.status.success(), "{change} was accepted");
        assert!(
            text(&out).contains("between 0 and 3"),
            "{change}: {}",
            text(&out)
        );
    }
    assert_eq!(web_quantity(&server, "bounded"), 1, "nothing changed");
    server.cli_ok(&repo, &["ps:scale", "web=3"]);
    assert_eq!(web_quantity(&server, "bounded"), 3);
    let out = server.cli(&repo, &["ps:scale", "web+1"]);
    assert!(
        !out.status.success() && text(&out).contains("between 0 and 3"),
        "{}",
        text(&out)
    );
    assert_eq!(web_quantity(&server, "bounded"), 3);
}

#[test]
fn app_updates_refuse_what_the_api_does_not_do() {
    let server = Server::start();
    let root = server.root.path().to_path_buf();
    server.cli_ok(&root, &["apps:create", "keeper"]);
    let patch = |body: &str| server.api("PATCH", "/apps/keeper", Some(body));

    let message = error_of(
        &patch(r#"{"maintenance":true,"colour":"blue"}"#),
        422,
        "invalid_params",
    );
    assert!(message.contains("colour"), "{message}");
    let message = error_of(
        &patch(r#"{"build_stack":"heroku-24"}"#),
        422,
        "invalid_params",
    );
    assert!(
        message.contains("heroku-24") && message.contains("slipway-24"),
        "{message}"
    );
    error_of(&patch(r#"{"name":"Not_A_Name"}"#), 422, "invalid_params");
    error_of(&patch(r#"{"maintenance":"yes"}"#), 422, "invalid_params");
    // None of those changed anything.
    let (status, _, body) = server.api("GET", "/apps/keeper", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["maintenance"], false);

    let (status, _, body) = patch(r#"{"build_stack":"slipway-24","maintenance":true}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["maintenance"], true);

    // A rename is done, not acknowledged and ignored.
    let (status, _, body) = patch(r#"{"name":"kept-renamed"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["name"], "kept-renamed");
    assert_eq!(server.api("GET", "/apps/keeper", None).0, 404);
    let (status, _, body) = server.api("GET", "/apps/kept-renamed", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["maintenance"], true);
    server.cli_ok(&root, &["apps:create", "taken"]);
    let resp = server.api("PATCH", "/apps/kept-renamed", Some(r#"{"name":"taken"}"#));
    let message = error_of(&resp, 422, "invalid_params");
    assert!(message.contains("taken"), "{message}");
}

#[test]
fn errors_have_the_platform_api_shape_and_requests_are_logged() {
    let server = Server::start_logged(&[]);
    let token = server.token();
    let auth = format!("Bearer {token}");
    let call = |method: &str, path: &str, extra: &[(&str, &str)], body: Option<&str>| {
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        http(server.api_port, method, path, &headers, body)
    };

    // 404: an unknown app, an unknown endpoint.
    error_of(&call("GET", "/apps/nope", &[], None), 404, "not_found");
    error_of(
        &call("GET", "/no/such/endpoint", &[], None),
        404,
        "not_found",
    );
    // 405 with the methods that are allowed.
    let resp = call("PUT", "/apps", &[("Request-Id", "e2e-req-405")], Some("{}"));
    let message = error_of(&resp, 405, "method_not_allowed");
    assert!(message.contains("PUT"), "{message}");
    let allow = header(&resp.1, "allow").unwrap_or_default().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(header(&resp.1, "request-id"), Some("e2e-req-405"));
    error_of(
        &call("DELETE", "/account", &[], None),
        405,
        "method_not_allowed",
    );
    error_of(
        &call("POST", "/apps/nope/config-vars", &[], Some("{}")),
        405,
        "method_not_allowed",
    );
    // 400: not JSON. 422: JSON of the wrong shape.
    let message = error_of(
        &call("POST", "/apps", &[], Some("{not json")),
        400,
        "bad_request",
    );
    assert!(message.contains("not valid JSON"), "{message}");
    error_of(
        &call("POST", "/apps", &[], Some(r#"{"name":5}"#)),
        422,
        "invalid_params",
    );
    let message = error_of(
        &call("POST", "/apps", &[], Some(r#"{"nmae":"typo"}"#)),
        422,
        "invalid_params",
    );
    assert!(message.contains("nmae"), "{message}");
    error_of(
        &call("POST", "/apps", &[], Some(r#"{"region":"eu"}"#)),
        422,
        "invalid_params",
    );
    let message = error_of(
        &call(
            "POST",
            "/apps",
            &[],
            Some(r#"{"name":"teamed","team":"acme"}"#),
        ),
        422,
        "invalid_params",
    );
    assert!(message.contains("team"), "{message}");
    // What the official CLI sends when its flags are not given is fine.
    let (status, _, body) = call(
        "POST",
        "/apps",
        &[],
        Some(
            r#"{"name":"plain","region":null,"stack":"slipway-24","locked":false,"feature_flags":[]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    // 401.
    let resp = http(server.api_port, "GET", "/apps", &[], None);
    error_of(&resp, 401, "unauthorized");

    // Every answer carries a request id: the client's, or a new one.
    let (status, headers, _) = call("GET", "/account", &[], None);
    assert_eq!(status, 200);
    let id = header(&headers, "request-id")
        .expect("Request-Id")
        .to_string();
    assert_eq!(id.len(), 36, "{id}");
    let (_, headers, _) = call("GET", "/apps/nope", &[("Request-Id", "e2e-req-404")], None);
    assert_eq!(header(&headers, "request-id"), Some("e2e-req-404"));

    // The server logs each request: method, route, status, duration, request id; not the token.
    let log = wait_for(10, "the request lines in the server log", || {
        let log = server.server_log();
        (log.contains("e2e-req-405") && log.contains("e2e-req-404")).then_some(log)
    });
    let line_of = |id: &str| {
        log.lines()
            .find(|l| l.contains(id) && l.contains("api request"))
            .unwrap_or_else(|| panic!("no request line for {id}:\n{log}"))
            .to_string()
    };
    let line = line_of("e2e-req-405");
    for part in ["method=PUT", "route=/apps", "status=405", "duration_ms="] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    let line = line_of("e2e-req-404");
    for part in ["method=GET", "route=/apps/{app}", "status=404"] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert!(!log.contains(&token), "the token is in the server log");
}
