//! The `mosquitto_passwd` file format: `username:$7$iterations$salt_b64$hash_b64` lines.

use std::path::Path;
use thiserror::Error;

/// Why a password file could not be used.
#[derive(Debug, Error)]
pub enum PasswordError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not `user:hash` with a supported hash.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A loaded password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    _p: (),
}

impl PasswordFile {
    /// Loads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordError> {
        let _ = path;
        todo!("auth helper")
    }

    /// Whether `username` exists and `password` matches its hash.
    pub fn check(&self, username: &str, password: &[u8]) -> bool {
        let _ = (username, password);
        todo!("auth helper")
    }
}
