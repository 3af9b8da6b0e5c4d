//! Access control that Mosquitto users can reuse unchanged.
//!
//! - [`password`] — the `mosquitto_passwd` file format (PBKDF2-SHA512 `$7$` hashes, and
//!   SHA512 `$6$` for reading), check and create entries.
//! - [`acl`] — Mosquitto's `acl_file` format (`user`, `topic`, `pattern` lines with
//!   `read`/`write`/`readwrite`/`deny`, `%c` and `%u`), and the access decision.

pub mod acl;
pub mod password;

pub use acl::{Access, AclError, AclFile};
pub use password::{PasswordError, PasswordFile};
