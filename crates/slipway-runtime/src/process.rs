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

/// Whether `pid` runs (is not a zombie) as a child of `parent`: a dyno's main process under
/// its monitor. Unlike [`pid_belongs_to_dyno`] this does not read its environment, which a
/// program may clear (`env -i`) or overwrite (setproctitle, as gunicorn does); a pid reused
/// by another process has another parent.
pub(crate) fn runs_as_child_of(pid: u32, parent: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    !matches!(state, None | Some("Z") | Some("X")) && ppid == Some(parent)
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
    #[test]
    fn a_child_runs_until_it_is_reaped_or_a_zombie() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("sleep");
        let (pid, me) = (child.id(), std::process::id());
        assert!(super::runs_as_child_of(pid, me));
        assert!(!super::runs_as_child_of(pid, me + 1), "another parent");
        assert!(!super::runs_as_child_of(me, me), "not its own child");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        // Dead and not reaped yet: a zombie.
        slipway_testkit::wait_for(10, "the child to be a zombie", || {
            (!super::runs_as_child_of(pid, me)).then_some(())
        });
        child.wait().expect("reap");
        assert!(!super::runs_as_child_of(pid, me), "reaped");
    }

    #[tokio::test]
    async fn pump_splits_lines_and_bounds_them() {
        let input: &[u8] = b"one\r\ntwo\nxxxxxxxxxx-tail";
        let mut lines = Vec::new();
        super::pump_lines(input, 4, |l| lines.push(l.to_string())).await;
        assert_eq!(lines, ["one", "two", "xxxx", "xxxx", "xx-t", "ail"]);
    }
}
