//! [`SharedPublish`]: a PUBLISH whose shared part (topic, constant v5 properties,
//! payload) is prepared once and copied into each subscriber's packet, with only the
//! per-delivery header (flags, packet id, expiry, topic alias, subscription ids)
//! written per delivery.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::{Protocol, Publish, PublishProperties, PublishProps, QoS};

use super::encode::publish_first_byte;
use super::properties::{id, ConstPublishProps};
use super::read::VARINT_MAX;
use super::write::{put_varint, varint_len, PropSet, Sizer};
use super::{Delivery, EncodeError};

/// The part of a [`SharedPublish`] behind its `Arc`.
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    /// Topic Name.
    pub(crate) topic: String,
    /// The constant properties, encoded once (identifiers and values, no length).
    pub(crate) props: Bytes,
    /// The constant properties as values, for [`super::SharedPublish::to_publish`].
    pub(crate) const_props: PublishProps,
    /// The payload.
    pub(crate) payload: Bytes,
    /// The Message Expiry Interval the message was published with.
    pub(crate) message_expiry: Option<u32>,
    /// QoS the message was published with.
    pub(crate) qos: QoS,
    /// RETAIN flag the message was published with.
    pub(crate) retain: bool,
}

/// The longest string or binary field MQTT can carry.
const FIELD_MAX: usize = u16::MAX as usize;

/// Prepares the shared part of `publish`.
pub(crate) fn prepare(publish: &Publish) -> Result<Inner, EncodeError> {
    prepare_owned(publish.clone())
}

/// Like [`prepare`], taking the PUBLISH by value: the topic and properties move in
/// instead of being copied (the hot path: a decoded PUBLISH is not needed afterwards).
pub(crate) fn prepare_owned(publish: Publish) -> Result<Inner, EncodeError> {
    if publish.topic.len() > FIELD_MAX {
        return Err(EncodeError::FieldTooLong("topic name"));
    }
    if publish.properties.is_empty() {
        // Every 3.1.1 PUBLISH and most v5 ones: nothing to encode.
        return Ok(Inner {
            topic: publish.topic,
            props: Bytes::new(),
            const_props: PublishProps::default(),
            payload: publish.payload,
            message_expiry: None,
            qos: publish.qos,
            retain: publish.retain,
        });
    }
    let p = publish.properties.into_inner();
    let const_props = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        ..Default::default()
    };
    let mut s = Sizer::default();
    ConstPublishProps(&const_props).emit(&mut s);
    if let Some(e) = s.err {
        return Err(e);
    }
    let mut props = BytesMut::with_capacity(s.len);
    ConstPublishProps(&const_props).emit(&mut props);
    Ok(Inner {
        topic: publish.topic,
        props: props.freeze(),
        const_props: const_props.into(),
        payload: publish.payload,
        message_expiry: p.message_expiry_interval,
        qos: publish.qos,
        retain: publish.retain,
    })
}

/// Whether `id` can be sent as a Subscription Identifier (1 to 268,435,455); others
/// are skipped, as a receiver would reject them.
fn valid_sub_id(id: u32) -> bool {
    id != 0 && id <= VARINT_MAX
}

/// The Topic Name bytes sent for `delivery`: empty in v5 when an alias replaces it,
/// else the topic (at most 65,535 bytes, enforced by [`prepare`]).
fn topic_bytes<'a>(inner: &'a Inner, protocol: Protocol, d: &Delivery<'_>) -> &'a [u8] {
    if protocol.is_v5() && !d.send_topic {
        b""
    } else {
        let t = inner.topic.as_bytes();
        &t[..t.len().min(FIELD_MAX)]
    }
}

/// The length of the per-delivery properties (expiry, alias, subscription ids).
fn varying_props_len(d: &Delivery<'_>) -> usize {
    let mut n = 0;
    if d.message_expiry.is_some() {
        n += 5;
    }
    if d.topic_alias.is_some() {
        n += 3;
    }
    for &s in d.subscription_ids.iter().filter(|&&s| valid_sub_id(s)) {
        n += 1 + varint_len(s as usize);
    }
    n
}

/// (Remaining Length, Property Length) of the packet for one delivery.
fn lengths(inner: &Inner, protocol: Protocol, d: &Delivery<'_>) -> (usize, usize) {
    let mut rl = 2 + topic_bytes(inner, protocol, d).len() + inner.payload.len();
    if d.qos != QoS::AtMostOnce {
        rl += 2;
    }
    let mut pl = 0;
    if protocol.is_v5() {
        pl = varying_props_len(d) + inner.props.len();
        rl += varint_len(pl) + pl;
    }
    (rl, pl)
}

/// See [`super::SharedPublish::encoded_len`].
pub(crate) fn encoded_len(inner: &Inner, protocol: Protocol, d: &Delivery<'_>) -> usize {
    let (rl, _) = lengths(inner, protocol, d);
    1 + varint_len(rl) + rl
}

/// See [`super::SharedPublish::encode`].
pub(crate) fn encode(inner: &Inner, protocol: Protocol, d: &Delivery<'_>, out: &mut BytesMut) {
    let (rl, pl) = lengths(inner, protocol, d);
    out.reserve(1 + varint_len(rl) + rl);
    out.put_u8(publish_first_byte(d.dup, d.qos, d.retain));
    put_varint(out, rl);
    let topic = topic_bytes(inner, protocol, d);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    if d.qos != QoS::AtMostOnce {
        out.put_u16(d.packet_id.unwrap_or(0));
    }
    if protocol.is_v5() {
        put_varint(out, pl);
        if let Some(e) = d.message_expiry {
            out.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(e);
        }
        if let Some(a) = d.topic_alias {
            out.put_u8(id::TOPIC_ALIAS);
            out.put_u16(a);
        }
        for &s in d.subscription_ids.iter().filter(|&&s| valid_sub_id(s)) {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(out, s as usize);
        }
        out.put_slice(&inner.props);
    }
    out.put_slice(&inner.payload);
}

/// See [`super::SharedPublish::to_publish`].
pub(crate) fn to_publish(inner: &Inner, d: &Delivery<'_>) -> Publish {
    let mut properties = inner.const_props.clone().into_inner();
    properties.message_expiry_interval = d.message_expiry;
    properties.topic_alias = d.topic_alias;
    properties.subscription_identifiers = d
        .subscription_ids
        .iter()
        .copied()
        .filter(|&s| valid_sub_id(s))
        .collect();
    Publish {
        dup: d.dup,
        qos: d.qos,
        retain: d.retain,
        topic: if d.send_topic {
            inner.topic.clone()
        } else {
            String::new()
        },
        packet_id: if d.qos == QoS::AtMostOnce {
            None
        } else {
            d.packet_id
        },
        properties: properties.into(),
        payload: inner.payload.clone(),
    }
}
