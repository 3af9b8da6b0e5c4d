//! PUBLISH in both directions: inbound messages (topic aliases, ACL, routing, QoS 1/2
//! acknowledgement) and outbound deliveries from the mailbox (in-flight window,
//! outbound topic aliases, Maximum Packet Size, message expiry).

use std::sync::Arc;
use std::time::Instant;

use mqtt::codec::Delivery as Wire;
use mqtt::topic::valid_topic_name;
use mqtt::{Packet, PubResp, Publish, QoS, ReasonCode};
use tokio::io::AsyncWrite;

use crate::connection::ReadSide;

use super::{AckKind, Client, Deferred, Exit, PendingAck};
use crate::cluster::ClusterError;
use crate::cluster::SessionChange;
use crate::connection::WRITE_HIGH_WATER;
use crate::durable::Durable;
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::store::InboundRouted;

thread_local! {
    /// Reused by every publish routed on this thread, rather than one per client
    /// (an idle connection should stay small).
    static ROUTING: std::cell::RefCell<Vec<crate::router::Target>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Deliveries taken from the mailbox per lock.
const DRAIN_BATCH: usize = 64;

impl<R: ReadSide, W: AsyncWrite + Unpin> Client<R, W> {
    /// Accounts an inbound PUBLISH against `limits.max_publish_rate` and
    /// `limits.max_publish_bytes_rate`: past either, the socket is not read until the
    /// bucket is out of debt. The PUBLISH itself is processed as usual: throttling
    /// slows the client down through TCP and loses nothing (no 0x96 either: a client
    /// told its rate is too high can only reconnect or drop messages).
    pub(super) fn limit_rate(&mut self, p: &Publish) {
        let limits = &self.broker.config.limits;
        if limits.max_publish_rate == 0 && limits.max_publish_bytes_rate == 0 {
            return;
        }
        // The clock read of this batch of packets.
        let now = self.last_packet;
        let t = self.throttle.get_or_insert_with(Default::default);
        let limiter = t.limiter.get_or_insert_with(|| {
            let (rate, bytes) = (limits.max_publish_rate, limits.max_publish_bytes_rate);
            crate::rate::PublishLimiter::new(rate, bytes, now).expect("a limit is set")
        });
        let Some((wait, why)) = limiter.publish(p.topic.len() + p.payload.len(), now) else {
            return;
        };
        t.resume_at = Some(now + wait);
        let m = &self.broker.metrics;
        Metrics::add(
            match why {
                crate::rate::Exceeded::MessageRate => &m.throttled_message_rate,
                crate::rate::Exceeded::ByteRate => &m.throttled_byte_rate,
            },
            1,
        );
        log_throttled(m);
    }

    /// An inbound PUBLISH.
    pub(super) fn on_publish(&mut self, mut p: Publish) -> Option<Exit> {
        let limits = &self.broker.config.limits;
        // More unreleased QoS 2 PUBLISHes than our Receive Maximum [MQTT-3.3.4-7]:
        // DISCONNECT 0x93 (§4.9). A resend of one still unreleased (same packet id)
        // is no new one: it is acknowledged again below [MQTT-4.3.3-9].
        if p.qos == QoS::ExactlyOnce
            && self.session.inbound_pending() >= usize::from(limits.receive_maximum)
            && !self.session.awaits_release(p.packet_id.unwrap_or(0))
        {
            return Some(Exit::Server(ReasonCode::ReceiveMaximumExceeded));
        }
        if let Some(alias) = p.properties.take_topic_alias() {
            // [MQTT-3.3.2-9, MQTT-3.3.2-10] Alias 0 or above our maximum.
            if alias == 0 || alias > limits.topic_alias_maximum {
                return Some(Exit::Server(ReasonCode::TopicAliasInvalid));
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    // An alias never set by this connection [MQTT-3.3.2-12 context].
                    None => return Some(Exit::Server(ReasonCode::ProtocolError)),
                }
            } else {
                let aliases = self.aliases.get_or_insert_default();
                aliases.inbound.insert(alias, p.topic.clone());
            }
        }
        if !valid_topic_name(&p.topic) {
            // [MQTT-3.3.2-1, MQTT-4.7.3-1] A topic name must be present and valid.
            return Some(Exit::Server(ReasonCode::TopicNameInvalid));
        }
        // [MQTT-3.3.4-6] Subscription identifiers are for the server to send.
        if !p.properties.subscription_identifiers.is_empty() {
            return Some(Exit::Server(ReasonCode::ProtocolError));
        }
        self.broker.metrics.received(p.qos);

        let packet_id = p.packet_id.unwrap_or(0);
        let mut known_id = None;
        if p.qos == QoS::ExactlyOnce && !self.session.receive_qos2(packet_id) {
            // A packet id this session had stored in the cluster before its node died:
            // the first copy may not have reached every subscriber. Routed again
            // under the same message id, so copies that did arrive are not stored
            // twice.
            known_id = self.session.take_unsettled(packet_id);
            if known_id.is_none() {
                // [MQTT-4.3.3-9] A redelivery before PUBREL: acknowledge, do not route
                // again. Queued behind earlier acknowledgements, so a PUBREC never
                // overtakes the first copy's (which may wait for the cluster).
                self.acks.push_back(PendingAck {
                    kind: AckKind::Rec,
                    packet_id,
                    reason: ReasonCode::Success,
                    durable: None,
                    failed: None,
                    message_id: None,
                    held: false,
                });
                return self.flush_acks();
            }
        }

        let qos = p.qos;
        let reason = if !self.broker.auth.can_write(
            &self.client_id,
            self.username.as_deref(),
            &p.topic,
        ) {
            tracing::debug!(client_id = %self.client_id, topic = %p.topic, "PUBLISH denied by ACL");
            ReasonCode::NotAuthorized
        } else if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // The payload claims to be UTF-8 and is not (v5 §3.3.2.3.2).
            ReasonCode::PayloadFormatInvalid
        } else {
            // Taken by value: the topic and payload move into the message uncopied.
            let msg = Arc::new(Message::from_publish(
                std::mem::take(&mut p),
                Some(self.client_id.clone()),
                self.last_packet,
            ));
            if let Some(id) = known_id {
                let _ = msg.id.set(id);
            } else if qos == QoS::ExactlyOnce {
                if let Some(rx) = self.store_inbound(&msg, packet_id) {
                    // Routed once the cluster knows this packet id (see `Deferred`).
                    self.deferred = Some(Box::new(Deferred { msg, packet_id, rx }));
                    return None;
                }
            }
            return self.route_and_ack(msg, qos, packet_id);
        };
        self.ack_inbound(qos, packet_id, reason, None, None, None)
    }

    /// A persistent session in a cluster: records in the cluster, before routing, that
    /// QoS 2 packet `packet_id` is this message. Should this node die before PUBREL,
    /// the publisher sends the message again to another node, which routes it again
    /// under the same message id — copies that already arrived are not stored twice,
    /// and the ones lost with this node arrive [MQTT-4.3.3-9 across nodes].
    fn store_inbound(
        &mut self,
        msg: &Arc<Message>,
        packet_id: u16,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), ClusterError>>> {
        self.session.mailbox.durability().owner()?;
        let store = self.broker.store();
        let id = store.message_id(msg).into();
        Some(store.session_changed_stored(SessionChange::InboundQos2 {
            client_id: self.client_id.clone(),
            epoch: self.epoch,
            packet_id,
            message_id: Some(id),
        }))
    }

    /// A persistent session in a cluster: tells the cluster store that inbound QoS 2
    /// packet `packet_id` is free again (released, or never routed).
    pub(super) fn forget_inbound_qos2(&self, packet_id: u16) {
        if self.session.mailbox.durability().is_stored() {
            self.broker.session_changed(SessionChange::InboundQos2 {
                client_id: self.client_id.clone(),
                epoch: self.epoch,
                packet_id,
                message_id: None,
            });
        }
    }

    /// Inbound QoS 2 packet `packet_id` ends unacknowledged (v5: a failed PUBREC): it
    /// is free again here and in the cluster store, so a new message under that id is
    /// not taken for the old one.
    fn abandon_qos2(&mut self, packet_id: u16) {
        self.session.release_qos2(packet_id);
        self.forget_inbound_qos2(packet_id);
    }

    /// The deferred QoS 2 PUBLISH's packet id is stored (or could not be): route it.
    pub(super) fn route_deferred(&mut self, stored: Result<(), ClusterError>) -> Option<Exit> {
        let d = self.deferred.take()?;
        match stored {
            Ok(()) => self.route_and_ack(d.msg, QoS::ExactlyOnce, d.packet_id),
            Err(ClusterError::TakenOver) => {
                // This node was declared dead while frozen and another node owns the
                // session now [MQTT-3.1.4-3]: what this connection still sends is not
                // routed; the client resends it there.
                self.session.release_qos2(d.packet_id);
                Some(Exit::Server(ReasonCode::SessionTakenOver))
            }
            Err(e) => {
                // Nothing was routed; the id may have been stored, its answer lost.
                self.abandon_qos2(d.packet_id);
                let (qos, reason) = (QoS::ExactlyOnce, ReasonCode::Success);
                self.ack_inbound(qos, d.packet_id, reason, None, Some(e), None)
            }
        }
    }

    /// Routes an accepted message and queues its acknowledgement.
    fn route_and_ack(&mut self, msg: Arc<Message>, qos: QoS, packet_id: u16) -> Option<Exit> {
        let mut blocked = Vec::new();
        // A persistent session's QoS 2 PUBLISH: its packet id is stored; the store
        // records with the message's journal entries that it was routed.
        let inbound = (qos == QoS::ExactlyOnce && self.session.mailbox.durability().is_stored())
            .then(|| InboundRouted {
                client_id: self.client_id.clone(),
                packet_id,
            });
        let published = ROUTING
            .with_borrow_mut(|scratch| self.broker.publish(&msg, scratch, &mut blocked, inbound));
        for b in blocked {
            if Arc::ptr_eq(&b.mailbox, &self.session.mailbox) {
                // Our own queue drains only when we go on: waiting would deadlock.
                self.broker.overflow(&b.mailbox, b.delivery);
            } else {
                self.blocked.push_back(b);
            }
        }
        if published.throttle {
            // The bus backlog toward another node is full: this message is queued
            // (one past the bound), and nothing more is read until it is written.
            self.throttle.get_or_insert_with(Default::default).bus_wait = true;
            let m = &self.broker.metrics;
            Metrics::add(&m.throttled_bus_backlog, 1);
            log_throttled(m);
        }
        if !self.blocked.is_empty() {
            let wait = self.broker.config.limits.queue_full_wait_ms;
            self.blocked_until = Instant::now() + std::time::Duration::from_millis(wait);
        }
        let reason = if published.routed.delivered == 0 && !published.forwarded {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        let message_id = (qos == QoS::ExactlyOnce)
            .then(|| msg.id.get().cloned())
            .flatten();
        self.ack_inbound(qos, packet_id, reason, published.durable, None, message_id)
    }

    /// Queues the acknowledgement of an inbound PUBLISH: sent once `durable` (its
    /// remote and journaled copies) resolves; `failed` when it was not routed because
    /// its packet id could not be stored.
    fn ack_inbound(
        &mut self,
        qos: QoS,
        packet_id: u16,
        reason: ReasonCode,
        durable: Option<Durable>,
        failed: Option<ClusterError>,
        message_id: Option<Box<str>>,
    ) -> Option<Exit> {
        if qos == QoS::AtMostOnce {
            return None;
        }
        let qos2 = qos == QoS::ExactlyOnce;
        if reason.is_error() && qos2 && self.protocol.is_v5() {
            // A failed PUBREC ends the exchange: no PUBREL will follow.
            self.session.release_qos2(packet_id);
        }
        // 3.1.1 has no way to say "refused": the message is dropped and acknowledged.
        self.acks.push_back(PendingAck {
            kind: if qos2 { AckKind::Rec } else { AckKind::Ack },
            packet_id,
            reason,
            message_id: durable.as_ref().and(message_id),
            durable,
            failed,
            held: !self.blocked.is_empty(),
        });
        self.flush_acks()
    }

    /// Sends the acknowledgements at the front of the queue whose messages are durable,
    /// in the order their PUBLISHes arrived [MQTT-4.6.0-2, MQTT-4.6.0-3].
    pub(super) fn flush_acks(&mut self) -> Option<Exit> {
        while let Some(front) = self.acks.front_mut() {
            if front.held {
                return None;
            }
            let outcome = match &mut front.durable {
                None => front.failed.take().map_or(Ok(()), Err),
                // Not yet: the queue waits for it (acknowledgements go in order).
                Some(durable) => durable.try_outcome()?,
            };
            let ack = self.acks.pop_front()?;
            let reason = match outcome {
                Ok(()) => ack.reason,
                Err(_) if ack.kind == AckKind::Rel => ack.reason,
                Err(e) => {
                    // An outage or a full store was logged once where it began.
                    if e.is_outage() || matches!(e, ClusterError::Full(_)) {
                        tracing::debug!(client_id = %self.client_id, error = %e, "message not acknowledged: cluster copies not stored");
                    } else {
                        tracing::warn!(client_id = %self.client_id, error = %e, "message not acknowledged: cluster copies not stored");
                    }
                    if !self.protocol.is_v5() {
                        // 3.1.1 cannot refuse: close, so the client resends it later
                        // (same packet id, DUP) [MQTT-4.4.0-1]. A QoS 2 copy may have
                        // reached some subscribers: the resend is routed again under
                        // the same message id, so those are not stored twice and the
                        // others get theirs. (Left as "received", the resend was taken
                        // for a duplicate and acknowledged unrouted: lost.)
                        if ack.kind == AckKind::Rec {
                            match ack.message_id {
                                Some(id) => self.session.unsettle_qos2(ack.packet_id, id),
                                None => self.abandon_qos2(ack.packet_id),
                            }
                        }
                        return Some(Exit::Server(ReasonCode::ServerUnavailable));
                    }
                    if ack.kind == AckKind::Rec {
                        self.abandon_qos2(ack.packet_id);
                    }
                    match e {
                        // Too many deliveries wait for Redis: a quota, try later.
                        ClusterError::QueueFull(_) | ClusterError::Full(_) => {
                            ReasonCode::QuotaExceeded
                        }
                        _ => ReasonCode::UnspecifiedError,
                    }
                }
            };
            let kind = match ack.kind {
                AckKind::Ack => Packet::PubAck,
                AckKind::Rec => Packet::PubRec,
                AckKind::Rel => Packet::PubRel,
            };
            self.ack(kind, ack.packet_id, reason);
        }
        None
    }

    /// Moves blocked deliveries into queues that have room; past the deadline, the
    /// overflow policy takes the rest. When none is left, the held acknowledgement goes.
    pub(super) fn place_blocked(&mut self) -> Option<Exit> {
        let expired = Instant::now() >= self.blocked_until;
        while let Some(b) = self.blocked.pop_front() {
            match b.mailbox.try_push(b.delivery) {
                Ok(()) => {}
                Err(d) if expired => self.broker.overflow(&b.mailbox, d),
                Err(d) => {
                    self.blocked.push_front(crate::router::Blocked {
                        mailbox: b.mailbox,
                        delivery: d,
                    });
                    return None;
                }
            }
        }
        for ack in self.acks.iter_mut() {
            ack.held = false;
        }
        self.flush_acks()
    }

    /// PUBREL from the client: the inbound QoS 2 exchange completes.
    pub(super) fn on_pubrel(&mut self, a: PubResp) -> Option<Exit> {
        let reason = if self.session.release_qos2(a.packet_id) {
            self.forget_inbound_qos2(a.packet_id);
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.ack(Packet::PubComp, a.packet_id, reason);
        None
    }

    /// PUBREC from the client for one of our QoS 2 deliveries.
    pub(super) fn on_pubrec(&mut self, a: PubResp) -> Option<Exit> {
        if self.session.pubrec(a.packet_id, a.reason.is_error()) {
            let updates = std::mem::take(&mut self.session.journal_updates);
            if updates.is_empty() {
                self.ack(Packet::PubRel, a.packet_id, ReasonCode::Success);
                return None;
            }
            // A journaled delivery: PUBREL only once "received" is stored, so that
            // after a crash the session resumes with PUBREL, never with the PUBLISH
            // again (which the client, done with this id, would take as new).
            let stored = self.broker.session_changed_stored(SessionChange::Journal {
                client_id: self.client_id.clone(),
                updates,
            });
            self.acks.push_back(PendingAck {
                kind: AckKind::Rel,
                packet_id: a.packet_id,
                reason: ReasonCode::Success,
                durable: Some(Durable::stored(stored)),
                failed: None,
                message_id: None,
                held: false,
            });
            return self.flush_acks();
        } else if !a.reason.is_error() {
            self.ack(
                Packet::PubRel,
                a.packet_id,
                ReasonCode::PacketIdentifierNotFound,
            );
        }
        self.sync_journal();
        None
    }

    /// Queues an acknowledgement; reason codes exist only in v5.
    fn ack(&mut self, kind: fn(PubResp) -> Packet, packet_id: u16, reason: ReasonCode) {
        let reason = if self.protocol.is_v5() {
            reason
        } else {
            ReasonCode::Success
        };
        let packet = kind(PubResp {
            packet_id,
            reason,
            properties: Default::default(),
        });
        self.conn.tx.queue(&packet, self.protocol);
    }

    /// Whether another QoS 1/2 delivery may be sent now.
    pub(super) fn window_open(&self) -> bool {
        self.session.inflight() < self.send_window
    }

    /// Moves deliveries from the mailbox to the socket's write buffer while the
    /// in-flight window and the write buffer allow.
    pub(super) fn pump(&mut self) {
        while self.conn.tx.wbuf.len() < WRITE_HIGH_WATER {
            if self.pending.is_empty() {
                // Take only what the window lets us send now: the rest stays in the
                // mailbox, where the queue bounds apply.
                let room = self.send_window.saturating_sub(self.session.inflight());
                if room == 0 {
                    return;
                }
                self.session
                    .mailbox
                    .drain_into(&mut self.pending, room.min(DRAIN_BATCH));
                if self.pending.is_empty() {
                    return;
                }
            }
            // Order is kept: a QoS 0 message waits behind a QoS 1/2 one that waits for
            // the window.
            let front_qos = self.pending.front().map(|d| d.qos).unwrap_or_default();
            if front_qos != QoS::AtMostOnce && !self.window_open() {
                return;
            }
            let Some(d) = self.pending.pop_front() else {
                return;
            };
            self.send(d);
        }
    }

    /// Encodes one delivery, or drops it if it expired or is too large for the client.
    fn send(&mut self, d: Delivery) {
        let now = Instant::now();
        let metrics = &self.broker.metrics;
        if d.msg.is_expired(now) {
            // [MQTT-3.3.2-5] Not delivered after its expiry.
            Metrics::add(&metrics.expired_dropped, 1);
            return;
        }
        let v5 = self.protocol.is_v5();
        let topic = d.msg.topic();
        let out = self.aliases.as_ref().map(|a| &a.outbound);
        let (topic_alias, new_alias) = match out.and_then(|o| o.get(topic)) {
            Some(&a) => (Some(a), false),
            None if v5 && usize::from(self.alias_out_max) > out.map_or(0, |o| o.len()) => {
                (Some(out.map_or(0, |o| o.len()) as u16 + 1), true)
            }
            None => (None, false),
        };
        let expiry = d.msg.remaining_expiry(now);
        let send_topic = topic_alias.is_none() || new_alias;
        // The packet id's value does not change the size, only its presence.
        let placeholder_id = (d.qos != QoS::AtMostOnce).then_some(1);
        if d.msg.publish.encoded_len(
            self.protocol,
            &wire_for(&d, v5, placeholder_id, topic_alias, send_topic, expiry),
        ) > self.max_out
        {
            // [MQTT-3.1.2-25] Never send more than the client's Maximum Packet Size:
            // the message is discarded as if delivered.
            Metrics::add(&metrics.oversize_dropped, 1);
            tracing::debug!(client_id = %self.client_id, topic, "message exceeds the client's maximum packet size; dropped");
            return;
        }
        if new_alias {
            if let Some(a) = topic_alias {
                let aliases = self.aliases.get_or_insert_default();
                aliases.outbound.insert(Arc::from(topic), a);
            }
        }
        // Retained messages sent on SUBSCRIBE (RETAIN set) may be hours old: they
        // would say nothing of this node's latency.
        metrics.sent(d.qos);
        if !d.retain {
            metrics
                .delivery_latency
                .observe(now.saturating_duration_since(d.msg.received));
        }
        if d.qos == QoS::AtMostOnce {
            d.msg.publish.encode(
                self.protocol,
                &wire_for(&d, v5, None, topic_alias, send_topic, expiry),
                &mut self.conn.tx.wbuf,
            );
            return;
        }
        let Some(id) = self.session.start_outbound(d) else {
            return;
        };
        // A delivery restored from disk may have been sent before the process
        // stopped: "might be a re-delivery" is what DUP says [MQTT-3.3.1-1].
        let dup = self.session.take_maybe_sent(id);
        if let Some(d) = self.session.outbound(id) {
            let mut wire = wire_for(d, v5, Some(id), topic_alias, send_topic, expiry);
            wire.dup = dup;
            d.msg
                .publish
                .encode(self.protocol, &wire, &mut self.conn.tx.wbuf);
        }
    }
}

/// One warning a second at most while publishers are throttled, with the totals by
/// reason (never a line per throttled packet).
fn log_throttled(m: &Metrics) {
    if let Some(n) = m.throttle_log.due(1) {
        tracing::warn!(
            throttled = n,
            message_rate = Metrics::get(&m.throttled_message_rate),
            byte_rate = Metrics::get(&m.throttled_byte_rate),
            bus_backlog = Metrics::get(&m.throttled_bus_backlog),
            "publishers throttled (socket reads paused) since the last line; totals by reason follow (limits.max_publish_rate, limits.max_publish_bytes_rate, cluster.forward_qos12_backlog)"
        );
    }
}

/// The per-delivery part of an outgoing PUBLISH.
fn wire_for(
    d: &Delivery,
    v5: bool,
    packet_id: Option<u16>,
    topic_alias: Option<u16>,
    send_topic: bool,
    message_expiry: Option<u32>,
) -> Wire<'_> {
    Wire {
        qos: d.qos,
        retain: d.retain,
        dup: false,
        packet_id,
        topic_alias,
        send_topic,
        subscription_ids: if v5 { &d.sub_ids } else { &[] },
        message_expiry,
    }
}
