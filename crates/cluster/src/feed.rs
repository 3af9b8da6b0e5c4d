//! Cluster-wide state in Redis and the change feed that keeps every node's copy
//! current.
//!
//! - [`writer`]: applies this node's changes (routes added or removed, retained
//!   messages set or cleared) to the Redis hashes and appends them to the feed stream,
//!   in order, pipelining whatever accumulated.
//! - [`resync`]: loads the whole route table and every retained message (at start, and
//!   whenever the feed reader reconnects), returning the feed position to read from.
//! - [`reader`]: follows the feed and applies other nodes' changes.

use std::sync::Arc;
use std::time::Duration;

use broker::handle::{BrokerHandle, LocalBroker};
use parking_lot::Mutex;
use redis::streams::StreamReadReply;
use tokio::sync::watch;

use crate::conn::{run_per_key, Backoff, Conn, Keys, Redis};
use crate::routes::RouteTable;
use crate::wire::{read_retained, retained_value, FeedRecord};

mod queue;
pub use queue::FeedQueue;

/// A change made on this node.
#[derive(Debug)]
pub enum Change {
    /// First local subscriber to a filter (route identity `node@generation`, filter).
    RouteAdded(String, String),
    /// Last local subscriber of a filter left (route identity, filter).
    RouteRemoved(String, String),
    /// A retained message was set (value) or cleared (`None`).
    Retained {
        /// This node's route identity, so its own feed entry is recognised.
        node: String,
        /// The topic.
        topic: String,
        /// The stored value ([`retained_value`]), `None` to clear.
        value: Option<Vec<u8>>,
    },
}

/// The changes that move `filters` from route identity `old` to `new` (this node
/// rejoined under a new gossip generation): every new route before any old one goes,
/// so a reader applying them one at a time always routes these filters here. (The
/// other order left a moment with no route: a message published then on another
/// node skipped this one, and a parked persistent session here missed it.)
pub fn reannouncement(old: &str, new: &str, filters: &[String]) -> Vec<Change> {
    let added = filters
        .iter()
        .map(|f| Change::RouteAdded(new.to_string(), f.clone()));
    let removed = filters
        .iter()
        .map(|f| Change::RouteRemoved(old.to_string(), f.clone()));
    added.chain(removed).collect()
}

/// Feed entries kept (approximately); a node that falls further behind resyncs.
const FEED_MAXLEN: usize = 100_000;

/// Writes this node's changes to Redis, in order.
pub async fn writer(redis: Redis, keys: Keys, queue: Arc<FeedQueue>) {
    let conn = redis.conn();
    loop {
        let batch = queue.take().await;
        // The state first, then the feed entries that announce it, so a reader never
        // sees an announcement before the value.
        let mut state = Vec::new();
        let mut feed = Vec::new();
        for change in &batch {
            let record = match change {
                Change::RouteAdded(node, filter) => {
                    let mut c = redis::cmd("HSET");
                    c.arg(keys.routes()).arg(route_field(node, filter)).arg(1);
                    state.push((keys.routes(), c));
                    FeedRecord::RouteAdded {
                        node: node.clone(),
                        filter: filter.clone(),
                    }
                }
                Change::RouteRemoved(node, filter) => {
                    let mut c = redis::cmd("HDEL");
                    c.arg(keys.routes()).arg(route_field(node, filter));
                    state.push((keys.routes(), c));
                    FeedRecord::RouteRemoved {
                        node: node.clone(),
                        filter: filter.clone(),
                    }
                }
                Change::Retained { node, topic, value } => {
                    let c = match value {
                        Some(v) => {
                            let mut c = redis::cmd("HSET");
                            c.arg(keys.retained()).arg(topic).arg(v);
                            c
                        }
                        None => {
                            let mut c = redis::cmd("HDEL");
                            c.arg(keys.retained()).arg(topic);
                            c
                        }
                    };
                    state.push((keys.retained(), c));
                    FeedRecord::Retained {
                        node: node.clone(),
                        topic: topic.clone(),
                    }
                }
            };
            feed.push((keys.feed(), feed_entry(&keys, &record)));
        }
        // Retried until Redis takes it: losing a route change would leave other
        // nodes with a wrong table until their next resync.
        let mut backoff = Backoff::default();
        loop {
            let stored = async {
                run_per_key(&conn, state.clone()).await?;
                run_per_key(&conn, feed.clone()).await
            };
            match stored.await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, changes = batch.len(), "cannot store cluster state changes; retrying");
                    redis.health().failed("storing cluster state changes", &e);
                    backoff.wait_or_recovered(redis.health()).await;
                }
            }
        }
    }
}

/// The XADD announcing `record` on the feed.
pub fn feed_entry(keys: &Keys, record: &FeedRecord) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(keys.feed())
        .arg("MAXLEN")
        .arg("~")
        .arg(FEED_MAXLEN)
        .arg("*")
        .arg(&record.to_fields()[..]);
    c
}

/// The routes-hash field of one route.
pub fn route_field(node: &str, filter: &str) -> String {
    format!("{node}\n{filter}")
}

/// Loads every route and retained message into memory; returns the feed id to follow
/// from. The feed position is taken first, so no change between it and the load is
/// missed (one may be applied twice, which is harmless).
pub async fn resync(
    conn: &mut Conn,
    keys: &Keys,
    me: &str,
    routes: &Mutex<RouteTable>,
    broker: &LocalBroker,
) -> Result<String, redis::RedisError> {
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(keys.feed())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let from = last
        .first()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| "0-0".into());
    let all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.routes())
        .query_async(conn)
        .await?;
    {
        let mut table = routes.lock();
        let mine = table.filters_of(me);
        *table = RouteTable::new();
        for f in mine {
            table.add(me, &f);
        }
        for (field, _) in all {
            if let Some((node, filter)) = field.split_once('\n') {
                if node != me {
                    table.add(node, filter);
                }
            }
        }
    }
    let retained: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(keys.retained())
        .query_async(conn)
        .await?;
    for (topic, value) in retained {
        apply_retained(broker, &topic, Some(&value));
    }
    Ok(from)
}

fn apply_retained(broker: &LocalBroker, topic: &str, value: Option<&[u8]>) {
    match value.map(read_retained) {
        Some(Ok(Some(msg))) => broker.set_retained(&msg),
        Some(Ok(None)) | None => broker.clear_retained(topic),
        Some(Err(e)) => tracing::error!(topic, error = %e, "skipping undecodable retained message"),
    }
}

/// Follows the change feed, applying other nodes' changes, until `stop`.
pub async fn reader(
    redis: Redis,
    keys: Keys,
    me: Arc<Mutex<String>>,
    routes: Arc<Mutex<RouteTable>>,
    handle: BrokerHandle,
    mut from: String,
    mut stop: watch::Receiver<bool>,
) {
    const BLOCK: Duration = Duration::from_millis(1000);
    let mut conn: Option<Conn> = None;
    let mut shared = redis.conn();
    let mut backoff = Backoff::default();
    loop {
        if *stop.borrow() {
            return;
        }
        // Gone: this process is shutting down.
        let Some(broker) = handle.upgrade() else {
            return;
        };
        let c = match &mut conn {
            Some(c) => c,
            None => match redis.dedicated(BLOCK).await {
                Ok(c) => {
                    // After a disconnection anything may have been missed: reload.
                    let current = me.lock().clone();
                    match resync(&mut shared, &keys, &current, &routes, &broker).await {
                        Ok(id) => from = id,
                        Err(e) => redis.health().failed("feed: resync", &e),
                    }
                    conn.insert(c)
                }
                Err(e) => {
                    redis.health().cannot_connect("feed reader", &e);
                    tokio::select! {
                        _ = backoff.wait_or_recovered(redis.health()) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(512)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys.feed())
            .arg(&from);
        let read = cmd.query_async::<Option<StreamReadReply>>(c);
        let reply = tokio::select! {
            r = read => r,
            _ = stop.changed() => return,
        };
        let reply = match reply {
            Ok(r) => {
                backoff.reset();
                r
            }
            Err(e) => {
                redis.health().failed("feed reader", &e);
                conn = None;
                backoff.wait_or_recovered(redis.health()).await;
                continue;
            }
        };
        let Some(reply) = reply else { continue };
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            from = entry.id.clone();
            let field = |name: &str| -> Option<String> {
                match entry.map.get(name) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                    _ => None,
                }
            };
            let (Some(kind), Some(node), Some(value)) = (field("k"), field("n"), field("v")) else {
                continue;
            };
            if node == *me.lock() {
                continue;
            }
            match FeedRecord::from_fields(&kind, node, value) {
                Some(FeedRecord::RouteAdded { node, filter }) => routes.lock().add(&node, &filter),
                Some(FeedRecord::RouteRemoved { node, filter }) => {
                    routes.lock().remove(&node, &filter)
                }
                Some(FeedRecord::Retained { topic, .. }) => {
                    let value: Option<Vec<u8>> = match redis::cmd("HGET")
                        .arg(keys.retained())
                        .arg(&topic)
                        .query_async(&mut shared)
                        .await
                    {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::debug!(error = %e, %topic, "feed: cannot read retained message");
                            redis
                                .health()
                                .failed("feed: reading a retained message", &e);
                            continue;
                        }
                    };
                    apply_retained(&broker, &topic, value.as_deref());
                }
                None => {}
            }
        }
    }
}

/// The value to store for a retained message (empty payload clears).
pub fn retained_change(node: String, msg: &broker::message::Message) -> Change {
    Change::Retained {
        node,
        topic: msg.topic().to_string(),
        value: (!msg.publish.payload().is_empty()).then(|| retained_value(msg)),
    }
}

/// Deletes `(identity, filter)` routes from Redis, then announces each removal.
pub async fn remove_routes(
    conn: &Conn,
    keys: &Keys,
    routes: &[(&str, &str)],
) -> Result<(), redis::RedisError> {
    let hdel = routes.iter().map(|(identity, filter)| {
        let mut c = redis::cmd("HDEL");
        c.arg(keys.routes()).arg(route_field(identity, filter));
        (keys.routes(), c)
    });
    run_per_key(conn, hdel.collect()).await?;
    let announce = routes.iter().map(|(identity, filter)| {
        let record = crate::wire::FeedRecord::RouteRemoved {
            node: identity.to_string(),
            filter: filter.to_string(),
        };
        (keys.feed(), feed_entry(keys, &record))
    });
    run_per_key(conn, announce.collect()).await
}
