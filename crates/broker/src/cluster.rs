//! What the broker needs from a cluster, as a trait the `cluster` crate implements;
//! the session-store half of it is [`crate::store`].
//!
//! A single node runs without one. With one, the broker tells it about local
//! subscriptions (so other nodes can route to us) and retained messages, hands it every
//! message published here (it forwards to nodes whose routes match and decides where
//! each shared-subscription group's copy goes), and claims client ids cluster-wide.
//! Messages arriving from other nodes come back through [`Broker::deliver_remote`],
//! takeover requests through [`Broker::kick`].
//!
//! [`Broker::deliver_remote`]: crate::broker::Broker::deliver_remote
//! [`Broker::kick`]: crate::broker::Broker::kick

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::message::Message;

pub use crate::store::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, JournalOutcome, RestoredSession,
    SessionChange, SessionStore,
};

/// The shared-subscription groups (`group`, inner filter) this node must serve for
/// one message; other groups are served by other nodes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalGroups(pub Vec<(String, String)>);

impl LocalGroups {
    /// Whether this node serves `group` on `filter`.
    pub fn contains(&self, group: &str, filter: &str) -> bool {
        self.0.iter().any(|(g, f)| g == group && f == filter)
    }
}

/// The outcome of handing a message to the cluster.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// The groups to deliver to locally.
    pub local_groups: LocalGroups,
    /// Resolves once every remote copy is stored in the cluster (`Ok`) or could not be
    /// (`Err`); `None` when no other node needed the message.
    pub durable: Option<oneshot::Receiver<Result<(), ClusterError>>>,
    /// The bus backlog toward a destination was at its bound
    /// (`cluster.forward_qos12_backlog`): the message is queued all the same, and the
    /// publisher should not be read again until `durable` resolves.
    pub throttle: bool,
    /// Other nodes have subscriptions matching the message (it was sent to them, or
    /// would have been had Redis been reachable).
    pub remote: bool,
}

/// The cluster as the broker sees it: routes to and from other nodes. Its session
/// store (the [`SessionStore`] half) keeps persistent sessions in Redis.
pub trait Cluster: SessionStore {
    /// A local session subscribed to `filter` (full filter, `$share/...` included).
    fn subscribed(&self, filter: &str);
    /// A local session dropped its subscription to `filter`.
    fn unsubscribed(&self, filter: &str);
    /// Sends a message published on this node to the other nodes that need it.
    fn forward(&self, msg: &Arc<Message>) -> Forwarded;
}
