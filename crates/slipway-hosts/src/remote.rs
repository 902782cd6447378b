//! What slipway runs on a host: one small POSIX `sh` script per step (GNU coreutils and tar
//! assumed: `mv -T`, `sha256sum`, `timeout`), every value passed as a positional argument
//! (quoted by the ssh layer) or on stdin, never spliced into the script. `$1` is always the
//! target's path; a relative path is under the login's `$HOME`.
//!
//! And the host's own records: the lock file and `state.json`.

use serde::{Deserialize, Serialize};

use crate::holder::ProcessId;

const PRELUDE: &str = r#"set -eu
P=$1; shift
case $P in /*) ;; *) P=$HOME/$P ;; esac
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// Takes the lock or prints who holds it. The lock's content is written to a file of its own
/// first and then hard-linked to `.slipway/lock` (atomic, and fails when the lock exists), so
/// the lock is never seen half-written, and a full disk fails here with its own error instead
/// of leaving an empty lock behind. Args: lock JSON. Prints `acquired`, or `held` and the
/// lock's content.
pub fn lock() -> String {
    script(
        r#"mkdir -p "$P/.slipway/tmp" "$P/releases" "$P/shared"
cd "$P"
L=".slipway/lock.$$"
trap 'rm -f "$L"' EXIT
printf '%s\n' "$1" > "$L"
if ln "$L" .slipway/lock 2>/dev/null; then
  # Under the lock nothing else writes here: leftovers of an interrupted operation go.
  rm -rf .slipway/tmp/* .current.new
  rm -f .slipway/lock.*
  echo acquired
else
  echo held
  cat .slipway/lock 2>/dev/null || true
fi
"#,
    )
}

/// Removes the lock if it is ours (arg: deploy id), or whatever it is (arg empty).
/// Prints what it removed.
pub fn unlock() -> String {
    script(
        r#"cd "$P" 2>/dev/null || exit 0
[ -e .slipway/lock ] || exit 0
if [ -z "$1" ] || grep -q "\"deploy_id\":\"$1\"" .slipway/lock; then
  cat .slipway/lock; rm -f .slipway/lock
fi
"#,
    )
}

/// Reads the host's state: `current=<target of the symlink>`, `release=<dir>` lines, then
/// `---` and state.json (or nothing).
pub fn read_state() -> String {
    script(
        r#"cd "$P" 2>/dev/null || { echo "current="; echo ---; exit 0; }
printf 'current=%s\n' "$(readlink current 2>/dev/null || true)"
printf 'lock=%s\n' "$(head -c 4096 .slipway/lock 2>/dev/null | tr -d '\n' || true)"
if [ -d releases ]; then
  for d in releases/*; do [ -d "$d" ] && printf 'release=%s\n' "${d#releases/}"; done
fi
echo ---
cat .slipway/state.json 2>/dev/null || true
"#,
    )
}

/// Writes state.json from stdin through a temp file and a rename.
pub fn write_state() -> String {
    script(
        r#"mkdir -p "$P/.slipway"
cat > "$P/.slipway/state.json.tmp"
mv -f "$P/.slipway/state.json.tmp" "$P/.slipway/state.json"
"#,
    )
}

/// Receives the tarball on stdin and checks its checksum. Args: deploy id, sha256.
/// Exit 3: checksum mismatch (the file is removed).
/// Whatever ends it early (a full disk, a cut connection) removes the partial file.
pub fn upload() -> String {
    script(
        r#"T="$P/.slipway/tmp/$1.tgz"
trap 'rm -f "$T"' EXIT HUP INT TERM
cat > "$T"
sum=$(sha256sum "$T" | cut -d' ' -f1)
if [ "$sum" != "$2" ]; then
  echo "checksum mismatch: the host received $sum, the store has $2" >&2
  exit 3
fi
trap - EXIT HUP INT TERM
"#,
    )
}

/// Unpacks the uploaded tarball into a temp dir, links the shared dirs, writes the env file
/// (stdin), then renames the whole into `releases/<tag>`. Args: deploy id, tag, shared dirs...
/// Exit 4: the release already exists.
pub fn unpack() -> String {
    script(
        r#"ID=$1; TAG=$2; shift 2
cd "$P"
T=".slipway/tmp/$ID"
trap 'rm -rf "$T.d" "$T.tgz"' EXIT HUP INT TERM
rm -rf "$T.d"; mkdir "$T.d"
tar -xzf "$T.tgz" -C "$T.d" --no-same-owner --no-same-permissions
rm -f "$T.tgz"
for d in "$@"; do
  mkdir -p "shared/$d"
  rm -rf "$T.d/$d"
  mkdir -p "$(dirname "$T.d/$d")"
  ln -s "$P/shared/$d" "$T.d/$d"
done
mkdir -p "$T.d/.slipway"
(umask 077; cat > "$T.d/.slipway/env")
if [ -e "releases/$TAG" ]; then echo "releases/$TAG already exists" >&2; exit 4; fi
mv "$T.d" "releases/$TAG"
trap - EXIT HUP INT TERM
"#,
    )
}

/// Runs a command in a release directory (before the switch). Args: tag, command.
pub fn pre_switch() -> String {
    script(
        r#"cd "$P/releases/$1"
set -a; . ./.slipway/env; set +a
export SLIPWAY_PATH="$P" SLIPWAY_RELEASE="$1"
eval "$2" </dev/null
"#,
    )
}

/// Points `current` at `releases/<tag>` by renaming a new symlink over it. Arg: tag.
/// Prints the tag it pointed to before (empty if none).
pub fn switch() -> String {
    script(
        r#"cd "$P"
[ -d "releases/$1" ] || { echo "releases/$1 is not on this host" >&2; exit 4; }
if [ -e current ] && [ ! -L current ]; then echo "$P/current exists and is not a symlink" >&2; exit 5; fi
prev=$(readlink current 2>/dev/null || true)
ln -sfn "releases/$1" .current.new
mv -T .current.new current
printf '%s\n' "${prev#releases/}"
"#,
    )
}

/// Runs a command in `current` with the release's env exported, its output into
/// `.slipway/last-command.log` (so a process it starts in the background does not hold the
/// ssh channel open), then prints the log's tail. Arg: command.
pub fn in_current() -> String {
    script(
        r#"cd "$P/current"
set -a; . ./.slipway/env; set +a
export SLIPWAY_PATH="$P" SLIPWAY_RELEASE="$(basename "$(readlink "$P/current")")"
LOG="$P/.slipway/last-command.log"
status=0
eval "$1" </dev/null >"$LOG" 2>&1 || status=$?
tail -c 4000 "$LOG"
exit $status
"#,
    )
}

/// The health check: a URL fetched on the host, or a command in `current`, tried up to
/// `attempts` times `interval` seconds apart, each bounded by `timeout` seconds.
/// Args: kind (url|cmd), check, attempts, interval, timeout.
pub fn health() -> String {
    script(
        r#"KIND=$1; CHECK=$2; N=$3; WAIT=$4; T=$5
cd "$P/current"
set -a; . ./.slipway/env; set +a
export SLIPWAY_PATH="$P"
probe() {
  if [ "$KIND" = url ]; then
    if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null --max-time "$T" "$CHECK"
    else wget -q -O /dev/null -T "$T" "$CHECK"; fi
  else
    timeout "$T" sh -c "$CHECK" </dev/null
  fi
}
i=0
while [ "$i" -lt "$N" ]; do
  i=$((i + 1))
  if out=$(probe 2>&1); then echo "healthy after $i attempt(s)"; exit 0; fi
  last=$out
  [ "$i" -lt "$N" ] && sleep "$WAIT"
done
printf 'unhealthy after %s attempt(s): %s\n' "$N" "$(printf '%s' "$last" | tail -c 500)" >&2
exit 1
"#,
    )
}

/// Removes releases (args: tags), each renamed out of `releases/` first so a half-deleted one
/// is never visible; refuses the one `current` points to.
pub fn remove_releases() -> String {
    script(
        r#"cd "$P"
cur=$(readlink current 2>/dev/null || true)
for t in "$@"; do
  [ "releases/$t" = "$cur" ] && { echo "refusing to remove $t: it is current" >&2; exit 5; }
  if [ -d "releases/$t" ]; then
    mv "releases/$t" ".slipway/tmp/remove-$t"
    rm -rf ".slipway/tmp/remove-$t"
  fi
done
"#,
    )
}

/// Runs a user's command in `current` (or the path when nothing is deployed) with the release's
/// env; its output and status are the command's. Arg: command.
pub fn exec() -> String {
    script(
        r#"if cd "$P/current" 2>/dev/null; then set -a; . ./.slipway/env; set +a; else cd "$P"; fi
export SLIPWAY_PATH="$P"
eval "$1" </dev/null
"#,
    )
}

/// A host's lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub owner: String,
    pub deploy_id: String,
    /// Seconds since the epoch.
    pub acquired_at: i64,
    pub ttl_secs: u64,
    pub operation: String,
    /// The slipway installation that took it (see `holder.rs`); empty in locks written by
    /// hand or by an older slipway.
    #[serde(default)]
    pub installation: String,
    /// The slipway server process that holds it.
    #[serde(default)]
    pub process: Option<ProcessId>,
    /// The machine that process runs on (for people reading the lock).
    #[serde(default)]
    pub machine: String,
}

impl LockInfo {
    pub fn is_stale(&self, now: i64) -> bool {
        now > self
            .acquired_at
            .saturating_add(i64::try_from(self.ttl_secs).unwrap_or(i64::MAX))
    }

    /// Was it taken by this installation, by a process that is no longer running? Then nothing
    /// can be using it any more (a killed slipway left it).
    pub fn holder_gone(&self, installation: &str) -> bool {
        !installation.is_empty()
            && self.installation == installation
            && self.process.as_ref().is_some_and(|p| !p.is_alive())
    }

    pub fn describe(&self) -> String {
        let at = chrono::DateTime::from_timestamp(self.acquired_at, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| self.acquired_at.to_string());
        let process = match &self.process {
            Some(p) => format!(
                ", slipway process {} on {} (installation {})",
                p.pid,
                if self.machine.is_empty() {
                    "?"
                } else {
                    &self.machine
                },
                self.installation
            ),
            None => String::new(),
        };
        format!(
            "{} ({} {}, since {at}, ttl {} s{process})",
            self.owner, self.operation, self.deploy_id, self.ttl_secs
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Unpacked, never switched to yet.
    Unpacked,
    /// Was current and passed its health check.
    Ok,
    /// Failed its health check (or its pre-switch command) here.
    Failed,
    /// Found on the host without a record (put there by hand or an older slipway).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    pub tag: String,
    pub store_name: String,
    pub sha256: String,
    pub status: ReleaseStatus,
    /// RFC 3339.
    pub deployed_at: String,
    #[serde(default)]
    pub pinned: bool,
}

/// `<path>/.slipway/state.json`, merged with what the directory really holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    pub version: u32,
    pub current: Option<String>,
    pub previous_good: Option<String>,
    /// Oldest first.
    pub releases: Vec<ReleaseEntry>,
    pub updated_at: String,
}

impl HostState {
    /// From `read_state()`'s output: the directory listing and symlink are the truth, the
    /// file adds what slipway knows about each release.
    pub fn parse(output: &str) -> Self {
        let (listing, json) = output.split_once("---\n").unwrap_or((output, ""));
        let recorded: HostState = serde_json::from_str(json.trim()).unwrap_or_default();
        let mut current = None;
        let mut present = Vec::new();
        for line in listing.lines() {
            if let Some(c) = line.strip_prefix("current=") {
                let c = c.trim().trim_start_matches("releases/");
                if !c.is_empty() {
                    current = Some(c.to_string());
                }
            } else if let Some(r) = line.strip_prefix("release=") {
                present.push(r.trim().to_string());
            }
        }
        let mut releases: Vec<ReleaseEntry> = recorded
            .releases
            .into_iter()
            .filter(|r| present.contains(&r.tag))
            .collect();
        for tag in present {
            if !releases.iter().any(|r| r.tag == tag) {
                releases.push(ReleaseEntry {
                    tag,
                    store_name: String::new(),
                    sha256: String::new(),
                    status: ReleaseStatus::Unknown,
                    deployed_at: String::new(),
                    pinned: false,
                });
            }
        }
        HostState {
            version: 1,
            current,
            previous_good: recorded.previous_good,
            releases,
            updated_at: recorded.updated_at,
        }
    }

    pub fn entry_mut(&mut self, tag: &str) -> Option<&mut ReleaseEntry> {
        self.releases.iter_mut().find(|r| r.tag == tag)
    }

    pub fn has(&self, tag: &str) -> bool {
        self.releases.iter().any(|r| r.tag == tag)
    }

    /// Which releases `prune --keep K` removes: never current, previous known-good or pinned;
    /// failed ones do not count toward `keep` (and go).
    pub fn prunable(&self, keep: usize) -> Vec<String> {
        let protected = |r: &ReleaseEntry| {
            Some(&r.tag) == self.current.as_ref()
                || Some(&r.tag) == self.previous_good.as_ref()
                || r.pinned
        };
        let mut kept = 0;
        let mut remove = Vec::new();
        // Newest first.
        for r in self.releases.iter().rev() {
            if protected(r) {
                if r.status != ReleaseStatus::Failed {
                    kept += 1;
                }
                continue;
            }
            if r.status == ReleaseStatus::Failed || kept >= keep {
                remove.push(r.tag.clone());
            } else {
                kept += 1;
            }
        }
        remove
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, status: ReleaseStatus) -> ReleaseEntry {
        ReleaseEntry {
            tag: tag.into(),
            store_name: "hello".into(),
            sha256: String::new(),
            status,
            deployed_at: String::new(),
            pinned: false,
        }
    }

    #[test]
    fn state_merges_listing_and_file() {
        let file = serde_json::to_string(&HostState {
            version: 1,
            current: Some("v1".into()),
            previous_good: Some("v0".into()),
            releases: vec![
                entry("v0", ReleaseStatus::Ok),
                entry("gone", ReleaseStatus::Ok),
            ],
            updated_at: String::new(),
        })
        .expect("json");
        let state = HostState::parse(&format!(
            "current=releases/v2\nrelease=v0\nrelease=v2\n---\n{file}"
        ));
        assert_eq!(state.current.as_deref(), Some("v2"));
        let tags: Vec<_> = state.releases.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["v0", "v2"]);
        assert_eq!(state.releases[1].status, ReleaseStatus::Unknown);
    }

    #[test]
    fn prune_spares_current_previous_and_pinned_and_skips_failed() {
        let mut state = HostState {
            current: Some("v3".into()),
            previous_good: Some("v1".into()),
            ..Default::default()
        };
        state.releases = vec![
            entry("v0", ReleaseStatus::Ok),
            entry("v1", ReleaseStatus::Ok),
            entry("v2", ReleaseStatus::Ok),
            entry("v3", ReleaseStatus::Ok),
            entry("v4", ReleaseStatus::Failed),
            entry("v5", ReleaseStatus::Ok),
        ];
        state.releases[0].pinned = true;
        // Newest first: v5 counts (1), v4 failed goes, v3 current (2), v2 beyond keep goes,
        // v1 previous-good stays, v0 pinned stays.
        assert_eq!(state.prunable(2), ["v4", "v2"]);
        assert_eq!(state.prunable(0), ["v5", "v4", "v2"]);
        assert!(state.prunable(10).contains(&"v4".to_string()));
    }
}
