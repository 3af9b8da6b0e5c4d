//! Packet decoding: the fixed header (type, flags, Remaining Length, size limit) and
//! the variable header and payload of every packet type, with the spec's checks.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, Protocol, PubResp, Publish, QoS, RetainHandling,
    SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::reason::ReasonCode;

use super::properties::{self as props, has_wildcard};
use super::read::{varint_prefix, Reader, VarintPrefix};
use super::DecodeError;

type Result<T> = std::result::Result<T, DecodeError>;

/// See [`super::decode`].
pub(crate) fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: usize,
) -> Result<Option<Packet>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (remaining, len_bytes) = match varint_prefix(&buf[1..])? {
        VarintPrefix::Incomplete => return Ok(None),
        VarintPrefix::Value(v, n) => (v as usize, n),
    };
    let header_len = 1 + len_bytes;
    let size = header_len + remaining;
    // Rejected from the fixed header alone, before the body arrives.
    if size > max_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let body = &buf[header_len..size];
    let packet = packet(first, body, protocol)?;
    buf.advance(size);
    Ok(Some(packet))
}

/// Decodes one packet from its first byte and its body (exactly Remaining Length bytes).
pub(crate) fn packet(first: u8, body: &[u8], protocol: Option<Protocol>) -> Result<Packet> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let proto = protocol.unwrap_or(Protocol::V311);
    let v5 = proto.is_v5();
    let mut r = Reader::new(body);

    // §2.1.3: flags other than PUBLISH's are fixed; anything else is malformed
    // [MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-1], [MQTT-2.2.2-2]).
    let expected_flags = match kind {
        3 => flags,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        // PUBREL [MQTT-3.6.1-1], SUBSCRIBE [MQTT-3.8.1-1], UNSUBSCRIBE [MQTT-3.10.1-1].
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }

    let p = match kind {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(Box::new(connack(&mut r, v5)?)),
        3 => Packet::Publish(publish(flags, &mut r, v5)?),
        4 => Packet::PubAck(pub_resp(&mut r, v5)?),
        5 => Packet::PubRec(pub_resp(&mut r, v5)?),
        6 => Packet::PubRel(pub_resp(&mut r, v5)?),
        7 => Packet::PubComp(pub_resp(&mut r, v5)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(Box::new(disconnect(&mut r, v5)?)),
        15 if v5 => Packet::Auth(Box::new(auth(&mut r)?)),
        // Type 0 is reserved (§2.1.2), and 15 is reserved before MQTT 5.0.
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    // Every field has been read: any byte left means the Remaining Length claims more
    // than the packet holds (PINGREQ, PINGRESP and v3 DISCONNECT have length 0; v3
    // acknowledgements are exactly 2 bytes; etc.).
    r.finish("packet longer than its fields")?;
    Ok(p)
}

/// A v5 reason code byte; an unknown value is malformed.
fn reason(r: &mut Reader<'_>) -> Result<ReasonCode> {
    ReasonCode::from_u8(r.u8("reason code")?).ok_or(DecodeError::Malformed("unknown reason code"))
}

/// A packet identifier that must be non-zero [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
fn packet_id(r: &mut Reader<'_>) -> Result<u16> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

/// CONNECT (§3.1). Its version comes from its own protocol name and level.
fn connect(r: &mut Reader<'_>) -> Result<Connect> {
    let name = r.str_ref("protocol name")?;
    let level = r.u8("protocol level")?;
    // [MQTT-3.1.2-1]: unknown protocol name; [MQTT-3.1.2-2]: unsupported level
    // (answered with CONNACK 0x01 / 0x84 by the caller).
    let protocol = match (name, level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQIsdp", 3) => Protocol::V31,
        _ => return Err(DecodeError::UnsupportedProtocol(level)),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8("connect flags")?;
    // [MQTT-3.1.2-3]: the reserved flag MUST be 0, else malformed.
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // Will Flag 0: Will QoS and Will Retain MUST be 0 (3.1.1 [MQTT-3.1.2-11],
        // [MQTT-3.1.2-13], [MQTT-3.1.2-15]; v5 [MQTT-3.1.2-11], [MQTT-3.1.2-13]).
        return Err(DecodeError::Malformed(
            "will QoS or retain without will flag",
        ));
    }
    // Will QoS MUST NOT be 3 (3.1.1 [MQTT-3.1.2-14], v5 [MQTT-3.1.2-12]).
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("will QoS 3"))?;
    // 3.1.1 [MQTT-3.1.2-22]: password flag without user name flag. MQTT 5.0 allows it.
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag without user name flag",
        ));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        props::connect(r)?
    } else {
        Default::default()
    };
    // [MQTT-3.1.3-3] / [MQTT-3.1.3-4]: the Client Identifier is present, a UTF-8 string.
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if v5 {
            props::will(r)?
        } else {
            Default::default()
        };
        let topic = r.string("will topic")?;
        let payload = r.bin("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.bin("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// CONNACK (§3.2).
fn connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck> {
    let ack_flags = r.u8("connect acknowledge flags")?;
    // Bits 7-1 are reserved and MUST be 0 (3.1.1 §3.2.2.1, v5 §3.2.2.1.1).
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let session_present = ack_flags & 0x01 != 0;
    if v5 {
        let code = reason(r)?;
        let properties = props::connack(r)?;
        Ok(ConnAck {
            session_present,
            code,
            properties,
        })
    } else {
        let rc = r.u8("connect return code")?;
        let code = ReasonCode::from_v3_connack(rc)
            .ok_or(DecodeError::Malformed("unknown CONNACK return code"))?;
        Ok(ConnAck {
            session_present,
            code,
            properties: Default::default(),
        })
    }
}

/// PUBLISH (§3.3).
fn publish(flags: u8, r: &mut Reader<'_>, v5: bool) -> Result<Publish> {
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    // [MQTT-3.3.1-4]: QoS bits MUST NOT both be 1.
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    // [MQTT-3.3.1-2]: DUP MUST be 0 for QoS 0 messages.
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string("topic name")?;
    // [MQTT-3.3.2-2]: the Topic Name MUST NOT contain wildcard characters.
    if has_wildcard(&topic) {
        return Err(DecodeError::Protocol("wildcard in PUBLISH topic"));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = if v5 {
        props::publish(r)?
    } else {
        Default::default()
    };
    // v5 §3.3.2.1: a zero-length Topic Name without a Topic Alias is a Protocol Error.
    // 3.1.1 [MQTT-4.7.3-1]: Topic Names MUST be at least one character long.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::Protocol(
            "empty topic name without topic alias",
        ));
    }
    let payload = Bytes::copy_from_slice(r.rest());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4-§3.7). In v5 the Reason Code may be omitted
/// when the Remaining Length is 2 (Success), and the Property Length when it is 3
/// (§3.4.2.1).
fn pub_resp(r: &mut Reader<'_>, v5: bool) -> Result<PubResp> {
    let packet_id = packet_id(r)?;
    let mut p = PubResp {
        packet_id,
        ..Default::default()
    };
    if v5 && !r.is_empty() {
        p.reason = reason(r)?;
        if !r.is_empty() {
            p.properties = props::ack(r)?;
        }
    }
    Ok(p)
}

/// SUBSCRIBE (§3.8).
fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe> {
    let packet_id = packet_id(r)?;
    let (subscription_identifier, user_properties) = if v5 {
        props::subscribe(r)?
    } else {
        (None, Vec::new())
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let o = r.u8("subscription options")?;
        let options = if v5 {
            // [MQTT-3.8.3-5]: reserved bits 6-7 MUST be 0, else malformed.
            if o & 0xC0 != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options reserved bits set",
                ));
            }
            // §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
            // and "It is a Protocol Error to send a Retain Handling value of 3".
            let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::Protocol("subscription QoS 3"))?;
            let retain_handling = match (o >> 4) & 0x03 {
                0 => RetainHandling::SendAlways,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::Protocol("retain handling 3")),
            };
            let no_local = o & 0x04 != 0;
            // [MQTT-3.8.3-4]: No Local on a Shared Subscription is a Protocol Error.
            if no_local && filter.starts_with("$share/") {
                return Err(DecodeError::Protocol("no local on a shared subscription"));
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            }
        } else {
            // 3.1.1 [MQTT-3-8.3-4]: reserved bits non-zero or QoS 3 is malformed.
            if o & 0xFC != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options reserved bits set",
                ));
            }
            let qos = QoS::from_u8(o).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    // 3.1.1 [MQTT-3.8.3-3] / v5 [MQTT-3.8.3-2]: at least one filter; "a SUBSCRIBE
    // packet with no payload is a Protocol Error" (v5) / "a protocol violation" (3.1.1).
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_identifier,
        user_properties,
    })
}

/// SUBACK (§3.9).
fn suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck> {
    let packet_id = packet_id(r)?;
    let properties = if v5 {
        props::ack(r)?
    } else {
        Default::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = if v5 {
            reason(r)?
        } else {
            // 3.1.1 §3.9.3: 0x00, 0x01, 0x02 or 0x80 [MQTT-3.9.3-2].
            match r.u8("return code")? {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => return Err(DecodeError::Malformed("invalid SUBACK return code")),
            }
        };
        reasons.push(code);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// UNSUBSCRIBE (§3.10).
fn unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe> {
    let packet_id = packet_id(r)?;
    let user_properties = if v5 {
        props::unsubscribe(r)?
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    // 3.1.1 [MQTT-3.10.3-2] / v5 [MQTT-3.10.3-2]: at least one Topic Filter; "an
    // UNSUBSCRIBE packet with no Payload is a Protocol Error".
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

/// UNSUBACK (§3.11). No payload before v5.
fn unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck> {
    let packet_id = packet_id(r)?;
    let mut p = UnsubAck {
        packet_id,
        ..Default::default()
    };
    if v5 {
        p.properties = props::ack(r)?;
        p.reasons.reserve_exact(r.remaining());
        while !r.is_empty() {
            p.reasons.push(reason(r)?);
        }
    }
    Ok(p)
}

/// DISCONNECT (§3.14). In v5 a Remaining Length of 0 means Normal disconnection, and
/// of 1 means no properties (§3.14.2.1, §3.14.2.2.1). Empty before v5.
fn disconnect(r: &mut Reader<'_>, v5: bool) -> Result<Disconnect> {
    let mut d = Disconnect::default();
    if v5 && !r.is_empty() {
        d.reason = reason(r)?;
        if !r.is_empty() {
            d.properties = props::disconnect(r)?;
        }
    }
    Ok(d)
}

/// AUTH (§3.15, v5 only). A Remaining Length of 0 means Success with no properties
/// (§3.15.2.1).
fn auth(r: &mut Reader<'_>) -> Result<Auth> {
    let mut a = Auth::default();
    if !r.is_empty() {
        a.reason = reason(r)?;
        if !r.is_empty() {
            a.properties = props::auth(r)?;
        }
    }
    Ok(a)
}
