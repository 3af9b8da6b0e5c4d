//! Where persistent sessions outlive their connection, as a trait: the cluster
//! crate keeps them in Redis (so they survive this node), the store crate on disk
//! (so they survive this process). A node without either has [`InMemory`]: sessions
//! in memory only, nothing written.
//!
//! The broker hands the store every change to a persistent session (subscriptions,
//! acknowledgements, wills, inbound QoS 2 ids) in order, and journals QoS 1/2
//! deliveries to persistent sessions before it queues them: a message is acknowledged
//! to its publisher only once every such copy is stored.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::router::Blocked;
use crate::session::{JournalUpdate, PendingWill, SessionSnapshot, Subscription};

mod memory;

pub use memory::InMemory;

/// A session-store (or cluster) operation that could not be done. What a client is told follows from
/// the kind: a refusal during a known outage is logged at debug level only (the
/// outage itself was logged once), a full session store is a quota (v5 0x97), a
/// session owned elsewhere now ends the connection (0x8E).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// Refused at once: the cluster already knows Redis is unreachable (since when,
    /// and why).
    #[error("cluster unavailable: redis unreachable{0}")]
    Outage(String),
    /// A write for a session that another node owns now.
    #[error("cluster unavailable: session taken over by another node")]
    TakenOver,
    /// Too many deliveries to persistent sessions wait for Redis
    /// (`cluster.session_store_max_queued`, the bound).
    #[error("cluster unavailable: session store queue full: {0} deliveries wait for redis (cluster.session_store_max_queued)")]
    QueueFull(usize),
    /// The disk is full (or the store's file cannot grow): new QoS 1/2 messages are
    /// refused (v5 0x97) until space returns.
    #[error("session store full: {0}")]
    Full(String),
    /// Anything else: a Redis or disk error or timeout, a task that stopped.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

impl ClusterError {
    /// Whether this is a refusal during a known Redis outage.
    pub fn is_outage(&self) -> bool {
        matches!(self, ClusterError::Outage(_))
    }

    /// [`ClusterError::Unavailable`] with `reason`.
    pub fn unavailable(reason: impl std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable(reason.to_string())
    }
}

/// The result of claiming a client id cluster-wide.
#[derive(Debug, Default)]
pub struct ClusterClaim {
    /// The ownership epoch this connection holds.
    pub epoch: u64,
    /// The session the previous owner (another node) handed over, if any.
    pub session: Option<SessionSnapshot>,
    /// Deliveries the store kept on disk only while the session was offline here
    /// (oldest first, each with its journal key and reserved packet id): they join
    /// the end of its queue now. They may have been sent before a restart, so they
    /// go out with DUP set.
    pub spilled: Vec<crate::mailbox::Delivery>,
}

/// What a connection claiming a client id tells the cluster about its session.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// Session Expiry Interval in force (0: the session ends with the connection).
    pub expiry_secs: u32,
    /// Clean Start / Clean Session: any existing session is discarded.
    pub clean_start: bool,
    /// The will to publish if the connection (or its node) dies.
    pub will: Option<&'a PendingWill>,
    /// The user name the connection authenticated with (the ACL applies to the
    /// session's subscriptions and will after a restart).
    pub username: Option<&'a str>,
}

/// A persistent session's inbound QoS 2 PUBLISH, routed (see
/// [`SessionStore::journal_routed`]).
#[derive(Debug, Clone)]
pub struct InboundRouted {
    /// The publisher.
    pub client_id: Arc<str>,
    /// The PUBLISH's packet id.
    pub packet_id: u16,
}

/// A change to a session that the cluster store mirrors, so that the session
/// survives this node. Only persistent sessions' changes are sent.
#[derive(Debug, Clone)]
pub enum SessionChange {
    /// A subscription was added or replaced.
    Subscribed {
        /// The client.
        client_id: Arc<str>,
        /// The full filter.
        filter: String,
        /// Its options.
        sub: Subscription,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// The client.
        client_id: Arc<str>,
        /// The full filter.
        filter: String,
    },
    /// Journaled deliveries were acknowledged by the client.
    Journal {
        /// The client.
        client_id: Arc<str>,
        /// What changed, in order.
        updates: Vec<JournalUpdate>,
    },
    /// The will was published or discarded: nobody must publish it again.
    WillDone {
        /// The client.
        client_id: Arc<str>,
    },
    /// An inbound QoS 2 packet id is now this message (`Some`), or was released
    /// (`None`).
    InboundQos2 {
        /// The publishing client.
        client_id: Arc<str>,
        /// The ownership epoch of the connection (the write is refused if the
        /// session moved on).
        epoch: u64,
        /// Its packet id.
        packet_id: u16,
        /// The message's cluster id.
        message_id: Option<Box<str>>,
    },
    /// The session's connection ended and the session waits for its client, for
    /// `expiry_secs` from now (a v5 DISCONNECT may have changed the interval).
    Parked {
        /// The client.
        client_id: Arc<str>,
        /// Session Expiry Interval from now.
        expiry_secs: u32,
    },
    /// The session ended (expired, or it was not persistent).
    Ended {
        /// The client.
        client_id: Arc<str>,
    },
    /// Redis lost its data: everything this node holds of the session, to write back
    /// (unless another node claimed the client id since).
    Restore(Box<RestoredSession>),
}

/// A session as this node holds it, written back to a Redis that lost its data.
#[derive(Debug, Clone)]
pub struct RestoredSession {
    /// The client.
    pub client_id: Arc<str>,
    /// The ownership epoch this node holds.
    pub epoch: u64,
    /// Session Expiry Interval.
    pub expiry_secs: u32,
    /// The will waiting for the connection's end, if any.
    pub will: Option<PendingWill>,
    /// Subscriptions by full filter.
    pub subscriptions: Vec<(String, Subscription)>,
    /// Journaled deliveries not yet acknowledged, with their packet id and state.
    pub journal: Vec<(u16, crate::session::Outbound)>,
}

/// The outcome of [`Cluster::journal`]: stored, with the deliveries that still wait
/// for room in a full queue.
pub type JournalOutcome = Result<Vec<Blocked>, ClusterError>;

/// A boxed future, for object-safe async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keeps persistent sessions beyond their connection: in Redis (a cluster), on disk
/// (a single node with `data_dir`), or in memory only ([`InMemory`]).
pub trait SessionStore: Send + Sync + Debug + 'static {
    /// Whether sessions outlive this process (or this node) here. A persistent
    /// session's mailbox is marked stored only then: its QoS 1/2 deliveries are
    /// written before they are queued. [`InMemory`] says no.
    fn persists(&self) -> bool {
        true
    }
    /// Claims `client_id` for a connection on this node, taking it over from any
    /// other node, and records the session's expiry and will. The session comes from
    /// the previous owner or, if that node is gone, from the store.
    fn claim<'a>(
        &'a self,
        client_id: &'a str,
        request: ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>>;
    /// Stores QoS 1/2 deliveries to persistent sessions, then queues them; resolves
    /// once they are stored (`Err` if they could not be), with those that found a
    /// connected session's queue full: the caller waits for room, as for any full
    /// queue (backpressure, not loss).
    fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<JournalOutcome>;
    /// [`SessionStore::journal`] for a message that is a persistent session's inbound
    /// QoS 2 PUBLISH (`routed`): a store that keeps that session's packet ids records,
    /// in the same write as the entries, that the message was routed, so that its
    /// resend after a crash is acknowledged without being routed again
    /// [MQTT-4.3.3-9]. By default the marker is not kept (the cluster remembers
    /// delivered messages by id instead).
    fn journal_routed(
        &self,
        entries: Vec<Blocked>,
        routed: Option<InboundRouted>,
    ) -> oneshot::Receiver<JournalOutcome> {
        let _ = routed;
        self.journal(entries)
    }
    /// A persistent session moved here (handed over, loaded from the store, or taken
    /// over from a failed node) and its mailbox tracks journal keys: copies that reach
    /// its journal in the store late are queued here too.
    fn resumed(&self, client_id: &Arc<str>, mailbox: &Arc<Mailbox>);
    /// The store-wide id of `msg`, given now if it has none yet.
    fn message_id<'m>(&self, msg: &'m Message) -> &'m str;
    /// Mirrors a change to a persistent session (in order, not awaited).
    fn session_changed(&self, change: SessionChange);
    /// Mirrors a change like [`SessionStore::session_changed`]; the receiver resolves
    /// once it is stored.
    fn session_changed_stored(
        &self,
        change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>>;
    /// A retained message was set (or cleared, with an empty payload) on this node.
    fn retained(&self, msg: &Arc<Message>);
    /// `None` while the store has room for more [`SessionStore::session_changed`]
    /// changes; at its bound, a future that resolves once it has room again. The
    /// connection of a persistent session does not read its socket meanwhile: a
    /// change cannot be refused once the client was answered, so a store that falls
    /// behind slows those clients instead of queueing without bound.
    fn changes_room(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }
}
