//! Counters describing what the broker does, readable at any time without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Limits overflow warnings to one log line a second.
    pub drop_log: LogLimiter,
}

/// Lets one log line through per second, carrying how many events it stands for.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// The Unix second of the last line let through.
    last_second: AtomicU64,
    /// Events since that line.
    pending: AtomicU64,
}

impl LogLimiter {
    /// Records `n` events; returns the count to report when a line is due.
    pub fn due(&self, n: u64) -> Option<u64> {
        self.pending.fetch_add(n, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if now > last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.pending.swap(0, Ordering::Relaxed));
        }
        None
    }
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
