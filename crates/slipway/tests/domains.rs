//! Custom domains through the real binary (issue 12): `domains:add` routes a host name to its
//! app, wildcards cover one label, a domain belongs to one app, unknown hosts get the "no
//! such app" page, and domains follow renames and go with a destroyed app.

// Not every test file uses every helper the shared support module re-exports.
#[allow(unused_imports)]
mod support;

use support::{deploy_echo, http, text, Server};

/// GET `/` on the router with this Host: (status, body).
fn get_host(server: &Server, host: &str) -> (u16, String) {
    let (status, _, body) = http(server.router_port, "GET", "/", &[("Host", host)], None);
    (status, body)
}

#[test]
fn custom_domains_route_to_their_app_and_belong_to_one() {
    let server = Server::start();
    let dir = server.root.path().to_path_buf();
    deploy_echo(&server, "alpha");
    deploy_echo(&server, "beta");

    // Unknown hosts get the "no such app" page.
    let (status, body) = get_host(&server, "www.example.test");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No such app"), "{body}");

    // An exact domain for alpha, a wildcard for beta; exact wins, a wildcard is one label.
    let added = server.cli_ok(&dir, &["domains:add", "WWW.Example.Test", "-a", "alpha"]);
    assert!(added.contains("Added www.example.test to alpha"), "{added}");
    assert!(added.contains("alpha.localhost"), "{added}");
    server.cli_ok(&dir, &["domains:add", "*.example.test", "-a", "beta"]);
    let (status, body) = get_host(&server, "www.example.test:8080");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("app=alpha\n"), "{body}");
    assert!(body.contains("host: www.example.test:8080\n"), "{body}");
    let (status, body) = get_host(&server, "shop.example.test");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("app=beta\n"), "{body}");
    let (status, body) = get_host(&server, "a.b.example.test");
    assert_eq!(status, 404, "a wildcard covers one label: {body}");
    let (status, body) = get_host(&server, "example.test");
    assert_eq!(status, 404, "a wildcard does not cover its parent: {body}");

    // A domain belongs to one app: the refusal names the owner, and changes nothing.
    let out = server.cli(&dir, &["domains:add", "www.example.test", "-a", "beta"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("www.example.test is already in use by the app alpha"),
        "{}",
        text(&out)
    );
    let (status, _, body) = server.api(
        "POST",
        "/apps/beta/domains",
        Some(r#"{"hostname":"www.example.test"}"#),
    );
    assert_eq!(status, 409, "{body}");
    assert!(get_host(&server, "www.example.test")
        .1
        .starts_with("app=alpha\n"));

    // Names that are not host names, or under the server's own domain, are refused.
    for (bad, why) in [
        ("localhost", "two or more labels"),
        ("a.*.example.test", "wildcard"),
        ("x.localhost", "under this server's own domain"),
        ("127.0.0.1", "IP address"),
    ] {
        let out = server.cli(&dir, &["domains:add", bad, "-a", "alpha"]);
        assert!(!out.status.success(), "{bad}: {}", text(&out));
        assert!(text(&out).contains(why), "{bad}: {}", text(&out));
    }

    // The list: the app's own host name, then its custom domains.
    let listed = server.cli_ok(&dir, &["domains", "-a", "alpha"]);
    assert!(listed.contains("alpha.localhost"), "{listed}");
    assert!(listed.contains("www.example.test"), "{listed}");
    assert!(!listed.contains("*.example.test"), "{listed}");

    // Domains follow a rename (they belong to the app, not its name).
    server.cli_ok(&dir, &["apps:rename", "gamma", "-a", "alpha"]);
    assert!(get_host(&server, "www.example.test")
        .1
        .starts_with("app=alpha\n"));

    // Removed: beta's wildcard covers the name now. A destroyed app's domains go with it.
    let removed = server.cli_ok(&dir, &["domains:remove", "www.example.test", "-a", "gamma"]);
    assert!(removed.contains("Removed www.example.test"), "{removed}");
    assert!(get_host(&server, "www.example.test")
        .1
        .starts_with("app=beta\n"));
    let out = server.cli(&dir, &["domains:remove", "www.example.test", "-a", "gamma"]);
    assert!(
        text(&out).contains("www.example.test is not a domain of gamma"),
        "{}",
        text(&out)
    );
    server.cli_ok(&dir, &["apps:destroy", "-a", "beta", "--confirm", "beta"]);
    for host in ["shop.example.test", "www.example.test"] {
        let (status, body) = get_host(&server, host);
        assert_eq!(status, 404, "{host}: {body}");
    }
    server.cli_ok(&dir, &["domains:add", "*.example.test", "-a", "gamma"]);
    assert!(get_host(&server, "shop.example.test")
        .1
        .starts_with("app=alpha\n"));
}
