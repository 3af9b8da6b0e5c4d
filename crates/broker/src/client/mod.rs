//! One client connection, from its first byte to its close.
//!
//! - [`connect`]: the CONNECT handshake (validation, authentication, session claim,
//!   CONNACK, resend of in-flight messages).
//! - [`publish`]: PUBLISH in both directions and the QoS 1/2 acknowledgement flows.
//! - [`subscribe`]: SUBSCRIBE and UNSUBSCRIBE, with retained-message delivery.
//!
//! After the handshake one task runs [`Client::run`]: a `select!` over the socket
//! (read and write), the session's mailbox, control requests (takeover), shutdown and
//! the keep-alive deadline. Reading and writing in one loop keeps a client that does
//! not read from blocking our reads of its acknowledgements.

mod connect;
mod publish;
mod subscribe;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt::{Disconnect, DisconnectProperties, Packet, Protocol, ReasonCode};
use tokio::io::AsyncWrite;

use crate::connection::ReadSide;
use crate::durable::Durable;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::cluster::{ClusterError, SessionChange};
use crate::connection::{Connection, ReadError, LINGER, LINGER_MAX_BYTES, WRITE_HIGH_WATER};
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::metrics::ListenerMetrics;
use crate::metrics::Metrics;
use crate::registry::{ExitGuard, Request};
use crate::router::Blocked;
use crate::session::{PendingWill, Session};

/// Serves one accepted socket until it closes or the broker shuts down. `cert_user`
/// is the user name taken from the client's TLS certificate, if the listener takes
/// one (it then replaces the CONNECT's, and no password is checked).
///
/// Most of a connection's memory while idle is this future, held by its task, so it
/// is kept small: a plain function (its arguments go into the boxed handshake rather
/// than into the future), the client's state boxed, and only the main loop inline.
pub fn serve<R, W>(
    broker: Arc<Broker>,
    reader: R,
    writer: W,
    peer: String,
    cert_user: Option<Box<str>>,
    listener: Arc<ListenerMetrics>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send
where
    R: ReadSide + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_in = broker.config.limits.max_packet_size as usize;
    let conn = Connection::new(reader, writer, max_in);
    // Boxed: the handshake's state is large and short-lived.
    let handshake = Box::pin(connect::handshake(
        broker, conn, peer, cert_user, listener, shutdown,
    ));
    async move {
        if let Some(mut client) = handshake.await {
            client.set_link_info();
            let exit = client.run().await;
            // Boxed for the same reason: only the closing connection pays for it.
            if let Some((conn, client_id)) = Box::pin(client.finish(exit)).await {
                Box::pin(linger(conn, client_id)).await;
            }
        }
    }
}

/// After a DISCONNECT with a reason, reads and throws away what the client still
/// sends until it closes (bounded by [`LINGER`] and [`LINGER_MAX_BYTES`]), so that
/// closing does not reset a connection the client is still writing to before it
/// has read why. The session and the client id were released before: a takeover
/// does not wait for this.
async fn linger<R: ReadSide, W>(mut conn: Connection<R, W>, client_id: Arc<str>) {
    let end = conn.rx.discard(LINGER, LINGER_MAX_BYTES).await;
    tracing::debug!(%client_id, ?end, "closed after lingering");
}

/// Resolves when the oldest pending acknowledgement's message is durable.
/// Cancel-safe: the receiver stays in place until it has resolved.
async fn wait_durable(acks: &mut VecDeque<PendingAck>) {
    let Some(ack) = acks.front_mut() else {
        return;
    };
    if let Some(durable) = ack.durable.as_mut() {
        let outcome = durable.await;
        ack.durable = None;
        ack.failed = outcome.err();
    }
}

/// Resolves once the deferred PUBLISH's packet id is stored (or could not be).
async fn wait_deferred(deferred: &mut Option<Box<Deferred>>) -> Result<(), ClusterError> {
    match deferred.as_mut() {
        Some(d) => (&mut d.rx)
            .await
            .unwrap_or_else(|_| Err(ClusterError::unavailable("session store stopped"))),
        None => std::future::pending().await,
    }
}

/// Resolves at `at` (never when `None`). The timer is boxed when first polled: inline,
/// it would size every connection's task, and it runs only while a client is
/// throttled.
async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at.into())).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the first blocked delivery's queue has room, or at `until`.
async fn wait_room(blocked: &VecDeque<Blocked>, until: Instant) {
    if let Some(b) = blocked.front() {
        let _ = tokio::time::timeout_at(until.into(), b.mailbox.wait_room()).await;
    }
}

/// Why the client loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The client sent DISCONNECT 0x00: discard the will.
    Normal,
    /// The client sent DISCONNECT 0x04: publish the will [MQTT-3.14.4-3].
    WithWill,
    /// The network connection closed or failed.
    Lost,
    /// We close the connection with this reason (v5 DISCONNECT sent first).
    Server(ReasonCode),
}

/// A connected client: its protocol state and what it negotiated.
struct Client<R, W> {
    broker: Arc<Broker>,
    conn: Connection<R, W>,
    protocol: Protocol,
    peer: Box<str>,
    conn_id: u64,
    client_id: Arc<str>,
    username: Option<Arc<str>>,
    session: Session,
    will: Option<Box<PendingWill>>,
    /// Marks this connection exited when the task ends, telling a waiting claimer
    /// it may proceed; also carries takeover requests.
    exit_guard: ExitGuard,
    /// Keep alive in force (server override applied), `None` = disabled.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// Outbound window: the client's Receive Maximum capped by `limits.max_inflight`.
    send_window: usize,
    /// Largest packet the client accepts.
    max_out: usize,
    /// Topic aliases in both directions; allocated when the first one is set (most
    /// clients never use one, and an idle connection should stay small).
    aliases: Option<Box<Aliases>>,
    /// How many topic aliases the client accepts from us.
    alias_out_max: u16,
    /// Deliveries taken from the mailbox, not yet sent (window full).
    pending: VecDeque<Delivery>,
    /// The cluster ownership epoch this connection holds (0 on a single node).
    epoch: u64,
    /// Acknowledgements of inbound PUBLISHes, in arrival order, some waiting for their
    /// message to be stored by the cluster.
    acks: VecDeque<PendingAck>,
    /// Deliveries of the last PUBLISH waiting for room in full queues; while any wait,
    /// this client's socket is not read (backpressure) and its acknowledgement is held.
    blocked: VecDeque<Blocked>,
    /// When waiting for room gives up and the overflow policy applies.
    blocked_until: Instant,
    /// A QoS 2 PUBLISH waiting for its packet id to be stored; nothing more is read
    /// meanwhile (order is kept).
    deferred: Option<Box<Deferred>>,
    /// Publish rate limits and bus backpressure; made on the first PUBLISH that needs
    /// it (an idle connection should stay small).
    throttle: Option<Box<Throttle>>,
}

/// Why a publisher's socket is left unread for a while (TCP then slows it down;
/// what it already sent is processed, nothing is dropped).
#[derive(Debug, Default)]
struct Throttle {
    /// `limits.max_publish_rate` and `limits.max_publish_bytes_rate`, if set.
    limiter: Option<crate::rate::PublishLimiter>,
    /// Not read again before this instant: a rate limit was exceeded.
    resume_at: Option<Instant>,
    /// A QoS 1/2 message found the bus backlog toward another node full: not read
    /// again until the pending acknowledgements' copies are stored.
    bus_wait: bool,
    /// The session store holds as many unstored changes as it may
    /// ([`crate::store::SessionStore::changes_room`]): not read again until it has
    /// room.
    store_wait: Option<StoreWait>,
}

/// Resolves once the session store has room for changes again.
struct StoreWait(crate::store::BoxFuture<'static, ()>);

impl std::fmt::Debug for StoreWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreWait")
    }
}

/// Resolves once the session store has room (never when nothing waits for it).
async fn wait_store(throttle: &mut Option<Box<Throttle>>) {
    match throttle.as_mut().and_then(|t| t.store_wait.as_mut()) {
        Some(w) => (&mut w.0).await,
        None => std::future::pending().await,
    }
}

/// A QoS 2 PUBLISH from a persistent session waiting for the cluster to store its
/// packet id before it is routed.
struct Deferred {
    msg: Arc<Message>,
    packet_id: u16,
    rx: tokio::sync::oneshot::Receiver<Result<(), ClusterError>>,
}

/// The topic aliases of one connection (v5).
#[derive(Default)]
struct Aliases {
    /// Set by the client toward us.
    inbound: HashMap<u16, String>,
    /// Set by us toward the client.
    outbound: HashMap<Arc<str>, u16>,
}

/// Which acknowledgement a [`PendingAck`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckKind {
    /// PUBACK for an inbound QoS 1 PUBLISH.
    Ack,
    /// PUBREC for an inbound QoS 2 PUBLISH.
    Rec,
    /// PUBREL for an outbound QoS 2 delivery, once the client's PUBREC is stored.
    Rel,
}

/// A PUBACK, PUBREC or PUBREL not sent yet.
struct PendingAck {
    kind: AckKind,
    packet_id: u16,
    reason: ReasonCode,
    durable: Option<Durable>,
    /// Set when the cluster could not store the message.
    failed: Option<ClusterError>,
    /// The cluster-wide id of a routed QoS 2 message, kept for a 3.1.1 client's
    /// resend should the cluster fail to store it (see `flush_acks`).
    message_id: Option<Box<str>>,
    /// Held while the message waits for room in subscribers' queues.
    held: bool,
}

impl<R: ReadSide, W: AsyncWrite + Unpin> Client<R, W> {
    /// The main loop. Returns why it ended.
    async fn run(&mut self) -> Exit {
        loop {
            if self.broker.stall.stalled().is_some() {
                // This process was frozen: nothing is answered until the node knows
                // whether this session is still its own (if not, it is told to go).
                tokio::select! {
                    // Boxed while it runs (rarely): inline, its waiter would size every
                    // connection's task.
                    _ = async { Box::pin(self.broker.stall.wait()).await } => {}
                    request = self.exit_guard.0.asked() => {
                        if let Request::Leave(reason) = request {
                            return Exit::Server(reason);
                        }
                    }
                }
                if let Some(reason) = self.exit_guard.0.leave_requested() {
                    return Exit::Server(reason);
                }
            }
            // Handle everything already buffered before waiting again, unless a
            // publish waits for room (then nothing more is read).
            // One clock read per batch of buffered packets, not per packet.
            let now = Instant::now();
            let heard_before = self.last_packet;
            self.end_bus_wait();
            while self.may_read() {
                match self.conn.rx.next_buffered(Some(self.protocol)) {
                    Ok(Some(packet)) => {
                        self.last_packet = now;
                        if let Some(exit) = self.handle(packet) {
                            return exit;
                        }
                        // The first packet of what was read took effect: connections
                        // woken after this one go on (the rest of a large read need
                        // not hold them up).
                        self.conn.rx.handled();
                    }
                    Ok(None) => break,
                    Err(e) => return self.decode_error(e),
                }
            }
            if self.last_packet != heard_before {
                self.arm_keep_alive();
            }
            self.conn.rx.release_if_empty();
            self.pump();
            let can_take = self.conn.tx.wbuf.len() < WRITE_HIGH_WATER && self.window_open();
            self.check_store_room();
            let store_wait = self
                .throttle
                .as_ref()
                .is_some_and(|t| t.store_wait.is_some());
            let reading = self.may_read();
            if !reading {
                self.conn.rx.pause();
            }
            let resume_at = self.throttle.as_ref().and_then(|t| t.resume_at);
            tokio::select! {
                r = self.conn.rx.fill(), if reading => match r {
                    Ok(()) => {}
                    Err(ReadError::Closed) => return Exit::Lost,
                    Err(ReadError::Decode(e)) => return self.decode_error(e),
                },
                r = self.conn.tx.write_some(), if self.conn.tx.has_pending() => {
                    if r.is_err() {
                        return Exit::Lost;
                    }
                }
                _ = self.session.mailbox.notified(), if can_take => {}
                stored = wait_deferred(&mut self.deferred), if self.deferred.is_some() => {
                    if let Some(exit) = self.route_deferred(stored) {
                        return exit;
                    }
                }
                // Boxed when first polled: its timer and waiter would otherwise size
                // every connection's task, and it runs only while a publish waits.
                _ = async { Box::pin(wait_room(&self.blocked, self.blocked_until)).await }, if !self.blocked.is_empty() => {
                    if let Some(exit) = self.place_blocked() {
                        return exit;
                    }
                }
                _ = wait_store(&mut self.throttle), if store_wait => {
                    if let Some(t) = self.throttle.as_mut() {
                        t.store_wait = None;
                    }
                }
                _ = wait_until(resume_at), if resume_at.is_some() => {
                    if let Some(t) = self.throttle.as_mut() {
                        t.resume_at = None;
                    }
                }
                _ = wait_durable(&mut self.acks), if self.acks.front().is_some_and(|a| a.durable.is_some()) => {
                    if let Some(exit) = self.flush_acks() {
                        return exit;
                    }
                }
                request = self.exit_guard.0.asked() => match request {
                    Request::Leave(reason) => return Exit::Server(reason),
                    Request::Republish => self.republish(),
                    Request::Describe => self.describe(),
                },
            }
        }
    }

    /// Tells the registry's link who is behind this connection (admin API).
    fn set_link_info(&self) {
        self.exit_guard.0.set_info(crate::registry::ConnInfo {
            username: self.username.clone(),
            peer: self.peer.clone(),
            protocol: self.protocol,
            keep_alive_secs: self.keep_alive.map_or(0, |k| k.as_secs()),
            connected_at: std::time::SystemTime::now(),
        });
    }

    /// Answers an admin request for this session's state.
    fn describe(&self) {
        let s = &self.session;
        self.exit_guard
            .0
            .answer_describe(crate::registry::SessionView {
                subscriptions: s
                    .subscriptions
                    .iter()
                    .map(|(f, sub)| (f.clone(), sub.options.qos as u8))
                    .collect(),
                inflight: s.inflight(),
                queued: s.mailbox.len() + self.pending.len(),
                expiry_secs: s.expiry_secs,
            });
    }

    /// Whether the socket may be read: no publish waits for room in a full queue, for
    /// its packet id to be stored, for a rate limit, for the bus backlog or for the
    /// session store.
    fn may_read(&self) -> bool {
        self.blocked.is_empty()
            && self.deferred.is_none()
            && self
                .throttle
                .as_ref()
                .is_none_or(|t| t.resume_at.is_none() && !t.bus_wait && t.store_wait.is_none())
    }

    /// A persistent session whose store is at its bound of unstored changes waits
    /// for room before reading more packets (each may add changes: acknowledgements,
    /// subscriptions, inbound QoS 2 ids).
    fn check_store_room(&mut self) {
        if !self.session.mailbox.durability().is_stored()
            || self
                .throttle
                .as_ref()
                .is_some_and(|t| t.store_wait.is_some())
        {
            return;
        }
        if let Some(wait) = self.broker.store().changes_room() {
            crate::metrics::Metrics::add(&self.broker.metrics.throttled_session_store, 1);
            self.throttle
                .get_or_insert_with(Default::default)
                .store_wait = Some(StoreWait(wait));
        }
    }

    /// Ends a bus backpressure wait once no acknowledgement waits for its copies.
    fn end_bus_wait(&mut self) {
        if let Some(t) = self.throttle.as_mut() {
            if t.bus_wait && !self.acks.iter().any(|a| a.durable.is_some()) {
                t.bus_wait = false;
            }
        }
    }

    /// Restarts the keep alive from the last packet received: without another packet
    /// within one and a half times the Keep Alive the registry asks this connection
    /// to close with 0x8D [MQTT-3.1.2-24] (3.1.1: [MQTT-3.1.2-24] as well).
    fn arm_keep_alive(&self) {
        if let Some(ka) = self.keep_alive {
            let registry = &self.broker.registry;
            let deadline = registry.clock_ms(self.last_packet + ka * 3 / 2);
            self.exit_guard.0.set_keep_alive_deadline(deadline);
        }
    }

    /// Dispatches one packet. Returns `Some` when the connection must end.
    fn handle(&mut self, packet: Packet) -> Option<Exit> {
        match packet {
            Packet::Publish(p) => {
                self.limit_rate(&p);
                self.on_publish(p)
            }
            Packet::PubAck(a) => {
                self.session.puback(a.packet_id);
                self.sync_journal();
                None
            }
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => {
                self.session.pubcomp(a.packet_id);
                self.sync_journal();
                None
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.conn.tx.queue(&Packet::PingResp, self.protocol);
                None
            }
            Packet::Disconnect(d) => self.on_disconnect(*d),
            // [MQTT-3.1.0-2] A second CONNECT is a protocol violation.
            Packet::Connect(_) => Some(Exit::Server(ReasonCode::ProtocolError)),
            // No authentication method was accepted at CONNECT, so AUTH is a protocol
            // error [MQTT-4.12.0-1 requires the method to match].
            Packet::Auth(_) => Some(Exit::Server(ReasonCode::ProtocolError)),
            // Server-to-client packets from a client.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Some(Exit::Server(ReasonCode::ProtocolError))
            }
        }
    }

    /// Redis lost its data: hands the cluster a copy of this session (persistent
    /// sessions only).
    fn republish(&mut self) {
        if !self.session.mailbox.durability().is_stored() && self.will.is_none() {
            return;
        }
        let pending: Vec<Delivery> = self.pending.iter().cloned().collect();
        let copy = self
            .session
            .restore_change(self.epoch, self.will.as_deref(), &pending);
        self.broker
            .session_changed(SessionChange::Restore(Box::new(copy)));
    }

    /// Passes the client's acknowledgements of journaled deliveries to the cluster.
    fn sync_journal(&mut self) {
        if self.session.journal_updates.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut self.session.journal_updates);
        self.broker.session_changed(SessionChange::Journal {
            client_id: self.client_id.clone(),
            updates,
        });
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Option<Exit> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2] A session that expired at close cannot be revived here.
            if self.session.expiry_secs == 0 && expiry != 0 {
                return Some(Exit::Server(ReasonCode::ProtocolError));
            }
            self.session.expiry_secs =
                expiry.min(self.broker.config.limits.max_session_expiry_secs);
        }
        Some(if d.reason == ReasonCode::DisconnectWithWill {
            Exit::WithWill
        } else {
            Exit::Normal
        })
    }

    fn decode_error(&mut self, e: mqtt::DecodeError) -> Exit {
        tracing::debug!(client_id = %self.client_id, peer = %self.peer, error = %e, "closing: bad packet");
        Metrics::add(&self.broker.metrics.protocol_errors, 1);
        Exit::Server(e.reason_code())
    }

    /// Sends DISCONNECT if due, shuts the socket's write side down, and hands the
    /// session back. Returns the connection (with the client id, for logs) when it
    /// should [`linger`]: a DISCONNECT with a reason was sent and flushed. Everything
    /// else the client held is dropped on return.
    async fn finish(mut self, exit: Exit) -> Option<(Connection<R, W>, Arc<str>)> {
        let mut told = false;
        if let Exit::Server(reason) = exit {
            // v3 has no server DISCONNECT: the connection is just closed.
            if self.protocol.is_v5() {
                let d = Disconnect {
                    reason,
                    properties: DisconnectProperties::default(),
                };
                self.conn
                    .tx
                    .queue(&Packet::Disconnect(Box::new(d)), self.protocol);
                told = true;
            }
        }
        let will = match exit {
            Exit::Normal => {
                // [MQTT-3.1.2-10] Discarded: nobody may publish it after this node dies.
                if self.will.is_some() {
                    self.broker.session_changed(SessionChange::WillDone {
                        client_id: self.client_id.clone(),
                    });
                }
                None
            }
            // A shutting-down or draining node does not fire the wills of clients it
            // sends away: they reconnect (elsewhere).
            Exit::Server(ReasonCode::ServerShuttingDown | ReasonCode::UseAnotherServer) => None,
            _ => self.will.take(),
        };
        Metrics::sub(&self.broker.metrics.clients_connected, 1);
        if let Some(d) = self.deferred.take() {
            // Never routed nor acknowledged: the client sends it again, as new.
            self.session.release_qos2(d.packet_id);
            self.forget_inbound_qos2(d.packet_id);
        }
        // Deliveries taken from the mailbox but not yet sent (beyond the window) go
        // back to its front, so a persistent session keeps them in order.
        for d in self.pending.drain(..).rev() {
            if d.qos != mqtt::QoS::AtMostOnce {
                self.session.mailbox.push_front(d);
            }
        }
        tracing::debug!(client_id = %self.client_id, peer = %self.peer, ?exit, "client disconnected");
        self.broker
            .disconnected(self.conn_id, self.session, will.map(|w| *w));
        // Only then flushed and shut down (TCP FIN), unless the client stopped
        // reading: a client that sees the connection end finds its session parked (a
        // message published right after goes to its queue, not to this connection).
        let grace = Duration::from_secs(1);
        let flushed = tokio::time::timeout(grace, self.conn.tx.close())
            .await
            .is_ok();
        // The exit guard goes with the rest of `self` on return: a claimer waiting
        // for this connection to end proceeds before any lingering.
        (told && flushed).then_some((self.conn, self.client_id))
    }
}
