//! The one thread that writes the database: it takes everything that arrived since
//! its last commit and writes it in one transaction (group commit), then answers
//! every waiter at once. With `sync = always` the commit is durable (fsync) before
//! anyone is answered; with `sync = periodic` it is made durable every
//! `store.sync_interval_ms`.
//!
//! A commit that fails (a full disk, an I/O error) fails the deliveries in it (their
//! publishers are refused, nothing is acknowledged), keeps the other changes for the
//! next commit, and reopens the database: fjall accepts no write after an I/O error
//! (it is "poisoned"), and reopening replays its journal up to the last good write.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::cluster::{ClusterError, JournalOutcome, SessionChange};
use broker::config::{QueueOverflow, SyncPolicy};
use broker::mailbox::{Delivery, MailboxLimits};
use broker::router::Blocked;
use broker::session::JournalUpdate;
use broker::store::InboundRouted;
use fjall::{OwnedWriteBatch as WriteBatch, PersistMode};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::db::Tables;
use crate::records::{self, child_key, child_range, journal_received, JournalEntry, SessionRow};
use crate::spill::Spills;

/// Changes kept for the next commit after one failed, at most: beyond this they are
/// dropped (logged and counted). Each comes from one client packet about a
/// subscription or an in-flight message, so the protocol's limits bound them long
/// before this.
const MAX_RETRIED_CHANGES: usize = 100_000;
/// How long a turn with fewer than `LINGER_BELOW` operations waits for more
/// (group commit): 200 µs on a p99 of milliseconds, for several times fewer turns
/// under load (bench/persist.sh).
const LINGER: Duration = Duration::from_micros(200);
const LINGER_BELOW: usize = 64;
/// Operations written in one transaction at most.
const MAX_BATCH: usize = 4096;
/// How often the time of the last write is recorded while nothing else is written:
/// sessions still connected when the process dies lost their connection then.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// A delivery to a persistent session, to write before it is queued.
pub(crate) struct Entry {
    pub client_id: Arc<str>,
    pub key: Box<str>,
    pub value: Vec<u8>,
    /// Whether the journal may hold this key already (see `DiskStore::journal`).
    pub check: bool,
    pub blocked: Blocked,
}

/// What the writer is asked to do.
pub(crate) enum Op {
    Journal {
        entries: Vec<Entry>,
        /// The message is this persistent session's inbound QoS 2 PUBLISH: its
        /// packet id's record is marked routed in the same write.
        routed: Option<InboundRouted>,
        done: oneshot::Sender<JournalOutcome>,
    },
    Change {
        change: SessionChange,
        done: Option<oneshot::Sender<Result<(), ClusterError>>>,
    },
    Claim {
        client_id: Arc<str>,
        clean: bool,
        row: Option<Box<SessionRow>>,
        /// Answered with what the session had spilled (see `spill.rs`).
        done: oneshot::Sender<Result<Vec<Delivery>, ClusterError>>,
    },
    Retained {
        topic: String,
        value: Option<Vec<u8>>,
    },
    /// Write what is pending durably and stop.
    Stop(oneshot::Sender<()>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Journal { .. } => "Journal",
            Op::Change { .. } => "Change",
            Op::Claim { .. } => "Claim",
            Op::Retained { .. } => "Retained",
            Op::Stop(_) => "Stop",
        })
    }
}

/// Counters shared with the store's handle (for metrics and the queue bound).
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries waiting for the writer.
    pub queued: AtomicUsize,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Commits that failed.
    pub failures: AtomicU64,
    /// Deliveries refused because `store.max_queued` wait already.
    pub refused: AtomicU64,
    /// Changes dropped after failed commits (beyond `MAX_RETRIED_CHANGES`).
    pub dropped_changes: AtomicU64,
    /// Since when commits fail (Unix ms; 0: they do not).
    pub failing_since_ms: AtomicU64,
    /// Deliveries to offline sessions kept on disk only (see `spill.rs`).
    pub spilled: AtomicUsize,
    /// Spilled deliveries dropped by an offline session's queue bound.
    pub spill_dropped: AtomicU64,
}

/// The writer's state.
pub(crate) struct Writer {
    pub db: Option<Tables>,
    pub path: PathBuf,
    pub sync: SyncPolicy,
    pub interval: Duration,
    pub stats: Arc<Stats>,
    /// Client ids with a session row, so a connection that is not persistent and
    /// has nothing stored costs no write.
    pub persisted: Arc<Mutex<HashSet<Arc<str>>>>,
    /// Offline sessions' deliveries on disk only.
    pub spills: Spills,
    /// The bound and policy of every session's queue, applied to spills too.
    pub limits: MailboxLimits,
    /// A commit failed: `persisted` is re-read when the database is reopened.
    pub resync: bool,
}

/// What writing one op gave.
enum Applied {
    Nothing,
    /// A journal op: for each entry, whether to queue it in memory now.
    Journal(Vec<bool>),
    /// A claim: the session's spilled deliveries.
    Claim(Vec<Delivery>),
}

/// The writer's state an op may change besides the database.
struct State<'a> {
    persisted: &'a mut HashSet<Arc<str>>,
    spills: &'a mut Spills,
    limits: MailboxLimits,
    dropped: u64,
}

impl Writer {
    /// Runs until [`Op::Stop`] or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Op>) {
        let mut retry: VecDeque<Op> = VecDeque::new();
        let mut last_durable = Instant::now();
        let mut last_write = Instant::now();
        let mut dirty = false;
        let mut stop = None;
        loop {
            let wait = match (self.sync, dirty) {
                (SyncPolicy::Periodic, true) => {
                    self.interval.saturating_sub(last_durable.elapsed())
                }
                _ => ALIVE_EVERY.saturating_sub(last_write.elapsed()),
            };
            let mut batch: Vec<Op> = retry.drain(..).collect();
            match rx.recv_timeout(wait) {
                Ok(op) => batch.push(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = Some(None),
            }
            let drain = |batch: &mut Vec<Op>| {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
            };
            drain(&mut batch);
            if !batch.is_empty() && batch.len() < LINGER_BELOW {
                // A small batch: give the connections a moment to add to it. Each
                // turn costs two thread switches and a write, whatever its size.
                std::thread::sleep(LINGER);
                drain(&mut batch);
            }
            if let Some(at) = batch.iter().position(|op| matches!(op, Op::Stop(_))) {
                if let Op::Stop(tx) = batch.remove(at) {
                    stop = Some(Some(tx));
                }
            }
            let durable = stop.is_some()
                || match self.sync {
                    SyncPolicy::Always => true,
                    SyncPolicy::Periodic => last_durable.elapsed() >= self.interval,
                };
            let alive_due = last_write.elapsed() >= ALIVE_EVERY;
            if batch.is_empty() && !alive_due && !(durable && dirty) {
                if stop.is_some() {
                    break;
                }
                continue;
            }
            match self.commit(&batch, durable) {
                Ok(fresh) => {
                    self.spills.commit();
                    let spilled = self.spills.total();
                    self.stats.spilled.store(spilled, Ordering::Relaxed);
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    if self.stats.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!(path = %self.path.display(), "data directory writable again");
                    }
                    last_write = Instant::now();
                    if durable {
                        last_durable = last_write;
                        dirty = false;
                    } else {
                        dirty = true;
                    }
                    self.answer(batch, fresh);
                }
                Err(e) => {
                    self.spills.rollback();
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let err = classify(&e);
                    if self
                        .stats
                        .failing_since_ms
                        .compare_exchange(
                            0,
                            records::unix_ms(),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        tracing::error!(path = %self.path.display(), error = %e, "cannot write the data directory; QoS 1/2 messages to persistent sessions are refused until it can be written");
                    }
                    self.fail(batch, &err, &mut retry);
                    // fjall refuses every later write after an I/O error: reopen.
                    self.db = None;
                    self.resync = true;
                    if stop.is_none() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            if let Some(tx) = stop.take() {
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                break;
            }
        }
    }

    fn tables(&mut self) -> Result<Tables, fjall::Error> {
        if self.db.is_none() {
            let t = Tables::open(&self.path)?;
            if self.resync {
                // The failed batch changed the set of sessions on disk before it
                // failed, and what of it reached the disk is what the journal
                // replayed: the set follows the database, not the batch.
                *self.persisted.lock() = crate::db::session_ids(&t)?;
                self.resync = false;
            }
            self.db = Some(t);
        }
        Ok(self.db.clone().expect("just opened"))
    }

    /// Writes `batch`, then makes it durable (`durable`) or hands it to the OS; for
    /// each journal op, which of its entries were new (an entry already stored is not
    /// queued twice).
    fn commit(&mut self, batch: &[Op], durable: bool) -> Result<Vec<Applied>, fjall::Error> {
        let t = self.tables()?;
        let mut tx = Txn { t: &t, wb: None };
        let mut applied = Vec::with_capacity(batch.len());
        {
            let persisted = self.persisted.clone();
            let mut persisted = persisted.lock();
            let mut state = State {
                persisted: &mut persisted,
                spills: &mut self.spills,
                limits: self.limits,
                dropped: 0,
            };
            for op in batch {
                applied.push(apply(&mut tx, op, &mut state)?);
            }
            if state.dropped > 0 {
                self.stats
                    .spill_dropped
                    .fetch_add(state.dropped, Ordering::Relaxed);
            }
        }
        let now = records::unix_ms().to_be_bytes();
        tx.wb().insert(&t.meta, "alive", now);
        tx.settle()?;
        // `Buffer` reaches the OS, so a crash of the process alone loses nothing.
        t.db.persist(if durable {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        })?;
        Ok(applied)
    }

    /// Answers everyone after a commit: journaled deliveries are queued now.
    fn answer(&self, batch: Vec<Op>, applied: Vec<Applied>) {
        for (op, applied) in batch.into_iter().zip(applied) {
            match op {
                Op::Journal { entries, done, .. } => {
                    let n = entries.len();
                    let queue_now = match applied {
                        Applied::Journal(q) => q,
                        _ => Vec::new(),
                    };
                    let mut full = Vec::new();
                    for (e, now) in entries.into_iter().zip(queue_now) {
                        if now {
                            queue(e.blocked, &mut full);
                        }
                    }
                    self.stats.queued.fetch_sub(n, Ordering::Relaxed);
                    let _ = done.send(Ok(full));
                }
                Op::Change { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                Op::Claim { done, .. } => {
                    let spilled = match applied {
                        Applied::Claim(d) => d,
                        _ => Vec::new(),
                    };
                    let _ = done.send(Ok(spilled));
                }
                Op::Retained { .. } | Op::Stop(_) => {}
            }
        }
    }

    /// A commit failed: deliveries and claims are refused, changes kept for the next.
    fn fail(&self, batch: Vec<Op>, err: &ClusterError, retry: &mut VecDeque<Op>) {
        for op in batch {
            match op {
                Op::Journal { entries, done, .. } => {
                    self.stats
                        .queued
                        .fetch_sub(entries.len(), Ordering::Relaxed);
                    let _ = done.send(Err(err.clone()));
                }
                Op::Claim { done, .. } => {
                    let _ = done.send(Err(err.clone()));
                }
                Op::Change {
                    done: Some(done), ..
                } => {
                    let _ = done.send(Err(err.clone()));
                }
                op @ (Op::Change { done: None, .. } | Op::Retained { .. }) => {
                    if retry.len() < MAX_RETRIED_CHANGES {
                        retry.push_back(op);
                    } else {
                        self.stats.dropped_changes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Op::Stop(_) => {}
            }
        }
    }
}

/// Queues a stored delivery, as the cluster does: an offline session's queue applies
/// its bounds and policy; a connected session's full queue makes the publisher wait.
fn queue(b: Blocked, full: &mut Vec<Blocked>) {
    if !b.mailbox.is_online() {
        b.mailbox.push_journaled(b.delivery);
        return;
    }
    if let Err(delivery) = b.mailbox.try_push_journaled(b.delivery) {
        full.push(Blocked {
            mailbox: b.mailbox,
            delivery,
        });
    }
}

/// A full disk is a quota (v5 0x97); anything else is unavailability.
fn classify(e: &fjall::Error) -> ClusterError {
    let io = match e {
        fjall::Error::Io(io) => Some(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    };
    let full = match io {
        Some(io) => {
            io.kind() == std::io::ErrorKind::StorageFull
                // ENOSPC, EDQUOT (quota), EFBIG (file size limit).
                || matches!(io.raw_os_error(), Some(28 | 122 | 27))
        }
        _ => false,
    };
    if full {
        ClusterError::Full(format!("disk full: {e}"))
    } else {
        ClusterError::unavailable(format!("data directory: {e}"))
    }
}

/// The writes of one commit: a fjall write batch, committed (not yet persisted)
/// before anything is read, so reads see every earlier write.
struct Txn<'t> {
    t: &'t Tables,
    wb: Option<WriteBatch>,
}

impl Txn<'_> {
    fn wb(&mut self) -> &mut WriteBatch {
        let db = &self.t.db;
        self.wb.get_or_insert_with(|| db.batch())
    }

    /// Commits what was written so far (in the journal's buffer, not persisted).
    fn settle(&mut self) -> Result<(), fjall::Error> {
        match self.wb.take() {
            Some(wb) if !wb.is_empty() => wb.commit(),
            _ => Ok(()),
        }
    }
}

/// Removes every row of `client_id`.
fn delete_client(tx: &mut Txn<'_>, client_id: &str) -> Result<(), fjall::Error> {
    tx.settle()?;
    let t = tx.t;
    let (lo, _) = child_range(client_id);
    for ks in [&t.subs, &t.journal, &t.inbound] {
        for key in ks.prefix(&lo) {
            let key = key.key()?;
            tx.wb().remove(ks, key);
        }
    }
    tx.wb().remove(&t.sessions, client_id);
    Ok(())
}

/// Changes one session row in place.
fn update_row(
    tx: &mut Txn<'_>,
    client_id: &str,
    f: impl FnOnce(&mut SessionRow),
) -> Result<(), fjall::Error> {
    tx.settle()?;
    let row =
        tx.t.sessions
            .get(client_id)?
            .map(|v| records::read_session(&v));
    if let Some(Ok(mut row)) = row {
        f(&mut row);
        let sessions = tx.t.sessions.clone();
        tx.wb()
            .insert(&sessions, client_id, records::session_value(&row));
    }
    Ok(())
}

/// Writes one op.
fn apply(tx: &mut Txn<'_>, op: &Op, st: &mut State<'_>) -> Result<Applied, fjall::Error> {
    let t = tx.t;
    match op {
        Op::Journal {
            entries, routed, ..
        } => {
            if let Some(r) = routed {
                let key = child_key(&r.client_id, &r.packet_id.to_be_bytes());
                if let Some(marked) = t
                    .inbound
                    .get(&key)?
                    .and_then(|v| records::inbound_routed(&v))
                {
                    tx.wb().insert(&t.inbound, key, marked);
                }
            }
            // Checked (when the id is not new) against what is committed, not
            // against this turn's batch: the same message for the same session
            // twice in one turn does not happen (a resend comes later).
            let mut queue_now = Vec::with_capacity(entries.len());
            for e in entries {
                let key = child_key(&e.client_id, e.key.as_bytes());
                if e.check && t.journal.contains_key(&key)? {
                    queue_now.push(false);
                    continue;
                }
                if st.spills.get(&e.client_id).is_some() {
                    if !spill_room(tx, &e.client_id, st)? {
                        queue_now.push(false);
                        continue;
                    }
                    st.spills.added(&e.client_id, &key);
                    tx.wb().insert(&t.journal, key, e.value.as_slice());
                    queue_now.push(false);
                } else {
                    tx.wb().insert(&t.journal, key, e.value.as_slice());
                    queue_now.push(true);
                }
            }
            return Ok(Applied::Journal(queue_now));
        }
        Op::Claim {
            client_id,
            clean,
            row,
            ..
        } => {
            let mut spilled = Vec::new();
            if *clean {
                st.spills.take(client_id);
                if st.persisted.contains(client_id) {
                    delete_client(tx, client_id)?;
                    st.persisted.remove(client_id);
                }
            } else if let Some(spill) = st.spills.take(client_id) {
                if let Some(oldest) = spill.oldest {
                    spilled = read_spill(tx, client_id, oldest)?;
                }
            }
            if let Some(row) = row {
                tx.wb()
                    .insert(&t.sessions, &**client_id, records::session_value(row));
                st.persisted.insert(client_id.clone());
            }
            return Ok(Applied::Claim(spilled));
        }
        Op::Retained { topic, value } => match value {
            Some(v) => tx.wb().insert(&t.retained, topic.as_str(), v.as_slice()),
            None => tx.wb().remove(&t.retained, topic.as_str()),
        },
        Op::Change { change, .. } => apply_change(tx, change, st)?,
        Op::Stop(_) => {}
    }
    Ok(Applied::Nothing)
}

/// Makes room for one more spilled entry of `client_id` under its queue bound:
/// false if the new one is dropped (drop-newest), else the oldest may go.
fn spill_room(
    tx: &mut Txn<'_>,
    client_id: &Arc<str>,
    st: &mut State<'_>,
) -> Result<bool, fjall::Error> {
    let Some(spill) = st.spills.get(client_id) else {
        return Ok(true);
    };
    if spill.count < st.limits.max_messages {
        return Ok(true);
    }
    st.dropped += 1;
    match (st.limits.overflow, spill.oldest.clone()) {
        (QueueOverflow::DropNewest, _) => Ok(false),
        (QueueOverflow::DropOldest, None) => Ok(true),
        (QueueOverflow::DropOldest, Some(old)) => {
            let t = tx.t;
            tx.wb().remove(&t.journal, old.clone());
            tx.settle()?;
            let (_, hi) = child_range(client_id);
            let next = t
                .journal
                .range((
                    std::ops::Bound::Excluded(old),
                    std::ops::Bound::Excluded(hi),
                ))
                .next()
                .map(|g| g.key())
                .transpose()?
                .map(|k| k.to_vec());
            st.spills.dropped_oldest(client_id, next);
            Ok(true)
        }
    }
}

/// Reads a returning session's spilled deliveries, oldest first; expired ones are
/// deleted instead [MQTT-3.3.2-5].
fn read_spill(
    tx: &mut Txn<'_>,
    client_id: &str,
    oldest: Vec<u8>,
) -> Result<Vec<Delivery>, fjall::Error> {
    tx.settle()?;
    let t = tx.t;
    let (_, hi) = child_range(client_id);
    let mut cache = records::MessageCache::new();
    let mut out = Vec::new();
    for row in t.journal.range(oldest..hi) {
        let (k, v) = row.into_inner()?;
        let Ok((_, key)) = records::split_child(&k) else {
            continue;
        };
        let key = String::from_utf8_lossy(key);
        match records::read_journal(&key, &v, &mut cache) {
            Ok(Some(JournalEntry::Pending(d))) => out.push(d),
            // PUBREL due: restored with the session's in-flight state at start-up.
            Ok(Some(JournalEntry::Received(_))) => {}
            Ok(None) => tx.wb().remove(&t.journal, k),
            Err(e) => {
                tracing::error!(%client_id, error = %e, "stored delivery unreadable; skipped")
            }
        }
    }
    Ok(out)
}

fn apply_change(
    tx: &mut Txn<'_>,
    change: &SessionChange,
    st: &mut State<'_>,
) -> Result<(), fjall::Error> {
    let t = tx.t;
    match change {
        SessionChange::Subscribed {
            client_id,
            filter,
            sub,
        } => {
            let key = child_key(client_id, filter.as_bytes());
            tx.wb()
                .insert(&t.subs, key, records::subscription_value(sub));
        }
        SessionChange::Unsubscribed { client_id, filter } => {
            tx.wb()
                .remove(&t.subs, child_key(client_id, filter.as_bytes()));
        }
        SessionChange::Journal { client_id, updates } => {
            for u in updates {
                match u {
                    JournalUpdate::Done(key) => {
                        tx.wb()
                            .remove(&t.journal, child_key(client_id, key.as_bytes()));
                    }
                    JournalUpdate::Received(j) => {
                        let key = child_key(client_id, j.key.as_bytes());
                        tx.wb()
                            .insert(&t.journal, key, journal_received(j.packet_id));
                    }
                }
            }
        }
        SessionChange::WillDone { client_id } => update_row(tx, client_id, |r| r.will = None)?,
        SessionChange::InboundQos2 {
            client_id,
            packet_id,
            message_id,
            ..
        } => {
            let key = child_key(client_id, &packet_id.to_be_bytes());
            match message_id {
                Some(id) => tx.wb().insert(&t.inbound, key, id.as_bytes()),
                None => tx.wb().remove(&t.inbound, key),
            }
        }
        SessionChange::Parked {
            client_id,
            expiry_secs,
        } => {
            if st.persisted.contains(client_id) {
                st.spills.park(client_id);
            }
            update_row(tx, client_id, |r| {
                r.expiry_secs = *expiry_secs;
                r.parked_at_ms = records::unix_ms();
            })?
        }
        SessionChange::Ended { client_id } => {
            st.spills.take(client_id);
            if st.persisted.remove(client_id) {
                delete_client(tx, client_id)?;
            }
        }
        // Only a cluster's Redis loses its data.
        SessionChange::Restore(_) => {}
    }
    Ok(())
}
