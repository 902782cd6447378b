//! SSH to the target's hosts with the system's OpenSSH client, driven by the `openssh` crate:
//! one ControlMaster connection per host for a whole operation, every step a command on it.
//!
//! Host keys: each target keeps its own `known_hosts` (`<data>/targets/<name>/known_hosts`)
//! and its own ssh config (`StrictHostKeyChecking yes`, no global known_hosts, `BatchMode`), so
//! nothing is trusted silently: a host's first key is written only when the user passed its
//! fingerprint (`--accept-host-key`), and a changed key makes ssh refuse the connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::holder::ProcessId;
use crate::target::HostSpec;
use crate::TargetError;

/// A host key as `ssh-keyscan` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub key_type: String,
    pub base64: String,
}

impl HostKey {
    /// `SHA256:...`, as `ssh` and `ssh-keygen -l` print it.
    pub fn fingerprint(&self) -> String {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&self.base64)
            .unwrap_or_default();
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        )
    }
}

/// Asks `host` for its keys (`ssh-keyscan`). Nothing is trusted by this.
pub async fn scan_host_keys(host: &HostSpec) -> Result<Vec<HostKey>, TargetError> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("ssh-keyscan")
            .args(["-T", "10", "-p", &host.port.to_string(), "--", &host.host])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| TargetError::Unreachable {
        host: host.to_string(),
        reason: "no answer to ssh-keyscan in 20 s".into(),
    })?
    .map_err(|e| TargetError::Unreachable {
        host: host.to_string(),
        reason: format!("could not run ssh-keyscan (is openssh-client installed?): {e}"),
    })?;
    let keys: Vec<HostKey> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_name, key_type, b64) = (parts.next()?, parts.next()?, parts.next()?);
            let key = HostKey {
                key_type: key_type.to_string(),
                base64: b64.to_string(),
            };
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .map(|_| key)
        })
        .collect();
    if keys.is_empty() {
        return Err(TargetError::Unreachable {
            host: host.to_string(),
            reason: "no SSH server answered (ssh-keyscan found no host key)".into(),
        });
    }
    Ok(keys)
}

/// A target's own trust store and ssh settings, in its directory on the server.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    dir: PathBuf,
}

impl KnownHosts {
    pub fn new(target_dir: &Path) -> Self {
        Self {
            dir: target_dir.to_path_buf(),
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The keys trusted for `host`.
    pub fn trusted(&self, host: &HostSpec) -> Vec<HostKey> {
        let name = host.known_hosts_name();
        std::fs::read_to_string(self.file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (n, t, b) = (parts.next()?, parts.next()?, parts.next()?);
                (n == name).then(|| HostKey {
                    key_type: t.into(),
                    base64: b.into(),
                })
            })
            .collect()
    }

    /// Trusts, for each host, the scanned key whose fingerprint the user accepted (replacing
    /// what was trusted for that host). Every host must have one; otherwise nothing changes
    /// and the error lists each untrusted host with the fingerprints it presents.
    pub async fn accept(
        &self,
        hosts: &[HostSpec],
        accepted: &[String],
        only_untrusted: bool,
    ) -> Result<Vec<(String, String)>, TargetError> {
        let mut chosen = Vec::new();
        let mut missing = Vec::new();
        for host in hosts {
            if only_untrusted && !self.trusted(host).is_empty() {
                continue;
            }
            let keys = scan_host_keys(host).await?;
            match keys
                .iter()
                .find(|k| accepted.iter().any(|a| a == &k.fingerprint()))
            {
                Some(key) => chosen.push((host.clone(), key.clone())),
                None => missing.push((host.to_string(), keys)),
            }
        }
        if let Some((host, _)) = missing.first() {
            let fingerprints = missing
                .iter()
                .map(|(h, keys)| {
                    let fps: Vec<String> = keys
                        .iter()
                        .map(|k| format!("{} {}", k.key_type, k.fingerprint()))
                        .collect();
                    format!("{h}: {}", fps.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(TargetError::HostKeyUnknown {
                host: host.clone(),
                fingerprints,
            });
        }
        let file = self.file();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let names: Vec<String> = chosen.iter().map(|(h, _)| h.known_hosts_name()).collect();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|n| !names.iter().any(|x| x == n))
            })
            .map(str::to_string)
            .collect();
        let mut trusted = Vec::new();
        for (host, key) in &chosen {
            lines.push(format!(
                "{} {} {}",
                host.known_hosts_name(),
                key.key_type,
                key.base64
            ));
            trusted.push((host.to_string(), key.fingerprint()));
        }
        self.write_files(&lines.join("\n"))?;
        Ok(trusted)
    }

    fn write_files(&self, known_hosts: &str) -> Result<(), TargetError> {
        let ioe = |path: &Path| {
            let path = path.display().to_string();
            move |source| TargetError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(ioe(&self.dir))?;
        let tmp = self.dir.join("known_hosts.tmp");
        std::fs::write(&tmp, format!("{known_hosts}\n")).map_err(ioe(&tmp))?;
        std::fs::rename(&tmp, self.file()).map_err(ioe(&self.file()))?;
        let config = format!(
            "StrictHostKeyChecking yes\nUserKnownHostsFile {}\nGlobalKnownHostsFile /dev/null\nBatchMode yes\nUpdateHostKeys no\nCheckHostIP no\nLogLevel ERROR\n",
            self.file().display()
        );
        std::fs::write(self.config(), config).map_err(ioe(&self.config()))?;
        Ok(())
    }

    /// Opens the one connection to `host` used for a whole operation.
    pub async fn connect(
        &self,
        host: &HostSpec,
        key: Option<&str>,
    ) -> Result<Connection, TargetError> {
        if self.trusted(host).is_empty() {
            let keys = scan_host_keys(host).await?;
            return Err(TargetError::HostKeyUnknown {
                host: host.to_string(),
                fingerprints: keys
                    .iter()
                    .map(|k| format!("{} {}", k.key_type, k.fingerprint()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // The connection's master process and socket live in a directory of this process's
        // own, so masters a killed slipway left behind can be told apart and stopped.
        let control_root = self.dir.join("control");
        stop_dead_masters(&control_root).await;
        let control = control_root.join(ProcessId::this().file_name());
        std::fs::create_dir_all(&control).map_err(|source| TargetError::Io {
            path: control.display().to_string(),
            source,
        })?;
        let mut builder = openssh::SessionBuilder::default();
        builder
            .user(host.user.clone())
            .port(host.port)
            .config_file(self.config())
            .known_hosts_check(openssh::KnownHosts::Strict)
            .user_known_hosts_file(self.file())
            .control_directory(&control)
            .connect_timeout(Duration::from_secs(15))
            // A master nobody uses any more (its slipway was killed) ends by itself.
            .control_persist(openssh::ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(MASTER_IDLE_SECS)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            ))
            .server_alive_interval(Duration::from_secs(15));
        if let Some(key) = key {
            builder.keyfile(key);
        }
        match builder.connect(&host.host).await {
            Ok(session) => Ok(Connection {
                host: host.clone(),
                session,
            }),
            Err(e) => {
                let detail = e.to_string();
                let source = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let all = format!("{detail} {source}");
                if all.contains("Host key verification failed")
                    || all.contains("IDENTIFICATION HAS CHANGED")
                {
                    let presented = scan_host_keys(host)
                        .await
                        .ok()
                        .and_then(|k| k.first().map(HostKey::fingerprint))
                        .unwrap_or_else(|| "an unknown key".into());
                    return Err(TargetError::HostKeyChanged {
                        host: host.to_string(),
                        presented,
                    });
                }
                Err(TargetError::Unreachable {
                    host: host.to_string(),
                    reason: format!("{detail}: {source}").trim_end_matches(": ").into(),
                })
            }
        }
    }
}

/// How long a connection's master process outlives its last use.
const MASTER_IDLE_SECS: usize = 300;

/// Stops the ControlMaster processes of slipway processes that are gone (killed mid-operation:
/// their masters would otherwise keep the connection to the host open) and removes their
/// sockets. Directories of live processes are left alone.
pub(crate) async fn stop_dead_masters(control_root: &Path) {
    let Ok(entries) = std::fs::read_dir(control_root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let sockets: Vec<PathBuf> = if name.starts_with(".ssh-connection") {
            // The layout of older slipways: one directory per connection, no owner.
            vec![dir.join("master")]
        } else {
            match ProcessId::from_file_name(&name) {
                Some(p) if p.is_alive() => continue,
                _ => std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .map(|e| e.path().join("master"))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        };
        for socket in sockets.iter().filter(|s| s.exists()) {
            let stopped = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new("ssh")
                    .args(["-F", "/dev/null", "-O", "exit", "-S"])
                    .arg(socket)
                    .arg("slipway-stale-master")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status(),
            )
            .await;
            tracing::info!(socket = %socket.display(), ?stopped, "stopped a dead slipway's ssh master");
        }
        if let Err(e) = std::fs::remove_dir_all(&dir).or_else(|e| match e.kind() {
            // Another connection of this operation cleaned it at the same time.
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        }) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dead slipway's ssh sockets");
        }
    }
}

/// What a remote command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// One host's connection.
pub struct Connection {
    pub host: HostSpec,
    session: openssh::Session,
}

/// Output kept from a remote command.
const MAX_OUTPUT: usize = 64 * 1024;

fn clip(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]);
    text.into_owned()
}

impl Connection {
    /// Runs `script` with `sh -c` and positional `args` (each quoted for the remote shell),
    /// feeding `stdin` (e.g. a secret file's content, never an argument).
    pub async fn run(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Ran, TargetError> {
        let mut cmd = self.session.command("sh");
        cmd.arg("-c").arg(script).arg("slipway");
        for a in args {
            cmd.arg(*a);
        }
        cmd.stdin(if stdin.is_some() {
            openssh::Stdio::piped()
        } else {
            openssh::Stdio::null()
        })
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| self.ssh_err(e))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin().take()) {
            pipe.write_all(data)
                .await
                .map_err(|e| self.ssh_err(openssh::Error::ChildIo(e)))?;
            pipe.shutdown()
                .await
                .map_err(|e| self.ssh_err(openssh::Error::ChildIo(e)))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.ssh_err(e))?;
        Ok(Ran {
            code: out.status.code(),
            stdout: clip(&out.stdout),
            stderr: clip(&out.stderr),
        })
    }

    /// Runs `script` with a local file streamed to its stdin.
    pub async fn run_with_file(
        &self,
        script: &str,
        args: &[&str],
        file: &Path,
    ) -> Result<Ran, TargetError> {
        let mut cmd = self.session.command("sh");
        cmd.arg("-c").arg(script).arg("slipway");
        for a in args {
            cmd.arg(*a);
        }
        cmd.stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| self.ssh_err(e))?;
        let mut local = tokio::fs::File::open(file)
            .await
            .map_err(|source| TargetError::Io {
                path: file.display().to_string(),
                source,
            })?;
        let mut cut = None;
        if let Some(mut pipe) = child.stdin().take() {
            let copied = tokio::io::copy(&mut local, &mut pipe).await;
            let _ = pipe.shutdown().await;
            drop(pipe);
            cut = copied.err();
        }
        let out = child.wait_with_output().await;
        if let Some(e) = cut {
            // The remote end stopped reading: when it said why (a full disk), that is the
            // error; otherwise the connection was cut.
            match out {
                Ok(out) if !out.status.success() && !out.stderr.is_empty() => {
                    return Ok(Ran {
                        code: out.status.code(),
                        stdout: clip(&out.stdout),
                        stderr: clip(&out.stderr),
                    })
                }
                _ => {
                    return Err(TargetError::Remote {
                        host: self.host.to_string(),
                        step: "upload".into(),
                        detail: format!("the upload was cut: {e}"),
                    })
                }
            }
        }
        let out = out.map_err(|e| self.ssh_err(e))?;
        Ok(Ran {
            code: out.status.code(),
            stdout: clip(&out.stdout),
            stderr: clip(&out.stderr),
        })
    }

    fn ssh_err(&self, e: openssh::Error) -> TargetError {
        TargetError::Ssh {
            host: self.host.to_string(),
            detail: e.to_string(),
        }
    }

    pub async fn close(self) {
        if let Err(e) = self.session.close().await {
            tracing::debug!(host = %self.host, error = %e, "closing the ssh connection");
        }
    }
}
