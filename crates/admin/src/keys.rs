//! API keys: a file of hashed keys, like the password file, each with a scope.
//!
//! A key is `NAME.SECRET`: the name says which line to check, the secret is 32
//! random bytes in hex, shown once by `astramq ctl key add` and never stored. The
//! file holds one line per key:
//!
//! ```text
//! # name:scope:sha256:salt:hash
//! grafana:read:sha256:6f1c…(32 hex):9a0b…(64 hex)
//! ops:admin:sha256:…:…
//! ```
//!
//! `hash` is SHA-256 of the salt's bytes followed by the secret. A fast hash is
//! enough here: the secret is 256 random bits, not a password a person chose, so
//! there is nothing to guess; a slow one (the password file's PBKDF2) would only make
//! every API request expensive. The comparison is constant-time (`subtle`), and an
//! unknown name is checked against a dummy line so it takes as long as a wrong
//! secret.
//!
//! The file is read again when its modification time changes (looked at most once
//! a second), so keys added or removed while the node runs take effect without a
//! restart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every `GET`.
    Read,
    /// Everything: kick, delete, publish too.
    Admin,
}

impl Scope {
    /// Its name in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Parses `read` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A key file that cannot be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not `name:scope:sha256:salt:hash`.
    #[error("{path}:{line}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The name is already in the file, or not usable.
    #[error("{0}")]
    Name(String),
}

/// One line of the file.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    scope: Scope,
    salt: [u8; 16],
    hash: [u8; 32],
}

/// Why a request's key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key in the request.
    Missing,
    /// Not `NAME.SECRET`, an unknown name or a wrong secret (not told apart, so a
    /// caller cannot probe for names).
    Invalid,
    /// No key file is configured: every request is refused.
    NoKeys,
}

/// The keys, as last read from the file.
#[derive(Debug)]
pub struct KeyStore {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// The line an unknown name is checked against (so it costs a hash too).
fn dummy() -> Entry {
    Entry {
        name: String::new(),
        scope: Scope::Read,
        salt: [0; 16],
        hash: [0xff; 32],
    }
}

fn digest(salt: &[u8; 16], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether `name` may name a key: letters, digits, `-` and `_`, 1 to 64 of them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, KeyError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| KeyError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = line.split(':').collect();
        let [name, scope, algo, salt, hash] = parts[..] else {
            return Err(bad("expected name:scope:sha256:salt:hash"));
        };
        if !valid_name(name) {
            return Err(bad("a key name is letters, digits, - and _"));
        }
        let scope = Scope::parse(scope).ok_or_else(|| bad("scope must be read or admin"))?;
        if algo != "sha256" {
            return Err(bad("unknown hash (only sha256)"));
        }
        let salt = unhex::<16>(salt).ok_or_else(|| bad("salt must be 32 hex digits"))?;
        let hash = unhex::<32>(hash).ok_or_else(|| bad("hash must be 64 hex digits"))?;
        entries.push(Entry {
            name: name.to_string(),
            scope,
            salt,
            hash,
        });
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<(Vec<Entry>, Option<SystemTime>), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((parse(path, &text)?, modified))
}

impl KeyStore {
    /// Reads `path` (`None`: no keys, every request refused).
    pub fn load(path: Option<&Path>) -> Result<KeyStore, KeyError> {
        let (entries, modified) = match path {
            Some(p) => read(p)?,
            None => (Vec::new(), None),
        };
        Ok(KeyStore {
            path: path.map(Path::to_path_buf),
            state: Mutex::new(State {
                entries,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// Re-reads the file if it changed (at most once a second). A file that became
    /// unreadable or malformed keeps the keys last read, and says so in the log.
    fn refresh(&self, state: &mut State) {
        let Some(path) = &self.path else { return };
        if state.checked.elapsed() < RECHECK {
            return;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == state.modified {
            return;
        }
        match read(path) {
            Ok((entries, modified)) => {
                tracing::info!(path = %path.display(), keys = entries.len(), "admin API keys reloaded");
                state.entries = entries;
                state.modified = modified;
            }
            Err(e) => {
                state.modified = modified;
                tracing::warn!("admin API keys not reloaded, keeping the previous ones: {e}");
            }
        }
    }

    /// The scope of `key` (`NAME.SECRET`), or why it is refused.
    pub fn check(&self, key: Option<&str>) -> Result<(String, Scope), Refusal> {
        let mut state = self.state.lock();
        self.refresh(&mut state);
        if self.path.is_none() {
            return Err(Refusal::NoKeys);
        }
        let key = key.ok_or(Refusal::Missing)?;
        let (name, secret) = key.split_once('.').ok_or(Refusal::Invalid)?;
        let found = state.entries.iter().find(|e| e.name == name);
        let dummy = dummy();
        let entry = found.unwrap_or(&dummy);
        let ok = digest(&entry.salt, secret).ct_eq(&entry.hash);
        if bool::from(ok) && found.is_some() {
            Ok((entry.name.clone(), entry.scope))
        } else {
            Err(Refusal::Invalid)
        }
    }
}

/// Adds a key named `name` with `scope` to `path` (created if missing, mode 0600),
/// and returns the key to give out (`NAME.SECRET`), which is not stored.
pub fn add_key(path: &Path, name: &str, scope: Scope) -> Result<String, KeyError> {
    if !valid_name(name) {
        return Err(KeyError::Name(format!(
            "{name:?}: a key name is 1 to 64 letters, digits, - and _"
        )));
    }
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    if parse(path, &existing)?.iter().any(|e| e.name == name) {
        return Err(KeyError::Name(format!(
            "a key named {name:?} is already in {}",
            path.display()
        )));
    }
    let mut rng = rand::rng();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let secret = hex(&secret);
    let line = format!(
        "{name}:{}:sha256:{}:{}\n",
        scope.name(),
        hex(&salt),
        hex(&digest(&salt, &secret))
    );
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    write_private(path, &text).map_err(io)?;
    Ok(format!("{name}.{secret}"))
}

/// Removes the key named `name`; whether it was there.
pub fn remove_key(path: &Path, name: &str) -> Result<bool, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut found = false;
    let kept: String = text
        .lines()
        .filter(|l| {
            let hit = l.split(':').next() == Some(name) && !l.trim_start().starts_with('#');
            found |= hit;
            !hit
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if found {
        write_private(path, &kept).map_err(io)?;
    }
    Ok(found)
}

/// Writes `text` to `path` through a temporary file renamed over it, readable by
/// its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_check_with_their_scope_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let admin = add_key(&path, "ops", Scope::Admin).unwrap();
        let read = add_key(&path, "grafana", Scope::Read).unwrap();
        assert!(
            add_key(&path, "ops", Scope::Read).is_err(),
            "duplicate name"
        );
        assert!(add_key(&path, "no:colons", Scope::Read).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(admin.split_once('.').unwrap().1),
            "secret stored"
        );
        let store = KeyStore::load(Some(&path)).unwrap();
        assert_eq!(store.check(Some(&admin)), Ok(("ops".into(), Scope::Admin)));
        assert_eq!(
            store.check(Some(&read)),
            Ok(("grafana".into(), Scope::Read))
        );
        assert_eq!(store.check(None), Err(Refusal::Missing));
        let (name, secret) = admin.split_once('.').unwrap();
        let wrong = format!("{name}.{}", secret.replace(&secret[..1], "x"));
        assert_eq!(store.check(Some(&wrong)), Err(Refusal::Invalid));
        let swapped = format!("grafana.{secret}");
        assert_eq!(store.check(Some(&swapped)), Err(Refusal::Invalid));
        assert_eq!(store.check(Some("nobody.00")), Err(Refusal::Invalid));
        assert_eq!(store.check(Some("nodot")), Err(Refusal::Invalid));
        assert!(remove_key(&path, "ops").unwrap());
        let store = KeyStore::load(Some(&path)).unwrap();
        assert_eq!(store.check(Some(&admin)), Err(Refusal::Invalid));
        assert_eq!(
            KeyStore::load(None).unwrap().check(Some(&read)),
            Err(Refusal::NoKeys)
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# comment\n\nops:root:sha256:00:00\n").unwrap();
        let e = KeyStore::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains(":3: scope must be read or admin"), "{e}");
    }
}
