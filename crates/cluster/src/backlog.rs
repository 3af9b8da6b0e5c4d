//! What waits to cross the bus: the forwarder's queue, bounded per destination node.
//!
//! Two lanes. QoS 1/2 messages (a publisher waits for their acknowledgement) are
//! always taken first; QoS 0 messages fill what is left of a round trip. So a QoS 0
//! flood never delays an acknowledged message on this node.
//!
//! Per destination node and lane, a count and a byte bound (`cluster.forward_*`):
//! - a QoS 0 copy toward a node whose lane is full is shed (counted, reason
//!   `bus_backlog_full`); so is one toward a node whose inbox stream holds more than
//!   `cluster.inbox_backlog_entries` unread entries (`inbox_backlog_full`), so that a
//!   slow consumer neither grows Redis nor delays the QoS 1/2 records behind them;
//! - a QoS 1/2 message is never dropped: one that finds its lane full is queued all
//!   the same and the caller is told to throttle its publisher (stop reading it until
//!   the message is written). Each publisher adds at most one message past the bound,
//!   so the lane holds at most the bound plus one message per connection;
//! - a QoS 1/2 message toward a node whose inbox is over its bound is written all the
//!   same (never dropped), but its publisher is throttled and its acknowledgement
//!   held ([`Backlog::settle`]) until that inbox is seen below the bound again, or
//!   `cluster.inbox_backlog_hold_ms` at most: a slow node slows its publishers
//!   instead of growing its inbox in Redis without bound.
//!
//! The queue is a mutex and a wake-up rather than a channel: a channel can bound only
//! its length, not per destination or in bytes, and has no second lane.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use broker::cluster::ClusterError;
use broker::config::ForwardLimits;
use broker::metrics::Metrics;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::bus::Outgoing;

/// The forwarder's queue.
#[derive(Debug)]
pub struct Backlog {
    limits: ForwardLimits,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// QoS 1/2, oldest first.
    urgent: VecDeque<Outgoing>,
    /// QoS 0, oldest first.
    bulk: VecDeque<Outgoing>,
    dests: HashMap<String, Dest>,
    /// Acknowledgements of written messages waiting for room in a destination's inbox.
    held: VecDeque<Held>,
}

/// A QoS 1/2 publisher's acknowledgement held after its message was written to
/// inboxes over their bound (see [`Backlog::settle`]).
#[derive(Debug)]
struct Held {
    /// The destinations whose inbox was over its bound.
    nodes: Vec<String>,
    done: oneshot::Sender<Result<(), ClusterError>>,
    /// Sent at this instant at the latest.
    until: Instant,
}

/// What waits for one destination node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// QoS 0 records queued.
    pub qos0: usize,
    /// Their bytes.
    pub qos0_bytes: usize,
    /// QoS 1/2 records queued.
    pub qos12: usize,
    /// Their bytes.
    pub qos12_bytes: usize,
    /// The node's inbox held at least `inbox_backlog_entries` entries when last seen.
    pub inbox_full: bool,
    /// Entries the node's inbox stream held when last seen (after this node's last
    /// write to it): what it has not read and acknowledged yet, from every sender.
    pub inbox_entries: usize,
}

/// QoS 0 copies not queued, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// The destination's lane was full.
    pub bus_backlog: u64,
    /// The destination's inbox stream was over its bound.
    pub inbox_backlog: u64,
}

/// Totals over every destination (for metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// QoS 0 records queued.
    pub qos0: usize,
    /// QoS 1/2 records queued.
    pub qos12: usize,
    /// Bytes queued, both lanes.
    pub bytes: usize,
    /// Destinations whose inbox is over its bound.
    pub inbox_full: usize,
    /// Acknowledgements held until a destination's inbox has room.
    pub held: usize,
}

impl Backlog {
    /// An empty backlog with these bounds.
    pub fn new(limits: ForwardLimits) -> Backlog {
        Backlog {
            limits,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Queues a QoS 0 message's copies for the destinations that have room; the
    /// others are shed and counted in the result.
    pub fn push_qos0(&self, mut dests: Vec<(String, Bytes)>) -> Shed {
        let mut shed = Shed::default();
        {
            let mut s = self.state.lock();
            dests.retain(|(node, record)| {
                let d = dest_mut(&mut s.dests, node);
                if d.inbox_full {
                    shed.inbox_backlog += 1;
                    return false;
                }
                if d.qos0 >= self.limits.qos0_messages
                    || d.qos0_bytes + record.len() > self.limits.bytes
                {
                    shed.bus_backlog += 1;
                    return false;
                }
                d.qos0 += 1;
                d.qos0_bytes += record.len();
                true
            });
            if dests.is_empty() {
                return shed;
            }
            s.bulk.push_back(Outgoing { dests, done: None });
        }
        self.wake.notify_one();
        shed
    }

    /// Queues a QoS 1/2 message. True when a destination's lane was already at its
    /// bound, or its inbox over its bound: the caller throttles the publisher until
    /// the message is acknowledged (written, and for a full inbox, see
    /// [`Backlog::settle`]).
    pub fn push_qos12(&self, o: Outgoing) -> bool {
        let mut full = false;
        {
            let mut s = self.state.lock();
            for (node, record) in &o.dests {
                let d = dest_mut(&mut s.dests, node);
                full |= d.qos12 >= self.limits.qos12_messages
                    || d.qos12_bytes >= self.limits.bytes
                    || (d.inbox_full && !self.limits.inbox_hold.is_zero());
                d.qos12 += 1;
                d.qos12_bytes += record.len();
            }
            s.urgent.push_back(o);
        }
        self.wake.notify_one();
        full
    }

    /// Moves up to `max` messages into `out`: every QoS 1/2 message first, then QoS 0.
    /// Returns at once; see [`Backlog::ready`] to wait.
    pub fn take(&self, max: usize, out: &mut Vec<Outgoing>) {
        let mut s = self.state.lock();
        let State {
            urgent,
            bulk,
            dests,
            ..
        } = &mut *s;
        for (lane, qos0) in [(urgent, false), (bulk, true)] {
            while out.len() < max {
                let Some(o) = lane.pop_front() else { break };
                for (node, record) in &o.dests {
                    if let Some(d) = dests.get_mut(node.as_str()) {
                        if qos0 {
                            d.qos0 -= 1;
                            d.qos0_bytes -= record.len();
                        } else {
                            d.qos12 -= 1;
                            d.qos12_bytes -= record.len();
                        }
                    }
                }
                out.push(o);
            }
        }
    }

    /// Resolves once something is queued (at once if something is).
    pub async fn ready(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let s = self.state.lock();
                if !s.urgent.is_empty() || !s.bulk.is_empty() {
                    return;
                }
            }
            woken.await;
        }
    }

    /// Records how many entries `node`'s inbox stream holds (read after a write).
    pub fn inbox_len(&self, node: &str, entries: usize) {
        let full = entries >= self.limits.inbox_entries;
        let mut s = self.state.lock();
        if let Some(d) = s.dests.get_mut(node) {
            d.inbox_full = full;
            d.inbox_entries = entries;
        } else if entries > 0 {
            let d = s.dests.entry(node.to_string()).or_default();
            d.inbox_full = full;
            d.inbox_entries = entries;
        }
    }

    /// Destinations whose inbox was over its bound when last seen (to look again).
    pub fn inbox_full(&self) -> Vec<String> {
        let s = self.state.lock();
        let full = s.dests.iter().filter(|(_, d)| d.inbox_full);
        full.map(|(n, _)| n.clone()).collect()
    }

    /// Answers the publisher of a message the forwarder wrote, or failed to write:
    /// at once, unless it was written and a destination's inbox is now over its
    /// bound; that acknowledgement is held until [`Backlog::release`] finds room
    /// there or `inbox_hold` has passed since `now`.
    pub fn settle(&self, o: Outgoing, outcome: &Result<(), ClusterError>, now: Instant) {
        let Some(done) = o.done else { return };
        if outcome.is_ok() && !self.limits.inbox_hold.is_zero() {
            let mut s = self.state.lock();
            let full: Vec<String> = o
                .dests
                .into_iter()
                .map(|(node, _)| node)
                .filter(|node| s.dests.get(node).is_some_and(|d| d.inbox_full))
                .collect();
            if !full.is_empty() {
                s.held.push_back(Held {
                    nodes: full,
                    done,
                    until: now + self.limits.inbox_hold,
                });
                return;
            }
        }
        let _ = done.send(outcome.clone());
    }

    /// Sends the held acknowledgements whose inboxes are below their bound again (as
    /// last seen), or whose wait is over at `now`; `None` sends them all (the
    /// forwarder stops: every held message was written). Returns how many are still
    /// held.
    pub fn release(&self, now: Option<Instant>) -> usize {
        let mut s = self.state.lock();
        let State { held, dests, .. } = &mut *s;
        for h in std::mem::take(held) {
            let wait = now.is_some_and(|now| {
                now < h.until
                    && h.nodes
                        .iter()
                        .any(|n| dests.get(n).is_some_and(|d| d.inbox_full))
            });
            if wait {
                held.push_back(h);
            } else {
                let _ = h.done.send(Ok(()));
            }
        }
        held.len()
    }

    /// Forgets destinations with nothing queued and a healthy inbox (nodes that left).
    pub fn prune(&self) {
        self.state.lock().dests.retain(|_, d| *d != Dest::default());
    }

    /// What waits for `node` now.
    pub fn dest(&self, node: &str) -> Dest {
        self.state
            .lock()
            .dests
            .get(node)
            .copied()
            .unwrap_or_default()
    }

    /// Totals over every destination.
    pub fn totals(&self) -> Totals {
        let s = self.state.lock();
        let held = s.held.len();
        s.dests.values().fold(
            Totals {
                held,
                ..Totals::default()
            },
            |t, d| Totals {
                qos0: t.qos0 + d.qos0,
                qos12: t.qos12 + d.qos12,
                bytes: t.bytes + d.qos0_bytes + d.qos12_bytes,
                inbox_full: t.inbox_full + usize::from(d.inbox_full),
                held: t.held,
            },
        )
    }
}

/// The destination's entry, made if missing: the node's name is copied only then
/// (`entry` would take an owned key for every message).
fn dest_mut<'a>(dests: &'a mut HashMap<String, Dest>, node: &str) -> &'a mut Dest {
    if !dests.contains_key(node) {
        dests.insert(node.to_string(), Dest::default());
    }
    dests.get_mut(node).expect("inserted above")
}

/// Counts shed QoS 0 copies by reason, and warns at most once a second with the
/// count since the last line and the totals by reason (never a line per message).
pub fn count_shed(m: &Metrics, shed: Shed) {
    Metrics::add(&m.bus_backlog_dropped, shed.bus_backlog);
    Metrics::add(&m.inbox_backlog_dropped, shed.inbox_backlog);
    if let Some(n) = m.shed_log.due(shed.bus_backlog + shed.inbox_backlog) {
        tracing::warn!(
            dropped = n,
            bus_backlog_full = Metrics::get(&m.bus_backlog_dropped),
            inbox_backlog_full = Metrics::get(&m.inbox_backlog_dropped),
            session_queue_full = Metrics::get(&m.queue_overflow_dropped),
            "QoS 0 messages to other nodes shed since the last line (cluster.forward_qos0_backlog, cluster.forward_backlog_bytes, cluster.inbox_backlog_entries); totals by reason follow"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ForwardLimits {
        ForwardLimits {
            qos0_messages: 2,
            qos12_messages: 2,
            bytes: 1000,
            inbox_entries: 4,
            inbox_hold: Duration::from_secs(5),
        }
    }

    fn to(nodes: &[&str], len: usize) -> Vec<(String, Bytes)> {
        let record = Bytes::from(vec![0u8; len]);
        nodes
            .iter()
            .map(|n| (n.to_string(), record.clone()))
            .collect()
    }

    fn qos12(nodes: &[&str], len: usize) -> Outgoing {
        Outgoing {
            dests: to(nodes, len),
            done: None,
        }
    }

    #[test]
    fn qos0_beyond_the_bound_is_shed_per_destination() {
        let b = Backlog::new(limits());
        assert_eq!(b.push_qos0(to(&["a", "b"], 10)), Shed::default());
        assert_eq!(b.push_qos0(to(&["a"], 10)), Shed::default());
        // "a" is full, "b" still has room.
        let shed = b.push_qos0(to(&["a", "b"], 10));
        assert_eq!(shed.bus_backlog, 1);
        assert_eq!(b.dest("a").qos0, 2);
        assert_eq!(b.dest("b").qos0, 2);
        // By bytes as well.
        let b = Backlog::new(limits());
        assert_eq!(b.push_qos0(to(&["a"], 600)).bus_backlog, 0);
        assert_eq!(b.push_qos0(to(&["a"], 600)).bus_backlog, 1);
    }

    /// The peer's inbox length seen after each write is kept as its lag, and marks
    /// it full at the bound (`inbox_entries` = 4 here); back to 0, nothing is kept.
    #[test]
    fn the_inbox_length_seen_is_the_peers_lag() {
        let b = Backlog::new(limits());
        b.inbox_len("a", 3);
        assert_eq!(
            (b.dest("a").inbox_entries, b.dest("a").inbox_full),
            (3, false)
        );
        b.inbox_len("a", 9);
        assert_eq!(
            (b.dest("a").inbox_entries, b.dest("a").inbox_full),
            (9, true)
        );
        assert_eq!(b.inbox_full(), ["a"]);
        b.inbox_len("a", 0);
        assert_eq!(b.dest("a").inbox_entries, 0);
        b.prune();
        assert_eq!(b.dest("a"), Dest::default());
        b.inbox_len("never-written", 0);
        assert_eq!(b.dest("never-written"), Dest::default());
    }

    #[test]
    fn qos12_is_queued_and_throttles_past_the_bound() {
        let b = Backlog::new(limits());
        assert!(!b.push_qos12(qos12(&["a"], 10)));
        assert!(!b.push_qos12(qos12(&["a"], 10)));
        assert!(b.push_qos12(qos12(&["a"], 10)), "at the bound: throttle");
        assert_eq!(b.dest("a").qos12, 3, "queued all the same, never dropped");
    }

    #[test]
    fn qos12_is_taken_before_qos0() {
        let b = Backlog::new(ForwardLimits {
            qos0_messages: 100,
            ..limits()
        });
        for _ in 0..5 {
            b.push_qos0(to(&["a"], 1));
        }
        b.push_qos12(qos12(&["a"], 2));
        let mut out = Vec::new();
        b.take(3, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].dests[0].1.len(), 2, "the QoS 1 message first");
        assert_eq!(b.dest("a").qos0, 3);
        assert_eq!(b.dest("a").qos12, 0);
        out.clear();
        b.take(10, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(b.totals(), Totals::default());
    }

    #[test]
    fn a_full_inbox_sheds_qos0_but_not_qos12() {
        let b = Backlog::new(limits());
        b.inbox_len("a", 4);
        assert_eq!(b.inbox_full(), vec!["a".to_string()]);
        assert_eq!(b.push_qos0(to(&["a"], 1)).inbox_backlog, 1);
        assert!(
            b.push_qos12(qos12(&["a"], 1)),
            "queued; its publisher throttled"
        );
        assert_eq!(b.dest("a").qos12, 1);
        b.inbox_len("a", 3);
        assert_eq!(b.push_qos0(to(&["a"], 1)), Shed::default());
        let mut out = Vec::new();
        b.take(10, &mut out);
        // Its lag (3 entries) is kept until the inbox is seen empty.
        assert_eq!(b.dest("a").inbox_entries, 3);
        b.inbox_len("a", 0);
        b.prune();
        assert_eq!(b.dest("a"), Dest::default());
    }

    fn waited(done: oneshot::Sender<Result<(), ClusterError>>, nodes: &[&str]) -> Outgoing {
        Outgoing {
            dests: to(nodes, 1),
            done: Some(done),
        }
    }

    /// A written message toward an inbox over its bound: its publisher is throttled
    /// and its acknowledgement held until the inbox is seen below the bound; toward
    /// healthy inboxes, or when the write failed, answered at once.
    #[test]
    fn an_acknowledgement_waits_for_room_in_a_full_inbox() {
        let b = Backlog::new(limits());
        let now = Instant::now();
        b.inbox_len("a", 4);
        assert!(
            b.push_qos12(qos12(&["a"], 1)),
            "toward a full inbox: throttle"
        );
        let (tx, mut held) = oneshot::channel();
        b.settle(waited(tx, &["a", "b"]), &Ok(()), now);
        let (tx, mut healthy) = oneshot::channel();
        b.settle(waited(tx, &["b"]), &Ok(()), now);
        let (tx, mut failed) = oneshot::channel();
        b.settle(waited(tx, &["a"]), &Err(ClusterError::TakenOver), now);
        assert!(matches!(healthy.try_recv(), Ok(Ok(()))));
        assert!(matches!(failed.try_recv(), Ok(Err(_))), "a failure at once");
        assert!(held.try_recv().is_err(), "held");
        assert_eq!(b.totals().held, 1);
        assert_eq!(b.release(Some(now)), 1, "still over the bound");
        assert!(held.try_recv().is_err());
        b.inbox_len("a", 3);
        assert_eq!(b.release(Some(now)), 0);
        assert!(matches!(held.try_recv(), Ok(Ok(()))), "room: acknowledged");
        let mut out = Vec::new();
        b.take(10, &mut out);
        assert!(!b.push_qos12(qos12(&["a"], 1)), "room: not throttled");
    }

    /// A held acknowledgement is sent after `inbox_hold` at the latest, and all of
    /// them when the forwarder stops; with `inbox_hold` 0 nothing is held.
    #[test]
    fn an_acknowledgement_is_held_no_longer_than_the_bound() {
        let b = Backlog::new(limits());
        let now = Instant::now();
        b.inbox_len("a", 9);
        let (tx, mut first) = oneshot::channel();
        b.settle(waited(tx, &["a"]), &Ok(()), now);
        let (tx, mut second) = oneshot::channel();
        b.settle(waited(tx, &["a"]), &Ok(()), now + Duration::from_secs(1));
        assert_eq!(b.release(Some(now + Duration::from_millis(4999))), 2);
        assert_eq!(b.release(Some(now + Duration::from_secs(5))), 1);
        assert!(matches!(first.try_recv(), Ok(Ok(()))));
        assert!(second.try_recv().is_err());
        assert_eq!(b.release(None), 0, "the forwarder stops");
        assert!(matches!(second.try_recv(), Ok(Ok(()))));

        let b = Backlog::new(ForwardLimits {
            inbox_hold: Duration::ZERO,
            ..limits()
        });
        b.inbox_len("a", 9);
        assert!(!b.push_qos12(qos12(&["a"], 1)));
        let (tx, mut at_once) = oneshot::channel();
        b.settle(waited(tx, &["a"]), &Ok(()), now);
        assert!(matches!(at_once.try_recv(), Ok(Ok(()))));
    }

    #[tokio::test]
    async fn ready_wakes_the_forwarder() {
        let b = std::sync::Arc::new(Backlog::new(limits()));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.ready().await })
        };
        tokio::task::yield_now().await;
        b.push_qos0(to(&["a"], 1));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
