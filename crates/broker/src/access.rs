//! The broker as other crates see it. [`Broker`]'s parts are private to this
//! crate; the cluster (feed, outage recovery, liveness, key lifetimes), the disk
//! store's start-up restore and the admin API read and change it through these
//! methods, each saying who needs it.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Authenticator;
use crate::broker::{Broker, StallGate};
use crate::cluster::RestoredSession;
use crate::config::Config;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retain::RetainStore;

impl Broker {
    /// The configuration in force (read-only).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The broker's metrics registry: other parts register their own metrics in it
    /// and the admin listener encodes it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Access control, as configured.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Retained messages, for reading (the admin API lists them by filter).
    pub fn retained(&self) -> &RetainStore {
        &self.retained
    }

    /// Sessions and their connections, for reading and kicking (the admin API).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stores or replaces a retained message learnt from elsewhere (another node's
    /// feed, the disk at start-up, the admin API), without routing it.
    pub fn set_retained(&self, msg: &Arc<Message>) {
        self.retained.set(msg);
    }

    /// Removes the retained message on `topic` (another node cleared it).
    pub fn clear_retained(&self, topic: &str) {
        self.retained.remove(topic);
    }

    /// Every retained message not expired at `now` (written back to a Redis that
    /// lost its data).
    pub fn all_retained(&self, now: Instant) -> Vec<Arc<Message>> {
        self.retained.all(now)
    }

    /// The ownership epoch of every session this node holds (the cluster refreshes
    /// their keys' lifetimes and checks its claims with them).
    pub fn held_epochs(&self) -> Vec<(Arc<str>, u64)> {
        self.registry.epochs()
    }

    /// The persistent sessions held here without a connection, as a Redis that lost
    /// its data must learn them again.
    pub fn parked_sessions(&self) -> Vec<RestoredSession> {
        self.registry.republish()
    }

    /// Every local subscription whose filter matches `topic` (the admin API's
    /// "who gets this message").
    pub fn subscriptions_matching(&self, topic: &str) -> Vec<crate::router::Matching> {
        self.router.matching(topic)
    }

    /// The gate that holds connections after this process was frozen (driven by the
    /// cluster's liveness loop).
    pub fn stall(&self) -> &StallGate {
        &self.stall
    }
}
