//! Drives router-like lines through a [`Batcher`] into a [`LogHub`] that keeps history on disk,
//! and waits until the disk writer has them all: the per-line path a busy router pays for.
//!
//! Measure it with callgrind, once with the lines written and once without, and divide the
//! difference by the number of lines:
//!
//! ```sh
//! cargo build --release -p slipway-logs --example router_lines
//! valgrind --tool=callgrind target/release/examples/router_lines 100000
//! valgrind --tool=callgrind target/release/examples/router_lines 100000 --no-write
//! ```
//!
//! Both runs make the same messages first, so the difference is what the log path costs.

use slipway_logs::{HubConfig, LogHub, Source};

const APP: &str = "0a1b2c3d-0000-4000-8000-00000000abcd";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("usage: router_lines [LINES] [--no-write] (not {0:?})")]
    Usage(String),
    #[error("making a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("opening the hub: {0}")]
    Open(#[source] slipway_logs::StoreError),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("wanted {wanted} lines of history, found {kept} ({dropped} drop reports)")]
    Lost {
        wanted: usize,
        kept: usize,
        dropped: usize,
    },
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let lines: usize = match args.next() {
        None => 100_000,
        Some(n) => n.parse().map_err(|_| Error::Usage(n))?,
    };
    let write = match args.next().as_deref() {
        None => true,
        Some("--no-write") => false,
        Some(other) => return Err(Error::Usage(other.to_string())),
    };
    let dir = tempfile::tempdir().map_err(Error::TempDir)?;
    let hub = LogHub::open(HubConfig {
        dir: Some(dir.path().to_path_buf()),
        // Room for every line: a drop would make the runs do different work.
        disk_queue: lines + 1024,
        ..HubConfig::default()
    })
    .map_err(Error::Open)?;
    let messages = messages(lines);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async {
        if write {
            let batcher = hub.batcher();
            for message in messages {
                batcher.write(APP.to_string(), Source::Heroku, "router", message);
            }
            batcher.flush();
        } else {
            drop(messages);
        }
        hub.flush().await;
    });
    // Every line made it to disk: a dropped one would have been reported in the stream.
    let history = hub.history(APP, &slipway_logs::Filter::default(), usize::MAX);
    let dropped = history.iter().filter(|l| l.dyno == "logplex").count();
    let wanted = if write {
        lines.min(slipway_logs::HISTORY_LINES)
    } else {
        0
    };
    if dropped != 0 || history.len() != wanted {
        return Err(Error::Lost {
            wanted,
            kept: history.len(),
            dropped,
        });
    }
    Ok(())
}

/// Lines as the router writes them (`at=info method=... path=... host=...`), made up front.
#[inline(never)]
fn messages(lines: usize) -> Vec<String> {
    (0..lines)
        .map(|i| {
            format!(
                "at=info method=GET path=\"/items/{i}?page=2\" host=\"myapp.example.com\" \
                 request_id=\"8c6b1e9a-3f2d-4c5b-9a7e-{i:012}\" fwd=\"203.0.113.7\" dyno=web.{} \
                 connect=0ms service={}ms status=200 bytes=1234 protocol=http",
                i % 4 + 1,
                i % 37
            )
        })
        .collect()
}
