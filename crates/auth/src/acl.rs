//! Mosquitto's `acl_file` format and the access decision.

use std::path::Path;
use thiserror::Error;

/// The access a client asks for on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (SUBSCRIBE, and each delivery).
    Read,
    /// Send messages (PUBLISH, will).
    Write,
}

/// Why an ACL file could not be used.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not valid.
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

/// A loaded ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    _p: (),
}

impl AclFile {
    /// Loads and parses `path`.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let _ = path;
        todo!("auth helper")
    }

    /// Whether client `client_id` authenticated as `username` (None = anonymous) may
    /// have `access` to `topic` (a topic name for Write, a topic name or filter for Read).
    pub fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        let _ = (client_id, username, topic, access);
        todo!("auth helper")
    }
}
