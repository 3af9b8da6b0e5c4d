//! TLS termination (`--tls-cert`/`--tls-key`): the PEM files are loaded once at
//! startup into a [`TlsAcceptor`]; each accepted connection completes its
//! handshake (within [`TlsFiles::handshake_timeout`]) before anything else reads
//! from it, so every strategy — client-id included — sees the decrypted stream.

use std::path::PathBuf;
use std::time::Duration;

use tls::{ServerTls, SettingNames};
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

    /// Reads and parses both files and builds the acceptor (the workspace's shared
    /// TLS setup, `crates/tls`: ring, TLS 1.2 and 1.3). Every error names the file
    /// and flag at fault.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, LbError> {
        let config = ServerTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: None,
            require_certificate: false,
            names: SettingNames::FLAGS,
        }
        .server_config()
        .map_err(|e| LbError::Tls(e.to_string()))?;
        Ok(TlsAcceptor::from(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
