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

mod addr_map;
mod body;
mod direct;
pub mod drain;
mod errors;
mod pool;
mod proxy;
mod rotation;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slipway_logs::LogHub;
use tokio::net::TcpListener;

pub use drain::{Drained, Drains, InFlight};
pub use errors::RouterError;
// The listeners and TLS live in slipway-serve (shared with the API); kept here under their
// old names for the router's users.
pub use slipway_serve::{bind_workers, serve_http, serve_tls, tls, ConnectionLimits, HeaderLimits};

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
    /// Where a request for `<app_name>.<domain>` goes.
    fn resolve(&self, app_name: &str) -> Resolution;

    /// Where a request for a host outside the router's domain goes: an app's custom domain
    /// (`host` exactly, lowercased, without port), else a wildcard one (`*.example.com`
    /// covers exactly one label), else no app.
    fn resolve_domain(&self, _host: &str) -> Resolution {
        Resolution::NoSuchApp
    }

    /// Whether the app's plain-HTTP requests are redirected to HTTPS (when the router has an
    /// HTTPS listener, [`RouterConfig::https_port`]).
    fn redirects_to_https(&self, _app_id: &str) -> bool {
        false
    }
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
    /// Requests in flight per dyno address, shared with the dyno manager so it stops an old
    /// dyno only once the requests it already has are done (`drain.rs`).
    pub drains: Drains,
    /// The HTTPS listener's port, if the server has one: plain-HTTP requests for apps that
    /// ask for it ([`Resolver::redirects_to_https`]) are redirected there.
    pub https_port: Option<u16>,
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
            drains: Drains::default(),
            https_port: None,
        }
    }
}

/// Serves `listener` (plain HTTP) until `shutdown` resolves, then lets open requests finish
/// for up to `shutdown_grace`. The same as [`Router::new`] and [`Router::serve`].
pub async fn serve(
    listener: TcpListener,
    cfg: RouterConfig,
    resolver: Arc<dyn Resolver>,
    logs: LogHub,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    Router::new(cfg, resolver, logs)
        .serve(listener, shutdown)
        .await
}

/// The router, for serving several listeners (HTTP and HTTPS) with one set of state (which
/// dynos are out of rotation).
#[derive(Clone)]
pub struct Router {
    cfg: RouterConfig,
    proxy: Arc<proxy::Proxy>,
}

impl Router {
    pub fn new(cfg: RouterConfig, resolver: Arc<dyn Resolver>, logs: LogHub) -> Self {
        let proxy = Arc::new(proxy::Proxy::new(cfg.clone(), resolver, logs));
        Self { cfg, proxy }
    }

    /// The same router for another worker thread: routes, rotation (which dynos refused
    /// connections), drains and logs are shared; the worker keeps its own keep-alive
    /// connections to dynos, driven on its own runtime, so none of its requests crosses
    /// threads.
    pub fn worker(&self) -> Router {
        Router {
            cfg: self.cfg.clone(),
            proxy: Arc::new(self.proxy.worker()),
        }
    }

    /// Serves plain HTTP on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        slipway_serve::serve_fronted(
            listener,
            None,
            self.limits(),
            self.cfg.header_limits,
            shutdown,
            self.front("http", port),
        )
        .await
    }

    /// Serves HTTPS on `listener` until `shutdown` resolves, with `tls` (e.g.
    /// [`tls::CertStore::server_config`]). Dynos see `X-Forwarded-Proto: https` and the
    /// listener's port in `X-Forwarded-Port`.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        slipway_serve::serve_fronted(
            listener,
            Some(tls),
            self.limits(),
            self.cfg.header_limits,
            shutdown,
            self.front("https", port),
        )
        .await
    }

    fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.cfg.header_read_timeout,
            shutdown_grace: self.cfg.shutdown_grace,
        }
    }

    fn front(&self, scheme: &'static str, port: u16) -> Front {
        Front {
            proxy: self.proxy.clone(),
            scheme,
            port,
        }
    }
}

/// The router in front of hyper on each connection: HTTP/1.1 requests go the direct way
/// (`direct.rs`) until one needs hyper, which then serves the connection with a [`Service`].
struct Front {
    proxy: Arc<proxy::Proxy>,
    scheme: &'static str,
    port: u16,
}

impl Front {
    fn via(&self, peer: SocketAddr) -> proxy::Via {
        proxy::Via {
            peer_ip: proxy::peer_ip(peer),
            scheme: self.scheme,
            port: self.port,
        }
    }
}

impl slipway_serve::Front<Service> for Front {
    fn service(&self, peer: SocketAddr) -> Service {
        Service {
            proxy: self.proxy.clone(),
            via: self.via(peer),
        }
    }

    fn serve<I>(
        &self,
        io: I,
        peer: SocketAddr,
        stop: slipway_serve::Stop,
    ) -> impl Future<Output = Option<(slipway_serve::Rewind<I>, Service)>> + Send + 'static
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.proxy.clone();
        let via = self.via(peer);
        async move {
            let io = direct::serve(&proxy, &via, io, stop).await?;
            Some((io, Service { proxy, via }))
        }
    }
}

/// The router's service for one connection.
#[derive(Clone)]
pub struct Service {
    proxy: Arc<proxy::Proxy>,
    via: proxy::Via,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Service {
    type Response = http::Response<proxy::ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let via = self.via.clone();
        Box::pin(async move { Ok(proxy.handle(req, via).await) })
    }
}

/// A Host header without its port and trailing dot (`www.example.com.:8443` ->
/// `www.example.com`).
pub fn bare_host(host: &str) -> &str {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    host.strip_suffix('.').unwrap_or(host)
}

/// The app name in a Host header (`hello.localhost:8080` -> `hello`), if it is under `domain`.
pub fn app_from_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = bare_host(host);
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
