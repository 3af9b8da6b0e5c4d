//! The session store's queue toward Redis: how many writes wait for the writer task,
//! the bound beyond which deliveries to persistent sessions are refused
//! (`cluster.session_store_max_queued`), and the bound beyond which the connections
//! of persistent sessions are not read until Redis stored some of their other
//! changes (`cluster.session_store_max_changes`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::Op;

/// What waits for the session store's writer, and what it refused.
#[derive(Debug)]
pub struct StoreQueue {
    /// Journal entries sent to the writer and not yet taken into a batch.
    entries: AtomicUsize,
    /// Other changes sent and not yet stored (waiting, being written, or kept for a
    /// retry while Redis is unreachable).
    changes: AtomicUsize,
    /// `cluster.session_store_max_changes`.
    max_changes: usize,
    /// Woken when `changes` falls below `max_changes`.
    room: tokio::sync::Notify,
    /// Journal entries in the batch being written now.
    writing: AtomicUsize,
    /// Journal entries refused because `entries` was at `max`.
    refused: AtomicU64,
    /// `cluster.session_store_max_queued`.
    max: usize,
    /// One warning a second about refusals.
    log: broker::metrics::LogLimiter,
}

impl StoreQueue {
    /// An empty queue bounded at `max` journal entries and `max_changes` other
    /// changes (each at least 1).
    pub(super) fn new(max: usize, max_changes: usize) -> StoreQueue {
        StoreQueue {
            entries: AtomicUsize::new(0),
            changes: AtomicUsize::new(0),
            max_changes: max_changes.max(1),
            room: tokio::sync::Notify::new(),
            writing: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            max: max.max(1),
            log: Default::default(),
        }
    }

    /// The bound, `cluster.session_store_max_queued`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts `n` refused journal entries; the count to log when a line is due.
    pub(super) fn refuse(&self, n: usize) -> Option<u64> {
        self.refused.fetch_add(n as u64, Ordering::Relaxed);
        self.log.due(n as u64)
    }

    /// A change was sent to the writer.
    pub(super) fn change_sent(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The writer is writing a batch of `n` journal entries (0: none).
    pub(super) fn set_writing(&self, n: usize) {
        self.writing.store(n, Ordering::Relaxed);
    }

    /// Room for `n` more journal entries (a batch larger than the bound passes alone).
    pub(super) fn admit(&self, n: usize) -> bool {
        let before = self.entries.fetch_add(n, Ordering::AcqRel);
        if before == 0 || before + n <= self.max {
            return true;
        }
        self.entries.fetch_sub(n, Ordering::AcqRel);
        false
    }

    /// Journal entries waiting for the writer.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Journal entries in the batch being written to Redis now.
    pub fn writing(&self) -> usize {
        self.writing.load(Ordering::Relaxed)
    }

    /// Other changes not yet stored.
    pub fn changes(&self) -> usize {
        self.changes.load(Ordering::Relaxed)
    }

    /// `n` changes were stored (or given up): room for as many more.
    pub(super) fn changes_stored(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.changes.fetch_sub(n, Ordering::AcqRel);
        if before >= self.max_changes && before - n < self.max_changes {
            self.room.notify_waiters();
        }
    }

    /// `None` while there is room for changes; at the bound, a future that resolves
    /// once there is room again.
    pub fn changes_room(self: &Arc<Self>) -> Option<broker::cluster::BoxFuture<'static, ()>> {
        if self.changes() < self.max_changes {
            return None;
        }
        let queue = self.clone();
        Some(Box::pin(async move {
            loop {
                let room = queue.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if queue.changes() < queue.max_changes {
                    return;
                }
                room.await;
            }
        }))
    }

    /// Journal entries refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn taken(&self, op: &Op) {
        match op {
            Op::Journal(j) => self.entries.fetch_sub(j.entries.len(), Ordering::AcqRel),
            // Counted until stored (`changes_stored`).
            Op::Change(..) => 0,
        };
    }
}
