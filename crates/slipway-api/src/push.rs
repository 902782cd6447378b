//! Pushes in progress and the grants their pre-receive hooks use.
//!
//! When `git receive-pack` starts for a push, the server reads the ref updates the client asks
//! for (the pkt-lines at the start of the request, before the pack) and grants the push a
//! random token, bound to the app and to exactly those updates. The pre-receive hook presents
//! the token once, naming the commit it builds; the grant is then spent: a second use (say, by
//! a process that read the token from receive-pack's environment) is refused, as is a commit
//! the push did not carry. The grant ends when receive-pack exits, and with it any build lock
//! the push still holds; a build still running for it is cancelled (`PushGrant::ended`): a
//! client that hangs up mid-build ends its receive-pack (`git.rs`), and so its build.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The ref-update commands of one push are at most this long (git sends one line per ref).
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;
/// A backstop: a grant whose receive-pack never reported its exit dies after this long.
const MAX_GRANT_AGE: Duration = Duration::from_secs(6 * 3600);

/// One ref update of a push: `old new refname`, object ids in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub refname: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandsError {
    #[error("the push's ref updates are longer than {MAX_COMMAND_BYTES} bytes")]
    TooLarge,
    #[error("the push request is not in git's pkt-line format")]
    Malformed,
    #[error("reading the push request failed: {0}")]
    Read(String),
}

/// What parsing the start of a request found so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// The flush packet was reached: the commands are complete.
    Complete(Vec<RefUpdate>),
    NeedMore,
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses the pkt-lines at the start of `buf` up to the first flush packet.
fn parse_commands(buf: &[u8]) -> Result<Parsed, CommandsError> {
    let mut updates = Vec::new();
    let mut pos = 0;
    loop {
        let Some(len_hex) = buf.get(pos..pos + 4) else {
            return Ok(Parsed::NeedMore);
        };
        let len_hex = std::str::from_utf8(len_hex).map_err(|_| CommandsError::Malformed)?;
        let len = usize::from_str_radix(len_hex, 16).map_err(|_| CommandsError::Malformed)?;
        if len == 0 {
            return Ok(Parsed::Complete(updates));
        }
        if len < 4 {
            return Err(CommandsError::Malformed);
        }
        let Some(payload) = buf.get(pos + 4..pos + len) else {
            return Ok(Parsed::NeedMore);
        };
        pos += len;
        let line = payload.strip_suffix(b"\n").unwrap_or(payload);
        // The first command carries the capabilities after a NUL.
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let line = std::str::from_utf8(line).map_err(|_| CommandsError::Malformed)?;
        if line.starts_with("shallow ") {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(old), Some(new), Some(refname), None)
                if is_object_id(old) && is_object_id(new) =>
            {
                updates.push(RefUpdate {
                    old: old.to_string(),
                    new: new.to_string(),
                    refname: refname.to_string(),
                })
            }
            _ => return Err(CommandsError::Malformed),
        }
    }
}

/// Reads the ref-update commands from the start of a receive-pack request body. Returns them
/// and every byte read, which must still be given to git before the rest of the body.
pub async fn read_commands<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Vec<RefUpdate>, Vec<u8>), CommandsError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Parsed::Complete(updates) = parse_commands(&buf)? {
            return Ok((updates, buf));
        }
        if buf.len() > MAX_COMMAND_BYTES {
            return Err(CommandsError::TooLarge);
        }
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| CommandsError::Read(e.to_string()))?;
        if n == 0 {
            // A truncated request: git itself will say what is wrong with it.
            return Ok((Vec::new(), buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A push in progress: who pushed to which app, and the updates it asked for.
#[derive(Debug, Clone)]
pub struct PushGrant {
    pub app_id: String,
    pub user_id: String,
    pub updates: Vec<RefUpdate>,
    /// Cancelled when the push ends (its receive-pack exited): a build still running for it
    /// has nobody to report to and must stop.
    pub ended: tokio_util::sync::CancellationToken,
}

/// Why a hook's request was refused. Each is answered 401 without saying which, so a guessed or
/// stolen token learns nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("no push in progress has this token")]
    Unknown,
    #[error("this push's token was already used")]
    AlreadyUsed,
    #[error("the push does not update {refname} from {old} to {new}")]
    NotInPush {
        old: String,
        new: String,
        refname: String,
    },
}

struct Entry {
    grant: PushGrant,
    granted_at: Instant,
    used: bool,
    /// A build lock kept until the push's `git receive-pack` exits, i.e. until git has updated
    /// (or refused to update) the branch the build was for.
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The pushes in progress, by token.
#[derive(Default)]
pub struct Pushes {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Pushes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn grant(&self, token: &str, grant: PushGrant) {
        let mut entries = self.lock();
        entries.retain(|_, e| e.granted_at.elapsed() < MAX_GRANT_AGE);
        entries.insert(
            token.to_string(),
            Entry {
                grant,
                granted_at: Instant::now(),
                used: false,
                held: None,
            },
        );
    }

    /// Spends the grant for `token` on building `update`, which must be one of the push's.
    pub fn take(&self, token: &str, update: &RefUpdate) -> Result<PushGrant, GrantError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(token)
            .filter(|e| e.granted_at.elapsed() < MAX_GRANT_AGE)
            .ok_or(GrantError::Unknown)?;
        if entry.used {
            return Err(GrantError::AlreadyUsed);
        }
        if !entry.grant.updates.contains(update) {
            return Err(GrantError::NotInPush {
                old: update.old.clone(),
                new: update.new.clone(),
                refname: update.refname.clone(),
            });
        }
        entry.used = true;
        Ok(entry.grant.clone())
    }

    /// Keeps `guard` until the push with `token` ends. If it already ended, drops it now.
    pub fn hold_until_end(&self, token: &str, guard: tokio::sync::OwnedMutexGuard<()>) {
        if let Some(entry) = self.lock().get_mut(token) {
            entry.held = Some(guard);
        }
    }

    /// Ends a push: its token stops working, any lock it held is released and a build still
    /// running for it is cancelled.
    pub fn end(&self, token: &str) {
        if let Some(entry) = self.lock().remove(token) {
            entry.grant.ended.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(line: &str) -> Vec<u8> {
        let mut out = format!("{:04x}", line.len() + 4).into_bytes();
        out.extend_from_slice(line.as_bytes());
        out
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn request() -> Vec<u8> {
        let mut body = pkt(&format!(
            "{A} {B} refs/heads/main\0report-status side-band-64k\n"
        ));
        body.extend(pkt(&format!("{B} {A} refs/heads/other\n")));
        body.extend(b"0000PACK....");
        body
    }

    #[test]
    fn commands_are_read_up_to_the_flush_packet() {
        let body = request();
        let Parsed::Complete(updates) = parse_commands(&body).expect("parse") else {
            panic!("incomplete")
        };
        assert_eq!(
            updates,
            [
                RefUpdate {
                    old: A.into(),
                    new: B.into(),
                    refname: "refs/heads/main".into()
                },
                RefUpdate {
                    old: B.into(),
                    new: A.into(),
                    refname: "refs/heads/other".into()
                }
            ]
        );
        // Every prefix short of the flush packet asks for more.
        let flush = body.windows(4).position(|w| w == b"0000").expect("flush");
        for cut in 0..flush + 4 {
            assert_eq!(
                parse_commands(&body[..cut]).expect("prefix"),
                Parsed::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(parse_commands(b"zzzz"), Err(CommandsError::Malformed));
        assert_eq!(
            parse_commands(&pkt("not a command\n")),
            Err(CommandsError::Malformed)
        );
    }

    #[tokio::test]
    async fn reading_returns_every_byte_it_consumed() {
        let body = request();
        let mut reader = &body[..];
        let (updates, consumed) = read_commands(&mut reader).await.expect("read");
        assert_eq!(updates.len(), 2);
        let mut whole = consumed;
        whole.extend_from_slice(reader);
        assert_eq!(whole, body);
        let mut endless = tokio::io::repeat(b'f');
        assert_eq!(
            read_commands(&mut endless).await.map(|_| ()),
            Err(CommandsError::Malformed)
        );
        let long = pkt(&format!("{A} {B} refs/heads/{}\n", "b".repeat(200))).repeat(5000);
        let mut long = &long[..];
        assert_eq!(
            read_commands(&mut long).await.map(|_| ()),
            Err(CommandsError::TooLarge)
        );
    }

    #[test]
    fn a_grant_is_spent_once_and_only_on_the_push_s_own_updates() {
        let pushes = Pushes::default();
        let update = RefUpdate {
            old: A.into(),
            new: B.into(),
            refname: "refs/heads/main".into(),
        };
        pushes.grant(
            "t",
            PushGrant {
                app_id: "app".into(),
                user_id: "user".into(),
                updates: vec![update.clone()],
                ended: Default::default(),
            },
        );
        let forged = RefUpdate {
            new: A.into(),
            ..update.clone()
        };
        assert!(matches!(
            pushes.take("t", &forged),
            Err(GrantError::NotInPush { .. })
        ));
        let grant = pushes.take("t", &update).expect("first use");
        assert_eq!(grant.app_id, "app");
        assert_eq!(
            pushes.take("t", &update).map(|_| ()),
            Err(GrantError::AlreadyUsed)
        );
        assert_eq!(
            pushes.take("x", &update).map(|_| ()),
            Err(GrantError::Unknown)
        );
        assert!(!grant.ended.is_cancelled());
        pushes.end("t");
        assert!(grant.ended.is_cancelled());
        assert_eq!(
            pushes.take("t", &update).map(|_| ()),
            Err(GrantError::Unknown)
        );
    }
}
