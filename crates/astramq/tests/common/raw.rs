//! An independent, deliberately small MQTT codec for tests, and [`RawClient`].
//!
//! It shares no code with the broker so that a codec bug cannot hide itself.
//! Encoders produce plain `Vec<u8>` so malformed-packet tests can edit bytes.
//!
//! - this file: [`Version`], the packet type numbers, property identifiers
//!   ([`prop`]), reason codes ([`rc`]) and the primitive encoders (`varint`,
//!   `put_str`, `frame`);
//! - `raw/properties.rs`: [`Props`], an ordered list of MQTT 5 properties;
//! - `raw/client_packets.rs`: what a client sends (CONNECT, PUBLISH, SUBSCRIBE…),
//!   as builders with an `encode`;
//! - `raw/server_packets.rs`: what a server sends, as [`Packet`], and [`decode`];
//! - `raw/client.rs`: [`RawClient`], a byte-level client over TCP or TLS.

mod client;
mod client_packets;
mod properties;
mod server_packets;

// Each test binary uses part of what these re-export (see `allow(dead_code)`).
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use client_packets::*;
#[allow(unused_imports)]
pub use properties::*;
#[allow(unused_imports)]
pub use server_packets::*;

/// Protocol version spoken by a raw client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 ("MQIsdp", level 3).
    V31,
    V311,
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
    pub fn level(self) -> u8 {
        match self {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
    /// Pick the value that applies to this version.
    pub fn pick<X>(self, v3: X, v5: X) -> X {
        if self.is_v5() {
            v5
        } else {
            v3
        }
    }
    /// mosquitto_pub/sub `-V` argument.
    pub fn cli(self) -> &'static str {
        match self {
            Version::V31 => "mqttv31",
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        }
    }
}

// Packet types.
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

/// MQTT 5 property identifiers.
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Reason codes / return codes used by the tests.
pub mod rc {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS1: u8 = 0x01;
    pub const GRANTED_QOS2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const V3_FAILURE: u8 = 0x80;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    // MQTT 3.1.1 CONNACK return codes.
    pub const V3_UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    pub const V3_IDENTIFIER_REJECTED: u8 = 0x02;
    pub const V3_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub const V3_NOT_AUTHORIZED: u8 = 0x05;
}

pub fn varint(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

pub fn put_u16(out: &mut Vec<u8>, n: u16) {
    out.extend_from_slice(&n.to_be_bytes());
}

/// Length-prefixed UTF-8 string (or binary data).
pub fn put_str(out: &mut Vec<u8>, s: impl AsRef<[u8]>) {
    let s = s.as_ref();
    put_u16(out, s.len() as u16);
    out.extend_from_slice(s);
}

/// The fixed header at the start of `buf`: first byte, header length, remaining
/// length; `None` until the whole header has arrived (a remaining length longer than
/// four bytes yields a length no buffer reaches, so the caller reads on and fails).
pub fn frame_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first, 2 + i, len));
        }
    }
    Some((first, 5, usize::MAX / 2))
}

/// A fixed header (`first` byte, remaining length) followed by `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len() as u32));
    out.extend_from_slice(body);
    out
}
