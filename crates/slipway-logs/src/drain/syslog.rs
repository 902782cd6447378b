//! Syslog frames as Logplex sends them, and delivery over TCP or TLS.
//!
//! A frame is RFC 5424 with octet counting (RFC 6587):
//! `LEN <PRI>1 TIMESTAMP HOST APP PROCID - MSG`, where HOST is the app's name, APP is `app` or
//! `heroku`, PROCID the dyno (`web.1`, `router`), and PRI is 190 (local7.info) for the app's
//! lines and 158 (local3.info) for the platform's.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Ctx, DrainError, IO_TIMEOUT};
use crate::{format_time, LogLine, Source};

/// One octet-counted RFC 5424 frame for `line` from the app `host`.
pub fn frame(host: &str, line: &LogLine) -> String {
    let pri = match line.source {
        Source::App => 190,
        Source::Heroku => 158,
    };
    let procid = if line.dyno.is_empty() {
        "-"
    } else {
        line.dyno.as_str()
    };
    let msg = format!(
        "<{pri}>1 {} {host} {} {procid} - {}",
        format_time(line.time),
        line.source.as_str(),
        line.message
    );
    format!("{} {msg}", msg.len())
}

/// Splits octet-counted frames off the front of `buf` (what a receiver reads): the complete
/// frames, and how many bytes they took. `Err` if the stream is not octet-counted.
pub fn parse_frames(buf: &[u8]) -> Result<(Vec<String>, usize), String> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(space) = rest.iter().position(|b| *b == b' ') else {
            if rest.len() > 10 {
                return Err(format!("no length prefix at byte {at}"));
            }
            return Ok((frames, at));
        };
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad length prefix at byte {at}"))?;
        let Some(frame) = rest.get(space + 1..space + 1 + len) else {
            return Ok((frames, at));
        };
        frames.push(String::from_utf8_lossy(frame).into_owned());
        at += space + 1 + len;
    }
}

pub(super) type Conn = Box<dyn AsyncStream>;

pub(super) async fn connect(
    host: &str,
    port: u16,
    tls: Option<&Option<Arc<rustls::ClientConfig>>>,
    target: &str,
) -> Result<Box<dyn AsyncStream>, DrainError> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| DrainError::Timeout {
            target: target.to_string(),
        })?
        .map_err(|source| DrainError::Connect {
            target: target.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let config = tls.clone().ok_or_else(|| DrainError::Tls {
        target: target.to_string(),
        reason: "TLS is unavailable on this server (see its log)".into(),
    })?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| DrainError::Tls {
            target: target.to_string(),
            reason: format!("{host:?} is not a valid server name: {e}"),
        })?;
    let stream = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| DrainError::Timeout {
        target: target.to_string(),
    })?
    .map_err(|e| DrainError::Tls {
        target: target.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Box::new(stream))
}

/// A byte stream to a drain: plain TCP or TLS.
pub(super) trait AsyncStream: tokio::io::AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

pub(super) async fn send(
    ctx: &Ctx,
    conn: &mut super::Conn,
    host: &str,
    port: u16,
    tls: bool,
    batch: &[Arc<LogLine>],
) -> Result<(), DrainError> {
    let target = ctx.spec.target.describe();
    if !matches!(conn, super::Conn::Syslog(_)) {
        let stream: Conn = connect(host, port, tls.then_some(&ctx.tls), &target).await?;
        *conn = super::Conn::Syslog(stream);
    }
    let super::Conn::Syslog(stream) = conn else {
        return Ok(());
    };
    let mut bytes = Vec::with_capacity(batch.len() * 128);
    for line in batch {
        bytes.extend_from_slice(frame(&ctx.app_name, line).as_bytes());
    }
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(IO_TIMEOUT, write)
        .await
        .map_err(|_| DrainError::Timeout {
            target: target.clone(),
        })?
        .map_err(|source| DrainError::Write { target, source })
}
