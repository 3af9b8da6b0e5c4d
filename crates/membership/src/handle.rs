//! [`spawn`] and [`MembershipHandle`]: starting membership and talking to it.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::config::{MembershipConfig, NodeMeta, MAX_DATAGRAM, MAX_META_LEN};
use super::driver::{Command, Counters, Driver};
use super::error::MembershipError;
use super::frame::Framer;
use super::identity::NodeIdentity;
use super::meta::{MetaHandler, MetaInbox, MetaRecord};
use super::view::{Member, MemberEvent, View};

/// Events kept for a slow subscriber before it starts missing some
/// ([`broadcast::error::RecvError::Lagged`]); `members()` is always exact.
const EVENT_BUFFER: usize = 1024;

/// Starts a gossip member: binds the UDP socket, announces to the seeds and runs
/// the protocol until [`MembershipHandle::leave`] or until the handle is dropped.
///
/// The protocol runs on a thread of its own (a single-threaded tokio runtime), not
/// on the caller's runtime. Failure detection is only as prompt as this loop: on
/// a shared runtime, a busy worker thread (a large fan-out, a slow synchronous call,
/// a debug build under load) delays the gossip task, and a delayed ack or
/// refutation gets a healthy node declared down. The thread needs next to no CPU.
pub async fn spawn(config: MembershipConfig) -> Result<MembershipHandle, MembershipError> {
    config.validate()?;
    let bind_error = |source| MembershipError::Bind {
        addr: config.listen,
        source,
    };
    let std_socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
    std_socket.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = std_socket.local_addr().map_err(bind_error)?;
    let socket_now = std_socket.try_clone().map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MembershipError::Runtime)?;
    let socket = {
        let _context = runtime.enter();
        UdpSocket::from_std(std_socket).map_err(bind_error)?
    };
    let advertised = config.advertise.unwrap_or(local_addr);
    if advertised.ip().is_unspecified() {
        return Err(MembershipError::Unadvertisable(advertised));
    }

    let identity = NodeIdentity::new(config.node_id.clone(), advertised);
    check_meta_size(&identity, &config.meta)?;

    let framer = Framer::new(config.cluster_key.as_deref());
    let foca_config = config.foca_config(MAX_DATAGRAM - framer.overhead());
    let inbox = MetaInbox::default();
    let foca = Foca::with_custom_broadcast(
        identity.clone(),
        foca_config,
        StdRng::from_os_rng(),
        PostcardCodec,
        MetaHandler::new(inbox.clone()),
    );

    let (members_tx, members_rx) = watch::channel(Vec::new());
    let (events_tx, _) = broadcast::channel(EVENT_BUFFER);
    let (meta_tx, meta_rx) = watch::channel(config.meta.clone());
    let (commands_tx, commands_rx) = mpsc::channel(1);
    let counters = Arc::new(Counters::default());

    let driver = Driver {
        foca,
        runtime: AccumulatingRuntime::new(),
        socket,
        socket_now,
        framer,
        seeds: config.join.clone(),
        inbox,
        view: View::new(advertised),
        meta: config.meta.clone(),
        meta_version: 0,
        members_tx,
        events_tx: events_tx.clone(),
        meta_rx,
        commands: commands_rx,
        counters: counters.clone(),
        join_retry: config.join_retry,
        meta_refresh: config.meta_refresh,
        timers: BinaryHeap::new(),
        send_buf: Vec::with_capacity(MAX_DATAGRAM),
    };
    let (stopped_tx, stopped_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("gossip".into())
        .spawn(move || {
            runtime.block_on(driver.run());
            let _ = stopped_tx.send(());
        })
        .map_err(MembershipError::Runtime)?;
    tracing::info!(
        node_id = %config.node_id,
        %local_addr,
        %advertised,
        generation = identity.generation,
        authenticated = config.cluster_key.is_some(),
        "gossip membership started"
    );

    Ok(MembershipHandle {
        node_id: config.node_id,
        generation: identity.generation,
        local_addr,
        advertised,
        members: members_rx,
        events: events_tx,
        meta: meta_tx,
        commands: commands_tx,
        stopped: stopped_rx,
        counters,
    })
}

fn check_meta_size(identity: &NodeIdentity, meta: &NodeMeta) -> Result<(), MembershipError> {
    let record = MetaRecord {
        node_id: identity.node_id.clone(),
        addr: identity.addr,
        generation: u64::MAX,
        version: u64::MAX,
        leaving: true,
        meta: NodeMeta {
            connections: u64::MAX,
            ..meta.clone()
        },
    };
    let len = postcard::to_allocvec(&record)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if len > MAX_META_LEN {
        return Err(MembershipError::MetaTooLarge {
            len,
            max: MAX_META_LEN,
        });
    }
    Ok(())
}

/// A running gossip member.
///
/// Dropping the handle stops the member *without* announcing a leave: the rest of
/// the cluster finds out by failure detection, exactly as if the process had been
/// killed. Call [`leave`](Self::leave) for a clean shutdown.
#[derive(Debug)]
pub struct MembershipHandle {
    node_id: String,
    generation: u64,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    members: watch::Receiver<Vec<Member>>,
    events: broadcast::Sender<MemberEvent>,
    meta: watch::Sender<NodeMeta>,
    commands: mpsc::Sender<Command>,
    /// Completes when the membership thread has stopped.
    stopped: oneshot::Receiver<()>,
    counters: Arc<Counters>,
}

/// Datagram counters of one member, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Datagrams received, valid or not.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams dropped because their authentication tag did not verify
    /// (strangers, or members configured with another cluster key).
    pub rejected_auth: u64,
    /// Authenticated (or unkeyed) datagrams that were oversized or that foca could
    /// not use (malformed, from ourselves, from a stale identity).
    pub rejected_invalid: u64,
    /// The latest a protocol timer was ever handled after its deadline. More than a
    /// few milliseconds means the membership thread was starved or the process
    /// paused; at `probe_period` and beyond, members may have been suspected
    /// because of it (see `docs/membership.md`).
    pub max_timer_lag: std::time::Duration,
    /// Other members gossip knows as alive (this node not included).
    pub alive: u64,
    /// Other members suspected of having failed (not yet declared down).
    pub suspect: u64,
    /// Members declared down that gossip still remembers (forgotten after a while).
    pub down: u64,
}

impl MembershipHandle {
    /// The UDP address the socket is bound to (the real port when `listen` had 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gossip address other members know us by.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The generation this run started with (a restarted node gets a higher one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live members, sorted by node id, **excluding this node**. A member is
    /// listed once gossip says it is alive and its metadata has arrived; suspected
    /// members stay listed until declared down.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// A new subscription to membership events, from now on. Pair it with
    /// [`members`](Self::members) for the state at subscription time.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Updates the advertised connection count. Changes are coalesced and pushed
    /// to a few members at once, reaching the whole cluster within about a second.
    pub fn set_connections(&self, n: u64) {
        self.meta.send_if_modified(|meta| {
            let changed = meta.connections != n;
            meta.connections = n;
            changed
        });
    }

    /// Replaces the whole advertised metadata (listener addresses, role, ...).
    pub fn set_meta(&self, meta: NodeMeta) {
        self.meta.send_if_modified(|current| {
            let changed = *current != meta;
            *current = meta;
            changed
        });
    }

    /// The metadata this node currently advertises.
    pub fn meta(&self) -> NodeMeta {
        self.meta.borrow().clone()
    }

    /// The generation of this node's identity now: higher than [`Self::generation`]
    /// once the cluster declared this node down and it rejoined.
    pub fn current_generation(&self) -> u64 {
        self.counters
            .generation
            .load(Ordering::Acquire)
            .max(self.generation)
    }

    /// Datagram counters so far.
    pub fn stats(&self) -> MembershipStats {
        let c = &self.counters;
        MembershipStats {
            received: c.received.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            rejected_auth: c.rejected_auth.load(Ordering::Relaxed),
            rejected_invalid: c.rejected_invalid.load(Ordering::Relaxed),
            max_timer_lag: std::time::Duration::from_micros(
                c.max_timer_lag_us.load(Ordering::Relaxed),
            ),
            alive: c.alive.load(Ordering::Relaxed),
            suspect: c.suspect.load(Ordering::Relaxed),
            down: c.down.load(Ordering::Relaxed),
        }
    }

    /// Leaves the cluster cleanly: tells a few members (who spread it) that this
    /// node is going, then stops. Others report [`MemberEvent::Left`] promptly.
    pub async fn leave(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let _ = self.stopped.await;
    }
}
