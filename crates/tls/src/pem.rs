//! PEM files into rustls's types. Each error names the setting (a flag or a
//! configuration key, as the caller calls it) and the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::TlsError;

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(setting, path, e))
}

/// Reads every certificate of a PEM file (a chain, leaf first, or a CA bundle); an
/// error when there is none.
pub fn load_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from(setting, path, &read(setting, path)?)
}

/// [`load_certs`] on bytes already read from `path`.
pub fn certs_from(
    setting: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(setting, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            setting,
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from(setting, path, &read(setting, path)?)
}

/// [`load_key`] on bytes already read from `path`.
pub fn key_from(
    setting: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::file(setting, path, "no PEM private key found")
        }
        e => TlsError::file(setting, path, format!("invalid PEM: {e}")),
    })
}
