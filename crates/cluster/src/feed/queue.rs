//! Changes waiting for the feed writer, coalesced: at most one per route (identity,
//! filter) and one per retained topic. While Redis is slow or down, a subscriber that
//! comes and goes, or a publisher that sets the same retained topic over and over,
//! leaves one pending change, not one per event: the queue is bounded by the routes
//! and retained topics that exist.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Change;

/// The pending changes and the writer's wake-up.
#[derive(Debug, Default)]
pub struct FeedQueue {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// (route identity, filter) → (order, added).
    routes: HashMap<(String, String), (u64, bool)>,
    /// Topic → (order, node identity, value; `None` clears).
    retained: HashMap<String, (u64, String, Option<Vec<u8>>)>,
    next: u64,
}

impl FeedQueue {
    /// An empty queue.
    pub fn new() -> FeedQueue {
        FeedQueue::default()
    }

    /// Queues `change`, replacing a pending change of the same route or topic.
    pub fn push(&self, change: Change) {
        {
            let mut p = self.pending.lock();
            let order = p.next;
            p.next += 1;
            match change {
                Change::RouteAdded(node, filter) => {
                    p.routes.insert((node, filter), (order, true));
                }
                Change::RouteRemoved(node, filter) => {
                    p.routes.insert((node, filter), (order, false));
                }
                Change::Retained { node, topic, value } => {
                    p.retained.insert(topic, (order, node, value));
                }
            }
        }
        self.notify.notify_one();
    }

    /// Changes pending now (routes and retained topics).
    pub fn len(&self) -> usize {
        let p = self.pending.lock();
        p.routes.len() + p.retained.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for changes and takes them all: routes added first, then routes removed,
    /// then retained messages, each in the order they were last changed. New routes
    /// before withdrawn ones means a reader applying them one at a time never sees a
    /// filter without a route that it will have again a moment later (a node that
    /// rejoins under a new identity moves its routes that way).
    pub async fn take(&self) -> Vec<Change> {
        loop {
            let notified = self.notify.notified();
            let taken = std::mem::take(&mut *self.pending.lock());
            if !taken.routes.is_empty() || !taken.retained.is_empty() {
                return ordered(taken);
            }
            notified.await;
        }
    }
}

fn ordered(p: Pending) -> Vec<Change> {
    let mut routes: Vec<_> = p.routes.into_iter().collect();
    routes.sort_by_key(|(_, (order, added))| (!*added, *order));
    let mut retained: Vec<_> = p.retained.into_iter().collect();
    retained.sort_by_key(|(_, (order, _, _))| *order);
    let mut out = Vec::with_capacity(routes.len() + retained.len());
    out.extend(routes.into_iter().map(|((node, filter), (_, added))| {
        if added {
            Change::RouteAdded(node, filter)
        } else {
            Change::RouteRemoved(node, filter)
        }
    }));
    out.extend(
        retained
            .into_iter()
            .map(|(topic, (_, node, value))| Change::Retained { node, topic, value }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::RouteAdded(n, f) => format!("+{n} {f}"),
                Change::RouteRemoved(n, f) => format!("-{n} {f}"),
                Change::Retained { topic, value, .. } => {
                    format!("r {topic}={}", value.as_ref().map_or(0, |v| v.len()))
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn repeated_changes_leave_one_each_and_adds_come_first() {
        let q = FeedQueue::new();
        for i in 0..10_000 {
            q.push(Change::RouteAdded("n1@1".into(), "a/#".into()));
            q.push(Change::RouteRemoved("n1@1".into(), "a/#".into()));
            q.push(Change::Retained {
                node: "n1@1".into(),
                topic: "t".into(),
                value: Some(vec![0; i % 7]), // the last: 9999 % 7 = 3 bytes
            });
        }
        q.push(Change::RouteRemoved("n1@1".into(), "b".into()));
        q.push(Change::RouteAdded("n1@2".into(), "b".into()));
        assert_eq!(q.len(), 4, "one per route and topic");
        let taken = q.take().await;
        assert_eq!(
            names(&taken),
            ["+n1@2 b", "-n1@1 a/#", "-n1@1 b", "r t=3"],
            "the last state of each; new routes before withdrawn ones"
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn take_waits_for_a_change() {
        let q = std::sync::Arc::new(FeedQueue::new());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.take().await.len() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.push(Change::RouteAdded("n1@1".into(), "x".into()));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
