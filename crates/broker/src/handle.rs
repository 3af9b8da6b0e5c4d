//! The broker as the parts that drive it from outside see it: the cluster (messages
//! from other nodes, takeovers, retained messages, key lifetimes, liveness) and the
//! disk store's start-up restore. [`LocalBroker`] is everything they may do to it,
//! and nothing else; [`BrokerHandle`] is how a long-lived task holds it.
//!
//! The broker owns its peers (the cluster, through `Broker::set_peers`); the
//! cluster holds the broker back only weakly, so neither keeps the other alive:
//! once the broker is dropped, the cluster's tasks find [`BrokerHandle::upgrade`]
//! empty and stop.

use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::broker::{Broker, StallGate};
use crate::cluster::{LocalGroups, RestoredSession};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::{Blocked, Routed, Target};
use crate::session::{PendingWill, SessionSnapshot};
use crate::sys::Counters;

/// A broker held by a task that must not keep it alive (see the module comment).
#[derive(Debug, Clone)]
pub struct BrokerHandle(Weak<Broker>);

impl BrokerHandle {
    /// The broker, while it is alive.
    pub fn upgrade(&self) -> Option<LocalBroker> {
        self.0.upgrade().map(LocalBroker)
    }
}

/// What the cluster and the disk store's restore may do to a live broker.
#[derive(Debug, Clone)]
pub struct LocalBroker(Arc<Broker>);

impl LocalBroker {
    /// The broker's operations for `broker`.
    pub fn of(broker: &Arc<Broker>) -> LocalBroker {
        LocalBroker(broker.clone())
    }

    /// A handle that does not keep the broker alive, for a long-lived task.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle(Arc::downgrade(&self.0))
    }

    /// Delivers a message another node forwarded (see `Broker::deliver_remote`).
    pub fn deliver_remote(
        &self,
        msg: &Arc<Message>,
        groups: &LocalGroups,
        scratch: &mut Vec<Target>,
        blocked: &mut Vec<Blocked>,
        journal: &mut Vec<Blocked>,
    ) -> Routed {
        self.0
            .deliver_remote(msg, groups, scratch, blocked, journal)
    }

    /// Places deliveries that found their queue full (see `Broker::place_blocked`).
    pub async fn place_blocked(&self, blocked: &mut Vec<Blocked>) {
        self.0.place_blocked(blocked).await
    }

    /// Gives a session up to another node that owns it now at `epoch` (see
    /// [`Broker::kick`]).
    pub async fn kick(&self, client_id: &str, epoch: u64) -> Option<SessionSnapshot> {
        self.0.kick(client_id, epoch).await
    }

    /// Takes a session in without a connection (see `Broker::adopt`).
    pub async fn adopt(
        &self,
        client_id: Arc<str>,
        epoch: u64,
        snapshot: SessionSnapshot,
        will: Option<PendingWill>,
        username: Option<&str>,
    ) -> bool {
        self.0
            .adopt(client_id, epoch, snapshot, will, username)
            .await
    }

    /// Ends a stored session that expired while the process was stopped (the disk
    /// store's restore): the store forgets it, and its will, if one was still
    /// waiting, goes out now, late, rather than never.
    pub fn end_expired(&self, client_id: Arc<str>, will: Option<PendingWill>) {
        self.0
            .session_changed(crate::cluster::SessionChange::Ended { client_id });
        if let Some(w) = will {
            self.0.publish_will(w);
        }
    }

    /// Stores or replaces a retained message learnt from elsewhere, without routing
    /// it.
    pub fn set_retained(&self, msg: &Arc<Message>) {
        self.0.set_retained(msg);
    }

    /// Removes the retained message on `topic` (another node cleared it).
    pub fn clear_retained(&self, topic: &str) {
        self.0.retained.remove(topic);
    }

    /// Every retained message not expired at `now` (written back to a Redis that
    /// lost its data).
    pub fn all_retained(&self, now: Instant) -> Vec<Arc<Message>> {
        self.0.retained.all(now)
    }

    /// The ownership epoch of every session this node holds (the cluster refreshes
    /// their keys' lifetimes and checks its claims with them).
    pub fn held_epochs(&self) -> Vec<(Arc<str>, u64)> {
        self.0.registry.epochs()
    }

    /// The persistent sessions held here without a connection, as a Redis that lost
    /// its data must learn them again.
    pub fn parked_sessions(&self) -> Vec<RestoredSession> {
        self.0.registry.republish()
    }

    /// The gate that holds connections after this process was frozen (driven by the
    /// cluster's liveness loop).
    pub fn stall(&self) -> &StallGate {
        &self.0.stall
    }

    /// The metrics registry, where the cluster registers its own metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Connections open on this node now.
    pub fn connections(&self) -> u64 {
        Metrics::get(&self.0.metrics.clients_connected)
    }

    /// This node's `$SYS` counters (the cluster adds them up across nodes).
    pub fn counters(&self) -> Counters {
        Counters::of(&self.0)
    }

    /// Publishes `(name, value)` pairs as retained `$SYS` messages under `prefix` to
    /// this node's subscribers (see [`crate::sys::publish`]).
    pub fn publish_sys(&self, prefix: &str, values: Vec<(String, String)>) {
        crate::sys::publish(&self.0, prefix, values);
    }

    /// How often `$SYS` topics are published, in seconds (0: never).
    pub fn sys_interval_secs(&self) -> u64 {
        self.0.config.sys_interval_secs
    }
}
