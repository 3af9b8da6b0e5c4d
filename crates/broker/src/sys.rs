//! `$SYS` topics: every `sys_interval_secs` the node publishes what it is doing as
//! retained QoS 0 messages under `$SYS/broker/`, on Mosquitto's names where they
//! exist, so dashboards and scripts written for Mosquitto read AstraMQ too.
//!
//! They are this node's own: published to local subscribers and kept in the local
//! retained store only (never forwarded to other nodes, never written to disk); the
//! ACL applies to each subscriber as to any message. A `#` filter does not match them
//! [MQTT-4.7.2-1]: subscribe to `$SYS/#`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;

/// Moving averages per minute over 1, 5 and 15 minutes, as Mosquitto's `load/...`.
#[derive(Debug, Default)]
struct Load {
    last: u64,
    avg: [f64; 3],
    started: bool,
}

impl Load {
    /// Folds in the counter's value `now`, `dt` after the previous one; returns the
    /// three averages (per minute).
    fn update(&mut self, now: u64, dt: Duration) -> [f64; 3] {
        let delta = now.saturating_sub(self.last) as f64;
        self.last = now;
        let per_min = delta * 60.0 / dt.as_secs_f64().max(0.001);
        if !self.started {
            self.started = true;
            self.avg = [per_min; 3];
            return self.avg;
        }
        for (avg, window) in self.avg.iter_mut().zip([60.0, 300.0, 900.0]) {
            let k = (-dt.as_secs_f64() / window).exp();
            *avg = *avg * k + per_min * (1.0 - k);
        }
        self.avg
    }
}

/// Publishes the `$SYS` topics every `interval` until the task is dropped.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let start = Instant::now();
    let mut received = Load::default();
    let mut sent = Load::default();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dt = last.elapsed();
        last = Instant::now();
        let c = Counters::of(&broker);
        let rx_load = received.update(c.received, dt);
        let tx_load = sent.update(c.sent, dt);
        let mut values: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("astramq version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", start.elapsed().as_secs()),
            ),
        ];
        values.extend(c.topics());
        // Not a counter that adds up: every node of a cluster holds every one.
        values.push((
            "retained messages/count".into(),
            broker.retained.len().to_string(),
        ));
        for (window, i) in [("1min", 0), ("5min", 1), ("15min", 2)] {
            let (r, t) = (rx_load[i], tx_load[i]);
            values.push((
                format!("load/messages/received/{window}"),
                format!("{r:.2}"),
            ));
            values.push((format!("load/messages/sent/{window}"), format!("{t:.2}")));
        }
        publish(&broker, "$SYS/broker/", values);
    }
}

/// Publishes each `(name, value)` as a retained QoS 0 message on `prefix` + name to
/// this node's subscribers (the cluster publishes its totals under `$SYS/cluster/`
/// this way).
pub fn publish(broker: &Broker, prefix: &str, values: Vec<(String, String)>) {
    for (name, value) in values {
        let publish = mqtt::Publish {
            topic: format!("{prefix}{name}"),
            payload: value.into_bytes().into(),
            retain: true,
            ..Default::default()
        };
        let msg = Arc::new(Message::new(&publish, None, Instant::now()));
        broker.publish_local(&msg);
    }
}

/// A node's counters as `$SYS` publishes them; they add up across nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections open (`clients/connected`).
    pub connected: u64,
    /// Sessions, connected or not (`clients/total`).
    pub sessions: u64,
    /// PUBLISH packets received from clients (`messages/received`).
    pub received: u64,
    /// PUBLISH packets sent to clients (`messages/sent`).
    pub sent: u64,
    /// Messages dropped for any reason (`publish/messages/dropped`).
    pub dropped: u64,
    /// Subscriptions (`subscriptions/count`).
    pub subscriptions: u64,
}

impl Counters {
    /// This node's counters now.
    pub fn of(broker: &Broker) -> Counters {
        let m = &broker.metrics;
        Counters {
            connected: Metrics::get(&m.clients_connected),
            sessions: broker.registry.len() as u64,
            received: m.received_total(),
            sent: m.sent_total(),
            dropped: dropped(m),
            subscriptions: broker.router.len() as u64,
        }
    }

    /// The `$SYS` topic names (after the prefix) and values of these counters.
    pub fn topics(&self) -> Vec<(String, String)> {
        [
            ("clients/connected", self.connected),
            ("clients/total", self.sessions),
            ("messages/received", self.received),
            ("messages/sent", self.sent),
            ("publish/messages/dropped", self.dropped),
            ("subscriptions/count", self.subscriptions),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    /// The counters as one record (`connected,sessions,received,sent,dropped,subscriptions`).
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.connected,
            self.sessions,
            self.received,
            self.sent,
            self.dropped,
            self.subscriptions
        )
    }

    /// [`Counters::encode`]'s record back; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Counters> {
        let mut it = s.split(',').map(|v| v.parse::<u64>().ok());
        let c = Counters {
            connected: it.next()??,
            sessions: it.next()??,
            received: it.next()??,
            sent: it.next()??,
            dropped: it.next()??,
            subscriptions: it.next()??,
        };
        it.next().is_none().then_some(c)
    }
}

/// Messages dropped for any reason (full queues, too large, expired).
fn dropped(m: &Metrics) -> u64 {
    Metrics::get(&m.queue_overflow_dropped)
        + Metrics::get(&m.oversize_dropped)
        + Metrics::get(&m.expired_dropped)
}

impl std::ops::Add for Counters {
    type Output = Counters;

    /// The sum of two nodes' counters.
    fn add(self, o: Counters) -> Counters {
        Counters {
            connected: self.connected + o.connected,
            sessions: self.sessions + o.sessions,
            received: self.received + o.received,
            sent: self.sent + o.sent,
            dropped: self.dropped + o.dropped,
            subscriptions: self.subscriptions + o.subscriptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_add_up() {
        let a = Counters {
            connected: 1,
            sessions: 2,
            received: 3,
            sent: 4,
            dropped: 5,
            subscriptions: 6,
        };
        assert_eq!(Counters::decode(&a.encode()), Some(a));
        assert_eq!(Counters::decode("1,2,3"), None);
        assert_eq!(Counters::decode("1,2,3,4,5,6,7"), None);
        assert_eq!(Counters::decode("1,2,x,4,5,6"), None);
        assert_eq!((a + a).received, 6);
    }

    #[test]
    fn load_averages_follow_a_steady_rate() {
        let mut l = Load::default();
        let dt = Duration::from_secs(10);
        // 100 messages every 10 s = 600 a minute.
        let mut n = 0;
        let mut avg = [0.0; 3];
        for _ in 0..200 {
            n += 100;
            avg = l.update(n, dt);
        }
        for a in avg {
            assert!((a - 600.0).abs() < 1.0, "{avg:?}");
        }
        // Silence: the 1-minute average falls faster than the 15-minute one.
        for _ in 0..6 {
            avg = l.update(n, dt);
        }
        assert!(avg[0] < avg[1] && avg[1] < avg[2], "{avg:?}");
    }
}
