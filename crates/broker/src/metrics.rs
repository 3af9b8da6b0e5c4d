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
    /// QoS 0 messages to other nodes shed because the bus backlog toward the
    /// destination was full (`cluster.forward_qos0_backlog`, `forward_backlog_bytes`).
    pub bus_backlog_dropped: AtomicU64,
    /// QoS 0 messages to other nodes shed because the destination's inbox stream
    /// held too many unread entries (`cluster.inbox_backlog_entries`).
    pub inbox_backlog_dropped: AtomicU64,
    /// Times a client's socket was left unread because it exceeded
    /// `limits.max_publish_rate`.
    pub throttled_message_rate: AtomicU64,
    /// Times a client's socket was left unread because it exceeded
    /// `limits.max_publish_bytes_rate`.
    pub throttled_byte_rate: AtomicU64,
    /// Times a client's socket was left unread because its QoS 1/2 message found the
    /// bus backlog toward another node full (`cluster.forward_qos12_backlog`).
    pub throttled_bus_backlog: AtomicU64,
    /// Connections closed at accept because the listener had `limits.max_connections`.
    pub refused_max_connections: AtomicU64,
    /// Connections closed at accept because of `limits.max_connection_rate`.
    pub refused_connection_rate: AtomicU64,
    /// Connections closed before MQTT because the TLS handshake failed (no or an
    /// invalid client certificate, plain MQTT or garbage on a TLS port, …) or the
    /// certificate had no name for `use_identity_as_username`.
    pub setup_failed_tls: AtomicU64,
    /// Connections closed before MQTT because the WebSocket upgrade was refused
    /// (wrong path, no `mqtt` subprotocol, not an upgrade).
    pub setup_failed_ws: AtomicU64,
    /// Connections closed before MQTT because of a missing or bad PROXY v2 header.
    pub setup_failed_proxy: AtomicU64,
    /// Connections closed because the PROXY header, TLS handshake or WebSocket
    /// upgrade was not done within `limits.connect_timeout_secs`.
    pub setup_timed_out: AtomicU64,
    /// SUBSCRIBE filters refused because the session had `limits.max_subscriptions`.
    pub subscriptions_refused: AtomicU64,
    /// Limits overflow warnings to one log line a second.
    pub drop_log: LogLimiter,
    /// Limits warnings about QoS 0 shed on the way to other nodes to one line a second.
    pub shed_log: LogLimiter,
    /// Limits throttling notices to one log line a second.
    pub throttle_log: LogLimiter,
    /// Limits refused-connection warnings to one log line a second.
    pub refuse_log: LogLimiter,
    /// Limits refused-subscription notices to one log line a second.
    pub subscription_log: LogLimiter,
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
