//! TLS for slipway's listeners: a certificate store that picks the certificate by SNI, and the
//! rustls server configuration (ALPN h2 and http/1.1) built on it.
//!
//! The store is a resolver keyed by domain, changed at run time: [`CertStore::add`] (a user's
//! `certs:add`), [`CertStore::insert`] (a certificate obtained some other way, e.g. ACME later),
//! [`CertStore::remove`]. Each change builds a new table and swaps it in whole, so a handshake
//! sees either the old table or the new one, and open connections keep the certificate they
//! were served with. [`CertStore::replace_all`] reloads everything at once (the server does
//! this from its database whenever a certificate is added or removed). rustls uses one
//! crypto provider, ring, passed explicitly to every configuration (never the process-wide
//! default, which another crate could set to a different one).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key were refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the certificate file is not valid PEM: {0}")]
    CertPem(#[source] rustls_pki_types::pem::Error),
    #[error("the certificate file holds no CERTIFICATE block (is it the key?)")]
    NoCertificate,
    #[error("the key file is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    KeyPem(#[source] rustls_pki_types::pem::Error),
    #[error("the private key cannot be used: {0}")]
    UnusableKey(#[source] rustls::Error),
    #[error("the private key does not match the certificate (check that the key is the one the certificate was issued for)")]
    KeyMismatch,
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the certificate names no DNS domain (no subjectAltName DNS entry or common name)")]
    NoDomains,
    #[error("the certificate expired at {not_after}")]
    Expired { not_after: DateTime<Utc> },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: DateTime<Utc> },
}

/// What `certs:info` shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names it covers, lowercased; wildcards as `*.example.com`.
    pub domains: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The issuer's distinguished name.
    pub issuer: String,
}

/// A checked certificate chain and its key, ready to serve.
#[derive(Debug, Clone)]
pub struct Cert {
    info: CertInfo,
    key: Arc<CertifiedKey>,
}

impl Cert {
    /// Parses and checks a PEM certificate chain (end-entity certificate first) and its PEM
    /// private key: both parse, the key matches the certificate, and the certificate is
    /// valid now.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Cert, CertError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CertError::CertPem)?;
        let Some(end_entity) = chain.first() else {
            return Err(CertError::NoCertificate);
        };
        let info = cert_info(end_entity)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CertError::KeyPem)?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(CertError::UnusableKey)?;
        let key = CertifiedKey::new(chain, signing_key);
        match key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CertError::KeyMismatch),
            Err(e) => return Err(CertError::BadCertificate(e.to_string())),
        }
        let now = Utc::now();
        if info.not_after <= now {
            return Err(CertError::Expired {
                not_after: info.not_after,
            });
        }
        if info.not_before > now {
            return Err(CertError::NotYetValid {
                not_before: info.not_before,
            });
        }
        Ok(Cert {
            info,
            key: Arc::new(key),
        })
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

/// Domains, validity and issuer of an end-entity certificate.
fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    let bad = |e: &dyn std::fmt::Display| CertError::BadCertificate(e.to_string());
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(&e))?;
    let mut domains: Vec<String> = match cert.subject_alternative_name().map_err(|e| bad(&e))? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        None => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect(),
    };
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        return Err(CertError::NoDomains);
    }
    let time = |t: &x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| CertError::BadCertificate(format!("validity time {t} out of range")))
    };
    let validity = cert.validity();
    Ok(CertInfo {
        domains,
        not_before: time(&validity.not_before)?,
        not_after: time(&validity.not_after)?,
        issuer: cert.issuer().to_string(),
    })
}

/// The one crypto provider slipway's TLS uses.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Certificates by domain, swapped whole on every change.
#[derive(Debug, Default, Clone)]
struct Table {
    exact: HashMap<String, Arc<Cert>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<Cert>>,
    /// For clients that send no SNI, or a name no certificate covers.
    default: Option<Arc<Cert>>,
}

impl Table {
    fn find(&self, server_name: Option<&str>) -> Option<&Arc<Cert>> {
        let found = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                // A wildcard covers exactly one label.
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref())
    }
}

/// The certificates the TLS listeners serve, chosen by SNI.
#[derive(Debug, Default)]
pub struct CertStore {
    table: RwLock<Arc<Table>>,
}

impl CertStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a PEM certificate chain and key ([`Cert::from_pem`]) and serves it for every
    /// domain it names, replacing the certificates those domains had.
    pub fn add(&self, cert_chain_pem: &str, key_pem: &str) -> Result<CertInfo, CertError> {
        let cert = Cert::from_pem(cert_chain_pem, key_pem)?;
        let info = cert.info.clone();
        self.insert(cert);
        Ok(info)
    }

    /// Serves `cert` for every domain it names, replacing the certificates those had.
    pub fn insert(&self, cert: Cert) {
        let cert = Arc::new(cert);
        self.update(|table| {
            for domain in &cert.info.domains {
                match domain.strip_prefix("*.") {
                    Some(parent) => table.wildcard.insert(parent.to_string(), cert.clone()),
                    None => table.exact.insert(domain.clone(), cert.clone()),
                };
            }
        });
    }

    /// Serves exactly `certs` (the default stays): a whole new table built from them and
    /// swapped in at once, so a handshake never sees a half-reloaded store. Where two name
    /// the same domain, the later one wins.
    pub fn replace_all(&self, certs: impl IntoIterator<Item = Cert>) {
        let mut next = Table::default();
        for cert in certs {
            let cert = Arc::new(cert);
            for domain in &cert.info.domains {
                match domain.strip_prefix("*.") {
                    Some(parent) => next.wildcard.insert(parent.to_string(), cert.clone()),
                    None => next.exact.insert(domain.clone(), cert.clone()),
                };
            }
        }
        self.update(|table| {
            next.default = table.default.take();
            *table = next;
        });
    }

    /// Serves `cert` to clients whose SNI no certificate covers (or who send none).
    pub fn set_default(&self, cert: Cert) {
        let cert = Arc::new(cert);
        self.update(|table| table.default = Some(cert));
    }

    /// Stops serving a certificate for `domain` (exact name or `*.example.com`); returns what
    /// it served.
    pub fn remove(&self, domain: &str) -> Option<CertInfo> {
        let domain = domain.to_ascii_lowercase();
        let mut removed = None;
        self.update(|table| {
            removed = match domain.strip_prefix("*.") {
                Some(parent) => table.wildcard.remove(parent),
                None => table.exact.remove(&domain),
            };
        });
        removed.map(|cert| cert.info.clone())
    }

    /// The certificate served for `server_name` (what a handshake with that SNI gets).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<CertInfo> {
        self.snapshot()
            .find(server_name)
            .map(|cert| cert.info.clone())
    }

    /// Every certificate served, once each, for `certs` / `certs:info`.
    pub fn list(&self) -> Vec<CertInfo> {
        let table = self.snapshot();
        let mut seen: Vec<&Arc<Cert>> = Vec::new();
        for cert in table
            .exact
            .values()
            .chain(table.wildcard.values())
            .chain(table.default.iter())
        {
            if !seen.iter().any(|s| Arc::ptr_eq(s, cert)) {
                seen.push(cert);
            }
        }
        let mut infos: Vec<CertInfo> = seen.into_iter().map(|c| c.info.clone()).collect();
        infos.sort_by(|a, b| a.domains.cmp(&b.domains));
        infos
    }

    /// A rustls server configuration that takes its certificates from this store (changes
    /// apply to the next handshake) and offers h2 and http/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn snapshot(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut Table)) {
        let mut current = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Table::clone(&current);
        change(&mut next);
        *current = Arc::new(next);
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .snapshot()
            .find(hello.server_name())
            .map(|cert| cert.key.clone())
    }
}
