//! The state one broker node shares between its connections, and the operations that
//! span them: publishing, ending sessions, wills.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::cluster::{
    Cluster, ClusterError, Forwarded, LocalGroups, Peers, SessionChange, SingleNode,
};
use crate::config::Config;
use crate::durable::Durable;
use crate::mailbox::{Delivery, Mailbox, MailboxLimits, Pushed};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::{Kicked, Registry, Released};
use crate::retain::RetainStore;
use crate::router::{Blocked, ReadCheck, Routed, Router, Subscriber, Target};
use crate::session::{PendingWill, Session, SessionSnapshot};
use crate::store::{InMemory, InboundRouted, SessionStore};

/// The store of a broker that was given none (see [`Broker::store`]).
static IN_MEMORY: InMemory = InMemory::new();

/// How long a persistent session handed over to another node keeps its
/// subscriptions here, forwarding through the cluster store (see [`Broker::kick`]).
pub const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// Notices that this process was frozen (SIGSTOP, a paused VM) longer than the
/// cluster waits before taking a silent node's sessions, and holds every connection
/// until the node has checked which sessions it still owns: a stale connection must
/// not answer a single packet meanwhile (one live connection per client id).
#[derive(Debug)]
pub struct StallGate {
    start: Instant,
    beat_ms: std::sync::atomic::AtomicU64,
    /// 0 = never stalled (a single node has no one to take its sessions).
    limit_ms: std::sync::atomic::AtomicU64,
    open: tokio::sync::Notify,
}

impl Default for StallGate {
    fn default() -> Self {
        StallGate {
            start: Instant::now(),
            beat_ms: Default::default(),
            limit_ms: Default::default(),
            open: tokio::sync::Notify::new(),
        }
    }
}

impl StallGate {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Beats expected at least every `limit`.
    pub fn set_limit(&self, limit: Duration) {
        self.beat();
        self.limit_ms.store(
            limit.as_millis() as u64,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// The node is known to be current: opens the gate.
    pub fn beat(&self) {
        self.beat_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Release);
        self.open.notify_waiters();
    }

    /// Takes the last beat back to `at` (the start of the last liveness refresh that
    /// succeeded): the gate then closes at `at` + limit, when other nodes may start
    /// taking this node's sessions over, whatever beats came since.
    pub fn rewind(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.start).as_millis() as u64;
        self.beat_ms
            .fetch_min(ms, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether no beat came for longer than the limit, and for how long.
    pub fn stalled(&self) -> Option<Duration> {
        let limit = self.limit_ms.load(std::sync::atomic::Ordering::Acquire);
        if limit == 0 {
            return None; // a single node: no clock read per client loop turn
        }
        let gap = self
            .now_ms()
            .saturating_sub(self.beat_ms.load(std::sync::atomic::Ordering::Acquire));
        (gap > limit).then(|| Duration::from_millis(gap))
    }

    /// Resolves once the gate is open.
    pub async fn wait(&self) {
        loop {
            let opened = self.open.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.stalled().is_none() {
                return;
            }
            opened.await;
        }
    }
}

/// Everything the connections of one broker share. Its parts are private to this
/// crate: other crates go through the methods here and in [`crate::access`].
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force.
    pub(crate) config: Config,
    /// The subscription index.
    pub(crate) router: Router,
    /// Retained messages.
    pub(crate) retained: RetainStore,
    /// Sessions and their owners.
    pub(crate) registry: Registry,
    /// Access control.
    pub(crate) auth: Authenticator,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// The other nodes, when this node is in a cluster (set once at start);
    /// [`SingleNode`] stands in until then (see [`Broker::peers`]).
    peers: OnceLock<Arc<dyn Peers>>,
    /// Where persistent sessions outlive their connection: the cluster's store or
    /// the disk (set once at start); unset, [`InMemory`] (see [`Broker::store`]).
    store: OnceLock<Arc<dyn SessionStore>>,
    /// Holds connections after this process was frozen (cluster only).
    pub(crate) stall: StallGate,
    /// Drained by an operator (the admin API): new connections are refused with
    /// 0x9C Use another server and the connected ones were asked to move.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

/// The outcome of publishing one message on this node.
#[derive(Debug, Default)]
pub struct Published {
    /// Local deliveries.
    pub routed: Routed,
    /// Whether other nodes received copies.
    pub forwarded: bool,
    /// Resolves once the remote copies are durable (QoS 1/2 acknowledgement waits for
    /// it); `None` when there are none.
    pub durable: Option<Durable>,
    /// The bus backlog toward another node is full: the publisher should stop reading
    /// until `durable` resolves (QoS 1/2 only).
    pub throttle: bool,
}

impl Broker {
    /// A broker with empty state.
    pub fn new(config: Config, auth: Authenticator) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            config,
            router: Router::new(),
            retained: RetainStore::new(),
            registry: Registry::new(),
            auth,
            metrics: Metrics::default(),
            peers: OnceLock::new(),
            store: OnceLock::new(),
            stall: StallGate::default(),
            draining: Default::default(),
        });
        broker
            .metrics
            .register_collector(Box::new(crate::depth::QueueDepth(Arc::downgrade(&broker))));
        broker
    }

    /// Joins this broker to a cluster, which is also its session store. Only the
    /// first call has an effect.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let store: Arc<dyn SessionStore> = cluster.clone();
        if self.peers.set(cluster).is_ok() {
            let _ = self.store.set(store);
        }
    }

    /// Keeps persistent sessions in `store` (a single node's disk). Only the first
    /// call (or [`Broker::set_cluster`]) has an effect.
    pub fn set_store(&self, store: Arc<dyn SessionStore>) {
        let _ = self.store.set(store);
    }

    /// The session store: the cluster's, the disk's, or [`InMemory`] (sessions end
    /// with the process) until one is set.
    pub fn store(&self) -> &dyn SessionStore {
        match self.store.get() {
            Some(s) => &**s,
            None => &IN_MEMORY,
        }
    }

    /// The other nodes: the cluster, or [`SingleNode`] on a node of its own.
    pub fn peers(&self) -> &dyn Peers {
        match self.peers.get() {
            Some(p) => &**p,
            None => &SingleNode,
        }
    }

    /// Adds a local subscription (telling the cluster); true if it replaced one.
    pub fn subscribe(&self, filter: &str, sub: Subscriber) -> bool {
        let existed = self.router.subscribe(filter, sub);
        if !existed {
            self.peers().subscribed(filter);
        }
        existed
    }

    /// Removes a local subscription (telling the cluster); true if it existed.
    pub fn unsubscribe(&self, filter: &str, client_id: &Arc<str>) -> bool {
        let existed = self.router.unsubscribe(filter, client_id);
        if existed {
            self.peers().unsubscribed(filter);
        }
        existed
    }

    /// The bounds every session mailbox gets.
    pub fn mailbox_limits(&self) -> MailboxLimits {
        MailboxLimits {
            max_messages: self.config.limits.max_queued_messages,
            max_bytes: self.config.limits.max_queued_bytes,
            overflow: self.config.limits.queue_overflow,
        }
    }

    /// Publishes a message that arrived on this node: updates the retained store if it
    /// is retained, hands it to the cluster (if any) and queues it for every matching
    /// local subscription.
    ///
    /// QoS 1/2 deliveries to connected sessions with a full queue land in `blocked`
    /// (see [`Router::route`]); the publisher waits for room before reading on.
    ///
    /// `inbound`: the message is a persistent session's QoS 2 PUBLISH (see
    /// [`SessionStore::journal_routed`]).
    pub fn publish(
        self: &Arc<Self>,
        msg: &Arc<Message>,
        scratch: &mut Vec<Target>,
        blocked: &mut Vec<Blocked>,
        inbound: Option<InboundRouted>,
    ) -> Published {
        if msg.retain {
            self.retained.set(msg);
            self.store().retained(msg);
        }
        let Forwarded {
            local_groups: groups,
            durable,
            throttle,
            remote,
        } = self.peers().forward(msg);
        let mut journal = Vec::new();
        let routed = self.route_locally(
            msg,
            groups.as_ref(),
            scratch,
            self.waits().then_some(blocked),
            &mut journal,
        );
        if !remote && !msg.retain && routed.delivered == 0 && routed.overflowed == 0 {
            // Nobody anywhere subscribes (a retained message is kept, not dropped).
            Metrics::add(&self.metrics.no_subscribers_dropped, 1);
        }
        let forwarded = durable.is_some();
        let durable = if journal.is_empty() {
            durable.map(Durable::stored)
        } else {
            Some(Durable::journaled(
                durable,
                self.store().journal_routed(journal, inbound),
                self.clone(),
            ))
        };
        Published {
            routed,
            forwarded,
            durable,
            throttle,
        }
    }

    /// Publishes a message of this node's own (`$SYS`) to local subscribers only:
    /// retained here, never forwarded to other nodes nor written to the store.
    pub fn publish_local(&self, msg: &Arc<Message>) -> Routed {
        if msg.retain {
            self.retained.set(msg);
        }
        let mut journal = Vec::new();
        let routed = self.route_locally(msg, None, &mut Vec::new(), None, &mut journal);
        // QoS 0: nothing is journaled, but should a caller pass QoS 1 it is queued.
        for b in journal {
            b.mailbox.push(b.delivery);
        }
        routed
    }

    /// Delivers a message forwarded by another node to local subscribers only (it is
    /// never forwarded again), serving the shared groups that node assigned to us.
    /// Deliveries to persistent sessions land in `journal`: the caller stores them in
    /// the cluster before they are queued.
    pub(crate) fn deliver_remote(
        &self,
        msg: &Arc<Message>,
        groups: &LocalGroups,
        scratch: &mut Vec<Target>,
        blocked: &mut Vec<Blocked>,
        journal: &mut Vec<Blocked>,
    ) -> Routed {
        self.route_locally(
            msg,
            Some(groups),
            scratch,
            self.waits().then_some(blocked),
            journal,
        )
    }

    /// Tells the session store about a change to a persistent session.
    pub fn session_changed(&self, change: SessionChange) {
        self.store().session_changed(change);
    }

    /// Tells the session store about a change to a persistent session; the receiver
    /// resolves once it is stored.
    pub fn session_changed_stored(
        &self,
        change: SessionChange,
    ) -> tokio::sync::oneshot::Receiver<Result<(), ClusterError>> {
        self.store().session_changed_stored(change)
    }

    /// Whether publishers wait for room in full queues (`limits.queue_full_wait_ms`).
    fn waits(&self) -> bool {
        self.config.limits.queue_full_wait_ms > 0
    }

    /// Places deliveries that found their queue full: waits for room up to
    /// `limits.queue_full_wait_ms` in all, then applies the overflow policy.
    pub(crate) async fn place_blocked(&self, blocked: &mut Vec<Blocked>) {
        let wait = Duration::from_millis(self.config.limits.queue_full_wait_ms);
        let deadline = tokio::time::Instant::now() + wait;
        for b in blocked.drain(..) {
            let mut d = b.delivery;
            loop {
                match b.mailbox.try_push(d) {
                    Ok(()) => break,
                    Err(back) => d = back,
                }
                if tokio::time::timeout_at(deadline, b.mailbox.wait_room())
                    .await
                    .is_err()
                {
                    self.overflow(&b.mailbox, d);
                    break;
                }
            }
        }
    }

    /// Applies the overflow policy to a delivery that waited too long for room.
    pub fn overflow(&self, mailbox: &Mailbox, d: Delivery) {
        let topic = d.msg.topic().to_string();
        if !matches!(mailbox.push(d), Pushed::Queued | Pushed::Discarded) {
            self.count_drops(&topic, 1);
        }
    }

    fn route_locally(
        &self,
        msg: &Arc<Message>,
        groups: Option<&LocalGroups>,
        scratch: &mut Vec<Target>,
        blocked: Option<&mut Vec<Blocked>>,
        journal: &mut Vec<Blocked>,
    ) -> Routed {
        let read_check = |s: &Subscriber, topic: &str| {
            self.auth
                .can_read(&s.client_id, s.username.as_deref(), topic)
        };
        let check: Option<ReadCheck<'_>> = if self.auth.has_acl() {
            Some(&read_check)
        } else {
            None
        };
        let routed = self
            .router
            .route(msg, check, groups, scratch, blocked, journal);
        Metrics::add(&self.metrics.deliveries, routed.delivered as u64);
        if routed.overflowed > 0 {
            self.count_drops(msg.topic(), routed.overflowed as u64);
        }
        routed
    }

    /// Counts messages dropped by the overflow policy, and logs at most one line a
    /// second (with the count since the last line): an overloaded node must not spend
    /// itself writing one line per dropped message.
    fn count_drops(&self, topic: &str, n: u64) {
        Metrics::add(&self.metrics.queue_overflow_dropped, n);
        if let Some(since_last) = self.metrics.drop_log.due(n) {
            tracing::warn!(
                topic,
                dropped = since_last,
                "session queue full; messages dropped per limits.queue_overflow (count since the last line)"
            );
        }
    }

    /// Another node took `client_id` over with ownership `epoch`: disconnect it here
    /// (v5: 0x8E), end the session here and return it for the new owner; a
    /// connection here with an older epoch can no longer claim it.
    ///
    /// A persistent session's subscriptions stay here a few seconds more
    /// (`HANDOVER_GRACE`), journaling into the cluster store what still arrives here
    /// without queueing it: until every node knows the new owner's routes, copies
    /// keep coming here, and the new owner picks them up from the store.
    pub(crate) async fn kick(
        self: &Arc<Self>,
        client_id: &str,
        epoch: u64,
    ) -> Option<SessionSnapshot> {
        let mut session = match self.registry.kick(client_id, epoch) {
            Kicked::Nothing => return None,
            Kicked::Now(session) => *session,
            Kicked::Later(rx) => match tokio::time::timeout(Duration::from_secs(5), rx).await {
                Ok(Ok(session)) => session,
                _ => return None,
            },
        };
        if session.mailbox.durability().is_stored() {
            session.mailbox.set_moved();
            let filters: Vec<String> = session.subscriptions.keys().cloned().collect();
            let (broker, client_id, mailbox) = (
                self.clone(),
                session.client_id.clone(),
                session.mailbox.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(HANDOVER_GRACE).await;
                for f in filters {
                    if broker.router.unsubscribe_if(&f, &client_id, &mailbox) {
                        broker.peers().unsubscribed(&f);
                    }
                }
            });
        } else {
            // Ending it here first removes the subscriptions (and this node's routes).
            self.end_session(&session);
        }
        Some(session.take_snapshot())
    }

    /// Installs a session that comes from another node or the cluster store: its
    /// subscriptions (routes move here), queued and in-flight messages.
    pub fn resume_session(
        &self,
        session: &mut Session,
        snapshot: SessionSnapshot,
        username: Option<&str>,
    ) {
        for (filter, sub) in &snapshot.subscriptions {
            self.subscribe(
                filter,
                Subscriber {
                    client_id: session.client_id.clone(),
                    username: username.map(Arc::from),
                    mailbox: session.mailbox.clone(),
                    options: sub.options,
                    id: sub.id,
                },
            );
        }
        session.restore(snapshot);
        if session.mailbox.durability().is_stored() {
            session
                .mailbox
                .track_journal(session.inflight_journal_keys());
            self.store().resumed(&session.client_id, &session.mailbox);
        }
    }

    /// Takes charge of a session whose node died (the cluster made this node its
    /// owner with `epoch`): it is installed as if its connection had just been lost,
    /// so its will goes out after its delay and it waits for its client to come
    /// back, here or on any node. False if a newer claim fenced it out.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        client_id: Arc<str>,
        epoch: u64,
        snapshot: SessionSnapshot,
        will: Option<PendingWill>,
        username: Option<&str>,
    ) -> bool {
        let conn_id = self.registry.next_conn_id();
        let link = crate::registry::ConnLink::new();
        link.set_exited();
        let owner = crate::registry::Owner {
            conn_id,
            link,
            epoch,
        };
        let Some(claim) = self.registry.claim(&client_id, owner).await else {
            return false;
        };
        if let Some(prev) = claim.previous {
            self.end_session(&prev);
        }
        let expiry = snapshot.expiry_secs;
        let mut session = Session::new(
            client_id.clone(),
            Mailbox::new(self.mailbox_limits()),
            expiry,
        );
        if expiry > 0 {
            session.mailbox.set_stored(&client_id, epoch);
        }
        self.resume_session(&mut session, snapshot, username);
        self.disconnected(conn_id, session, will);
        true
    }

    /// Removes every subscription of a session that ends.
    pub fn end_session(&self, session: &Session) {
        for filter in session.subscriptions.keys() {
            self.unsubscribe(filter, &session.client_id);
        }
    }

    /// Called when a connection ends: parks or ends its session, and publishes or
    /// schedules its will (`will` is `None` when it was discarded by a normal
    /// DISCONNECT [MQTT-3.1.2-10]).
    pub fn disconnected(
        self: &Arc<Self>,
        conn_id: u64,
        session: Session,
        will: Option<PendingWill>,
    ) {
        let expiry = session.expiry_secs;
        let client_id = session.client_id.clone();
        session.mailbox.set_online(false);
        // The will waits for its delay or the end of the session, whichever comes first
        // [MQTT-3.1.3-9]; a will without delay goes now.
        let delay = will.as_ref().map(|w| {
            w.will
                .properties
                .will_delay_interval
                .unwrap_or(0)
                .min(expiry)
        });
        let (will_now, will_later) = match delay {
            Some(0) => (will, None),
            _ => (None, will),
        };
        if let Some(w) = will_now {
            self.publish_will(w);
        }
        let generation = match self.registry.release(conn_id, session, will_later) {
            Released::Stale | Released::HandedOver => return,
            Released::Ended(ended) => {
                let (session, will) = *ended;
                self.end_session(&session);
                self.session_changed(SessionChange::Ended {
                    client_id: session.client_id.clone(),
                });
                if let Some(w) = will {
                    self.publish_will(w);
                }
                return;
            }
            Released::Parked { generation } => generation,
        };
        if expiry > 0 {
            self.session_changed(SessionChange::Parked {
                client_id: client_id.clone(),
                expiry_secs: expiry,
            });
        }
        if let Some(delay) = delay.filter(|d| *d > 0) {
            let broker = self.clone();
            let id = client_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                // A new connection for this client id took the will away.
                if let Some(w) = broker.registry.take_will(&id, generation) {
                    broker.publish_will(w);
                }
            });
        }
        if expiry != u32::MAX {
            let broker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                if let Some((session, will)) = broker.registry.expire(&client_id, generation) {
                    tracing::debug!(client_id = %client_id, "session expired");
                    // A will still waiting goes out when its session ends.
                    if let Some(w) = will {
                        broker.publish_will(w);
                    }
                    broker.end_session(&session);
                    broker.session_changed(SessionChange::Ended { client_id });
                }
            });
        }
    }

    /// Drains this node before it stops: asks connected clients to leave one by one
    /// over `period` (v5: DISCONNECT 0x9C Use another server), then waits, up to
    /// `period` again, until their persistent sessions were taken over by other nodes
    /// (each reconnect elsewhere claims its session and this node hands it over).
    pub async fn drain(&self, period: Duration) {
        let links = self.registry.connected();
        tracing::info!(
            clients = links.len(),
            secs = period.as_secs(),
            "draining: moving clients to other nodes"
        );
        let step = period / (links.len().max(1) as u32);
        for link in links {
            link.ask_to_leave(mqtt::ReasonCode::UseAnotherServer);
            tokio::time::sleep(step).await;
        }
        let deadline = tokio::time::Instant::now() + period;
        while self.registry.parked() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.registry.parked();
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "draining over with persistent sessions not taken over; they end with this node"
            );
        }
    }

    /// Publishes a will message, if the ACL lets its client write to the topic.
    pub fn publish_will(self: &Arc<Self>, pending: PendingWill) {
        self.session_changed(SessionChange::WillDone {
            client_id: pending.client_id.clone(),
        });
        let topic = &pending.will.topic;
        if !self
            .auth
            .can_write(&pending.client_id, pending.username.as_deref(), topic)
        {
            tracing::info!(client_id = %pending.client_id, %topic, "will not published: ACL denies write");
            return;
        }
        let publish = pending.to_publish();
        let msg = Arc::new(Message::new(
            &publish,
            Some(pending.client_id),
            Instant::now(),
        ));
        // A will has no publisher to slow down: full queues get the overflow policy.
        let mut blocked = Vec::new();
        self.publish(&msg, &mut Vec::new(), &mut blocked, None);
        for b in blocked {
            self.overflow(&b.mailbox, b.delivery);
        }
    }
}
