//! The broker as the admin API and the binary see it. [`Broker`]'s parts are
//! private to this crate; these methods, each saying who needs it, read and change
//! it. The cluster and the disk store's restore drive it through
//! [`crate::handle::LocalBroker`] instead.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::broker::Broker;
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

    /// Every local subscription whose filter matches `topic` (the admin API's
    /// "who gets this message").
    pub fn subscriptions_matching(&self, topic: &str) -> Vec<crate::router::Matching> {
        self.router.matching(topic)
    }

    /// Starts draining this node for maintenance (the admin API): from now on a
    /// CONNECT is refused with 0x9C Use another server (3.1.1: 0x03 Server
    /// unavailable), `/health` answers 503 `draining`, and the connected clients are
    /// asked to move (DISCONNECT 0x9C), spread over `period`; persistent sessions
    /// are then taken over where the clients reconnect. False if it was draining
    /// already. Gossip's advertisement is the caller's (the cluster node's) to
    /// withdraw.
    pub fn start_drain(self: &Arc<Self>, period: std::time::Duration) -> bool {
        if self
            .draining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return false;
        }
        let broker = self.clone();
        tokio::spawn(async move { broker.drain(period).await });
        true
    }

    /// Accepts connections again after [`Broker::start_drain`] (clients already
    /// asked to move are not called back). False if it was not draining.
    pub fn stop_drain(&self) -> bool {
        self.draining
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether an operator is draining this node.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }
}
