//! TLS toward Redis: which URLs use it, and the certificates they trust and present.
//!
//! `rediss://host:port` (one server), `rediss+cluster://h:p,h:p` (Redis Cluster: every
//! node, also those learnt from `CLUSTER SLOTS`) and `rediss+sentinel://h:p,h:p/master`
//! (the sentinels *and* the master and replicas they name) are encrypted with rustls
//! (the redis crate's `tokio-rustls-comp`, ring provider: the workspace's one crypto
//! provider). The server certificate is always verified — its chain against the
//! system's trust store, or only against `cluster.redis_tls_ca` when that is set — and
//! so is the host name the node dials (an IP address needs an IP subject alternative
//! name). There is no switch to turn verification off, and no fallback to plain text:
//! a handshake that fails is a start-up error naming the URL.
//!
//! `cluster.redis_tls_cert` + `cluster.redis_tls_key` add a client certificate for
//! servers that require one (`tls-auth-clients yes`). TLS settings with a plain-text URL
//! are refused, so a typo in the scheme cannot silently send everything in clear.

use std::path::{Path, PathBuf};

use broker::config::ClusterSettings;
use redis::{ClientTlsConfig, TlsCertificates};
use thiserror::Error;

/// The TLS files of `cluster.redis_tls_ca`, `cluster.redis_tls_cert` and
/// `cluster.redis_tls_key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Certificate authorities (PEM) trusted instead of the system's store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {key} {path}: {source}")]
    Read {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("{key} {path}: no PEM {kind} in it")]
    NotPem {
        /// The configuration key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// `CERTIFICATE` or `PRIVATE KEY`.
        kind: &'static str,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("cluster.redis_tls_cert and cluster.redis_tls_key must be given together")]
    HalfClientIdentity,
}

impl From<&ClusterSettings> for RedisTls {
    fn from(s: &ClusterSettings) -> RedisTls {
        RedisTls {
            ca: s.redis_tls_ca.clone(),
            cert: s.redis_tls_cert.clone(),
            key: s.redis_tls_key.clone(),
        }
    }
}

impl RedisTls {
    /// Whether no TLS file is configured.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files: `None` when none is configured (the system's trust store, no
    /// client certificate).
    pub fn certificates(&self) -> Result<Option<TlsCertificates>, TlsError> {
        if self.is_empty() {
            return Ok(None);
        }
        let root_cert = self
            .ca
            .as_deref()
            .map(|p| read(p, "cluster.redis_tls_ca", "CERTIFICATE"))
            .transpose()?;
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert, "cluster.redis_tls_cert", "CERTIFICATE")?,
                client_key: read(key, "cluster.redis_tls_key", "PRIVATE KEY")?,
            }),
            (None, None) => None,
            _ => return Err(TlsError::HalfClientIdentity),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Whether `url` asks for TLS (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://")
        || url.starts_with("rediss+cluster://")
        || url.starts_with("rediss+sentinel://")
}

/// A PEM file's bytes, checked to hold at least one block of `kind` (`PRIVATE KEY`
/// also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`), so a wrong file is named
/// here rather than surfacing as a handshake failure.
fn read(path: &Path, key: &'static str, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(kind))
    });
    if !found {
        return Err(TlsError::NotPem {
            key,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls() {
        assert!(is_tls_url("rediss://h:1"));
        assert!(is_tls_url("rediss+cluster://h:1,h:2"));
        assert!(is_tls_url("rediss+sentinel://h:1/m"));
        assert!(!is_tls_url("redis://h:1"));
        assert!(!is_tls_url("redis+sentinel://h:1/m"));
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("astramq-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.join("junk.txt");
        std::fs::write(&not_pem, "hello").unwrap();

        assert!(RedisTls::default().certificates().unwrap().is_none());
        let tls = RedisTls {
            ca: Some(ca.clone()),
            ..Default::default()
        };
        let certs = tls.certificates().unwrap().unwrap();
        assert!(certs.root_cert.is_some() && certs.client_tls.is_none());

        let e = RedisTls {
            ca: Some(not_pem.clone()),
            ..Default::default()
        }
        .certificates()
        .unwrap_err();
        assert!(e.to_string().contains("cluster.redis_tls_ca"), "{e}");
        assert!(e.to_string().contains("junk.txt"), "{e}");

        let e = RedisTls {
            ca: Some(dir.join("missing.pem")),
            ..Default::default()
        }
        .certificates()
        .unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");

        let e = RedisTls {
            cert: Some(ca),
            ..Default::default()
        }
        .certificates()
        .unwrap_err();
        assert!(matches!(e, TlsError::HalfClientIdentity), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
