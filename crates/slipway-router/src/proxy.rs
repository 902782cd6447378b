//! Forwarding one request to a dyno and back.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use slipway_logs::{logfmt_quote, LogHub, Source};

use crate::{app_from_host, Resolution, Resolver, RouterConfig, RouterError, Target};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) struct Proxy {
    cfg: RouterConfig,
    resolver: Arc<dyn Resolver>,
    logs: LogHub,
    client: Client<HttpConnector, Incoming>,
    next: AtomicUsize,
    port: u16,
}

/// Everything the router log line says about a request.
#[derive(Clone)]
struct RequestLog {
    app_id: String,
    method: String,
    path: String,
    host: String,
    request_id: String,
    fwd: String,
    start: Instant,
}

impl RequestLog {
    fn new(
        req: &Request<Incoming>,
        host: &str,
        peer: SocketAddr,
        request_id: String,
        start: Instant,
    ) -> Self {
        RequestLog {
            app_id: String::new(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            host: host.split(':').next().unwrap_or_default().to_string(),
            request_id,
            fwd: forwarded_for(req.headers(), peer),
            start,
        }
    }

    /// The request's fields for a router line. Every value came from the client, so each is
    /// quoted and escaped unless it is a plain token that cannot start another field.
    fn quoted(&self) -> String {
        format!(
            "method={} path={} host={} request_id={} fwd={}",
            token(&self.method),
            logfmt_quote(&self.path),
            token(&self.host),
            token(&self.request_id),
            logfmt_quote(&self.fwd)
        )
    }
}

/// `value` as it is when it is a plain token (letters, digits, `-._:/+`, not empty),
/// otherwise quoted and escaped.
fn token(value: &str) -> std::borrow::Cow<'_, str> {
    let plain = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/' | b'+')
        });
    if plain {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(logfmt_quote(value))
    }
}

impl Proxy {
    pub(crate) fn new(
        cfg: RouterConfig,
        resolver: Arc<dyn Resolver>,
        logs: LogHub,
        port: u16,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            cfg,
            resolver,
            logs,
            client,
            next: AtomicUsize::new(0),
            port,
        }
    }

    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(hosts) => return self.conflicting_host(&req, &hosts, peer, request_id, start),
        };
        let Some(app_name) = app_from_host(&host, &self.cfg.domain) else {
            return error_response(RouterError::NoSuchApp, &request_id);
        };
        let mut log = RequestLog::new(&req, &host, peer, request_id.clone(), start);
        let deadline = start + self.cfg.boot_wait;
        let backends = loop {
            let (app_id, target) = match self.resolver.resolve(app_name) {
                Resolution::NoSuchApp => {
                    return error_response(RouterError::NoSuchApp, &request_id)
                }
                Resolution::Found { app_id, target } => (app_id, target),
            };
            log.app_id = app_id;
            match target {
                Target::Up(backends) if !backends.is_empty() => break backends,
                Target::Up(_) | Target::Crashed => {
                    return self.fail(RouterError::AppCrashed, &log, None)
                }
                Target::NoWebDynos => return self.fail(RouterError::NoWebDynos, &log, None),
                Target::Maintenance => return self.fail(RouterError::Maintenance, &log, None),
                Target::Starting if Instant::now() >= deadline => {
                    return self.fail(RouterError::BootTimeout, &log, None)
                }
                Target::Starting => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        let (dyno, addr) = &backends[self.next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        self.forward(req, addr, dyno, log).await
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        addr: &SocketAddr,
        dyno: &str,
        log: RequestLog,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = match format!("http://{addr}{path}").parse() {
            Ok(uri) => uri,
            Err(_) => return self.fail(RouterError::ConnectionClosed, &log, Some(dyno)),
        };
        parts.uri = uri;
        let client_version = parts.version;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        if !headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&log.host) {
                headers.insert(header::HOST, v);
            }
        }
        set(headers, "x-forwarded-for", &log.fwd);
        set(headers, "x-forwarded-proto", "http");
        set(headers, "x-forwarded-port", &self.port.to_string());
        set(headers, "x-request-id", &log.request_id);
        set(
            headers,
            "x-request-start",
            &chrono::Utc::now().timestamp_millis().to_string(),
        );
        set(headers, "via", "1.1 slipway");
        let sent = Instant::now();
        let outbound = Request::from_parts(parts, body);
        let response =
            match tokio::time::timeout(self.cfg.request_timeout, self.client.request(outbound))
                .await
            {
                Err(_) => return self.fail(RouterError::RequestTimeout, &log, Some(dyno)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, dyno, "forwarding failed");
                    return self.fail(RouterError::ConnectionClosed, &log, Some(dyno));
                }
                Ok(Ok(response)) => response,
            };
        let service_ms = sent.elapsed().as_millis();
        let connect_ms = sent.duration_since(log.start).as_millis();
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client keeps its own protocol whatever the dyno answered in (an HTTP/1.0 dyno
        // must not turn the client's keep-alive HTTP/1.1 connection into a one-shot one).
        parts.version = client_version;
        let status = parts.status.as_u16();
        let logs = self.logs.clone();
        let dyno = dyno.to_string();
        let on_done = move |bytes: u64, end: BodyEnd| {
            let line = match end {
                BodyEnd::Complete => format!(
                    "at=info {} dyno={dyno} connect={connect_ms}ms service={service_ms}ms status={status} bytes={bytes} protocol=http",
                    log.quoted()
                ),
                BodyEnd::ClientGone | BodyEnd::DynoGone | BodyEnd::Idle => {
                    let error = match end {
                        BodyEnd::ClientGone => RouterError::ClientInterrupted,
                        BodyEnd::Idle => RouterError::IdleConnection,
                        _ => RouterError::ServerInterrupted,
                    };
                    format!(
                        "at=error code={} desc=\"{}\" {} dyno={dyno} connect={connect_ms}ms service={}ms status={} bytes={bytes} protocol=http",
                        error.code().unwrap_or("-"),
                        error.description(),
                        log.quoted(),
                        log.start.elapsed().as_millis(),
                        error.status().as_u16()
                    )
                }
            };
            logs.write(&log.app_id, Source::Heroku, "router", &line);
        };
        let counted = Counted {
            inner: body,
            bytes: 0,
            end: None,
            idle_timeout: self.cfg.idle_timeout,
            idle: None,
            on_done: Some(Box::new(on_done)),
        };
        Response::from_parts(parts, counted.boxed())
    }

    /// A request that names more than one host is refused (H25, 400). It is logged in an
    /// app's log only when every host it names is that same app.
    fn conflicting_host(
        &self,
        req: &Request<Incoming>,
        hosts: &[String],
        peer: SocketAddr,
        request_id: String,
        start: Instant,
    ) -> Response<ProxyBody> {
        let error = RouterError::ConflictingHost;
        let mut apps = hosts.iter().map(|h| app_from_host(h, &self.cfg.domain));
        let first = apps.next().flatten();
        let app = first.filter(|name| apps.all(|other| other == Some(*name)));
        let Some(Resolution::Found { app_id, .. }) = app.map(|name| self.resolver.resolve(name))
        else {
            return error_response(error, &request_id);
        };
        let host = hosts.first().map(String::as_str).unwrap_or_default();
        let mut log = RequestLog::new(req, host, peer, request_id, start);
        log.app_id = app_id;
        self.fail(error, &log, None)
    }

    fn fail(
        &self,
        error: RouterError,
        log: &RequestLog,
        dyno: Option<&str>,
    ) -> Response<ProxyBody> {
        let code = error.code().unwrap_or("-");
        self.logs.write(
            &log.app_id,
            Source::Heroku,
            "router",
            &format!(
                "at=error code={code} desc=\"{}\" {} dyno={} connect=0ms service={}ms status={} bytes=0 protocol=http",
                error.description(),
                log.quoted(),
                dyno.unwrap_or(""),
                log.start.elapsed().as_millis(),
                error.status().as_u16()
            ),
        );
        error_response(error, &log.request_id)
    }
}

fn error_response(error: RouterError, request_id: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(error.page()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    set(headers, "x-request-id", request_id);
    response
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The host a request is for, lowercased: its one `Host` header, or (HTTP/2, absolute-form)
/// its URI's authority. Several `Host` headers, or a `Host` that differs from the URI's
/// authority, make the request ambiguous: `Err` with every host it names.
fn request_host(req: &Request<Incoming>) -> Result<String, Vec<String>> {
    let mut hosts: Vec<String> = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|h| String::from_utf8_lossy(h.as_bytes()).to_ascii_lowercase())
        .collect();
    if let Some(authority) = req.uri().authority() {
        let authority = authority.as_str().to_ascii_lowercase();
        // The same host with and without a port names one app.
        if !hosts
            .iter()
            .any(|h| without_port(h) == without_port(&authority))
        {
            hosts.push(authority);
        }
    }
    match hosts.len() {
        0 => Ok(String::new()),
        1 => Ok(hosts.remove(0)),
        _ => Err(hosts),
    }
}

fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The client's address appended to any `X-Forwarded-For` it sent.
fn forwarded_for(headers: &HeaderMap, peer: SocketAddr) -> String {
    match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() && prior.len() < 1024 => {
            format!("{}, {}", prior.trim(), peer.ip())
        }
        _ => peer.ip().to_string(),
    }
}

/// A random (v4) UUID from the thread-local generator: no system call per request.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Heroku keeps a client's request id if it is 20 to 200 characters of `[A-Za-z0-9+=/-]`.
fn valid_request_id(id: &str) -> bool {
    (20..=200).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'-'))
}

/// How a proxied response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Complete,
    /// The client went away first (H27).
    ClientGone,
    /// The dyno's side failed mid-body (H18).
    DynoGone,
    /// The dyno sent nothing for the idle timeout (H15).
    Idle,
}

/// A response body that counts the bytes it passes on and, when it is finished or dropped,
/// reports the total and how it ended, for the router log line.
struct Counted {
    inner: Incoming,
    bytes: u64,
    end: Option<BodyEnd>,
    /// Heroku's rolling window: every frame from the dyno restarts it.
    idle_timeout: std::time::Duration,
    /// Made on the first wait only: most small responses arrive in one piece and never need it.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    on_done: Option<Box<dyn FnOnce(u64, BodyEnd) + Send + Sync>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                // Restart the window: it is made again at the next wait.
                self.idle = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.end = Some(BodyEnd::DynoGone);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.end = Some(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = self.idle_timeout;
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.end = Some(BodyEnd::Idle);
                        Poll::Ready(Some(Err(
                            "the dyno sent nothing for the idle timeout".into()
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // hyper stops polling once a body with a known length is fully read, so "the dyno
        // sent everything" also counts as complete.
        let end = match self.end {
            Some(end) => end,
            None if self.inner.is_end_stream() => BodyEnd::Complete,
            None => BodyEnd::ClientGone,
        };
        if let Some(done) = self.on_done.take() {
            done(self.bytes, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_valid() {
        assert!(valid_request_id("abcdefghij0123456789"));
        assert!(!valid_request_id("short"));
        assert!(!valid_request_id("abcdefghij0123456789 with space"));
        assert!(!valid_request_id(&"a".repeat(201)));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
