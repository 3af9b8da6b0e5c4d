//! Counters describing what the broker does, readable at any time without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// The broker's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections currently open (CONNECT accepted).
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub publish_received: AtomicU64,
    /// Deliveries queued to sessions.
    pub deliveries: AtomicU64,
    /// Messages dropped because a session queue was full (`limits.max_queued_*`).
    pub queue_overflow_dropped: AtomicU64,
    /// Messages dropped because they exceeded a client's Maximum Packet Size.
    pub oversize_dropped: AtomicU64,
    /// Messages dropped because their Message Expiry Interval ran out while queued.
    pub expired_dropped: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
