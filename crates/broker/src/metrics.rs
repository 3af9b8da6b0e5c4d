//! What the broker does, as typed metrics (counters, gauges, histograms) in one
//! [`prometheus_client`] registry per broker, served as Prometheus text at
//! `GET /metrics` on the health/admin listener.
//!
//! Why `prometheus-client` (and not `metrics` + `metrics-exporter-prometheus`): it has
//! no global recorder, so every [`Broker`](crate::broker::Broker) owns its registry
//! (tests run several brokers in one process without mixing their counts); a counter
//! or gauge is a plain atomic behind an `Arc`, so the hot path holds handles fetched
//! once and pays one relaxed atomic add, with no lookup, lock or allocation; and
//! scrape-time values (backlogs, Redis state, gossip) come from
//! [`Collector`]s instead of being copied into gauges on every change.
//!
//! Its own `Histogram` takes a mutex on every observation, so latencies use
//! [`Histogram`] here: fixed buckets of atomic counts, lock-free. The two metrics
//! touched per delivery ([`Histogram`] and the per-QoS [`Tally`]) are sharded per
//! thread, so worker threads delivering at once do not share cache lines.
//!
//! Every labelled series the broker knows in advance (reasons, QoS levels, each
//! listener) is created at start, so it shows as 0 before its first event: a
//! dashboard's `rate()` sees the series from the first scrape, and a test can tell a
//! missing metric from a quiet one. Names, types and units: `docs/admin.md`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::listener::ListenerSpec;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Bucket upper bounds of the latency histograms, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A label set of one static label.
type One = [(&'static str, &'static str); 1];

/// The labels of a per-listener series.
type ListenerLabels = [(&'static str, String); 3];

/// The labels of a per-listener series with a reason.
type ListenerReason = [(&'static str, String); 4];

/// The broker's metrics. Fields are handles: cloning one shares its value.
#[derive(Debug)]
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    /// Connections currently open (CONNECT accepted).
    pub clients_connected: Gauge,
    /// PUBLISH packets received from clients, by QoS.
    received: [Tally; 3],
    /// PUBLISH packets written to clients, by QoS.
    sent: [Tally; 3],
    /// Deliveries queued to sessions.
    pub deliveries: Counter,
    /// Messages dropped because a session queue was full (`limits.max_queued_*`).
    pub queue_overflow_dropped: Counter,
    /// Messages dropped because they exceeded a client's Maximum Packet Size.
    pub oversize_dropped: Counter,
    /// Messages dropped because their Message Expiry Interval ran out while queued.
    pub expired_dropped: Counter,
    /// Published messages (not retained) that no subscription on any node matched.
    pub no_subscribers_dropped: Counter,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: Counter,
    /// QoS 0 messages to other nodes shed because the bus backlog toward the
    /// destination was full (`cluster.forward_qos0_backlog`, `forward_backlog_bytes`).
    pub bus_backlog_dropped: Counter,
    /// QoS 0 messages to other nodes shed because the destination's inbox stream
    /// held too many unread entries (`cluster.inbox_backlog_entries`).
    pub inbox_backlog_dropped: Counter,
    /// Times a client's socket was left unread because it exceeded
    /// `limits.max_publish_rate`.
    pub throttled_message_rate: Counter,
    /// Times a client's socket was left unread because it exceeded
    /// `limits.max_publish_bytes_rate`.
    pub throttled_byte_rate: Counter,
    /// Times a client's socket was left unread because its QoS 1/2 message found the
    /// bus backlog toward another node full (`cluster.forward_qos12_backlog`).
    pub throttled_bus_backlog: Counter,
    /// Times a persistent session's socket was left unread because the session store
    /// held `cluster.session_store_max_changes` unstored changes.
    pub throttled_session_store: Counter,
    /// SUBSCRIBE filters refused because the session had `limits.max_subscriptions`.
    pub subscriptions_refused: Counter,
    /// From a message's arrival on this node to its PUBLISH written to a
    /// subscriber's socket buffer.
    pub delivery_latency: Histogram,
    listener_connections: Family<ListenerLabels, Gauge>,
    listener_accepted: Family<ListenerLabels, Counter>,
    listener_refused: Family<ListenerReason, Counter>,
    listener_setup_failures: Family<ListenerReason, Counter>,
    listener_connack_refused: Family<ListenerReason, Counter>,
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

/// One listener's series, fetched once when it is bound.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// TCP connections open on it (from accept to close, MQTT or not yet).
    pub open: Gauge,
    /// TCP connections accepted (and not refused at once).
    pub accepted: Counter,
    /// Closed at accept: `limits.max_connections` reached.
    pub refused_max_connections: Counter,
    /// Closed at accept: `limits.max_connection_rate` exceeded.
    pub refused_connection_rate: Counter,
    /// Closed before MQTT: TLS handshake failed.
    pub setup_failed_tls: Counter,
    /// Closed before MQTT: WebSocket upgrade refused.
    pub setup_failed_ws: Counter,
    /// Closed before MQTT: missing or bad PROXY v2 header.
    pub setup_failed_proxy: Counter,
    /// Closed before MQTT: set-up not done within `limits.connect_timeout_secs`.
    pub setup_timed_out: Counter,
    /// CONNECTs answered with a refusing CONNACK, by reason ([`ListenerMetrics::connack_refused`]).
    connack_refused: Family<ListenerReason, Counter>,
    /// This listener's labels.
    labels: [(&'static str, String); 3],
}

impl ListenerMetrics {
    /// A CONNECT on this listener was refused with `code` (its MQTT 5 name, in
    /// snake case, is the `reason` label; a 3.1.1 client got the matching return
    /// code).
    pub fn connack_refused(&self, code: mqtt::ReasonCode) {
        let [a, b, c] = self.labels.clone();
        self.connack_refused
            .get_or_create(&[a, b, c, ("reason", snake_case(&format!("{code:?}")))])
            .inc();
    }
}

/// `BadUserNameOrPassword` → `bad_user_name_or_password`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// What [`Metrics::add`], [`Metrics::sub`] and [`Metrics::get`] work on.
pub trait Count {
    /// Adds `n`.
    fn add(&self, n: u64);
    /// The current value.
    fn value(&self) -> u64;
}

impl Count for Counter {
    fn add(&self, n: u64) {
        self.inc_by(n);
    }
    fn value(&self) -> u64 {
        self.get()
    }
}

impl Count for Gauge {
    fn add(&self, n: u64) {
        self.inc_by(n as i64);
    }
    fn value(&self) -> u64 {
        self.get().max(0) as u64
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

fn labelled_counters<M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [M; N]
where
    M: prometheus_client::registry::Metric + TypedMetric + Default + Clone,
{
    let family = Family::<One, M>::default();
    registry.register(name, help, family.clone());
    values.map(|v| family.get_or_create_owned(&[(label, v)]))
}

impl Metrics {
    /// Every metric of the broker, registered, at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let clients_connected = Gauge::default();
        r.register(
            "astramq_clients_connected",
            "MQTT connections currently open (CONNECT accepted)",
            clients_connected.clone(),
        );
        let qos = ["0", "1", "2"];
        let received = labelled_counters(
            &mut r,
            "astramq_messages_received",
            "PUBLISH packets received from clients, by QoS",
            "qos",
            qos,
        );
        let sent = labelled_counters(
            &mut r,
            "astramq_messages_sent",
            "PUBLISH packets written to clients, by QoS (retained messages sent on SUBSCRIBE included, resends after a reconnection not)",
            "qos",
            qos,
        );
        let deliveries = counter(
            &mut r,
            "astramq_deliveries",
            "Deliveries queued to local sessions (one per matching session)",
        );
        let [queue_overflow_dropped, bus_backlog_dropped, inbox_backlog_dropped, oversize_dropped, expired_dropped, no_subscribers_dropped] =
            labelled_counters(
                &mut r,
                "astramq_dropped",
                "Messages dropped, by reason: session_queue_full (limits.max_queued_*, per \
                 limits.queue_overflow), bus_backlog_full and inbox_backlog_full (QoS 0 to \
                 other nodes), oversize (above the client's Maximum Packet Size), expired \
                 (Message Expiry Interval ran out while queued), no_subscribers (published, \
                 not retained, and no subscription on any node matched)",
                "reason",
                [
                    "session_queue_full",
                    "bus_backlog_full",
                    "inbox_backlog_full",
                    "oversize",
                    "expired",
                    "no_subscribers",
                ],
            );
        let protocol_errors = counter(
            &mut r,
            "astramq_protocol_errors",
            "Connections closed for a protocol violation or malformed packet",
        );
        let [throttled_message_rate, throttled_byte_rate, throttled_bus_backlog, throttled_session_store] =
            labelled_counters(
                &mut r,
                "astramq_publish_throttled",
                "Times a client's socket was left unread, by reason: message_rate \
                 (limits.max_publish_rate), byte_rate (limits.max_publish_bytes_rate), \
                 bus_backlog (cluster.forward_qos12_backlog), session_store \
                 (cluster.session_store_max_changes)",
                "reason",
                ["message_rate", "byte_rate", "bus_backlog", "session_store"],
            );
        let subscriptions_refused = counter(
            &mut r,
            "astramq_subscriptions_refused",
            "SUBSCRIBE filters refused because the session had limits.max_subscriptions",
        );
        let delivery_latency = Histogram::new();
        r.register(
            "astramq_delivery_latency_seconds",
            "From a message's arrival on this node (from a client or another node) to its \
             PUBLISH written to a subscriber's socket buffer, waiting in the session queue \
             included; retained messages sent on SUBSCRIBE are not counted",
            delivery_latency.clone(),
        );
        let listener_connections = Family::<ListenerLabels, Gauge>::default();
        r.register(
            "astramq_listener_connections",
            "TCP connections open on each listener (accepted, MQTT or not yet)",
            listener_connections.clone(),
        );
        let listener_accepted = Family::<ListenerLabels, Counter>::default();
        r.register(
            "astramq_listener_connections_accepted",
            "TCP connections accepted on each listener (refused ones not included)",
            listener_accepted.clone(),
        );
        let listener_refused = Family::<ListenerReason, Counter>::default();
        r.register(
            "astramq_connections_refused",
            "Connections closed at accept, per listener, by reason: max_connections \
             (limits.max_connections), connection_rate (limits.max_connection_rate)",
            listener_refused.clone(),
        );
        let listener_connack_refused = Family::<ListenerReason, Counter>::default();
        r.register(
            "astramq_connack_refused",
            "CONNECTs answered with a refusing CONNACK, per listener, by reason (the MQTT 5 \
             reason code's name: bad_user_name_or_password, not_authorized, \
             client_identifier_not_valid, unsupported_protocol_version, \
             server_unavailable, ...; 3.1.1 clients get the matching return code)",
            listener_connack_refused.clone(),
        );
        let listener_setup_failures = Family::<ListenerReason, Counter>::default();
        r.register(
            "astramq_connection_setup_failures",
            "Connections closed before MQTT, per listener, by reason: tls (handshake \
             failed, e.g. no or an invalid client certificate), websocket (upgrade \
             refused), proxy (bad PROXY v2 header), timeout (not done within \
             limits.connect_timeout_secs)",
            listener_setup_failures.clone(),
        );
        r.register_collector(Box::new(crate::arrival::Waits));
        Metrics {
            registry: parking_lot::Mutex::new(r),
            clients_connected,
            received,
            sent,
            deliveries,
            queue_overflow_dropped,
            oversize_dropped,
            expired_dropped,
            no_subscribers_dropped,
            protocol_errors,
            bus_backlog_dropped,
            inbox_backlog_dropped,
            throttled_message_rate,
            throttled_byte_rate,
            throttled_bus_backlog,
            throttled_session_store,
            subscriptions_refused,
            delivery_latency,
            listener_connections,
            listener_accepted,
            listener_refused,
            listener_setup_failures,
            listener_connack_refused,
            drop_log: LogLimiter::default(),
            shed_log: LogLimiter::default(),
            throttle_log: LogLimiter::default(),
            refuse_log: LogLimiter::default(),
            subscription_log: LogLimiter::default(),
        }
    }

    /// The series of one listener, created at zero (call once per listener bound).
    pub fn listener(&self, spec: &ListenerSpec) -> Arc<ListenerMetrics> {
        let base = [
            ("listener", spec.addr.to_string()),
            ("transport", spec.transport.name().to_string()),
            ("proxy", spec.proxied.to_string()),
        ];
        let with = |family: &Family<ListenerReason, Counter>, reason: &str| {
            let [a, b, c] = base.clone();
            family.get_or_create_owned(&[a, b, c, ("reason", reason.to_string())])
        };
        let refused = &self.listener_refused;
        let setup = &self.listener_setup_failures;
        Arc::new(ListenerMetrics {
            open: self.listener_connections.get_or_create_owned(&base),
            accepted: self.listener_accepted.get_or_create_owned(&base),
            refused_max_connections: with(refused, "max_connections"),
            refused_connection_rate: with(refused, "connection_rate"),
            setup_failed_tls: with(setup, "tls"),
            setup_failed_ws: with(setup, "websocket"),
            setup_failed_proxy: with(setup, "proxy"),
            setup_timed_out: with(setup, "timeout"),
            connack_refused: self.listener_connack_refused.clone(),
            labels: base,
        })
    }

    /// Counts a PUBLISH received from a client.
    pub fn received(&self, qos: mqtt::QoS) {
        self.received[qos as usize].inc();
    }

    /// Counts a PUBLISH written to a client.
    pub fn sent(&self, qos: mqtt::QoS) {
        self.sent[qos as usize].inc();
    }

    /// PUBLISH packets sent to clients so far, every QoS.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(Tally::get).sum()
    }

    /// PUBLISH packets received from clients so far, every QoS.
    pub fn received_total(&self) -> u64 {
        self.received.iter().map(Tally::get).sum()
    }

    /// Adds metrics computed when scraped (the cluster's: Redis, bus, gossip).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.lock().register_collector(collector);
    }

    /// Registers one more metric (a cluster histogram, say). `help` without a final
    /// period: the encoder adds one.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Every metric, in the Prometheus text exposition format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let registry = self.registry.lock();
        // Writing to a String cannot fail; a collector's error would cut the text
        // short, which the scraper sees.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// Adds `n` to a counter or gauge.
    pub fn add(counter: &impl Count, n: u64) {
        counter.add(n);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(gauge: &Gauge, n: u64) {
        gauge.dec_by(n as i64);
    }

    /// Reads a counter or gauge.
    pub fn get(counter: &impl Count) -> u64 {
        counter.value()
    }
}

/// Shards of the hot-path metrics ([`Tally`], [`Histogram`]): each thread adds to
/// its own, on cache lines of its own, so tokio's worker threads delivering at once
/// do not fight over one line (measured: 28 ns per delivery on one thread, 265 ns on
/// each of two threads sharing one set of atomics; see `examples/metrics_cost.rs`).
const SHARDS: usize = 16;

/// A value alone on its cache lines (128 bytes: adjacent-line prefetching pairs
/// lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

thread_local! {
    /// This thread's shard, given out in turn at first use.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// A counter for the hot path, sharded per thread (see [`SHARDS`]); exposed as a
/// Prometheus counter, the sum of its shards. Cloning shares the value.
#[derive(Debug, Clone)]
pub struct Tally {
    shards: Arc<[Padded<AtomicU64>]>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            shards: (0..SHARDS).map(|_| Padded(AtomicU64::new(0))).collect(),
        }
    }
}

impl Tally {
    /// Adds one.
    pub fn inc(&self) {
        self.shards[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Tally {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Tally {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Buckets of a [`Histogram`]: one per bound of [`LATENCY_BUCKETS`], and `+Inf`.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// [`LATENCY_BUCKETS`] in nanoseconds.
const BOUNDS_NS: [u64; LATENCY_BUCKETS.len()] = {
    let mut ns = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// One shard of a [`Histogram`].
#[derive(Debug, Default)]
struct HistogramShard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS],
    /// Sum of observations, in nanoseconds.
    sum_ns: AtomicU64,
}

/// A latency histogram over [`LATENCY_BUCKETS`], lock-free and sharded per thread:
/// observing is a binary search over 16 bounds and two relaxed atomic adds on this
/// thread's shard (`prometheus_client`'s own histogram takes a mutex). Cloning shares
/// the counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    shards: Arc<[Padded<HistogramShard>]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        let s = &self.shards[shard()].0;
        s.counts[i].fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations per bucket, and the sum in nanoseconds, over every shard.
    fn totals(&self) -> ([u64; BUCKETS], u64) {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0u64;
        for s in self.shards.iter() {
            for (c, a) in counts.iter_mut().zip(&s.0.counts) {
                *c += a.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(s.0.sum_ns.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.totals().0.iter().sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (counts, sum_ns) = self.totals();
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes metrics from a [`Collector`]: each call one metric, its help, its type and
/// its samples. Counter names are given without `_total` (the encoder adds it).
#[derive(Debug)]
pub struct Scrape<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Scrape<'a> {
    /// Wraps a collector's encoder.
    pub fn new(encoder: DescriptorEncoder<'a>) -> Scrape<'a> {
        Scrape { encoder }
    }

    /// One gauge.
    pub fn gauge<V>(&mut self, name: &str, help: &str, value: V) -> std::fmt::Result
    where
        V: EncodeGaugeValue + Send + Sync + std::fmt::Debug + 'static,
    {
        let e = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(e)
    }

    /// One counter (`_total` is appended to `name`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let e = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(e)
    }

    /// A gauge with one sample per value of `label`.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: &[(&str, i64)],
    ) -> std::fmt::Result {
        let mut e = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for &(value_of_label, value) in samples {
            let labels = [(label, value_of_label)];
            ConstGauge::new(value).encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge with one sample per label set (several labels each).
    pub fn gauges_by(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Vec<(&'static str, String)>, i64)],
    ) -> std::fmt::Result {
        let mut e = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            ConstGauge::new(*value).encode(e.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// A counter with one sample per value of `label` (`_total` is appended).
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: &[(&str, u64)],
    ) -> std::fmt::Result {
        let mut e = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for &(value_of_label, value) in samples {
            let labels = [(label, value_of_label)];
            ConstCounter::new(value).encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        m.delivery_latency.observe(Duration::from_micros(50));
        m.delivery_latency.observe(Duration::from_millis(3));
        m.delivery_latency.observe(Duration::from_secs(60));
        let text = m.encode();
        for line in [
            "astramq_delivery_latency_seconds_bucket{le=\"0.0001\"} 1\n",
            "astramq_delivery_latency_seconds_bucket{le=\"0.0025\"} 1\n",
            "astramq_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n",
            "astramq_delivery_latency_seconds_bucket{le=\"10\"} 2\n",
            "astramq_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n",
            "astramq_delivery_latency_seconds_count 3\n",
            "# TYPE astramq_delivery_latency_seconds histogram\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert_eq!(m.delivery_latency.count(), 3);
    }

    #[test]
    fn counters_are_typed_and_labelled_series_exist_at_zero() {
        let m = Metrics::new();
        m.received(mqtt::QoS::AtLeastOnce);
        Metrics::add(&m.queue_overflow_dropped, 2);
        Metrics::add(&m.clients_connected, 3);
        Metrics::sub(&m.clients_connected, 1);
        let spec = ListenerSpec {
            addr: "127.0.0.1:1883".parse().unwrap(),
            transport: crate::listener::Transport::Tls,
            proxied: false,
        };
        let l = m.listener(&spec);
        l.refused_connection_rate.inc();
        let text = m.encode();
        for line in [
            "# TYPE astramq_messages_received_total counter\n",
            "astramq_messages_received_total{qos=\"0\"} 0\n",
            "astramq_messages_received_total{qos=\"1\"} 1\n",
            "astramq_dropped_total{reason=\"session_queue_full\"} 2\n",
            "astramq_dropped_total{reason=\"expired\"} 0\n",
            "# TYPE astramq_clients_connected gauge\n",
            "astramq_clients_connected 2\n",
            "astramq_connections_refused_total{listener=\"127.0.0.1:1883\",transport=\"tls\",proxy=\"false\",reason=\"connection_rate\"} 1\n",
            "astramq_connection_setup_failures_total{listener=\"127.0.0.1:1883\",transport=\"tls\",proxy=\"false\",reason=\"timeout\"} 0\n",
            "astramq_listener_connections{listener=\"127.0.0.1:1883\",transport=\"tls\",proxy=\"false\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert_eq!(m.received_total(), 1);
    }
}
