//! The router: every request to `<app>.<domain>` goes to one of the app's web dynos that is
//! up, chosen round robin. Requests that cannot be served get Heroku's error code, a plain
//! error page and an `at=error` log line; served ones an `at=info` line, both as
//! `heroku[router]` in the app's log.
//!
//! The router does not know about apps or dynos itself: it asks a [`Resolver`] (implemented
//! by the control plane) for each request, so it has no state of its own to get out of date.
//! The one thing it learns by itself is which dynos refuse connections: those are out of
//! rotation for [`RouterConfig::out_of_rotation`] and their requests retried on another up
//! dyno (`rotation.rs`). HTTP/1.1 upgrades (WebSockets) are tunnelled under the same idle
//! window as responses (`tunnel.rs`); request headers are bounded ([`HeaderLimits`]).

mod body;
mod errors;
mod proxy;
mod rotation;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use slipway_logs::LogHub;
use tokio::net::TcpListener;

pub use errors::RouterError;

/// Where a request for an app can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    NoSuchApp,
    Found { app_id: String, target: Target },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Maintenance mode is on (H80).
    Maintenance,
    /// The formation has no web dynos (H14).
    NoWebDynos,
    /// Web dynos are starting; the router holds the request until one is up (H20 after the wait).
    Starting,
    /// No web dyno is up and none is starting (H10).
    Crashed,
    /// Up web dynos: (dyno name, address).
    Up(Vec<(String, SocketAddr)>),
}

pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, app_name: &str) -> Resolution;
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// Time to the first response byte before H12 (Heroku: 30 s).
    pub request_timeout: Duration,
    /// After the first response byte, how long the dyno may send nothing before H15
    /// (Heroku: a rolling 55 s window).
    pub idle_timeout: Duration,
    /// How long a request waits for a starting dyno before H20.
    pub boot_wait: Duration,
    /// How long open connections get to finish when the router shuts down.
    pub shutdown_grace: Duration,
    /// How long a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a dyno that refused a connection stays out of rotation (its requests go to
    /// the app's other up dynos meanwhile).
    pub out_of_rotation: Duration,
    /// Request headers over these bounds get 431 and never reach a dyno.
    pub header_limits: HeaderLimits,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(55),
            boot_wait: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            out_of_rotation: Duration::from_secs(5),
            header_limits: HeaderLimits::default(),
        }
    }
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

/// Serves `listener` until `shutdown` resolves, then lets open requests finish for up to
/// `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    cfg: RouterConfig,
    resolver: Arc<dyn Resolver>,
    logs: LogHub,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let proxy = Arc::new(proxy::Proxy::new(cfg.clone(), resolver, logs));
    let limits = ConnectionLimits {
        header_read_timeout: cfg.header_read_timeout,
        shutdown_grace: cfg.shutdown_grace,
    };
    serve_with(listener, limits, cfg.header_limits, shutdown, move |peer| {
        let proxy = proxy.clone();
        let via = proxy::Via {
            peer,
            scheme: "http",
            port,
        };
        hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, via).await) }
        })
    })
    .await
}

/// Time limits for every HTTP connection slipway accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client has to send a request's headers (no slowloris holding connections).
    pub header_read_timeout: Duration,
    /// How long open connections get to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// The accept loop shared by the router and the API: HTTP/1.1 and HTTP/2 (with upgrades) on
/// each connection, a header read timeout, bounded request headers ([`HeaderLimits`]'s
/// defaults), and a graceful shutdown under a deadline. `service_for(peer)` makes the
/// service for one connection.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    service_for: impl Fn(SocketAddr) -> S,
) -> std::io::Result<()>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
    service_for: impl Fn(SocketAddr) -> S,
) -> std::io::Result<()>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 itself when the head does not fit or has too many fields.
        .max_buf_size(headers.max_bytes.max(8192))
        // httparse needs a spare slot to see the end of the head after the last field.
        .max_headers(headers.max_count.saturating_add(1));
    builder
        .http2()
        .max_header_list_size(u32::try_from(headers.max_bytes).unwrap_or(u32::MAX));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service_for(peer));
        let conn = graceful.watch(conn.into_owned());
        let span = tracing::debug_span!("conn", %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            },
            span,
        ));
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// The app name in a Host header (`hello.localhost:8080` -> `hello`), if it is under `domain`.
pub fn app_from_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.strip_suffix('.').unwrap_or(host);
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    if name.is_empty() || name.contains('.') {
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::app_from_host;

    #[test]
    fn app_names_come_from_the_first_label_under_the_domain() {
        assert_eq!(
            app_from_host("hello.localhost:8080", "localhost"),
            Some("hello")
        );
        assert_eq!(
            app_from_host("hello.localhost.", "localhost"),
            Some("hello")
        );
        assert_eq!(
            app_from_host("hello.apps.example.com", "apps.example.com"),
            Some("hello")
        );
        assert_eq!(app_from_host("localhost:8080", "localhost"), None);
        assert_eq!(app_from_host("a.b.localhost", "localhost"), None);
        assert_eq!(app_from_host("hellolocalhost", "localhost"), None);
        assert_eq!(app_from_host("hello.example.com", "localhost"), None);
    }
}
