//! HTTPS through the real binary (issue 12): `slipway server --tls-listen`, certificates from
//! `certs:add` chosen by SNI, h2 and http/1.1 by ALPN, `X-Forwarded-Proto: https`, refused
//! certificate/key pairs, keys kept root-only and never shown, removal, and the per-app
//! HTTP -> HTTPS redirect. Certificates come from a test CA made with rcgen; the client is
//! rustls trusting only that CA.

// Not every test file uses every helper the shared support module re-exports.
#[allow(unused_imports)]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use support::{deploy_echo, http, text, Server};

/// A test CA and the certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Files of one certificate: its chain and key (PEM), and its DER to recognise it.
struct Leaf {
    chain: PathBuf,
    key: PathBuf,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    /// A certificate for `domains`, written as `<dir>/<name>.crt` and `<name>.key`.
    fn leaf(&self, dir: &Path, name: &str, domains: &[&str]) -> Leaf {
        let names: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let issuer: &Issuer<'_, KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).expect("sign");
        let chain = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&chain, format!("{}{}", cert.pem(), self.issuer.pem())).expect("chain");
        std::fs::write(&key_file, key.serialize_pem()).expect("key");
        Leaf {
            chain,
            key: key_file,
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// What one HTTPS request got.
#[derive(Debug)]
struct Fetched {
    alpn: Option<Vec<u8>>,
    certificate: CertificateDer<'static>,
    status: u16,
    version: hyper::Version,
    body: String,
}

/// Runs `exchange` on a runtime of its own, for at most 60 s.
fn block_on_60s<T>(
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 60 s".into()))
    })
}

/// A TLS connection to 127.0.0.1:`port` with SNI `host`, offering `alpn`, trusting only `ca`.
/// `Err` says where it failed: "connect: ..." or "handshake: ...".
async fn tls_connect(
    port: u16,
    host: &str,
    alpn: &[&[u8]],
    ca: &Ca,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).expect("ca root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// `GET path` over TLS to 127.0.0.1:`port` with SNI `host`, offering `alpn`, trusting only
/// `ca`; h2 or HTTP/1.1 as negotiated. `Err` says where it failed (e.g. the handshake).
fn https_get(
    port: u16,
    host: &str,
    alpn: &[&[u8]],
    ca: &Ca,
    path: &str,
) -> Result<Fetched, String> {
    block_on_60s(async {
        let stream = tls_connect(port, host, alpn, ca).await?;
        let (_, session) = stream.get_ref();
        let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
        let certificate = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no certificate")?;
        let io = TokioIo::new(stream);
        let request = hyper::Request::builder()
            .uri(format!("https://{host}:{port}{path}"))
            .header("host", format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = if negotiated.as_deref() == Some(b"h2") {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            // h2 carries the host in :authority.
            let (mut parts, body) = request.into_parts();
            parts.headers.remove("host");
            sender
                .send_request(hyper::Request::from_parts(parts, body))
                .await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            let (mut parts, body) = request.into_parts();
            parts.uri = path.parse().expect("path");
            sender
                .send_request(hyper::Request::from_parts(parts, body))
                .await
        };
        let response = response.map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let version = response.version();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Fetched {
            alpn: negotiated,
            certificate,
            status,
            version,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
}

/// The port of the first `https://127.0.0.1:<port>` the server printed on a line containing
/// `label` ("" for any line).
fn printed_https_port(server: &Server, label: &str) -> Option<u16> {
    server
        .stdout_lines
        .iter()
        .filter(|l| l.contains(label))
        .find_map(|l| l.split("https://127.0.0.1:").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
}

/// The HTTPS port the server printed.
fn tls_port(server: &Server) -> u16 {
    printed_https_port(server, "").expect("the HTTPS listener's port printed")
}

/// A server with an HTTPS listener (`--tls-listen` on port 0), its HTTPS port and its
/// directory (where the tests keep certificates and run the CLI).
fn tls_server() -> (Server, u16, PathBuf) {
    let server = Server::start_with(&["--tls-listen", "127.0.0.1:0"]);
    let port = tls_port(&server);
    let dir = server.root.path().to_path_buf();
    (server, port, dir)
}

/// `slipway certs:add` of `leaf`'s chain and key, for `app` or (`None`) the server's own.
fn certs_add(server: &Server, dir: &Path, leaf: &Leaf, app: Option<&str>) -> String {
    let (chain, key) = (leaf.chain.to_string_lossy(), leaf.key.to_string_lossy());
    let mut args = vec!["certs:add", &chain, &key];
    if let Some(app) = app {
        args.extend(["-a", app]);
    }
    server.cli_ok(dir, &args)
}

#[test]
fn https_serves_each_domain_its_certificate_by_sni_over_h2_and_http1() {
    let (server, port, dir) = tls_server();
    deploy_echo(&server, "alpha");
    deploy_echo(&server, "beta");
    server.cli_ok(&dir, &["domains:add", "www.alpha.test", "-a", "alpha"]);
    server.cli_ok(&dir, &["domains:add", "*.beta.test", "-a", "beta"]);

    // Before any certificate, a handshake fails (there is no default certificate).
    let ca = Ca::new();
    let refused = https_get(port, "www.alpha.test", &[b"h2"], &ca, "/");
    assert!(
        matches!(&refused, Err(e) if e.starts_with("handshake")),
        "{refused:?}"
    );

    let alpha = ca.leaf(&dir, "alpha", &["www.alpha.test"]);
    let beta = ca.leaf(&dir, "beta", &["*.beta.test"]);
    let chain = |l: &Leaf| l.chain.to_string_lossy().into_owned();
    let key = |l: &Leaf| l.key.to_string_lossy().into_owned();

    // A key of another certificate is refused, with the reason, and nothing is stored.
    let out = server.cli(
        &dir,
        &["certs:add", &chain(&alpha), &key(&beta), "-a", "alpha"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the private key does not match the certificate"),
        "{}",
        text(&out)
    );
    let out = server.cli(
        &dir,
        &["certs:add", &key(&alpha), &key(&alpha), "-a", "alpha"],
    );
    assert!(
        text(&out).contains("holds no CERTIFICATE block"),
        "{}",
        text(&out)
    );
    assert!(server
        .cli_ok(&dir, &["certs", "-a", "alpha"])
        .contains("alpha has no certificates"));

    let added = server.cli_ok(
        &dir,
        &["certs:add", &chain(&alpha), &key(&alpha), "-a", "alpha"],
    );
    assert!(added.contains("for www.alpha.test"), "{added}");
    server.cli_ok(
        &dir,
        &["certs:add", &chain(&beta), &key(&beta), "-a", "beta"],
    );

    // Each name gets its own certificate; h2 when offered, http/1.1 otherwise.
    let got = https_get(
        port,
        "www.alpha.test",
        &[b"h2", b"http/1.1"],
        &ca,
        "/secure?x=1",
    )
    .expect("HTTPS to www.alpha.test");
    assert_eq!(
        got.certificate, alpha.der,
        "www.alpha.test got another certificate"
    );
    assert_eq!(got.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(got.version, hyper::Version::HTTP_2);
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.starts_with("app=alpha\n"), "{}", got.body);
    assert!(got.body.contains("path=/secure?x=1\n"), "{}", got.body);
    assert!(
        got.body.contains("x-forwarded-proto: https\n"),
        "{}",
        got.body
    );
    assert!(
        got.body.contains(&format!("x-forwarded-port: {port}\n")),
        "{}",
        got.body
    );
    let got = https_get(port, "shop.beta.test", &[b"http/1.1"], &ca, "/")
        .expect("HTTPS to shop.beta.test");
    assert_eq!(
        got.certificate, beta.der,
        "shop.beta.test got another certificate"
    );
    assert_eq!(got.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(got.version, hyper::Version::HTTP_11);
    assert!(got.body.starts_with("app=beta\n"), "{}", got.body);
    assert!(
        got.body.contains("x-forwarded-proto: https\n"),
        "{}",
        got.body
    );
    // The app's own host name has no certificate: no handshake.
    let none = https_get(port, "alpha.localhost", &[b"h2"], &ca, "/");
    assert!(
        matches!(&none, Err(e) if e.starts_with("handshake")),
        "{none:?}"
    );

    // certs:info shows the domains, issuer and expiry; keys are root-only files, never shown.
    let info = server.cli_ok(&dir, &["certs:info", "-a", "alpha"]);
    assert!(info.contains("Domains:    www.alpha.test"), "{info}");
    assert!(info.contains("Expires at:"), "{info}");
    assert!(
        info.contains("Covers the app's domains: www.alpha.test"),
        "{info}"
    );
    let (_, _, listed) = server.api("GET", "/apps/alpha/sni-endpoints", None);
    assert!(listed.contains("www.alpha.test"), "{listed}");
    assert!(!listed.contains("PRIVATE KEY"), "{listed}");
    let keys: Vec<PathBuf> = std::fs::read_dir(server.data.join("certs"))
        .expect("certs dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for path in &keys {
        let mode = std::fs::metadata(path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let mode = std::fs::metadata(server.data.join("certs"))
        .expect("certs dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(keys
        .iter()
        .any(|k| std::fs::read_to_string(k).expect("key") == alpha.key_pem));

    // HTTP -> HTTPS for alpha only: 301 for GET, 308 for POST, to the HTTPS port.
    server.cli_ok(&dir, &["domains:redirect-https", "on", "-a", "alpha"]);
    let (status, headers, _) = http(
        server.router_port,
        "GET",
        "/page?q=1",
        &[("Host", "www.alpha.test")],
        None,
    );
    assert_eq!(status, 301);
    assert_eq!(
        support::header(&headers, "location"),
        Some(format!("https://www.alpha.test:{port}/page?q=1").as_str())
    );
    let (status, headers, _) = http(
        server.router_port,
        "POST",
        "/form",
        &[("Host", &format!("alpha.localhost:{}", server.router_port))],
        Some("a=1"),
    );
    assert_eq!(status, 308);
    assert_eq!(
        support::header(&headers, "location"),
        Some(format!("https://alpha.localhost:{port}/form").as_str())
    );
    let (status, body) = server.app_get("beta", "/");
    assert_eq!(status, 200, "{body}");
    // HTTPS requests themselves are served, not redirected.
    let got = https_get(port, "www.alpha.test", &[b"h2"], &ca, "/").expect("HTTPS");
    assert_eq!(got.status, 200, "{}", got.body);
    server.cli_ok(&dir, &["domains:redirect-https", "off", "-a", "alpha"]);
    assert_eq!(server.app_get("alpha", "/").0, 200);

    // Removing a certificate: its names get no handshake any more, and its key file goes.
    let removed = server.cli_ok(&dir, &["certs:remove", "-a", "alpha"]);
    assert!(removed.contains("www.alpha.test"), "{removed}");
    let gone = https_get(port, "www.alpha.test", &[b"h2"], &ca, "/");
    assert!(
        matches!(&gone, Err(e) if e.starts_with("handshake")),
        "{gone:?}"
    );
    assert_eq!(
        std::fs::read_dir(server.data.join("certs"))
            .expect("certs dir")
            .count(),
        1
    );
    assert!(https_get(port, "shop.beta.test", &[b"h2"], &ca, "/").is_ok());
}

#[test]
fn certificates_outlive_a_restart_and_the_servers_own_cover_every_app_domain() {
    let mut server = Server::start_with(&["--tls-listen", "127.0.0.1:0"]);
    let dir = server.root.path().to_path_buf();
    deploy_echo(&server, "alpha");
    server.cli_ok(&dir, &["domains:add", "www.example.test", "-a", "alpha"]);
    let ca = Ca::new();
    // The server's own wildcard (no --app), as one for every <app>.<domain> would be (rustls
    // refuses a wildcard directly under a single label such as *.localhost).
    let wild = ca.leaf(&dir, "wild", &["*.example.test"]);
    certs_add(&server, &dir, &wild, None);
    assert!(server.cli_ok(&dir, &["certs"]).contains("*.example.test"));
    assert!(server
        .cli_ok(&dir, &["certs", "-a", "alpha"])
        .contains("alpha has no certificates"));

    server.terminate();
    server.launch();
    let port = tls_port(&server);
    let got = https_get(port, "www.example.test", &[b"h2"], &ca, "/").expect("HTTPS after restart");
    assert_eq!(got.certificate, wild.der);
    assert!(got.body.starts_with("app=alpha\n"), "{}", got.body);
    // A name the certificate covers but no app has: the router answers 404.
    let got = https_get(port, "nope.example.test", &[b"h2"], &ca, "/").expect("HTTPS");
    assert_eq!(got.status, 404, "{}", got.body);
    assert!(got.body.contains("No such app"), "{}", got.body);
}

/// The API's HTTPS port the server printed.
fn api_tls_port(server: &Server) -> u16 {
    printed_https_port(server, "API listening").expect("the API's HTTPS port printed")
}

#[test]
fn the_api_and_git_are_served_over_https_with_the_servers_own_certificate() {
    let server = Server::start_with(&["--api-tls-listen", "127.0.0.1:0"]);
    let port = api_tls_port(&server);
    let dir = server.root.path().to_path_buf();
    let ca = Ca::new();
    // No certificate for the API's name yet: no handshake.
    let refused = https_get(port, "localhost", &[b"h2"], &ca, "/health");
    assert!(
        matches!(&refused, Err(e) if e.starts_with("handshake")),
        "{refused:?}"
    );

    // The server's own certificate (no --app) for the name clients use for the API.
    let leaf = ca.leaf(&dir, "api", &["localhost"]);
    certs_add(&server, &dir, &leaf, None);
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let got = https_get(port, "localhost", &[alpn], &ca, "/health").expect("HTTPS API call");
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.certificate, leaf.der);
        assert_eq!(got.alpn.as_deref(), Some(alpn));
    }

    // git push and clone over HTTPS, trusting only the test CA, with the API token.
    server.cli_ok(&dir, &["apps:create", "secure", "--no-remote"]);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.issuer.pem()).expect("ca file");
    let url = format!("https://localhost:{port}/secure.git");
    let tls_args = [
        "-c".to_string(),
        format!("http.sslCAInfo={}", ca_file.display()),
        "-c".to_string(),
        format!("http.extraHeader=Authorization: Bearer {}", server.token()),
    ];
    let with_tls = |rest: &[&str]| -> Vec<String> {
        tls_args
            .iter()
            .cloned()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let repo = server.sample_repo("secure-src");
    let push = with_tls(&["push", &url, "main"]);
    let push: Vec<&str> = push.iter().map(String::as_str).collect();
    server.git_ok(&repo, &push);
    support::wait_for(120, "the app pushed over HTTPS to serve", || {
        (server.app_get("secure", "/").0 == 200).then_some(())
    });
    let clone = with_tls(&["clone", "-q", &url, "secure-clone"]);
    let clone: Vec<&str> = clone.iter().map(String::as_str).collect();
    server.git_ok(&dir, &clone);
    assert!(dir.join("secure-clone/Procfile").is_file());

    // Without the CA, git refuses the server: the certificate is what it is checked against.
    let untrusted = server.git(&dir, &["clone", "-q", &url, "untrusted-clone"]);
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted).contains("certificate"),
        "{}",
        text(&untrusted)
    );
}

/// A WebSocket echo app in plain Python (no libraries): answers the HTTP/1.1 opening
/// handshake with 101 (and `X-Proto` = the `X-Forwarded-Proto` it saw), then echoes each
/// frame's payload prefixed with `echo:` until a close frame.
const WS_ECHO_APP: &str = r#"import base64, hashlib, os, socketserver, struct
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class H(socketserver.StreamRequestHandler):
    def handle(self):
        first = self.rfile.readline()
        headers = {}
        while True:
            line = self.rfile.readline().decode("latin-1").strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            body = b"not a websocket\n"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: " + accept + "\r\nX-Proto: " + headers.get("x-forwarded-proto", "") + "\r\n\r\n").encode())
        while True:
            h = self.rfile.read(2)
            if len(h) < 2:
                return
            op, n, masked = h[0] & 0x0F, h[1] & 0x7F, h[1] & 0x80
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if masked else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                return
            reply = b"echo:" + data
            self.wfile.write(bytes([0x80 | op, len(reply)]) + reply)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// A masked (client) WebSocket text frame, payload under 126 bytes.
fn ws_client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![
        0x81,
        0x80 | u8::try_from(payload.len()).expect("short payload"),
    ];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The payloads of the complete unmasked (server) frames at the start of `buf`, removed
/// from it.
fn ws_server_frames(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7F) {
        let n = usize::from(buf[1] & 0x7F);
        out.push(String::from_utf8_lossy(&buf[2..2 + n]).into_owned());
        buf.drain(..2 + n);
    }
    out
}

/// What an h2 WebSocket exchange got.
#[derive(Debug)]
struct H2Socket {
    connect_protocol_enabled: bool,
    status: u16,
    x_proto: Option<String>,
    echoed: Vec<String>,
}

/// Over TLS with SNI `host` (ALPN h2 only): an RFC 8441 extended CONNECT (`:protocol
/// websocket`) to `path`, then each of `messages` as a WebSocket frame, reading one echo
/// frame per message.
fn h2_websocket(
    port: u16,
    host: &str,
    ca: &Ca,
    path: &str,
    messages: &[&str],
) -> Result<H2Socket, String> {
    block_on_60s(async {
        let stream = tls_connect(port, host, &[b"h2"], ca).await?;
        let (client, conn) = h2::client::handshake(stream)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut client = client.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
        // The server's SETTINGS (SETTINGS_ENABLE_CONNECT_PROTOCOL) arrive on the connection
        // task; wait for them to be acknowledged rather than guessing a delay.
        let connect_protocol_enabled =
            slipway_testkit::wait_until(10, "the server's h2 SETTINGS", || {
                let enabled = client.is_extended_connect_protocol_enabled();
                async move {
                    tokio::task::yield_now().await;
                    enabled.then_some(true)
                }
            })
            .await;
        let request = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("https://{host}:{port}{path}"))
            .header("sec-websocket-version", "13")
            .extension(h2::ext::Protocol::from_static("websocket"))
            .body(())
            .expect("request");
        let (response, mut send) = client
            .send_request(request, false)
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let response = response.await.map_err(|e| format!("CONNECT answer: {e}"))?;
        let status = response.status().as_u16();
        let x_proto = response
            .headers()
            .get("x-proto")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut recv = response.into_body();
        let mut echoed = Vec::new();
        let mut buf = Vec::new();
        for message in messages {
            send.send_data(Bytes::from(ws_client_frame(message.as_bytes())), false)
                .map_err(|e| format!("send frame: {e}"))?;
            let before = echoed.len();
            while echoed.len() == before {
                let chunk = recv
                    .data()
                    .await
                    .ok_or("the stream ended before the echo")?
                    .map_err(|e| format!("read frame: {e}"))?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                echoed.extend(ws_server_frames(&mut buf));
            }
        }
        // Close: a close frame, then the end of our half of the stream.
        let mut close = vec![0x88, 0x80];
        close.extend_from_slice(&[0, 0, 0, 0]);
        let _ = send.send_data(Bytes::from(close), true);
        Ok(H2Socket {
            connect_protocol_enabled,
            status,
            x_proto,
            echoed,
        })
    })
}

/// An HTTP/1.1 WebSocket to the plain router port: the opening handshake for `host`, then
/// one frame and its echo. Returns the 101's head and the echoed payload.
fn h1_websocket(port: u16, host: &str, message: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("handshake");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).expect("read 101");
        assert!(
            n > 0,
            "closed before the 101: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end..].to_vec();
    stream
        .write_all(&ws_client_frame(message.as_bytes()))
        .expect("frame");
    loop {
        if let Some(echo) = ws_server_frames(&mut rest).into_iter().next() {
            return (head, echo);
        }
        let n = stream.read(&mut chunk).expect("read echo");
        assert!(n > 0, "closed before the echo");
        rest.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn websockets_echo_over_h2_extended_connect_and_http1_upgrades() {
    let (server, port, dir) = tls_server();
    let repo = server.repo_with(
        "sock-src",
        &[
            ("Procfile", "web: python3 server.py\n"),
            ("server.py", WS_ECHO_APP),
        ],
    );
    server.cli_ok(&repo, &["apps:create", "sock"]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    support::wait_for(90, "sock to serve", || {
        (server.app_get("sock", "/").0 == 200).then_some(())
    });
    server.cli_ok(&dir, &["domains:add", "ws.sock.test", "-a", "sock"]);
    let ca = Ca::new();
    let leaf = ca.leaf(&dir, "sock", &["ws.sock.test"]);
    certs_add(&server, &dir, &leaf, Some("sock"));

    // h2 (RFC 8441): the server advertises extended CONNECT, the dyno's 101 becomes 200, and
    // frames go both ways over the h2 stream.
    let got = h2_websocket(port, "ws.sock.test", &ca, "/chat", &["hello", "world"])
        .expect("WebSocket over h2");
    assert!(got.connect_protocol_enabled, "{got:?}");
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.x_proto.as_deref(), Some("https"), "{got:?}");
    assert_eq!(got.echoed, ["echo:hello", "echo:world"], "{got:?}");

    // HTTP/1.1 upgrade on the plain listener, same app.
    let (head, echo) = h1_websocket(
        server.router_port,
        &format!("sock.localhost:{}", server.router_port),
        "plain",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(
        head.contains("X-Proto: http\r\n") || head.contains("x-proto: http\r\n"),
        "{head}"
    );
    assert_eq!(echo, "echo:plain");

    // Both are router lines with the switch (101, the dyno's answer) and the client's
    // method and listener.
    support::wait_for(30, "router lines for both WebSockets", || {
        let logs = server.cli_ok(&dir, &["logs", "-a", "sock", "-n", "200"]);
        let switched = |method: &str, protocol: &str| {
            logs.lines().any(|l| {
                l.contains(&format!("method={method} path=\"/chat\""))
                    && l.contains("status=101")
                    && l.ends_with(&format!("protocol={protocol}"))
            })
        };
        (switched("CONNECT", "https") && switched("GET", "http")).then_some(())
    });
}
