//! What the broker needs from a cluster, as a trait the `cluster` crate implements;
//! the session-store half of it is [`crate::store`].
//!
//! The broker talks to the other nodes through [`Peers`] only, and a single node
//! always has one: [`SingleNode`], which has no one to tell and nothing to forward,
//! so no broker code asks whether it is clustered. In a cluster the broker tells it about local
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
    /// The shared-subscription groups to deliver to locally; `None`: every group
    /// (no other node serves any).
    pub local_groups: Option<LocalGroups>,
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

/// The other nodes as the broker sees them: where local subscriptions are announced
/// and published messages are forwarded. A single node uses [`SingleNode`].
pub trait Peers: Send + Sync + std::fmt::Debug + 'static {
    /// A local session subscribed to `filter` (full filter, `$share/...` included).
    fn subscribed(&self, filter: &str);
    /// A local session dropped its subscription to `filter`.
    fn unsubscribed(&self, filter: &str);
    /// Sends a message published on this node to the other nodes that need it.
    fn forward(&self, msg: &Arc<Message>) -> Forwarded;
    /// What `/health` reports as the node's mode (`single`, `cluster`).
    fn mode(&self) -> &'static str;
}

/// The in-process [`Peers`] of a node on its own: no routes to announce, every
/// message and every shared-subscription group served here.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Peers for SingleNode {
    fn subscribed(&self, _filter: &str) {}

    fn unsubscribed(&self, _filter: &str) {}

    fn forward(&self, _msg: &Arc<Message>) -> Forwarded {
        Forwarded::default()
    }

    fn mode(&self) -> &'static str {
        "single"
    }
}

/// The cluster as the broker sees it: its [`Peers`] and its [`SessionStore`] (which
/// keeps persistent sessions in Redis), set together by [`Broker::set_cluster`].
///
/// [`Broker::set_cluster`]: crate::broker::Broker::set_cluster
pub trait Cluster: SessionStore + Peers {}

impl<T: SessionStore + Peers> Cluster for T {}
