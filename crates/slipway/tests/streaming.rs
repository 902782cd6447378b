//! Large bodies stream through the router (issue 12): a 1 GiB upload and a 1 GiB download
//! through the real binary to a real app, every byte accounted for (count and SHA-256 on both
//! ends), and the server's peak resident memory (`VmHWM`, which the router shares with the
//! control plane) grows by far less than the body: nothing is buffered whole.

// Not every test file uses every helper the shared support module re-exports.
#[allow(unused_imports)]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::{wait_for, Server};

/// 1 GiB, as the issue says.
const TOTAL: u64 = 1 << 30;
/// Bytes per block; block `k` is the base pattern with `k` in its first 8 bytes, so a lost,
/// repeated or reordered block changes the checksum.
const BLOCK: usize = 1 << 20;
/// The bound on the server's peak RSS growth while 1 GiB goes each way.
const RSS_BOUND_KB: u64 = 100 * 1024;

/// `POST /upload` counts and hashes what it reads (Content-Length), then answers
/// `bytes=N sha256=HEX`; `GET /download/N` streams N bytes in the blocks the test expects.
const STREAM_APP: &str = r#"import hashlib, http.server, os
BLOCK = 1 << 20
BASE = bytes(range(256)) * (BLOCK // 256)
def block(k):
    b = bytearray(BASE)
    b[0:8] = k.to_bytes(8, "little")
    return b
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        left = int(self.headers["Content-Length"])
        h, n = hashlib.sha256(), 0
        while left > 0:
            chunk = self.rfile.read(min(left, BLOCK))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            left -= len(chunk)
        body = f"bytes={n} sha256={h.hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if not self.path.startswith("/download/"):
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")
            return
        n = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        k = 0
        while n > 0:
            b = block(k)[: min(n, BLOCK)]
            self.wfile.write(b)
            n -= len(b)
            k += 1
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn block(base: &[u8], k: u64) -> Vec<u8> {
    let mut b = base.to_vec();
    b[0..8].copy_from_slice(&k.to_le_bytes());
    b
}

fn base_block() -> Vec<u8> {
    (0..BLOCK).map(|i| (i % 256) as u8).collect()
}

/// The server's peak resident set (`VmHWM`, kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The server's current resident set (`VmRSS`, kB), or `None` once it is gone.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the server's `VmRSS` until `stop` is set and returns the highest seen: the
/// kernel updates `VmHWM` lazily, so a short peak may not show there.
fn sample_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut highest = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            highest = highest.max(rss_kb(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        highest
    })
}

/// Reads a response head from `reader`: (status, lowercased header lines).
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.router_port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    stream
}

#[test]
fn a_gigabyte_streams_up_and_down_through_the_router_with_flat_memory() {
    let server = Server::start();
    let repo = server.repo_with(
        "big-src",
        &[
            ("Procfile", "web: python3 server.py\n"),
            ("server.py", STREAM_APP),
        ],
    );
    server.cli_ok(&repo, &["apps:create", "big"]);
    server.git_ok(&repo, &["push", "slipway", "main"]);
    wait_for(90, "big to serve", || {
        (server.app_get("big", "/").0 == 200).then_some(())
    });
    let host = format!("big.localhost:{}", server.router_port);
    let base = base_block();
    let pid = server.pid();
    let before = peak_rss_kb(pid).max(rss_kb(pid).expect("server running"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_rss(pid, stop.clone());

    // Upload: 1 GiB with a Content-Length, written block by block.
    let mut stream = connect(&server);
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {TOTAL}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .expect("request head");
    let mut sent = Sha256::new();
    let blocks = TOTAL / BLOCK as u64;
    for k in 0..blocks {
        let b = block(&base, k);
        sent.update(&b);
        stream.write_all(&b).expect("upload block");
    }
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("upload answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer.trim(),
        format!("bytes={TOTAL} sha256={}", hex::encode(sent.finalize())),
        "the app did not get the bytes sent"
    );

    // Download: 1 GiB streamed back, read and hashed as it comes.
    let mut stream = connect(&server);
    write!(
        stream,
        "GET /download/{TOTAL} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request head");
    let mut reader = BufReader::with_capacity(BLOCK, stream);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200, "{headers:?}");
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.as_str());
    assert_eq!(length, Some(TOTAL.to_string().as_str()), "{headers:?}");
    let mut got = Sha256::new();
    let mut expected = Sha256::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = reader.read(&mut buf).expect("download");
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        received += n as u64;
    }
    for k in 0..blocks {
        expected.update(block(&base, k));
    }
    assert_eq!(received, TOTAL, "bytes downloaded");
    assert_eq!(got.finalize(), expected.finalize(), "download checksum");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.join().expect("sampler");
    let after = peak_rss_kb(pid).max(sampled);
    let grown = after.saturating_sub(before);
    eprintln!(
        "server peak RSS before {before} kB, during/after {after} kB (+{grown} kB; sampled {sampled} kB)"
    );
    assert!(
        grown < RSS_BOUND_KB,
        "the server's peak RSS grew by {grown} kB moving 1 GiB each way (bound {RSS_BOUND_KB} kB)"
    );
}
