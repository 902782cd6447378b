//! Probes of the router's direct HTTP/1.1 path (`direct.rs`): attacks and unlucky clients
//! and dynos, through the router in-process. Each test asserts what the router does, which is
//! what the hyper path (`proxy.rs`) does unless a test says otherwise. Tests named
//! `differs_*` pin down where the direct path differs from the hyper path on purpose.
//!
//! Written in review of the direct path; it found four regressions (late bytes on a pooled
//! dyno connection served as the next answer, a request the dyno had received sent again,
//! to the same or the next dyno, and response heads over 64 KiB refused), all fixed, and a
//! client that stops reading holding its dyno for ever (on both paths; fixed here).

mod support;
use support::{router_lines, wait_for_lines, Table};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_logs::LogHub;
use slipway_router::{serve, Drains, RouterConfig, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Router {
    addr: String,
    logs: LogHub,
    table: Arc<Table>,
    drains: Drains,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn router() -> Router {
    router_with(|_| {}).await
}

async fn router_with(tweak: impl FnOnce(&mut RouterConfig)) -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let logs = LogHub::new();
    let table = Arc::new(Table::default());
    let drains = Drains::default();
    let mut cfg = RouterConfig {
        request_timeout: Duration::from_millis(500),
        boot_wait: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        drains: drains.clone(),
        ..RouterConfig::default()
    };
    tweak(&mut cfg);
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
        addr,
        logs,
        table,
        drains,
        stop: Some(tx),
        task,
    }
}

/// What a scripted dyno does for a request.
#[derive(Clone)]
enum Step {
    Write(Vec<u8>),
    Sleep(u64),
    /// Closes the connection.
    Close,
}

fn w(bytes: &[u8]) -> Step {
    Step::Write(bytes.to_vec())
}

/// A dyno on loopback that reads request heads (no bodies) and follows its script for each.
struct Dyno {
    addr: SocketAddr,
    /// Every request head it read, in order.
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
}

impl Dyno {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    fn request_lines(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_string())
            .collect()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `script(request line, n-th request on its connection)` says what to do for each request.
async fn dyno(script: impl Fn(&str, usize) -> Vec<Step> + Send + Sync + 'static) -> Dyno {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let (h, a) = (heads.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (heads, script) = (h.clone(), script.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut on_conn = 0;
                loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    heads.lock().expect("lock").push(head.clone());
                    let line = head.lines().next().unwrap_or_default().to_string();
                    for step in script(&line, on_conn) {
                        match step {
                            Step::Write(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                            Step::Close => return,
                        }
                    }
                    on_conn += 1;
                }
            });
        }
    });
    Dyno {
        addr,
        heads,
        accepted,
    }
}

/// A dyno that answers every request `200` with `body` (keep-alive).
async fn ok_dyno(body: &'static str) -> Dyno {
    dyno(move |_, _| {
        vec![w(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes())]
    })
    .await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn connect(r: &Router) -> TcpStream {
    TcpStream::connect(&r.addr).await.expect("connect")
}

/// Reads one response: its head, and its body by its framing (none for HEAD, 1xx, 204, 304;
/// Content-Length; chunked, returned still chunked; else until the connection closes).
async fn read_response(stream: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
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
            "connection closed in the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let lower = head.to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status");
    if head_request || status == 204 || status == 304 || status < 200 {
        return (head, Vec::new());
    }
    let header = |name: &str| {
        lower.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        body = vec![0u8; len.parse().expect("length")];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
            .await
            .expect("body in time")
            .expect("body");
    } else if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        // Until the last chunk and the empty line after it.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .expect("body in time")
                .expect("read");
            assert_eq!(
                n,
                1,
                "closed in a chunked body: {:?}",
                String::from_utf8_lossy(&body)
            );
            body.push(byte[0]);
            if body.ends_with(b"\r\n0\r\n\r\n") || body == b"0\r\n\r\n" {
                break;
            }
        }
    } else {
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body))
            .await
            .expect("body in time")
            .expect("body");
    }
    (head, body)
}

/// Everything the router sends on `stream` until it closes it (or 5 s pass).
async fn read_to_close(stream: &mut TcpStream) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// Sends `request` on a new connection and reads until the router closes it.
async fn raw_exchange(r: &Router, request: &[u8]) -> String {
    let mut stream = connect(r).await;
    stream.write_all(request).await.expect("write");
    let (answer, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the router did not close: {answer}");
    answer
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// Response desync through pooled dyno connections.

/// A dyno that sends bytes after a response's end, a moment later (a body to a HEAD, a 204 or
/// a 304, more than its Content-Length, something after a chunked body's end): the
/// connection is not fit for another request. The hyper client saw the bytes arrive while
/// idle and dropped the connection; the next request, another client's, must get its own
/// answer, never the stray bytes parsed as one.
#[tokio::test]
async fn late_bytes_after_a_response_are_never_served_to_the_next_request() {
    let forged: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1\r\n\r\nforged";
    let cases: [(&str, &str, &[u8]); 5] = [
        (
            "head",
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
        ),
        (
            "extra",
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ),
        ("nocontent", "GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (
            "notmodified",
            "GET",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n",
        ),
        (
            "chunked",
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let r = router().await;
    let mut failures = Vec::new();
    for (app, method, first) in cases {
        let d = dyno(move |line, _| {
            if line.contains("/first") {
                vec![w(first), Step::Sleep(50), w(forged)]
            } else {
                vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")]
            }
        })
        .await;
        r.table.set(app, up(&[d.addr]));
        let host = format!("{app}.localhost");
        let mut a = connect(&r).await;
        a.write_all(format!("{method} /first HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (head, _) = read_response(&mut a, method == "HEAD").await;
        assert!(head.starts_with("HTTP/1.1 "), "{app}: {head}");
        // The stray bytes reach the router's idle dyno connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another client.
        let mut b = connect(&r).await;
        b.write_all(&get("/second", &host)).await.expect("write");
        let (head, body) = read_response(&mut b, false).await;
        if body != b"real" || head.contains("X-Forged") {
            failures.push(format!(
                "{app}: the second client got {head:?} {:?} (dyno connections: {}, requests: {:?})",
                String::from_utf8_lossy(&body),
                d.accepted(),
                d.request_lines()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A pooled connection on which the dyno got a request and closed without answering (it
/// crashed on it, or its server killed a worker that took too long): the router must not
/// send the request again. The hyper client gave such a request back only if none of it had
/// been written; it answered 503 (H13) otherwise.
#[tokio::test]
async fn a_request_a_dyno_received_is_not_sent_again_when_it_closes_without_answering() {
    let r = router().await;
    let d = dyno(|line, on_conn| {
        if line.contains("/crash") && on_conn > 0 {
            // A request that takes the worker down, after a while.
            vec![Step::Sleep(100), Step::Close]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
        }
    })
    .await;
    r.table.set("crash", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/warm", "crash.localhost"))
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(&get("/crash", "crash.localhost"))
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, false).await;
    let crashes = d
        .request_lines()
        .iter()
        .filter(|l| l.contains("/crash"))
        .count();
    assert_eq!(
        crashes,
        1,
        "the dyno got /crash {crashes} times (answer: {head:?}, connections: {})",
        d.accepted()
    );
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let lines = wait_for_lines(&r.logs, "crash", 2).await;
    assert!(lines[1].contains("code=H13"), "{lines:?}");
}

/// The same with two dynos, where the crash takes the whole first dyno down: the request
/// must not go on to the next dyno (a "query of death" would take every dyno down in turn).
#[tokio::test]
async fn a_request_that_took_a_dyno_down_does_not_go_on_to_the_next_dyno() {
    use std::sync::atomic::AtomicBool;
    let r = router().await;
    // web.1: answers /warm, and on /crash closes the connection and stops listening.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let first = listener.local_addr().expect("addr");
    let crashed = Arc::new(AtomicBool::new(false));
    let crashed_too = crashed.clone();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if find(&seen, b"/crash").is_some() {
                crashed_too.store(true, Ordering::SeqCst);
                return;
            }
            if find(&seen, b"\r\n\r\n").is_some() {
                seen.clear();
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    });
    let second = ok_dyno("second").await;
    r.table.set("qod", up(&[first]));
    let mut c = connect(&r).await;
    c.write_all(&get("/warm", "qod.localhost"))
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Both dynos now. Round robin: the second request starts at index 1, web.1 here.
    r.table.set("qod", up(&[second.addr, first]));
    c.write_all(&get("/crash", "qod.localhost"))
        .await
        .expect("write");
    let (head, body) = read_response(&mut c, false).await;
    assert!(crashed.load(Ordering::SeqCst), "web.1 was not tried first");
    let lines = second.request_lines();
    assert!(
        lines.is_empty(),
        "web.2 got {lines:?} after web.1 went down on /crash; the client got {head:?} {:?}",
        String::from_utf8_lossy(&body)
    );
}

// ---------------------------------------------------------------------------------------
// Clients.

/// A client that stops reading a large response: once the idle window passes with nothing
/// moving, the router should give up (H15 or H27), so the dyno's in-flight count (what a
/// drain waits for) and its connection are released. Fails on main too (hyper stops polling
/// the body, so `Counted`'s idle timer is never looked at); on direct-h1 the
/// `client.io.write_all` calls in `relay` have no timeout.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_the_dyno_forever() {
    let r = router().await;
    let big = 64 * 1024 * 1024;
    let d = dyno(move |_, _| {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + big, b'x');
        vec![Step::Write(answer)]
    })
    .await;
    r.table.set("big", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/", "big.localhost"))
        .await
        .expect("write");
    // Never read.
    slipway_testkit::wait_until(5, "the request in flight", || async {
        (r.drains.in_flight(d.addr) == 1).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let released = tokio::time::timeout(Duration::from_secs(8), async {
        while r.drains.in_flight(d.addr) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!(
        "released: {} after {:?}; lines {:?}",
        released.is_ok(),
        started.elapsed(),
        router_lines(&r.logs, "big")
    );
    assert!(
        released.is_ok(),
        "the dyno is still in flight 8 s after the client stopped reading (idle timeout 1 s)"
    );
    drop(c);
}

/// A client that disconnects in the middle of a response body: H27, the dyno connection is
/// not reused (the rest of the body would be read as the next answer).
#[tokio::test]
async fn a_client_gone_mid_body_is_h27_and_the_dyno_connection_is_not_reused() {
    let r = router().await;
    let d = dyno(|line, _| {
        if line.contains("/cut") {
            vec![
                w(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
                Step::Sleep(300),
                w(b"HTTP/1"),
            ]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")]
        }
    })
    .await;
    r.table.set("cut", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/cut", "cut.localhost"))
        .await
        .expect("write");
    let mut some = [0u8; 16];
    let _ = c.read(&mut some).await;
    drop(c);
    let lines = wait_for_lines(&r.logs, "cut", 1).await;
    assert!(lines[0].contains("code=H27"), "{lines:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = connect(&r).await;
    c.write_all(&get("/next", "cut.localhost"))
        .await
        .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"real");
}

// ---------------------------------------------------------------------------------------
// Dyno responses.

/// A response head over the direct path's 64 KiB (big cookies, a long CSP): the hyper
/// client took heads up to about 400 KiB.
#[tokio::test]
async fn a_response_head_over_64_kib_is_passed_on() {
    let r = router().await;
    let d = dyno(|_, _| {
        let big = "a".repeat(100 * 1024);
        vec![Step::Write(
            format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok").into_bytes(),
        )]
    })
    .await;
    r.table.set("bighead", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/", "bighead.localhost"))
        .await
        .expect("write");
    let (head, body) = read_response(&mut c, false).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{:?}",
        &head[..head.len().min(200)]
    );
    assert_eq!(body, b"ok");
}

/// 100 Continue and 103 Early Hints before the answer are not passed on (nor were they by
/// the hyper client), the answer is.
#[tokio::test]
async fn informational_responses_before_the_answer() {
    let r = router().await;
    let d = dyno(|_, _| {
        vec![
            w(b"HTTP/1.1 100 Continue\r\n\r\n"),
            Step::Sleep(20),
            w(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),
            Step::Sleep(20),
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ]
    })
    .await;
    r.table.set("info", up(&[d.addr]));
    let mut c = connect(&r).await;
    for _ in 0..2 {
        c.write_all(&get("/", "info.localhost"))
            .await
            .expect("write");
        let (head, body) = read_response(&mut c, false).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"ok");
    }
}

/// 101 to a request that asked for no upgrade: the dyno is broken (H13, 503). main passed
/// the 101 on to the client (with `connection: close`): the direct path is better here.
#[tokio::test]
async fn a_101_nobody_asked_for() {
    let r = router().await;
    let d = dyno(|_, _| vec![w(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")]).await;
    r.table.set("switch", up(&[d.addr]));
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: switch.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lines = wait_for_lines(&r.logs, "switch", 1).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(lines[0].contains("code=H13"), "{lines:?}");
}

/// Framing a proxy must get right: both Transfer-Encoding and Content-Length (chunked wins,
/// the connection is not reused), conflicting lengths (refused: H13), equal duplicates.
/// main failed the first: the client got `content-length: 3` for the 5-byte chunked body.
#[tokio::test]
async fn response_framing_conflicts() {
    let r = router().await;
    let both = dyno(|line, _| {
        if line.contains("/both") {
            vec![w(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")]
        }
    })
    .await;
    r.table.set("both", up(&[both.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/both", "both.localhost"))
        .await
        .expect("write");
    let (head, body) = read_response(&mut c, false).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
            && !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert_eq!(body, b"5\r\nhello\r\n0\r\n\r\n");
    c.write_all(&get("/next", "both.localhost"))
        .await
        .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"real");
    assert_eq!(both.accepted(), 2, "a TE+CL connection was reused");

    let conflicting = dyno(|_, _| {
        vec![w(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nok",
        )]
    })
    .await;
    r.table.set("conflict", up(&[conflicting.addr]));
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: conflict.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lines = wait_for_lines(&r.logs, "conflict", 1).await;
    assert!(lines[0].contains("code=H13"), "{lines:?}");

    let equal = dyno(|_, _| {
        vec![w(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    r.table.set("equal", up(&[equal.addr]));
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: equal.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}

/// A Content-Length that lists the same length twice (RFC 9110 8.6) is that length.
#[tokio::test]
async fn a_content_length_list_of_equal_values_is_one_length() {
    let r = router().await;
    let d = dyno(|_, _| vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok")]).await;
    r.table.set("list", up(&[d.addr]));
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: list.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}

/// A malformed chunked body: the client's connection is cut (it must not see anything
/// after the bad framing as another response), H18 logged, the dyno connection not reused.
#[tokio::test]
async fn malformed_chunked_bodies_cut_the_connection() {
    let r = router().await;
    let cases: [(&str, &[u8]); 4] = [
        (
            "toolong",
            b"5\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
        ),
        ("barelf", b"5\nhello\r\n0\r\n\r\n"),
        ("badsize", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("nul", b"5;a=\0\r\nhello\r\n0\r\n\r\n"),
    ];
    for (app, body) in cases {
        let d = dyno(move |_, _| {
            let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            answer.extend_from_slice(body);
            vec![Step::Write(answer)]
        })
        .await;
        r.table.set(app, up(&[d.addr]));
        let mut c = connect(&r).await;
        // A second request pipelined: it must not be answered on a cut connection.
        c.write_all(
            &[
                get("/", &format!("{app}.localhost")),
                get("/2", &format!("{app}.localhost")),
            ]
            .concat(),
        )
        .await
        .expect("write");
        let (answer, closed) = read_to_close(&mut c).await;
        assert!(closed, "{app}: not closed: {answer:?}");
        assert!(!answer.contains("forged"), "{app}: {answer:?}");
        // main sent nothing for some (hyper holds the head until the first body bytes).
        assert!(answer.matches("HTTP/1.1").count() <= 1, "{app}: {answer:?}");
        let lines = wait_for_lines(&r.logs, app, 1).await;
        assert!(lines[0].contains("code=H18"), "{app}: {lines:?}");
    }
}

/// Bytes after the last chunk, in the same packet: not passed on, connection not reused.
#[tokio::test]
async fn bytes_after_the_last_chunk_are_dropped() {
    let r = router().await;
    let d = dyno(|line, _| {
        if line.contains("/first") {
            vec![w(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            )]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")]
        }
    })
    .await;
    r.table.set("after", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/first", "after.localhost"))
        .await
        .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"2\r\nok\r\n0\r\n\r\n");
    c.write_all(&get("/second", "after.localhost"))
        .await
        .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"real");
}

/// A HEAD answer with its body in the same packet, a 204 with one: the client gets the head
/// alone and its connection stays good; the dyno's is not reused.
#[tokio::test]
async fn bodies_where_none_belong_in_the_same_packet() {
    let r = router().await;
    let d = dyno(|line, _| {
        if line.starts_with("HEAD") {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")]
        } else if line.contains("/nc") {
            vec![w(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            )]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")]
        }
    })
    .await;
    r.table.set("nobody", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(b"HEAD / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, true).await;
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5"),
        "{head}"
    );
    c.write_all(&get("/nc", "nobody.localhost"))
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, false).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    c.write_all(&get("/x", "nobody.localhost"))
        .await
        .expect("write");
    let (head, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"real", "{head}");
    assert_eq!(d.accepted(), 3);
}

/// Response header values with bytes that are not ASCII, and a reason phrase: passed on
/// as they are (hyper passed obs-text on too).
#[tokio::test]
async fn non_ascii_response_header_values_pass() {
    let r = router().await;
    let d = dyno(|_, _| {
        vec![w(
            b"HTTP/1.1 200 Fine\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    r.table.set("latin", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/", "latin.localhost"))
        .await
        .expect("write");
    let mut buf = vec![0u8; 512];
    let mut got = Vec::new();
    while find(&got, b"\r\n\r\nok").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        find(&got, b"X-Name: caf\xe9\r\n").is_some()
            || find(&got, b"x-name: caf\xe9\r\n").is_some()
    );
}

/// H12: the dyno answers too late. The client gets 503 and its connection stays good; the
/// late answer is never read as the next request's.
#[tokio::test]
async fn h12_leaves_the_client_connection_clean() {
    let r = router().await;
    let d = dyno(|line, _| {
        if line.contains("/slow") {
            vec![
                Step::Sleep(800),
                w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"),
            ]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")]
        }
    })
    .await;
    r.table.set("slow", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/slow", "slow.localhost"))
        .await
        .expect("write");
    let (head, _) = read_response(&mut c, false).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(r.drains.in_flight(d.addr), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.write_all(&get("/fast", "slow.localhost"))
        .await
        .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"fast");
    let lines = wait_for_lines(&r.logs, "slow", 2).await;
    assert!(lines[0].contains("code=H12"), "{lines:?}");
}

/// Every dyno refuses the connection: the request goes to hyper, which answers as it always
/// has; one router line, not two.
#[tokio::test]
async fn every_dyno_refusing() {
    let r = router().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    r.table.set("refuse", up(&[closed]));
    let answer = raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: refuse.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lines = wait_for_lines(&r.logs, "refuse", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines2 = router_lines(&r.logs, "refuse");
    assert_eq!(lines2.len(), 1, "{lines2:?}");
    assert!(lines[0].contains("code=H13"), "{lines:?}");
    assert_eq!(r.drains.in_flight(closed), 0);
}

// ---------------------------------------------------------------------------------------
// Requests: what reaches the dyno.

/// The headers the dyno gets from the direct path are the hyper path's: the router's own
/// replace the client's, hop-by-hop ones go.
#[tokio::test]
async fn forwarded_headers_replace_the_clients() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("hdrs", up(&[d.addr]));
    let answer = raw_exchange(
        &r,
        b"GET /p?q=1 HTTP/1.1\r\nHost: hdrs.localhost:8080\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nVia: 1.1 evil\r\nX-Request-Start: 0\r\nX-Request-Id: abcdefghij0123456789abcd\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nConnection: keep-alive, close\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = d.heads()[0].to_ascii_lowercase();
    let values = |name: &str| -> Vec<String> {
        head.lines()
            .filter_map(|l| {
                l.strip_prefix(&format!("{name}:"))
                    .map(|v| v.trim().to_string())
            })
            .collect()
    };
    assert!(head.starts_with("get /p?q=1 http/1.1\r\n"), "{head}");
    assert_eq!(values("host"), ["hdrs.localhost:8080"], "{head}");
    assert_eq!(values("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"], "{head}");
    assert_eq!(values("x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(values("x-forwarded-port").len(), 1, "{head}");
    assert_ne!(values("x-forwarded-port"), ["1"], "{head}");
    assert_eq!(values("via"), ["1.1 slipway"], "{head}");
    assert_eq!(values("x-request-start").len(), 1, "{head}");
    assert_ne!(values("x-request-start"), ["0"], "{head}");
    assert_eq!(
        values("x-request-id"),
        ["abcdefghij0123456789abcd"],
        "{head}"
    );
    for gone in ["keep-alive", "te", "proxy-authorization", "connection"] {
        assert!(values(gone).is_empty(), "{gone}: {head}");
    }
    assert_eq!(values("x-kept"), ["yes"], "{head}");
    let lines = wait_for_lines(&r.logs, "hdrs", 1).await;
    assert!(
        lines[0].contains("host=hdrs.localhost ") && lines[0].contains("path=\"/p?q=1\""),
        "{lines:?}"
    );
}

/// Several X-Request-Id headers, the first not one Heroku keeps: hyper looked at the first
/// only (and made a new id); the direct path keeps the first valid one.
#[tokio::test]
async fn differs_the_first_valid_request_id_of_several_is_kept() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("rid", up(&[d.addr]));
    raw_exchange(
        &r,
        b"GET / HTTP/1.1\r\nHost: rid.localhost\r\nX-Request-Id: bad id\r\nX-Request-Id: abcdefghij0123456789abcd\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = d.heads()[0].to_ascii_lowercase();
    // main: a new uuid. direct: the second header's value.
    assert!(
        head.contains("x-request-id: abcdefghij0123456789abcd\r\n"),
        "{head}"
    );
}

/// Request targets with bytes that are not ASCII (hyper passed them on too) and with a
/// fragment (`http::Uri` cut it: main sent `GET /a`): the direct path sends both to the dyno
/// as the client wrote them.
#[tokio::test]
async fn differs_request_targets_hyper_refused_or_trimmed_reach_the_dyno_as_sent() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("uri", up(&[d.addr]));
    let answer = raw_exchange(
        &r,
        "GET /caf\u{e9}/\u{2028} HTTP/1.1\r\nHost: uri.localhost\r\nConnection: close\r\n\r\n"
            .as_bytes(),
    )
    .await;
    let first = answer.lines().next().unwrap_or_default().to_string();
    let answer = raw_exchange(
        &r,
        b"GET /a#frag HTTP/1.1\r\nHost: uri.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let second = answer.lines().next().unwrap_or_default().to_string();
    let seen = d.request_lines();
    eprintln!("answers {first:?} {second:?}; the dyno saw {seen:?}");
    // main: the same first line, `GET /a HTTP/1.1` for the second.
    assert_eq!(
        seen,
        ["GET /caf\u{e9}/\u{2028} HTTP/1.1", "GET /a#frag HTTP/1.1"]
    );
    let lines = wait_for_lines(&r.logs, "uri", 2).await;
    for line in &lines {
        // One line each, whatever the path holds.
        assert_eq!(line.lines().count(), 1, "{line:?}");
    }
}

/// Attempts to make the router and the dyno disagree on where requests end. Each sends a
/// request with a second one hidden where a lenient parser might see it; the dyno must never
/// get `/smuggled` as a request of its own.
#[tokio::test]
async fn request_smuggling_attempts() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("smug", up(&[d.addr]));
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: smug.localhost\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "two lengths",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "length with spaces",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nContent-Length : {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "obs-fold",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nX-A: b\r\n Content-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "nul",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nX-A: \0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "bare cr",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nX-A: b\rContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "te in a list",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nTransfer-Encoding: identity, chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len()),
        ),
        (
            "content-length plus",
            format!("GET /a HTTP/1.1\r\nHost: smug.localhost\r\nContent-Length: +{}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "zero then body",
            "GET /a HTTP/1.1\r\nHost: smug.localhost\r\nContent-Length: 00\r\n\r\n".to_string(),
        ),
    ];
    let mut report = Vec::new();
    for (name, request) in cases {
        let before = d.request_lines().len();
        let mut c = connect(&r).await;
        c.write_all(request.as_bytes()).await.expect("write");
        let (answer, _) = read_to_close(&mut c).await;
        let seen: Vec<String> = d.request_lines()[before..].to_vec();
        report.push(format!(
            "{name}: {:?} -> dyno {seen:?}",
            answer.lines().next().unwrap_or_default()
        ));
        assert!(
            !seen.iter().any(|l| l.contains("/smuggled")),
            "{name}: the dyno got {seen:?}"
        );
    }
    eprintln!("{report:#?}");
}

/// Request heads the direct path leaves to hyper (uppercase Host, absolute form, OPTIONS *,
/// HTTP/1.0, an upgrade, Expect) and those it takes (Host with a port or a final dot, bare
/// LF line ends, leading empty lines): all answered, with the same headers for the dyno.
#[tokio::test]
async fn request_forms() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("forms", up(&[d.addr]));
    let cases: [&[u8]; 9] = [
        b"GET /upper HTTP/1.1\r\nHost: FORMS.localhost\r\nConnection: close\r\n\r\n",
        b"GET /port HTTP/1.1\r\nHost: forms.localhost:8080\r\nConnection: close\r\n\r\n",
        b"GET /dot HTTP/1.1\r\nHost: forms.localhost.\r\nConnection: close\r\n\r\n",
        b"GET http://forms.localhost/absolute HTTP/1.1\r\nHost: forms.localhost\r\nConnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: forms.localhost\r\nConnection: close\r\n\r\n",
        b"GET /one-oh HTTP/1.0\r\nHost: forms.localhost\r\n\r\n",
        b"GET /lf HTTP/1.1\nHost: forms.localhost\nConnection: close\n\n",
        b"\r\nGET /leading HTTP/1.1\r\nHost: forms.localhost\r\nConnection: close\r\n\r\n",
        b"GET /expect HTTP/1.1\r\nHost: forms.localhost\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let answer = raw_exchange(&r, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    }
    let heads = d.heads();
    assert_eq!(heads.len(), cases.len(), "{heads:#?}");
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        for name in [
            "x-forwarded-for:",
            "x-forwarded-proto:",
            "x-forwarded-port:",
            "x-request-id:",
            "x-request-start:",
            "via:",
        ] {
            assert_eq!(lower.matches(name).count(), 1, "{name} in {head}");
        }
        assert!(lower.contains(" http/1.1\r\n"), "{head}");
    }
    let targets: Vec<String> = d.request_lines();
    assert!(
        targets.contains(&"GET /absolute HTTP/1.1".to_string()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"OPTIONS * HTTP/1.1".to_string()),
        "{targets:?}"
    );
}

/// Pipelined requests mixing the direct path and hyper: answered in order; after one with
/// `Connection: close` nothing more is answered and the dyno sees nothing more.
#[tokio::test]
async fn pipelines_mixing_the_paths() {
    let r = router().await;
    let d = dyno(|line, _| {
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
        vec![Step::Write(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                path.len()
            )
            .into_bytes(),
        )]
    })
    .await;
    r.table.set("pipe", up(&[d.addr]));
    let mut c = connect(&r).await;
    let h = "Host: pipe.localhost\r\n";
    c.write_all(
        format!(
            "GET /1 HTTP/1.1\r\n{h}\r\nHEAD /2 HTTP/1.1\r\n{h}\r\nGET /3 HTTP/1.1\r\n{h}Connection: close\r\n\r\nGET /4 HTTP/1.1\r\n{h}\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let (_, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"/1");
    let (head, _) = read_response(&mut c, true).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = read_response(&mut c, false).await;
    assert_eq!(body, b"/3");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (rest, closed) = read_to_close(&mut c).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        d.request_lines(),
        ["GET /1 HTTP/1.1", "HEAD /2 HTTP/1.1", "GET /3 HTTP/1.1"]
    );

    // Direct, then an upgrade request (hyper), then direct again, in one write.
    let mut c = connect(&r).await;
    c.write_all(
        format!(
            "GET /5 HTTP/1.1\r\n{h}\r\nGET /6 HTTP/1.1\r\n{h}Connection: upgrade\r\nUpgrade: nothing\r\n\r\nGET /7 HTTP/1.1\r\n{h}\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    for want in ["/5", "/6", "/7"] {
        let (head, body) = read_response(&mut c, false).await;
        assert_eq!(String::from_utf8_lossy(&body), want, "{head}");
    }
}

/// A client that pipelines a great many requests without reading the answers: the router
/// reads ahead only so far (its buffers stay bounded) and answers every request in order
/// once the client reads.
#[tokio::test]
async fn a_client_pipelining_without_reading() {
    let r = router().await;
    let d = dyno(|_, _| {
        let body = "x".repeat(4096);
        vec![Step::Write(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )]
    })
    .await;
    r.table.set("flood", up(&[d.addr]));
    let c = connect(&r).await;
    let (mut rd, mut wr) = c.into_split();
    let one = get("/", "flood.localhost");
    let n = 3000;
    let writer = tokio::spawn(async move {
        let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        wr.write_all(&all).await.expect("write");
        wr
    });
    // Let the router fill every buffer between it and the client.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen_stalled = d.heads().len();
    assert!(
        seen_stalled < n,
        "the router read everything ahead: {seen_stalled}"
    );
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    while got < n {
        let read = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(read > 0, "closed after {got} answers");
        carry.extend_from_slice(&buf[..read]);
        got += carry
            .windows(15)
            .filter(|w| w == b"HTTP/1.1 200 OK")
            .count();
        // The last 14 bytes hold no whole status line, only maybe the start of one.
        let keep = carry.len().saturating_sub(14);
        carry.drain(..keep);
    }
    let _ = writer.await;
    eprintln!("the dyno had seen {seen_stalled} of {n} while the client did not read");
}

// ---------------------------------------------------------------------------------------
// Connections, shutdown.

/// Graceful shutdown: a request in flight on the direct path finishes; an idle kept-alive
/// connection is closed; the server returns.
#[tokio::test]
async fn graceful_shutdown_with_a_request_in_flight() {
    let mut r = router().await;
    let d = dyno(|line, _| {
        if line.contains("/slow") {
            vec![
                Step::Sleep(300),
                w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"),
            ]
        } else {
            vec![w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
        }
    })
    .await;
    r.table.set("shut", up(&[d.addr]));
    let mut idle = connect(&r).await;
    idle.write_all(&get("/", "shut.localhost"))
        .await
        .expect("write");
    read_response(&mut idle, false).await;
    let mut busy = connect(&r).await;
    busy.write_all(&get("/slow", "shut.localhost"))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = r.stop.take().expect("stop").send(());
    let (head, body) = read_response(&mut busy, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"done");
    let (rest, closed) = read_to_close(&mut idle).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    let (rest, closed) = read_to_close(&mut busy).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    let ended = tokio::time::timeout(Duration::from_secs(3), &mut r.task).await;
    assert!(ended.is_ok(), "the server did not return");
}

/// A kept-alive client connection idle for longer than the header read timeout is closed
/// (hyper's header timer also ran from the end of the previous response).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("idle", up(&[d.addr]));
    let mut c = connect(&r).await;
    c.write_all(&get("/", "idle.localhost"))
        .await
        .expect("write");
    read_response(&mut c, false).await;
    let started = std::time::Instant::now();
    let (rest, closed) = read_to_close(&mut c).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// A head that never ends (a slowloris, or one over the size limit): cut off or refused.
#[tokio::test]
async fn heads_that_never_end_or_are_too_large() {
    let r = router().await;
    let d = ok_dyno("ok").await;
    r.table.set("big", up(&[d.addr]));
    let mut slow = connect(&r).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: big.localhost\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let (rest, closed) = read_to_close(&mut slow).await;
    assert!(closed, "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A 200 KiB header: 431 from hyper.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: big.localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let mut c = connect(&r).await;
    let _ = c.write_all(big.as_bytes()).await;
    let (answer, _) = read_to_close(&mut c).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(100)]
    );
    assert!(d.heads().is_empty());
}

/// Up web dynos `web.1`, `web.2`... at `addrs`.
fn up(addrs: &[SocketAddr]) -> Target {
    Target::Up(
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("web.{}", i + 1), *a))
            .collect(),
    )
}
