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
    let _ = (buf, protocol, max_size);
    todo!("codec helper")
}

/// Appends `packet` encoded for `protocol` to `out`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (packet, protocol, out);
    todo!("codec helper")
}

/// The number of bytes [`encode`] would append.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let _ = (packet, protocol);
    todo!("codec helper")
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

/// A PUBLISH prepared once for delivery to many subscribers. Cheap to clone (all
/// `Bytes`).
#[derive(Debug, Clone)]
pub struct SharedPublish {
    _private: (),
}

impl SharedPublish {
    /// Prepares `publish` (its topic, fixed properties and payload) for fan-out.
    /// The topic alias, subscription identifiers and expiry of `publish` are ignored:
    /// they are per delivery.
    pub fn new(publish: &Publish) -> SharedPublish {
        let _ = publish;
        todo!("codec helper")
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        todo!("codec helper")
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        todo!("codec helper")
    }

    /// The size of the packet [`SharedPublish::encode`] would write.
    pub fn encoded_len(&self, protocol: Protocol, delivery: &Delivery<'_>) -> usize {
        let _ = (protocol, delivery);
        todo!("codec helper")
    }

    /// Appends the PUBLISH for one delivery to `out`.
    pub fn encode(&self, protocol: Protocol, delivery: &Delivery<'_>, out: &mut BytesMut) {
        let _ = (protocol, delivery, out);
        todo!("codec helper")
    }

    /// Reconstructs a [`Publish`] value (for storage, tests and the will path).
    pub fn to_publish(&self, delivery: &Delivery<'_>) -> Publish {
        let _ = delivery;
        todo!("codec helper")
    }
}
