//! `run`, `run:detached`: one-off dynos.
//!
//! `run` creates the dyno with `attach: true`, then opens the `attach_url` on the API's
//! listener with an HTTP/1.1 upgrade (`Upgrade: slipway-attach`); from the `101` on, the
//! connection carries the command's terminal (or stdin and its output) both ways, and ends
//! with the line `\u{FFFF} heroku-command-exit-status: N`, which is stripped: `slipway run`
//! exits with N (Heroku needs `--exit-code` for that; here it is the default).
//!
//! When stdin and stdout are terminals, the dyno gets a pseudo-terminal of this window's
//! size (sent as `COLUMNS`/`LINES`, with `TERM`), the local terminal is put in raw mode (so
//! Ctrl-C and every key go to the command) and restored on exit, and window changes are sent
//! to `POST /apps/A/dynos/D/actions/resize`. Otherwise plain pipes: stdin is forwarded and
//! its end closes the command's stdin, so `run` scripts.
//!
//! Arguments: one argument is a shell line as given (`slipway run 'echo $HOME'`); several are
//! quoted for the shell where needed, so `slipway run -- sh -c 'exit 42'` runs what it says.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::fd::AsFd;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Client;

const EXIT_MARKER: &[u8] = "\u{FFFF} heroku-command-exit-status: ".as_bytes();
/// Largest response head accepted from the attach endpoint.
const MAX_HEAD: usize = 16 * 1024;

/// What `run` and `run:detached` take besides the app.
pub struct RunOptions {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub size: Option<String>,
    pub ttl: Option<u64>,
    pub no_tty: bool,
}

/// The shell line for `args`.
pub fn command_line(args: &[String]) -> String {
    if args.len() == 1 {
        return args[0].clone();
    }
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn env_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!(
                "--env takes KEY=VALUE, got {:?}",
                pair.split('=').next().unwrap_or("")
            );
        };
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

fn body(opts: &RunOptions, kind: &str, env: BTreeMap<String, String>, tty: bool) -> Value {
    let mut body = json!({
        "command": command_line(&opts.command),
        "attach": kind == "run",
        "type": kind,
        "env": env,
        "force_no_tty": !tty,
    });
    if let Some(size) = &opts.size {
        body["size"] = json!(size);
    }
    if let Some(ttl) = opts.ttl {
        body["time_to_live"] = json!(ttl);
    }
    body
}

pub async fn detached(c: &Client, app: &str, opts: RunOptions) -> anyhow::Result<()> {
    if opts.command.is_empty() {
        bail!("say what to run: slipway run:detached COMMAND");
    }
    let env = env_pairs(&opts.env)?;
    let dyno = c
        .send(
            c.request(Method::POST, &format!("/apps/{app}/dynos"))
                .json(&body(&opts, "run:detached", env, false)),
        )
        .await?;
    let name = dyno["name"].as_str().unwrap_or("");
    eprintln!(
        "Running `{}` on {app}... up, {name}",
        command_line(&opts.command)
    );
    eprintln!("Run `slipway logs --app {app} --dyno {name} --tail` to see its output.");
    println!("{name}");
    Ok(())
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Runs the command attached; returns its exit status.
pub async fn attached(c: &Client, app: &str, opts: RunOptions) -> anyhow::Result<i32> {
    if opts.command.is_empty() {
        bail!("say what to run: slipway run COMMAND (e.g. slipway run bash)");
    }
    let tty = !opts.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut env = env_pairs(&opts.env)?;
    if tty {
        // A terminal that does not know its size (0x0) gets the classic 80x24.
        let (cols, rows) = window_size().unwrap_or((80, 24));
        env.insert("COLUMNS".into(), cols.to_string());
        env.insert("LINES".into(), rows.to_string());
        if let Ok(term) = std::env::var("TERM") {
            env.entry("TERM".into()).or_insert(term);
        }
    }
    let dyno = c
        .send(
            c.request(Method::POST, &format!("/apps/{app}/dynos"))
                .json(&body(&opts, "run", env, tty)),
        )
        .await?;
    let name = dyno["name"].as_str().unwrap_or("").to_string();
    let url = dyno["attach_url"]
        .as_str()
        .context("the API gave no attach_url for the one-off dyno")?;
    eprintln!(
        "Running `{}` on {app}... up, {name}",
        command_line(&opts.command)
    );
    let (stream, early) = connect(url).await?;
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty {
        spawn_resizer(c.clone(), app.to_string(), name);
    }
    let (mut from_dyno, mut to_dyno) = stream.into_split();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_dyno.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // End of input: the command's stdin is closed.
        let _ = to_dyno.shutdown().await;
    });
    let mut out = tokio::io::stdout();
    let mut pending = early;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(pos) = find(&pending, EXIT_MARKER) {
            out.write_all(&pending[..pos]).await?;
            out.flush().await?;
            let mut rest = pending[pos + EXIT_MARKER.len()..].to_vec();
            while !rest.contains(&b'\n') && rest.len() < 16 {
                let n = from_dyno.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&rest);
            let code = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i32>().ok())
                .context("the one-off's exit status line is garbled")?;
            return Ok(code);
        }
        // Keep what could be the start of the marker; print the rest.
        let keep = EXIT_MARKER.len().min(pending.len());
        let cut = pending.len() - keep;
        if cut > 0 {
            out.write_all(&pending[..cut]).await?;
            out.flush().await?;
            pending.drain(..cut);
        }
        let n = from_dyno.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            out.write_all(&pending).await?;
            out.flush().await?;
            bail!("the connection to the one-off dyno ended before its exit status arrived");
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens the attach URL with an HTTP/1.1 upgrade. Returns the stream and any bytes that came
/// after the response head.
async fn connect(url: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad attach_url {url}"))?;
    if parsed.scheme() != "http" {
        bail!(
            "attach_url {} uses {}, which this client does not speak",
            parsed.path(),
            parsed.scheme()
        );
    }
    let host = parsed.host_str().context("attach_url without a host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let mut stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port} to attach"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: slipway-attach\r\n\r\n",
        parsed.path()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(pos) = find(&head, b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > MAX_HEAD {
            bail!("the attach endpoint sent an oversized response head");
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the API closed the attach connection before answering");
        }
        head.extend_from_slice(&buf[..n]);
    };
    let status_line = String::from_utf8_lossy(&head[..end]);
    let status_line = status_line.lines().next().unwrap_or("").to_string();
    if !status_line.contains(" 101 ") {
        let mut rest = head[end..].to_vec();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            (&mut stream).take(64 * 1024).read_to_end(&mut rest),
        )
        .await;
        let body: Value = serde_json::from_slice(&rest).unwrap_or(Value::Null);
        let message = body["message"].as_str().unwrap_or(status_line.as_str());
        bail!("could not attach to the one-off dyno: {message}");
    }
    Ok((stream, head[end..].to_vec()))
}

/// Sends window size changes to the API while the command runs.
fn spawn_resizer(c: Client, app: String, dyno: String) {
    tokio::spawn(async move {
        let Ok(mut changes) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while changes.recv().await.is_some() {
            if let Some((cols, rows)) = window_size() {
                let _ = c
                    .send(
                        c.request(
                            Method::POST,
                            &format!("/apps/{app}/dynos/{dyno}/actions/resize"),
                        )
                        .json(&json!({ "cols": cols, "rows": rows })),
                    )
                    .await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::command_line;

    #[test]
    fn one_argument_is_a_shell_line_several_are_quoted() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&v(&["echo $HOME"])), "echo $HOME");
        assert_eq!(
            command_line(&v(&["sh", "-c", "exit 42"])),
            "sh -c 'exit 42'"
        );
        assert_eq!(command_line(&v(&["echo", "it's"])), "echo 'it'\\''s'");
    }
}
