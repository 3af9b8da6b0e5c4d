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
        let m = &broker.metrics;
        let (rx, tx) = (m.received_total(), m.sent_total());
        let rx_load = received.update(rx, dt);
        let tx_load = sent.update(tx, dt);
        let mut values: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("astramq version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", start.elapsed().as_secs()),
            ),
            (
                "clients/connected".into(),
                Metrics::get(&m.clients_connected).to_string(),
            ),
            ("clients/total".into(), broker.registry.len().to_string()),
            ("messages/received".into(), rx.to_string()),
            ("messages/sent".into(), tx.to_string()),
            ("publish/messages/dropped".into(), dropped(m).to_string()),
            (
                "subscriptions/count".into(),
                broker.router.len().to_string(),
            ),
            (
                "retained messages/count".into(),
                broker.retained.len().to_string(),
            ),
        ];
        for (window, i) in [("1min", 0), ("5min", 1), ("15min", 2)] {
            let (r, t) = (rx_load[i], tx_load[i]);
            values.push((
                format!("load/messages/received/{window}"),
                format!("{r:.2}"),
            ));
            values.push((format!("load/messages/sent/{window}"), format!("{t:.2}")));
        }
        for (name, value) in values {
            let publish = mqtt::Publish {
                topic: format!("$SYS/broker/{name}"),
                payload: value.into_bytes().into(),
                retain: true,
                ..Default::default()
            };
            let msg = Arc::new(Message::new(&publish, None, Instant::now()));
            broker.publish_local(&msg);
        }
    }
}

/// Messages dropped for any reason (full queues, too large, expired).
fn dropped(m: &Metrics) -> u64 {
    Metrics::get(&m.queue_overflow_dropped)
        + Metrics::get(&m.oversize_dropped)
        + Metrics::get(&m.expired_dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

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
