//! An independent, deliberately small MQTT codec for tests, and [`RawClient`].
//!
//! It shares no code with the broker so that a codec bug cannot hide itself.
//! Encoders produce plain `Vec<u8>` so malformed-packet tests can edit bytes.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ABSENCE, T};

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

// ---------------------------------------------------------------------------
// Primitive encoders
// ---------------------------------------------------------------------------

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

/// A fixed header (`first` byte, remaining length) followed by `body`.
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

pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len() as u32));
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub enum PropValue {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// An ordered list of MQTT 5 properties (duplicates allowed, for tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Props(pub Vec<(u8, PropValue)>);

impl Props {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Self {
        self.0.push((id, PropValue::Byte(v)));
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Self {
        self.0.push((id, PropValue::U16(v)));
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Self {
        self.0.push((id, PropValue::U32(v)));
        self
    }
    pub fn varint(mut self, id: u8, v: u32) -> Self {
        self.0.push((id, PropValue::VarInt(v)));
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Self {
        self.0.push((id, PropValue::Str(v.into())));
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Self {
        self.0.push((id, PropValue::Bin(v.into())));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Self {
        self.0
            .push((prop::USER_PROPERTY, PropValue::Pair(k.into(), v.into())));
        self
    }

    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }
    pub fn get_u32(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            PropValue::U32(v) | PropValue::VarInt(v) => Some(*v),
            PropValue::U16(v) => Some(*v as u32),
            PropValue::Byte(v) => Some(*v as u32),
            _ => None,
        }
    }
    pub fn get_str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            PropValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn get_bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id)? {
            PropValue::Bin(b) => Some(b),
            _ => None,
        }
    }
    /// All values of a repeatable numeric property (subscription identifiers).
    pub fn all_u32(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::VarInt(n) | PropValue::U32(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Encoded with its variable-length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, v) in &self.0 {
            body.extend(varint(*id as u32));
            match v {
                PropValue::Byte(b) => body.push(*b),
                PropValue::U16(n) => put_u16(&mut body, *n),
                PropValue::U32(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::VarInt(n) => body.extend(varint(*n)),
                PropValue::Str(s) => put_str(&mut body, s),
                PropValue::Bin(b) => put_str(&mut body, b),
                PropValue::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        let mut out = varint(body.len() as u32);
        out.extend(body);
        out
    }
}

// ---------------------------------------------------------------------------
// Client -> server packets
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
            props: Props::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Props,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    pub fn new(version: Version, client_id: &str) -> Connect {
        Connect {
            version,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            props: Props::new(),
            will: None,
            username: None,
            password: None,
        }
    }
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }
    pub fn props(mut self, props: Props) -> Self {
        self.props = props;
        self
    }
    /// v5 Session Expiry Interval (ignored for v3).
    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.props = self.props.u32(prop::SESSION_EXPIRY_INTERVAL, secs);
        self
    }
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
    pub fn credentials(mut self, user: &str, pass: Option<&str>) -> Self {
        self.username = Some(user.into());
        self.password = pass.map(|p| p.as_bytes().to_vec());
        self
    }

    /// A client that must resume its session after reconnecting: v3 clean
    /// session 0, v5 clean start 0 with a session expiry of `expiry` seconds.
    pub fn persistent(v: Version, id: &str, clean: bool, expiry: u32) -> Connect {
        let c = Connect::new(v, id).clean(clean);
        if v.is_v5() {
            c.session_expiry(expiry)
        } else {
            c
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let v = self.version;
        let mut b = Vec::new();
        put_str(&mut b, if v == Version::V31 { "MQIsdp" } else { "MQTT" });
        b.push(v.level());
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        b.push(flags);
        put_u16(&mut b, self.keep_alive);
        if v.is_v5() {
            b.extend(self.props.encode());
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if v.is_v5() {
                b.extend(w.props.encode());
            }
            put_str(&mut b, &w.topic);
            put_str(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_str(&mut b, p);
        }
        frame(CONNECT << 4, &b)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub props: Props,
}

impl Publish {
    pub fn new(topic: &str, payload: &[u8], qos: u8) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            dup: false,
            pid: 0,
            props: Props::new(),
        }
    }
    pub fn retain(mut self, r: bool) -> Self {
        self.retain = r;
        self
    }
    pub fn props(mut self, p: Props) -> Self {
        self.props = p;
        self
    }
    pub fn pid(mut self, pid: u16) -> Self {
        self.pid = pid;
        self
    }
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn encode(&self, v: Version) -> Vec<u8> {
        let mut first = PUBLISH << 4 | (self.qos << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        let mut b = Vec::new();
        put_str(&mut b, &self.topic);
        if self.qos > 0 {
            put_u16(&mut b, self.pid);
        }
        if v.is_v5() {
            b.extend(self.props.encode());
        }
        b.extend_from_slice(&self.payload);
        frame(first, &b)
    }
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP encoder (reason code omitted when 0, as
/// clients usually do).
pub fn encode_ack(ptype: u8, pid: u16, reason: u8, v: Version) -> Vec<u8> {
    let first = ptype << 4 | if ptype == PUBREL { 0x02 } else { 0 };
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() && reason != 0 {
        b.push(reason);
    }
    frame(first, &b)
}

/// Subscription options byte: QoS plus v5 flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

impl SubOpts {
    pub fn qos(qos: u8) -> SubOpts {
        SubOpts {
            qos,
            ..Default::default()
        }
    }
    pub fn byte(self) -> u8 {
        self.qos
            | if self.no_local { 0x04 } else { 0 }
            | if self.retain_as_published { 0x08 } else { 0 }
            | (self.retain_handling << 4)
    }
}

pub fn encode_subscribe(
    v: Version,
    pid: u16,
    props: &Props,
    filters: &[(&str, SubOpts)],
) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() {
        b.extend(props.encode());
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(o.byte());
    }
    frame(SUBSCRIBE << 4 | 0x02, &b)
}

pub fn encode_unsubscribe(v: Version, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() {
        b.extend(Props::new().encode());
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(UNSUBSCRIBE << 4 | 0x02, &b)
}

pub fn encode_disconnect(v: Version, reason: u8, props: &Props) -> Vec<u8> {
    if !v.is_v5() || (reason == 0 && props.0.is_empty()) {
        return vec![DISCONNECT << 4, 0];
    }
    let mut b = vec![reason];
    b.extend(props.encode());
    frame(DISCONNECT << 4, &b)
}

pub fn encode_pingreq() -> Vec<u8> {
    vec![PINGREQ << 4, 0]
}

// ---------------------------------------------------------------------------
// Server -> client packets
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Connack {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub pid: u16,
    pub reason: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Suback {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    Connack(Connack),
    Publish(Publish),
    Puback(Ack),
    Pubrec(Ack),
    Pubrel(Ack),
    Pubcomp(Ack),
    Suback(Suback),
    Unsuback(Suback),
    Pingresp,
    /// Reason code (0 when omitted) and properties.
    Disconnect(u8, Props),
    Auth(u8, Props),
    Other {
        first: u8,
        body: Vec<u8>,
    },
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connack(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Puback(_) => "PUBACK",
            Packet::Pubrec(_) => "PUBREC",
            Packet::Pubrel(_) => "PUBREL",
            Packet::Pubcomp(_) => "PUBCOMP",
            Packet::Suback(_) => "SUBACK",
            Packet::Unsuback(_) => "UNSUBACK",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect(..) => "DISCONNECT",
            Packet::Auth(..) => "AUTH",
            Packet::Other { .. } => "other",
        }
    }
}

/// Why decoding a server packet failed: the server sent something malformed.
#[derive(Debug)]
pub struct DecodeError(pub String);

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.i
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self
            .b
            .get(self.i)
            .ok_or_else(|| DecodeError("truncated".into()))?;
        self.i += 1;
        Ok(v)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError(format!(
                "truncated: need {n}, have {}",
                self.left()
            )));
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut n = 0u32;
        for shift in 0..4 {
            let b = self.u8()?;
            n |= ((b & 0x7f) as u32) << (7 * shift);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError("varint longer than 4 bytes".into()))
    }
    fn bin(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bin()?).map_err(|_| DecodeError("invalid UTF-8 from server".into()))
    }
    fn props(&mut self) -> Result<Props, DecodeError> {
        let len = self.varint()? as usize;
        let end = self.i + len;
        if end > self.b.len() {
            return Err(DecodeError("property length past end".into()));
        }
        let mut p = Props::new();
        while self.i < end {
            let id = self.varint()? as u8;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    PropValue::Byte(self.u8()?)
                }
                0x13 | 0x21 | 0x22 | 0x23 => PropValue::U16(self.u16()?),
                0x02 | 0x11 | 0x18 | 0x27 => PropValue::U32(self.u32()?),
                0x0B => PropValue::VarInt(self.varint()?),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(self.str()?),
                0x09 | 0x16 => PropValue::Bin(self.bin()?),
                0x26 => PropValue::Pair(self.str()?, self.str()?),
                other => return Err(DecodeError(format!("unknown property id {other:#x}"))),
            };
            p.0.push((id, v));
        }
        if self.i != end {
            return Err(DecodeError("property overran its length".into()));
        }
        Ok(p)
    }
}

/// Decode one complete server packet (`first` byte and body).
pub fn decode(v: Version, first: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    let mut c = Cur { b: body, i: 0 };
    let ptype = first >> 4;
    let flags = first & 0x0f;
    let ack = |c: &mut Cur<'_>| -> Result<Ack, DecodeError> {
        let pid = c.u16()?;
        let mut reason = 0;
        let mut props = Props::new();
        if v.is_v5() && c.left() > 0 {
            reason = c.u8()?;
            if c.left() > 0 {
                props = c.props()?;
            }
        }
        Ok(Ack { pid, reason, props })
    };
    let p = match ptype {
        CONNACK => {
            let f = c.u8()?;
            let code = c.u8()?;
            let props = if v.is_v5() && c.left() > 0 {
                c.props()?
            } else {
                Props::new()
            };
            Packet::Connack(Connack {
                session_present: f & 1 == 1,
                code,
                props,
            })
        }
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            let topic = c.str()?;
            let pid = if qos > 0 { c.u16()? } else { 0 };
            let props = if v.is_v5() { c.props()? } else { Props::new() };
            Packet::Publish(Publish {
                topic,
                payload: c.take(c.left())?.to_vec(),
                qos,
                retain: flags & 1 == 1,
                dup: flags & 8 == 8,
                pid,
                props,
            })
        }
        PUBACK => Packet::Puback(ack(&mut c)?),
        PUBREC => Packet::Pubrec(ack(&mut c)?),
        PUBREL => Packet::Pubrel(ack(&mut c)?),
        PUBCOMP => Packet::Pubcomp(ack(&mut c)?),
        SUBACK | UNSUBACK => {
            let pid = c.u16()?;
            let props = if v.is_v5() { c.props()? } else { Props::new() };
            let s = Suback {
                pid,
                codes: c.take(c.left())?.to_vec(),
                props,
            };
            if ptype == SUBACK {
                Packet::Suback(s)
            } else {
                Packet::Unsuback(s)
            }
        }
        PINGRESP => Packet::Pingresp,
        DISCONNECT | AUTH => {
            let reason = if c.left() > 0 { c.u8()? } else { 0 };
            let props = if c.left() > 0 {
                c.props()?
            } else {
                Props::new()
            };
            if ptype == DISCONNECT {
                Packet::Disconnect(reason, props)
            } else {
                Packet::Auth(reason, props)
            }
        }
        _ => Packet::Other {
            first,
            body: body.to_vec(),
        },
    };
    if c.left() != 0 {
        return Err(DecodeError(format!(
            "{} left {} trailing bytes",
            p.name(),
            c.left()
        )));
    }
    Ok(p)
}

// ---------------------------------------------------------------------------
// RawClient
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub enum ReadError {
    Timeout,
    Closed,
    Io(std::io::Error),
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a [`RawClient`] talks over: TCP, or TLS over TCP.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {
    /// The client's own address.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl RawStream for TcpStream {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
}

impl RawStream for tokio_rustls::client::TlsStream<TcpStream> {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }
}

/// A byte-level MQTT client. Packets that a helper is not waiting for are
/// queued and returned by later reads, so interleavings do not lose packets.
pub struct RawClient {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
    pub version: Version,
    pending: VecDeque<Packet>,
    /// Acknowledge incoming QoS 1/2 PUBLISH and PUBREL automatically in
    /// [`RawClient::recv_publish`] (on by default).
    pub auto_ack: bool,
    next_pid: u16,
    /// Total bytes of every packet received, with its type, for size checks.
    pub received_sizes: Vec<(u8, usize)>,
}

impl RawClient {
    pub async fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    /// Like [`RawClient::tcp`], with the socket's send buffer fixed at `bytes` (no
    /// autotuning): writes block soon after the server stops reading, instead of
    /// filling megabytes of kernel buffers.
    pub async fn tcp_small_send_buffer(addr: SocketAddr, bytes: u32) -> RawClient {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket.set_send_buffer_size(bytes).expect("SO_SNDBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        Self::over(stream)
    }

    /// A client over an already established stream (a TLS connection).
    pub fn over(stream: impl RawStream + 'static) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
            version: Version::V311,
            pending: VecDeque::new(),
            auto_ack: true,
            next_pid: 0,
            received_sizes: Vec::new(),
        }
    }

    /// Send CONNECT and return the CONNACK, whatever its code.
    pub async fn connect(addr: SocketAddr, c: Connect) -> (RawClient, Connack) {
        let mut cl = RawClient::tcp(addr).await;
        let ca = cl.handshake(c).await;
        (cl, ca)
    }

    /// Send CONNECT on this connection and return the CONNACK, whatever its code.
    pub async fn handshake(&mut self, c: Connect) -> Connack {
        self.version = c.version;
        self.send(&c.encode()).await;
        match self.read(T).await {
            Ok(Packet::Connack(ca)) => ca,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connect and assert CONNACK success.
    pub async fn connect_ok(addr: SocketAddr, c: Connect) -> RawClient {
        let id = c.client_id.clone();
        let (cl, ca) = Self::connect(addr, c).await;
        assert_eq!(ca.code, 0, "CONNACK for {id:?} refused: {ca:?}");
        cl
    }

    /// The client's own address (what a node should log as its `peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("write failed: {e}"));
    }

    /// Write, returning the error instead of panicking.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Write, ignoring errors (the server may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Read raw bytes (whatever arrives first) within `t`.
    pub async fn read_bytes(&mut self, t: Duration) -> Result<Vec<u8>, ReadError> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut chunk = vec![0u8; 65536];
        match tokio::time::timeout(t, self.stream.read(&mut chunk)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(n)) => Ok(chunk[..n].to_vec()),
            Ok(Err(e)) => Err(ReadError::Io(e)),
        }
    }

    /// Next packet (queued ones first) within `t`.
    pub async fn read(&mut self, t: Duration) -> Result<Packet, ReadError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        self.read_wire(t).await
    }

    /// The next whole packet already read from the socket, if any.
    fn take_buffered(&mut self) -> Option<Result<Packet, ReadError>> {
        let (first, hdr, len) = frame_header(&self.buf)?;
        if self.buf.len() < hdr + len {
            return None;
        }
        let body: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        self.received_sizes.push((first >> 4, hdr + len));
        Some(decode(self.version, first, &body).map_err(ReadError::Decode))
    }

    async fn read_wire(&mut self, t: Duration) -> Result<Packet, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(p) = self.take_buffered() {
                return p;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(_)) => {}
                // A reset after the server closes counts as closed.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(ReadError::Closed)
                }
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Next packet, panicking on timeout/close.
    pub async fn next(&mut self, t: Duration) -> Packet {
        self.read(t)
            .await
            .unwrap_or_else(|e| panic!("expected a packet within {t:?}: {e}"))
    }

    /// Read until a packet for which `f` returns Some; others are queued.
    pub async fn wait_packet<R>(
        &mut self,
        t: Duration,
        what: &str,
        mut f: impl FnMut(&Packet) -> Option<R>,
    ) -> R {
        // Look in the queue first.
        for i in 0..self.pending.len() {
            if let Some(r) = f(&self.pending[i]) {
                self.pending.remove(i);
                return r;
            }
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = match self.read_wire(left).await {
                Ok(p) => p,
                Err(e) => panic!("waiting for {what}: {e} (queued: {:?})", self.pending),
            };
            if let Some(r) = f(&p) {
                return r;
            }
            self.pending.push_back(p);
        }
    }

    /// The connection must be closed by the server within `t`. Packets sent
    /// before the close are returned (e.g. a v5 DISCONNECT).
    pub async fn expect_closed(&mut self, t: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + t;
        let mut seen: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_wire(left).await {
                Ok(p) => seen.push(p),
                Err(ReadError::Closed) | Err(ReadError::Io(_)) => return seen,
                // Garbage after the close decision is no reason to fail here.
                Err(ReadError::Decode(_)) => {}
                Err(ReadError::Timeout) => {
                    panic!("connection still open after {t:?}; packets seen: {seen:?}")
                }
            }
        }
    }

    /// The server must close the connection; for v5, it must first send
    /// DISCONNECT with `v5_reason` [MQTT-4.13.1-1 / 4.13.2-1 area]. For v3 the
    /// server must just close (3.1.1 has no server DISCONNECT).
    pub async fn expect_disconnect(&mut self, v5_reason: u8, t: Duration) {
        let seen = self.expect_closed(t).await;
        let discs: Vec<_> = seen
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(r, _) => Some(*r),
                _ => None,
            })
            .collect();
        if self.version.is_v5() {
            assert_eq!(
                discs,
                vec![v5_reason],
                "expected DISCONNECT {v5_reason:#04x} before close; saw {seen:?}"
            );
        } else {
            assert!(
                discs.is_empty(),
                "3.1.1 server must not send DISCONNECT: {seen:?}"
            );
        }
    }

    /// The server must send DISCONNECT with `reason` (v5), then close the
    /// connection in order (TCP FIN) within `t`. A reset instead fails: a client
    /// meeting one may never read the DISCONNECT (its writes fail first, and some
    /// systems throw away unread data on a reset).
    pub async fn expect_orderly_disconnect(&mut self, reason: u8, t: Duration) {
        let deadline = tokio::time::Instant::now() + t;
        let mut seen: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            if let Some(p) = self.take_buffered() {
                seen.push(p.unwrap_or_else(|e| panic!("{e} after {seen:?}")));
                continue;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("connection still open after {t:?}; packets seen: {seen:?}"),
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    panic!("the connection ended with \"{e}\", not an orderly close; packets seen: {seen:?}")
                }
            }
        }
        let discs: Vec<u8> = seen
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(r, _) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(
            discs,
            vec![reason],
            "expected DISCONNECT {reason:#04x} before the close; saw {seen:?}"
        );
    }

    /// The server closed the connection, or a v5 server sent DISCONNECT whose
    /// reason is in `allowed` then closed.
    pub async fn expect_closed_with_any(&mut self, allowed: &[u8], t: Duration) -> Option<u8> {
        let seen = self.expect_closed(t).await;
        let mut reason = None;
        for p in &seen {
            if let Packet::Disconnect(r, _) = p {
                assert!(
                    self.version.is_v5(),
                    "3.1.1 server must not send DISCONNECT"
                );
                assert!(
                    allowed.contains(r),
                    "DISCONNECT reason {r:#04x} not in {allowed:02x?}"
                );
                reason = Some(*r);
            }
        }
        reason
    }

    /// The connection must stay open and silent for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(p) = self.pending.pop_front() {
            panic!("unexpected packet: {p:?}");
        }
        match self.read_wire(d).await {
            Err(ReadError::Timeout) => {}
            other => panic!("expected silence for {d:?}, got {other:?}"),
        }
    }

    pub async fn subscribe_with(&mut self, filters: &[(&str, SubOpts)], props: Props) -> Suback {
        let pid = self.pid();
        let v = self.version;
        self.send(&encode_subscribe(v, pid, &props, filters)).await;
        let s = self
            .wait_packet(T, "SUBACK", |p| match p {
                Packet::Suback(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        assert_eq!(s.pid, pid, "SUBACK packet id [MQTT-3.8.4-2]");
        assert_eq!(
            s.codes.len(),
            filters.len(),
            "one SUBACK code per filter [MQTT-3.8.4-6]"
        );
        s
    }

    /// Subscribe and return the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        let f: Vec<_> = filters
            .iter()
            .map(|(f, q)| (*f, SubOpts::qos(*q)))
            .collect();
        self.subscribe_with(&f, Props::new()).await.codes
    }

    /// Subscribe to one filter and assert it was granted `qos`.
    pub async fn sub(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe(&[(filter, qos)]).await;
        assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    }

    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let pid = self.pid();
        let v = self.version;
        self.send(&encode_unsubscribe(v, pid, filters)).await;
        let s = self
            .wait_packet(T, "UNSUBACK", |p| match p {
                Packet::Unsuback(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        assert_eq!(s.pid, pid, "UNSUBACK packet id [MQTT-3.10.4-4]");
        s.codes
    }

    /// Publish and complete the QoS flow; returns the PUBACK/PUBREC reason
    /// code (0 for QoS 0).
    pub async fn publish_msg(&mut self, mut p: Publish) -> u8 {
        if p.qos > 0 && p.pid == 0 {
            p.pid = self.pid();
        }
        let v = self.version;
        self.send(&p.encode(v)).await;
        let pid = p.pid;
        match p.qos {
            0 => 0,
            1 => {
                self.wait_packet(T, "PUBACK", |x| match x {
                    Packet::Puback(a) if a.pid == pid => Some(a.reason),
                    _ => None,
                })
                .await
            }
            _ => {
                let r = self
                    .wait_packet(T, "PUBREC", |x| match x {
                        Packet::Pubrec(a) if a.pid == pid => Some(a.reason),
                        _ => None,
                    })
                    .await;
                if r >= 0x80 {
                    return r;
                }
                self.send(&encode_ack(PUBREL, pid, 0, v)).await;
                let c = self
                    .wait_packet(T, "PUBCOMP", |x| match x {
                        Packet::Pubcomp(a) if a.pid == pid => Some(a.reason),
                        _ => None,
                    })
                    .await;
                assert_eq!(c, 0, "PUBCOMP reason");
                r
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> u8 {
        self.publish_msg(Publish::new(topic, payload, qos).retain(retain))
            .await
    }

    /// Next PUBLISH within `t`; with `auto_ack`, QoS 1 is PUBACKed, QoS 2 is
    /// PUBRECed, and PUBRELs seen meanwhile are PUBCOMPed.
    pub async fn recv_publish(&mut self, t: Duration) -> Publish {
        self.try_recv_publish(t)
            .await
            .unwrap_or_else(|e| panic!("expected PUBLISH within {t:?}: {e}"))
    }

    /// Like [`RawClient::recv_publish`], but says why no PUBLISH came instead of
    /// panicking. `t` bounds the whole wait: other packets (queued before or read
    /// meanwhile) stay queued, in order, for later reads.
    pub async fn try_recv_publish(&mut self, t: Duration) -> Result<Publish, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        // Packets already queued are looked at once, not read back forever.
        let mut skipped = VecDeque::new();
        let mut queued = std::mem::take(&mut self.pending);
        let outcome = loop {
            let p = match queued.pop_front() {
                Some(p) => p,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.read_wire(left).await {
                        Ok(p) => p,
                        Err(e) => break Err(e),
                    }
                }
            };
            match p {
                Packet::Publish(p) => {
                    if self.auto_ack {
                        let v = self.version;
                        match p.qos {
                            1 => self.send(&encode_ack(PUBACK, p.pid, 0, v)).await,
                            2 => self.send(&encode_ack(PUBREC, p.pid, 0, v)).await,
                            _ => {}
                        }
                    }
                    break Ok(p);
                }
                Packet::Pubrel(a) if self.auto_ack => {
                    let v = self.version;
                    self.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await;
                }
                other => skipped.push_back(other),
            }
        };
        // Skipped packets first, then what was queued after the PUBLISH.
        skipped.append(&mut queued);
        self.pending = skipped;
        outcome
    }

    /// The next PUBLISH within `t`, acknowledged whatever `auto_ack` says (QoS 1:
    /// PUBACK, QoS 2: PUBREC; PUBRELs seen meanwhile get PUBCOMP), or why none came.
    pub async fn next_publish_acked(&mut self, t: Duration) -> Result<Publish, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await? {
                Packet::Publish(p) => {
                    let v = self.version;
                    match p.qos {
                        1 => self.send(&encode_ack(PUBACK, p.pid, 0, v)).await,
                        2 => self.send(&encode_ack(PUBREC, p.pid, 0, v)).await,
                        _ => {}
                    }
                    return Ok(p);
                }
                Packet::Pubrel(a) => {
                    let v = self.version;
                    self.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await;
                }
                _ => {}
            }
        }
    }

    /// Collect `n` PUBLISH packets.
    pub async fn recv_publishes(&mut self, n: usize, t: Duration) -> Vec<Publish> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.recv_publish(t).await);
        }
        v
    }

    /// No PUBLISH may arrive for `d` (the legitimate wait for an absence).
    /// PUBRELs are still completed.
    pub async fn expect_no_publish(&mut self, d: Duration) {
        match self.try_recv_publish(d).await {
            Err(ReadError::Timeout) => {}
            Ok(p) => panic!("unexpected PUBLISH: {p:?}"),
            Err(e) => panic!("connection failed while expecting no PUBLISH: {e}"),
        }
    }

    pub async fn expect_no_publish_default(&mut self) {
        self.expect_no_publish(ABSENCE).await
    }

    /// Send DISCONNECT (normal) and wait for the server to close.
    pub async fn disconnect(mut self) {
        let v = self.version;
        self.send_lossy(&encode_disconnect(v, 0, &Props::new()))
            .await;
        let _ = self.stream.shutdown().await;
        // Wait for the server's close so the next step sees the session gone.
        let _ = tokio::time::timeout(T, async {
            let mut b = [0u8; 1024];
            while let Ok(n) = self.stream.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Drop the TCP connection without DISCONNECT (an abrupt close).
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    pub async fn ping(&mut self) {
        self.send(&encode_pingreq()).await;
        self.wait_packet(T, "PINGRESP", |p| {
            matches!(p, Packet::Pingresp).then_some(())
        })
        .await;
    }
}
