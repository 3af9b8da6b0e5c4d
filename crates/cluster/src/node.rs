//! One broker node's membership in the cluster: starts the Redis tasks and gossip,
//! and implements the broker's [`Cluster`] interface on top of them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::broker::Broker;
use broker::cluster::{BoxFuture, Cluster, ClusterClaim, ClusterError, Forwarded, LocalGroups};
use broker::config::ClusterSettings;
use broker::message::Message;
use broker::metrics::Metrics;
use bytes::BytesMut;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::bus::{self, Outgoing};
use crate::conn::{Keys, Redis, RedisError};
use crate::feed::{self, Change};
use crate::membership::{self, MemberEvent, MembershipConfig, MembershipHandle, NodeMeta};
use crate::routes::RouteTable;
use crate::wire::{publish_bytes, put_kick, put_message};

/// Why a node could not join the cluster.
#[derive(Debug, Error)]
pub enum StartError {
    /// Redis is unreachable or misbehaves.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// A Redis command failed during start-up.
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    /// Gossip could not start.
    #[error("gossip: {0}")]
    Membership(#[from] membership::MembershipError),
}

/// Claims a client id: bumps its ownership epoch and makes this node the owner,
/// returning the previous owner (or "") and the new epoch, atomically.
const CLAIM_SCRIPT: &str = r"
local prev = redis.call('HGET', KEYS[1], 'owner')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return {prev or '', epoch}
";

/// This node, as a member of the cluster.
pub struct ClusterNode {
    me: String,
    keys: Keys,
    redis: Redis,
    routes: Arc<Mutex<RouteTable>>,
    /// Local subscriptions per filter; a route exists while the count is positive.
    local_filters: Mutex<HashMap<String, usize>>,
    changes: mpsc::UnboundedSender<Change>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    claim_script: redis::Script,
    membership: Mutex<Option<MembershipHandle>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("me", &self.me).finish()
    }
}

impl ClusterNode {
    /// Joins the cluster: connects to Redis (failing if it cannot within the
    /// configured timeout), clears routes an earlier run of this node id left behind,
    /// loads cluster state, starts the bus and the feed, and joins gossip advertising
    /// `mqtt` as this node's listeners.
    pub async fn start(
        settings: &ClusterSettings,
        broker: Arc<Broker>,
        mqtt: Vec<SocketAddr>,
    ) -> Result<Arc<ClusterNode>, StartError> {
        let me = settings.node_id.clone();
        let timeout = Duration::from_secs(settings.redis_connect_timeout_secs);
        let redis = Redis::connect(&settings.redis, timeout).await?;
        let keys = Keys::new(&settings.key_prefix);
        let mut conn = redis.conn();

        // Routes of an earlier run of this node id are stale: remove them (and tell
        // the others through the feed).
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.routes())
            .query_async(&mut conn)
            .await?;
        let stale: Vec<&str> = fields
            .iter()
            .filter(|f| f.split_once('\n').is_some_and(|(n, _)| n == me))
            .map(String::as_str)
            .collect();
        bus::ensure_group(&mut conn, &keys.inbox(&me)).await?;

        let routes = Arc::new(Mutex::new(RouteTable::new()));
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        for field in &stale {
            if let Some((_, filter)) = field.split_once('\n') {
                let _ = changes_tx.send(Change::RouteRemoved(filter.to_string()));
            }
        }
        let from = feed::resync(&mut conn, &keys, &me, &routes, &broker).await?;

        let (outgoing_tx, outgoing_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(feed::writer(
                redis.clone(),
                keys.clone(),
                me.clone(),
                changes_rx,
            )),
            tokio::spawn(bus::forwarder(redis.clone(), keys.clone(), outgoing_rx)),
            tokio::spawn(bus::consumer(
                redis.clone(),
                keys.clone(),
                me.clone(),
                broker.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(feed::reader(
                redis.clone(),
                keys.clone(),
                me.clone(),
                routes.clone(),
                broker.clone(),
                from,
                stop_rx.clone(),
            )),
        ];

        let mut meta = NodeMeta::broker();
        meta.mqtt = mqtt;
        let mut gossip = MembershipConfig::new(me.clone(), settings.gossip_listen, meta);
        gossip.join = settings.join.clone();
        gossip.cluster_key = settings.cluster_key.clone();
        gossip.advertise = settings.gossip_advertise;
        let membership = membership::spawn(gossip).await?;
        tracing::info!(node_id = %me, gossip = %membership.local_addr(), redis = %settings.redis, "joined the cluster");

        let node = Arc::new(ClusterNode {
            me,
            keys,
            redis,
            routes,
            local_filters: Mutex::new(HashMap::new()),
            changes: changes_tx,
            outgoing: outgoing_tx,
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            membership: Mutex::new(None),
            stop: stop_tx,
            tasks: Mutex::new(tasks),
        });
        let watcher = tokio::spawn(watch_members(
            node.clone(),
            membership.events(),
            broker,
            stop_rx,
        ));
        node.tasks.lock().push(watcher);
        *node.membership.lock() = Some(membership);
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// The UDP address gossip listens on.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership.lock().as_ref().map(|m| m.local_addr())
    }

    /// Leaves the cluster cleanly: removes this node's routes, leaves gossip, stops
    /// the tasks.
    pub async fn shutdown(&self) {
        let filters: Vec<String> = self.local_filters.lock().drain().map(|(f, _)| f).collect();
        let mut conn = self.redis.conn();
        let mut pipe = redis::pipe();
        for f in &filters {
            pipe.cmd("HDEL")
                .arg(self.keys.routes())
                .arg(feed::route_field(&self.me, f))
                .ignore();
            let record = crate::wire::FeedRecord::RouteRemoved {
                node: self.me.clone(),
                filter: f.clone(),
            };
            pipe.cmd("XADD")
                .arg(self.keys.feed())
                .arg("*")
                .arg(&record.to_fields()[..])
                .ignore();
        }
        if !filters.is_empty() {
            if let Err(e) =
                tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(&mut conn))
                    .await
            {
                tracing::warn!(error = %e, "could not remove this node's routes at shutdown");
            }
        }
        let membership = self.membership.lock().take();
        if let Some(m) = membership {
            m.leave().await;
        }
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
        }
    }
}

/// Follows gossip: drops the routes of nodes that die or leave, reloads them from
/// Redis when such a node is up again, and keeps this node's advertised connection
/// count current.
///
/// The reload matters after a false failure detection: the node was alive all
/// along, rejoined gossip under a new generation, and still has its subscribers and
/// its routes in Redis, but it has no reason to announce those routes again.
async fn watch_members(
    node: Arc<ClusterNode>,
    mut events: tokio::sync::broadcast::Receiver<MemberEvent>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Nodes whose routes were dropped, to reload when they are up again.
    let mut dropped: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(MemberEvent::Down { node_id, .. }) => {
                    tracing::warn!(node = %node_id, "node failed; dropping its routes");
                    node.routes.lock().remove_node(&node_id);
                    dropped.insert(node_id);
                }
                Ok(MemberEvent::Left { node_id, .. }) => {
                    tracing::info!(node = %node_id, "node left");
                    node.routes.lock().remove_node(&node_id);
                    dropped.insert(node_id);
                }
                Ok(MemberEvent::Up(member)) if dropped.remove(&member.node_id) => {
                    node.reload_routes(&member.node_id).await;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            _ = tick.tick() => {
                if let Some(m) = node.membership.lock().as_ref() {
                    m.set_connections(Metrics::get(&broker.metrics.clients_connected));
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl ClusterNode {
    /// Reloads `other`'s routes from Redis (see [`watch_members`]). Changes the feed
    /// delivers meanwhile are applied on top, so the table converges either way.
    async fn reload_routes(&self, other: &str) {
        let mut conn = self.redis.conn();
        let reload = feed::reload_node(&mut conn, &self.keys, other, &self.routes);
        match tokio::time::timeout(Duration::from_secs(5), reload).await {
            Ok(Ok(n)) => {
                tracing::info!(node = %other, routes = n, "node is back; reloaded its routes")
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %other, error = %e, "cannot reload the routes of a node that is back")
            }
            Err(_) => {
                tracing::warn!(node = %other, "timed out reloading the routes of a node that is back")
            }
        }
    }
}

impl Cluster for ClusterNode {
    fn subscribed(&self, filter: &str) {
        let mut local = self.local_filters.lock();
        let n = local.entry(filter.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.routes.lock().add(&self.me, filter);
            let _ = self.changes.send(Change::RouteAdded(filter.to_string()));
        }
    }

    fn unsubscribed(&self, filter: &str) {
        let mut local = self.local_filters.lock();
        let Some(n) = local.get_mut(filter) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            local.remove(filter);
            self.routes.lock().remove(&self.me, filter);
            let _ = self.changes.send(Change::RouteRemoved(filter.to_string()));
        }
    }

    fn forward(&self, msg: &Arc<Message>) -> Forwarded {
        let placement = self.routes.lock().place(msg.topic(), &self.me);
        let local_groups = LocalGroups(placement.local_groups);
        if placement.remote.is_empty() {
            return Forwarded {
                local_groups,
                durable: None,
            };
        }
        let publish = publish_bytes(msg);
        let dests = placement
            .remote
            .into_iter()
            .map(|(node, groups)| {
                let mut record = BytesMut::with_capacity(publish.len() + 64);
                put_message(&mut record, msg.origin.as_deref(), &groups, &publish);
                (node, record.freeze())
            })
            .collect();
        let (done, durable) = if msg.qos == mqtt::QoS::AtMostOnce {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        if self.outgoing.send(Outgoing { dests, done }).is_err() {
            tracing::error!("forwarder stopped; message not forwarded");
        }
        Forwarded {
            local_groups,
            durable,
        }
    }

    fn retained(&self, msg: &Arc<Message>) {
        let _ = self.changes.send(feed::retained_change(msg));
    }

    fn claim<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let (prev, epoch): (String, u64) = self
                .claim_script
                .key(self.keys.session(client_id))
                .arg(&self.me)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| ClusterError(e.to_string()))?;
            if !prev.is_empty() && prev != self.me {
                // [MQTT-3.1.4-3] The other node disconnects its connection (0x8E).
                let mut record = BytesMut::new();
                put_kick(&mut record, client_id, epoch);
                redis::cmd("XADD")
                    .arg(self.keys.inbox(&prev))
                    .arg("*")
                    .arg("b")
                    .arg(record.as_ref())
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| ClusterError(e.to_string()))?;
            }
            Ok(ClusterClaim { epoch })
        })
    }
}
