//! A session's protocol state, free of I/O: packet identifiers, the outbound in-flight
//! window (QoS 1/2 deliveries awaiting acknowledgement), inbound QoS 2 messages awaiting
//! PUBREL, and the subscriptions the session holds.
//!
//! A connection owns its session while connected and parks it in the registry when it
//! goes away, so a persistent session resumes with its in-flight messages intact.

use std::collections::{btree_map, BTreeMap, BTreeSet};
use std::sync::Arc;

use mqtt::{QoS, SubscriptionOptions, Will};

use crate::mailbox::{Delivery, Journaled, Mailbox};

/// One subscription as the session remembers it (the router holds the live copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// A will waiting for its connection to end.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The client it belongs to.
    pub client_id: Arc<str>,
    /// Its user name (the ACL is checked when the will is published).
    pub username: Option<Arc<str>>,
    /// The will as sent in CONNECT.
    pub will: Will,
}

impl PendingWill {
    /// The PUBLISH the will becomes: its topic, payload, QoS, retain flag and
    /// message properties (the Will Delay Interval is not one of them).
    pub fn to_publish(&self) -> mqtt::Publish {
        let w = &self.will;
        let p = &w.properties;
        mqtt::Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic.clone(),
            packet_id: None,
            properties: mqtt::PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                content_type: p.content_type.clone(),
                ..Default::default()
            }
            .into(),
            payload: w.payload.clone(),
        }
    }
}

impl PendingWill {
    /// The will a PUBLISH made by [`PendingWill::to_publish`] came from, with its
    /// Will Delay Interval (0: none): how the cluster and the disk store read a
    /// stored will back.
    pub fn will_from_publish(p: mqtt::Publish, delay: u32) -> Will {
        let pp = p.properties.into_inner();
        Will {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: mqtt::WillProperties {
                will_delay_interval: (delay > 0).then_some(delay),
                payload_format_indicator: pp.payload_format_indicator,
                message_expiry_interval: pp.message_expiry_interval,
                content_type: pp.content_type,
                response_topic: pp.response_topic,
                correlation_data: pp.correlation_data,
                user_properties: pp.user_properties,
            },
        }
    }
}

/// A session as it moves between nodes.
#[derive(Debug, Default)]
pub struct SessionSnapshot {
    /// Session Expiry Interval in force.
    pub expiry_secs: u32,
    /// Subscriptions by full filter.
    pub subscriptions: Vec<(String, Subscription)>,
    /// Unacknowledged outbound messages, in send order.
    pub inflight: Vec<(u16, Outbound)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Deliveries queued, oldest first.
    pub queued: Vec<Delivery>,
    /// Inbound QoS 2 packet ids with their message ids, when the session comes from
    /// the cluster store (its node died): see [`Session::take_unsettled`].
    pub unsettled: Vec<(u16, Box<str>)>,
    /// The queued deliveries may have been sent before (read back from disk after a
    /// restart): each goes out with DUP set, under its reserved packet id.
    pub maybe_sent: bool,
}

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; waiting for PUBCOMP. Carries the delivery's journal key, if it
    /// was journaled.
    Released(Option<Box<str>>),
}

/// A change to a session's journal in the cluster store, from the client's
/// acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalUpdate {
    /// The delivery is complete (PUBACK, PUBCOMP, or a failed PUBREC): forget it.
    Done(Box<str>),
    /// PUBREC arrived: after a move to another node, send PUBREL, not the PUBLISH.
    Received(Journaled),
}

/// The state of one session.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Where deliveries for this session are queued.
    pub mailbox: Arc<Mailbox>,
    /// Subscriptions by full filter (`$share/...` included). B-trees here and below:
    /// an empty one is half the size of an empty hash map, and every idle
    /// connection has a session; a session holds few entries.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Session Expiry Interval in force, seconds (`u32::MAX` = never).
    pub expiry_secs: u32,
    /// Outbound QoS 1/2 deliveries by packet id, in send order (ids are allocated
    /// increasing and wrap, so resend order is kept separately).
    outbound: BTreeMap<u16, Outbound>,
    order: Vec<u16>,
    /// Inbound QoS 2 packet ids received but not yet released.
    inbound_qos2: BTreeSet<u16>,
    /// Inbound QoS 2 packet ids restored from the cluster store after the session's
    /// node died, with their message ids: whether every copy was stored is unknown.
    unsettled: Vec<(u16, Box<str>)>,
    /// Journal changes not yet handed to the cluster.
    pub journal_updates: Vec<JournalUpdate>,
    /// Packet ids reserved for queued deliveries that may have been sent before this
    /// process started (see [`SessionSnapshot::maybe_sent`]).
    maybe_sent: BTreeSet<u16>,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, mailbox: Arc<Mailbox>, expiry_secs: u32) -> Session {
        Session {
            client_id,
            mailbox,
            subscriptions: BTreeMap::new(),
            expiry_secs,
            outbound: BTreeMap::new(),
            order: Vec::new(),
            inbound_qos2: BTreeSet::new(),
            unsettled: Vec::new(),
            journal_updates: Vec::new(),
            maybe_sent: BTreeSet::new(),
        }
    }

    /// Queues deliveries the store kept on disk only while the session was offline
    /// (see [`crate::store::ClusterClaim::spilled`]), in arrival order with what is
    /// queued: they may have been sent before a restart, so they go out with DUP set.
    pub fn queue_spilled(&mut self, spilled: Vec<Delivery>) {
        let ids = spilled.iter().filter_map(|d| d.journal.as_ref());
        self.maybe_sent.extend(ids.map(|j| j.packet_id));
        let last = spilled
            .iter()
            .filter_map(|d| d.journal.as_ref().map(|j| j.packet_id))
            .max();
        // Deliveries journaled since the claim may be queued already: each spilled
        // one takes its place by arrival.
        self.mailbox.merge_journaled(spilled);
        if let Some(last) = last {
            self.mailbox.packet_ids_after(last);
        }
    }

    /// Whether the delivery just started under `id` may have been sent before (see
    /// [`SessionSnapshot::maybe_sent`]); asked once per id.
    pub fn take_maybe_sent(&mut self, id: u16) -> bool {
        !self.maybe_sent.is_empty() && self.maybe_sent.remove(&id)
    }

    /// Number of outbound messages awaiting acknowledgement.
    pub fn inflight(&self) -> usize {
        self.outbound.len()
    }

    /// Allocates a packet id not in use and records `delivery` as sent under it.
    /// `None` when all 65,535 ids are in use.
    pub fn start_outbound(&mut self, delivery: Delivery) -> Option<u16> {
        if self.outbound.len() >= usize::from(u16::MAX) {
            return None;
        }
        // A journaled delivery brings the id reserved for it (unless, rarely, that
        // id is still in use after wrapping around).
        let mut reserved = delivery.journal.as_ref().map(|j| j.packet_id);
        loop {
            let id = reserved
                .take()
                .unwrap_or_else(|| self.mailbox.reserve_packet_id());
            if let btree_map::Entry::Vacant(slot) = self.outbound.entry(id) {
                slot.insert(Outbound::Published(delivery));
                self.order.push(id);
                self.mailbox.set_inflight(self.outbound.len());
                return Some(id);
            }
        }
    }

    /// The delivery sent under `id` and not yet acknowledged, if any.
    pub fn outbound(&self, id: u16) -> Option<&Delivery> {
        match self.outbound.get(&id) {
            Some(Outbound::Published(d)) => Some(d),
            _ => None,
        }
    }

    /// PUBACK for `id`: true if it completed a QoS 1 delivery.
    pub fn puback(&mut self, id: u16) -> bool {
        match self.outbound.get(&id) {
            Some(Outbound::Published(d)) if d.qos == QoS::AtLeastOnce => {
                self.finish(id);
                true
            }
            _ => false,
        }
    }

    /// PUBREC for `id`: true if a QoS 2 delivery moves on to PUBREL. With `failed`
    /// (a reason code ≥ 0x80) the delivery ends here (v5 §4.3.3: no PUBREL after an
    /// error PUBREC).
    pub fn pubrec(&mut self, id: u16, failed: bool) -> bool {
        match self.outbound.get(&id) {
            Some(Outbound::Published(d)) if d.qos == QoS::ExactlyOnce => {
                if failed {
                    self.finish(id);
                    false
                } else {
                    let key = d.journal.as_ref().map(|j| {
                        self.journal_updates
                            .push(JournalUpdate::Received(Journaled {
                                key: j.key.clone(),
                                packet_id: id,
                            }));
                        j.key.clone()
                    });
                    self.outbound.insert(id, Outbound::Released(key));
                    true
                }
            }
            // A repeated PUBREC after our PUBREL: answer with PUBREL again.
            Some(Outbound::Released(_)) => !failed,
            _ => false,
        }
    }

    /// PUBCOMP for `id`: true if it completed a QoS 2 delivery.
    pub fn pubcomp(&mut self, id: u16) -> bool {
        if matches!(self.outbound.get(&id), Some(Outbound::Released(_))) {
            self.finish(id);
            true
        } else {
            false
        }
    }

    fn finish(&mut self, id: u16) {
        let key = match self.outbound.remove(&id) {
            Some(Outbound::Published(d)) => d.journal.map(|j| j.key),
            Some(Outbound::Released(key)) => key,
            None => None,
        };
        if let Some(key) = key {
            self.journal_updates.push(JournalUpdate::Done(key));
        }
        if let Some(pos) = self.order.iter().position(|&x| x == id) {
            self.order.remove(pos);
        }
        self.mailbox.set_inflight(self.outbound.len());
    }

    /// Every outbound message in send order, for resending on session resume
    /// [MQTT-4.4.0-1]: PUBLISHes again with DUP set, PUBRELs again.
    pub fn pending_outbound(&self) -> impl Iterator<Item = (u16, &Outbound)> {
        self.order.iter().map(|id| (*id, &self.outbound[id]))
    }

    /// An inbound QoS 2 PUBLISH with `id` arrived: true if it is new (route it), false
    /// if it is a redelivery of one not yet released (do not route again)
    /// [MQTT-4.3.3-9].
    pub fn receive_qos2(&mut self, id: u16) -> bool {
        self.inbound_qos2.insert(id)
    }

    /// The message id of an inbound QoS 2 packet id restored from the cluster store
    /// (see `unsettled`), taken: the resent PUBLISH is routed again under it.
    pub fn take_unsettled(&mut self, id: u16) -> Option<Box<str>> {
        let at = self.unsettled.iter().position(|(p, _)| *p == id)?;
        Some(self.unsettled.swap_remove(at).1)
    }

    /// Inbound QoS 2 packet `id` was routed as message `message_id` but not
    /// acknowledged: its resend is routed again under that id (see `unsettled`).
    pub fn unsettle_qos2(&mut self, id: u16, message_id: Box<str>) {
        self.inbound_qos2.insert(id);
        self.take_unsettled(id);
        self.unsettled.push((id, message_id));
    }

    /// PUBREL for `id`: true if it was pending.
    pub fn release_qos2(&mut self, id: u16) -> bool {
        self.take_unsettled(id);
        self.inbound_qos2.remove(&id)
    }

    /// Whether inbound QoS 2 packet `id` was received and awaits its PUBREL.
    pub fn awaits_release(&self, id: u16) -> bool {
        self.inbound_qos2.contains(&id)
    }

    /// Inbound QoS 2 messages awaiting PUBREL (counted against Receive Maximum).
    pub fn inbound_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// Takes everything a session carries to another node, leaving it empty: its
    /// subscriptions, in-flight messages (in send order), inbound QoS 2 ids, and
    /// queued deliveries.
    pub fn take_snapshot(&mut self) -> SessionSnapshot {
        let mut queued = Vec::new();
        self.mailbox.drain_into(&mut queued, usize::MAX);
        let order = std::mem::take(&mut self.order);
        let mut outbound = std::mem::take(&mut self.outbound);
        self.mailbox.set_inflight(0);
        SessionSnapshot {
            expiry_secs: self.expiry_secs,
            subscriptions: std::mem::take(&mut self.subscriptions)
                .into_iter()
                .collect(),
            inflight: order
                .into_iter()
                .filter_map(|id| outbound.remove(&id).map(|o| (id, o)))
                .collect(),
            inbound_qos2: std::mem::take(&mut self.inbound_qos2).into_iter().collect(),
            queued,
            unsettled: std::mem::take(&mut self.unsettled),
            // Only a session read back from disk has any; it never moves nodes.
            maybe_sent: false,
        }
    }

    /// Restores what [`Session::take_snapshot`] took (on another node). The caller
    /// re-subscribes the subscriptions.
    pub fn restore(&mut self, snapshot: SessionSnapshot) {
        let mut last = 0;
        for (id, o) in snapshot.inflight {
            self.outbound.insert(id, o);
            self.order.push(id);
            last = id;
        }
        self.mailbox.set_inflight(self.outbound.len());
        for d in &snapshot.queued {
            if let Some(j) = &d.journal {
                last = last.max(j.packet_id);
            }
        }
        if last > 0 {
            self.mailbox.packet_ids_after(last);
        }
        self.inbound_qos2.extend(snapshot.inbound_qos2);
        for (id, msg) in snapshot.unsettled {
            self.inbound_qos2.insert(id);
            self.unsettled.push((id, msg));
        }
        if snapshot.maybe_sent {
            let ids = snapshot.queued.iter().filter_map(|d| d.journal.as_ref());
            self.maybe_sent.extend(ids.map(|j| j.packet_id));
        }
        for d in snapshot.queued {
            // Restored in order; a queue that shrank in configuration drops the
            // oldest as its policy says.
            self.mailbox.push(d);
        }
        self.subscriptions.extend(snapshot.subscriptions);
    }

    /// Everything of this session a Redis that lost its data needs back: its
    /// subscriptions and its journaled deliveries (in flight, then `extra` — taken
    /// from the mailbox but not sent yet — then queued), with their state.
    pub fn restore_change(
        &self,
        epoch: u64,
        will: Option<&PendingWill>,
        extra: &[Delivery],
    ) -> crate::cluster::RestoredSession {
        let mut journal: Vec<(u16, Outbound)> = self
            .pending_outbound()
            .filter(|(_, o)| match o {
                Outbound::Published(d) => d.journal.is_some(),
                Outbound::Released(key) => key.is_some(),
            })
            .map(|(id, o)| match o {
                // The id it was sent under is the one to keep.
                Outbound::Published(d) => {
                    let mut d = d.clone();
                    if let Some(j) = d.journal.as_mut() {
                        j.packet_id = id;
                    }
                    (id, Outbound::Published(d))
                }
                Outbound::Released(key) => (id, Outbound::Released(key.clone())),
            })
            .collect();
        let mut rest = extra.to_vec();
        self.mailbox.peek_into(&mut rest);
        journal.extend(rest.into_iter().filter_map(|d| {
            let id = d.journal.as_ref()?.packet_id;
            Some((id, Outbound::Published(d)))
        }));
        crate::cluster::RestoredSession {
            client_id: self.client_id.clone(),
            epoch,
            expiry_secs: self.expiry_secs,
            will: will.cloned(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), s.clone()))
                .collect(),
            journal,
        }
    }

    /// The journal keys of the in-flight deliveries.
    pub fn inflight_journal_keys(&self) -> impl Iterator<Item = &str> {
        self.outbound.values().filter_map(|o| match o {
            Outbound::Published(d) => d.journal.as_ref().map(|j| &*j.key),
            Outbound::Released(key) => key.as_deref(),
        })
    }

    /// Forgets all in-flight state, both directions.
    pub fn clear_inflight(&mut self) {
        self.outbound.clear();
        self.mailbox.set_inflight(0);
        self.order.clear();
        self.inbound_qos2.clear();
        self.unsettled.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueOverflow;
    use crate::mailbox::MailboxLimits;
    use crate::message::Message;
    use mqtt::Publish;
    use std::time::Instant;

    fn session() -> Session {
        let mb = Mailbox::new(MailboxLimits {
            max_messages: 10,
            max_bytes: 1000,
            overflow: QueueOverflow::DropOldest,
        });
        Session::new("c".into(), mb, 0)
    }

    fn delivery(qos: QoS) -> Delivery {
        let p = Publish {
            topic: "t".into(),
            qos,
            packet_id: Some(1),
            ..Default::default()
        };
        Delivery {
            msg: Arc::new(Message::new(&p, None, Instant::now())),
            qos,
            retain: false,
            sub_ids: vec![],
            journal: None,
        }
    }

    #[test]
    fn qos1_flow() {
        let mut s = session();
        let id = s.start_outbound(delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!(s.inflight(), 1);
        assert!(!s.pubrec(id, false), "PUBREC is not an answer to QoS 1");
        assert!(s.puback(id));
        assert!(!s.puback(id), "a second PUBACK finds nothing");
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn qos2_flow_and_resend_order() {
        let mut s = session();
        let a = s.start_outbound(delivery(QoS::ExactlyOnce)).unwrap();
        let b = s.start_outbound(delivery(QoS::AtLeastOnce)).unwrap();
        assert!(s.pubrec(a, false));
        let pending: Vec<_> = s
            .pending_outbound()
            .map(|(id, o)| (id, matches!(o, Outbound::Released(_))))
            .collect();
        assert_eq!(pending, vec![(a, true), (b, false)]);
        assert!(!s.puback(a));
        assert!(s.pubcomp(a));
        assert!(s.puback(b));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn ids_skip_those_in_use_and_never_zero() {
        let mut s = session();
        s.mailbox.packet_ids_after(u16::MAX - 1);
        let a = s.start_outbound(delivery(QoS::AtLeastOnce)).unwrap();
        let b = s.start_outbound(delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!((a, b), (u16::MAX, 1));
        // Wrapped around to an id still in use: skipped.
        s.mailbox.packet_ids_after(u16::MAX);
        let c = s.start_outbound(delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!(c, 2);
    }

    #[test]
    fn journaled_delivery_keeps_its_reserved_id_and_reports_acks() {
        let mut s = session();
        let mut d = delivery(QoS::ExactlyOnce);
        d.journal = Some(Box::new(Journaled {
            key: "k1".into(),
            packet_id: 40,
        }));
        let id = s.start_outbound(d).unwrap();
        assert_eq!(id, 40, "the id reserved at journaling is the one sent");
        assert!(s.pubrec(id, false));
        assert!(s.pubcomp(id));
        assert_eq!(
            s.journal_updates,
            vec![
                JournalUpdate::Received(Journaled {
                    key: "k1".into(),
                    packet_id: 40
                }),
                JournalUpdate::Done("k1".into())
            ]
        );
    }

    #[test]
    fn inbound_qos2_is_routed_once() {
        let mut s = session();
        assert!(s.receive_qos2(7));
        assert!(
            !s.receive_qos2(7),
            "redelivery before PUBREL is not routed again"
        );
        assert!(s.release_qos2(7));
        assert!(!s.release_qos2(7));
    }
}
