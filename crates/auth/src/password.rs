//! The `mosquitto_passwd` file format: `username:$7$iterations$salt_b64$hash_b64` lines.
//!
//! Two hash kinds are understood, as in Mosquitto 2:
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, what `mosquitto_passwd` 2.x
//!   writes (101 iterations, 12-byte salt, 64-byte hash).
//! - `$6$<salt>$<hash>`: SHA-512 of the password followed by the salt, what
//!   `mosquitto_passwd` 1.x wrote. Read only: [`PasswordFile::set`] always writes `$7$`.
//!
//! Salt and hash are standard base64 (with `=` padding, accepted with or without it).
//! Blank lines and lines starting with `#` are kept as they are when the file is saved.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// PBKDF2 iterations [`PasswordFile::set`] uses, Mosquitto 2's default.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length in bytes of new entries, Mosquitto 2's default.
pub const SALT_LEN: usize = 12;
/// Length in bytes of a SHA-512 hash.
pub const HASH_LEN: usize = 64;

/// Standard base64, writing padding, accepting input with or without it (as OpenSSL does).
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
    /// A username cannot be stored in a password file.
    #[error("invalid username {username:?}: {reason}")]
    InvalidUsername {
        /// The username given.
        username: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// How a password is hashed in one entry.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    /// The digest of `password` with this entry's parameters.
    fn digest(&self, password: &[u8]) -> [u8; HASH_LEN] {
        let mut out = [0u8; HASH_LEN];
        match self {
            Hash::Sha512 { salt, .. } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                out.copy_from_slice(&h.finalize());
            }
            Hash::Pbkdf2 {
                iterations, salt, ..
            } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
            }
        }
        out
    }

    fn expected(&self) -> &[u8] {
        match self {
            Hash::Sha512 { hash, .. } | Hash::Pbkdf2 { hash, .. } => hash,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let got = self.digest(password);
        bool::from(got.as_slice().ct_eq(self.expected()))
    }

    fn encode(&self) -> String {
        match self {
            Hash::Sha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${}${}${}",
                iterations,
                B64.encode(salt),
                B64.encode(hash)
            ),
        }
    }

    /// Parses the part after `username:`.
    fn parse(s: &str) -> Result<Hash, String> {
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| "password is not hashed (expected $6$ or $7$)".to_string())?;
        let fields: Vec<&str> = rest.split('$').collect();
        let decode = |what: &str, b: &str| {
            B64.decode(b)
                .map_err(|e| format!("{what} is not valid base64: {e}"))
        };
        let salt_hash = |salt_b64: &str, hash_b64: &str| -> Result<(Vec<u8>, Vec<u8>), String> {
            let salt = decode("salt", salt_b64)?;
            if salt.len() != SALT_LEN && salt.len() != HASH_LEN {
                return Err(format!(
                    "salt is {} bytes (expected {SALT_LEN} or {HASH_LEN})",
                    salt.len()
                ));
            }
            let hash = decode("hash", hash_b64)?;
            if hash.len() != HASH_LEN {
                return Err(format!(
                    "hash is {} bytes (expected {HASH_LEN})",
                    hash.len()
                ));
            }
            Ok((salt, hash))
        };
        match fields.as_slice() {
            ["6", salt, hash] => {
                let (salt, hash) = salt_hash(salt, hash)?;
                Ok(Hash::Sha512 { salt, hash })
            }
            ["7", iterations, salt, hash] => {
                let iterations = if iterations.bytes().all(|b| b.is_ascii_digit()) {
                    iterations.parse::<u32>().ok()
                } else {
                    None
                }
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("invalid iteration count {iterations:?}"))?;
                let (salt, hash) = salt_hash(salt, hash)?;
                Ok(Hash::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                })
            }
            ["6", ..] => Err("$6$ hash must be $6$<salt>$<hash>".to_string()),
            ["7", ..] => Err("$7$ hash must be $7$<iterations>$<salt>$<hash>".to_string()),
            [kind, ..] => Err(format!(
                "unsupported hash type ${kind}$ (expected $6$ or $7$)"
            )),
            [] => Err("empty hash".to_string()),
        }
    }
}

/// One line of the file, kept in order so that saving preserves comments.
#[derive(Clone)]
enum Line {
    /// A blank line or a comment, written back unchanged.
    Other(String),
    /// A user entry.
    Entry { username: String, hash: Hash },
}

/// A loaded password file.
///
/// Lookups are by exact username. Comments and blank lines are kept in place and
/// written back by [`PasswordFile::save`].
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// Username → index in `lines`.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for PasswordFile {
    // Hashes are left out so that they do not end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordFile")
            .field("usernames", &self.usernames().collect::<Vec<_>>())
            .finish()
    }
}

/// Checks that `username` can be written to and read back from a password file.
fn validate_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        return Err("empty");
    }
    if username.contains(':') {
        return Err("contains ':'");
    }
    if username.contains(['\n', '\r', '\0']) {
        return Err("contains a line break or NUL");
    }
    if username.starts_with('#') {
        return Err("starts with '#' (would be read as a comment)");
    }
    if username.trim() != username {
        return Err("has leading or trailing whitespace (Mosquitto trims it)");
    }
    if username.len() > 65535 {
        return Err("longer than 65535 bytes");
    }
    Ok(())
}

impl PasswordFile {
    /// An empty password file (no users).
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    /// Loads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordError> {
        let name = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| PasswordError::Io {
            path: name.clone(),
            source,
        })?;
        PasswordFile::parse(&text, &name)
    }

    /// Parses the text of a password file; `path` is only used in error messages.
    ///
    /// Each non-blank line not starting with `#` must be `username:$7$...` or
    /// `username:$6$...`; anything else, and a username given twice, is an error.
    pub fn parse(text: &str, path: &str) -> Result<PasswordFile, PasswordError> {
        let mut file = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |reason: String| PasswordError::Parse {
                path: path.to_string(),
                line: line_no,
                reason,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || raw.starts_with('#') {
                file.lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let (user, hash) = raw
                .split_once(':')
                .ok_or_else(|| err("expected username:hash".to_string()))?;
            let user = user.trim();
            if user.is_empty() {
                return Err(err("empty username".to_string()));
            }
            let hash = hash.trim();
            if hash.is_empty() {
                return Err(err(format!("no password hash for user {user:?}")));
            }
            let hash = Hash::parse(hash).map_err(|r| err(format!("user {user:?}: {r}")))?;
            if file.index.contains_key(user) {
                return Err(err(format!("user {user:?} is listed more than once")));
            }
            file.index.insert(user.to_string(), file.lines.len());
            file.lines.push(Line::Entry {
                username: user.to_string(),
                hash,
            });
        }
        Ok(file)
    }

    /// Whether `username` exists and `password` matches its hash.
    ///
    /// The comparison is constant-time, and an unknown username costs about as much
    /// as a known one so that response times do not reveal which usernames exist.
    pub fn check(&self, username: &str, password: &[u8]) -> bool {
        match self.entry(username) {
            Some(hash) => hash.verify(password),
            None => {
                let dummy = Hash::Pbkdf2 {
                    iterations: DEFAULT_ITERATIONS,
                    salt: vec![0; SALT_LEN],
                    hash: vec![0; HASH_LEN],
                };
                let _ = dummy.verify(password);
                false
            }
        }
    }

    fn entry(&self, username: &str) -> Option<&Hash> {
        match self.lines.get(*self.index.get(username)?) {
            Some(Line::Entry { hash, .. }) => Some(hash),
            _ => None,
        }
    }

    /// Whether `username` has an entry.
    pub fn contains(&self, username: &str) -> bool {
        self.index.contains_key(username)
    }

    /// The usernames, in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> + '_ {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { username, .. } => Some(username.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Sets `username`'s password, as `mosquitto_passwd -b` does: a `$7$` PBKDF2-SHA512
    /// hash with a fresh random 12-byte salt and [`DEFAULT_ITERATIONS`] iterations.
    /// An existing entry is replaced in place; a new one is appended.
    pub fn set(&mut self, username: &str, password: &[u8]) -> Result<(), PasswordError> {
        self.set_with_iterations(username, password, DEFAULT_ITERATIONS)
    }

    /// Like [`PasswordFile::set`] with a chosen PBKDF2 iteration count (at least 1).
    pub fn set_with_iterations(
        &mut self,
        username: &str,
        password: &[u8],
        iterations: u32,
    ) -> Result<(), PasswordError> {
        validate_username(username).map_err(|reason| PasswordError::InvalidUsername {
            username: username.to_string(),
            reason,
        })?;
        let iterations = iterations.max(1);
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| PasswordError::Io {
            path: "<random salt>".to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut hash = Hash::Pbkdf2 {
            iterations,
            salt,
            hash: Vec::new(),
        };
        let digest = hash.digest(password);
        if let Hash::Pbkdf2 { hash: h, .. } = &mut hash {
            *h = digest.to_vec();
        }
        let line = Line::Entry {
            username: username.to_string(),
            hash,
        };
        match self.index.get(username) {
            Some(&i) => self.lines[i] = line,
            None => {
                self.index.insert(username.to_string(), self.lines.len());
                self.lines.push(line);
            }
        }
        Ok(())
    }

    /// Removes `username`; returns whether it was there.
    pub fn remove(&mut self, username: &str) -> bool {
        let Some(i) = self.index.remove(username) else {
            return false;
        };
        self.lines.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        true
    }

    /// The file's text, as [`PasswordFile::save`] writes it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(s) => out.push_str(s),
                Line::Entry { username, hash } => {
                    out.push_str(username);
                    out.push(':');
                    out.push_str(&hash.encode());
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file to `path` atomically: a temporary file in the same directory,
    /// created with mode 0600, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), PasswordError> {
        let name = path.display().to_string();
        let io = |source| PasswordError::Io {
            path: name.clone(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        })?;
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            file_name.to_string_lossy(),
            u64::from_le_bytes(nonce)
        ));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
            // Make the rename itself durable; failure here is not fatal.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}
