//! OS side of a dyno: spawning its process group, signalling it, reading its output.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Sends `signal` to the whole process group the dyno leads (its shell and everything it
/// started). Errors (the group is already gone) are ignored.
pub(crate) fn kill_group(pid: i32, signal: Signal) {
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Whether `pid` is still the process of dyno `dyno_id`: its environment carries
/// `SLIPWAY_DYNO_ID=<id>`. Guards against signalling a pid the system has reused.
pub fn pid_belongs_to_dyno(pid: i64, dyno_id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("SLIPWAY_DYNO_ID={dyno_id}");
    environ
        .split(|b| *b == 0)
        .any(|var| var == wanted.as_bytes())
}

/// Reads `reader` to its end, calling `line` for each line (for output piped to the server:
/// dynos started with [`crate::DynoBackend::start`]). Lines longer than `max` bytes are
/// cut into pieces of at most `max`, so a process that never writes a newline cannot make the
/// server buffer without bound.
#[allow(dead_code)]
pub(crate) async fn pump_lines<R: AsyncRead + Unpin>(
    mut reader: R,
    max: usize,
    mut line: impl FnMut(&str),
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(pos + 1);
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            line(&String::from_utf8_lossy(&buf));
            buf = rest;
        }
        while buf.len() >= max {
            let rest = buf.split_off(max);
            line(&String::from_utf8_lossy(&buf));
            buf = rest;
        }
    }
    if !buf.is_empty() {
        line(&String::from_utf8_lossy(&buf));
    }
}

/// A free port on 127.0.0.1 for a web dyno. The listener is closed before the dyno binds it,
/// so another process could take it in between; the boot check would then report R10.
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn pump_splits_lines_and_bounds_them() {
        let input: &[u8] = b"one\r\ntwo\nxxxxxxxxxx-tail";
        let mut lines = Vec::new();
        super::pump_lines(input, 4, |l| lines.push(l.to_string())).await;
        assert_eq!(lines, ["one", "two", "xxxx", "xxxx", "xx-t", "ail"]);
    }
}
