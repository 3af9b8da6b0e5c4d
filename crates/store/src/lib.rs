//! A single node's disk store (`--data-dir`): persistent sessions, their queued and
//! in-flight QoS 1/2 messages, inbound QoS 2 ids awaiting PUBREL, pending wills and
//! retained messages survive a restart, a crash or `kill -9`.
//!
//! It is the broker's [`SessionStore`] seam, the one the cluster fills with Redis: a
//! delivery to a persistent session is written before it is queued and its
//! publisher is acknowledged only after that (with `sync = always`, after fsync),
//! and every acknowledgement, subscription, will and session end is mirrored in
//! order. One thread writes, one batch for everything that arrived meanwhile (group
//! commit); see `writer.rs`. The database is fjall (docs/architecture.md says why).
//!
//! - `records.rs`: the bytes of each value (pure).
//! - `db.rs`: the keyspaces, opening (lock, format) and reading back at start-up.
//! - `writer.rs`: the writer thread.
//! - `restore.rs`: putting what was read back into a fresh broker.

mod db;
pub mod records;
mod restore;
mod spill;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use broker::cluster::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, JournalOutcome, SessionChange,
};
use broker::config::StoreTuning;
use broker::health::{HealthProbe, HealthReport};
use broker::mailbox::{Journaled, Mailbox, MailboxLimits};
use broker::message::Message;
use broker::router::Blocked;
use broker::store::{InboundRouted, SessionStore};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::oneshot;

pub use db::{Loaded, StoredSession, DB_DIR};
pub use restore::install;
pub use writer::Stats;

use writer::{Entry, Op, Writer};

/// Why the data directory cannot be used. Each names the file and what to do.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The directory cannot be created or read.
    #[error("data_dir {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// Another process has the database open.
    #[error("data_dir: {0} is in use by another process (another astramq with the same data_dir?); stop it or choose another directory")]
    InUse(PathBuf),
    /// The database is damaged or not a database.
    #[error("data_dir: cannot open {0}: {1}; if it is damaged beyond the journal's own recovery, move it away to start empty (what it held is then lost)")]
    Open(PathBuf, fjall::Error),
    /// Written by a version of AstraMQ with another layout.
    #[error("data_dir: the database has format {0}, this build reads format {1}; run the version that wrote it, or move the file away to start empty")]
    Format(u64, u32),
    /// Any other database error.
    #[error("data_dir: {0}")]
    Db(#[from] fjall::Error),
}

/// The disk store, shared by the broker's connections.
#[derive(Debug)]
pub struct DiskStore {
    /// To the writer thread. Unbounded as a channel, bounded in what it carries:
    /// deliveries by `store.max_queued` (refused beyond it), and every other change
    /// comes from one client packet about a subscription or an in-flight message, so
    /// the protocol's own limits bound them (as for the cluster's session store).
    ops: mpsc::Sender<Op>,
    stats: Arc<Stats>,
    persisted: Arc<Mutex<HashSet<Arc<str>>>>,
    max_queued: usize,
    /// The next message id (they sort by arrival, across restarts too).
    seq: AtomicU64,
    path: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    refused_log: broker::metrics::LogLimiter,
}

impl DiskStore {
    /// Opens the store in `dir` (created if need be) and reads back what it holds;
    /// the writer thread starts. Fails if another process uses the directory, the
    /// file is damaged, or it has another format.
    pub fn open(
        dir: &Path,
        tuning: &StoreTuning,
        limits: MailboxLimits,
    ) -> Result<(Arc<DiskStore>, Loaded), StoreError> {
        let (db, path) = db::open(dir)?;
        let mut loaded = db::load(&db)?;
        // New message ids sort after every id stored: each session's newest journal
        // key, and the ids of inbound QoS 2 messages.
        let mut last = 0u64;
        let mut note = |id: &[u8]| {
            let id = std::str::from_utf8(id).unwrap_or("");
            last = last.max(u64::from_str_radix(id, 16).unwrap_or(0));
        };
        for s in &loaded.sessions {
            for (_, k) in &s.snapshot.unsettled {
                note(k.as_bytes());
            }
            let (lo, hi) = records::child_range(&s.client_id);
            if let Some(k) = db.journal.range(lo..hi).next_back() {
                let k = k.key()?;
                if let Ok((_, id)) = records::split_child(&k) {
                    note(id);
                }
            }
        }
        let spills = spill::Spills::new(std::mem::take(&mut loaded.spills));
        let persisted: HashSet<Arc<str>> = loaded
            .sessions
            .iter()
            .map(|s| s.client_id.clone())
            .collect();
        let persisted = Arc::new(Mutex::new(persisted));
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: Some(db),
            path: path.clone(),
            sync: tuning.sync,
            interval: std::time::Duration::from_millis(tuning.sync_interval_ms),
            stats: stats.clone(),
            persisted: persisted.clone(),
            spills,
            limits,
            resync: false,
        };
        let thread = std::thread::Builder::new()
            .name("astramq-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Dir(dir.into(), e))?;
        let store = Arc::new(DiskStore {
            ops: tx,
            stats,
            persisted,
            max_queued: tuning.max_queued,
            seq: AtomicU64::new((last + 1).max(records::unix_ms() << 20)),
            path,
            thread: Mutex::new(Some(thread)),
            refused_log: Default::default(),
        });
        Ok((store, loaded))
    }

    /// The database's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Writes what is pending durably and stops the writer (at shutdown).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    fn send(&self, op: Op) -> Result<(), Op> {
        self.ops.send(op).map_err(|e| e.0)
    }
}

fn stopped() -> ClusterError {
    ClusterError::unavailable("session store stopped")
}

impl SessionStore for DiskStore {
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        request: ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(async move {
            let known = self.persisted.lock().contains(client_id);
            let mut claim = ClusterClaim {
                epoch: 1,
                ..Default::default()
            };
            if !known && request.expiry_secs == 0 {
                return Ok(claim); // nothing stored, nothing to store
            }
            let row = (request.expiry_secs > 0 || known).then(|| {
                Box::new(records::SessionRow {
                    expiry_secs: request.expiry_secs,
                    parked_at_ms: 0,
                    username: request.username.map(Arc::from),
                    will: request.will.map(|w| w.will.clone()),
                })
            });
            let (done, rx) = oneshot::channel();
            let op = Op::Claim {
                client_id: client_id.into(),
                clean: request.clean_start,
                row,
                done,
            };
            self.send(op).map_err(|_| stopped())?;
            claim.spilled = rx.await.unwrap_or_else(|_| Err(stopped()))?;
            Ok(claim)
        })
    }

    fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<JournalOutcome> {
        self.journal_routed(entries, None)
    }

    fn journal_routed(
        &self,
        entries: Vec<Blocked>,
        routed: Option<InboundRouted>,
    ) -> oneshot::Receiver<JournalOutcome> {
        let (done, rx) = oneshot::channel();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter_map(|mut b| {
                let client_id = b.mailbox.durability().owner()?.0.clone();
                // An id given just now is above every stored one: no entry can have
                // it yet. One given before (a QoS 2 resend routed again under its
                // old id, a message read back after a restart) may.
                let new_id = b.delivery.msg.id.get().is_none();
                let key: Box<str> = self.message_id(&b.delivery.msg).into();
                b.delivery.journal = Some(Box::new(Journaled {
                    key: key.clone(),
                    packet_id: b.mailbox.reserve_packet_id(),
                }));
                let value = records::journal_value(&b.delivery);
                Some(Entry {
                    client_id,
                    key,
                    value,
                    check: !new_id,
                    blocked: b,
                })
            })
            .collect();
        let n = entries.len();
        let queued = self.stats.queued.fetch_add(n, Ordering::Relaxed);
        // A message for more sessions than the bound passes alone (when nothing
        // waits): refused, it would be refused every time it is sent again.
        if queued > 0 && queued + n > self.max_queued {
            self.stats.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.refused.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(count) = self.refused_log.due(n as u64) {
                tracing::warn!(refused = count, max = self.max_queued, "disk store: deliveries to persistent sessions refused, too many wait for the disk (store.max_queued; count since the last line)");
            }
            let _ = done.send(Err(ClusterError::QueueFull(self.max_queued)));
            return rx;
        }
        if let Err(Op::Journal { entries, done, .. }) = self.send(Op::Journal {
            entries,
            routed,
            done,
        }) {
            self.stats
                .queued
                .fetch_sub(entries.len(), Ordering::Relaxed);
            let _ = done.send(Err(stopped()));
        }
        rx
    }

    fn resumed(&self, _client_id: &Arc<str>, mailbox: &Arc<Mailbox>) {
        // No other node journals for it: nothing arrives late.
        mailbox.stop_tracking();
    }

    fn message_id<'m>(&self, msg: &'m Message) -> &'m str {
        msg.id
            .get_or_init(|| records::message_key(self.seq.fetch_add(1, Ordering::Relaxed)))
    }

    fn session_changed(&self, change: SessionChange) {
        let _ = self.send(Op::Change { change, done: None });
    }

    fn session_changed_stored(
        &self,
        change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>> {
        let (done, rx) = oneshot::channel();
        if let Err(Op::Change {
            done: Some(done), ..
        }) = self.send(Op::Change {
            change,
            done: Some(done),
        }) {
            let _ = done.send(Err(stopped()));
        }
        rx
    }

    fn retained(&self, msg: &Arc<Message>) {
        let value = (!msg.publish.payload().is_empty()).then(|| records::retained_value(msg));
        let _ = self.send(Op::Retained {
            topic: msg.topic().to_string(),
            value,
        });
    }
}

impl HealthProbe for DiskStore {
    fn report(&self) -> HealthReport {
        let failing = self.stats.failing_since_ms.load(Ordering::Relaxed);
        HealthReport {
            // Still serving: only QoS 1/2 to persistent sessions is refused.
            healthy: true,
            fields: vec![(
                "store".into(),
                broker::health::json_string(if failing == 0 { "ok" } else { "failing" }),
            )],
        }
    }
}

/// The store's metrics, read when scraped; holds the store weakly (the broker, whose
/// registry holds this, holds the store).
#[derive(Debug)]
struct StoreMetrics(std::sync::Weak<DiskStore>);

impl DiskStore {
    /// Adds the store's metrics to `broker`'s registry (once, at start).
    pub fn register_metrics(self: &Arc<Self>, broker: &broker::broker::Broker) {
        broker
            .metrics()
            .register_collector(Box::new(StoreMetrics(Arc::downgrade(self))));
    }
}

impl broker::metrics::prometheus_client::collector::Collector for StoreMetrics {
    fn encode(
        &self,
        encoder: broker::metrics::prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let Some(store) = self.0.upgrade() else {
            return Ok(());
        };
        let mut out = broker::metrics::Scrape::new(encoder);
        let s = &store.stats;
        out.gauge(
            "astramq_store_queued",
            "Deliveries to persistent sessions waiting for the disk (bound: store.max_queued).",
            s.queued.load(Ordering::Relaxed) as i64,
        )?;
        out.counter(
            "astramq_store_commits",
            "Transactions written to the data directory.",
            s.commits.load(Ordering::Relaxed),
        )?;
        out.counter(
            "astramq_store_failures",
            "Writes to the data directory that failed (full disk, I/O error).",
            s.failures.load(Ordering::Relaxed),
        )?;
        out.counter(
            "astramq_store_refused",
            "Deliveries to persistent sessions refused because store.max_queued were waiting.",
            s.refused.load(Ordering::Relaxed),
        )?;
        out.counter(
            "astramq_store_dropped_changes",
            "Session changes dropped after failed writes.",
            s.dropped_changes.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "astramq_store_sessions",
            "Persistent sessions in the data directory.",
            store.persisted.lock().len() as i64,
        )?;
        out.gauge(
            "astramq_store_spilled",
            "Deliveries to offline sessions kept on disk only.",
            s.spilled.load(Ordering::Relaxed) as i64,
        )?;
        out.counter(
            "astramq_store_spill_dropped",
            "Deliveries to offline sessions dropped by their queue bound (limits.max_queued_messages, limits.queue_overflow).",
            s.spill_dropped.load(Ordering::Relaxed),
        )
    }
}
