//! TLS for AstraMQ, shared by the broker's listeners and `astramq lb`, so that the
//! workspace has one crypto provider (ring: no C/cmake build, unlike aws-lc) and one
//! way of reading certificates.
//!
//! - [`pem`] — certificate chains, private keys and CA bundles from PEM files; every
//!   error names the file and the setting it came from.
//! - [`server`] — [`ServerTls`] (which files, whether clients need a certificate) into
//!   a rustls [`ServerConfig`](tokio_rustls::rustls::ServerConfig): TLS 1.2 and 1.3
//!   only, the provider's safe cipher suites.
//! - [`client`] — rustls client configurations for our own HTTPS admin listeners
//!   (a given CA bundle, an optional client certificate).
//! - [`stream`] — the broker's server-side TLS stream over rustls's unbuffered API,
//!   which gives its buffers back while the connection is idle.
//! - [`identity`] — the subject of a client certificate (its Common Name, or the whole
//!   name in RFC 4514 form) for `use_identity_as_username` /
//!   `use_subject_as_username`.

pub mod client;
pub mod identity;
pub mod pem;
pub mod server;
pub mod stream;

pub use server::{provider, ServerTls, SettingNames, TlsError};
