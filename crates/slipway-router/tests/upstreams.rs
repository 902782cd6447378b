//! The router's handling of upstream connections, against real backends on loopback:
//! WebSocket-style upgrades with the idle window, dynos that refuse connections, and
//! request header bounds.

mod support;
use support::{wait_for_lines, Table};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use slipway_logs::LogHub;
use slipway_router::{serve, RouterConfig, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Router {
    addr: SocketAddr,
    logs: LogHub,
    table: Arc<Table>,
}

/// Long enough that a busy machine answering an echo never looks idle by accident.
const IDLE: Duration = Duration::from_millis(1200);

async fn router() -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let logs = LogHub::new();
    let table = Arc::new(Table::default());
    let cfg = RouterConfig {
        request_timeout: Duration::from_secs(5),
        idle_timeout: IDLE,
        ..RouterConfig::default()
    };
    tokio::spawn(serve(
        listener,
        cfg,
        table.clone(),
        logs.clone(),
        std::future::pending(),
    ));
    Router { addr, logs, table }
}

/// A backend that answers `<name>` (and `:<body>` when the request has one) to plain
/// requests and, to `Connection: upgrade`
/// requests, switches protocols and echoes every byte back. Counts the connections it took.
async fn echo_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(name)));
                        if req.method() == hyper::Method::POST {
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let text = format!("{name}:{}", String::from_utf8_lossy(&body));
                            return Ok(hyper::Response::new(Full::new(Bytes::from(text))));
                        }
                        if req.headers().contains_key("upgrade") {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let Ok(io) = on.await else { return };
                                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
                                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            });
                            *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            let h = resp.headers_mut();
                            h.insert("connection", "upgrade".parse().expect("value"));
                            h.insert("upgrade", "websocket".parse().expect("value"));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                // Room for the router's own headers on top of the client's 100.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(200)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Reads until the end of a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed in the head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

#[tokio::test]
async fn upgrades_are_tunnelled_and_closed_after_the_idle_window() {
    let r = router().await;
    let (ws, _) = echo_backend("ws").await;
    r.table.set("chat", Target::Up(vec![("web.1".into(), ws)]));
    let mut stream = TcpStream::connect(r.addr).await.expect("connect");
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: chat.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let line = &wait_for_lines(&r.logs, "chat", 1).await[0];
    assert!(
        line.contains("at=info method=GET path=\"/socket\" host=chat.localhost"),
        "{line}"
    );
    assert!(
        line.contains("dyno=web.1") && line.contains("status=101"),
        "{line}"
    );

    // Traffic (here the client's, echoed back) keeps the tunnel open past several windows.
    let opened = Instant::now();
    let mut i = 0;
    while opened.elapsed() < IDLE * 3 {
        echo(&mut stream, format!("ping {i}").as_bytes()).await;
        tokio::time::sleep(IDLE / 4).await;
        i += 1;
    }
    // Silence closes it, about one window after the last byte.
    let quiet = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the router closes an idle tunnel")
        .unwrap_or(0);
    assert_eq!(n, 0, "the tunnel ended without data");
    assert!(
        quiet.elapsed() >= IDLE / 2,
        "closed too early: {:?}",
        quiet.elapsed()
    );
}

#[tokio::test]
async fn a_dyno_that_refuses_connections_is_skipped_and_requests_retried() {
    let r = router().await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (up, _) = echo_backend("up").await;
    r.table.set(
        "flaky",
        Target::Up(vec![("web.1".into(), closed), ("web.2".into(), up)]),
    );
    // The first request goes to web.1 first (round robin from the start): it refuses, and
    // the request, body and all, goes to web.2.
    let (status, _, body) = slipway_testkit::http_async(
        r.addr,
        "POST",
        "/",
        &[("Host", "flaky.localhost")],
        Some("payload"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "up:payload"));
    for i in 1..6 {
        let (status, _, body) =
            slipway_testkit::http_async(r.addr, "GET", "/", &[("Host", "flaky.localhost")], None)
                .await;
        assert_eq!((status, body.as_str()), (200, "up"), "request {i}");
    }
    let lines = wait_for_lines(&r.logs, "flaky", 6).await;
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for line in &lines {
        assert!(
            line.contains("at=info") && line.contains("dyno=web.2 ") && line.contains("status=200"),
            "{line}"
        );
    }

    // A WebSocket upgrade is retried the same way.
    let (ws, _) = echo_backend("ws").await;
    r.table.set(
        "flakyws",
        Target::Up(vec![("web.1".into(), closed), ("web.2".into(), ws)]),
    );
    for _ in 0..2 {
        let mut stream = TcpStream::connect(r.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: flakyws.localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        echo(&mut stream, b"hello").await;
    }
}

#[tokio::test]
async fn oversized_request_headers_get_431_and_never_reach_a_dyno() {
    let r = router().await;
    let (up, accepted) = echo_backend("up").await;
    r.table.set("big", Target::Up(vec![("web.1".into(), up)]));
    let big = "x".repeat(40 * 1024);
    let (status, _, _) = slipway_testkit::http_async(
        r.addr,
        "GET",
        "/",
        &[("Host", "big.localhost"), ("X-Big", &big)],
        None,
    )
    .await;
    assert_eq!(status, 431);
    let names: Vec<String> = (0..101).map(|i| format!("X-H{i}")).collect();
    let mut many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    many.push(("Host", "big.localhost"));
    let (status, _, _) = slipway_testkit::http_async(r.addr, "GET", "/", &many, None).await;
    assert_eq!(status, 431);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a dyno was contacted");

    // Just under the bounds is served.
    let fits = "x".repeat(30 * 1024);
    let (status, _, body) = slipway_testkit::http_async(
        r.addr,
        "GET",
        "/",
        &[("Host", "big.localhost"), ("X-Big", &fits)],
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "up"));
    let (status, _, body) = slipway_testkit::http_async(r.addr, "GET", "/", &many[2..], None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "up"),
        "{} headers",
        many[2..].len()
    );
}

#[tokio::test]
async fn dyno_connections_are_kept_alive_and_reused_across_client_connections() {
    let r = router().await;
    let (up, accepted) = echo_backend("up").await;
    r.table.set("kept", Target::Up(vec![("web.1".into(), up)]));
    // Each request on a client connection of its own, one after the other: the router's
    // connection to the dyno goes back to its pool once a response was read through.
    for i in 0..10 {
        let (status, _, body) =
            slipway_testkit::http_async(r.addr, "GET", "/", &[("Host", "kept.localhost")], None)
                .await;
        assert_eq!((status, body.as_str()), (200, "up"), "request {i}");
        wait_for_lines(&r.logs, "kept", i + 1).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one dyno connection for all"
    );
}
