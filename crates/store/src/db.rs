//! The data directory's one database file (redb): its tables, opening it (locked
//! against a second process, its format checked), and reading everything back at
//! start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::message::Message;
use broker::session::{Outbound, SessionSnapshot};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use crate::records::{
    self, read_journal, read_retained, read_session, read_subscription, split_child, JournalEntry,
    SessionRow, FORMAT,
};
use crate::StoreError;

/// `format` (the layout, [`FORMAT`]) and `alive` (Unix ms of the last write: when
/// sessions still connected at a crash lost their connection).
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Client id → [`SessionRow`].
pub(crate) const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");
/// Client id, 0, filter → subscription options.
pub(crate) const SUBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("subscriptions");
/// Client id, 0, message id → a delivery not yet acknowledged. Message ids sort by
/// arrival, so a session's journal reads back in order.
pub(crate) const JOURNAL: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("journal");
/// Client id, 0, packet id (2 bytes) → the message id of an inbound QoS 2 message
/// awaiting PUBREL.
pub(crate) const INBOUND: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("inbound");
/// Topic → retained message.
pub(crate) const RETAINED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("retained");

/// The file inside the data directory.
pub const FILE: &str = "astramq.redb";

/// Opens (creating if need be) the database in `dir`.
pub(crate) fn open(dir: &Path) -> Result<(Database, PathBuf), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.into(), e))?;
    let path = dir.join(FILE);
    let db = match Database::create(&path) {
        Ok(db) => db,
        Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(path)),
        Err(e) => return Err(StoreError::Open(path, e.into())),
    };
    check_format(&db).map_err(|e| match e {
        StoreError::Redb(e) => StoreError::Open(path.clone(), e),
        e => e,
    })?;
    Ok((db, path))
}

fn check_format(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
        let found = meta
            .get("format")
            .map_err(redb::Error::from)?
            .map(|v| v.value());
        match found {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => return Err(StoreError::Format(f, FORMAT)),
            None => {
                meta.insert("format", u64::from(FORMAT))
                    .map_err(redb::Error::from)?;
            }
        }
        // Every table exists from the start, so readers never meet a missing one.
        tx.open_table(SESSIONS).map_err(redb::Error::from)?;
        tx.open_table(SUBS).map_err(redb::Error::from)?;
        tx.open_table(JOURNAL).map_err(redb::Error::from)?;
        tx.open_table(INBOUND).map_err(redb::Error::from)?;
        tx.open_table(RETAINED).map_err(redb::Error::from)?;
    }
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
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
}

/// Reads every session and retained message.
pub(crate) fn load(db: &Database) -> Result<Loaded, redb::Error> {
    let tx = db.begin_read()?;
    let alive = tx.open_table(META)?.get("alive")?.map(|v| v.value());
    let alive = alive.unwrap_or_else(records::unix_ms);
    let mut out = Loaded::default();
    let mut sessions: HashMap<Arc<str>, StoredSession> = HashMap::new();
    for row in tx.open_table(SESSIONS)?.iter()? {
        let (k, v) = row?;
        let client_id: Arc<str> = k.value().into();
        match read_session(v.value()) {
            Ok(row) => {
                let ended_at_ms = if row.parked_at_ms == 0 {
                    alive
                } else {
                    row.parked_at_ms
                };
                let snapshot = SessionSnapshot {
                    expiry_secs: row.expiry_secs,
                    maybe_sent: true,
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
    for row in tx.open_table(SUBS)?.iter()? {
        let (k, v) = row?;
        let read = split_child(k.value()).and_then(|(c, f)| {
            let filter = std::str::from_utf8(f)
                .map_err(|_| records::RecordError("filter not UTF-8".into()))?;
            Ok((c, filter.to_string(), read_subscription(v.value())?))
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
    for row in tx.open_table(JOURNAL)?.iter()? {
        let (k, v) = row?;
        let read = split_child(k.value()).and_then(|(c, key)| {
            let key = std::str::from_utf8(key)
                .map_err(|_| records::RecordError("message id not UTF-8".into()))?;
            Ok((c, key, read_journal(key, v.value())?))
        });
        match read {
            Ok((c, key, entry)) => {
                let Some(s) = sessions.get_mut(c) else {
                    continue;
                };
                match entry {
                    Some(JournalEntry::Pending(d)) => s.snapshot.queued.push(d),
                    Some(JournalEntry::Received(id)) => s
                        .snapshot
                        .inflight
                        .push((id, Outbound::Released(Some(key.into())))),
                    None => out.expired_messages += 1,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "stored delivery unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    for row in tx.open_table(INBOUND)?.iter()? {
        let (k, v) = row?;
        let read = split_child(k.value()).and_then(|(c, id)| {
            let id: [u8; 2] = id
                .try_into()
                .map_err(|_| records::RecordError("bad packet id".into()))?;
            let msg = std::str::from_utf8(v.value())
                .map_err(|_| records::RecordError("message id not UTF-8".into()))?;
            Ok((c, u16::from_be_bytes(id), msg))
        });
        match read {
            Ok((c, id, msg)) => {
                if let Some(s) = sessions.get_mut(c) {
                    s.snapshot.unsettled.push((id, msg.into()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "stored inbound QoS 2 id unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    for row in tx.open_table(RETAINED)?.iter()? {
        let (k, v) = row?;
        match read_retained(v.value()) {
            Ok(Some(msg)) => out.retained.push(msg),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(topic = k.value(), error = %e, "stored retained message unreadable; skipped");
                out.unreadable += 1;
            }
        }
    }
    let mut sessions: Vec<StoredSession> = sessions.into_values().collect();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    out.sessions = sessions;
    Ok(out)
}
