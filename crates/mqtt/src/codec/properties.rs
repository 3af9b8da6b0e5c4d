//! MQTT 5.0 properties (spec §2.2.2): per-packet decoding with the duplicate, allowed
//! identifier and value checks, and per-packet encoding through [`PropSet`].

use crate::packet::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, PublishProps, UserProperty, WillProperties,
};

use super::read::Reader;
use super::write::{Out, PropSet};
use super::DecodeError;

type Result<T> = std::result::Result<T, DecodeError>;

/// Property identifiers (spec §2.2.2.2, table 2-4).
pub(crate) mod id {
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
use id::*;

const fn bit(id: u8) -> u64 {
    1u64 << id
}

/// Reads a Property Length and the properties it covers, calling `f` for each
/// identifier with the reader positioned on its value. `f` returns `Ok(false)` for an
/// identifier the packet does not allow.
///
/// - An identifier not valid for the packet type is a Malformed Packet (§2.2.2.2).
/// - Including a property more than once is a Protocol Error (each property's
///   section: "It is a Protocol Error to include ... more than once"), except those in
///   `repeatable` (User Property everywhere, Subscription Identifier in PUBLISH).
fn read_props<'a>(
    r: &mut Reader<'a>,
    repeatable: u64,
    mut f: impl FnMut(u8, &mut Reader<'a>) -> Result<bool>,
) -> Result<()> {
    let len = r.varint("property length")? as usize;
    let mut pr = Reader::new(r.take(len, "property length exceeds packet")?);
    let mut seen = 0u64;
    while !pr.is_empty() {
        let id = pr.varint("property identifier")?;
        if id > 0x2A {
            return Err(DecodeError::Malformed("unknown property identifier"));
        }
        let id = id as u8;
        if seen & bit(id) != 0 && repeatable & bit(id) == 0 {
            return Err(DecodeError::Protocol("duplicate property"));
        }
        seen |= bit(id);
        if !f(id, &mut pr)? {
            return Err(DecodeError::Malformed(
                "property not allowed in this packet",
            ));
        }
    }
    Ok(())
}

/// A byte property that must be 0 or 1 ("It is a Protocol Error to ... have a value
/// other than 0 or 1", e.g. §3.1.2.11.6, §3.2.2.3.5).
fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol(what)),
    }
}

/// Payload Format Indicator: 0 (unspecified bytes) or 1 (UTF-8) (§3.3.2.3.2).
fn payload_format(r: &mut Reader<'_>) -> Result<u8> {
    let v = r.u8("payload format indicator")?;
    if v > 1 {
        return Err(DecodeError::Protocol("payload format indicator not 0 or 1"));
    }
    Ok(v)
}

/// Receive Maximum: "It is a Protocol Error ... for it to have the value 0" (§3.1.2.11.3).
fn receive_maximum(r: &mut Reader<'_>) -> Result<u16> {
    match r.u16("receive maximum")? {
        0 => Err(DecodeError::Protocol("receive maximum of 0")),
        v => Ok(v),
    }
}

/// Maximum Packet Size: "It is a Protocol Error ... for the value to be set to zero"
/// (§3.1.2.11.4).
fn maximum_packet_size(r: &mut Reader<'_>) -> Result<u32> {
    match r.u32("maximum packet size")? {
        0 => Err(DecodeError::Protocol("maximum packet size of 0")),
        v => Ok(v),
    }
}

/// Subscription Identifier: 1 to 268,435,455; "It is a Protocol Error if the
/// Subscription Identifier has a value of 0" (§3.3.2.3.8, §3.8.2.1.2).
pub(crate) fn subscription_identifier(r: &mut Reader<'_>) -> Result<u32> {
    match r.varint("subscription identifier")? {
        0 => Err(DecodeError::Protocol("subscription identifier of 0")),
        v => Ok(v),
    }
}

/// Topic names must not contain wildcards [MQTT-3.3.2-2]; used for the Topic Name and
/// the Response Topic [MQTT-3.3.2-14].
pub(crate) fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

/// CONNECT properties (§3.1.2.11).
pub(crate) fn connect(r: &mut Reader<'_>) -> Result<ConnectProperties> {
    let mut p = ConnectProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32("session expiry")?),
            RECEIVE_MAXIMUM => p.receive_maximum = Some(receive_maximum(r)?),
            MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(maximum_packet_size(r)?),
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16("topic alias maximum")?),
            REQUEST_RESPONSE_INFORMATION => {
                p.request_response_information = Some(flag(r, "request response information")?)
            }
            REQUEST_PROBLEM_INFORMATION => {
                p.request_problem_information = Some(flag(r, "request problem information")?)
            }
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string("auth method")?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.bin("auth data")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    // §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is
    // no Authentication Method".
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol("authentication data without method"));
    }
    Ok(p)
}

/// Will properties (§3.1.3.2).
pub(crate) fn will(r: &mut Reader<'_>) -> Result<WillProperties> {
    let mut p = WillProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32("will delay")?),
            PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(payload_format(r)?),
            MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32("message expiry")?),
            CONTENT_TYPE => p.content_type = Some(r.string("content type")?),
            RESPONSE_TOPIC => p.response_topic = Some(response_topic(r)?),
            CORRELATION_DATA => p.correlation_data = Some(r.bin("correlation data")?),
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

/// Response Topic: a Topic Name, so no wildcards [MQTT-3.3.2-14].
fn response_topic(r: &mut Reader<'_>) -> Result<String> {
    let s = r.string("response topic")?;
    if has_wildcard(&s) {
        return Err(DecodeError::Protocol("wildcard in response topic"));
    }
    Ok(s)
}

/// CONNACK properties (§3.2.2.3).
pub(crate) fn connack(r: &mut Reader<'_>) -> Result<ConnAckProperties> {
    let mut p = ConnAckProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32("session expiry")?),
            RECEIVE_MAXIMUM => p.receive_maximum = Some(receive_maximum(r)?),
            // §3.2.2.3.4: Protocol Error to have a value other than 0 or 1.
            MAXIMUM_QOS => p.maximum_qos = Some(u8::from(flag(r, "maximum qos")?)),
            RETAIN_AVAILABLE => p.retain_available = Some(flag(r, "retain available")?),
            MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(maximum_packet_size(r)?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                p.assigned_client_identifier = Some(r.string("assigned client id")?)
            }
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16("topic alias maximum")?),
            REASON_STRING => p.reason_string = Some(r.string("reason string")?),
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                p.wildcard_subscription_available = Some(flag(r, "wildcard sub available")?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                p.subscription_identifiers_available = Some(flag(r, "sub id available")?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                p.shared_subscription_available = Some(flag(r, "shared sub available")?)
            }
            SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16("server keep alive")?),
            RESPONSE_INFORMATION => p.response_information = Some(r.string("response info")?),
            SERVER_REFERENCE => p.server_reference = Some(r.string("server reference")?),
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string("auth method")?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.bin("auth data")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

/// PUBLISH properties (§3.3.2.3).
/// Boxed at the first property: most PUBLISHes carry none.
pub(crate) fn publish(r: &mut Reader<'_>) -> Result<PublishProps> {
    let mut p = PublishProps::default();
    read_props(
        r,
        bit(USER_PROPERTY) | bit(SUBSCRIPTION_IDENTIFIER),
        |id, r| {
            match id {
                PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(payload_format(r)?),
                MESSAGE_EXPIRY_INTERVAL => {
                    p.message_expiry_interval = Some(r.u32("message expiry")?)
                }
                TOPIC_ALIAS => {
                    // §3.3.2.3.4: "A Topic Alias of 0 is not permitted" [MQTT-3.3.2-8].
                    let a = r.u16("topic alias")?;
                    if a == 0 {
                        return Err(DecodeError::Protocol("topic alias of 0"));
                    }
                    p.topic_alias = Some(a);
                }
                RESPONSE_TOPIC => p.response_topic = Some(response_topic(r)?),
                CORRELATION_DATA => p.correlation_data = Some(r.bin("correlation data")?),
                USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
                SUBSCRIPTION_IDENTIFIER => {
                    p.subscription_identifiers.push(subscription_identifier(r)?)
                }
                CONTENT_TYPE => p.content_type = Some(r.string("content type")?),
                _ => return Ok(false),
            }
            Ok(true)
        },
    )?;
    Ok(p)
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: Reason String and
/// User Property only.
pub(crate) fn ack(r: &mut Reader<'_>) -> Result<AckProperties> {
    let mut p = AckProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            REASON_STRING => p.reason_string = Some(r.string("reason string")?),
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

/// SUBSCRIBE properties (§3.8.2.1): Subscription Identifier and User Property.
pub(crate) fn subscribe(r: &mut Reader<'_>) -> Result<(Option<u32>, Vec<UserProperty>)> {
    let mut sub_id = None;
    let mut users = Vec::new();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            SUBSCRIPTION_IDENTIFIER => sub_id = Some(subscription_identifier(r)?),
            USER_PROPERTY => users.push(r.string_pair("user property")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((sub_id, users))
}

/// UNSUBSCRIBE properties (§3.10.2.1): User Property only.
pub(crate) fn unsubscribe(r: &mut Reader<'_>) -> Result<Vec<UserProperty>> {
    let mut users = Vec::new();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            USER_PROPERTY => users.push(r.string_pair("user property")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(users)
}

/// DISCONNECT properties (§3.14.2.2).
pub(crate) fn disconnect(r: &mut Reader<'_>) -> Result<DisconnectProperties> {
    let mut p = DisconnectProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32("session expiry")?),
            REASON_STRING => p.reason_string = Some(r.string("reason string")?),
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            SERVER_REFERENCE => p.server_reference = Some(r.string("server reference")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

/// AUTH properties (§3.15.2.2).
pub(crate) fn auth(r: &mut Reader<'_>) -> Result<AuthProperties> {
    let mut p = AuthProperties::default();
    read_props(r, bit(USER_PROPERTY), |id, r| {
        match id {
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string("auth method")?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.bin("auth data")?),
            REASON_STRING => p.reason_string = Some(r.string("reason string")?),
            USER_PROPERTY => p.user_properties.push(r.string_pair("user property")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

impl PropSet for ConnectProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        o.p_u16(RECEIVE_MAXIMUM, self.receive_maximum);
        o.p_u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        o.p_u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        o.p_bool(
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        o.p_bool(
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        o.p_users(&self.user_properties);
        o.p_str(
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "auth method",
        );
        o.p_bin(
            AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "auth data",
        );
    }
}

impl PropSet for WillProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_u32(WILL_DELAY_INTERVAL, self.will_delay_interval);
        o.p_u8(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        o.p_u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        o.p_str(CONTENT_TYPE, self.content_type.as_deref(), "content type");
        o.p_str(
            RESPONSE_TOPIC,
            self.response_topic.as_deref(),
            "response topic",
        );
        o.p_bin(
            CORRELATION_DATA,
            self.correlation_data.as_deref(),
            "correlation data",
        );
        o.p_users(&self.user_properties);
    }
}

impl PropSet for ConnAckProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        o.p_u16(RECEIVE_MAXIMUM, self.receive_maximum);
        o.p_u8(MAXIMUM_QOS, self.maximum_qos);
        o.p_bool(RETAIN_AVAILABLE, self.retain_available);
        o.p_u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        let aci = self.assigned_client_identifier.as_deref();
        o.p_str(ASSIGNED_CLIENT_IDENTIFIER, aci, "assigned client id");
        o.p_u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        o.p_str(
            REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        );
        o.p_users(&self.user_properties);
        let wsa = self.wildcard_subscription_available;
        o.p_bool(WILDCARD_SUBSCRIPTION_AVAILABLE, wsa);
        let sia = self.subscription_identifiers_available;
        o.p_bool(SUBSCRIPTION_IDENTIFIER_AVAILABLE, sia);
        o.p_bool(
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        o.p_u16(SERVER_KEEP_ALIVE, self.server_keep_alive);
        let ri = self.response_information.as_deref();
        o.p_str(RESPONSE_INFORMATION, ri, "response information");
        o.p_str(
            SERVER_REFERENCE,
            self.server_reference.as_deref(),
            "server reference",
        );
        o.p_str(
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "auth method",
        );
        o.p_bin(
            AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "auth data",
        );
    }
}

impl PropSet for PublishProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        o.p_u16(TOPIC_ALIAS, self.topic_alias);
        for &s in &self.subscription_identifiers {
            o.p_varint(SUBSCRIPTION_IDENTIFIER, s);
        }
        ConstPublishProps(self).emit(o);
    }
}

/// The PUBLISH properties that do not change between deliveries of one message
/// (everything but Message Expiry Interval, Topic Alias and Subscription Identifier).
pub(crate) struct ConstPublishProps<'a>(pub(crate) &'a PublishProperties);

impl PropSet for ConstPublishProps<'_> {
    fn emit<O: Out>(&self, o: &mut O) {
        let p = self.0;
        o.p_u8(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
        o.p_str(CONTENT_TYPE, p.content_type.as_deref(), "content type");
        o.p_str(
            RESPONSE_TOPIC,
            p.response_topic.as_deref(),
            "response topic",
        );
        o.p_bin(
            CORRELATION_DATA,
            p.correlation_data.as_deref(),
            "correlation data",
        );
        o.p_users(&p.user_properties);
    }
}

impl PropSet for AckProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_str(
            REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        );
        o.p_users(&self.user_properties);
    }
}

/// SUBSCRIBE properties: the optional Subscription Identifier and User Properties.
pub(crate) struct SubscribeProps<'a>(pub(crate) Option<u32>, pub(crate) &'a [UserProperty]);

impl PropSet for SubscribeProps<'_> {
    fn emit<O: Out>(&self, o: &mut O) {
        if let Some(s) = self.0 {
            o.p_varint(SUBSCRIPTION_IDENTIFIER, s);
        }
        o.p_users(self.1);
    }
}

/// User Properties alone (UNSUBSCRIBE).
pub(crate) struct UserProps<'a>(pub(crate) &'a [UserProperty]);

impl PropSet for UserProps<'_> {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_users(self.0);
    }
}

impl PropSet for DisconnectProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        o.p_str(
            REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        );
        o.p_users(&self.user_properties);
        o.p_str(
            SERVER_REFERENCE,
            self.server_reference.as_deref(),
            "server reference",
        );
    }
}

impl PropSet for AuthProperties {
    fn emit<O: Out>(&self, o: &mut O) {
        o.p_str(
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "auth method",
        );
        o.p_bin(
            AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "auth data",
        );
        o.p_str(
            REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        );
        o.p_users(&self.user_properties);
    }
}
