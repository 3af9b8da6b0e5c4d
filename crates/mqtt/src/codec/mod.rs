//! Bytes ⇄ packets for MQTT 3.1, 3.1.1 and 5.0.
//!
//! - [`decode`] takes one packet off the front of a buffer, or says more bytes are
//!   needed. It rejects an oversize packet from its fixed header alone, before the
//!   body arrives, and never allocates by an untrusted length before those bytes are
//!   in the buffer.
//! - [`encode`] appends one packet to a buffer.
//! - [`SharedPublish`] encodes a PUBLISH's shared part (properties that do not vary,
//!   payload) once, and writes the per-subscriber header (QoS bits, packet id, topic
//!   alias, subscription identifiers, remaining expiry) for each delivery.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

mod decode;
mod encode;
mod properties;
mod read;
mod shared_publish;
mod write;

#[cfg(test)]
mod tests;

use crate::packet::{Packet, Protocol, Publish, QoS};
use crate::reason::ReasonCode;

/// Why a packet could not be decoded. Each variant maps to the v5 reason code the
/// server sends in DISCONNECT (or CONNACK) before closing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The bytes do not form a valid packet (bad remaining length, bad UTF-8,
    /// U+0000 in a string, reserved bits or flags set, truncated fields, ...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that break a protocol rule (duplicate property, property
    /// not allowed in this packet, packet id 0, wildcard in a PUBLISH topic, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces a packet larger than the allowed maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Total packet size announced (fixed header + remaining length).
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// A CONNECT with a protocol name/level this codec does not speak.
    #[error("unsupported protocol name or level {0}")]
    UnsupportedProtocol(u8),
}

impl DecodeError {
    /// The v5 reason code to report this error with.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol(_) => ReasonCode::UnsupportedProtocolVersion,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The packet would exceed the 268,435,455-byte limit of the remaining length.
    #[error("packet too large to encode")]
    TooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field too long: {0}")]
    FieldTooLong(&'static str),
    /// The packet does not exist in this protocol version (AUTH on 3.1.1).
    #[error("{0} cannot be sent with this protocol version")]
    NotInProtocol(&'static str),
}

/// Decodes one packet from the front of `buf`.
///
/// `protocol` is `None` until the connection's CONNECT is decoded (then only CONNECT is
/// accepted... callers enforce ordering; the codec decodes whatever packet type it
/// finds, using the CONNECT's own version for CONNECT). `max_size` bounds the whole
/// packet (fixed header included).
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing consumed),
/// `Ok(Some(packet))` after consuming exactly that packet's bytes.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode::decode(buf, protocol, max_size)
}

/// Appends `packet` encoded for `protocol` to `out`, with the minimal Remaining Length
/// and, in v5, the short forms of acknowledgements (no reason code for Success without
/// properties, no Property Length without properties). Fields that do not exist before
/// v5 are dropped for 3.1/3.1.1. CONNECT is encoded in the version its own `protocol`
/// field names. On error nothing is appended.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    encode::encode(packet, protocol, out)
}

/// The number of bytes [`encode`] would append; 0 when [`encode`] would fail.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    encode::encoded_len(packet, protocol)
}

/// What differs between two deliveries of one message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery<'a> {
    /// QoS of this delivery (min of message and subscription QoS).
    pub qos: QoS,
    /// RETAIN flag as sent to this subscriber.
    pub retain: bool,
    /// DUP flag (a resend).
    pub dup: bool,
    /// Packet identifier, required when `qos` > 0.
    pub packet_id: Option<u16>,
    /// Topic alias to send (v5); with `send_topic == false` the topic is sent empty.
    pub topic_alias: Option<u16>,
    /// Whether the topic name is written (false only when an alias already known to the
    /// client replaces it).
    pub send_topic: bool,
    /// Subscription identifiers that matched (v5).
    pub subscription_ids: &'a [u32],
    /// Remaining Message Expiry Interval to send (v5), replacing the original.
    pub message_expiry: Option<u32>,
}

/// A PUBLISH prepared once for delivery to many subscribers. Shared by putting it
/// behind one `Arc` with whatever else the holder keeps per message (the broker's
/// message), so a message costs one allocation, not two.
#[derive(Debug, Clone)]
pub struct SharedPublish {
    inner: shared_publish::Inner,
}

impl SharedPublish {
    /// Prepares `publish` (its topic, fixed properties and payload) for fan-out.
    /// The topic alias, subscription identifiers and expiry of `publish` are ignored:
    /// they are per delivery.
    ///
    /// # Panics
    ///
    /// If the topic or a property is longer than 65,535 bytes, which no decoded PUBLISH
    /// can be; see [`SharedPublish::try_new`] for values built otherwise.
    pub fn new(publish: &Publish) -> SharedPublish {
        match SharedPublish::try_new(publish) {
            Ok(s) => s,
            Err(e) => panic!("SharedPublish::new: {e}"),
        }
    }

    /// Like [`SharedPublish::new`], but reports a field too long for MQTT instead of
    /// panicking.
    pub fn try_new(publish: &Publish) -> Result<SharedPublish, EncodeError> {
        Ok(SharedPublish {
            inner: shared_publish::prepare(publish)?,
        })
    }

    /// Like [`SharedPublish::try_new`], taking the PUBLISH by value so its topic,
    /// properties and payload move in rather than being copied.
    pub fn from_publish(publish: Publish) -> Result<SharedPublish, EncodeError> {
        Ok(SharedPublish {
            inner: shared_publish::prepare_owned(publish)?,
        })
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.inner.payload
    }

    /// The Message Expiry Interval the message was published with, from which the
    /// remaining expiry of each delivery is computed.
    pub fn message_expiry(&self) -> Option<u32> {
        self.inner.message_expiry
    }

    /// The QoS the message was published with.
    pub fn qos(&self) -> QoS {
        self.inner.qos
    }

    /// The RETAIN flag the message was published with.
    pub fn retain(&self) -> bool {
        self.inner.retain
    }

    /// The size of the packet [`SharedPublish::encode`] would write.
    pub fn encoded_len(&self, protocol: Protocol, delivery: &Delivery<'_>) -> usize {
        shared_publish::encoded_len(&self.inner, protocol, delivery)
    }

    /// Appends the PUBLISH for one delivery to `out`: the fixed header with the
    /// delivery's DUP/QoS/RETAIN, the topic (empty in v5 when `send_topic` is false),
    /// the packet id when QoS > 0 (0 if `packet_id` is missing), and for v5 the
    /// per-delivery properties followed by the constant ones, then the payload. Before
    /// v5 the topic is always sent and properties are dropped. Subscription
    /// identifiers outside 1..=268,435,455 are skipped.
    pub fn encode(&self, protocol: Protocol, delivery: &Delivery<'_>, out: &mut BytesMut) {
        shared_publish::encode(&self.inner, protocol, delivery, out)
    }

    /// Reconstructs a [`Publish`] value (for storage, tests and the will path).
    /// The result is what a v5 receiver decodes from [`SharedPublish::encode`].
    pub fn to_publish(&self, delivery: &Delivery<'_>) -> Publish {
        shared_publish::to_publish(&self.inner, delivery)
    }
}
