//! Response bodies as the router passes them on: counting their bytes and reporting how
//! they ended, for the router log line.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a proxied response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
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
pub(crate) struct Counted {
    inner: Incoming,
    bytes: u64,
    end: Option<BodyEnd>,
    /// Heroku's rolling window: every frame from the dyno restarts it.
    idle_timeout: std::time::Duration,
    /// Made on the first wait only: most small responses arrive in one piece and never need it.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    on_done: Option<Box<dyn FnOnce(u64, BodyEnd) + Send + Sync>>,
}

impl Counted {
    pub(crate) fn new(
        inner: Incoming,
        idle_timeout: std::time::Duration,
        on_done: impl FnOnce(u64, BodyEnd) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            bytes: 0,
            end: None,
            idle_timeout,
            idle: None,
            on_done: Some(Box::new(on_done)),
        }
    }
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
