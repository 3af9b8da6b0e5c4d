//! The result of a run: one serializable [`Report`], printed as a JSON line for
//! scripts and as a short summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Scenario;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// MQTT version (`3.1.1` or `5`).
    pub protocol: &'static str,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes.
    pub payload: usize,
    /// `--count`.
    pub count: u32,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Messages per second per publisher (0 = unlimited).
    pub rate: f64,
    /// In-flight window per publisher.
    pub inflight: u16,
    /// Measured publishing (or holding) time, seconds.
    pub duration_s: f64,
    /// Connection establishment.
    pub connections: Connections,
    /// PUBLISH packets written.
    pub sent: u64,
    /// QoS 1/2 publishes the broker acknowledged (PUBACK / PUBREC); at QoS 0, 0.
    pub acknowledged: u64,
    /// QoS 1/2 publishes refused with an error reason code.
    pub rejected: u64,
    /// PUBLISH packets received by subscribers, duplicates included.
    pub received: u64,
    /// Receptions of a message the same subscriber already had.
    pub duplicates: u64,
    /// Receptions not from an expected publisher of this run.
    pub unexpected: u64,
    /// QoS ≥ 1: acknowledged messages that some subscriber that should have received
    /// them never did, counted per subscriber. `null` at QoS 0 or without
    /// publishers and subscribers in the same run.
    pub lost: Option<u64>,
    /// QoS 0: sent messages that a subscriber never received (QoS 0 may drop).
    pub not_received: Option<u64>,
    /// Publishes written per second during the measured window.
    pub sent_per_s: f64,
    /// Publishes the broker read per second: those written during the measured
    /// window, over the time from its start until the broker answered a PINGREQ each
    /// publisher sent after its last PUBLISH. Unlike `sent_per_s` it does not count
    /// what still waited in socket buffers when the window closed.
    pub ingested_per_s: Option<f64>,
    /// Messages received per second during the measured window.
    pub received_per_s: f64,
    /// End-to-end latency (send time in the payload to reception), milliseconds.
    pub latency_ms: Option<Percentiles>,
    /// CPU of the load generator over the window, percent of one core.
    pub bench_cpu_percent: f64,
    /// Worker threads of the load generator.
    pub bench_threads: usize,
    /// The broker process, when `--broker-pid` was given.
    pub broker: Option<BrokerUsage>,
    /// Errors by message.
    pub errors: BTreeMap<String, u64>,
}

/// How connecting went.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections established.
    pub connected: u64,
    /// Connections that failed to establish.
    pub failed: u64,
    /// Established connections that broke before the end.
    pub dropped: u64,
    /// Established connections per second over the connect phase.
    pub rate_per_s: f64,
    /// Handshake time (TCP connect to CONNACK, plus SUBACK for subscribers), ms.
    pub handshake_ms: Option<Percentiles>,
}

/// Resource use of the broker process.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerUsage {
    /// Its PID.
    pub pid: u32,
    /// CPU over the measured window, percent of one core.
    pub cpu_percent: f64,
    /// RSS before the first connection, bytes.
    pub rss_start: u64,
    /// Highest RSS sampled (once a second and at phase changes), bytes.
    pub rss_peak: u64,
    /// RSS at the end of the window, with every connection still open, bytes.
    pub rss_end: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram in microseconds; `None` when it is empty.
    pub fn of_micros(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ = writeln!(
            s,
            "{:?} qos {} payload {} B, {} pub / {} sub, {:.1} s",
            self.scenario,
            self.qos,
            self.payload,
            self.publishers,
            self.subscribers,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "  connections: {} of {} ({} failed, {} dropped) at {:.0}/s",
            c.connected, c.attempted, c.failed, c.dropped, c.rate_per_s
        );
        if let Some(r) = self.ingested_per_s {
            let _ = writeln!(s, "  read by the broker: {r:.0}/s");
        }
        let _ = writeln!(
            s,
            "  sent {} ({:.0}/s), acknowledged {}, received {} ({:.0}/s), duplicates {}, lost {}",
            self.sent,
            self.sent_per_s,
            self.acknowledged,
            self.received,
            self.received_per_s,
            self.duplicates,
            self.lost.map_or("n/a".into(), |l| l.to_string())
        );
        if let Some(l) = &self.latency_ms {
            let _ = writeln!(
                s,
                "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        let _ = write!(
            s,
            "  bench cpu {:.0}% ({} threads)",
            self.bench_cpu_percent, self.bench_threads
        );
        if let Some(b) = &self.broker {
            let _ = write!(
                s,
                ", broker cpu {:.0}%, rss {:.1} → {:.1} MiB (peak {:.1})",
                b.cpu_percent,
                mib(b.rss_start),
                mib(b.rss_end),
                mib(b.rss_peak)
            );
        }
        for (e, n) in &self.errors {
            let _ = write!(s, "\n  error ×{n}: {e}");
        }
        s
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram;

    #[test]
    fn percentiles_in_ms() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of_micros(&h).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 0.99).abs() < 0.01, "{p:?}");
        assert!(Percentiles::of_micros(&histogram()).is_none());
    }
}
