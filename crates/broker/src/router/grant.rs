//! Who gets a message, one subscription at a time: the rules of MQTT fan-out with
//! no index and no queues. The router applies them to what its index matched; the
//! cluster's dead-node drain applies them to a failed node's sessions, read back
//! from Redis. One set of rules, so both give a session the same copy.

use std::sync::Arc;

use mqtt::{QoS, SubscriptionOptions};

use crate::cluster::LocalGroups;
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::session::Subscription;

/// What one matching subscription gives a message: the copy's QoS, RETAIN flag and
/// subscription identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The message's QoS capped at the subscription's [MQTT-3.8.4-8].
    pub qos: QoS,
    /// RETAIN as sent: kept only with Retain As Published [MQTT-3.3.1-12,
    /// MQTT-3.3.1-13].
    pub retain: bool,
    /// The subscription identifiers to send [MQTT-3.3.4-3].
    pub sub_ids: Vec<u32>,
}

impl Grant {
    /// What the subscription of `client_id` with `options` and `id`, whose filter
    /// matches `msg`, gives it; `None` when No Local keeps the publisher's own
    /// message from it [MQTT-3.8.3-3].
    pub fn of(
        msg: &Message,
        client_id: &str,
        options: &SubscriptionOptions,
        id: Option<u32>,
    ) -> Option<Grant> {
        if options.no_local && msg.origin.as_deref() == Some(client_id) {
            return None;
        }
        Some(Grant {
            qos: msg.qos.min(options.qos),
            retain: options.retain_as_published && msg.retain,
            sub_ids: id.into_iter().collect(),
        })
    }

    /// Folds in another of the same session's overlapping subscriptions: one copy at
    /// the highest QoS, with every identifier [MQTT-3.3.4-2, MQTT-3.3.4-3] (taken
    /// out of `other`).
    pub fn fold(&mut self, other: &mut Grant) {
        self.qos = self.qos.max(other.qos);
        self.retain |= other.retain;
        self.sub_ids.append(&mut other.sub_ids);
    }

    /// The delivery carrying `msg` with this grant.
    pub fn deliver(self, msg: &Arc<Message>) -> Delivery {
        Delivery {
            msg: msg.clone(),
            qos: self.qos,
            retain: self.retain,
            sub_ids: self.sub_ids,
            journal: None,
        }
    }
}

/// What a session holding `subs` (full filters, `$share/...` included) gets of
/// `msg`, as the router would queue it: one copy for its own matching subscriptions
/// (folded), then one per matching shared group's filter in `groups` it is a member
/// of (the groups whose copy this session was chosen to take).
pub fn session_grants(
    client_id: &str,
    subs: &[(String, Subscription)],
    msg: &Message,
    groups: &LocalGroups,
) -> Vec<Grant> {
    let mut own: Option<Grant> = None;
    let mut shared = Vec::new();
    for (filter, sub) in subs {
        match mqtt::topic::parse_shared(filter) {
            Ok(Some((group, inner)))
                if groups.contains(group, inner) && mqtt::topic::matches(inner, msg.topic()) =>
            {
                shared.extend(Grant::of(msg, client_id, &sub.options, sub.id));
            }
            Ok(None) if mqtt::topic::matches(filter, msg.topic()) => {
                if let Some(mut g) = Grant::of(msg, client_id, &sub.options, sub.id) {
                    match own.as_mut() {
                        Some(o) => o.fold(&mut g),
                        None => own = Some(g),
                    }
                }
            }
            _ => {}
        }
    }
    own.into_iter().chain(shared).collect()
}
