//! The data directory's database (fjall, an LSM tree with a write-ahead journal):
//! its keyspaces, opening it (locked against a second process, its format checked),
//! and reading everything back at start-up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::message::Message;
use broker::session::{Outbound, SessionSnapshot};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::records::{
    self, read_journal, read_retained, read_session, read_subscription, split_child, JournalEntry,
    SessionRow, FORMAT,
};
use crate::spill::Spill;
use crate::StoreError;

/// The folder inside the data directory that holds the database.
pub const DB_DIR: &str = "db";

/// The database and its keyspaces.
#[derive(Clone)]
pub(crate) struct Tables {
    pub db: Database,
    /// `format` (the layout, [`FORMAT`]) and `alive` (Unix ms of the last write:
    /// when sessions still connected at a crash lost their connection), u64 BE.
    pub meta: Keyspace,
    /// Client id → [`SessionRow`].
    pub sessions: Keyspace,
    /// Client id, 0, filter → subscription options.
    pub subs: Keyspace,
    /// Client id, 0, message id → a delivery not yet acknowledged. Message ids sort by
    /// arrival, so a session's journal reads back in order.
    pub journal: Keyspace,
    /// Client id, 0, packet id (2 bytes) → the message id of an inbound QoS 2
    /// message awaiting PUBREL.
    pub inbound: Keyspace,
    /// Topic → retained message.
    pub retained: Keyspace,
}

impl Tables {
    /// Opens (creating if need be) the database at `path`.
    pub fn open(path: &Path) -> Result<Tables, fjall::Error> {
        // One background thread for flushes and compactions: the broker's own
        // threads do the work that matters.
        let db = Database::builder(path).worker_threads(1).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Tables {
            meta: ks("meta")?,
            sessions: ks("sessions")?,
            subs: ks("subscriptions")?,
            journal: ks("journal")?,
            inbound: ks("inbound")?,
            retained: ks("retained")?,
            db,
        })
    }

    /// A u64 from `meta`.
    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>, fjall::Error> {
        Ok(self.meta.get(key)?.and_then(|v| {
            let b: [u8; 8] = v.as_ref().try_into().ok()?;
            Some(u64::from_be_bytes(b))
        }))
    }
}

/// Opens (creating if need be) the database in `dir`.
pub(crate) fn open(dir: &Path) -> Result<(Tables, PathBuf), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.into(), e))?;
    let path = dir.join(DB_DIR);
    let tables = match Tables::open(&path) {
        Ok(t) => t,
        Err(fjall::Error::Locked) => return Err(StoreError::InUse(path)),
        Err(e) => return Err(StoreError::Open(path, e)),
    };
    match tables.meta_u64("format") {
        Ok(Some(f)) if f == u64::from(FORMAT) => {}
        Ok(Some(f)) => return Err(StoreError::Format(f, FORMAT)),
        Ok(None) => {
            let write = tables
                .meta
                .insert("format", u64::from(FORMAT).to_be_bytes())
                .and_then(|()| tables.db.persist(fjall::PersistMode::SyncAll));
            write.map_err(|e| StoreError::Open(path.clone(), e))?;
        }
        Err(e) => return Err(StoreError::Open(path, e)),
    }
    Ok((tables, path))
}

/// A persistent session read back at start-up.
#[derive(Debug)]
pub struct StoredSession {
    /// The client.
    pub client_id: Arc<str>,
    /// Its row: expiry (what is left of it), user name and will.
    pub row: SessionRow,
    /// When its connection ended (Unix ms): when it was parked, or the store's last
    /// write if it was connected when the process stopped.
    pub ended_at_ms: u64,
    /// Its subscriptions, queued and in-flight deliveries, inbound QoS 2 ids.
    pub snapshot: SessionSnapshot,
}

/// Everything a restarted node gets back.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Persistent sessions, in client id order.
    pub sessions: Vec<StoredSession>,
    /// Retained messages that have not expired.
    pub retained: Vec<Arc<Message>>,
    /// Records that could not be read (each was logged and skipped).
    pub unreadable: usize,
    /// Journaled deliveries whose message expired while stored.
    pub expired_messages: usize,
    /// Every restored session's deliveries stay on disk until its client is back
    /// (see `spill.rs`): how many each has, and the oldest one's key.
    pub(crate) spills: HashMap<Arc<str>, Spill>,
}

impl Loaded {
    /// Deliveries waiting on disk for their sessions' clients.
    pub fn spilled(&self) -> usize {
        self.spills.values().map(|s| s.count).sum()
    }
}

/// Every key and value of a keyspace, in key order.
fn rows(
    ks: &Keyspace,
) -> impl Iterator<Item = Result<(fjall::UserKey, fjall::UserValue), fjall::Error>> {
    ks.iter().map(|g| g.into_inner())
}

/// The client ids with a session row: what the writer's set of persisted sessions
/// is re-read from after a failed commit.
pub(crate) fn session_ids(t: &Tables) -> Result<HashSet<Arc<str>>, fjall::Error> {
    rows(&t.sessions)
        .map(|row| row.map(|(k, _)| Arc::from(String::from_utf8_lossy(&k))))
        .collect()
}

/// Reads every session and retained message.
pub(crate) fn load(t: &Tables) -> Result<Loaded, fjall::Error> {
    let alive = t.meta_u64("alive")?.unwrap_or_else(records::unix_ms);
    let mut out = Loaded::default();
    let mut sessions: HashMap<Arc<str>, StoredSession> = HashMap::new();
    for row in rows(&t.sessions) {
        let (k, v) = row?;
        let client_id: Arc<str> = String::from_utf8_lossy(&k).into();
        match read_session(&v) {
            Ok(row) => {
                let ended_at_ms = if row.parked_at_ms == 0 {
                    alive
                } else {
                    row.parked_at_ms
                };
                let snapshot = SessionSnapshot {
                    expiry_secs: row.expiry_secs,
                    ..Default::default()
                };
                sessions.insert(
                    client_id.clone(),
                    StoredSession {
                        client_id,
                        row,
                        ended_at_ms,
                        snapshot,
                    },
                );
            }
            Err(e) => {
                tracing::error!(client_id = %client_id, error = %e, "stored session unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    for row in rows(&t.subs) {
        let (k, v) = row?;
        let read = split_child(&k).and_then(|(c, f)| {
            let filter = std::str::from_utf8(f)
                .map_err(|_| records::RecordError("filter not UTF-8".into()))?;
            Ok((c, filter.to_string(), read_subscription(&v)?))
        });
        match read {
            Ok((c, filter, sub)) => {
                if let Some(s) = sessions.get_mut(c) {
                    s.snapshot.subscriptions.push((filter, sub));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "stored subscription unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    // Only the kind of each entry is read here: deliveries stay on disk until
    // their client comes back (a PUBREL due is in-flight state, restored now).
    for row in rows(&t.journal) {
        let (k, v) = row?;
        let read = split_child(&k).and_then(|(c, key)| {
            let key = std::str::from_utf8(key)
                .map_err(|_| records::RecordError("message id not UTF-8".into()))?;
            Ok((c, key))
        });
        let (c, key) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "stored delivery unreadable; skipped");
                out.unreadable += 1;
                continue;
            }
        };
        let Some(s) = sessions.get_mut(c) else {
            continue;
        };
        match v.first() {
            Some(b'D') => {
                let spill = out.spills.entry(s.client_id.clone()).or_default();
                spill.count += 1;
                spill.oldest.get_or_insert_with(|| k.to_vec());
            }
            _ => match read_journal(key, &v, &mut records::MessageCache::new()) {
                Ok(Some(JournalEntry::Received(id))) => s
                    .snapshot
                    .inflight
                    .push((id, Outbound::Released(Some(key.into())))),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "stored delivery unreadable; skipped");
                    out.unreadable += 1;
                }
            },
        }
    }
    for row in rows(&t.inbound) {
        let (k, v) = row?;
        let read = split_child(&k).and_then(|(c, id)| {
            let id: [u8; 2] = id
                .try_into()
                .map_err(|_| records::RecordError("bad packet id".into()))?;
            let (msg, routed) = records::read_inbound(&v)?;
            Ok((c, u16::from_be_bytes(id), msg, routed))
        });
        match read {
            Ok((c, id, msg, routed)) => {
                if let Some(s) = sessions.get_mut(c) {
                    if routed {
                        // Its journal entries were written: the resend is only
                        // acknowledged [MQTT-4.3.3-9].
                        s.snapshot.inbound_qos2.push(id);
                    } else {
                        // It may not have reached every session: routed again.
                        s.snapshot.unsettled.push((id, msg.into()));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "stored inbound QoS 2 id unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    for row in rows(&t.retained) {
        let (k, v) = row?;
        match read_retained(&v) {
            Ok(Some(msg)) => out.retained.push(msg),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(topic = %String::from_utf8_lossy(&k), error = %e, "stored retained message unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    let mut sessions: Vec<StoredSession> = sessions.into_values().collect();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    out.sessions = sessions;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_another_format_is_refused_with_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (t, _) = open(dir.path()).unwrap();
            t.meta.insert("format", 99u64.to_be_bytes()).unwrap();
            t.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        match open(dir.path()) {
            Err(e @ StoreError::Format(99, FORMAT)) => {
                let text = e.to_string();
                assert!(
                    text.contains("format 99") && text.contains(&format!("format {FORMAT}")),
                    "{text}"
                );
            }
            other => panic!("expected a format error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_fresh_database_reads_back_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = open(dir.path()).unwrap();
        let loaded = load(&t).unwrap();
        assert!(loaded.sessions.is_empty() && loaded.retained.is_empty());
        assert_eq!(loaded.unreadable, 0);
    }
}
