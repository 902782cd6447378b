//! Drives a fixed number of requests through the router in one process, for counting the
//! instructions a request costs (`valgrind --tool=callgrind`), which stays repeatable when
//! the machine is busy, unlike requests per second:
//!
//!   cargo build --release -p slipway-router --example per_request
//!   valgrind --tool=callgrind target/release/examples/per_request 127.0.0.1:PORT 20000 [close]
//!
//! PORT is an HTTP server standing in for the dyno (bench/router.sh's nginx dyno, say). The
//! client here sends its requests one at a time on one keep-alive connection (`close`: a new
//! connection per request); its own instructions are the same from one build to the next.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use slipway_logs::LogHub;
use slipway_router::{Resolution, Resolver, Router, RouterConfig, Target};

struct One(SocketAddr);

impl Resolver for One {
    fn resolve(&self, _app: &str) -> Resolution {
        Resolution::Found {
            app_id: "bench-id".into(),
            target: Target::Up(vec![("web.1".into(), self.0)]),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dyno: SocketAddr = args
        .next()
        .ok_or("usage: per_request DYNO_ADDR N [close]")?
        .parse()?;
    let n: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let close = args.next().as_deref() == Some("close");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let router = Router::new(RouterConfig::default(), Arc::new(One(dyno)), LogHub::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        runtime.block_on(router.serve(listener, async {
            let _ = stop_rx.await;
        }))
    });
    let request = if close {
        "GET / HTTP/1.1\r\nHost: bench.localhost\r\nConnection: close\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nHost: bench.localhost\r\n\r\n"
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        let stream = match conn.take() {
            Some(stream) => stream,
            None => TcpStream::connect(addr)?,
        };
        let mut stream = stream;
        stream.write_all(request.as_bytes())?;
        // The bench dyno's answer is small: its head and body come in one read or two.
        let mut got = Vec::new();
        loop {
            let read = stream.read(&mut buf)?;
            if read == 0 {
                break;
            }
            got.extend_from_slice(&buf[..read]);
            if complete(&got) {
                break;
            }
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            return Err(format!("unexpected answer: {}", String::from_utf8_lossy(&got)).into());
        }
        if !close {
            conn = Some(stream);
        }
    }
    drop(conn);
    let _ = stop_tx.send(());
    server.join().map_err(|_| "the router thread panicked")??;
    Ok(())
}

/// Whether `got` holds a whole response with a Content-Length body.
fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    got.len() >= end + 4 + length
}
