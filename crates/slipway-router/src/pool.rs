//! Keep-alive connections to dynos, one pool per router worker.
//!
//! Each router worker (one thread, one runtime) has its own pool, so a request and the
//! dyno connection it goes out on live on the same thread: no lock is ever contended and no
//! request crosses threads. A connection is taken out of the pool for one request and goes
//! back only once its response body was read to the end (`Checkout::put_back`); a response
//! the client walked away from closes its connection instead, so a half-read response can
//! never be mistaken for the next one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use hyper::body::Incoming;

use crate::addr_map::AddrMap;

/// Idle connections kept per dyno address and worker.
const MAX_IDLE_PER_DYNO: usize = 256;
/// An idle connection older than this is closed rather than reused (hyper's client default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Addresses beyond this many trigger a sweep of closed connections (bounded memory).
const SWEEP_AT: usize = 256;
/// Idle connections are also swept this often (when one is put back): those to dynos that
/// have stopped since go, rather than wait out the idle timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Sender = SendRequest<Incoming>;

#[derive(Default)]
pub(crate) struct Pool {
    idle: Idle<Sender>,
}

/// A dyno connection that can wait in an [`Idle`] set.
pub(crate) trait Reusable {
    /// Closed, or otherwise no longer fit for a request.
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// One worker's idle keep-alive connections to dynos, by address, newest last.
pub(crate) struct Idle<C> {
    map: Mutex<IdleMap<C>>,
}

struct IdleMap<C> {
    by_addr: AddrMap<Vec<(Instant, C)>>,
    swept: Instant,
}

impl<C> Default for Idle<C> {
    fn default() -> Self {
        Self {
            map: Mutex::new(IdleMap {
                by_addr: AddrMap::default(),
                swept: Instant::now(),
            }),
        }
    }
}

impl<C: Reusable> Idle<C> {
    /// The newest idle connection to `addr` that is not known to be closed or too old.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<C> {
        let mut idle = self.lock();
        let list = idle.by_addr.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((since, conn)) = list.pop() {
            if !conn.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    pub(crate) fn put(&self, addr: SocketAddr, conn: C) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let now = Instant::now();
        let crowded = idle.by_addr.len() >= SWEEP_AT && !idle.by_addr.contains_key(&addr);
        if crowded || now.duration_since(idle.swept) >= SWEEP_EVERY {
            idle.swept = now;
            idle.by_addr.retain(|_, list| {
                list.retain(|(since, c)| {
                    now.duration_since(*since) < IDLE_TIMEOUT && !c.is_closed()
                });
                !list.is_empty()
            });
        }
        let list = idle.by_addr.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_DYNO {
            list.push((Instant::now(), conn));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap<C>> {
        // The map holds only connections; a panic elsewhere cannot leave it inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection out of the pool for one request.
pub(crate) struct Checkout {
    pub(crate) sender: Sender,
    /// It served requests before: a failure before any response byte may mean the dyno
    /// closed it while idle, and the request deserves a fresh connection.
    pub(crate) reused: bool,
    addr: SocketAddr,
    pool: Arc<Pool>,
}

/// Why no connection could be had.
pub(crate) enum ConnectError {
    /// Nothing of the request was sent: another dyno may take it.
    Refused(crate::body::BoxError),
    /// The connection was made but the HTTP handshake failed.
    Failed(crate::body::BoxError),
}

impl Pool {
    /// An idle connection to `addr` that is still open, else a new one.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Checkout, ConnectError> {
        while let Some(mut sender) = self.take_idle(addr) {
            // Ready at once unless the connection is still finishing its last response.
            if sender.ready().await.is_ok() {
                return Ok(Checkout {
                    sender,
                    reused: true,
                    addr,
                    pool: self.clone(),
                });
            }
        }
        self.connect(addr, connect_timeout).await
    }

    /// A new connection to `addr`, driven by a task on the current runtime.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Checkout, ConnectError> {
        let stream = dial(addr, connect_timeout)
            .await
            .map_err(ConnectError::Refused)?;
        let (sender, conn) = http1::Builder::new()
            // A request's head and its first body bytes in one buffer, one write(2).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Failed(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %addr, "dyno connection ended with an error");
            }
        });
        Ok(Checkout {
            sender,
            reused: false,
            addr,
            pool: self.clone(),
        })
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Sender> {
        self.idle.take(addr)
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        self.idle.put(addr, sender);
    }
}

/// A new TCP connection to the dyno at `addr` (no delay: a request goes out as written), or
/// why there is none: refused, or not accepted within `timeout`. Nothing was sent either way.
pub(crate) async fn dial(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, crate::body::BoxError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err("connect timed out".into()),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection whose request is sent, waiting for its response body to be read through.
pub(crate) struct Lent {
    sender: Sender,
    addr: SocketAddr,
    pool: Arc<Pool>,
}

impl Checkout {
    /// The request went out; the connection goes back with [`Lent::put_back`] once the
    /// response was read to the end.
    pub(crate) fn lend(self) -> Lent {
        Lent {
            sender: self.sender,
            addr: self.addr,
            pool: self.pool,
        }
    }
}

impl Lent {
    pub(crate) fn put_back(self) {
        self.pool.put(self.addr, self.sender);
    }
}
