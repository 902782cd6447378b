//! Test support shared by the workspace's tests.
//!
//! - [`wait_for`] / [`wait_until`]: poll for an event (never a fixed sleep to order events),
//!   failing with what was awaited when it does not come.
//! - [`http`] / [`http_async`]: one raw HTTP/1.0 request on a fresh connection, so tests check
//!   the bytes on the wire rather than what a client library makes of them.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the waiters look again.
const POLL: Duration = Duration::from_millis(20);

/// Waits for `check` to return `Some`, up to `secs`; panics naming `what` otherwise.
pub fn wait_for<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The async form of [`wait_for`]: `check` is awaited each time.
pub async fn wait_until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A raw HTTP response: status (0 when the connection failed or the answer was not HTTP),
/// headers with lowercased names, and the body as text.
pub type Response = (u16, Vec<(String, String)>, String);

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// Splits a raw answer into status, headers and body.
pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, Vec::new(), text);
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// One HTTP/1.0 request to `127.0.0.1:port`, read to the end of the connection.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    http_to(
        SocketAddr::from(([127, 0, 0, 1], port)),
        method,
        path,
        headers,
        body,
    )
}

/// [`http`] to any address.
pub fn http_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, Vec::new(), String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    if stream
        .write_all(&request_bytes(method, path, headers, body))
        .is_err()
    {
        return (0, Vec::new(), String::new());
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

/// The async form of [`http_to`], for tests inside a tokio runtime.
pub async fn http_async(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, Vec::new(), String::new());
    };
    if stream
        .write_all(&request_bytes(method, path, headers, body))
        .await
        .is_err()
    {
        return (0, Vec::new(), String::new());
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

/// A header's value from a [`Response`]'s headers (`name` lowercase).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The lines a child process writes, as they come.
pub fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let (status, headers, body) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nContent-Type: text/plain\r\n\r\nnope",
        );
        assert_eq!(status, 404);
        assert_eq!(header(&headers, "x-a"), Some("1"));
        assert_eq!(header(&headers, "content-type"), Some("text/plain"));
        assert_eq!(body, "nope");
        assert_eq!(parse_response(b"garbage").0, 0);
    }

    #[test]
    fn wait_for_returns_the_value_once_it_comes() {
        let mut n = 0;
        let v = wait_for(5, "the third call", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for something that never comes")]
    fn wait_for_fails_naming_what_it_waited_for() {
        wait_for(0, "something that never comes", || None::<()>);
    }
}
