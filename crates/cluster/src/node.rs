//! One broker node's membership in the cluster: starts the Redis tasks and gossip,
//! and implements the broker's [`Cluster`] interface on top of them.
//!
//! - `claim` — claiming a client id (epoch in Redis, handover from its previous node);
//! - `repair` — taking over a failed node (its sessions, inbox and routes);
//! - `drain` — where each message of a failed node's inbox goes;
//! - `liveness` — this node's liveness key and the lease fence;
//! - `outage` — Redis outages: the probe, refusals, recovery;
//! - `metrics` — the cluster's metrics in the broker's registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::cluster::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, Forwarded, LocalGroups, Peers,
    SessionChange, SessionStore,
};
use broker::config::ClusterSettings;
use broker::handle::{BrokerHandle, LocalBroker};
use broker::message::Message;
use broker::router::Blocked;
use broker::session::SessionSnapshot;
use bytes::BytesMut;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::backlog::Backlog;
use crate::bus::{self, Outgoing};
use crate::conn::{query_per_key, run_per_key, Keys, Redis, RedisError, INBOX_GROUP};
use crate::feed::{self, Change};
use crate::lifetime;
use crate::routes::RouteTable;
use crate::sessions::Sessions;
use crate::tls::RedisTls;
use crate::wire;
use crate::wire::{publish_bytes, put_kick, put_message};
use membership::{self, MemberEvent, MembershipConfig, MembershipHandle, NodeMeta};

mod claim;
use crate::scripts::CLAIM_SCRIPT;
mod drain;
mod liveness;
mod metrics;
mod outage;
mod repair;
mod stats;

use drain::Taken;

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

/// How long a node that comes back from a stall waits for Redis to list its sessions'
/// owners before it tries again at the next liveness tick (connections held meanwhile).
const OWNERSHIP_CHECK: Duration = Duration::from_secs(1);

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
    changes: Arc<feed::FeedQueue>,
    /// What waits for the forwarder, bounded per destination node.
    backlog: Arc<Backlog>,
    claim_script: redis::Script,
    handovers: Arc<bus::Handovers>,
    /// Persistent sessions in Redis.
    sessions: Arc<Sessions>,
    /// `cluster.session_grace_secs` (see [`crate::lifetime`]).
    session_grace: Duration,
    /// This node, for tasks it spawns from `&self`.
    this: std::sync::OnceLock<std::sync::Weak<ClusterNode>>,
    /// The broker this node serves, held weakly: the broker owns this node.
    broker: BrokerHandle,
    /// Failed nodes whose sessions this node took over.
    pub nodes_repaired: std::sync::atomic::AtomicU64,
    /// Sessions taken over from failed nodes.
    pub sessions_adopted: std::sync::atomic::AtomicU64,
    /// Nodes gossip declared failed.
    pub failures_detected: std::sync::atomic::AtomicU64,
    /// Last failure: gossip verdict to Redis confirmation, ms.
    pub last_confirm_ms: std::sync::atomic::AtomicU64,
    /// Last takeover of a failed node's sessions, ms.
    pub last_repair_ms: std::sync::atomic::AtomicU64,
    membership: Mutex<Option<MembershipHandle>>,
    /// What gossip advertised before a drain withdrew the listeners.
    advertised: Mutex<Option<membership::NodeMeta>>,
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
    /// `mqtt` (plain) and `proxy` (PROXY protocol v2) as this node's listeners.
    pub async fn start(
        settings: &ClusterSettings,
        broker: &LocalBroker,
        mqtt: Vec<SocketAddr>,
        proxy: Vec<SocketAddr>,
    ) -> Result<Arc<ClusterNode>, StartError> {
        let me = settings.node_id.clone();
        let timeout = Duration::from_secs(settings.redis_connect_timeout_secs);
        let redis = Redis::connect(&settings.redis, &RedisTls::from(settings), timeout)
            .await?
            .with_wait_replicas(settings.redis_wait_replicas, settings.redis_wait_timeout);
        let keys = Keys::new(&settings.key_prefix);
        let mut conn = redis.conn();
        bus::ensure_group(&mut conn, &keys.inbox(&me)).await?;

        // Gossip first: its generation names this run's routes (`id@generation`), so
        // the failure of one run never touches the routes of the next.
        let mut meta = NodeMeta::broker();
        meta.mqtt = mqtt;
        meta.proxy = proxy;
        let mut gossip = MembershipConfig::new(me.clone(), settings.gossip_listen, meta);
        gossip.join = settings.join.clone();
        gossip.cluster_key = settings.cluster_key.clone();
        gossip.advertise = settings.gossip_advertise;
        gossip.probe_period = settings.probe_period;
        gossip.probe_rtt = settings.probe_rtt;
        gossip.suspect_to_down = settings.suspect_to_down;
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
        feed::remove_routes(&conn, &keys, &stale).await?;

        let routes = Arc::new(Mutex::new(RouteTable::new()));
        // Not bounded (yet): its producers are a filter's first subscription or last
        // unsubscription on this node and retained PUBLISHes, each limited in rate by
        // the per-client bounds (publish rate, subscriptions, connections), and the
        // writer takes all that is queued in one round trip. While Redis is slow or
        // down nothing caps it in size: a known gap of issue #11.
        let changes = Arc::new(feed::FeedQueue::new());
        let from = feed::resync(&mut conn, &keys, &me_route, &routes, broker).await?;
        let generation = std::sync::atomic::AtomicU64::new(membership.generation());
        let me_route = Arc::new(Mutex::new(me_route));

        let backlog = Arc::new(Backlog::new(settings.forward));
        let handovers = Arc::new(bus::Handovers::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (sessions, sessions_task) = Sessions::start(
            redis.durable_conn(),
            keys.clone(),
            me.clone(),
            (
                settings.session_store_max_queued,
                settings.session_store_max_changes,
            ),
            settings.session_grace,
        );
        broker.stall().set_limit(settings.liveness_ttl);
        let (this_tx, this_rx) = oneshot::channel::<std::sync::Weak<ClusterNode>>();
        let mut tasks = vec![
            sessions_task,
            tokio::spawn(liveness::liveness(
                redis.conn(),
                keys.alive(&me),
                membership.generation(),
                settings.liveness_ttl,
                broker.handle(),
                this_rx,
                stop_rx.clone(),
            )),
            tokio::spawn(feed::writer(redis.clone(), keys.clone(), changes.clone())),
            tokio::spawn(lifetime::refresher(
                redis.conn(),
                keys.clone(),
                &me,
                broker.handle(),
                settings,
            )),
            tokio::spawn(bus::forwarder(
                redis.clone(),
                keys.clone(),
                backlog.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(bus::consumer(
                redis.clone(),
                keys.clone(),
                me.clone(),
                broker.handle(),
                handovers.clone(),
                sessions.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(feed::reader(
                redis.clone(),
                keys.clone(),
                me_route.clone(),
                routes.clone(),
                broker.handle(),
                from,
                stop_rx.clone(),
            )),
        ];
        let sys_interval = broker.sys_interval_secs();
        if sys_interval > 0 {
            tasks.push(tokio::spawn(stats::publisher(
                redis.conn(),
                keys.clone(),
                me.clone(),
                broker.handle(),
                Duration::from_secs(sys_interval),
                stop_rx.clone(),
            )));
        }

        tracing::info!(node_id = %me, gossip = %membership.local_addr(), redis = %redis.url(), "joined the cluster");

        let node = Arc::new(ClusterNode {
            me,
            me_route,
            generation,
            keys,
            redis,
            routes,
            local_filters: Mutex::new(HashMap::new()),
            changes,
            backlog,
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            handovers,
            sessions,
            session_grace: settings.session_grace,
            this: std::sync::OnceLock::new(),
            broker: broker.handle(),
            nodes_repaired: Default::default(),
            sessions_adopted: Default::default(),
            failures_detected: Default::default(),
            last_confirm_ms: Default::default(),
            last_repair_ms: Default::default(),
            membership: Mutex::new(None),
            advertised: Mutex::new(None),
            stop: stop_tx,
            tasks: Mutex::new(tasks),
        });
        node.watch_redis(broker.handle());
        node.register_metrics(broker);
        let watcher = tokio::spawn(watch_members(
            node.clone(),
            membership.events(),
            broker.handle(),
            stop_rx,
        ));
        node.tasks.lock().push(watcher);
        *node.membership.lock() = Some(membership);
        // Sessions an earlier run of this node id held (it was killed and restarted
        // before anyone took them over) come back here.
        let _ = node.this.set(Arc::downgrade(&node));
        let _ = this_tx.send(Arc::downgrade(&node));
        let (adopted, _, _) = node.adopt_sessions(&node.me).await;
        if adopted > 0 {
            tracing::info!(
                sessions = adopted,
                "resumed the sessions an earlier run of this node held"
            );
        }
        Ok(node)
    }

    /// Stops advertising MQTT, PROXY, TLS and WebSocket listeners, so load
    /// balancers send no new clients here (a live member without listeners is
    /// draining).
    pub fn set_draining(&self) {
        if let Some(m) = self.membership.lock().as_ref() {
            let mut meta = m.meta();
            let mut advertised = self.advertised.lock();
            if advertised.is_none() {
                *advertised = Some(meta.clone());
            }
            meta.mqtt.clear();
            meta.proxy.clear();
            meta.listeners.clear();
            m.set_meta(meta);
        }
    }

    /// Advertises again the listeners [`ClusterNode::set_draining`] withdrew (an
    /// operator ended a drain).
    pub fn set_serving(&self) {
        let Some(before) = self.advertised.lock().take() else {
            return;
        };
        if let Some(m) = self.membership.lock().as_ref() {
            let mut meta = m.meta();
            meta.mqtt = before.mqtt;
            meta.proxy = before.proxy;
            meta.listeners = before.listeners;
            m.set_meta(meta);
        }
    }

    /// Advertises this node's TLS and WebSocket listeners through gossip
    /// (`NodeMeta::listeners`), for balancers passing those transports through. Plain
    /// MQTT listeners are advertised at start (`NodeMeta::mqtt`, `proxy`).
    pub fn set_listeners(&self, listeners: &[broker::listener::ListenerSpec]) {
        use broker::listener::Transport;
        use membership::{AdvertisedListener, ListenerKind};
        let advertised = listeners
            .iter()
            .filter_map(|l| {
                let kind = match l.transport {
                    Transport::Tcp => return None,
                    Transport::Tls => ListenerKind::Tls,
                    Transport::Ws => ListenerKind::Ws,
                    Transport::Wss => ListenerKind::Wss,
                };
                Some(AdvertisedListener {
                    kind,
                    addr: l.addr,
                    proxy: l.proxied,
                })
            })
            .collect();
        if let Some(m) = self.membership.lock().as_ref() {
            let mut meta = m.meta();
            meta.listeners = advertised;
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
        for change in crate::feed::reannouncement(&old, &new, &filters) {
            self.changes.push(change);
        }
    }

    /// After this node was declared dead while alive, others may have taken its
    /// sessions over: every session whose ownership epoch moved on is dropped here
    /// (its connection closed with 0x8E), so no client has two live connections and
    /// nothing is delivered twice.
    async fn drop_lost_sessions(&self) -> bool {
        let Some(broker) = self.broker.upgrade() else {
            return false;
        };
        let local = broker.held_epochs();
        // Every session's owner and epoch, in one round trip (per slot on a Redis
        // Cluster): connections are held until this is done.
        let cmds = local
            .iter()
            .map(|(client_id, _)| {
                let mut c = redis::cmd("HMGET");
                c.arg(self.keys.session(client_id))
                    .arg("owner")
                    .arg("epoch");
                (self.keys.session(client_id), c)
            })
            .collect();
        // Bounded: a Redis that does not answer (a cut link) leaves the connections
        // held and the check is made again at the next liveness tick.
        let owners =
            match tokio::time::timeout(OWNERSHIP_CHECK, query_per_key(&self.redis.conn(), cmds))
                .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot check session ownership yet");
                    return false;
                }
                Err(_) => {
                    tracing::debug!("cannot check session ownership yet: redis did not answer");
                    return false;
                }
            };
        let mut kicks = tokio::task::JoinSet::new();
        for ((client_id, epoch), owner) in local.into_iter().zip(owners) {
            let (owner, current): (Option<String>, Option<u64>) =
                redis::from_redis_value(owner).unwrap_or_default();
            let current = current.unwrap_or(0);
            if owner.as_deref() != Some(self.me.as_str()) || current > epoch {
                tracing::info!(%client_id, epoch, current, "session taken over while this node was away; dropping it here");
                let broker = broker.clone();
                kicks.spawn(async move {
                    let _ = broker.kick(&client_id, current.max(epoch + 1)).await;
                });
            }
        }
        let lost = kicks.len();
        kicks.join_all().await;
        if lost > 0 {
            tracing::warn!(
                sessions = lost,
                "dropped sessions other nodes took over while this node was away"
            );
        }
        true
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// Where this node's route table sends a message published here on `topic`:
    /// the other nodes (by run, `<node>@<generation>`) and the shared groups each
    /// serves, then the groups this node serves itself (the admin API's
    /// `/routes`; the routes come from the change feed, so each node may answer
    /// differently while a change propagates).
    pub fn routes_for(&self, topic: &str) -> crate::routes::Placement {
        let me = self.identity();
        self.routes.lock().place(topic, &me, None)
    }

    /// The UDP address other nodes reach this node's gossip at, the one `--join`
    /// takes: the advertised address (`gossip_advertise`) if one is set, else the one
    /// gossip listens on. (A join must be addressed to the advertised address: gossip
    /// ignores an announce sent to any other.)
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership.lock().as_ref().map(|m| m.advertised_addr())
    }

    /// The other live members gossip knows (brokers and load balancers), with what
    /// they advertise; empty before gossip started.
    pub fn members(&self) -> Vec<membership::Member> {
        self.membership
            .lock()
            .as_ref()
            .map(|m| m.members().borrow().clone())
            .unwrap_or_default()
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
    broker: BrokerHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(MemberEvent::Down { node_id, generation, .. }) => {
                    // Only that run's routes: a restarted node with the same id has
                    // routes of its own under its new generation.
                    // Its routes stay until its sessions are taken over: copies keep
                    // going into its inbox, which the repair drains.
                    let identity = route_identity(&node_id, generation);
                    tracing::warn!(node = %node_id, generation, "node failed; taking over its sessions once redis confirms");
                    node.failures_detected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    node.routes.lock().mark_down(&identity);
                    tokio::spawn(liveness::repair_sessions(node.clone(), node_id));
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
                let Some(connections) = broker.upgrade().map(|b| b.connections()) else {
                    return;
                };
                let current = node.membership.lock().as_ref().map(|m| {
                    m.set_connections(connections);
                    m.current_generation()
                });
                if let Some(g) = current {
                    if g != node.generation.load(std::sync::atomic::Ordering::Acquire) {
                        node.reidentify(g);
                        let n = node.clone();
                        tokio::spawn(async move { n.drop_lost_sessions().await });
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl Peers for ClusterNode {
    fn mode(&self) -> &'static str {
        "cluster"
    }

    fn subscribed(&self, filter: &str) {
        let mut local = self.local_filters.lock();
        let n = local.entry(filter.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let me = self.identity();
            self.routes.lock().add(&me, filter);
            self.changes
                .push(Change::RouteAdded(me, filter.to_string()));
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
            self.changes
                .push(Change::RouteRemoved(me, filter.to_string()));
        }
    }

    fn forward(&self, msg: &Arc<Message>) -> Forwarded {
        let me = self.identity();
        // QoS 1/2 get their cluster-wide id now: it also picks the shared groups'
        // nodes (and members), the same for a publisher's resend.
        let key = (msg.qos != mqtt::QoS::AtMostOnce).then(|| self.sessions.message_id(msg));
        let mut placement = self.routes.lock().place(msg.topic(), &me, key);
        let local_groups = Some(LocalGroups(std::mem::take(&mut placement.local_groups)));
        if placement.remote.is_empty() {
            return Forwarded {
                local_groups,
                ..Default::default()
            };
        }
        if let Err(e) = self.redis.health().check(outage::refusal(msg)) {
            return outage::refused(msg, local_groups, e);
        }
        let publish = publish_bytes(msg);
        let id = key.unwrap_or_else(|| self.sessions.message_id(msg));
        let dests = placement
            .per_node(&self.me)
            .iter()
            .map(|(node, groups)| {
                let mut record = BytesMut::with_capacity(publish.len() + 64);
                put_message(&mut record, msg.origin.as_deref(), id, groups, &publish);
                (node.to_string(), record.freeze())
            })
            .collect();
        if msg.qos == mqtt::QoS::AtMostOnce {
            let shed = self.backlog.push_qos0(dests);
            if shed != Default::default() {
                if let Some(broker) = self.broker.upgrade() {
                    crate::backlog::count_shed(broker.metrics(), shed);
                }
            }
            return Forwarded {
                local_groups,
                durable: None,
                throttle: false,
                remote: true,
            };
        }
        let (done, durable) = oneshot::channel();
        let throttle = self.backlog.push_qos12(Outgoing {
            dests,
            done: Some(done),
        });
        Forwarded {
            local_groups,
            durable: Some(durable),
            throttle,
            remote: true,
        }
    }
}

impl SessionStore for ClusterNode {
    fn changes_room(&self) -> Option<BoxFuture<'static, ()>> {
        self.sessions.changes_room()
    }

    fn retained(&self, msg: &Arc<Message>) {
        self.changes
            .push(feed::retained_change(self.identity(), msg));
    }

    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        request: ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(async move {
            self.redis.health().check(crate::health::Refused::Connect)?;
            let (claim, existed) = self.claim_inner(client_id, request).await?;
            if request.clean_start || claim.session.is_some() {
                return Ok(claim);
            }
            // The previous owner is gone (or never answered): resume from Redis. A
            // persistent session with nothing stored (no subscription, nothing
            // pending) still exists [MQTT-3.2.2-3].
            match self.sessions.load(client_id).await {
                Ok(session) => Ok(ClusterClaim {
                    epoch: claim.epoch,
                    session: session.or_else(|| existed.then(SessionSnapshot::default)),
                    ..Default::default()
                }),
                Err(e) => Err(ClusterError::unavailable(&e)),
            }
        })
    }

    fn resumed(&self, client_id: &Arc<str>, mailbox: &Arc<broker::mailbox::Mailbox>) {
        let sessions = self.sessions.clone();
        let (client_id, mailbox) = (client_id.clone(), mailbox.clone());
        tokio::spawn(async move {
            // Late copies come from a failed node's inbox drains (up to ~4 s after its
            // takeover) and from a previous node still journaling for a moment.
            for wait in crate::timings::LATE_COPY_POLLS {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if Arc::strong_count(&mailbox) == 1 {
                    return; // the session is gone
                }
                match sessions.late_entries(&client_id).await {
                    Ok(entries) => {
                        let mut queued = 0;
                        for d in entries {
                            queued += usize::from(mailbox.push_unknown(d));
                        }
                        if queued > 0 {
                            tracing::debug!(%client_id, queued, "queued late copies found in the session's journal");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%client_id, error = %e, "cannot read the session's journal")
                    }
                }
            }
            mailbox.stop_tracking();
        });
    }

    fn message_id<'m>(&self, msg: &'m Message) -> &'m str {
        self.sessions.message_id(msg)
    }

    fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<broker::cluster::JournalOutcome> {
        self.sessions.journal(entries, None)
    }

    fn session_changed(&self, change: SessionChange) {
        self.sessions.changed(change);
    }

    fn session_changed_stored(
        &self,
        change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>> {
        self.sessions.changed_stored(change)
    }
}
