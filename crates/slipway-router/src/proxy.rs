//! Forwarding one request to a dyno and back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use slipway_logs::{logfmt_quote, Batcher, LogHub, Source};

use crate::body::{BodyEnd, BoxError, Counted};
use crate::drain::InFlight;
use crate::pool::{ConnectError, Lent, Pool};
use crate::rotation::Rotation;
use crate::{
    app_from_host, bare_host, tunnel, Resolution, Resolver, RouterConfig, RouterError, Target,
};

pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

const HOP_COUNT: usize = 8;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1). Names, not
/// strings: removing by a string would parse it again for every request.
pub(crate) const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The router's request handling for one worker: shared state (routes, rotation, logs) and
/// the worker's own pool of dyno connections.
pub(crate) struct Proxy {
    pub(crate) cfg: RouterConfig,
    resolver: Arc<dyn Resolver>,
    logs: LogHub,
    /// This worker's router lines, handed to `logs` in batches.
    pub(crate) lines: Batcher,
    pool: Arc<Pool>,
    /// This worker's dyno connections for the direct path (`direct.rs`).
    pub(crate) direct: crate::direct::Pool,
    pub(crate) rotation: Arc<Rotation>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");

/// The request headers the router sets itself, whatever the client sent.
pub(crate) const SET_BY_THE_ROUTER: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    X_REQUEST_ID,
    X_REQUEST_START,
    header::VIA,
];

/// Everything the router log line says about a request.
#[derive(Clone)]
struct RequestLog {
    app_id: String,
    method: Method,
    /// The request target (path and query), as the client sent it.
    uri: Uri,
    host: String,
    request_id: String,
    /// `X-Forwarded-For` as the dyno gets it.
    fwd: HeaderValue,
    start: Instant,
    via: Via,
}

/// The listener a request came in on.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    /// The client's IP address as text, made once per connection (formatting an address
    /// costs more than the rest of a request's `X-Forwarded-For`).
    pub(crate) peer_ip: HeaderValue,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The port the client connected to.
    pub(crate) port: u16,
}

/// What a request's host names: an app under the router's domain, or a custom domain.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HostKey<'a> {
    App(&'a str),
    Domain(&'a str),
}

/// When the router reached the dyno and how long the dyno took to answer.
#[derive(Debug, Clone, Copy)]
struct Timing {
    connect_ms: u128,
    service_ms: u128,
}

/// A request a dyno answered: its timing, and its place in the dyno's in-flight count (held
/// until the response body reached the client, or the upgraded connection closed).
struct Answered {
    timing: Timing,
    in_flight: InFlight,
}

/// How one attempt to send a request to a dyno failed.
enum Sent {
    /// No connection: nothing of the request was sent, another dyno may take it (here it is).
    Refused(BoxError, Box<Request<Incoming>>),
    /// The connection broke after the request (or part of it) went out.
    Failed(BoxError),
}

/// Room for an `at=info` router line besides its path (a uuid request id, an IPv6 `fwd`).
const LINE_CAPACITY: usize = 320;

/// How long the router waits for a dyno to accept a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RequestLog {
    fn new(
        req: &Request<Incoming>,
        host: &str,
        via: Via,
        request_id: String,
        start: Instant,
    ) -> Self {
        RequestLog {
            app_id: String::new(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: host.split(':').next().unwrap_or_default().to_string(),
            request_id,
            fwd: forwarded_for(req.headers(), &via.peer_ip),
            start,
            via,
        }
    }

    /// The request's fields for a router line.
    fn quoted(&self) -> Fields<'_> {
        Fields {
            method: self.method.as_str(),
            path: self.path(),
            host: &self.host,
            request_id: &self.request_id,
            fwd: self.fwd.to_str().unwrap_or_default(),
        }
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

/// What a router line says about the request (`method=... fwd=...`), written straight into
/// the line. Every value came from the client, so each is quoted and escaped unless it is a
/// plain token that cannot start another field.
pub(crate) struct Fields<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// Without its port.
    pub(crate) host: &'a str,
    pub(crate) request_id: &'a str,
    /// `X-Forwarded-For` as the dyno gets it.
    pub(crate) fwd: &'a str,
}

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Piece by piece: one line per request, and the formatting machinery's arguments
        // cost more than the copying.
        f.write_str("method=")?;
        f.write_str(&token(self.method))?;
        f.write_str(" path=")?;
        write_quoted(f, self.path)?;
        f.write_str(" host=")?;
        f.write_str(&token(self.host))?;
        f.write_str(" request_id=")?;
        f.write_str(&token(self.request_id))?;
        f.write_str(" fwd=")?;
        write_quoted(f, self.fwd)
    }
}

/// [`logfmt_quote`]`(value)`, without building it when nothing in `value` needs escaping
/// (then it is `value` between double quotes).
fn write_quoted(f: &mut std::fmt::Formatter<'_>, value: &str) -> std::fmt::Result {
    let plain = value
        .chars()
        .all(|c| !matches!(c, '"' | '\\' | '\u{2028}' | '\u{2029}') && !c.is_control());
    if plain {
        f.write_str("\"")?;
        f.write_str(value)?;
        f.write_str("\"")
    } else {
        f.write_str(&logfmt_quote(value))
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
    pub(crate) fn new(cfg: RouterConfig, resolver: Arc<dyn Resolver>, logs: LogHub) -> Self {
        let rotation = Arc::new(Rotation::new(cfg.out_of_rotation));
        Self {
            cfg,
            resolver,
            lines: logs.batcher(),
            logs,
            pool: Arc::default(),
            direct: Default::default(),
            rotation,
        }
    }

    /// The same router for another worker: shared routes, rotation and logs, its own pool
    /// of dyno connections (driven on that worker's runtime).
    pub(crate) fn worker(&self) -> Self {
        let mut cfg = self.cfg.clone();
        // Its in-flight counts in a slot of its own: no lock shared with other workers.
        cfg.drains = cfg.drains.worker();
        Self {
            cfg,
            resolver: self.resolver.clone(),
            logs: self.logs.clone(),
            lines: self.logs.batcher(),
            pool: Arc::default(),
            direct: Default::default(),
            rotation: Arc::new(self.rotation.worker()),
        }
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>, via: Via) -> Response<ProxyBody> {
        let start = Instant::now();
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(hosts) => return self.conflicting_host(&req, &hosts, via, request_id, start),
        };
        // `<app>.<domain>`, else one of an app's custom domains.
        let key = match app_from_host(&host, &self.cfg.domain) {
            Some(app_name) => HostKey::App(app_name),
            None if host.is_empty() => return error_response(RouterError::NoSuchApp, &request_id),
            None => HostKey::Domain(bare_host(&host)),
        };
        let mut log = RequestLog::new(&req, &host, via, request_id.clone(), start);
        if self.cfg.header_limits.exceeded_by(req.headers()) {
            // hyper refuses most of these itself (HTTP/1.1); this catches HTTP/2's.
            return match self.lookup(key) {
                Resolution::Found { app_id, .. } => {
                    log.app_id = app_id;
                    self.fail(RouterError::HeadersTooLarge, &log, None)
                }
                Resolution::NoSuchApp => error_response(RouterError::HeadersTooLarge, &request_id),
            };
        }
        let deadline = start + self.cfg.boot_wait;
        let backends = loop {
            let (app_id, target) = match self.lookup(key) {
                Resolution::NoSuchApp => {
                    return error_response(RouterError::NoSuchApp, &request_id)
                }
                Resolution::Found { app_id, target } => (app_id, target),
            };
            log.app_id = app_id;
            if let Some(location) = self.https_location(&req, &host, &log) {
                return self.redirect(&req, location, &log);
            }
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
        self.forward(req, key, backends, log).await
    }

    pub(crate) fn lookup(&self, key: HostKey<'_>) -> Resolution {
        match key {
            HostKey::App(name) => self.resolver.resolve(name),
            HostKey::Domain(host) => self.resolver.resolve_domain(host),
        }
    }

    /// Whether `app_id`'s requests that came in on `scheme` are redirected to HTTPS.
    pub(crate) fn redirects_to_https(&self, app_id: &str, scheme: &str) -> bool {
        self.cfg.https_port.is_some()
            && scheme == "http"
            && self.resolver.redirects_to_https(app_id)
    }

    /// Where a plain-HTTP request goes instead when its app redirects to HTTPS and the
    /// router has an HTTPS listener: the same host and path on that listener.
    fn https_location(
        &self,
        req: &Request<Incoming>,
        host: &str,
        log: &RequestLog,
    ) -> Option<HeaderValue> {
        let port = self.cfg.https_port?;
        if !self.redirects_to_https(&log.app_id, log.via.scheme) {
            return None;
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = bare_host(host);
        let location = if port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        };
        HeaderValue::from_str(&location).ok()
    }

    /// 301 to `location` (308 for methods other than GET and HEAD, so the method and body
    /// are kept), logged as a router line; no dyno sees the request.
    fn redirect(
        &self,
        req: &Request<Incoming>,
        location: HeaderValue,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let status = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        self.lines.write(
            log.app_id.clone(),
            Source::Heroku,
            "router",
            format!(
                "at=info {} dyno= connect=0ms service={}ms status={} bytes=0 protocol={} redirect=https",
                log.quoted(),
                log.start.elapsed().as_millis(),
                status.as_u16(),
                log.via.scheme
            ),
        );
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, location);
        set(headers, X_REQUEST_ID, &log.request_id);
        response
    }

    /// Sends the request to the app's dynos in rotation order until one takes the
    /// connection: a dyno that refuses it (so no byte of the request was sent) is taken out
    /// of rotation for a while and the next one is tried.
    ///
    /// When every dyno refused, the app is resolved once more: its route may have moved to a
    /// new release meanwhile (an old dyno drained and stopped between this request's resolve
    /// and its connect), and nothing of the request was sent yet.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        key: HostKey<'_>,
        mut backends: Vec<(String, SocketAddr)>,
        log: RequestLog,
    ) -> Response<ProxyBody> {
        let h2_websocket = tunnel::is_h2_websocket(&req);
        let upgrade = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else {
            upgrade_protocol(&req)
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let client_version = req.version();
        if h2_websocket {
            let (mut parts, body) = req.into_parts();
            tunnel::h2_websocket_to_h1(&mut parts.method, &mut parts.headers);
            req = Request::from_parts(parts, body);
        }
        // Dynos get origin-form targets (`/path?query`), whatever form the client used.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(
                req.uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // Room for the headers added below at once (a new connection's map is small).
        headers.reserve(8);
        if !headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&log.host) {
                headers.insert(header::HOST, v);
            }
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        headers.insert(X_FORWARDED_FOR, log.fwd.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(log.via.scheme));
        headers.insert(X_FORWARDED_PORT, HeaderValue::from(log.via.port));
        set(headers, X_REQUEST_ID, &log.request_id);
        headers.insert(
            X_REQUEST_START,
            HeaderValue::from(chrono::Utc::now().timestamp_millis()),
        );
        headers.insert(header::VIA, HeaderValue::from_static("1.1 slipway"));

        let sent = Instant::now();
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        let mut outbound = Some(req);
        let mut last_dyno: Option<&str> = None;
        let mut resolved_again = false;
        loop {
            for i in self.rotation.order(&backends, sent) {
                let (dyno, addr) = &backends[i];
                last_dyno = Some(dyno);
                let Some(this) = outbound.take() else { break };
                // Counted until the response body reached the client (or the tunnel closed).
                let in_flight = self.cfg.drains.begin(*addr);
                let sending = self.send(this, *addr, upgrade.is_some());
                let (response, lent) = match tokio::time::timeout_at(deadline, sending).await {
                    Err(_) => return self.fail(RouterError::RequestTimeout, &log, Some(dyno)),
                    Ok(Err(Sent::Refused(e, back))) => {
                        tracing::info!(error = %e, dyno, %addr, "dyno refused the connection: out of rotation");
                        self.rotation.refused(*addr, Instant::now());
                        outbound = Some(*back);
                        continue;
                    }
                    Ok(Err(Sent::Failed(e))) => {
                        tracing::debug!(error = %e, dyno, "forwarding failed");
                        return self.fail(RouterError::ConnectionClosed, &log, Some(dyno));
                    }
                    Ok(Ok(answer)) => answer,
                };
                self.rotation.accepted(*addr);
                let timing = Timing {
                    connect_ms: sent.duration_since(log.start).as_millis(),
                    service_ms: sent.elapsed().as_millis(),
                };
                return match client_upgrade {
                    Some(client_upgrade)
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        self.upgraded(
                            response,
                            client_upgrade,
                            client_version,
                            dyno,
                            log,
                            Answered { timing, in_flight },
                        )
                    }
                    _ => self.respond(
                        response,
                        lent,
                        client_version,
                        dyno,
                        log,
                        Answered { timing, in_flight },
                    ),
                };
            }
            if resolved_again || outbound.is_none() {
                break;
            }
            resolved_again = true;
            match self.lookup(key) {
                Resolution::Found {
                    target: Target::Up(fresh),
                    ..
                } if !fresh.is_empty() && fresh != backends => backends = fresh,
                _ => break,
            }
            last_dyno = None;
        }
        let last_dyno = last_dyno.map(str::to_string);
        self.fail(RouterError::ConnectionClosed, &log, last_dyno.as_deref())
    }

    /// One attempt to send a request to a dyno: on a pooled keep-alive connection of this
    /// worker's, or (`upgrade`) on a connection of its own that never goes back to the pool.
    /// The answer comes with the connection to put back once its body was read through.
    async fn send(
        &self,
        req: Request<Incoming>,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Lent>), Sent> {
        if upgrade {
            return self.send_upgrade(req, addr).await.map(|r| (r, None));
        }
        let mut req = req;
        loop {
            let mut conn = match self.pool.checkout(addr, CONNECT_TIMEOUT).await {
                Ok(conn) => conn,
                Err(ConnectError::Refused(e)) => return Err(Sent::Refused(e, Box::new(req))),
                Err(ConnectError::Failed(e)) => return Err(Sent::Failed(e)),
            };
            match conn.sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Some(conn.lend()))),
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection the dyno closed before the request went out:
                    // nothing was sent, so the request goes on another connection.
                    Some(back) if conn.reused => req = back,
                    _ => return Err(Sent::Failed(e.into_error().into())),
                },
            }
        }
    }

    /// An upgraded connection is the client's alone: never from or back to the pool.
    async fn send_upgrade(
        &self,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Result<Response<Incoming>, Sent> {
        let stream = match crate::pool::dial(addr, CONNECT_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => return Err(Sent::Refused(e, Box::new(req))),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Sent::Failed(e.into()))?;
        let span = tracing::debug_span!("dyno-conn", %addr);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "dyno connection ended with an error");
                }
            },
            span,
        ));
        sender
            .send_request(req)
            .await
            .map_err(|e| Sent::Failed(e.into()))
    }

    /// The dyno's response on its way to the client, logged when its body is done.
    fn respond(
        &self,
        response: Response<Incoming>,
        lent: Option<Lent>,
        client_version: http::Version,
        dyno: &str,
        log: RequestLog,
        answered: Answered,
    ) -> Response<ProxyBody> {
        let Answered { timing, in_flight } = answered;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client keeps its own protocol whatever the dyno answered in (an HTTP/1.0 dyno
        // must not turn the client's keep-alive HTTP/1.1 connection into a one-shot one).
        parts.version = client_version;
        let status = parts.status.as_u16();
        let lines = self.lines.clone();
        let dyno = dyno.to_string();
        let protocol = log.via.scheme;
        let Timing {
            connect_ms,
            service_ms,
        } = timing;
        let on_done = move |bytes: u64, end: BodyEnd| {
            drop(in_flight);
            // Only a response read to its end leaves the connection ready for the next one.
            if let (BodyEnd::Complete, Some(lent)) = (end, lent) {
                lent.put_back();
            }
            let line = match end {
                BodyEnd::Complete => info_line(
                    log.quoted(),
                    &dyno,
                    connect_ms,
                    service_ms,
                    status,
                    bytes,
                    protocol,
                ),
                BodyEnd::ClientGone | BodyEnd::DynoGone | BodyEnd::Idle => {
                    let error = match end {
                        BodyEnd::ClientGone => RouterError::ClientInterrupted,
                        BodyEnd::Idle => RouterError::IdleConnection,
                        _ => RouterError::ServerInterrupted,
                    };
                    let service_ms = log.start.elapsed().as_millis();
                    let at = (connect_ms, service_ms, bytes);
                    error_line(error, log.quoted(), &dyno, at, protocol)
                }
            };
            lines.write(log.app_id, Source::Heroku, "router", line);
        };
        let counted = Counted::new(body, self.cfg.idle_timeout, on_done);
        Response::from_parts(parts, counted.boxed())
    }

    /// The dyno agreed to switch protocols (a WebSocket): the 101 goes to the client, and a
    /// tunnel joins the two connections once both sides have switched.
    fn upgraded(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: OnUpgrade,
        client_version: http::Version,
        dyno: &str,
        log: RequestLog,
        answered: Answered,
    ) -> Response<ProxyBody> {
        let Answered { timing, in_flight } = answered;
        let dyno_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        parts.version = client_version;
        if client_version == http::Version::HTTP_2 {
            tunnel::h1_switch_to_h2_answer(&mut parts);
        }
        let span = tracing::debug_span!("upgraded", app = %log.app_id, dyno);
        let idle_timeout = self.cfg.idle_timeout;
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tunnel::run(client_upgrade, dyno_upgrade, idle_timeout).await;
                drop(in_flight);
            },
            span,
        ));
        self.lines.write(
            log.app_id.clone(),
            Source::Heroku,
            "router",
            format!(
                "at=info {} dyno={dyno} connect={}ms service={}ms status=101 bytes=0 protocol={}",
                log.quoted(),
                timing.connect_ms,
                timing.service_ms,
                log.via.scheme
            ),
        );
        Response::from_parts(parts, empty())
    }

    /// A request that names more than one host is refused (H25, 400). It is logged in an
    /// app's log only when every host it names is that same app.
    fn conflicting_host(
        &self,
        req: &Request<Incoming>,
        hosts: &[String],
        via: Via,
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
        let mut log = RequestLog::new(req, host, via, request_id, start);
        log.app_id = app_id;
        self.fail(error, &log, None)
    }

    fn fail(
        &self,
        error: RouterError,
        log: &RequestLog,
        dyno: Option<&str>,
    ) -> Response<ProxyBody> {
        let at = (0, log.start.elapsed().as_millis(), 0);
        self.lines.write(
            log.app_id.clone(),
            Source::Heroku,
            "router",
            error_line(error, log.quoted(), dyno.unwrap_or(""), at, log.via.scheme),
        );
        error_response(error, &log.request_id)
    }
}

/// An `at=info` router line: the dyno answered and its response reached the client.
pub(crate) fn info_line(
    fields: Fields<'_>,
    dyno: &str,
    connect_ms: u128,
    service_ms: u128,
    status: u16,
    bytes: u64,
    protocol: &str,
) -> String {
    use std::fmt::Write;
    // Sized for the whole line at once: no regrowing (and copying) on the way.
    let mut line = String::with_capacity(LINE_CAPACITY + fields.path.len());
    let _ = write!(
        line,
        "at=info {fields} dyno={dyno} connect={connect_ms}ms service={service_ms}ms status={status} bytes={bytes} protocol={protocol}"
    );
    line
}

/// An `at=error` router line for `error`; `at` is (connect ms, service ms, response bytes
/// sent).
pub(crate) fn error_line(
    error: RouterError,
    fields: Fields<'_>,
    dyno: &str,
    at: (u128, u128, u64),
    protocol: &str,
) -> String {
    let (connect_ms, service_ms, bytes) = at;
    format!(
        "at=error code={} desc=\"{}\" {fields} dyno={dyno} connect={connect_ms}ms service={service_ms}ms status={} bytes={bytes} protocol={protocol}",
        error.code().unwrap_or("-"),
        error.description(),
        error.status().as_u16()
    )
}

fn error_response(error: RouterError, request_id: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(error.page()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    for (name, value) in crate::errors::PAGE_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    set(headers, X_REQUEST_ID, request_id);
    response
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` and an
/// `Upgrade` header), if it does.
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        // The message's own names that a token matches (names are lowercase, tokens any
        // case): the usual `close` matches none and costs no parsing.
        let mut named: Vec<HeaderName> = Vec::new();
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            // Keep-Alive is hop-by-hop anyway (removed below).
            if token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if let Some(name) = headers
                .keys()
                .find(|name| name.as_str().eq_ignore_ascii_case(token))
            {
                named.push(name.clone());
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    // Most messages have none or one of them: find which by one look at the names (cheap
    // comparisons of known headers) rather than hashing each of them for a removal.
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// The host a request is for, lowercased: its one `Host` header, or (HTTP/2, absolute-form)
/// its URI's authority. Several `Host` headers, or a `Host` that differs from the URI's
/// authority, make the request ambiguous: `Err` with every host it names.
fn request_host(req: &Request<Incoming>) -> Result<String, Vec<String>> {
    // The usual request: one Host header and an origin-form target.
    if req.uri().authority().is_none() {
        let mut all = req.headers().get_all(header::HOST).iter();
        if let (Some(host), None) = (all.next(), all.next()) {
            return Ok(String::from_utf8_lossy(host.as_bytes()).to_ascii_lowercase());
        }
    }
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
fn forwarded_for(headers: &HeaderMap, peer_ip: &HeaderValue) -> HeaderValue {
    let prior = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
    let ip = peer_ip.to_str().unwrap_or_default();
    // Visible ASCII (what `to_str` let through), trimmed, then an address: valid.
    prior
        .and_then(|prior| extended_forwarded_for(prior, ip))
        .and_then(|fwd| HeaderValue::from_str(&fwd).ok())
        .unwrap_or_else(|| peer_ip.clone())
}

/// The client's `X-Forwarded-For` (visible ASCII) with its address `ip` appended, when it
/// sent one worth keeping (not blank, under 1 KiB); `None` for `ip` alone.
pub(crate) fn extended_forwarded_for(prior: &str, ip: &str) -> Option<String> {
    let prior = prior.trim();
    (!prior.is_empty() && prior.len() < 1024).then(|| format!("{prior}, {ip}"))
}

/// The client's IP address as a header value, for [`Via::peer_ip`].
pub(crate) fn peer_ip(peer: SocketAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A random (v4) UUID from the thread-local generator: no system call per request.
pub(crate) fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Heroku keeps a client's request id if it is 20 to 200 characters of `[A-Za-z0-9+=/-]`.
pub(crate) fn valid_request_id(id: &str) -> bool {
    (20..=200).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'-'))
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
    fn quoted_values_are_written_as_logfmt_quote_makes_them() {
        struct Written<'a>(&'a str);
        impl std::fmt::Display for Written<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write_quoted(f, self.0)
            }
        }
        for value in [
            "/",
            "/a?b=c&d",
            "",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "new\nline",
            "\u{1}",
            "line\u{2028}sep",
            "caf\u{e9}",
            "1.2.3.4, 5.6.7.8",
        ] {
            assert_eq!(Written(value).to_string(), logfmt_quote(value), "{value:?}");
        }
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

        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Keep-Alive, X-Hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }
}
