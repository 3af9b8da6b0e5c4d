//! Whether Redis is reachable, as this node sees it (DESIGN invariant 6: "Redis
//! trouble degrades, never corrupts").
//!
//! One [`RedisHealth`] per node, shared by every Redis loop through [`Redis::health`]:
//!
//! - the loops (feed writer and reader, inbox consumer, forwarder) report their
//!   failures with [`RedisHealth::failed`]; a connection failure marks Redis
//!   unreachable at once, anything else is logged (at most one line a second);
//! - the node's watcher (`node::outage`) probes Redis every second and is the only one
//!   that marks it reachable again, after which the node resynchronises;
//! - while Redis is unreachable, operations that need it fail fast through
//!   [`RedisHealth::check`] (a CONNECT's claim, a QoS 1/2 message for another node)
//!   instead of each waiting for a connection timeout, and QoS 0 copies for other
//!   nodes are dropped (counted) so nothing backs up.
//!
//! Each transition logs exactly one line: `redis unreachable: …; serving local clients
//! only` and `redis reachable again after X s; resynchronising`. Everything in
//! between goes to debug level, so an outage does not flood the log.
//!
//! [`Redis::health`]: crate::conn::Redis::health

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::cluster::ClusterError;
use broker::metrics::{Histogram, LogLimiter};
use parking_lot::Mutex;
use tokio::sync::watch;

/// What was refused because Redis is unreachable (counted per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A CONNECT: the client id cannot be claimed cluster-wide (CONNACK 0x88).
    Connect,
    /// A QoS 1/2 message whose copies for other nodes cannot be stored (v5 PUBACK or
    /// PUBREC 0x80; a 3.1.1 publisher is disconnected so that it resends).
    Publish,
    /// A QoS 0 copy for another node, dropped.
    Qos0,
}

/// The current outage, while there is one.
#[derive(Debug, Clone)]
struct Outage {
    since: Instant,
    since_wall: SystemTime,
    reason: String,
}

/// Redis reachability, its history and the counters exposed as metrics.
#[derive(Debug)]
pub struct RedisHealth {
    reachable: watch::Sender<bool>,
    outage: Mutex<Option<Outage>>,
    /// Outages seen since start.
    pub outages: AtomicU64,
    /// Times Redis came back without the data it held (incarnation marker changed).
    pub data_losses: AtomicU64,
    /// Connections refused because Redis was unreachable.
    pub refused_connects: AtomicU64,
    /// QoS 1/2 messages refused because their copies for other nodes could not be stored.
    pub refused_publishes: AtomicU64,
    /// QoS 0 copies for other nodes dropped because Redis was unreachable.
    pub dropped_qos0: AtomicU64,
    /// Length of the last finished outage, in milliseconds.
    pub last_outage_ms: AtomicU64,
    /// Round trips on the shared connection (every command and pipeline but the
    /// blocking stream reads), from request to reply.
    pub round_trips: Histogram,
    /// Round trips on the shared connection that failed (an error reply, a lost
    /// connection, a timeout).
    pub errors: AtomicU64,
    errors_log: LogLimiter,
}

impl Default for RedisHealth {
    fn default() -> Self {
        RedisHealth {
            reachable: watch::channel(true).0,
            outage: Mutex::new(None),
            outages: AtomicU64::new(0),
            data_losses: AtomicU64::new(0),
            refused_connects: AtomicU64::new(0),
            refused_publishes: AtomicU64::new(0),
            dropped_qos0: AtomicU64::new(0),
            last_outage_ms: AtomicU64::new(0),
            round_trips: Histogram::new(),
            errors: AtomicU64::new(0),
            errors_log: LogLimiter::default(),
        }
    }
}

/// Whether an error means Redis cannot be reached (as opposed to a command it refused).
/// A server answering `READONLY` or `MASTERDOWN` is a replica (a master demoted by a
/// Sentinel failover): as unusable for the node's writes as one that is gone.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

impl RedisHealth {
    /// Records one round trip on the shared connection.
    pub fn round_trip(&self, took: Duration, failed: bool) {
        self.round_trips.observe(took);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reachable, as at start (the node only starts once Redis answered).
    pub fn new() -> RedisHealth {
        RedisHealth::default()
    }

    /// Whether Redis is currently considered reachable.
    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow()
    }

    /// A receiver that sees every change of reachability.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// Since when Redis has been unreachable (wall clock), with the reason, if it is.
    pub fn unreachable_since(&self) -> Option<(SystemTime, Duration, String)> {
        self.outage
            .lock()
            .as_ref()
            .map(|o| (o.since_wall, o.since.elapsed(), o.reason.clone()))
    }

    /// Marks Redis unreachable; the first call of an outage logs one warning line.
    pub fn mark_unreachable(&self, reason: &dyn Display) {
        let mut outage = self.outage.lock();
        if outage.is_some() {
            tracing::debug!(error = %reason, "redis still unreachable");
            return;
        }
        let reason = reason.to_string();
        tracing::warn!(
            "redis unreachable: {reason}; serving local clients only (new connections \
             and QoS 1/2 messages for other nodes are refused until it is back)"
        );
        *outage = Some(Outage {
            since: Instant::now(),
            since_wall: SystemTime::now(),
            reason,
        });
        self.outages.fetch_add(1, Ordering::Relaxed);
        self.reachable.send_replace(false);
    }

    /// Marks Redis reachable again; returns how long the outage lasted, or `None` if
    /// there was none (then nothing is logged).
    pub fn mark_reachable(&self) -> Option<Duration> {
        let outage = self.outage.lock().take()?;
        let lasted = outage.since.elapsed();
        self.last_outage_ms
            .store(lasted.as_millis() as u64, Ordering::Relaxed);
        tracing::info!(
            refused_connects = self.refused_connects.load(Ordering::Relaxed),
            refused_publishes = self.refused_publishes.load(Ordering::Relaxed),
            dropped_qos0 = self.dropped_qos0.load(Ordering::Relaxed),
            "redis reachable again after {:.1} s; resynchronising",
            lasted.as_secs_f64()
        );
        self.reachable.send_replace(true);
        Some(lasted)
    }

    /// A Redis loop's failure (`what` names the loop): a connection failure marks
    /// Redis unreachable; another error is logged, at most one line a second.
    pub fn failed(&self, what: &str, e: &redis::RedisError) {
        if is_connection_error(e) {
            self.mark_unreachable(&format_args!("{what}: {e}"));
        } else {
            self.error(what, e);
        }
    }

    /// A loop could not open a connection at all: Redis is unreachable.
    pub fn cannot_connect(&self, what: &str, e: &dyn Display) {
        self.mark_unreachable(&format_args!("{what}: {e}"));
    }

    /// An error that says nothing about reachability (a command Redis refused):
    /// logged at most once a second, with how many there were.
    pub fn error(&self, what: &str, e: &dyn Display) {
        if let Some(n) = self.errors_log.due(1) {
            tracing::warn!(errors = n, "redis: {what}: {e}");
        } else {
            tracing::debug!("redis: {what}: {e}");
        }
    }

    /// `Ok` while Redis is reachable; otherwise counts the refusal and returns the
    /// error to give the client (no log line: the outage was logged once).
    pub fn check(&self, op: Refused) -> Result<(), ClusterError> {
        if self.is_reachable() {
            return Ok(());
        }
        let counter = match op {
            Refused::Connect => &self.refused_connects,
            Refused::Publish => &self.refused_publishes,
            Refused::Qos0 => &self.dropped_qos0,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Err(self.unavailable())
    }

    /// The error operations needing Redis get during an outage.
    pub fn unavailable(&self) -> ClusterError {
        match self.unreachable_since() {
            Some((since, _, reason)) => {
                ClusterError::Outage(format!(" since {} ({reason})", rfc3339(since)))
            }
            None => ClusterError::Outage(String::new()),
        }
    }

    /// Waits until Redis turns reachable after being unreachable (a change seen after
    /// the call; never returns while it stays as it is).
    pub async fn recovered(&self) {
        let mut rx = self.subscribe();
        rx.borrow_and_update();
        loop {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *rx.borrow_and_update() {
                return;
            }
        }
    }
}

/// `2026-11-25T07:01:02Z`: a wall-clock time as RFC 3339 UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_764_054_062);
        assert_eq!(rfc3339(t), "2025-11-25T07:01:02Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn transitions_are_counted_once_and_refusals_fail_fast() {
        let h = RedisHealth::new();
        assert!(h.check(Refused::Publish).is_ok());
        assert!(h.mark_reachable().is_none(), "no outage to end");
        h.mark_unreachable(&"connection refused");
        h.mark_unreachable(&"connection refused again");
        assert_eq!(h.outages.load(Ordering::Relaxed), 1);
        assert!(!h.is_reachable());
        let e = h.check(Refused::Publish).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cluster unavailable: redis unreachable since "),
            "{e}"
        );
        assert!(e.is_outage());
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(h.check(Refused::Connect).is_err());
        assert_eq!(h.refused_publishes.load(Ordering::Relaxed), 1);
        assert_eq!(h.refused_connects.load(Ordering::Relaxed), 1);
        assert!(h.mark_reachable().is_some());
        assert!(h.is_reachable());
        assert!(h.check(Refused::Connect).is_ok());
    }

    #[tokio::test]
    async fn recovered_waits_for_the_transition_to_reachable() {
        let h = std::sync::Arc::new(RedisHealth::new());
        h.mark_unreachable(&"down");
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.recovered().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        h.mark_reachable();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("recovered() returns once reachable")
            .unwrap();
    }
}
