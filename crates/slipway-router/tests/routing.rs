//! The router against real HTTP backends on loopback.

mod support;
use support::{router_lines, wait_for_lines, Table};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_logs::LogHub;
use slipway_router::{serve, RouterConfig, Target};
use tokio::net::TcpListener;

/// A backend that answers `<name>` plus the request headers it saw.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let mut text = format!("{name}\n");
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Router {
    url: String,
    logs: LogHub,
    table: Arc<Table>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn router() -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let logs = LogHub::new();
    let table = Arc::new(Table::default());
    let cfg = RouterConfig {
        request_timeout: Duration::from_millis(500),
        boot_wait: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        ..RouterConfig::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        cfg,
        table.clone(),
        logs.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Router {
        url,
        logs,
        table,
        stop: Some(tx),
        task,
    }
}

async fn get(
    r: &Router,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{}{path}", r.url)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.expect("body"), headers)
}

#[tokio::test]
async fn routes_by_host_with_forwarding_headers_and_logs_each_request() {
    let r = router().await;
    let one = backend("one").await;
    r.table
        .set("hello", Target::Up(vec![("web.1".into(), one)]));
    let client_id = "client-supplied-id-0123456789";
    let (status, body, headers) = get(
        &r,
        "hello.localhost:1234",
        "/path?q=1",
        &[("x-request-id", client_id)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.starts_with("one\n"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"));
    assert!(body.contains(&format!("x-request-id: {client_id}")));
    assert!(body.contains("x-request-start: "));
    assert!(body.contains("via: 1.1 slipway"));
    assert!(body.contains("host: hello.localhost:1234"));
    assert!(headers.get("connection").is_none() || headers.get("keep-alive").is_none());
    let lines = wait_for_lines(&r.logs, "hello", 1).await;
    let line = &lines[0];
    assert!(
        line.contains(
            " heroku[router]: at=info method=GET path=\"/path?q=1\" host=hello.localhost"
        ),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "request_id={client_id} fwd=\"127.0.0.1\" dyno=web.1"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("status=200 bytes={} protocol=http", body.len())),
        "{line}"
    );
}

#[tokio::test]
async fn balances_round_robin() {
    let r = router().await;
    let (a, b) = (backend("a").await, backend("b").await);
    r.table.set(
        "two",
        Target::Up(vec![("web.1".into(), a), ("web.2".into(), b)]),
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (_, body, _) = get(&r, "two.localhost", "/", &[]).await;
        seen.push(body.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2, "{seen:?}");
}

#[tokio::test]
async fn errors_get_heroku_codes_pages_and_log_lines() {
    let r = router().await;
    let (status, body, _) = get(&r, "nope.localhost", "/", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("No such app"));

    let cases = [
        (
            "idle",
            Target::NoWebDynos,
            "H14",
            "No web processes running",
        ),
        ("dead", Target::Crashed, "H10", "App crashed"),
        ("maint", Target::Maintenance, "H80", "Maintenance mode"),
        ("boot", Target::Starting, "H20", "App boot timeout"),
    ];
    for (app, target, code, desc) in cases {
        r.table.set(app, target);
        let (status, body, headers) = get(&r, &format!("{app}.localhost"), "/", &[]).await;
        assert_eq!(status, 503, "{app}");
        assert!(body.contains("<html>"), "{body}");
        assert!(headers.get("x-request-id").is_some());
        let line = &wait_for_lines(&r.logs, app, 1).await[0];
        assert!(
            line.contains(&format!(
                "at=error code={code} desc=\"{desc}\" method=GET path=\"/\""
            )),
            "{line}"
        );
        assert!(line.contains("status=503 bytes=0"), "{line}");
    }

    let slow = backend("slow").await;
    r.table
        .set("slow", Target::Up(vec![("web.1".into(), slow)]));
    let (status, _, _) = get(&r, "slow.localhost", "/slow", &[]).await;
    assert_eq!(status, 503);
    assert!(
        wait_for_lines(&r.logs, "slow", 1).await[0].contains("code=H12 desc=\"Request timeout\"")
    );

    // A dyno whose port refuses connections.
    let closed = {
        TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr")
    };
    r.table
        .set("gone", Target::Up(vec![("web.1".into(), closed)]));
    let (status, _, _) = get(&r, "gone.localhost", "/", &[]).await;
    assert_eq!(status, 503);
    assert!(wait_for_lines(&r.logs, "gone", 1).await[0].contains("code=H13"));
}

#[tokio::test]
async fn shuts_down_when_told() {
    let mut r = router().await;
    let _ = r.stop.take().map(|tx| tx.send(()));
    tokio::time::timeout(Duration::from_secs(15), &mut r.task)
        .await
        .expect("router stops within its grace period")
        .expect("join")
        .expect("serve");
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = router().await;
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x.localhost\r\n")
        .await
        .expect("write");
    // The router closes the connection (or answers 408) once the header timeout passes.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the router kept a half-sent request open");
}

/// A backend that answers every connection with `head` and then, if `hang`, keeps the
/// connection open without sending the rest; otherwise closes it at once.
async fn raw_backend(head: &'static [u8], hang: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head).await;
                if hang {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn interrupted_responses_are_logged_as_h18_and_h27() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = router().await;

    // The dyno promises 100 bytes, sends 5 and hangs up: H18.
    let cut = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello",
        false,
    )
    .await;
    r.table.set("cut", Target::Up(vec![("web.1".into(), cut)]));
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/", r.url))
        .header("host", "cut.localhost")
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(
            resp.bytes().await.is_err(),
            "a truncated body must not look complete"
        );
    }
    let line = &wait_for_lines(&r.logs, "cut", 1).await[0];
    assert!(
        line.contains("at=error code=H18 desc=\"Server Request Interrupted\""),
        "{line}"
    );
    assert!(line.contains("status=503 bytes=5"), "{line}");

    // The client reads the headers and goes away while the dyno is still sending: H27.
    let slow = raw_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello", true).await;
    r.table
        .set("gone", Target::Up(vec![("web.1".into(), slow)]));
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gone.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(stream);
    let line = &wait_for_lines(&r.logs, "gone", 1).await[0];
    assert!(
        line.contains("at=error code=H27 desc=\"Client Request Interrupted\""),
        "{line}"
    );
    assert!(line.contains("status=499"), "{line}");

    // The dyno sends a little, then nothing for the idle window: H15, and the client is cut off.
    let stalled = raw_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello", true).await;
    r.table
        .set("stalled", Target::Up(vec![("web.1".into(), stalled)]));
    let resp = client
        .get(format!("{}/", r.url))
        .header("host", "stalled.localhost")
        .send()
        .await
        .expect("headers");
    assert!(
        resp.bytes().await.is_err(),
        "a stalled body must not look complete"
    );
    let line = &wait_for_lines(&r.logs, "stalled", 1).await[0];
    assert!(
        line.contains("at=error code=H15 desc=\"Idle connection\""),
        "{line}"
    );
    assert!(line.contains("bytes=5"), "{line}");

    // A complete response with a known length stays at=info.
    let whole = raw_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", true).await;
    r.table
        .set("whole", Target::Up(vec![("web.1".into(), whole)]));
    let (status, body, _) = get(&r, "whole.localhost", "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let line = &wait_for_lines(&r.logs, "whole", 1).await[0];
    assert!(
        line.contains("at=info") && line.contains("status=200 bytes=5"),
        "{line}"
    );
}

/// The `key=value` fields of a router line (after `heroku[router]: `), values unquoted and
/// unescaped, in order. Panics on a line that is not well-formed logfmt.
fn fields(line: &str) -> Vec<(String, String)> {
    let (_, mut rest) = line.split_once("heroku[router]: ").expect("a router line");
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return out;
        }
        let (key, after) = rest.split_once('=').expect("key=value");
        assert!(!key.contains([' ', '"']), "bad key {key:?} in {line}");
        if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next().expect("escaped char").1 {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            out.push((key.to_string(), value));
            rest = &quoted[end..];
            assert!(
                rest.is_empty() || rest.starts_with(' '),
                "junk after {key} in {line}"
            );
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            out.push((key.to_string(), after[..end].to_string()));
            rest = &after[end..];
        }
    }
}

fn field_values<'a>(fields: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn client_supplied_values_cannot_forge_router_log_fields() {
    let r = router().await;
    let one = backend("one").await;
    r.table
        .set("hello", Target::Up(vec![("web.1".into(), one)]));
    let forged = "1.2.3.4\" at=info status=200 host=evil";
    let (status, _, _) = get(
        &r,
        "hello.localhost",
        "/a\"b?c=d%20status=302",
        &[("x-forwarded-for", forged)],
    )
    .await;
    assert_eq!(status, 200);
    let line = &wait_for_lines(&r.logs, "hello", 1).await[0];
    let f = fields(line);
    assert_eq!(field_values(&f, "at"), ["info"], "{line}");
    assert_eq!(field_values(&f, "status"), ["200"], "{line}");
    assert_eq!(field_values(&f, "host"), ["hello.localhost"], "{line}");
    assert_eq!(
        field_values(&f, "fwd"),
        [format!("{forged}, 127.0.0.1")],
        "{line}"
    );
    assert_eq!(
        field_values(&f, "path"),
        ["/a%22b?c=d%20status=302"],
        "{line}"
    );

    // The error lines too (H14 here), with a forged request id that is not kept.
    r.table.set("idle", Target::NoWebDynos);
    let (status, _, _) = get(&r, "idle.localhost", "/", &[("x-forwarded-for", forged)]).await;
    assert_eq!(status, 503);
    let line = &wait_for_lines(&r.logs, "idle", 1).await[0];
    let f = fields(line);
    assert_eq!(field_values(&f, "at"), ["error"], "{line}");
    assert_eq!(field_values(&f, "status"), ["503"], "{line}");
    assert_eq!(field_values(&f, "host"), ["idle.localhost"], "{line}");
    assert_eq!(field_values(&f, "code"), ["H14"], "{line}");
}

/// Sends `request` as is on a new connection to the router and reads until it closes.
async fn raw_exchange(r: &Router, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the router answers and closes")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn requests_naming_two_hosts_are_refused() {
    let r = router().await;
    let (a, b) = (backend("a").await, backend("b").await);
    r.table.set("appa", Target::Up(vec![("web.1".into(), a)]));
    r.table.set("appb", Target::Up(vec![("web.1".into(), b)]));

    // Two Host headers for two apps: 400, and neither app's log claims it.
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: appa.localhost\r\nHost: appb.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        !answer.contains("\na\n") && !answer.contains("\nb\n"),
        "{answer}"
    );

    // Two Host headers for the same app: 400 too, logged in that app's log as H25.
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: appa.localhost\r\nHost: appa.localhost:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let line = &wait_for_lines(&r.logs, "appa", 1).await[0];
    let f = fields(line);
    assert_eq!(field_values(&f, "code"), ["H25"], "{line}");
    assert_eq!(field_values(&f, "status"), ["400"], "{line}");

    // An absolute-form request line naming another app than Host.
    let answer = raw_exchange(
        &r,
        b"GET http://appb.localhost/ HTTP/1.1\r\nHost: appa.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(router_lines(&r.logs, "appb").is_empty());

    // One Host (and an absolute form that agrees with it) is served.
    let answer = raw_exchange(
        &r,
        b"GET http://appb.localhost/ HTTP/1.1\r\nHost: appb.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\n\r\nb\n"), "{answer}");
}

/// Reads one HTTP/1.1 response with a Content-Length from `stream`: its head and body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed in the response head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("length"))
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_http_1_0_dyno_does_not_downgrade_the_client() {
    use tokio::io::AsyncWriteExt;
    let r = router().await;
    let old = raw_backend(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).await;
    r.table.set("old", Target::Up(vec![("web.1".into(), old)]));
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    for i in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: old.localhost\r\n\r\n")
            .await
            .expect("write");
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "request {i}: {head}"
        );
        assert_eq!(body, "hello");
    }
}

/// Reads from `stream` until what was read ends with `end`.
async fn read_until(stream: &mut tokio::net::TcpStream, end: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(end) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("the rest of the response in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn paths(r: &Router, app: &str) -> Vec<String> {
    router_lines(&r.logs, app)
        .iter()
        .flat_map(|line| {
            field_values(&fields(line), "path")
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_one_with_a_body_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let r = router().await;
    let b = backend("piped").await;
    r.table.set("piped", Target::Up(vec![("web.1".into(), b)]));
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // Two requests in one write, then one with a body (a request the router's direct path
    // leaves to hyper, from there on), then one more.
    stream
        .write_all(
            b"GET /1 HTTP/1.1\r\nHost: piped.localhost\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: piped.localhost\r\n\r\n",
        )
        .await
        .expect("write");
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("piped\n"), "{body}");
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length:"),
        "{head}"
    );
    stream
        .write_all(b"POST /3 HTTP/1.1\r\nHost: piped.localhost\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("content-length: 5"), "{body}");
    stream
        .write_all(b"GET /4 HTTP/1.1\r\nHost: piped.localhost\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_for_lines(&r.logs, "piped", 4).await;
    assert_eq!(paths(&r, "piped"), ["/1", "/2", "/3", "/4"]);
}

#[tokio::test]
async fn chunked_and_close_delimited_responses_reach_the_client_whole() {
    use tokio::io::AsyncWriteExt;
    let r = router().await;
    let chunked = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
        false,
    )
    .await;
    let until_close = raw_backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", false).await;
    r.table
        .set("chunked", Target::Up(vec![("web.1".into(), chunked)]));
    r.table
        .set("eof", Target::Up(vec![("web.1".into(), until_close)]));
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    for (host, body) in [
        ("chunked", "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
        ("eof", "d\r\nuntil the end\r\n0\r\n\r\n"),
        // The connection is still good for the next one.
        ("chunked", "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
    ] {
        stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: {host}.localhost\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let answer = read_until(&mut stream, b"0\r\n\r\n").await;
        let (head, got) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert_eq!(got, body, "{host}");
    }
    let lines = wait_for_lines(&r.logs, "chunked", 2).await;
    assert!(
        lines[0].contains("at=info") && lines[0].contains("bytes=11"),
        "{}",
        lines[0]
    );
    let lines = wait_for_lines(&r.logs, "eof", 1).await;
    assert!(
        lines[0].contains("at=info") && lines[0].contains("bytes=13"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_dyno_connection_closed_while_idle_is_replaced_without_failing_the_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = router().await;
    // Answers one request per connection as if it kept it, then closes it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dyno = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    });
    r.table
        .set("closer", Target::Up(vec![("web.1".into(), dyno)]));
    for _ in 0..3 {
        let (status, body, _) = get(&r, "closer.localhost", "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    let lines = wait_for_lines(&r.logs, "closer", 3).await;
    assert!(lines.iter().all(|l| l.contains("at=info")), "{lines:?}");
}
