//! Packet encoding: each packet body is described once over [`Out`], measured with a
//! [`Sizer`] (which also checks field limits), then written into a `BytesMut` reserved
//! once to the exact size.

use bytes::{BufMut, BytesMut};

use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, Protocol, PubResp, Publish, QoS, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::reason::ReasonCode;

use super::properties::{SubscribeProps, UserProps};
use super::read::VARINT_MAX;
use super::write::{props_block, put_varint, varint_len, Out, PropSet, Sizer};
use super::EncodeError;

/// The first byte of the fixed header: type and flags (§2.1.2, §2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p.dup, p.qos, p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: flags 0b0010.
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// The PUBLISH fixed header byte: DUP, QoS and RETAIN flags (§3.3.1).
pub(crate) fn publish_first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain)
}

/// Checks that `packet` can be encoded for `protocol` and returns its Remaining Length.
pub(crate) fn measure(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    if matches!(packet, Packet::Auth(_)) && !protocol.is_v5() {
        return Err(EncodeError::NotInProtocol("AUTH"));
    }
    let mut s = Sizer::default();
    body(packet, protocol, &mut s);
    if let Some(e) = s.err {
        return Err(e);
    }
    if s.len > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    Ok(s.len)
}

/// See [`super::encode`].
pub(crate) fn encode(
    packet: &Packet,
    protocol: Protocol,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = measure(packet, protocol)?;
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first_byte(packet));
    put_varint(out, remaining);
    let start = out.len();
    body(packet, protocol, out);
    debug_assert_eq!(out.len() - start, remaining);
    Ok(())
}

/// See [`super::encoded_len`].
pub(crate) fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    measure(packet, protocol).map_or(0, |n| 1 + varint_len(n) + n)
}

/// The variable header and payload of `packet`.
fn body<O: Out>(packet: &Packet, protocol: Protocol, o: &mut O) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => connect(c, o),
        Packet::ConnAck(c) => connack(c, v5, o),
        Packet::Publish(p) => publish(p, v5, o),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            pub_resp(p, v5, o)
        }
        Packet::Subscribe(s) => subscribe(s, v5, o),
        Packet::SubAck(s) => suback(s, v5, o),
        Packet::Unsubscribe(u) => unsubscribe(u, v5, o),
        Packet::UnsubAck(u) => unsuback(u, v5, o),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => disconnect(d, v5, o),
        Packet::Auth(a) => auth(a, o),
    }
}

/// CONNECT (§3.1), in the version named by the packet itself.
fn connect<O: Out>(c: &Connect, o: &mut O) {
    let v5 = c.protocol.is_v5();
    let name = if c.protocol == Protocol::V31 {
        "MQIsdp"
    } else {
        "MQTT"
    };
    o.str(name, "protocol name");
    o.u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    o.u8(flags);
    o.u16(c.keep_alive);
    if v5 {
        props_block(o, &c.properties);
    }
    o.str(&c.client_id, "client identifier");
    if let Some(w) = &c.will {
        if v5 {
            props_block(o, &w.properties);
        }
        o.str(&w.topic, "will topic");
        o.bin(&w.payload, "will payload");
    }
    if let Some(u) = &c.username {
        o.str(u, "user name");
    }
    if let Some(p) = &c.password {
        o.bin(p, "password");
    }
}

/// CONNACK (§3.2); v3 return codes via [`ReasonCode::to_v3_connack`].
fn connack<O: Out>(c: &ConnAck, v5: bool, o: &mut O) {
    o.u8(u8::from(c.session_present));
    if v5 {
        o.u8(c.code.as_u8());
        props_block(o, &c.properties);
    } else {
        o.u8(c.code.to_v3_connack());
    }
}

/// PUBLISH (§3.3). A QoS > 0 PUBLISH without a packet id is written with id 0.
fn publish<O: Out>(p: &Publish, v5: bool, o: &mut O) {
    o.str(&p.topic, "topic name");
    if p.qos != QoS::AtMostOnce {
        o.u16(p.packet_id.unwrap_or(0));
    }
    if v5 {
        props_block(o, &*p.properties);
    }
    o.raw(&p.payload);
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4.2.1): in v5 the Reason Code is omitted for
/// Success without properties, and the Property Length when there are no properties.
fn pub_resp<O: Out>(p: &PubResp, v5: bool, o: &mut O) {
    o.u16(p.packet_id);
    if v5 {
        let has_props = p.properties.props_len() > 0;
        if p.reason != ReasonCode::Success || has_props {
            o.u8(p.reason.as_u8());
        }
        if has_props {
            props_block(o, &p.properties);
        }
    }
}

/// The SUBSCRIBE options byte (§3.8.3.1); only the QoS bits before v5.
fn options_byte(f: &crate::packet::SubscriptionOptions, v5: bool) -> u8 {
    if v5 {
        f.to_byte()
    } else {
        f.qos as u8
    }
}

/// SUBSCRIBE (§3.8).
fn subscribe<O: Out>(s: &Subscribe, v5: bool, o: &mut O) {
    o.u16(s.packet_id);
    if v5 {
        props_block(
            o,
            &SubscribeProps(s.subscription_identifier, &s.user_properties),
        );
    }
    for f in &s.filters {
        o.str(&f.filter, "topic filter");
        o.u8(options_byte(&f.options, v5));
    }
}

/// SUBACK (§3.9); before v5 every failure is 0x80 and only 0, 1, 2 are grants.
fn suback<O: Out>(s: &SubAck, v5: bool, o: &mut O) {
    o.u16(s.packet_id);
    if v5 {
        props_block(o, &s.properties);
    }
    for &r in &s.reasons {
        let b = r.as_u8();
        o.u8(if v5 || b <= 2 { b } else { 0x80 });
    }
}

/// UNSUBSCRIBE (§3.10).
fn unsubscribe<O: Out>(u: &Unsubscribe, v5: bool, o: &mut O) {
    o.u16(u.packet_id);
    if v5 {
        props_block(o, &UserProps(&u.user_properties));
    }
    for f in &u.filters {
        o.str(f, "topic filter");
    }
}

/// UNSUBACK (§3.11): no payload before v5.
fn unsuback<O: Out>(u: &UnsubAck, v5: bool, o: &mut O) {
    o.u16(u.packet_id);
    if v5 {
        props_block(o, &u.properties);
        for &r in &u.reasons {
            o.u8(r.as_u8());
        }
    }
}

/// DISCONNECT (§3.14): empty before v5; in v5 the short forms of §3.14.2.1.
fn disconnect<O: Out>(d: &Disconnect, v5: bool, o: &mut O) {
    if v5 {
        let has_props = d.properties.props_len() > 0;
        if d.reason != ReasonCode::Success || has_props {
            o.u8(d.reason.as_u8());
        }
        if has_props {
            props_block(o, &d.properties);
        }
    }
}

/// AUTH (§3.15): empty for Success without properties, else reason and properties.
fn auth<O: Out>(a: &Auth, o: &mut O) {
    if a.reason != ReasonCode::Success || a.properties.props_len() > 0 {
        o.u8(a.reason.as_u8());
        props_block(o, &a.properties);
    }
}
