//! [`ServerTls`]: the files and client-certificate policy of a TLS listener, turned
//! into a rustls [`ServerConfig`].
//!
//! Reading and building are two steps ([`ServerTls::read`], [`ServerTls::build`]) so
//! that a caller reloading on file changes can compare what it read with what it
//! built last, and rebuild only when something changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::pem;

/// The one crypto provider of the workspace: ring (no C/cmake build, unlike aws-lc),
/// chosen explicitly rather than through a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read, or holds nothing usable.
    #[error("{setting} {}: {reason}", path.display())]
    File {
        /// The flag or configuration key that named it (`tls_cert`, `--tls-key`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate chain and key parsed but cannot be used together (a key that
    /// does not match the certificate, an unsupported key type).
    #[error("{cert_setting} {} / {key_setting} {}: {reason}", cert.display(), key.display())]
    Pair {
        /// The setting naming the certificate chain.
        cert_setting: &'static str,
        /// The certificate chain.
        cert: PathBuf,
        /// The setting naming the key.
        key_setting: &'static str,
        /// The key.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// rustls refused the protocol setup itself (not expected with ring).
    #[error("TLS setup: {0}")]
    Setup(String),
}

impl TlsError {
    /// An error about one file.
    pub fn file(setting: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
        TlsError::File {
            setting,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// What the files are called where the user set them: configuration keys for the
/// broker, flags for the load balancer. Errors use these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    /// The certificate chain's setting.
    pub cert: &'static str,
    /// The private key's setting.
    pub key: &'static str,
    /// The client CA bundle's setting.
    pub client_ca: &'static str,
}

impl SettingNames {
    /// The broker's configuration keys.
    pub const KEYS: SettingNames = SettingNames {
        cert: "tls_cert",
        key: "tls_key",
        client_ca: "tls_client_ca",
    };
    /// Command-line flags (the load balancer's).
    pub const FLAGS: SettingNames = SettingNames {
        cert: "--tls-cert",
        key: "--tls-key",
        client_ca: "--tls-client-ca",
    };
}

/// A TLS listener's files and client-certificate policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted; none: clients
    /// are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a valid certificate is refused during the
    /// handshake. Without it, a client may send none (one it sends is still
    /// verified, and an invalid one refused).
    pub require_certificate: bool,
    /// How errors name the files.
    pub names: SettingNames,
}

/// The bytes of a [`ServerTls`]'s files at one moment (or why one could not be
/// read), comparable with an earlier reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    cert: Result<Vec<u8>, String>,
    key: Result<Vec<u8>, String>,
    client_ca: Option<Result<Vec<u8>, String>>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}

impl ServerTls {
    /// Reads the files (following symbolic links, as Kubernetes' secret volumes
    /// need), without parsing them.
    pub fn read(&self) -> TlsFiles {
        TlsFiles {
            cert: read(&self.cert),
            key: read(&self.key),
            client_ca: self.client_ca.as_deref().map(read),
        }
    }

    /// Reads the files and builds the configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.build(&self.read())
    }

    /// Builds the configuration from files read by [`ServerTls::read`]: TLS 1.2 and
    /// 1.3 with ring's default (safe) cipher suites, the client verifier when
    /// `client_ca` is set.
    pub fn build(&self, files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
        let names = self.names;
        let bytes = |setting, path: &Path, r: &Result<Vec<u8>, String>| match r {
            Ok(b) => Ok(b.clone()),
            Err(e) => Err(TlsError::file(setting, path, e)),
        };
        let certs = pem::certs_from(
            names.cert,
            &self.cert,
            &bytes(names.cert, &self.cert, &files.cert)?,
        )?;
        let key = pem::key_from(
            names.key,
            &self.key,
            &bytes(names.key, &self.key, &files.key)?,
        )?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = match (&self.client_ca, &files.client_ca) {
            (Some(path), Some(read)) => {
                let ca =
                    pem::certs_from(names.client_ca, path, &bytes(names.client_ca, path, read)?)?;
                let mut roots = RootCertStore::empty();
                for c in ca {
                    roots.add(c).map_err(|e| {
                        TlsError::file(
                            names.client_ca,
                            path,
                            format!("unusable CA certificate: {e}"),
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_certificate {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::file(names.client_ca, path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pair {
                cert_setting: names.cert,
                cert: self.cert.clone(),
                key_setting: names.key,
                key: self.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("astramq-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn tls(d: &Path, ca: Option<&str>) -> ServerTls {
        ServerTls {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            client_ca: ca.map(|c| d.join(c)),
            require_certificate: true,
            names: SettingNames::KEYS,
        }
    }

    fn write_pair(d: &Path, name: &str) -> rcgen::CertifiedKey {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(d.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        ck
    }

    #[test]
    fn a_good_pair_builds_with_and_without_client_ca() {
        let d = dir("good");
        let ck = write_pair(&d.0, "localhost");
        tls(&d.0, None).server_config().unwrap();
        std::fs::write(d.0.join("ca.pem"), ck.cert.pem()).unwrap();
        tls(&d.0, Some("ca.pem")).server_config().unwrap();
    }

    #[test]
    fn every_bad_file_is_named() {
        let d = dir("bad");
        let e = tls(&d.0, None).server_config().unwrap_err().to_string();
        assert!(e.starts_with("tls_cert ") && e.contains("cert.pem"), "{e}");
        write_pair(&d.0, "localhost");
        std::fs::write(d.0.join("key.pem"), "junk\n").unwrap();
        let e = tls(&d.0, None).server_config().unwrap_err().to_string();
        assert!(
            e.contains("tls_key") && e.contains("no PEM private key"),
            "{e}"
        );
        write_pair(&d.0, "localhost");
        std::fs::write(d.0.join("ca.pem"), "junk\n").unwrap();
        let e = tls(&d.0, Some("ca.pem"))
            .server_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_client_ca") && e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let d = dir("mismatch");
        write_pair(&d.0, "localhost");
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.0.join("key.pem"), other.serialize_pem()).unwrap();
        let e = tls(&d.0, None).server_config().unwrap_err().to_string();
        assert!(e.contains("tls_cert") && e.contains("tls_key"), "{e}");
    }

    #[test]
    fn readings_compare_equal_until_a_file_changes() {
        let d = dir("read");
        write_pair(&d.0, "localhost");
        let t = tls(&d.0, None);
        let a = t.read();
        assert_eq!(a, t.read());
        write_pair(&d.0, "localhost");
        assert_ne!(a, t.read());
    }
}
