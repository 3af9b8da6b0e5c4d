//! rustls client configurations, for talking to our own HTTPS admin listeners (a
//! node asking the others for the cluster-wide answers, `astramq ctl --url https://`):
//! trust exactly the CA bundle given (no system store: these are a deployment's own
//! certificates), TLS 1.2 and 1.3, and optionally present a client certificate.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

use crate::pem::{load_certs, load_key};
use crate::server::{provider, TlsError};

/// A file and the setting (flag or configuration key) that named it, for errors.
pub type Named<'a> = (&'static str, &'a Path);

/// A client configuration trusting the CAs in `ca` (setting `ca_setting`), with
/// `identity` (certificate chain, key, and their settings) as its client
/// certificate when given.
pub fn client_config(
    ca_setting: &'static str,
    ca: &Path,
    identity: Option<(Named<'_>, Named<'_>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_setting, ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::file(ca_setting, ca, format!("not a usable CA: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(((cert_setting, cert), (key_setting, key))) => builder
            .with_client_auth_cert(load_certs(cert_setting, cert)?, load_key(key_setting, key)?)
            .map_err(|e| TlsError::Pair {
                cert_setting,
                cert: cert.to_path_buf(),
                key_setting,
                key: key.to_path_buf(),
                reason: e.to_string(),
            })?,
    };
    Ok(Arc::new(config))
}
