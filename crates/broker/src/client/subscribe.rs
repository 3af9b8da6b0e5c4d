//! SUBSCRIBE and UNSUBSCRIBE: validation, ACL, the subscription index, and the
//! retained messages a new subscription receives.

use std::time::Instant;

use mqtt::topic::{parse_shared, valid_topic_filter};
use mqtt::{
    Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe,
};
use tokio::io::AsyncWrite;

use crate::connection::ReadSide;

use super::{Client, Exit};
use crate::cluster::SessionChange;
use crate::mailbox::Delivery;
use crate::metrics::Metrics;
use crate::router::Subscriber;
use crate::session::Subscription;

impl<R: ReadSide, W: AsyncWrite + Unpin> Client<R, W> {
    /// SUBSCRIBE: one reason code per filter, then retained messages [MQTT-3.8.4-1].
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Option<Exit> {
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            match self.subscribe_one(f, s.subscription_identifier, &mut retained) {
                Ok(code) => reasons.push(code),
                Err(exit) => return Some(exit),
            }
        }
        let ack = SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Default::default(),
        };
        self.conn.tx.queue(&Packet::SubAck(ack), self.protocol);
        // Queued behind the SUBACK, so they follow it on the wire.
        for d in retained {
            self.session.mailbox.push(d);
        }
        None
    }

    fn subscribe_one(
        &mut self,
        f: &SubscribeFilter,
        id: Option<u32>,
        retained: &mut Vec<Delivery>,
    ) -> Result<ReasonCode, Exit> {
        let (shared, inner) = match parse_shared(&f.filter) {
            Err(()) => return Ok(ReasonCode::TopicFilterInvalid),
            Ok(Some((_, inner))) => (true, inner),
            Ok(None) => (false, f.filter.as_str()),
        };
        if !valid_topic_filter(inner) {
            return Ok(ReasonCode::TopicFilterInvalid);
        }
        // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
        if shared && f.options.no_local {
            return Err(Exit::Server(ReasonCode::ProtocolError));
        }
        let broker = &self.broker;
        if !broker
            .auth
            .can_read(&self.client_id, self.username.as_deref(), inner)
        {
            tracing::debug!(client_id = %self.client_id, filter = %f.filter, "SUBSCRIBE denied by ACL");
            return Ok(ReasonCode::NotAuthorized);
        }
        // `limits.max_subscriptions`: a new filter beyond it is refused, one that
        // replaces an existing subscription is not (3.1.1 encodes 0x97 as 0x80).
        let max = broker.config.limits.max_subscriptions;
        if max > 0
            && self.session.subscriptions.len() >= max
            && !self.session.subscriptions.contains_key(&f.filter)
        {
            let m = &broker.metrics;
            Metrics::add(&m.subscriptions_refused, 1);
            if let Some(n) = m.subscription_log.due(1) {
                tracing::warn!(client_id = %self.client_id, refused = n, max, "SUBSCRIBE filters refused at limits.max_subscriptions (count since the last line)");
            }
            return Ok(ReasonCode::QuotaExceeded);
        }
        let existed = broker.subscribe(
            &f.filter,
            Subscriber {
                client_id: self.client_id.clone(),
                username: self.username.clone(),
                mailbox: self.session.mailbox.clone(),
                options: f.options,
                id,
            },
        );
        let sub = Subscription {
            options: f.options,
            id,
        };
        if self.session.mailbox.durability().is_stored() {
            broker.session_changed(SessionChange::Subscribed {
                client_id: self.client_id.clone(),
                filter: f.filter.clone(),
                sub: sub.clone(),
            });
        }
        self.session.subscriptions.insert(f.filter.clone(), sub);
        // [MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11] Retain Handling; shared
        // subscriptions get no retained messages (v5 §4.8.2).
        let send_retained = !shared
            && match f.options.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            for msg in broker.retained.matching(inner, Instant::now()) {
                if broker.auth.has_acl()
                    && !broker
                        .auth
                        .can_read(&self.client_id, self.username.as_deref(), msg.topic())
                {
                    continue;
                }
                retained.push(Delivery {
                    qos: msg.qos.min(f.options.qos),
                    // [MQTT-3.3.1-8] A retained message sent for a new subscription
                    // carries RETAIN = 1.
                    retain: true,
                    sub_ids: id.into_iter().collect(),
                    msg,
                    journal: None,
                });
            }
        }
        Ok(match f.options.qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        })
    }

    /// UNSUBSCRIBE: one reason code per filter [MQTT-3.10.4-5].
    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Option<Exit> {
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                let existed = self.broker.unsubscribe(f, &self.client_id);
                self.session.subscriptions.remove(f);
                if existed && self.session.mailbox.durability().is_stored() {
                    self.broker.session_changed(SessionChange::Unsubscribed {
                        client_id: self.client_id.clone(),
                        filter: f.clone(),
                    });
                }
                if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Default::default(),
        };
        self.conn.tx.queue(&Packet::UnsubAck(ack), self.protocol);
        None
    }
}
