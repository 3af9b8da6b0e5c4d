//! Living through Redis outages (DESIGN invariant 6): detection, refusals, recovery.
//!
//! - **Detection.** A watcher task probes Redis every second on a connection of its
//!   own (`GET` of the incarnation marker, one round trip). A probe that fails or
//!   takes more than a second marks Redis unreachable; the Redis loops mark it too, at
//!   their first connection failure ([`RedisHealth::failed`]). Only a successful
//!   probe marks it reachable again.
//! - **While unreachable** the node keeps serving its own clients: publish/subscribe
//!   between them never touches Redis. What needs Redis fails fast with a reason
//!   code: a CONNECT (its client id cannot be claimed) gets CONNACK 0x88 Server
//!   unavailable; a QoS 1/2 message with subscribers on other nodes gets PUBACK/PUBREC
//!   0x80 (MQTT 5) or, for 3.1.1, the connection is closed so that the client resends
//!   it; QoS 0 copies for other nodes are dropped and counted. Subscriptions and
//!   retained messages set meanwhile wait, in order, in the feed writer's queue.
//! - **Recovery, Redis kept its data.** The loops reconnect at once (their back-off
//!   is cut short by the transition); the feed writer stores the queued changes; the
//!   feed reader reloads the whole route table and every retained message
//!   (`feed::resync`) since it may have missed feed entries.
//! - **Recovery, Redis lost its data** (restarted without persistence, flushed). The
//!   marker `<prefix>:{cluster}:incarnation`, a random value written once by the first
//!   node, is missing or different: this node re-creates its inbox's consumer group
//!   (reading from the start of the new stream, so nothing other nodes already sent
//!   is skipped), re-announces every route of its local subscribers through the feed
//!   writer (in order with later changes), and writes back every retained message it
//!   holds (`HSETNX`, so a newer value set elsewhere meanwhile wins). Every node does
//!   the same for its own part, so the cluster's state is whole again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::cluster::{ClusterError, Forwarded, LocalGroups};
use broker::handle::{BrokerHandle, LocalBroker};
use broker::health::{json_string, HealthProbe, HealthReport};
use broker::message::Message;
use tokio::sync::{oneshot, watch};

use super::ClusterNode;
use crate::conn::{run_per_key, Conn};
use crate::feed::Change;
use crate::health::{rfc3339, Refused};

/// How often the watcher probes Redis.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe taking longer than this counts as Redis unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Opening the probe's own connection may take this long before Redis counts as
/// unreachable: a new connection can cost a TLS handshake (two through Sentinel, and
/// the redis crate reads the system's CA store for each), which is no sign of an
/// outage. A refused connection fails at once either way.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retained messages written back per round trip after a data loss.
const RETAINED_BATCH: usize = 500;

/// What a refused forward counts as.
pub(super) fn refusal(msg: &Message) -> Refused {
    if msg.qos == mqtt::QoS::AtMostOnce {
        Refused::Qos0
    } else {
        Refused::Publish
    }
}

/// The outcome of a forward refused because Redis is unreachable: QoS 0 copies are
/// dropped; a QoS 1/2 publisher's acknowledgement carries the error (0x80, or a
/// closed 3.1.1 connection).
pub(super) fn refused(
    msg: &Message,
    local_groups: Option<LocalGroups>,
    e: ClusterError,
) -> Forwarded {
    let durable = (msg.qos != mqtt::QoS::AtMostOnce).then(|| {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(e));
        rx
    });
    Forwarded {
        local_groups,
        durable,
        throttle: false,
        remote: true,
    }
}

impl ClusterNode {
    /// Starts the Redis watcher (see the module documentation). Called once by
    /// [`ClusterNode::start`].
    pub(super) fn watch_redis(self: &Arc<Self>, broker: BrokerHandle) {
        let task = tokio::spawn(watcher(self.clone(), broker, self.stop.subscribe()));
        self.tasks.lock().push(task);
    }

    /// Advertises this node's health endpoint through gossip (`NodeMeta::admin`).
    pub fn set_admin(&self, addr: std::net::SocketAddr) {
        if let Some(m) = self.membership.lock().as_ref() {
            let mut meta = m.meta();
            meta.admin = Some(addr);
            m.set_meta(meta);
        }
    }

    /// Whether Redis is currently reachable from this node.
    pub fn redis_reachable(&self) -> bool {
        self.redis.health().is_reachable()
    }

    /// Re-announces a route for every filter local sessions subscribe to, through the
    /// feed writer: the lock on the local filters is held while queueing, so a later
    /// unsubscribe's removal is queued (and written) after. Returns the count.
    fn republish_routes(&self) -> usize {
        let local = self.local_filters.lock();
        let me = self.identity();
        for filter in local.keys() {
            self.changes
                .push(Change::RouteAdded(me.clone(), filter.clone()));
        }
        local.len()
    }

    /// Writes back every retained message this node holds, without overwriting a
    /// value another node set meanwhile (`HSETNX`). Returns the count.
    async fn republish_retained(&self, broker: &LocalBroker) -> Result<usize, redis::RedisError> {
        let conn = self.redis.conn();
        let all = broker.all_retained(Instant::now());
        for chunk in all.chunks(RETAINED_BATCH) {
            let cmds = chunk
                .iter()
                .map(|msg| {
                    let mut c = redis::cmd("HSETNX");
                    c.arg(self.keys.retained())
                        .arg(msg.topic())
                        .arg(crate::wire::retained_value(msg));
                    (self.keys.retained(), c)
                })
                .collect();
            run_per_key(&conn, cmds).await?;
        }
        Ok(all.len())
    }

    /// After Redis lost its data: puts back this node's part of the cluster state.
    async fn republish(&self, broker: &LocalBroker) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.conn();
        crate::bus::ensure_group_from(&mut conn, &self.keys.inbox(&self.me), "0").await?;
        let routes = self.republish_routes();
        let retained = self.republish_retained(broker).await?;
        // Sessions: parked ones from the registry, connected ones from their
        // connections (each hands the session store a copy), in order with later
        // changes.
        let parked = broker.parked_sessions();
        let sessions = parked.len();
        for p in parked {
            self.sessions
                .changed(broker::cluster::SessionChange::Restore(Box::new(p)));
        }
        tracing::info!(
            routes,
            retained,
            parked_sessions = sessions,
            "re-published this node's routes, retained messages, sessions and inbox group"
        );
        Ok(())
    }
}

/// One probe: the incarnation marker's value (`None` if missing), on the watcher's
/// own connection (opened if needed). Through Sentinel the probe also asks the
/// server's `ROLE`: a master demoted by a failover still answers reads, so only its
/// role tells. Then every connection is told to ask Sentinel again
/// ([`crate::conn::Redis::forget_master`]) and the probe retries once on a new one.
async fn probe(
    node: &ClusterNode,
    conn: &mut Option<Conn>,
    key: &str,
) -> Result<Option<String>, String> {
    if !node.redis.follows_sentinel() {
        return probe_once(node, conn, key).await;
    }
    for _ in 0..2 {
        let c = connection(node, conn).await?;
        let (role, value): (redis::Value, Option<String>) = redis::pipe()
            .cmd("ROLE")
            .cmd("GET")
            .arg(key)
            .query_async(c)
            .await
            .map_err(|e| e.to_string())?;
        if is_master(&role) {
            return Ok(value);
        }
        tracing::info!(
            "redis: the server Sentinel named master is now a replica; asking Sentinel again"
        );
        node.redis.forget_master();
        *conn = None;
    }
    Err("the master Sentinel names answers ROLE as a replica".into())
}

/// Whether a `ROLE` reply is a master's.
fn is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(items) => {
            matches!(
                items.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ) || matches!(
                items.first(),
                Some(redis::Value::SimpleString(s)) if s == "master"
            )
        }
        _ => false,
    }
}

/// The watcher's own connection, opened if needed.
async fn connection<'a>(
    node: &ClusterNode,
    conn: &'a mut Option<Conn>,
) -> Result<&'a mut Conn, String> {
    Ok(match conn {
        Some(c) => c,
        None => conn.insert(
            node.redis
                .dedicated(Duration::ZERO)
                .await
                .map_err(|e| e.to_string())?,
        ),
    })
}

/// [`probe`] without the role check (one server, Redis Cluster).
async fn probe_once(
    node: &ClusterNode,
    conn: &mut Option<Conn>,
    key: &str,
) -> Result<Option<String>, String> {
    let c = connection(node, conn).await?;
    redis::cmd("GET")
        .arg(key)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())
}

/// PINGs through the shared connection until it answers (a few tries).
async fn warm_shared(node: &ClusterNode) -> bool {
    let mut conn = node.redis.conn();
    for _ in 0..5 {
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, ping).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sets the marker if it is missing and returns its value (ours or the one another
/// node set first).
async fn establish(conn: &mut Conn, key: &str) -> Result<String, redis::RedisError> {
    let mine = format!(
        "{:016x}-{}",
        rand::random::<u64>(),
        rfc3339(std::time::SystemTime::now())
    );
    let _: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&mine)
        .arg("NX")
        .query_async(conn)
        .await?;
    let value: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
    Ok(value.unwrap_or(mine))
}

/// Probes Redis every second: marks it unreachable or reachable, and after an
/// outage or a flush, notices a data loss and re-publishes this node's state.
async fn watcher(node: Arc<ClusterNode>, broker: BrokerHandle, mut stop: watch::Receiver<bool>) {
    let health = node.redis.health().clone();
    let key = node.keys.incarnation();
    // The incarnation this node's state is known to be in (None until first read).
    let mut known: Option<String> = None;
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if conn.is_none() {
            let opened =
                tokio::time::timeout(PROBE_CONNECT_TIMEOUT, connection(&node, &mut conn)).await;
            let failed = match opened {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no connection within {PROBE_CONNECT_TIMEOUT:?}")),
            };
            if let Some(e) = failed {
                conn = None;
                health.cannot_connect("probe", &e);
                continue;
            }
        }
        let current = match tokio::time::timeout(PROBE_TIMEOUT, probe(&node, &mut conn, &key)).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                conn = None;
                health.cannot_connect("probe", &e);
                continue;
            }
            Err(_) => {
                conn = None;
                health.cannot_connect("probe", &format_args!("no answer within {PROBE_TIMEOUT:?}"));
                continue;
            }
        };
        // Back after an outage: the shared connection may still hold the failed
        // reconnection of the outage, which fails the first command sent through it;
        // take that failure here rather than a publisher's.
        if !health.is_reachable() && !warm_shared(&node).await {
            continue;
        }
        health.mark_reachable();
        let lost = match (&known, &current) {
            (None, _) => false,
            (Some(k), Some(c)) => k != c,
            (Some(_), None) => true,
        };
        let Some(c) = conn.as_mut() else { continue };
        let value = match current {
            Some(v) => v,
            None => match establish(c, &key).await {
                Ok(v) => v,
                Err(e) => {
                    health.failed("writing the incarnation marker", &e);
                    conn = None;
                    continue;
                }
            },
        };
        if lost {
            health.data_losses.fetch_add(1, Relaxed);
            tracing::warn!(
                marker = %key,
                "redis lost its data (incarnation marker missing or changed); re-publishing this node's state"
            );
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if let Err(e) = node.republish(&broker).await {
                // `known` stays as it was: the next probe sees the change again and
                // retries.
                health.failed("re-publishing after a data loss", &e);
                continue;
            }
        }
        known = Some(value);
    }
}

impl HealthProbe for ClusterNode {
    fn report(&self) -> HealthReport {
        let health = self.redis.health();
        let mut fields = vec![("node_id".to_string(), json_string(&self.me))];
        let healthy = match health.unreachable_since() {
            None => {
                fields.push(("redis".into(), json_string("reachable")));
                true
            }
            Some((since, lasted, reason)) => {
                let text = format!("unreachable since {}", rfc3339(since));
                fields.push(("redis".into(), json_string(&text)));
                fields.push(("redis_error".into(), json_string(&reason)));
                fields.push(("redis_down_secs".into(), lasted.as_secs().to_string()));
                false
            }
        };
        HealthReport { healthy, fields }
    }
}
