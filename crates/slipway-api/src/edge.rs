//! What the router serves at its edge besides `<app>.<domain>`: TLS certificates and custom
//! domains, kept in the store and loaded into the router's structures whole.
//!
//! **Certificates.** A certificate's chain and what was read from it are a row in `certs`
//! (`slipway_store::StoredCert`); its private key is the file `<data>/certs/<id>.key` (mode
//! 0600 in a 0700 directory: root only when the server runs as root), never in the database,
//! an API answer or a log. [`reload_certs`] reads every stored certificate with its key,
//! checks it again, and swaps the router's [`CertStore`](slipway_router::tls::CertStore)
//! table in whole; it runs at start and after every change. Where a certificate came from is
//! its `source` (`slipway_store::CertSource`): today only `Uploaded` (`certs:add`). ACME later
//! is another source: an issuer task that writes the key file and the row the same way and
//! calls [`reload_certs`]; serving does not change.
//!
//! **Custom domains.** `domains` rows (host name -> app) and the `https_redirects` switch are
//! loaded into the route table ([`reload_domains`]), which resolves them from its immutable
//! snapshot like app names.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use slipway_router::tls::Cert;
use slipway_store::StoreError;

use crate::state::{Settings, Shared};

/// Largest certificate chain accepted (PEM).
pub const MAX_CHAIN_BYTES: usize = 100 * 1024;
/// Largest private key accepted (PEM).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

pub fn certs_dir(settings: &Settings) -> PathBuf {
    settings.data_dir.join("certs")
}

pub fn key_path(settings: &Settings, cert_id: &str) -> PathBuf {
    certs_dir(settings).join(format!("{cert_id}.key"))
}

/// Writes a private key as `<dir>/<id>.key`, readable by its owner only, and syncs it.
pub fn write_key(settings: &Settings, cert_id: &str, key_pem: &str) -> std::io::Result<()> {
    let dir = certs_dir(settings);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = key_path(settings, cert_id);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let written = file
        .write_all(key_pem.as_bytes())
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    written
}

/// Loads every stored certificate into the TLS listener's store (one swap), and removes key
/// files no certificate has any more (an app's, after the app was destroyed). A certificate
/// that no longer loads (its key file is gone, it expired) is left out and logged.
pub async fn reload_certs(state: &Shared) -> Result<usize, StoreError> {
    let _one_at_a_time = state.edge_reload.lock().await;
    let stored = state.store.all_certs().await?;
    let mut certs = Vec::with_capacity(stored.len());
    for row in &stored {
        let path = key_path(&state.settings, &row.id);
        let key = match read_bounded(&path, MAX_KEY_BYTES) {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(cert = %row.name, path = %path.display(), error = %e, "a certificate's key cannot be read; it is not served");
                continue;
            }
        };
        match Cert::from_pem(&row.certificate_chain, &key) {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                tracing::warn!(cert = %row.name, domains = ?row.domains, error = %e, "a stored certificate is not served")
            }
        }
    }
    let served = certs.len();
    state.certs.replace_all(certs);
    let known: HashSet<String> = stored.iter().map(|c| format!("{}.key", c.id)).collect();
    remove_stray_keys(&certs_dir(&state.settings), &known);
    Ok(served)
}

fn read_bounded(path: &Path, max: usize) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > max as u64 {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    std::fs::read_to_string(path)
}

fn remove_stray_keys(dir: &Path, known: &HashSet<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".key") && !known.contains(&name) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove an unused certificate key");
            }
        }
    }
}

/// Loads every custom domain and HTTPS redirect into the route table (one snapshot).
pub async fn reload_domains(state: &Shared) -> Result<(), StoreError> {
    let _one_at_a_time = state.edge_reload.lock().await;
    let domains: HashMap<String, String> = state
        .store
        .all_domains()
        .await?
        .into_iter()
        .map(|d| (d.hostname, d.app_id))
        .collect();
    let redirects: HashSet<String> = state
        .store
        .https_redirect_apps()
        .await?
        .into_iter()
        .collect();
    state.routes.set_domains(domains, redirects);
    Ok(())
}

/// Whether a certificate naming `cert_domains` covers `host` (exactly, or by a wildcard for
/// one label).
pub fn covers(cert_domains: &[String], host: &str) -> bool {
    cert_domains.iter().any(|d| {
        d == host
            || d.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| label != "*" && rest == parent)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["*.example.com".to_string(), "example.org".to_string()];
        assert!(covers(&names, "www.example.com"));
        assert!(covers(&names, "example.org"));
        assert!(!covers(&names, "a.b.example.com"));
        assert!(!covers(&names, "example.com"));
        assert!(!covers(&names, "www.example.org"));
    }
}
