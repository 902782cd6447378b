//! Log drains: each app's lines delivered, as Logplex does, to
//!
//! - `syslog://host:port`: RFC 5424 over TCP with octet counting,
//! - `syslog+tls://host:port`: the same over TLS (the certificate is verified),
//! - `https://...` (and `http://` to a loopback address, for tests): batched POSTs with
//!   `Content-Type: application/logplex-1`, `Logplex-Msg-Count`, `Logplex-Frame-Id` and
//!   `Logplex-Drain-Token` headers, the body being octet-counted syslog frames.
//!
//! Each drain has its own task and a bounded queue ([`DRAIN_BUFFER`] lines): the hub offers it
//! each line without waiting, so a slow or dead drain never slows the app, a tail or another
//! drain. Lines that do not fit are counted and reported in the app's stream as `Error L10`.
//! A drain that fails reconnects with a growing delay (1 s doubling to 60 s) and retries the
//! batch it held.

mod http;
mod syslog;
pub(crate) mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use url::Url;

use crate::{Dropped, LogLine};

pub use syslog::{frame, parse_frames};

/// Lines waiting for one drain before new ones are dropped (Logplex buffers 1,024).
pub const DRAIN_BUFFER: usize = 1024;
/// Most lines per POST (HTTPS) or per write (syslog).
const MAX_BATCH: usize = 500;
/// Longest drain URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a connection, a TLS handshake, a write or a POST may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("drain URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("connecting to drain {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS to drain {target}: {reason}")]
    Tls { target: String, reason: String },
    #[error("writing to drain {target}: {source}")]
    Write {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("drain {target} did not answer within {0:?}", IO_TIMEOUT)]
    Timeout { target: String },
    #[error("drain {target} answered HTTP {status}")]
    Status { target: String, status: u16 },
    #[error("HTTP to drain {target}: {reason}")]
    Http { target: String, reason: String },
}

/// Where a drain sends, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainTarget {
    Syslog { host: String, port: u16, tls: bool },
    Http { url: Url },
}

fn bad(url: &str, reason: impl Into<String>) -> DrainError {
    DrainError::BadUrl {
        url: url.chars().take(200).collect(),
        reason: reason.into(),
    }
}

impl DrainTarget {
    /// Parses a drain URL: `syslog://host:port`, `syslog+tls://host:port`, `https://...`, or
    /// `http://` to a loopback address.
    pub fn parse(raw: &str) -> Result<Self, DrainError> {
        if raw.len() > MAX_URL_BYTES {
            return Err(bad(raw, format!("longer than {MAX_URL_BYTES} bytes")));
        }
        let url = Url::parse(raw).map_err(|e| bad(raw, e.to_string()))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad(raw, "it names no host")),
        };
        match url.scheme() {
            "syslog" | "syslog+tls" => {
                let port = url
                    .port()
                    .ok_or_else(|| bad(raw, "a syslog drain needs a port (syslog://host:port)"))?;
                Ok(DrainTarget::Syslog {
                    host,
                    port,
                    tls: url.scheme() == "syslog+tls",
                })
            }
            "https" => Ok(DrainTarget::Http { url }),
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if loopback {
                    Ok(DrainTarget::Http { url })
                } else {
                    Err(bad(
                        raw,
                        "plain http:// drains are only for loopback addresses; use https://",
                    ))
                }
            }
            other => Err(bad(
                raw,
                format!("unknown scheme {other:?}; use syslog://, syslog+tls:// or https://"),
            )),
        }
    }

    /// `host:port` or the URL without credentials, for messages.
    pub fn describe(&self) -> String {
        match self {
            DrainTarget::Syslog { host, port, tls } => {
                format!("syslog{}://{host}:{port}", if *tls { "+tls" } else { "" })
            }
            DrainTarget::Http { url } => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                shown.to_string()
            }
        }
    }
}

/// A drain as the hub runs it.
#[derive(Debug, Clone)]
pub struct DrainSpec {
    /// The drain's id (a UUID).
    pub id: String,
    pub target: DrainTarget,
    /// Sent as `Logplex-Drain-Token` (`d.<uuid>`), so a receiver can tell drains apart.
    pub token: String,
}

/// What a drain has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub delivered: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// What the delivery task needs.
struct Ctx {
    app_name: String,
    spec: DrainSpec,
    tls: Option<Arc<rustls::ClientConfig>>,
    counters: Arc<Counters>,
}

/// A running drain: its queue and task (stopped when the handle is dropped).
pub(crate) struct Handle {
    id: String,
    tx: mpsc::Sender<Arc<LogLine>>,
    dropped: Dropped,
    counters: Arc<Counters>,
    task: Option<tokio::task::AbortHandle>,
}

impl Handle {
    pub fn start(spec: DrainSpec, app_name: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let (tx, rx) = mpsc::channel(DRAIN_BUFFER);
        let counters = Arc::new(Counters::default());
        let id = spec.id.clone();
        let span = tracing::info_span!("log_drain", drain = %id, app = %app_name, target = %spec.target.describe());
        let ctx = Ctx {
            app_name: app_name.to_string(),
            spec,
            tls,
            counters: counters.clone(),
        };
        let task = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(
                rt.spawn(tracing::Instrument::instrument(deliver(ctx, rx), span))
                    .abort_handle(),
            ),
            Err(_) => {
                tracing::error!(drain = %id, "no async runtime: the log drain cannot run");
                None
            }
        };
        Self {
            id,
            tx,
            dropped: Dropped::default(),
            counters,
            task,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues a line without waiting; counts it as dropped if the queue is full.
    pub fn offer(&mut self, line: Arc<LogLine>, now: DateTime<Utc>) {
        if self.tx.try_send(line).is_err() {
            self.dropped.add(now);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn take_report(&mut self, force: bool) -> Option<String> {
        self.dropped.take_report(force)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A connection to a drain, kept between batches.
enum Conn {
    None,
    Syslog(syslog::Conn),
    Http(http::Conn),
}

async fn deliver(ctx: Ctx, mut rx: mpsc::Receiver<Arc<LogLine>>) {
    let mut batch: Vec<Arc<LogLine>> = Vec::with_capacity(MAX_BATCH);
    let mut conn = Conn::None;
    let mut backoff = Duration::ZERO;
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(line) => batch.push(line),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
        }
        let sent = match &ctx.spec.target {
            DrainTarget::Syslog { host, port, tls } => {
                syslog::send(&ctx, &mut conn, host, *port, *tls, &batch).await
            }
            DrainTarget::Http { url } => http::send(&ctx, &mut conn, url, &batch).await,
        };
        match sent {
            Ok(()) => {
                ctx.counters
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                backoff = Duration::ZERO;
            }
            Err(e) => {
                conn = Conn::None;
                backoff = (backoff * 2).max(Duration::from_secs(1)).min(MAX_BACKOFF);
                tracing::warn!(error = %e, retry_in = ?backoff, "log drain failed; retrying");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
