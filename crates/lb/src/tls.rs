//! TLS termination (`--tls-cert`/`--tls-key`): the PEM files are loaded once at
//! startup into a [`TlsAcceptor`]; each accepted connection completes its
//! handshake (within [`TlsFiles::handshake_timeout`]) before anything else reads
//! from it, so every strategy — client-id included — sees the decrypted stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::error::LbError;

/// Where the certificate chain and private key are, and how long a client has to
/// complete the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
}

impl TlsFiles {
    /// The default handshake timeout.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Reads and parses both files and builds the acceptor. Every error names the
    /// file (and flag) at fault.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, LbError> {
        let certs = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LbError::Tls(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                LbError::Tls(format!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn file_error(flag: &str, path: &Path, why: impl std::fmt::Display) -> LbError {
    LbError::Tls(format!("{flag} {}: {why}", path.display()))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LbError> {
    let bytes = std::fs::read(path).map_err(|e| file_error("--tls-cert", path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("--tls-cert", path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "--tls-cert",
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, LbError> {
    let bytes = std::fs::read(path).map_err(|e| file_error("--tls-key", path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            file_error("--tls-key", path, "no PEM private key found")
        }
        e => file_error("--tls-key", path, format!("invalid PEM: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cert: &Path, key: &Path) -> TlsFiles {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            handshake_timeout: TlsFiles::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    fn error_of(files: TlsFiles) -> String {
        match files.acceptor() {
            Ok(_) => panic!("accepted {files:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = error_of(files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        ));
        assert!(e.contains("--tls-cert /nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn a_file_without_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("lb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = error_of(files(&junk, &junk));
        assert!(e.contains("--tls-cert") && e.contains("junk.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
