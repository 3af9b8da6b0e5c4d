//! One broker node's membership in the cluster: starts the Redis tasks and gossip,
//! and implements the broker's [`Cluster`] interface on top of them.

use std::collections::HashMap;
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
use crate::conn::{run_per_key, Keys, Redis, RedisError};
use crate::feed::{self, Change};
use crate::membership::{self, MemberEvent, MembershipConfig, MembershipHandle, NodeMeta};
use crate::routes::RouteTable;
use crate::wire::{publish_bytes, put_kick, put_message};

mod outage;

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

/// QoS 0 messages waiting for the forwarder beyond which new ones are dropped (and
/// counted): under a flood the bus must not grow without bound. QoS 1/2 need no such
/// cap: each publisher's in-flight window bounds them, since their acknowledgement
/// waits for the forwarder.
const QOS0_BACKLOG: usize = 100_000;

/// How long a claim waits for the previous node to hand its session over (it closes
/// the old connection first, which may take a moment).
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// This node, as a member of the cluster.
pub struct ClusterNode {
    me: String,
    /// This run's name in the route table: `id@generation`. It changes if the cluster
    /// declares this node down while it is alive (a pause) and it rejoins.
    me_route: Arc<Mutex<String>>,
    /// The gossip generation `me_route` was made from.
    generation: std::sync::atomic::AtomicU64,
    keys: Keys,
    redis: Redis,
    routes: Arc<Mutex<RouteTable>>,
    /// Local subscriptions per filter; a route exists while the count is positive.
    local_filters: Mutex<HashMap<String, usize>>,
    changes: mpsc::UnboundedSender<Change>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    claim_script: redis::Script,
    handovers: Arc<bus::Handovers>,
    /// QoS 0 messages queued for the forwarder.
    qos0_backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// QoS 0 messages dropped because the backlog was full.
    pub qos0_dropped: std::sync::atomic::AtomicU64,
    drop_log: broker::metrics::LogLimiter,
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
        bus::ensure_group(&mut conn, &keys.inbox(&me)).await?;

        // Gossip first: its generation names this run's routes (`id@generation`), so
        // the failure of one run never touches the routes of the next.
        let mut meta = NodeMeta::broker();
        meta.mqtt = mqtt;
        let mut gossip = MembershipConfig::new(me.clone(), settings.gossip_listen, meta);
        gossip.join = settings.join.clone();
        gossip.cluster_key = settings.cluster_key.clone();
        gossip.advertise = settings.gossip_advertise;
        let membership = membership::spawn(gossip).await?;
        let me_route = route_identity(&me, membership.generation());

        // Routes of earlier runs of this node id are stale: remove them (and tell the
        // others through the feed).
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.routes())
            .query_async(&mut conn)
            .await?;
        let stale: Vec<(&str, &str)> = fields
            .iter()
            .filter_map(|f| f.split_once('\n'))
            .filter(|(identity, _)| node_of(identity) == me)
            .collect();
        remove_routes(&conn, &keys, &stale).await?;

        let routes = Arc::new(Mutex::new(RouteTable::new()));
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let from = feed::resync(&mut conn, &keys, &me_route, &routes, &broker).await?;
        let generation = std::sync::atomic::AtomicU64::new(membership.generation());
        let me_route = Arc::new(Mutex::new(me_route));

        let (outgoing_tx, outgoing_rx) = mpsc::unbounded_channel();
        let handovers = Arc::new(bus::Handovers::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(feed::writer(redis.clone(), keys.clone(), changes_rx)),
            tokio::spawn(bus::forwarder(redis.clone(), keys.clone(), outgoing_rx)),
            tokio::spawn(bus::consumer(
                redis.clone(),
                keys.clone(),
                me.clone(),
                broker.clone(),
                handovers.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(feed::reader(
                redis.clone(),
                keys.clone(),
                me_route.clone(),
                routes.clone(),
                broker.clone(),
                from,
                stop_rx.clone(),
            )),
        ];

        tracing::info!(node_id = %me, gossip = %membership.local_addr(), redis = %settings.redis, "joined the cluster");

        let node = Arc::new(ClusterNode {
            me,
            me_route,
            generation,
            keys,
            redis,
            routes,
            local_filters: Mutex::new(HashMap::new()),
            changes: changes_tx,
            outgoing: outgoing_tx,
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            handovers,
            qos0_backlog: Arc::default(),
            qos0_dropped: Default::default(),
            drop_log: Default::default(),
            membership: Mutex::new(None),
            stop: stop_tx,
            tasks: Mutex::new(tasks),
        });
        node.watch_redis(broker.clone());
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

    /// Stops advertising MQTT listeners, so load balancers send no new clients here
    /// (a live member without listeners is draining).
    pub fn set_draining(&self) {
        if let Some(m) = self.membership.lock().as_ref() {
            let mut meta = m.meta();
            meta.mqtt.clear();
            m.set_meta(meta);
        }
    }

    /// This run's current route identity.
    fn identity(&self) -> String {
        self.me_route.lock().clone()
    }

    /// After the cluster declared this node down while it was alive (it rejoined with
    /// a new gossip generation), the survivors dropped its routes: announce them again
    /// under the new identity.
    fn reidentify(&self, generation: u64) {
        let new = route_identity(&self.me, generation);
        let old = std::mem::replace(&mut *self.me_route.lock(), new.clone());
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
        let filters: Vec<String> = self.local_filters.lock().keys().cloned().collect();
        tracing::warn!(old = %old, new = %new, routes = filters.len(), "this node was declared down by the cluster; announcing its routes again");
        {
            let mut table = self.routes.lock();
            table.remove_node(&old);
            for f in &filters {
                table.add(&new, f);
            }
        }
        for f in filters {
            let _ = self
                .changes
                .send(Change::RouteRemoved(old.clone(), f.clone()));
            let _ = self.changes.send(Change::RouteAdded(new.clone(), f));
        }
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
        let conn = self.redis.conn();
        let removed = async {
            let hdel = filters.iter().map(|f| {
                let mut c = redis::cmd("HDEL");
                c.arg(self.keys.routes())
                    .arg(feed::route_field(&self.identity(), f));
                (self.keys.routes(), c)
            });
            run_per_key(&conn, hdel.collect()).await?;
            let announce = filters.iter().map(|f| {
                let record = crate::wire::FeedRecord::RouteRemoved {
                    node: self.identity(),
                    filter: f.clone(),
                };
                (self.keys.feed(), feed::feed_entry(&self.keys, &record))
            });
            run_per_key(&conn, announce.collect()).await
        };
        match tokio::time::timeout(Duration::from_secs(2), removed).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not remove this node's routes at shutdown")
            }
            Err(_) => tracing::warn!("timed out removing this node's routes at shutdown"),
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

/// Removes a dead run's routes from Redis (and announces it), so a node started later
/// does not load them. One survivor does it, chosen by a Redis lock; the others find
/// the lock taken.
async fn repair_routes(node: Arc<ClusterNode>, dead: String) {
    let mut conn = node.redis.conn();
    let lock = format!("{}:{{repair:{dead}}}", node.keys.prefix());
    let won: Option<String> = redis::cmd("SET")
        .arg(&lock)
        .arg(node.identity())
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap_or(None);
    if won.is_none() {
        return;
    }
    let fields: Vec<String> = match redis::cmd("HKEYS")
        .arg(node.keys.routes())
        .query_async(&mut conn)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(node = %dead, error = %e, "route repair: cannot read routes");
            return;
        }
    };
    let routes: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|f| f.split_once('\n'))
        .filter(|(identity, _)| *identity == dead)
        .collect();
    match remove_routes(&conn, &node.keys, &routes).await {
        Ok(()) => {
            tracing::info!(node = %dead, routes = routes.len(), "removed a failed node's routes from redis")
        }
        Err(e) => tracing::warn!(node = %dead, error = %e, "route repair failed"),
    }
}

/// Deletes `(identity, filter)` routes from Redis, then announces each removal.
async fn remove_routes(
    conn: &crate::conn::Conn,
    keys: &Keys,
    routes: &[(&str, &str)],
) -> Result<(), redis::RedisError> {
    let hdel = routes.iter().map(|(identity, filter)| {
        let mut c = redis::cmd("HDEL");
        c.arg(keys.routes())
            .arg(feed::route_field(identity, filter));
        (keys.routes(), c)
    });
    run_per_key(conn, hdel.collect()).await?;
    let announce = routes.iter().map(|(identity, filter)| {
        let record = crate::wire::FeedRecord::RouteRemoved {
            node: identity.to_string(),
            filter: filter.to_string(),
        };
        (keys.feed(), feed::feed_entry(keys, &record))
    });
    run_per_key(conn, announce.collect()).await
}

/// A run's name in the route table.
pub fn route_identity(node_id: &str, generation: u64) -> String {
    format!("{node_id}@{generation}")
}

/// The node id of a route identity (the inbox its messages go to).
pub fn node_of(identity: &str) -> &str {
    identity.rsplit_once('@').map_or(identity, |(n, _)| n)
}

/// Follows gossip: drops the routes of nodes that die or leave, and keeps this node's
/// advertised connection count current.
async fn watch_members(
    node: Arc<ClusterNode>,
    mut events: tokio::sync::broadcast::Receiver<MemberEvent>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(MemberEvent::Down { node_id, generation, .. }) => {
                    // Only that run's routes: a restarted node with the same id has
                    // routes of its own under its new generation.
                    let identity = route_identity(&node_id, generation);
                    tracing::warn!(node = %node_id, generation, "node failed; dropping its routes");
                    node.routes.lock().remove_node(&identity);
                    tokio::spawn(repair_routes(node.clone(), identity));
                }
                Ok(MemberEvent::Left { node_id, generation }) => {
                    tracing::info!(node = %node_id, "node left");
                    node.routes.lock().remove_node(&route_identity(&node_id, generation));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            _ = tick.tick() => {
                let current = node.membership.lock().as_ref().map(|m| {
                    m.set_connections(Metrics::get(&broker.metrics.clients_connected));
                    m.current_generation()
                });
                if let Some(g) = current {
                    if g != node.generation.load(std::sync::atomic::Ordering::Acquire) {
                        node.reidentify(g);
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl Cluster for ClusterNode {
    fn subscribed(&self, filter: &str) {
        let mut local = self.local_filters.lock();
        let n = local.entry(filter.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let me = self.identity();
            self.routes.lock().add(&me, filter);
            let _ = self
                .changes
                .send(Change::RouteAdded(me, filter.to_string()));
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
            let me = self.identity();
            self.routes.lock().remove(&me, filter);
            let _ = self
                .changes
                .send(Change::RouteRemoved(me, filter.to_string()));
        }
    }

    fn forward(&self, msg: &Arc<Message>) -> Forwarded {
        let me = self.identity();
        let placement = self.routes.lock().place(msg.topic(), &me);
        let local_groups = LocalGroups(placement.local_groups);
        if placement.remote.is_empty() {
            return Forwarded {
                local_groups,
                durable: None,
            };
        }
        if let Err(e) = self.redis.health().check(outage::refusal(msg)) {
            return outage::refused(msg, local_groups, e);
        }
        let publish = publish_bytes(msg);
        // Two runs of one node id (a restart not yet noticed) share one inbox: one
        // record for both.
        let mut per_node: HashMap<&str, Vec<(String, String)>> = HashMap::new();
        for (identity, groups) in &placement.remote {
            per_node
                .entry(node_of(identity))
                .or_default()
                .extend(groups.iter().cloned());
        }
        let dests = per_node
            .into_iter()
            .filter(|(node, _)| *node != self.me)
            .map(|(node, groups)| {
                let mut record = BytesMut::with_capacity(publish.len() + 64);
                put_message(&mut record, msg.origin.as_deref(), &groups, &publish);
                (node.to_string(), record.freeze())
            })
            .collect();
        let (done, durable, backlog) = if msg.qos == mqtt::QoS::AtMostOnce {
            use std::sync::atomic::Ordering::Relaxed;
            if self.qos0_backlog.fetch_add(1, Relaxed) >= QOS0_BACKLOG {
                self.qos0_backlog.fetch_sub(1, Relaxed);
                self.qos0_dropped.fetch_add(1, Relaxed);
                if let Some(n) = self.drop_log.due(1) {
                    tracing::warn!(dropped = n, "bus backlog full; QoS 0 messages to other nodes dropped (count since the last line)");
                }
                return Forwarded {
                    local_groups,
                    durable: None,
                };
            }
            (None, None, Some(self.qos0_backlog.clone()))
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx), None)
        };
        if self
            .outgoing
            .send(Outgoing {
                dests,
                done,
                backlog,
            })
            .is_err()
        {
            tracing::error!("forwarder stopped; message not forwarded");
        }
        Forwarded {
            local_groups,
            durable,
        }
    }

    fn retained(&self, msg: &Arc<Message>) {
        let _ = self
            .changes
            .send(feed::retained_change(self.identity(), msg));
    }

    fn claim<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(async move {
            self.redis.health().check(crate::health::Refused::Connect)?;
            let mut conn = self.redis.conn();
            let (prev, epoch): (String, u64) = self
                .claim_script
                .key(self.keys.session(client_id))
                .arg(&self.me)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| ClusterError(e.to_string()))?;
            if prev.is_empty() || prev == self.me {
                return Ok(ClusterClaim {
                    epoch,
                    session: None,
                });
            }
            // [MQTT-3.1.4-3] The other node disconnects its connection (0x8E) and
            // hands the session over through our inbox.
            let handed = self.handovers.expect(client_id, epoch);
            let mut record = BytesMut::new();
            put_kick(&mut record, client_id, epoch, &self.me);
            let kicked = redis::cmd("XADD")
                .arg(self.keys.inbox(&prev))
                .arg("*")
                .arg("b")
                .arg(record.as_ref())
                .query_async::<()>(&mut conn)
                .await;
            if let Err(e) = kicked {
                self.handovers.cancel(client_id, epoch);
                return Err(ClusterError(e.to_string()));
            }
            let session = match tokio::time::timeout(HANDOVER_WAIT, handed).await {
                Ok(Ok(session)) => session,
                _ => {
                    self.handovers.cancel(client_id, epoch);
                    tracing::warn!(%client_id, previous = %prev, "previous node did not hand the session over in time; starting without it");
                    None
                }
            };
            Ok(ClusterClaim { epoch, session })
        })
    }
}
