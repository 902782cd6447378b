//! TLS: the certificate store (SNI, wildcards, refused pairs) and the router serving HTTPS
//! (h2 by ALPN, `X-Forwarded-Proto: https`) against a real backend on loopback, with
//! certificates made by rcgen.

mod support;
use support::Table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use slipway_logs::{Filter, LogHub};
use slipway_router::tls::{CertError, CertStore};
use slipway_router::{Router, RouterConfig, Target};
use tokio::net::{TcpListener, TcpStream};

/// A test CA and certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate's PEM chain, its key's PEM, and its DER (to recognise it in a handshake).
struct Leaf {
    chain: String,
    key: String,
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

    fn leaf(&self, domains: &[&str]) -> Leaf {
        self.leaf_with(domains, |_| {})
    }

    fn leaf_with(&self, domains: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        tweak(&mut params);
        let key = KeyPair::generate().expect("key");
        let issuer: &Issuer<'_, KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).expect("sign");
        Leaf {
            chain: format!("{}{}", cert.pem(), self.issuer.pem()),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

#[test]
fn the_store_checks_pairs_and_picks_certificates_by_sni() {
    let ca = Ca::new();
    let store = CertStore::new();
    let a = ca.leaf(&["a.example.test"]);
    let wild = ca.leaf(&["*.example.test"]);
    let info = store.add(&a.chain, &a.key).expect("a valid pair");
    assert_eq!(info.domains, ["a.example.test"]);
    assert!(info.not_after > chrono::Utc::now());
    store.add(&wild.chain, &wild.key).expect("a valid pair");

    // Exact names win over wildcards; a wildcard covers one label; nothing else matches.
    let domains_for = |sni: &str| store.lookup(Some(sni)).map(|i| i.domains);
    assert_eq!(
        domains_for("a.example.test"),
        Some(vec!["a.example.test".into()])
    );
    assert_eq!(
        domains_for("A.Example.Test."),
        Some(vec!["a.example.test".into()])
    );
    assert_eq!(
        domains_for("b.example.test"),
        Some(vec!["*.example.test".into()])
    );
    assert_eq!(domains_for("x.b.example.test"), None);
    assert_eq!(domains_for("example.test"), None);
    assert_eq!(store.lookup(None), None);
    assert_eq!(store.list().len(), 2);

    // Refused pairs say what is wrong, and change nothing.
    let b = ca.leaf(&["b.example.test"]);
    let refused = store
        .add(&a.chain, &b.key)
        .expect_err("a key of another certificate");
    assert!(matches!(refused, CertError::KeyMismatch), "{refused:?}");
    assert!(refused.to_string().contains("does not match"), "{refused}");
    let refused = store.add("not pem", &a.key).expect_err("garbage");
    assert!(matches!(refused, CertError::NoCertificate), "{refused:?}");
    let refused = store.add(&a.key, &a.key).expect_err("a key as certificate");
    assert!(matches!(refused, CertError::NoCertificate), "{refused:?}");
    let refused = store.add(&a.chain, "nope").expect_err("no key");
    assert!(matches!(refused, CertError::KeyPem(_)), "{refused:?}");
    let old = ca.leaf_with(&["b.example.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let refused = store.add(&old.chain, &old.key).expect_err("expired");
    assert!(matches!(refused, CertError::Expired { .. }), "{refused:?}");
    assert_eq!(
        domains_for("b.example.test"),
        Some(vec!["*.example.test".into()])
    );

    // Removing a domain's certificate; a default for unknown names.
    assert!(store.remove("*.example.test").is_some());
    assert_eq!(domains_for("b.example.test"), None);
    store.set_default(slipway_router::tls::Cert::from_pem(&b.chain, &b.key).expect("valid"));
    assert_eq!(domains_for("zzz.test"), Some(vec!["b.example.test".into()]));
}

/// A backend that answers the request headers it saw, one per line.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut text = String::new();
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TLS client that trusts `ca` and offers `alpn`.
fn connector(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).expect("ca root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_router_serves_https_with_sni_and_h2() {
    let ca = Ca::new();
    let store = Arc::new(CertStore::new());
    let a = ca.leaf(&["a.example.test"]);
    let wild = ca.leaf(&["*.example.test"]);
    store.add(&a.chain, &a.key).expect("a");
    store.add(&wild.chain, &wild.key).expect("wildcard");

    let table = Arc::new(Table::default());
    let dyno = backend().await;
    for app in ["a", "b"] {
        table.set(app, Target::Up(vec![("web.1".into(), dyno)]));
    }
    let logs = LogHub::new();
    let cfg = RouterConfig {
        domain: "example.test".into(),
        ..RouterConfig::default()
    };
    let router = Router::new(cfg, table, logs.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = store.server_config().expect("tls config");
    tokio::spawn(async move {
        router
            .serve_tls(listener, tls, std::future::pending())
            .await
    });

    for (app, leaf) in [("a", &a), ("b", &wild)] {
        let host = format!("{app}.example.test");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(host.clone()).expect("name");
        let stream = connector(&ca, &[b"h2", b"http/1.1"])
            .connect(name, tcp)
            .await
            .expect("handshake: the certificate must be valid for the name");
        let (_, session) = stream.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "{host}");
        let served = session.peer_certificates().expect("certificates");
        assert_eq!(served[0], leaf.der, "{host} got another certificate");

        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .uri(format!("https://{host}/secure"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        assert!(
            body.contains(&format!("x-forwarded-port: {}\n", addr.port())),
            "{body}"
        );
        let line = slipway_testkit::wait_until(5, "the router line", || async {
            logs.history(&format!("{app}-id"), &Filter::default(), 10)
                .first()
                .map(|l| l.format())
        })
        .await;
        assert!(
            line.contains(&format!("host={host}")) && line.contains("protocol=https"),
            "{line}"
        );
    }

    // http/1.1 by ALPN too; a name no certificate covers gets no handshake.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = connector(&ca, &[b"http/1.1"])
        .connect(ServerName::try_from("a.example.test").expect("name"), tcp)
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let refused = connector(&ca, &[b"h2"])
        .connect(ServerName::try_from("other.test").expect("name"), tcp)
        .await;
    assert!(refused.is_err(), "no certificate covers other.test");
}
