//! HTTPS drains: each batch is one POST, as Logplex sends it:
//! `Content-Type: application/logplex-1`, `Logplex-Msg-Count: N`, `Logplex-Frame-Id: <uuid>`,
//! `Logplex-Drain-Token: d.<uuid>`, `User-Agent: Logplex/slipway`, body = N octet-counted
//! syslog frames. Credentials in the URL (`https://user:pass@host/`) go as Basic auth. Any
//! answer but 2xx is a failure and the batch is retried after the backoff.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use url::Url;

use super::{syslog, Ctx, DrainError, IO_TIMEOUT};
use crate::LogLine;

pub(super) type Conn = SendRequest<Full<Bytes>>;

/// Most bytes of a drain's answer read (and thrown away).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

async fn connect(ctx: &Ctx, url: &Url, target: &str) -> Result<Conn, DrainError> {
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let tls = url.scheme() == "https";
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let stream = syslog::connect(host, port, tls.then_some(&ctx.tls), target).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DrainError::Http {
            target: target.to_string(),
            reason: e.to_string(),
        })?;
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "drain connection closed");
            }
        },
        tracing::Span::current(),
    ));
    Ok(sender)
}

pub(super) async fn send(
    ctx: &Ctx,
    conn: &mut super::Conn,
    url: &Url,
    batch: &[Arc<LogLine>],
) -> Result<(), DrainError> {
    let target = ctx.spec.target.describe();
    let ready = matches!(conn, super::Conn::Http(s) if !s.is_closed());
    if !ready {
        *conn = super::Conn::Http(connect(ctx, url, &target).await?);
    }
    let super::Conn::Http(sender) = conn else {
        return Ok(());
    };
    let http_err = |e: &dyn std::fmt::Display| DrainError::Http {
        target: target.clone(),
        reason: e.to_string(),
    };
    let mut body = Vec::with_capacity(batch.len() * 128);
    for line in batch {
        body.extend_from_slice(syslog::frame(&ctx.app_name, line).as_bytes());
    }
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let mut request = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/logplex-1")
        .header(http::header::USER_AGENT, "Logplex/slipway")
        .header("Logplex-Msg-Count", batch.len().to_string())
        .header("Logplex-Frame-Id", uuid::Uuid::new_v4().to_string())
        .header("Logplex-Drain-Token", ctx.spec.token.as_str())
        .header(http::header::CONTENT_LENGTH, body.len().to_string());
    if !url.username().is_empty() {
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or(""));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request = request.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http_err(&e))?;
    let exchange = async {
        sender.ready().await.map_err(|e| http_err(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_err(&e))?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can carry the next batch.
        let mut body = response.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_err(&e))?;
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > MAX_ANSWER_BYTES {
                    return Err(http_err(&"the answer is too long"));
                }
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(DrainError::Status {
                target: target.clone(),
                status: status.as_u16(),
            })
        }
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| DrainError::Timeout {
            target: target.clone(),
        })?
}

/// `%XX` decoding for URL credentials (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
