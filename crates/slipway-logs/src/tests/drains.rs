//! Drains against real receivers on loopback: syslog over TCP and TLS, HTTP POSTs, and a
//! receiver that accepts and never reads.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::drain::{parse_frames, DrainSpec, DrainTarget};

type Frames = Arc<StdMutex<Vec<String>>>;

fn frames_now(frames: &Frames) -> Vec<String> {
    frames.lock().expect("frames lock").clone()
}

/// Reads an octet-counted stream and collects its frames.
async fn collect_frames(mut stream: impl tokio::io::AsyncRead + Unpin, frames: Frames) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let (got, used) = parse_frames(&buf).expect("octet-counted frames");
        buf.drain(..used);
        frames.lock().expect("frames lock").extend(got);
    }
}

/// A syslog receiver over TCP: its address and the frames it got.
async fn syslog_receiver() -> (std::net::SocketAddr, Frames) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frames: Frames = Arc::default();
    let sink = frames.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(collect_frames(stream, sink.clone()));
        }
    });
    (addr, frames)
}

/// One POST as an HTTP drain receiver saw it.
#[derive(Debug, Clone)]
struct Post {
    headers: Vec<(String, String)>,
    frames: Vec<String>,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 server that answers each POST with 200 and keeps what it got.
async fn http_receiver() -> (std::net::SocketAddr, Arc<StdMutex<Vec<Post>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts: Arc<StdMutex<Vec<Post>>> = Arc::default();
    let sink = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    // Headers, then Content-Length bytes of body.
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .expect("a content-length");
                    while buf.len() < end + 4 + len {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                    let (frames, used) = parse_frames(&body).expect("octet-counted body");
                    assert_eq!(used, body.len(), "the body holds whole frames only");
                    sink.lock()
                        .expect("posts lock")
                        .push(Post { headers, frames });
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, posts)
}

fn spec(url: &str) -> DrainSpec {
    DrainSpec {
        id: uuid::Uuid::new_v4().to_string(),
        target: DrainTarget::parse(url).expect("a valid drain URL"),
        token: format!("d.{}", uuid::Uuid::new_v4()),
    }
}

/// The message part of each frame (after `- `), and checks the frame's header fields.
fn check_and_strip(frames: &[String], host: &str) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let mut parts = f.splitn(7, ' ');
            let pri = parts.next().expect("pri+version");
            let ts = parts.next().expect("timestamp");
            assert_eq!(parts.next(), Some(host), "HOST in {f}");
            let app = parts.next().expect("APP");
            let procid = parts.next().expect("PROCID");
            assert_eq!(parts.next(), Some("-"), "MSGID in {f}");
            match app {
                "app" => assert_eq!(pri, "<190>1", "{f}"),
                "heroku" => assert_eq!(pri, "<158>1", "{f}"),
                other => panic!("APP {other} in {f}"),
            }
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.len() == 32,
                "timestamp {ts} in {f}"
            );
            format!("{procid} {}", parts.next().unwrap_or(""))
        })
        .collect()
}

#[test]
fn frames_are_octet_counted_rfc5424() {
    let line = LogLine {
        seq: 7,
        time: DateTime::parse_from_rfc3339("2012-11-30T06:45:29.123456Z")
            .expect("time")
            .with_timezone(&Utc),
        source: Source::Heroku,
        dyno: "web.3".into(),
        message: "State changed from starting to up".into(),
    };
    let frame = crate::drain::frame("myapp", &line);
    assert_eq!(
        frame,
        "94 <158>1 2012-11-30T06:45:29.123456+00:00 myapp heroku web.3 - State changed from starting to up"
    );
    let two = format!("{frame}{frame}");
    let (frames, used) = parse_frames(two.as_bytes()).expect("parse");
    assert_eq!(frames.len(), 2);
    assert_eq!(used, two.len());
    // Octet counting is in bytes, not characters.
    let line = LogLine {
        message: "héllo\nworld".into(),
        ..line
    };
    let frame = crate::drain::frame("myapp", &line);
    let (frames, _) = parse_frames(frame.as_bytes()).expect("parse");
    assert!(frames[0].ends_with("héllo\nworld"));
}

#[test]
fn drain_urls_are_checked() {
    assert_eq!(
        DrainTarget::parse("syslog://logs.example.com:514").expect("syslog"),
        DrainTarget::Syslog {
            host: "logs.example.com".into(),
            port: 514,
            tls: false
        }
    );
    assert!(matches!(
        DrainTarget::parse("syslog+tls://logs.example.com:6514"),
        Ok(DrainTarget::Syslog { tls: true, .. })
    ));
    assert!(DrainTarget::parse("https://user:pw@example.com/drain").is_ok());
    assert!(DrainTarget::parse("http://127.0.0.1:9/x").is_ok());
    for bad in [
        "syslog://example.com",
        "http://example.com/x",
        "ftp://example.com:21",
        "not a url",
        &format!("https://example.com/{}", "a".repeat(3000)),
    ] {
        let err = DrainTarget::parse(bad).expect_err(bad).to_string();
        assert!(err.contains("not valid"), "{err}");
    }
    // The password never shows in descriptions.
    let target = DrainTarget::parse("https://user:s3cret@example.com/d?token=s3cret").expect("ok");
    assert!(!target.describe().contains("s3cret"));
}

#[tokio::test]
async fn syslog_drain_receives_lines_in_order() {
    let (addr, frames) = syslog_receiver().await;
    let hub = LogHub::new();
    hub.set_drain("app-id", "myapp", spec(&format!("syslog://{addr}")));
    for i in 0..300 {
        let dyno = if i % 2 == 0 { "web.1" } else { "web.2" };
        hub.write("app-id", Source::App, dyno, &format!("line {i}"));
    }
    hub.write("app-id", Source::Heroku, "router", "at=info");
    let got = slipway_testkit::wait_until(10, "301 frames at the syslog receiver", || {
        let f = frames_now(&frames);
        async move { (f.len() >= 301).then_some(f) }
    })
    .await;
    let mut want: Vec<String> = (0..300)
        .map(|i| format!("web.{} line {i}", 1 + i % 2))
        .collect();
    want.push("router at=info".into());
    assert_eq!(check_and_strip(&got, "myapp"), want);
    assert_eq!(hub.drain_stats("app-id")[0].1.delivered, 301);
}

#[tokio::test]
async fn syslog_drain_reconnects_after_the_receiver_goes_away() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hub = LogHub::new();
    hub.set_drain("a", "myapp", spec(&format!("syslog://{addr}")));
    hub.write("a", Source::App, "web.1", "first");
    // The first connection: read one frame, then hang up.
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("first"));
    drop(stream);
    let frames: Frames = Arc::default();
    let sink = frames.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(collect_frames(stream, sink.clone()));
        }
    });
    // Writes after the hang-up fail (at once or on the next write), then the drain comes back.
    let mut i = 0;
    slipway_testkit::wait_until(20, "a line after the reconnect", || {
        i += 1;
        hub.write("a", Source::App, "web.1", &format!("again {i}"));
        let f = frames_now(&frames);
        async move { f.iter().any(|f| f.contains("again")).then_some(()) }
    })
    .await;
}

async fn tls_receiver(dir: &std::path::Path) -> (std::net::SocketAddr, Frames, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frames: Frames = Arc::default();
    let sink = frames.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    collect_frames(tls, sink).await;
                }
            });
        }
    });
    (addr, frames, ca_path)
}

#[tokio::test]
async fn tls_syslog_drain_verifies_the_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (addr, frames, ca) = tls_receiver(tmp.path()).await;
    let url = format!("syslog+tls://localhost:{}", addr.port());
    // Trusting the test's CA: lines arrive.
    let hub = LogHub::open(HubConfig {
        drain_ca: Some(ca),
        ..HubConfig::default()
    })
    .expect("hub");
    hub.set_drain("a", "myapp", spec(&url));
    hub.write("a", Source::App, "web.1", "over tls");
    let got = slipway_testkit::wait_until(10, "a frame over TLS", || {
        let f = frames_now(&frames);
        async move { (!f.is_empty()).then_some(f) }
    })
    .await;
    assert_eq!(check_and_strip(&got, "myapp"), ["web.1 over tls"]);
    // Without the CA the certificate is refused and nothing is sent.
    let untrusting = LogHub::new();
    untrusting.set_drain("b", "other", spec(&url));
    untrusting.write("b", Source::App, "web.1", "must not arrive");
    hub.write("a", Source::App, "web.1", "second");
    slipway_testkit::wait_until(10, "the second frame", || {
        let f = frames_now(&frames);
        async move { (f.len() >= 2).then_some(()) }
    })
    .await;
    assert_eq!(untrusting.drain_stats("b")[0].1.delivered, 0);
    assert!(!frames_now(&frames).iter().any(|f| f.contains("must not")));
}

#[tokio::test]
async fn http_drain_posts_logplex_batches_in_order() {
    let (addr, posts) = http_receiver().await;
    let hub = LogHub::new();
    let drain = spec(&format!("http://user:p%40ss@{addr}/logs?x=1"));
    let token = drain.token.clone();
    hub.set_drain("a", "myapp", drain);
    for i in 0..1200 {
        hub.write("a", Source::App, "web.1", &format!("line {i}"));
        if i % 400 == 399 {
            // Stay within the drain's buffer: this test is about framing, not overflow.
            let want = i as u64 + 1;
            slipway_testkit::wait_until(10, "the drain to catch up", || {
                let d = hub.drain_stats("a")[0].1.delivered;
                async move { (d >= want).then_some(()) }
            })
            .await;
        }
    }
    let got = slipway_testkit::wait_until(10, "1200 lines by HTTP", || {
        let p = posts.lock().expect("posts").clone();
        async move { (p.iter().map(|p| p.frames.len()).sum::<usize>() >= 1200).then_some(p) }
    })
    .await;
    let mut all = Vec::new();
    for post in &got {
        assert_eq!(post.header("content-type"), Some("application/logplex-1"));
        assert_eq!(
            post.header("logplex-msg-count"),
            Some(post.frames.len().to_string().as_str())
        );
        assert_eq!(post.header("logplex-drain-token"), Some(token.as_str()));
        assert!(uuid::Uuid::parse_str(post.header("logplex-frame-id").unwrap_or("")).is_ok());
        assert_eq!(post.header("authorization"), Some("Basic dXNlcjpwQHNz"));
        assert!(post.frames.len() <= 500);
        all.extend(check_and_strip(&post.frames, "myapp"));
    }
    let want: Vec<String> = (0..1200).map(|i| format!("web.1 line {i}")).collect();
    assert_eq!(all, want);
    assert!(got.len() >= 3, "batched: {} posts", got.len());
}

#[tokio::test]
async fn a_stalled_drain_blocks_neither_the_app_nor_another_drain() {
    // Accepts and never reads: the kernel's buffers fill, then the drain's queue.
    let stalled = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stalled_addr = stalled.local_addr().expect("addr");
    let held = Arc::new(StdMutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = stalled.accept().await {
            keep.lock().expect("held").push(stream);
        }
    });
    let (good_addr, frames) = syslog_receiver().await;
    let hub = LogHub::new();
    hub.set_limits(
        "a",
        HistoryLimits {
            lines: 100_000,
            bytes: MAX_HISTORY_BYTES,
        },
    )
    .expect("limits");
    let stalled_spec = spec(&format!("syslog://{stalled_addr}"));
    let stalled_id = stalled_spec.id.clone();
    hub.set_drain("a", "myapp", stalled_spec);
    hub.set_drain("a", "myapp", spec(&format!("syslog://{good_addr}")));
    let payload = "x".repeat(4000);
    let started = Instant::now();
    let total = 20_000u64;
    for i in 0..total {
        hub.write("a", Source::App, "web.1", &format!("{i} {payload}"));
        if i % 500 == 499 {
            // Let the good drain keep up, so only the stalled one overflows.
            let want = i + 1;
            let good = hub
                .drain_stats("a")
                .into_iter()
                .find(|(id, _)| *id != stalled_id)
                .expect("good drain");
            let _ = good;
            slipway_testkit::wait_until(20, "the good drain to keep up", || {
                let f = frames_now(&frames)
                    .iter()
                    .filter(|f| f.contains(" app web.1 "))
                    .count() as u64;
                async move { (f >= want).then_some(()) }
            })
            .await;
        }
    }
    let writing = started.elapsed();
    let stats = hub.drain_stats("a");
    let stalled_stats = stats
        .iter()
        .find(|(id, _)| *id == stalled_id)
        .expect("stalled drain")
        .1;
    assert!(stalled_stats.dropped > 0, "{stalled_stats:?}");
    // The good drain got every app line, in order.
    let got: Vec<String> = frames_now(&frames)
        .into_iter()
        .filter(|f| f.contains(" app web.1 "))
        .collect();
    assert_eq!(got.len() as u64, total);
    for (i, f) in got.iter().enumerate() {
        assert!(
            f.contains(&format!(" - {i} x")),
            "line {i} out of order: {}",
            &f[..80]
        );
    }
    // The overflow is said in the app's stream (and so reached the good drain too).
    let reports: Vec<LogLine> = hub
        .history("a", &Filter::default(), usize::MAX)
        .into_iter()
        .filter(|l| l.dyno == "logplex")
        .collect();
    assert!(!reports.is_empty(), "no L10 line");
    assert!(reports[0]
        .message
        .starts_with("Error L10 (output buffer overflow): "));
    assert!(reports[0].message.contains(" messages dropped since "));
    assert!(
        frames_now(&frames)
            .iter()
            .any(|f| f.contains("heroku logplex - Error L10")),
        "the other drain did not get the L10 line"
    );
    assert!(
        writing < Duration::from_secs(60),
        "writing took {writing:?}"
    );
}
