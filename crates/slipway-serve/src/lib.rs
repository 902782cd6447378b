//! How slipway serves HTTP, for every listener it has (the router's plain and HTTPS
//! listeners, the API and git endpoints, plain and HTTPS): listening sockets, one per worker
//! thread, sharing a port ([`bind_workers`]); the accept loop, HTTP/1.1 (plain listeners)
//! and HTTP/1.1 or HTTP/2 by ALPN (TLS) with upgrades, a header read timeout, bounded request headers and a graceful shutdown under a
//! deadline ([`serve_with`], [`serve_tls`]); and TLS with certificates chosen by SNI from one
//! store ([`tls::CertStore`]).

mod rewind;
pub mod tls;

pub use rewind::Rewind;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service every listener can serve connections with (what hyper needs of it, on a runtime
/// whose tasks may move between threads).
pub trait HttpService<B>:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static
{
}

/// The body of a response such a service answers with.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

/// Turns true when the server shuts down: a connection's reader finishes the request in
/// progress and closes.
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// `workers` listening sockets on `addr` (port 0: one free port for all), one per worker
/// thread: with more than one, they share the port through `SO_REUSEPORT` and the kernel
/// spreads new connections over them. The sockets are non-blocking, for
/// [`TcpListener::from_std`] on each worker's runtime. Must run inside a tokio runtime.
pub fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let workers = workers.max(1);
    let mut addr = addr;
    if workers > 1 {
        // SO_REUSEPORT would let these sockets join a port another server of the same user
        // already serves with it: bind once without it first, so a taken port fails here as
        // it does for one worker (and port 0 picks the port).
        let probe = std::net::TcpListener::bind(addr)?;
        addr = probe.local_addr()?;
        drop(probe);
    }
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if workers > 1 {
            socket.set_reuseport(true)?;
        }
        // Accepted connections inherit it on Linux: the accept loop then need not set it
        // on each one (a system call per connection).
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        // The next ones join the port this one got.
        addr = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Bounds on a request's headers, enforced by the HTTP layer (hyper answers 431 itself) and
/// again by the router for HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// The request line and all header lines together, in bytes (at least 8 KiB, hyper's
    /// smallest read buffer).
    pub max_bytes: usize,
    /// How many header fields.
    pub max_count: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024,
            max_count: 100,
        }
    }
}

impl HeaderLimits {
    /// Whether `headers` (as counted by the router: names, values and 4 bytes of framing
    /// each) are over the bounds.
    pub fn exceeded_by(&self, headers: &http::HeaderMap) -> bool {
        if headers.len() > self.max_count {
            return true;
        }
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        bytes > self.max_bytes
    }
}

/// Time limits for every HTTP connection slipway accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client has to send a request's headers (no slowloris holding connections).
    pub header_read_timeout: Duration,
    /// How long open connections get to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// The accept loop shared by the router and the API: HTTP/1.1 (with upgrades) on each
/// connection, a header read timeout, bounded request headers ([`HeaderLimits`]'s
/// defaults), and a graceful shutdown under a deadline. `service_for(peer)` makes the
/// service for one connection.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    service_for: impl Fn(SocketAddr) -> S + Send + Sync + 'static,
) -> std::io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    serve_with(
        listener,
        limits,
        HeaderLimits::default(),
        shutdown,
        service_for,
    )
    .await
}

/// [`serve_http`] with request header bounds of the caller's choosing.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    headers: HeaderLimits,
    shutdown: impl Future<Output = ()>,
    service_for: impl Fn(SocketAddr) -> S + Send + Sync + 'static,
) -> std::io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    accept_loop(
        listener,
        limits,
        headers,
        None,
        shutdown,
        HyperOnly(service_for),
    )
    .await
}

/// [`serve_with`] over TLS: each connection's handshake (SNI, ALPN h2 or http/1.1, as `tls`
/// says) must finish within the header read timeout, then it is served like a plain one.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    headers: HeaderLimits,
    shutdown: impl Future<Output = ()>,
    service_for: impl Fn(SocketAddr) -> S + Send + Sync + 'static,
) -> std::io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(
        listener,
        limits,
        headers,
        Some(acceptor),
        shutdown,
        HyperOnly(service_for),
    )
    .await
}

/// A connection's first reader, in front of hyper: it serves what HTTP/1.1 requests it can
/// itself, straight from the connection, and either ends the connection or hands it to
/// hyper, with the bytes it read of the request it did not take.
pub trait Front<S>: Send + Sync + 'static {
    /// The service hyper serves a connection from `peer` with (HTTP/2 connections go to
    /// hyper from the start).
    fn service(&self, peer: SocketAddr) -> S;

    /// Serves requests on `io` (plain, or TLS once the handshake chose HTTP/1.1) until the
    /// connection ends (`None`) or a request is left to hyper: then the connection (what
    /// was read of that request in front) and the service for it. Finishes the request in
    /// progress and ends once `stop` turns true.
    fn serve<I>(
        &self,
        io: I,
        peer: SocketAddr,
        stop: Stop,
    ) -> impl Future<Output = Option<(Rewind<I>, S)>> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// The front for services that hyper serves alone.
struct HyperOnly<T>(T);

impl<S, T> Front<S> for HyperOnly<T>
where
    S: Send + 'static,
    T: Fn(SocketAddr) -> S + Send + Sync + 'static,
{
    fn service(&self, peer: SocketAddr) -> S {
        (self.0)(peer)
    }

    fn serve<I>(
        &self,
        io: I,
        peer: SocketAddr,
        _stop: Stop,
    ) -> impl Future<Output = Option<(Rewind<I>, S)>> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handed = Some((Rewind::new(io), self.service(peer)));
        async move { handed }
    }
}

/// [`serve_with`], plain or (`tls`) over TLS as [`serve_tls`], with `front` reading each
/// HTTP/1.1 connection first.
pub async fn serve_fronted<S, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    headers: HeaderLimits,
    shutdown: impl Future<Output = ()>,
    front: impl Front<S>,
) -> std::io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    accept_loop(listener, limits, headers, tls, shutdown, front).await
}

/// How many header fields hyper's HTTP/1.1 parser takes when not told (one slot per field:
/// httparse sees the end of the head without a spare one). Told any number, even this one,
/// hyper sets up its arrays field by field for every request (more than this: two heap
/// allocations); left alone, it takes them as they are on the stack.
const HYPER_MAX_HEADERS: usize = 100;

/// The HTTP protocol builders of one accept loop, set up with its limits.
struct Protocols {
    /// Plain listeners and TLS connections that chose `http/1.1` by ALPN.
    http1: hyper::server::conn::http1::Builder,
    /// TLS connections that chose `h2` by ALPN.
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// TLS connections without ALPN: the protocol is told by the first bytes.
    auto: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: ConnectionLimits, headers: HeaderLimits) -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            // A response's head and its first body bytes in one buffer, one write(2).
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper answers 431 itself when the head does not fit or has too many fields.
            .max_buf_size(headers.max_bytes.max(8192));
        if headers.max_count != HYPER_MAX_HEADERS {
            auto.http1().max_headers(headers.max_count);
        }
        auto.http2()
            .max_header_list_size(u32::try_from(headers.max_bytes).unwrap_or(u32::MAX))
            // WebSockets over h2 (RFC 8441 extended CONNECT; see the router's tunnel.rs).
            .enable_connect_protocol();
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(headers.max_bytes.max(8192))
            // The head's size itself, however its bytes arrived (the buffer bound alone lets a
            // head through that completes in the read that crosses it).
            .max_header_size(headers.max_bytes);
        if headers.max_count != HYPER_MAX_HEADERS {
            http1.max_headers(headers.max_count);
        }
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .max_header_list_size(u32::try_from(headers.max_bytes).unwrap_or(u32::MAX))
            .enable_connect_protocol();
        Self { http1, http2, auto }
    }
}

/// Serves an HTTP/1.1 connection (with upgrades) until it ends; once `stop` turns true it
/// finishes the request in progress and closes (hyper-util's graceful shutdown does not take
/// HTTP/1-only connections with upgrades).
async fn serve_h1_until_stopped<I, S, B>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: it is what wakes this task nearly every time.
        biased;
        ended = conn.as_mut() => return ended,
        // Stopped, or the accept loop is gone: either way, wind down.
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// How often the accept loop's timer fires (see `keep_wheel` in [`accept_loop`]).
const KEEP_WHEEL: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown`, then gives open ones the shutdown grace to finish.
///
/// Plain connections are served as HTTP/1.1 only, with no sniffing for HTTP/2's preface (no
/// h2c, as on Heroku and nginx's default; it would cost a read per connection). Over TLS the
/// protocol comes from ALPN: `h2` or `http/1.1`, and a client that sent no ALPN gets either,
/// told by its first bytes.
async fn accept_loop<S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    headers: HeaderLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    front: impl Front<S>,
) -> std::io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    // HTTP/2 and sniffed connections shut down through hyper-util's graceful shutdown,
    // HTTP/1.1 ones through `stop`; both are waited for.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let protocols = Arc::new(Protocols::new(limits, headers));
    let front = Arc::new(front);
    // Whether accepted connections come with TCP_NODELAY from the listener (Linux copies it
    // from a listener that has it, see [`bind_workers`]): told by the first connection.
    let mut inherits_nodelay: Option<bool> = None;
    // A timer that is always due within a second keeps the runtime's timer wheel from ever
    // being empty: a new timer (each request's header read and request timeouts) then never
    // is the earliest one, and registering it never has to wake the I/O driver (a system
    // call on an eventfd, and one more turn of the driver) to shorten its wait.
    let mut keep_wheel = tokio::time::interval(KEEP_WHEEL);
    keep_wheel.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = keep_wheel.tick() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if inherits_nodelay != Some(true) {
            let inherited = inherits_nodelay.is_none() && stream.nodelay().unwrap_or(false);
            if !inherited {
                let _ = stream.set_nodelay(true);
            }
            inherits_nodelay = Some(inherited);
        }
        let span = tracing::debug_span!("conn", %peer);
        let stop = stop_rx.clone();
        let Some(acceptor) = &tls else {
            let front = front.serve(stream, peer, stop.clone());
            let protocols = protocols.clone();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let Some((io, service)) = front.await else {
                        return;
                    };
                    let conn = protocols
                        .http1
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades();
                    // Boxed: most connections never get here, and this task's future (moved
                    // when spawned) stays the front's size.
                    if let Err(e) = Box::pin(serve_h1_until_stopped(conn, stop)).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                },
                span,
            ));
            continue;
        };
        let acceptor = acceptor.clone();
        let front = front.clone();
        let protocols = protocols.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let stream =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                if alpn.as_deref() == Some(b"h2") {
                    let conn = protocols
                        .http2
                        .serve_connection(TokioIo::new(stream), front.service(peer));
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // HTTP/1.1, or no ALPN: the front reads first. (A client without ALPN that
                // speaks HTTP/2 sends a preface the front leaves to hyper, which tells it.)
                let Some((io, service)) = front.serve(stream, peer, stop.clone()).await else {
                    return;
                };
                let io = TokioIo::new(io);
                let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> = if alpn.is_some()
                {
                    let conn = protocols
                        .http1
                        .serve_connection(io, service)
                        .with_upgrades();
                    serve_h1_until_stopped(conn, stop).await.map_err(Into::into)
                } else {
                    let conn = protocols.auto.serve_connection_with_upgrades(io, service);
                    watcher.watch(conn.into_owned()).await
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            },
            span,
        ));
    }
    drop(listener);
    drop(stop_rx);
    stop_tx.send_replace(true);
    let closed = async {
        graceful.shutdown().await;
        stop_tx.closed().await;
    };
    if tokio::time::timeout(limits.shutdown_grace, closed)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bind_workers;

    #[tokio::test]
    async fn workers_share_one_port_that_no_other_server_can_join() {
        let first = bind_workers("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        assert_eq!(first.len(), 2);
        let addr = first[0].local_addr().expect("addr");
        assert_eq!(first[1].local_addr().expect("addr"), addr);
        let second = bind_workers(addr, 2);
        assert!(second.is_err(), "a second set joined the port");
        assert!(bind_workers(addr, 1).is_err());
    }
}
