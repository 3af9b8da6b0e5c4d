//! Counters and histograms shared by every connection task of a run.
//!
//! Tasks add to atomics in batches (once per socket read or write burst, not per
//! message) and push latencies into a shared HDR histogram 256 at a time, so the
//! bookkeeping stays off the profile of a run with thousands of connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds up to this bound (one minute).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// The state shared by all tasks of one run.
#[derive(Debug)]
pub struct Shared {
    /// Identifies this run in payloads.
    pub run: u32,
    /// Connections that completed CONNECT (and SUBSCRIBE for subscribers).
    pub connected: AtomicU64,
    /// Connections that failed to connect or subscribe.
    pub conn_failed: AtomicU64,
    /// Connections that broke after connecting.
    pub dropped: AtomicU64,
    /// PUBLISH packets written.
    pub sent: AtomicU64,
    /// QoS 1/2 publishes the broker accepted (PUBACK / PUBREC without error).
    pub acked: AtomicU64,
    /// QoS 1/2 publishes the broker refused (v5 reason code ≥ 0x80).
    pub rejected: AtomicU64,
    /// PUBLISH packets received by subscribers (duplicates included).
    pub received: AtomicU64,
    /// Received for the first time (per subscriber, publisher and sequence).
    pub unique: AtomicU64,
    /// Received again.
    pub duplicates: AtomicU64,
    /// Received but not from a publisher this subscriber expects (or no stamp).
    pub unexpected: AtomicU64,
    /// Publishers whose task has not finished.
    pub pubs_active: AtomicUsize,
    /// Publishes written, per publisher.
    pub sent_per_pub: Vec<AtomicU64>,
    /// Publishes acknowledged, per publisher.
    pub acked_per_pub: Vec<AtomicU64>,
    /// End-to-end latency, µs.
    pub latency: Mutex<Histogram<u64>>,
    /// Time from TCP connect to CONNACK (and SUBACK), µs.
    pub handshake: Mutex<Histogram<u64>>,
    /// Errors by message, counted.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// When the run's clock started (for [`Shared::drained_at`]).
    pub epoch: std::time::Instant,
    /// The latest time, in µs since `epoch`, at which a publisher learnt that the
    /// broker had read everything it sent (the answer to a PINGREQ sent after them).
    pub drained_us: AtomicU64,
    /// Publishers that saw the broker read everything they sent.
    pub drained_pubs: AtomicUsize,
}

impl Shared {
    /// State for a run with `publishers` publishers.
    pub fn new(run: u32, publishers: usize) -> Shared {
        Shared {
            run,
            connected: AtomicU64::new(0),
            conn_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            pubs_active: AtomicUsize::new(0),
            sent_per_pub: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            acked_per_pub: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            latency: Mutex::new(histogram()),
            handshake: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            epoch: std::time::Instant::now(),
            drained_us: AtomicU64::new(0),
            drained_pubs: AtomicUsize::new(0),
        }
    }

    /// Records that a publisher's PUBLISHes have all been read by the broker by now.
    pub fn publisher_drained(&self, now: std::time::Instant) {
        let us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        self.drained_us.fetch_max(us, Relaxed);
        self.drained_pubs.fetch_add(1, Relaxed);
    }

    /// When the broker had read every PUBLISH of `publishers` publishers; `None`
    /// unless all of them saw it (one that gave up would make the time too short).
    pub fn drained_at(&self, publishers: usize) -> Option<std::time::Instant> {
        let all = publishers > 0 && self.drained_pubs.load(Relaxed) == publishers;
        all.then(|| self.epoch + std::time::Duration::from_micros(self.drained_us.load(Relaxed)))
    }

    /// Counts one occurrence of `error`.
    pub fn record_error(&self, error: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(error).or_insert(0) += 1;
    }

    /// Records latencies (µs) into the shared histogram.
    pub fn record_latencies(&self, batch: &[u64]) {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &us in batch {
            h.saturating_record(us.clamp(1, MAX_LATENCY_US));
        }
    }

    /// Records one handshake time (µs).
    pub fn record_handshake(&self, us: u64) {
        let mut h = self.handshake.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// A snapshot of the main counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Relaxed),
            conn_failed: self.conn_failed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            received: self.received.load(Relaxed),
            unique: self.unique.load(Relaxed),
        }
    }
}

/// The counters at one instant, for rates and the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Shared::connected`].
    pub connected: u64,
    /// See [`Shared::conn_failed`].
    pub conn_failed: u64,
    /// See [`Shared::sent`].
    pub sent: u64,
    /// See [`Shared::acked`].
    pub acked: u64,
    /// See [`Shared::received`].
    pub received: u64,
    /// See [`Shared::unique`].
    pub unique: u64,
}

/// A histogram for 1 µs … 60 s at three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Per-task counter deltas, added to [`Shared`] in one go.
#[derive(Debug, Default)]
pub struct Local {
    /// Publishes written.
    pub sent: u64,
    /// Publishes acknowledged.
    pub acked: u64,
    /// Publishes refused.
    pub rejected: u64,
    /// PUBLISH packets received.
    pub received: u64,
    /// First receptions.
    pub unique: u64,
    /// Repeated receptions.
    pub duplicates: u64,
    /// Receptions from nobody expected.
    pub unexpected: u64,
    /// Latencies waiting to go into the histogram, µs.
    pub latencies: Vec<u64>,
}

impl Local {
    /// Adds the deltas to `shared` (publisher `index` for per-publisher counts) and
    /// resets them; latencies only once 256 are waiting, unless `all`.
    pub fn flush(&mut self, shared: &Shared, publisher: Option<u32>, all: bool) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(*v, Relaxed);
                *v = 0;
            }
        };
        if let Some(p) = publisher {
            if self.sent != 0 {
                shared.sent_per_pub[p as usize].fetch_add(self.sent, Relaxed);
            }
            if self.acked != 0 {
                shared.acked_per_pub[p as usize].fetch_add(self.acked, Relaxed);
            }
        }
        add(&shared.sent, &mut self.sent);
        add(&shared.acked, &mut self.acked);
        add(&shared.rejected, &mut self.rejected);
        add(&shared.received, &mut self.received);
        add(&shared.unique, &mut self.unique);
        add(&shared.duplicates, &mut self.duplicates);
        add(&shared.unexpected, &mut self.unexpected);
        if self.latencies.len() >= 256 || (all && !self.latencies.is_empty()) {
            shared.record_latencies(&self.latencies);
            self.latencies.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_adds_and_resets() {
        let s = Shared::new(1, 2);
        let mut l = Local {
            sent: 3,
            acked: 2,
            received: 5,
            unique: 4,
            duplicates: 1,
            latencies: vec![10, 20],
            ..Local::default()
        };
        l.flush(&s, Some(1), false);
        assert_eq!(s.sent_per_pub[1].load(Relaxed), 3);
        assert_eq!(s.acked_per_pub[1].load(Relaxed), 2);
        assert_eq!(s.snapshot().unique, 4);
        assert_eq!(l.sent, 0);
        // Latencies wait for a batch unless told to flush all.
        assert_eq!(s.latency.lock().unwrap().len(), 0);
        l.flush(&s, None, true);
        assert_eq!(s.latency.lock().unwrap().len(), 2);
    }
}
