//! Draining: when an app's route moves to new dynos, requests already in flight to an old
//! dyno finish there, the router's in-flight count for it says when it is idle (what the dyno
//! manager waits for before SIGTERM), and client connections kept alive across the switch
//! simply reach the new dynos.

mod support;
use support::Table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_logs::LogHub;
use slipway_router::{serve, Drained, Drains, Resolution, Resolver, RouterConfig, Target};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A backend answering `name`; `/hold` answers only once `release` is notified.
async fn backend(name: &'static str, release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let release = release.clone();
                        async move {
                            if req.uri().path() == "/hold" {
                                release.notified().await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(name),
                            )))
                        }
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

async fn start_router(resolver: Arc<dyn Resolver>, drains: Drains) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = RouterConfig {
        request_timeout: Duration::from_secs(20),
        drains,
        ..RouterConfig::default()
    };
    tokio::spawn(serve(
        listener,
        cfg,
        resolver,
        LogHub::new(),
        std::future::pending::<()>(),
    ));
    addr
}

type Conn = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One client connection to the router, kept alive for every request sent on it.
async fn connect(router: SocketAddr) -> Conn {
    let stream = tokio::net::TcpStream::connect(router)
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn send(conn: &mut Conn, path: &str) -> (u16, String) {
    conn.ready().await.expect("connection still open");
    let req = hyper::Request::get(path)
        .header("host", "app.localhost")
        .body(Empty::new())
        .expect("request");
    let resp = conn.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits (up to 10 s) until `cond` holds, checking after each scheduler turn.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

#[tokio::test]
async fn an_in_flight_request_to_an_old_dyno_completes_after_the_route_switched() {
    let release_old = Arc::new(Notify::new());
    let old = backend("old", release_old.clone()).await;
    let new = backend("new", Arc::new(Notify::new())).await;
    let table = Arc::new(Table::default());
    table.set("app", up(&[("web.1", old)]));
    let drains = Drains::default();
    let router = start_router(table.clone(), drains.clone()).await;

    let mut kept_alive = connect(router).await;
    assert_eq!(send(&mut kept_alive, "/").await, (200, "old".to_string()));
    assert_eq!(
        drains.in_flight(old),
        0,
        "a finished request is not in flight"
    );

    let mut other = connect(router).await;
    let held = tokio::spawn(async move { send(&mut other, "/hold").await });
    until("the held request to reach the old dyno", || {
        drains.in_flight(old) == 1
    })
    .await;

    // The route moves to the new dyno (the dyno manager published a new snapshot).
    table.set("app", up(&[("web.1", new)]));
    let drained = {
        let drains = drains.clone();
        tokio::spawn(async move { drains.drained(old, Duration::from_secs(30)).await })
    };
    // The connection kept alive across the switch is not cut: its next request goes to the
    // new dyno.
    assert_eq!(send(&mut kept_alive, "/").await, (200, "new".to_string()));
    assert_eq!(
        drains.in_flight(old),
        1,
        "the held request is still in flight"
    );
    assert!(!drained.is_finished(), "the old dyno is not drained yet");

    release_old.notify_one();
    assert_eq!(
        held.await.expect("join"),
        (200, "old".to_string()),
        "the in-flight request finished on the old dyno"
    );
    assert_eq!(drained.await.expect("join"), Drained::Idle);
    assert_eq!(drains.in_flight(old), 0);
}

#[tokio::test]
async fn the_drain_gives_up_after_its_timeout_with_the_requests_still_in_flight() {
    let old = backend("old", Arc::new(Notify::new())).await;
    let table = Arc::new(Table::default());
    table.set("app", up(&[("web.1", old)]));
    let drains = Drains::default();
    let router = start_router(table.clone(), drains.clone()).await;
    let mut conn = connect(router).await;
    let _held = tokio::spawn(async move { send(&mut conn, "/hold").await });
    until("the held request to reach the dyno", || {
        drains.in_flight(old) == 1
    })
    .await;
    assert_eq!(
        drains.drained(old, Duration::from_millis(200)).await,
        Drained::TimedOut { in_flight: 1 }
    );
}

/// Resolves to a stopped dyno the first time and to a live one afterwards: the route moved
/// between the request's first resolve and its connect.
struct Moving {
    calls: AtomicUsize,
    gone: SocketAddr,
    live: SocketAddr,
}

impl Resolver for Moving {
    fn resolve(&self, _app: &str) -> Resolution {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let addr = if first { self.gone } else { self.live };
        Resolution::Found {
            app_id: "app-id".into(),
            target: Target::Up(vec![("web.1".into(), addr)]),
        }
    }
}

#[tokio::test]
async fn a_request_whose_dyno_stopped_before_it_connected_follows_the_new_route() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let live = backend("new", Arc::new(Notify::new())).await;
    let resolver = Arc::new(Moving {
        calls: AtomicUsize::new(0),
        gone,
        live,
    });
    let router = start_router(resolver.clone(), Drains::default()).await;
    let mut conn = connect(router).await;
    assert_eq!(send(&mut conn, "/").await, (200, "new".to_string()));
    assert!(resolver.calls.load(Ordering::SeqCst) >= 2);
}

/// Up web dynos by name and address.
fn up(backends: &[(&str, SocketAddr)]) -> Target {
    Target::Up(backends.iter().map(|(n, a)| (n.to_string(), *a)).collect())
}
