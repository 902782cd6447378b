//! TLS for `syslog+tls://` and `https://` drains: rustls with the ring provider, trusting the
//! system's CA bundle and, when the server names one, an extra PEM file of CA certificates
//! (`SLIPWAY_LOG_DRAIN_CA`). Certificates are always verified, host name included.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Where Debian keeps the system's trusted CA certificates.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> usize {
    let certs = match CertificateDer::pem_file_iter(path) {
        Ok(certs) => certs,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "could not read CA certificates for log drains");
            return 0;
        }
    };
    let mut added = 0;
    for cert in certs {
        match cert {
            Ok(cert) => match roots.add(cert) {
                Ok(()) => added += 1,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "a CA certificate for log drains is not usable");
                }
            },
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "a CA certificate for log drains is not valid PEM");
            }
        }
    }
    added
}

/// The client configuration every TLS drain uses.
pub(crate) fn client_config(
    extra_ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let system = Path::new(SYSTEM_BUNDLE);
    if system.exists() {
        add_pem_file(&mut roots, system);
    }
    if let Some(ca) = extra_ca {
        let added = add_pem_file(&mut roots, ca);
        tracing::info!(path = %ca.display(), added, "trusting extra CA certificates for log drains");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
