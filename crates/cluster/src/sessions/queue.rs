//! The session store's queue toward Redis: how many writes wait for the writer task,
//! and the bound beyond which deliveries to persistent sessions are refused
//! (`cluster.session_store_max_queued`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::Op;

/// What waits for the session store's writer, and what it refused.
#[derive(Debug)]
pub struct StoreQueue {
    /// Journal entries sent to the writer and not yet taken into a batch.
    entries: AtomicUsize,
    /// Other changes sent and not yet taken.
    changes: AtomicUsize,
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
    /// An empty queue bounded at `max` journal entries (at least 1).
    pub(super) fn new(max: usize) -> StoreQueue {
        StoreQueue {
            entries: AtomicUsize::new(0),
            changes: AtomicUsize::new(0),
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

    /// Other changes waiting for the writer.
    pub fn changes(&self) -> usize {
        self.changes.load(Ordering::Relaxed)
    }

    /// Journal entries refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn taken(&self, op: &Op) {
        match op {
            Op::Journal(j) => self.entries.fetch_sub(j.entries.len(), Ordering::AcqRel),
            Op::Change(..) => self.changes.fetch_sub(1, Ordering::AcqRel),
        };
    }
}
