//! An application message inside the broker: prepared once for fan-out, shared by
//! every subscriber it goes to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt::{Publish, QoS, SharedPublish};

/// `n` as 16 lower-case hex digits, zero-padded, so that the strings sort as the
/// numbers do: the sequence part of message keys (the disk store's journal, the
/// cluster's message ids). Written by hand: `format!` was 4–9 % of the hot paths that
/// name a message per delivery.
pub fn sortable_hex(n: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[(n >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// One PUBLISH as it travels through the broker (from a client, a will, or the
/// retained store). Shared behind an `Arc`: subscribers never copy it.
#[derive(Debug)]
pub struct Message {
    /// Topic, fixed properties and payload, encoded once.
    pub publish: SharedPublish,
    /// QoS the message was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Client id of the publisher, for No Local.
    pub origin: Option<Arc<str>>,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// When the message arrived on this node (from a client, another node or the
    /// store): the start of `astramq_delivery_latency_seconds`.
    pub received: Instant,
    /// Bytes charged against a session's queue (topic + payload).
    pub size: usize,
    /// The message's identity in the cluster, given when it first needs one (it is
    /// forwarded or stored): it names the message's entry in every session's journal,
    /// so that a copy arriving twice (after a crash, a repair) is stored once.
    pub id: std::sync::OnceLock<Box<str>>,
}

impl Message {
    /// A message from a decoded PUBLISH (topic already resolved from any alias).
    pub fn new(publish: &Publish, origin: Option<Arc<str>>, now: Instant) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        Message {
            publish: SharedPublish::new(publish),
            qos: publish.qos,
            retain: publish.retain,
            origin,
            expires_at,
            received: now,
            size: publish.topic.len() + publish.payload.len(),
            id: std::sync::OnceLock::new(),
        }
    }

    /// A message from a decoded PUBLISH taken by value: nothing is copied. The
    /// caller validated the topic and fields (a decoded PUBLISH always fits).
    pub fn from_publish(publish: Publish, origin: Option<Arc<str>>, now: Instant) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let (qos, retain) = (publish.qos, publish.retain);
        let size = publish.topic.len() + publish.payload.len();
        let shared = match SharedPublish::from_publish(publish) {
            Ok(s) => s,
            // Unreachable for a decoded PUBLISH (fields are at most 65,535 bytes).
            Err(e) => panic!("PUBLISH field too long: {e}"),
        };
        Message {
            publish: shared,
            qos,
            retain,
            origin,
            expires_at,
            received: now,
            size,
            id: std::sync::OnceLock::new(),
        }
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        self.publish.topic()
    }

    /// Whether the message expired by `now` [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The Message Expiry Interval to forward: what is left of it [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            // Round up, so a message with time left never goes out as "0 seconds".
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.min(u64::from(u32::MAX)) as u32
        })
    }

    /// [`Message::remaining_expiry`] now, reading the clock only for a message that
    /// expires (most do not; a clock read per forwarded message was 0.7 % of a
    /// cross-node profile).
    pub fn remaining_expiry_now(&self) -> Option<u32> {
        self.expires_at?;
        self.remaining_expiry(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry: Option<u32>, now: Instant) -> Message {
        let mut p = Publish {
            topic: "t".into(),
            ..Publish::default()
        };
        p.properties.message_expiry_interval = expiry;
        Message::new(&p, None, now)
    }

    #[test]
    fn sortable_hex_is_zero_padded_lower_case_hex_in_number_order() {
        for n in [0, 1, 0xab, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(sortable_hex(n).as_slice(), format!("{n:016x}").as_bytes());
        }
        assert!(sortable_hex(0xff) < sortable_hex(0x100));
    }

    /// What is left of the expiry, rounded up [MQTT-3.3.2-6]; none without one.
    #[test]
    fn remaining_expiry_now_is_what_is_left_or_none() {
        let now = Instant::now();
        assert_eq!(message(None, now).remaining_expiry_now(), None);
        let left = message(Some(60), now).remaining_expiry_now();
        assert!(matches!(left, Some(59..=60)), "{left:?}");
        let past = message(Some(1), now - Duration::from_secs(5));
        assert_eq!(past.remaining_expiry_now(), Some(0));
        assert_eq!(
            message(Some(60), now).remaining_expiry(now + Duration::from_millis(500)),
            Some(60),
            "rounded up"
        );
    }
}
