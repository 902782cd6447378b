//! The byte tunnel behind an HTTP/1.1 upgrade (WebSockets): client and dyno connected both
//! ways, closed after the router's idle window passes with no traffic in either direction
//! (Heroku's 55 s rolling window, reset by every read on either side).
//!
//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT: `:method CONNECT`, `:protocol
//! websocket`) use the same tunnel: dynos speak HTTP/1.1, so the router asks the dyno for an
//! ordinary `Upgrade: websocket` (with a key of its own: h2 has none), and answers the
//! client's stream with 200 once the dyno said 101; the h2 stream is then the client's side.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Whether `req` is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441).
pub(crate) fn is_h2_websocket<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an h2 WebSocket CONNECT's head into the HTTP/1.1 opening handshake a dyno expects:
/// `GET` with `Sec-WebSocket-Key` (a fresh one: RFC 8441 drops the key) and
/// `Sec-WebSocket-Version: 13` unless the client sent one. The caller adds `Connection` and
/// `Upgrade`.
pub(crate) fn h2_websocket_to_h1(method: &mut http::Method, headers: &mut HeaderMap) {
    *method = http::Method::GET;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    if !headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
}

/// The dyno's 101 as the answer to an h2 CONNECT: 200, without the HTTP/1.1 handshake's
/// connection-specific headers (`Sec-WebSocket-Accept` answers the router's key, not the
/// client's).
pub(crate) fn h1_switch_to_h2_answer(parts: &mut http::response::Parts) {
    parts.status = http::StatusCode::OK;
    parts.version = http::Version::HTTP_2;
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(name);
    }
}

/// Waits for both sides to finish the upgrade, then copies bytes both ways until either side
/// closes or nothing moves for `idle`.
pub(crate) async fn run(client: OnUpgrade, dyno: OnUpgrade, idle: Duration) {
    let (client, dyno) = match tokio::try_join!(client, dyno) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        io: TokioIo::new(client),
        base,
        last: last.clone(),
    };
    let mut dyno = Watched {
        io: TokioIo::new(dyno),
        base,
        last: last.clone(),
    };
    let watch = async {
        loop {
            let deadline = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut dyno) => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection failed"),
        },
        () = watch => tracing::debug!("upgraded connection idle: closed"),
    }
}

/// A stream that records, as milliseconds since `base`, when it last read any bytes.
struct Watched<T> {
    io: T,
    base: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.fetch_max(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
