//! The MQTT control packets as Rust values, one type per packet.
//!
//! One set of types serves all three protocol versions: fields that exist only in
//! MQTT 5.0 (properties, reason codes) are ignored when encoding for 3.1/3.1.1 and
//! left at their defaults when decoding them. Strings are owned and payloads are
//! `Bytes` copied out of the read buffer, so a packet never pins a connection buffer.

use bytes::Bytes;

use crate::reason::ReasonCode;

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    #[default]
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte of the CONNECT variable header.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// Whether this version carries properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged, may be duplicated.
    AtLeastOnce = 1,
    /// Four-way handshake, delivered once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value, `None` for the reserved value 3.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A v5 user property: a name/value pair carried unchanged by the broker.
pub type UserProperty = (String, String);

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1): client asks to connect.
    Connect(Box<Connect>),
    /// CONNACK (2): server answers CONNECT. Boxed, like CONNECT, DISCONNECT and AUTH:
    /// once per connection, and large (its v5 properties), while the enum is moved
    /// with every PUBLISH.
    ConnAck(Box<ConnAck>),
    /// PUBLISH (3): an application message.
    Publish(Publish),
    /// PUBACK (4): QoS 1 acknowledgement.
    PubAck(PubResp),
    /// PUBREC (5): QoS 2, part 1.
    PubRec(PubResp),
    /// PUBREL (6): QoS 2, part 2.
    PubRel(PubResp),
    /// PUBCOMP (7): QoS 2, part 3.
    PubComp(PubResp),
    /// SUBSCRIBE (8).
    Subscribe(Subscribe),
    /// SUBACK (9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11).
    UnsubAck(UnsubAck),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect(Box<Disconnect>),
    /// AUTH (15), MQTT 5.0 only.
    Auth(Box<Auth>),
}

impl Packet {
    /// The packet's name as the spec writes it, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Protocol version requested (name and level).
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds, 0 = disabled.
    pub keep_alive: u16,
    /// Client identifier, possibly empty.
    pub client_id: String,
    /// The will message, if the Will Flag is set.
    pub will: Option<Will>,
    /// User Name, if the flag is set.
    pub username: Option<String>,
    /// Password, if the flag is set (binary data).
    pub password: Option<Bytes>,
    /// v5 CONNECT properties.
    pub properties: ConnectProperties,
}

/// v5 CONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// Session Expiry Interval (0x11), seconds.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21).
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size (0x27) the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum (0x22) the client accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information (0x19).
    pub request_response_information: Option<bool>,
    /// Request Problem Information (0x17).
    pub request_problem_information: Option<bool>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<String>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// Will Topic.
    pub topic: String,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// v5 will properties.
    pub properties: WillProperties,
}

/// v5 will properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// Will Delay Interval (0x18), seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator (0x01).
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type (0x03).
    pub content_type: Option<String>,
    /// Response Topic (0x08).
    pub response_topic: Option<String>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// v5 reason code; encoded as the matching v3 return code for 3.1/3.1.1
    /// (see [`ReasonCode::to_v3_connack`]).
    pub code: ReasonCode,
    /// v5 CONNACK properties.
    pub properties: ConnAckProperties,
}

/// v5 CONNACK properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// Session Expiry Interval (0x11).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21).
    pub receive_maximum: Option<u16>,
    /// Maximum QoS (0x24).
    pub maximum_qos: Option<u8>,
    /// Retain Available (0x25).
    pub retain_available: Option<bool>,
    /// Maximum Packet Size (0x27) the server accepts.
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier (0x12).
    pub assigned_client_identifier: Option<String>,
    /// Topic Alias Maximum (0x22) the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String (0x1F).
    pub reason_string: Option<String>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Wildcard Subscription Available (0x28).
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available (0x29).
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available (0x2A).
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive (0x13).
    pub server_keep_alive: Option<u16>,
    /// Response Information (0x1A).
    pub response_information: Option<String>,
    /// Server Reference (0x1C).
    pub server_reference: Option<String>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<String>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS of this transfer.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name; may be empty in v5 when a Topic Alias stands for it.
    pub topic: String,
    /// Packet Identifier, present (non-zero) when QoS > 0.
    pub packet_id: Option<u16>,
    /// v5 PUBLISH properties.
    pub properties: PublishProps,
    /// Application payload.
    pub payload: Bytes,
}

/// v5 PUBLISH properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// Payload Format Indicator (0x01): 0 bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (0x23).
    pub topic_alias: Option<u16>,
    /// Response Topic (0x08).
    pub response_topic: Option<String>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<UserProperty>,
    /// Subscription Identifier (0x0B), zero or more (server → client only).
    pub subscription_identifiers: Vec<u32>,
    /// Content Type (0x03).
    pub content_type: Option<String>,
}

impl PublishProperties {
    /// No property set (every 3.1.1 PUBLISH, most v5 ones).
    pub const EMPTY: PublishProperties = PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    };

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

/// A PUBLISH's [`PublishProperties`], boxed when there are any. Most PUBLISHes carry
/// none (every 3.1.1 one), and a PUBLISH and the message made of it are moved several
/// times between the socket and the subscribers' queues: empty, this is 8 bytes
/// rather than 144 (a profile of QoS 0 ingest had a quarter of the broker's time in
/// such moves). Reads go through `Deref` (an empty set when there is none); a write
/// through `DerefMut` allocates the box.
#[derive(Clone, Default)]
pub struct PublishProps(Option<Box<PublishProperties>>);

impl PublishProps {
    /// `p`, boxed unless empty.
    pub fn new(p: PublishProperties) -> PublishProps {
        if p.is_empty() {
            PublishProps(None)
        } else {
            PublishProps(Some(Box::new(p)))
        }
    }

    /// The properties by value.
    pub fn into_inner(self) -> PublishProperties {
        self.0.map_or(PublishProperties::EMPTY, |b| *b)
    }

    /// Takes the Topic Alias out, without allocating when there is none.
    pub fn take_topic_alias(&mut self) -> Option<u16> {
        self.0.as_mut().and_then(|p| p.topic_alias.take())
    }
}

impl From<PublishProperties> for PublishProps {
    fn from(p: PublishProperties) -> PublishProps {
        PublishProps::new(p)
    }
}

impl std::ops::Deref for PublishProps {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        static EMPTY: PublishProperties = PublishProperties::EMPTY;
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for PublishProps {
    fn deref_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_with(Default::default)
    }
}

impl PartialEq for PublishProps {
    fn eq(&self, other: &PublishProps) -> bool {
        **self == **other
    }
}

impl Eq for PublishProps {}

impl std::fmt::Debug for PublishProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResp {
    /// Packet Identifier being acknowledged.
    pub packet_id: u16,
    /// v5 reason code (Success when absent on the wire).
    pub reason: ReasonCode,
    /// v5 properties.
    pub properties: AckProperties,
}

/// The Reason String and User Properties that acknowledgements may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// Reason String (0x1F).
    pub reason_string: Option<String>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// Retain Handling subscription option (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAlways = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: never send them.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (v5).
    pub no_local: bool,
    /// Retain As Published (v5).
    pub retain_as_published: bool,
    /// Retain Handling (v5).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The options as MQTT 5.0 encodes them in one byte (§3.8.3.1): QoS in bits 0–1,
    /// No Local bit 2, Retain As Published bit 3, Retain Handling bits 4–5. Also how
    /// the cluster and the disk store keep a subscription.
    pub fn to_byte(&self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4
    }

    /// Reads [`SubscriptionOptions::to_byte`]'s byte back; `None` for QoS 3. (A
    /// SUBSCRIBE's own checks of reserved bits are the decoder's.)
    pub fn from_byte(b: u8) -> Option<SubscriptionOptions> {
        Some(SubscriptionOptions {
            qos: QoS::from_u8(b & 3)?,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling: match (b >> 4) & 3 {
                0 => RetainHandling::SendAlways,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        })
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeFilter {
    /// Topic Filter, possibly `$share/group/...`.
    pub filter: String,
    /// Subscription options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// Packet Identifier (non-zero).
    pub packet_id: u16,
    /// Requested filters, at least one.
    pub filters: Vec<SubscribeFilter>,
    /// Subscription Identifier (0x0B), v5.
    pub subscription_identifier: Option<u32>,
    /// User Property (0x26), v5.
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter: granted QoS (0, 1, 2) or a failure (≥ 0x80; 0x80 on v3).
    pub reasons: Vec<ReasonCode>,
    /// v5 properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    /// Packet Identifier (non-zero).
    pub packet_id: u16,
    /// Filters to remove, at least one.
    pub filters: Vec<String>,
    /// User Property (0x26), v5.
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter (v5 only; not encoded for v3).
    pub reasons: Vec<ReasonCode>,
    /// v5 properties.
    pub properties: AckProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 reason code (Normal disconnection = 0x00).
    pub reason: ReasonCode,
    /// v5 properties.
    pub properties: DisconnectProperties,
}

/// v5 DISCONNECT properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (0x11), client → server only.
    pub session_expiry_interval: Option<u32>,
    /// Reason String (0x1F).
    pub reason_string: Option<String>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Server Reference (0x1C).
    pub server_reference: Option<String>,
}

/// AUTH (v5 enhanced authentication).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code: 0x00 Success, 0x18 Continue authentication, 0x19 Re-authenticate.
    pub reason: ReasonCode,
    /// v5 properties.
    pub properties: AuthProperties,
}

/// v5 AUTH properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// Authentication Method (0x15).
    pub authentication_method: Option<String>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
    /// Reason String (0x1F).
    pub reason_string: Option<String>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}

#[cfg(test)]
mod publish_props_tests {
    use super::*;

    #[test]
    fn an_empty_set_is_not_boxed_and_reads_as_empty() {
        let p = PublishProps::new(PublishProperties::default());
        assert!(p.0.is_none());
        assert!(p.is_empty() && p.topic_alias.is_none());
        assert_eq!(p, PublishProps::default());
        assert_eq!(p.into_inner(), PublishProperties::default());
    }

    #[test]
    fn a_write_boxes_and_equality_ignores_the_box() {
        let mut p = PublishProps::default();
        assert_eq!(p.take_topic_alias(), None);
        assert!(p.0.is_none(), "taking no alias must not allocate");
        p.topic_alias = Some(3);
        assert_eq!(p.take_topic_alias(), Some(3));
        // Boxed but empty again: equal to the unboxed empty set.
        assert!(p.0.is_some());
        assert_eq!(p, PublishProps::default());
    }

    /// A PUBLISH is moved several times per message on the broker's hot path: a size
    /// guard (it was 208 bytes with the properties inline).
    #[test]
    fn a_publish_stays_small() {
        let size = std::mem::size_of::<Publish>();
        assert!(size <= 80, "a PUBLISH grew to {size} bytes");
        // Every packet decoded is moved as a `Packet`: rare large ones are boxed.
        let size = std::mem::size_of::<Packet>();
        assert!(size <= 96, "a Packet grew to {size} bytes");
    }
}
