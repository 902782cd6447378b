//! The direct path: the plain HTTP/1.1 requests that make most of a router's traffic (GET,
//! HEAD and OPTIONS without a body or an upgrade, for an app with an up web dyno) are proxied
//! here, on the connection's bytes, in the connection's own task: the request head is parsed
//! in place (`httparse`), written to a pooled dyno connection with the router's headers,
//! and the dyno's response head and body go back as they arrive. No request or response
//! objects, header maps, channels or tasks between the two connections: that machinery was
//! most of the router's CPU per request (docs/benchmarks.md).
//!
//! Everything else goes to hyper, through the same [`Proxy`] as before: the first request
//! this path does not take (a body, an upgrade, `Expect`, a head it cannot parse or that is
//! over the limits, an app that is not up, a redirect to HTTPS, every dyno refusing the
//! connection) is handed over with the bytes read of it ([`Rewind`]), and hyper serves the
//! connection from there. The router's behaviour is the same either way: the same headers
//! to the dyno, the same router lines, error codes, timeouts (H12 to the response head,
//! H15's idle window on the body), in-flight counts and rotation.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use http::HeaderName;
use slipway_logs::Source;
use slipway_serve::{Rewind, Stop};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pool::{dial, Idle, Reusable};
use crate::proxy::{
    error_line, extended_forwarded_for, info_line, new_request_id, valid_request_id, Fields,
    HostKey, Proxy, Via, CONNECT_TIMEOUT, HOP_BY_HOP, SET_BY_THE_ROUTER,
};
use crate::{app_from_host, bare_host, Resolution, RouterError, Target};

/// How many header fields a request or response may have here (hyper's default, and the
/// router's default bound: a request with more goes to hyper, which answers 431).
const MAX_HEADERS: usize = 100;
/// A dyno's response head may be this large: what hyper's client allows (its largest read
/// buffer). One over it fails the request (H13), as hyper's did.
const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;
/// How much is read at a time, from the client and from the dyno.
const READ_SIZE: usize = 16 * 1024;
/// A chunked body's extensions and trailers are bounded too.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// A kept-alive connection to a dyno, with its read buffer.
pub(crate) struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reusable for Upstream {
    fn is_closed(&self) -> bool {
        // An idle connection has nothing to say: its end, or any byte (a dyno that sent more
        // than its last response's framing said, which must never be read as the next
        // request's answer), and it is of no more use. Without readiness from the runtime
        // since its last read (the usual case) this is no system call at all.
        let mut byte = [0u8; 1];
        !matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// This worker's idle dyno connections for the direct path.
pub(crate) type Pool = Idle<Upstream>;

/// Serves the connection's requests until it ends (`None`) or a request needs hyper: then
/// the connection goes back with that request's bytes in front.
pub(crate) async fn serve<I>(
    proxy: &Proxy,
    via: &Via,
    mut io: I,
    mut stop: Stop,
) -> Option<Rewind<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // What the client sent while its request was being answered (the next one, pipelined).
    let mut early: Vec<u8> = Vec::new();
    let max_head = proxy.cfg.header_limits.max_bytes;
    loop {
        // A whole request head, read under the header read timeout.
        let deadline = tokio::time::Instant::now() + proxy.cfg.header_read_timeout;
        let head_len = loop {
            // The head is parsed once it is all there (its empty line came).
            match head_end(&buf) {
                Some(len) if len <= max_head => break len,
                None if buf.len() < max_head => {}
                // Over the limits: hyper answers it as it always has.
                _ => return Some(Rewind::with_prefix(io, buf)),
            }
            if buf.is_empty() && *stop.borrow() {
                return None;
            }
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(deadline, read_more(&mut io, &mut buf)) => read,
                _ = stop.wait_for(|stopped| *stopped), if buf.is_empty() => return None,
            };
            match read {
                // Closed, failed or too slow: the connection ends, as hyper ends it.
                Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
            }
        };
        // The head's fields are needed only here, to write the dyno's head into `out`: the
        // array stays on the stack rather than in this future (which moves when spawned).
        let request = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[..head_len]) {
                Ok(httparse::Status::Complete(_)) => Request::take(&req, proxy, via, &mut out),
                // Not HTTP/1: hyper answers it as it always has.
                _ => None,
            }
        };
        let Some(request) = request else {
            return Some(Rewind::with_prefix(io, buf));
        };
        let close = request.close;
        let mut client = Client {
            io: &mut io,
            early: &mut early,
        };
        match forward(proxy, via, &mut client, request, &mut out).await {
            Forwarded::KeepAlive if !close => {}
            Forwarded::KeepAlive | Forwarded::Close => {
                // TLS says goodbye (close_notify); a plain connection's close(2) sends its FIN
                // anyway, without a shutdown(2) first.
                if via.scheme == "https" {
                    let _ = io.shutdown().await;
                }
                return None;
            }
            Forwarded::ToHyper => return Some(Rewind::with_prefix(io, buf)),
        }
        buf.drain(..head_len);
        if !early.is_empty() {
            buf.append(&mut early);
            early.shrink_to_fit();
        }
        if buf.capacity() > 2 * READ_SIZE && buf.len() < READ_SIZE {
            // A big head grew it: an idle connection keeps a small one.
            buf.shrink_to(READ_SIZE);
        }
        if *stop.borrow() {
            return None;
        }
    }
}

/// Where the request head at the start of `buf` ends: after its empty line (CRLF CRLF, or
/// bare LFs, which HTTP/1.1 parsers accept).
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..i + 3) {
        Some([b'\n', _]) => Some(i + 2),
        Some([b'\r', b'\n']) => Some(i + 3),
        None if buf.get(i + 1) == Some(&b'\n') => Some(i + 2),
        _ => None,
    })
}

/// Reads what the peer sent next into the spare room of `buf`.
async fn read_more<I: AsyncRead + Unpin>(io: &mut I, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(READ_SIZE);
    io.read_buf(buf).await
}

/// A request the direct path takes: what the router needs of it once its head for the dyno
/// is written.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    /// Lowercase, as the client sent it (with its port, if any).
    host: &'a str,
    /// The client's `X-Request-Id` when Heroku would keep it, else a new one.
    request_id: Cow<'a, str>,
    /// `X-Forwarded-For` as the dyno gets it, when the client sent one: else the client's
    /// address alone.
    fwd: Option<String>,
    /// `Connection: close`: the connection ends after this response.
    close: bool,
    app_id: String,
    backends: Vec<(String, SocketAddr)>,
    start: Instant,
}

impl<'a> Request<'a> {
    /// The request, if the direct path takes it: HTTP/1.1 GET, HEAD or OPTIONS with an
    /// origin-form target, one lowercase `Host`, no body, no upgrade or `Expect`, no
    /// `Connection` option besides `close` and `keep-alive`, for an app with an up web dyno
    /// that does not redirect to HTTPS.
    /// Writes the head the dyno gets into `head` when it does.
    fn take(
        req: &httparse::Request<'_, 'a>,
        proxy: &Proxy,
        via: &Via,
        head: &mut Vec<u8>,
    ) -> Option<Self> {
        let start = Instant::now();
        let method = req.method?;
        if !matches!(method, "GET" | "HEAD" | "OPTIONS") || req.version != Some(1) {
            return None;
        }
        let path = req.path.filter(|p| p.starts_with('/'))?;
        if req.headers.len() > proxy.cfg.header_limits.max_count {
            return None;
        }
        let mut host = None;
        let mut request_id = None;
        let mut prior_fwd = None;
        let mut close = false;
        for header in req.headers.iter() {
            let name: &'a str = header.name;
            let value: &'a [u8] = header.value;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return None;
                }
                let value = std::str::from_utf8(value).ok()?;
                if value.is_empty() || value.bytes().any(|b| b.is_ascii_uppercase()) {
                    return None;
                }
                host = Some(value);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in std::str::from_utf8(value).ok()?.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case("keep-alive") && !token.is_empty() {
                        return None;
                    }
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                if value != b"0" {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return None;
            } else if name.eq_ignore_ascii_case("x-request-id") {
                if request_id.is_none() {
                    request_id = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| valid_request_id(v));
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-for") && prior_fwd.is_none() {
                // As `HeaderValue::to_str` takes it (visible ASCII), else it is replaced.
                let visible = value.iter().all(|b| *b == b'\t' || (32..127).contains(b));
                if !visible {
                    prior_fwd = Some("");
                    continue;
                }
                prior_fwd = std::str::from_utf8(value).ok();
            }
        }
        let host = host?;
        let key = match app_from_host(host, &proxy.cfg.domain) {
            Some(app) => HostKey::App(app),
            None => HostKey::Domain(bare_host(host)),
        };
        let Resolution::Found {
            app_id,
            target: Target::Up(backends),
        } = proxy.lookup(key)
        else {
            return None;
        };
        if backends.is_empty() || proxy.redirects_to_https(&app_id, via.scheme) {
            return None;
        }
        let request = Request {
            method,
            path,
            host,
            request_id: match request_id {
                Some(id) => Cow::Borrowed(id),
                None => Cow::Owned(new_request_id()),
            },
            fwd: prior_fwd.and_then(|prior| {
                extended_forwarded_for(prior, via.peer_ip.to_str().unwrap_or_default())
            }),
            close,
            app_id,
            backends,
            start,
        };
        upstream_head(head, &request, req.headers, via);
        Some(request)
    }
}

/// `X-Forwarded-For` as the dyno gets it: the extended one the client sent, else the
/// client's address alone.
fn fwd<'s>(extended: &'s Option<String>, via: &'s Via) -> &'s str {
    match extended {
        Some(fwd) => fwd,
        None => via.peer_ip.to_str().unwrap_or_default(),
    }
}

/// How a request on the direct path ended.
enum Forwarded {
    /// Answered; the client's connection may carry the next request.
    KeepAlive,
    /// The client's connection must close (a response cut short, the client gone).
    Close,
    /// Nothing was sent to a dyno (every one refused the connection): hyper takes it.
    ToHyper,
}

/// How an attempt on one dyno connection failed.
enum Failed {
    /// No connection could be made: nothing was sent.
    Refused,
    /// A kept-alive connection the dyno had closed: nothing was answered, the request can go
    /// again on a new connection.
    Stale,
    /// No answer within the request timeout (H12).
    Timeout,
    /// The connection broke, or the answer was not HTTP (H13).
    Broken,
}

/// A dyno's response head, as the client gets it, and how its body is framed.
struct Answer {
    status: u16,
    /// Where the body starts in the dyno connection's buffer.
    head_len: usize,
    framing: Framing,
    /// The dyno keeps the connection open after this response.
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the dyno closes the connection: re-framed as chunked for the client.
    UntilClose,
}

async fn forward<I: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    via: &Via,
    client: &mut Client<'_, I>,
    req: Request<'_>,
    out: &mut Vec<u8>,
) -> Forwarded {
    let start = req.start;
    let request_id = &req.request_id;
    let fields = Fields {
        method: req.method,
        path: req.path,
        host: req.host.split(':').next().unwrap_or_default(),
        request_id,
        fwd: fwd(&req.fwd, via),
    };
    let sent = Instant::now();
    let deadline = tokio::time::Instant::now() + proxy.cfg.request_timeout;
    for i in proxy.rotation.order(&req.backends, sent) {
        let (dyno, addr) = &req.backends[i];
        let in_flight = proxy.cfg.drains.begin(*addr);
        let mut fresh = false;
        let mut upstream = match proxy.direct.take(*addr) {
            Some(upstream) => upstream,
            None => {
                fresh = true;
                match connect(*addr).await {
                    Some(upstream) => upstream,
                    None => {
                        tracing::info!(dyno, %addr, "dyno refused the connection: out of rotation");
                        proxy.rotation.refused(*addr, Instant::now());
                        continue;
                    }
                }
            }
        };
        let mut answer = exchange(&mut upstream, out, &req, deadline).await;
        if let (Err(Failed::Stale), false) = (&answer, fresh) {
            match connect(*addr).await {
                Some(new) => {
                    upstream = new;
                    answer = exchange(&mut upstream, out, &req, deadline).await;
                }
                None => answer = Err(Failed::Refused),
            }
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(Failed::Refused) => {
                tracing::info!(dyno, %addr, "dyno refused the connection: out of rotation");
                proxy.rotation.refused(*addr, Instant::now());
                continue;
            }
            Err(failed) => {
                let error = match failed {
                    Failed::Timeout => RouterError::RequestTimeout,
                    _ => RouterError::ConnectionClosed,
                };
                let at = (0, start.elapsed().as_millis(), 0);
                let line = error_line(error, fields, dyno, at, via.scheme);
                proxy
                    .lines
                    .write(req.app_id, Source::Heroku, "router", line);
                drop(in_flight);
                write_error(out, error, request_id, req.method == "HEAD", req.close);
                return match client.send(out, proxy.cfg.idle_timeout).await {
                    true => Forwarded::KeepAlive,
                    false => Forwarded::Close,
                };
            }
        };
        proxy.rotation.accepted(*addr);
        let connect_ms = sent.duration_since(start).as_millis();
        let service_ms = sent.elapsed().as_millis();
        let relayed = relay(proxy, client, &mut upstream, &answer, out).await;
        drop(in_flight);
        let (line, ended) = match relayed {
            Ok((bytes, reusable)) => {
                if reusable && answer.keep_alive {
                    upstream.buf.clear();
                    // A big head or body grew it: idle connections keep a small one.
                    upstream.buf.shrink_to(READ_SIZE);
                    proxy.direct.put(*addr, upstream);
                }
                let line = info_line(
                    fields,
                    dyno,
                    connect_ms,
                    service_ms,
                    answer.status,
                    bytes,
                    via.scheme,
                );
                (line, Forwarded::KeepAlive)
            }
            Err((error, bytes)) => {
                let at = (connect_ms, start.elapsed().as_millis(), bytes);
                let line = error_line(error, fields, dyno, at, via.scheme);
                (line, Forwarded::Close)
            }
        };
        proxy
            .lines
            .write(req.app_id, Source::Heroku, "router", line);
        return ended;
    }
    Forwarded::ToHyper
}

async fn connect(addr: SocketAddr) -> Option<Upstream> {
    let stream = dial(addr, CONNECT_TIMEOUT).await.ok()?;
    Some(Upstream {
        stream,
        buf: Vec::with_capacity(READ_SIZE),
    })
}

fn named_in(names: &[HeaderName], name: &str) -> bool {
    names.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
}

/// Headers the router does not pass on to the dyno: hop-by-hop ones (a request here names no
/// others in `Connection`), and those it sets itself.
fn dropped_request_header(name: &str) -> bool {
    named_in(&HOP_BY_HOP, name) || named_in(&SET_BY_THE_ROUTER, name)
}

/// The request head as the dyno gets it: the client's `headers` but hop-by-hop ones, and
/// the router's (`X-Forwarded-*`, `X-Request-Id`, `X-Request-Start`, `Via`). Written into
/// `head`, cleared first.
fn upstream_head(
    head: &mut Vec<u8>,
    req: &Request<'_>,
    headers: &[httparse::Header<'_>],
    via: &Via,
) {
    head.clear();
    let fwd = fwd(&req.fwd, via);
    let request_id = &req.request_id;
    head.extend_from_slice(req.method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(req.path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for header in headers {
        if dropped_request_header(header.name) {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    let mut itoa = itoa::Buffer::new();
    for (name, value) in [
        (&b"x-forwarded-for: "[..], fwd.as_bytes()),
        (b"x-forwarded-proto: ", via.scheme.as_bytes()),
        (b"x-forwarded-port: ", itoa.format(via.port).as_bytes()),
        (b"x-request-id: ", request_id.as_bytes()),
    ] {
        head.extend_from_slice(name);
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"x-request-start: ");
    head.extend_from_slice(
        itoa.format(chrono::Utc::now().timestamp_millis())
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\nvia: 1.1 slipway\r\n\r\n");
}

/// Sends the request head in `out` on `upstream` and reads the dyno's response head
/// (skipping informational ones) by `deadline`. Once it has, `out` holds the client's
/// response head instead.
async fn exchange(
    upstream: &mut Upstream,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    deadline: tokio::time::Instant,
) -> Result<Answer, Failed> {
    let Upstream { stream, buf } = upstream;
    buf.clear();
    let sending = tokio::time::timeout_at(deadline, stream.write_all(out)).await;
    match sending {
        Err(_) => return Err(Failed::Timeout),
        // A kept-alive connection the dyno closed can fail the write (a reset).
        Ok(Err(_)) => return Err(Failed::Stale),
        Ok(Ok(())) => {}
    }
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = res.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        if status == 101 {
                            // Nothing asked to switch protocols.
                            return Err(Failed::Broken);
                        }
                        buf.drain(..len);
                        continue;
                    }
                    let answer = answer(&res, len, req.method == "HEAD").ok_or(Failed::Broken)?;
                    response_head(out, &res, answer.framing, req.close);
                    return Ok(answer);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
                _ => return Err(Failed::Broken),
            }
        }
        buf.reserve(READ_SIZE);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(Failed::Timeout),
            // The dyno had the request and closed without (all of) an answer: it may have
            // acted on it, so it is not sent again (H13), as Heroku's router does. (An idle
            // connection the dyno had closed was found out before the request went.)
            Ok(Ok(0) | Err(_)) => return Err(Failed::Broken),
            Ok(Ok(_)) => {}
        }
    }
}

/// How the response's body is framed (RFC 9112 6.3), and whether the dyno keeps the
/// connection; `None` for framing a proxy must not pass on (conflicting lengths).
fn answer(res: &httparse::Response<'_, '_>, head_len: usize, is_head: bool) -> Option<Answer> {
    let status = res.code?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut keep_alive = res.version == Some(1);
    for header in res.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // One length, or a list of the same one (`5, 5`, RFC 9110 8.6).
            for value in std::str::from_utf8(header.value).ok()?.split(',') {
                let value = value.trim();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u64 = value.parse().ok()?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let value = std::str::from_utf8(header.value).ok()?;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(header.value).ok()?;
            if value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
            {
                keep_alive = false;
            }
        }
    }
    let framing = if is_head || status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // A length beside an encoding is ignored (and the connection not reused).
        keep_alive &= length.is_none();
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    Some(Answer {
        status,
        head_len,
        framing,
        keep_alive,
    })
}

/// Response headers the client does not get from the dyno: hop-by-hop ones and the body's
/// length, which the router writes itself.
fn dropped_response_header(name: &str) -> bool {
    named_in(&HOP_BY_HOP, name) || name.eq_ignore_ascii_case("content-length")
}

/// Writes the client's response head into `out` (cleared first): the dyno's status and
/// headers but hop-by-hop ones (and those its `Connection` names), the body's framing, a
/// `Date` when the dyno sent none, and `Connection: close` when the client asked for it.
fn response_head(
    out: &mut Vec<u8>,
    res: &httparse::Response<'_, '_>,
    framing: Framing,
    close: bool,
) {
    out.clear();
    let mut itoa = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa.format(res.code.unwrap_or(502)).as_bytes());
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Names the dyno's Connection header makes hop-by-hop (rare: `close` is the usual one).
    let named: Vec<&str> = res
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .collect();
    let mut dated = false;
    for header in res.headers.iter() {
        let name = header.name;
        let keep_length = framing == Framing::Empty && name.eq_ignore_ascii_case("content-length");
        if (dropped_response_header(name) && !keep_length)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        dated |= name.eq_ignore_ascii_case("date");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa.format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date::now(|d| out.extend_from_slice(d.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Passes the response on: `out` (its head) and the body as it comes, under the idle
/// window. `Ok((body bytes, whether the dyno connection is at a clean end))`, or the error
/// that cut it short and the body bytes that reached the client.
async fn relay<I: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    client: &mut Client<'_, I>,
    upstream: &mut Upstream,
    answer: &Answer,
    out: &mut Vec<u8>,
) -> Result<(u64, bool), (RouterError, u64)> {
    let idle = proxy.cfg.idle_timeout;
    let Upstream { stream, buf } = upstream;
    let mut rest = answer.head_len;
    let mut bytes = 0u64;
    let mut chunks = Chunks::default();
    let mut remaining = match answer.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // What is in `buf[rest..]` and belongs to this body goes into `out`.
        let available = &buf[rest..];
        let (done, clean) = match answer.framing {
            Framing::Empty => (true, available.is_empty()),
            Framing::Length(_) => {
                let take = available
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&available[..take]);
                remaining -= take as u64;
                bytes += take as u64;
                (remaining == 0, take == available.len())
            }
            Framing::Chunked => match chunks.feed(available) {
                Ok(fed) => {
                    out.extend_from_slice(&available[..fed.used]);
                    bytes += fed.payload;
                    (fed.done, fed.used == available.len())
                }
                Err(()) => {
                    client.send(out, idle).await;
                    return Err((RouterError::ServerInterrupted, bytes));
                }
            },
            Framing::UntilClose => {
                if !available.is_empty() {
                    use std::io::Write;
                    let _ = write!(out, "{:x}\r\n", available.len());
                    out.extend_from_slice(available);
                    out.extend_from_slice(b"\r\n");
                    bytes += available.len() as u64;
                }
                (false, true)
            }
        };
        if done || !out.is_empty() {
            if done && answer.framing == Framing::UntilClose {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            if !client.send(out, idle).await {
                return Err((RouterError::ClientInterrupted, bytes));
            }
            out.clear();
        }
        if done {
            return Ok((bytes, clean));
        }
        buf.clear();
        rest = 0;
        buf.reserve(READ_SIZE);
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(idle, stream.read_buf(buf)) => read,
            () = client.hung_up() => return Err((RouterError::ClientInterrupted, bytes)),
        };
        match read {
            Err(_) => return Err((RouterError::IdleConnection, bytes)),
            Ok(Ok(0)) if answer.framing == Framing::UntilClose => {
                out.extend_from_slice(b"0\r\n\r\n");
                if !client.send(out, idle).await {
                    return Err((RouterError::ClientInterrupted, bytes));
                }
                out.clear();
                return Ok((bytes, false));
            }
            Ok(Ok(0) | Err(_)) => return Err((RouterError::ServerInterrupted, bytes)),
            Ok(Ok(_)) => {}
        }
    }
}

/// The client's connection while one of its requests is answered.
struct Client<'a, I> {
    io: &'a mut I,
    /// What it sent meanwhile, kept for the next request.
    early: &'a mut Vec<u8>,
}

impl<I: AsyncWrite + Unpin> Client<'_, I> {
    /// Writes `out` to the client: false when it is gone, or did not take it within the idle
    /// window (a client that stops reading must not hold the dyno and its in-flight count
    /// for ever; logged as H27).
    async fn send(&mut self, out: &[u8], idle: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(idle, self.io.write_all(out)).await,
            Ok(Ok(()))
        )
    }
}

impl<I: AsyncRead + Unpin> Client<'_, I> {
    /// Resolves when the client hangs up. What it sends meanwhile (its next request) is
    /// kept in `early`, up to a request head's worth; past that it is not read until this
    /// response is done, and only the response's own timeouts apply.
    async fn hung_up(&mut self) {
        loop {
            if self.early.len() >= READ_SIZE {
                return std::future::pending().await;
            }
            self.early.reserve(READ_SIZE - self.early.len());
            match self.io.read_buf(self.early).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Writes the router's error page for `error` into `out` (cleared first).
fn write_error(
    out: &mut Vec<u8>,
    error: RouterError,
    request_id: &str,
    is_head: bool,
    close: bool,
) {
    out.clear();
    let page = error.page();
    let status = error.status();
    let mut itoa = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa.format(status.as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    for (name, value) in crate::errors::PAGE_HEADERS {
        for part in [b"\r\n", name.as_bytes(), b": ", value.as_bytes()] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa.format(page.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    date::now(|d| out.extend_from_slice(d.as_bytes()));
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !is_head {
        out.extend_from_slice(page.as_bytes());
    }
}

/// Where a chunked body (RFC 9112 7.1) is, byte by byte: the router passes the chunks on as
/// they are and needs only to know where the body ends, and that it is well formed (a dyno
/// cannot make the client see a second response in a malformed one).
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    /// The current chunk's size, then what is left of its data.
    size: u64,
    digits: u8,
    /// Bytes of the current size line's extension, or of all trailers.
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What [`Chunks::feed`] made of some bytes.
#[derive(Debug, PartialEq, Eq)]
struct Fed {
    /// How many of them belong to the body (all, unless it ended among them).
    used: usize,
    /// How many of those are chunk data.
    payload: u64,
    done: bool,
}

impl Chunks {
    fn feed(&mut self, bytes: &[u8]) -> Result<Fed, ()> {
        let mut i = 0;
        let mut payload = 0u64;
        while i < bytes.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let take = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += take;
                payload += take as u64;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (ChunkState::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(());
                    }
                    self.digits += 1;
                    // At most 16 hex digits: fits.
                    self.size = (self.size << 4) | u64::from(hex_value(b));
                    ChunkState::Size
                }
                (ChunkState::Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.line = 0;
                    ChunkState::Extension
                }
                (ChunkState::Size, b'\r') if self.digits > 0 => ChunkState::SizeLf,
                (ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Extension, b) if b == b'\t' || (32..127).contains(&b) || b >= 128 => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(());
                    }
                    ChunkState::Extension
                }
                (ChunkState::SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        self.line = 0;
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    }
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Size,
                (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                (ChunkState::TrailerStart | ChunkState::Trailer, b)
                    if b == b'\t' || (32..127).contains(&b) || b >= 128 =>
                {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err(());
                    }
                    ChunkState::Trailer
                }
                (ChunkState::Trailer, b'\r') => ChunkState::TrailerLf,
                (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
                (ChunkState::EndLf, b'\n') => ChunkState::Done,
                _ => return Err(()),
            };
        }
        Ok(Fed {
            used: i,
            payload,
            done: self.state == ChunkState::Done,
        })
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The `Date` header's value, made once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn now(with: impl FnOnce(&str)) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs || cached.1.is_empty() {
                *cached = (secs, httpdate::fmt_http_date(now));
            }
            with(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8], step: usize) -> Result<Fed, ()> {
        let mut chunks = Chunks::default();
        let mut used = 0;
        let mut payload = 0;
        for piece in input.chunks(step) {
            let fed = chunks.feed(piece)?;
            used += fed.used;
            payload += fed.payload;
            if fed.done {
                return Ok(Fed {
                    used,
                    payload,
                    done: true,
                });
            }
        }
        Ok(Fed {
            used,
            payload,
            done: false,
        })
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in [1, 2, 3, 7, body.len()] {
            let fed = feed_all(body, step).expect("well formed");
            assert_eq!(
                fed,
                Fed {
                    used: end,
                    payload: 11,
                    done: true
                },
                "step {step}"
            );
        }
    }

    #[test]
    fn an_unfinished_chunked_body_is_not_done() {
        let fed = feed_all(b"5\r\nhel", 2).expect("well formed so far");
        assert_eq!((fed.used, fed.payload, fed.done), (6, 3, false));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"5;ext\0\r\n",
        ] {
            assert!(
                feed_all(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let fed = feed_all(b"A\r\n0123456789\r\n0\r\n\r\n", 4).expect("well formed");
        assert_eq!((fed.payload, fed.done), (10, true));
    }

    fn parsed_answer(head: &[u8], is_head: bool) -> Option<Answer> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = res.parse(head) else {
            panic!("not a complete head");
        };
        answer(&res, len, is_head)
    }

    #[test]
    fn a_head_ends_at_its_empty_line() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(&[&head[..], b"GET"].concat()), Some(head.len()));
        let bare = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(head_end(&[&bare[..], b"GET"].concat()), Some(bare.len()));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        let mixed = b"GET / HTTP/1.1\r\nHost: a\n\n";
        assert_eq!(head_end(mixed), Some(mixed.len()));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing =
            |head: &[u8], is_head| parsed_answer(head, is_head).map(|a| (a.framing, a.keep_alive));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Some((Framing::Length(5), true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, false))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Some((Framing::UntilClose, false))
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Some((Framing::Length(5), false))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
                false
            ),
            Some((Framing::Length(5), false))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                false
            ),
            None
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false),
            None
        );
    }

    #[test]
    fn the_client_gets_no_hop_by_hop_headers_and_the_routers_framing() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let head = b"HTTP/1.1 200 Fine\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: yes\r\n\r\n";
        assert!(matches!(res.parse(head), Ok(httparse::Status::Complete(_))));
        let mut out = Vec::new();
        response_head(&mut out, &res, Framing::Chunked, true);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "HTTP/1.1 200 Fine\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: yes\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
