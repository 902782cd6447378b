//! Custom domains (`domains:add`, Platform API `domains`), the per-app HTTP -> HTTPS redirect
//! switch, and TLS certificates (`certs:add`, Platform API `sni-endpoints`).
//!
//! A hostname belongs to one app (`UNIQUE(hostname)`); it is checked by the caller
//! (`slipway_core::Hostname`). A certificate row holds the chain and what was read from it
//! (domains, validity, issuer) and how it was obtained (`source`: `uploaded`; `acme` later);
//! its private key is never in the database: it is a file the API writes under the data
//! directory (0600), named by the certificate's id.

use sqlx::Row;

use crate::{is_unique_violation, new_id, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: String,
    pub app_id: String,
    pub hostname: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn domain_row(r: &sqlx::sqlite::SqliteRow) -> Domain {
    Domain {
        id: r.get("id"),
        app_id: r.get("app_id"),
        hostname: r.get("hostname"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// A hostname another app already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTaken {
    pub hostname: String,
    /// The app that has it.
    pub app_name: String,
}

/// Most custom domains one app may have (Heroku: 1,000 per app).
pub const MAX_DOMAINS_PER_APP: i64 = 1000;

/// How a certificate was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `certs:add` with a chain and key the user brought.
    Uploaded,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Uploaded => "uploaded",
        }
    }

    fn parse(s: &str) -> Option<CertSource> {
        match s {
            "uploaded" => Some(CertSource::Uploaded),
            _ => None,
        }
    }
}

/// A stored certificate (its key is a file beside the database, see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    pub id: String,
    pub name: String,
    /// `None`: the server's own (e.g. a wildcard for `*.<domain>`), not one app's.
    pub app_id: Option<String>,
    pub source: CertSource,
    pub certificate_chain: String,
    pub domains: Vec<String>,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What the caller read from a certificate, to store with it.
#[derive(Debug, Clone)]
pub struct NewCert<'a> {
    pub app_id: Option<&'a str>,
    pub source: CertSource,
    pub certificate_chain: &'a str,
    pub domains: &'a [String],
    pub issuer: &'a str,
    pub not_before: i64,
    pub not_after: i64,
}

fn cert_row(r: &sqlx::sqlite::SqliteRow) -> Result<StoredCert> {
    let domains: String = r.get("domains");
    let source: String = r.get("source");
    Ok(StoredCert {
        id: r.get("id"),
        name: r.get("name"),
        app_id: r.get("app_id"),
        source: CertSource::parse(&source).ok_or_else(|| {
            StoreError::NotFound(format!("certificate source {source:?} (unknown)"))
        })?,
        certificate_chain: r.get("certificate_chain"),
        domains: serde_json::from_str(&domains)?,
        issuer: r.get("issuer"),
        not_before: r.get("not_before"),
        not_after: r.get("not_after"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

impl Store {
    // ---- custom domains ----

    /// The app's custom domains, by hostname.
    pub async fn domains(&self, app_id: &str) -> Result<Vec<Domain>> {
        Ok(
            sqlx::query("SELECT * FROM domains WHERE app_id = $1 ORDER BY hostname")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(domain_row)
                .collect(),
        )
    }

    /// Every app's custom domains (for the router's route table).
    pub async fn all_domains(&self) -> Result<Vec<Domain>> {
        Ok(sqlx::query("SELECT * FROM domains ORDER BY hostname")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(domain_row)
            .collect())
    }

    /// Gives `hostname` (already checked and lowercased) to the app. `Ok(Err(taken))` when an
    /// app (this one or another) has it; `Conflict` when the app has
    /// [`MAX_DOMAINS_PER_APP`]; `NotFound` when the app is gone.
    pub async fn add_domain(
        &self,
        app_id: &str,
        hostname: &str,
    ) -> Result<Result<Domain, DomainTaken>> {
        let mut tx = self.write_tx().await?;
        if sqlx::query("SELECT id FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("app {app_id}")));
        }
        if let Some(owner) = sqlx::query(
            "SELECT apps.name AS name FROM domains JOIN apps ON apps.id = domains.app_id WHERE domains.hostname = $1",
        )
        .bind(hostname)
        .fetch_optional(&mut *tx)
        .await?
        {
            return Ok(Err(DomainTaken {
                hostname: hostname.to_string(),
                app_name: owner.get("name"),
            }));
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM domains WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
        if count >= MAX_DOMAINS_PER_APP {
            return Err(StoreError::Conflict(format!(
                "the app's {MAX_DOMAINS_PER_APP}th domain (the most an app may have)"
            )));
        }
        let now = now_ms();
        let domain = Domain {
            id: new_id(),
            app_id: app_id.to_string(),
            hostname: hostname.to_string(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO domains (id, app_id, hostname, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(&domain.id)
        .bind(app_id)
        .bind(hostname)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(domain))
    }

    /// Takes the custom domain (by hostname or id) from the app; `NotFound` if it has none such.
    pub async fn remove_domain(&self, app_id: &str, hostname_or_id: &str) -> Result<Domain> {
        let mut tx = self.write_tx().await?;
        let found =
            sqlx::query("SELECT * FROM domains WHERE app_id = $1 AND (hostname = $2 OR id = $2)")
                .bind(app_id)
                .bind(hostname_or_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| domain_row(&r))
                .ok_or_else(|| StoreError::NotFound(format!("domain {hostname_or_id}")))?;
        sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(&found.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(found)
    }

    // ---- HTTP -> HTTPS redirect ----

    /// Whether the app's plain-HTTP requests are redirected to HTTPS.
    pub async fn https_redirect(&self, app_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT app_id FROM https_redirects WHERE app_id = $1")
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// The apps whose plain-HTTP requests are redirected to HTTPS.
    pub async fn https_redirect_apps(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query("SELECT app_id FROM https_redirects ORDER BY app_id")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get("app_id"))
                .collect(),
        )
    }

    pub async fn set_https_redirect(&self, app_id: &str, on: bool) -> Result<()> {
        let done = if on {
            sqlx::query(
                "INSERT INTO https_redirects (app_id, created_at) SELECT id, $2 FROM apps WHERE id = $1 \
                 ON CONFLICT (app_id) DO NOTHING",
            )
            .bind(app_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            self.https_redirect(app_id).await?
        } else {
            sqlx::query("DELETE FROM https_redirects WHERE app_id = $1")
                .bind(app_id)
                .execute(&self.pool)
                .await?;
            false
        };
        if done != on {
            return Err(StoreError::NotFound(format!("app {app_id}")));
        }
        Ok(())
    }

    // ---- certificates ----

    /// Certificates, oldest first: the app's (`Some`), or the server's own (`None`).
    pub async fn certs(&self, app_id: Option<&str>) -> Result<Vec<StoredCert>> {
        let rows = match app_id {
            Some(app_id) => {
                sqlx::query("SELECT * FROM certs WHERE app_id = $1 ORDER BY created_at, id")
                    .bind(app_id)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM certs WHERE app_id IS NULL ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(cert_row).collect()
    }

    /// Every certificate, oldest first (what the TLS listener serves).
    pub async fn all_certs(&self) -> Result<Vec<StoredCert>> {
        sqlx::query("SELECT * FROM certs ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(cert_row)
            .collect()
    }

    /// Records a certificate under a new id and a name made from it (`cert-<8 hex>`).
    pub async fn add_cert(&self, cert: NewCert<'_>) -> Result<StoredCert> {
        let now = now_ms();
        let id = new_id();
        let name = format!("cert-{}", &id.replace('-', "")[..8]);
        let result = sqlx::query(
            "INSERT INTO certs (id, name, app_id, source, certificate_chain, domains, issuer, not_before, not_after, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&id)
        .bind(&name)
        .bind(cert.app_id)
        .bind(cert.source.as_str())
        .bind(cert.certificate_chain)
        .bind(serde_json::to_string(cert.domains)?)
        .bind(cert.issuer)
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("certificate {name}")))
            }
            Err(e) if matches!(&e, sqlx::Error::Database(db) if db.is_foreign_key_violation()) => {
                return Err(StoreError::NotFound(format!(
                    "app {}",
                    cert.app_id.unwrap_or_default()
                )))
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        self.cert(cert.app_id, &id).await
    }

    /// The certificate with this id or name, of the app (`Some`) or the server's own (`None`).
    pub async fn cert(&self, app_id: Option<&str>, id_or_name: &str) -> Result<StoredCert> {
        let row = sqlx::query("SELECT * FROM certs WHERE (id = $1 OR name = $1) AND app_id IS $2")
            .bind(id_or_name)
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("certificate {id_or_name}")))?;
        cert_row(&row)
    }

    /// Removes the certificate with this id or name; returns it.
    pub async fn remove_cert(&self, app_id: Option<&str>, id_or_name: &str) -> Result<StoredCert> {
        let cert = self.cert(app_id, id_or_name).await?;
        sqlx::query("DELETE FROM certs WHERE id = $1")
            .bind(&cert.id)
            .execute(&self.pool)
            .await?;
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::{CertSource, NewCert};
    use crate::{Store, StoreError};

    #[tokio::test]
    async fn a_domain_belongs_to_one_app_and_goes_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.db"))
            .await
            .expect("open");
        let user = s.ensure_user("admin@example.com").await.expect("user");
        let a = s.create_app("alpha", &user.id).await.expect("create");
        let b = s.create_app("beta", &user.id).await.expect("create");
        let www = s
            .add_domain(&a.id, "www.example.com")
            .await
            .expect("add")
            .expect("free");
        let taken = s
            .add_domain(&b.id, "www.example.com")
            .await
            .expect("add")
            .expect_err("taken");
        assert_eq!(taken.app_name, "alpha");
        s.add_domain(&b.id, "*.example.com")
            .await
            .expect("add")
            .expect("free");
        assert_eq!(
            s.domains(&a.id).await.expect("list"),
            std::slice::from_ref(&www)
        );
        assert_eq!(s.all_domains().await.expect("all").len(), 2);
        assert!(matches!(
            s.remove_domain(&b.id, "www.example.com").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.remove_domain(&a.id, "www.example.com")
                .await
                .expect("remove"),
            www
        );
        s.set_https_redirect(&b.id, true).await.expect("on");
        s.set_https_redirect(&b.id, true).await.expect("on twice");
        assert_eq!(
            s.https_redirect_apps().await.expect("list"),
            std::slice::from_ref(&b.id)
        );
        let domains = vec!["beta.example.com".to_string()];
        let cert = s
            .add_cert(NewCert {
                app_id: Some(&b.id),
                source: CertSource::Uploaded,
                certificate_chain: "PEM",
                domains: &domains,
                issuer: "CN=test",
                not_before: 1,
                not_after: 2,
            })
            .await
            .expect("cert");
        assert_eq!(cert.domains, domains);
        assert_eq!(
            s.cert(Some(&b.id), &cert.name).await.expect("by name"),
            cert
        );
        assert!(s.certs(None).await.expect("server's").is_empty());
        s.delete_app(&b.id).await.expect("delete");
        assert!(s.all_domains().await.expect("all").is_empty());
        assert!(s.all_certs().await.expect("all").is_empty());
        assert!(s.https_redirect_apps().await.expect("list").is_empty());
        assert!(matches!(
            s.set_https_redirect(&b.id, true).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
