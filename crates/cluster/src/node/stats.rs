//! Cluster-wide `$SYS` totals. Every `sys_interval_secs` each node writes its own
//! counters ([`broker::sys::Counters`]) into the `{cluster}:stats` hash (field: its
//! node id, value: `<unix ms>,<counters>`), reads the whole hash back in the same
//! round trip, and publishes the sums over the nodes whose record is fresh (written
//! within three intervals) as retained messages under `$SYS/cluster/` to its own
//! subscribers: `nodes`, `clients/connected`, `clients/total`, `messages/received`,
//! `messages/sent`, `publish/messages/dropped`, `subscriptions/count`. Records older
//! than ten intervals (a node that died or left) are deleted by whoever sees them.
//! With Redis unreachable nothing is published (the last values stay retained).

use std::time::Duration;

use broker::handle::BrokerHandle;
use broker::sys::Counters;
use tokio::sync::watch;

use crate::conn::Conn;
use crate::keys::Keys;
use crate::sessions::unix_ms;

/// A record counts in the totals while younger than this many intervals.
const FRESH: u64 = 3;
/// A record older than this many intervals is deleted.
const STALE: u64 = 10;

/// The totals of the fresh records of `records` (`(node, value)`) at `now_ms`, and
/// the nodes whose records are stale.
pub(super) fn totals(
    records: &[(String, String)],
    now_ms: u64,
    interval: Duration,
) -> (usize, Counters, Vec<String>) {
    let every = interval.as_millis() as u64;
    let (mut nodes, mut sum, mut stale) = (0, Counters::default(), Vec::new());
    for (node, value) in records {
        let parsed = value
            .split_once(',')
            .and_then(|(ts, rest)| Some((ts.parse::<u64>().ok()?, Counters::decode(rest)?)));
        match parsed {
            Some((ts, c)) if now_ms.saturating_sub(ts) <= FRESH * every => {
                nodes += 1;
                sum = sum + c;
            }
            Some((ts, _)) if now_ms.saturating_sub(ts) <= STALE * every => {}
            // Stale, or not a record this version writes.
            _ => stale.push(node.clone()),
        }
    }
    (nodes, sum, stale)
}

/// Writes this node's counters and publishes the cluster's totals every
/// `interval`, until `stop`.
pub(super) async fn publisher(
    conn: Conn,
    keys: Keys,
    me: String,
    broker: BrokerHandle,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let key = keys.stats();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let now = unix_ms();
        let mine = format!("{now},{}", broker.counters().encode());
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&me)
            .arg(mine)
            .ignore()
            .cmd("HGETALL")
            .arg(&key);
        let records: Vec<(String, String)> = match pipe.query_async(&mut conn.clone()).await {
            Ok((records,)) => records,
            Err(e) => {
                tracing::debug!(error = %e, "cluster $SYS totals: redis unavailable; not published");
                continue;
            }
        };
        let (nodes, sum, stale) = totals(&records, now, interval);
        if !stale.is_empty() {
            let mut del = redis::cmd("HDEL");
            del.arg(&key).arg(&stale);
            let _: Result<i64, _> = del.query_async(&mut conn.clone()).await;
        }
        let mut values = vec![("nodes".to_string(), nodes.to_string())];
        values.extend(sum.topics());
        broker.publish_sys("$SYS/cluster/", values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_records_add_up_stale_ones_are_dropped() {
        let c = |n: u64| Counters {
            connected: n,
            received: 10 * n,
            ..Default::default()
        };
        let every = Duration::from_secs(10);
        let now = 1_000_000;
        let records = vec![
            ("n1".to_string(), format!("{now},{}", c(1).encode())),
            (
                "n2".to_string(),
                format!("{},{}", now - 25_000, c(2).encode()),
            ),
            // Missed more than three intervals: not counted, not deleted yet.
            (
                "n3".to_string(),
                format!("{},{}", now - 40_000, c(4).encode()),
            ),
            // Gone for more than ten intervals.
            (
                "n4".to_string(),
                format!("{},{}", now - 200_000, c(8).encode()),
            ),
            ("n5".to_string(), "garbage".to_string()),
        ];
        let (nodes, sum, stale) = totals(&records, now, every);
        assert_eq!(nodes, 2);
        assert_eq!((sum.connected, sum.received), (3, 30));
        assert_eq!(stale, ["n4", "n5"]);
    }
}
