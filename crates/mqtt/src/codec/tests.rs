//! Codec tests: fixed vectors, a table of malformed inputs with the spec statement
//! each one checks, round-trip and decoder-robustness property tests, and
//! [`SharedPublish`] against the plain encoder and decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::packet::*;

const MAX: usize = 1 << 20;

fn enc(p: &Packet, proto: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, proto, &mut out).expect("encodable");
    assert_eq!(out.len(), encoded_len(p, proto), "encoded_len for {p:?}");
    out
}

fn dec(bytes: &[u8], proto: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut b = BytesMut::from(bytes);
    let r = decode(&mut b, proto, MAX);
    if let Ok(Some(_)) = r {
        assert!(b.is_empty(), "decode left {} bytes", b.len());
    } else {
        assert_eq!(
            &b[..],
            bytes,
            "nothing consumed unless a packet is returned"
        );
    }
    r
}

/// A packet from its first byte and body, with the Remaining Length filled in.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[first]);
    write::put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// A CONNECT body: protocol name, level, flags, keep alive 60, then `rest`.
fn connect_body(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[level, flags, 0, 60]);
    b.extend_from_slice(rest);
    b
}

// ------------------------------------------------------------------ fixed vectors

#[test]
fn connect_v311_vector() {
    let c = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        ..Default::default()
    };
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), Protocol::V311);
    let body = connect_body("MQTT", 4, 0xC2, &[0, 1, b'c', 0, 1, b'u', 0, 1, b'p']);
    assert_eq!(&bytes[..], &pkt(0x10, &body)[..]);
    assert_eq!(
        dec(&bytes, None).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
}

#[test]
fn connect_v31_uses_mqisdp() {
    let c = Connect {
        protocol: Protocol::V31,
        client_id: "x".into(),
        ..Default::default()
    };
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), Protocol::V31);
    assert_eq!(&bytes[2..10], b"\x00\x06MQIsdp");
    assert_eq!(bytes[10], 3);
    assert_eq!(
        dec(&bytes, None).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
}

#[test]
fn v5_short_forms() {
    let ack = |reason, rs: Option<&str>| {
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason,
            properties: AckProperties {
                reason_string: rs.map(Into::into),
                ..Default::default()
            },
        })
    };
    let v5 = Protocol::V5;
    assert_eq!(
        &enc(&ack(ReasonCode::Success, None), v5)[..],
        [0x40, 2, 0, 1]
    );
    let no_match = ReasonCode::NoMatchingSubscribers;
    assert_eq!(&enc(&ack(no_match, None), v5)[..], [0x40, 3, 0, 1, 0x10]);
    assert_eq!(
        &enc(&ack(ReasonCode::Success, Some("r")), v5)[..],
        [0x40, 8, 0, 1, 0, 4, 0x1F, 0, 1, b'r']
    );
    let disc = Packet::Disconnect(Disconnect::default());
    assert_eq!(&enc(&disc, v5)[..], [0xE0, 0]);
    assert_eq!(&enc(&disc, Protocol::V311)[..], [0xE0, 0]);
    let d2 = Packet::Disconnect(Disconnect {
        reason: ReasonCode::ServerBusy,
        ..Default::default()
    });
    assert_eq!(&enc(&d2, v5)[..], [0xE0, 1, 0x89]);
    assert_eq!(&enc(&Packet::Auth(Auth::default()), v5)[..], [0xF0, 0]);
    // Decoding accepts every short form.
    let pubrel = pkt(0x62, &[0, 9]);
    let want = Packet::PubRel(PubResp {
        packet_id: 9,
        ..Default::default()
    });
    assert_eq!(dec(&pubrel, Some(v5)).unwrap(), Some(want));
    assert_eq!(dec(&[0xE0, 0], Some(v5)).unwrap(), Some(disc));
    assert_eq!(
        dec(&[0xF0, 0], Some(v5)).unwrap(),
        Some(Packet::Auth(Auth::default()))
    );
    let d1 = Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        ..Default::default()
    });
    assert_eq!(dec(&[0xE0, 1, 4], Some(v5)).unwrap(), Some(d1));
}

#[test]
fn v3_specific_encodings() {
    let v3 = Protocol::V311;
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
        ],
        ..Default::default()
    });
    assert_eq!(&enc(&suback, v3)[..], [0x90, 6, 0, 1, 0, 2, 0x80, 0x80]);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 7,
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        ..Default::default()
    });
    assert_eq!(&enc(&unsuback, v3)[..], [0xB0, 2, 0, 7]);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::ServerBusy,
        ..Default::default()
    });
    assert_eq!(&enc(&connack, v3)[..], [0x20, 2, 1, 3]);
    let want = ConnAck {
        session_present: true,
        code: ReasonCode::ServerUnavailable,
        ..Default::default()
    };
    assert_eq!(
        dec(&[0x20, 2, 1, 3], Some(v3)).unwrap(),
        Some(Packet::ConnAck(want))
    );
}

#[test]
fn encode_errors() {
    let auth = Packet::Auth(Auth::default());
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&auth, Protocol::V311, &mut out),
        Err(EncodeError::NotInProtocol("AUTH"))
    );
    assert_eq!(encoded_len(&auth, Protocol::V311), 0);
    let long = Packet::Publish(Publish {
        topic: "a".repeat(65_536),
        ..Default::default()
    });
    assert_eq!(
        encode(&long, Protocol::V5, &mut out),
        Err(EncodeError::FieldTooLong("topic name"))
    );
    assert!(out.is_empty(), "nothing appended on error");
    let ok = Packet::Publish(Publish {
        topic: "a".repeat(65_535),
        ..Default::default()
    });
    assert!(encode(&ok, Protocol::V5, &mut out).is_ok());
    let big_sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            ..Default::default()
        }],
        subscription_identifier: Some(268_435_456),
        ..Default::default()
    });
    assert_eq!(
        encode(&big_sub, Protocol::V5, &mut out),
        Err(EncodeError::TooLarge)
    );
}

#[test]
fn too_large_from_fixed_header_alone() {
    // PUBLISH announcing 1000 bytes, only the fixed header present.
    let mut b = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]);
    assert_eq!(
        decode(&mut b, Some(Protocol::V311), 100),
        Err(DecodeError::TooLarge {
            size: 1003,
            max: 100
        })
    );
    // Exactly at the limit is fine (once complete).
    let p = pkt(0x30, &[0, 1, b'a', 1, 2, 3]);
    let mut b = BytesMut::from(&p[..]);
    assert!(decode(&mut b, Some(Protocol::V311), p.len())
        .unwrap()
        .is_some());
    let mut b = BytesMut::from(&p[..]);
    assert!(matches!(
        decode(&mut b, Some(Protocol::V311), p.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn incomplete_remaining_length_waits() {
    assert_eq!(dec(&[], None).unwrap(), None);
    assert_eq!(dec(&[0x30], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x80], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x80, 0x80, 0x80], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x05, 0, 1], None).unwrap(), None);
}

#[test]
fn decoded_payload_does_not_pin_read_buffer() {
    let p = pkt(0x30, &[0, 1, b'a', 9, 9, 9]);
    let mut b = BytesMut::from(&p[..]);
    b.extend_from_slice(&[0xC0, 0]);
    let Some(Packet::Publish(publ)) = decode(&mut b, None, MAX).unwrap() else {
        panic!()
    };
    assert_eq!(&publ.payload[..], [9, 9, 9]);
    // The payload is its own allocation, not a view into `b`.
    let range = b.as_ptr() as usize..b.as_ptr() as usize + b.capacity();
    assert!(!range.contains(&(publ.payload.as_ptr() as usize)));
    assert_eq!(decode(&mut b, None, MAX).unwrap(), Some(Packet::PingReq));
}

// ------------------------------------------------------------------ malformed table

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Malformed,
    ProtoErr,
    Unsupported(u8),
    Ok,
}

fn class(r: &Result<Option<Packet>, DecodeError>) -> Want {
    match r {
        Ok(Some(_)) => Want::Ok,
        Ok(None) => panic!("incomplete"),
        Err(DecodeError::Malformed(_)) => Want::Malformed,
        Err(DecodeError::Protocol(_)) => Want::ProtoErr,
        Err(DecodeError::UnsupportedProtocol(l)) => Want::Unsupported(*l),
        Err(DecodeError::TooLarge { .. }) => panic!("too large"),
    }
}

/// Builds a v5 PUBLISH "a" QoS 0 with the given property bytes.
fn v5_publish_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b'a', props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(b"pl");
    pkt(0x30, &body)
}

/// A v5 CONNECT with the given property bytes.
fn v5_connect_props(flags: u8, props: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut r = vec![props.len() as u8];
    r.extend_from_slice(props);
    r.extend_from_slice(&[0, 1, b'c']);
    r.extend_from_slice(rest);
    pkt(0x10, &connect_body("MQTT", 5, flags, &r))
}

#[test]
fn malformed_table() {
    use Protocol::{V311, V5};
    use Want::*;
    let v311 = Some(V311);
    let v5 = Some(V5);
    let c311 = |flags: u8, rest: &[u8]| {
        let mut r = vec![0, 1, b'c'];
        r.extend_from_slice(rest);
        pkt(0x10, &connect_body("MQTT", 4, flags, &r))
    };
    #[rustfmt::skip]
    let table: Vec<(&str, Option<Protocol>, Vec<u8>, Want)> = vec![
        // Remaining Length / Variable Byte Integer.
        ("[MQTT-1.5.5-1] 5-byte remaining length", v311, vec![0xC0, 0x80, 0x80, 0x80, 0x80, 0x01], Malformed),
        ("[MQTT-1.5.5-1] non-minimal remaining length", v311, vec![0xC0, 0x80, 0x00], Malformed),
        ("§2.1.2 reserved packet type 0", v311, vec![0x00, 0x00], Malformed),
        ("§2.1.2 AUTH is reserved before v5", v311, vec![0xF0, 0x00], Malformed),
        ("§2.1.2 AUTH is reserved before v5 (no CONNECT yet)", None, vec![0xF0, 0x00], Malformed),
        // Fixed header flags.
        ("[MQTT-2.2.2-2] PINGREQ flags", v311, vec![0xC1, 0x00], Malformed),
        ("[MQTT-2.2.2-2] PUBACK flags", v5, pkt(0x42, &[0, 1]), Malformed),
        ("[MQTT-3.6.1-1] PUBREL flags 0", v311, pkt(0x60, &[0, 1]), Malformed),
        ("[MQTT-3.8.1-1] SUBSCRIBE flags 0", v311, pkt(0x80, &[0, 1, 0, 1, b'a', 0]), Malformed),
        ("[MQTT-3.10.1-1] UNSUBSCRIBE flags 0", v311, pkt(0xA0, &[0, 1, 0, 1, b'a']), Malformed),
        ("[MQTT-3.3.1-4] PUBLISH QoS 3", v311, pkt(0x36, &[0, 1, b'a', 0, 1]), Malformed),
        ("[MQTT-3.3.1-2] DUP on QoS 0", v311, pkt(0x38, &[0, 1, b'a']), Malformed),
        // Strings.
        ("[MQTT-1.5.3-1] invalid UTF-8 topic", v311, pkt(0x30, &[0, 2, 0xC3, 0x28]), Malformed),
        ("[MQTT-1.5.3-1] UTF-16 surrogate in topic", v311, pkt(0x30, &[0, 3, 0xED, 0xA0, 0x80]), Malformed),
        ("[MQTT-1.5.3-2] U+0000 in topic", v311, pkt(0x30, &[0, 2, b'a', 0]), Malformed),
        ("[MQTT-1.5.4-2] U+0000 in v5 user property", v5, v5_publish_props(&[0x26, 0, 1, 0, 0, 1, b'v']), Malformed),
        ("§1.5.4 string longer than the packet", v311, pkt(0x30, &[0, 5, b'a']), Malformed),
        // PUBLISH rules.
        ("[MQTT-3.3.2-2] '#' in PUBLISH topic", v311, pkt(0x30, &[0, 3, b'a', b'/', b'#']), ProtoErr),
        ("[MQTT-3.3.2-2] '+' in PUBLISH topic", v5, pkt(0x30, &[0, 1, b'+', 0]), ProtoErr),
        ("[MQTT-2.3.1-1] QoS 1 PUBLISH packet id 0", v311, pkt(0x32, &[0, 1, b'a', 0, 0]), ProtoErr),
        ("[MQTT-2.2.1-3] QoS 2 PUBLISH packet id 0", v5, pkt(0x34, &[0, 1, b'a', 0, 0, 0]), ProtoErr),
        ("[MQTT-4.7.3-1] empty topic (3.1.1)", v311, pkt(0x30, &[0, 0]), ProtoErr),
        ("§3.3.2.1 empty topic without alias (v5)", v5, pkt(0x30, &[0, 0, 0]), ProtoErr),
        ("§3.3.2.1 empty topic with alias (v5) is fine", v5, pkt(0x30, &[0, 0, 3, 0x23, 0, 5]), Ok),
        ("§3.3.2.3 missing property length (v5)", v5, pkt(0x30, &[0, 1, b'a']), Malformed),
        ("§2.2.2.1 property length beyond packet", v5, pkt(0x30, &[0, 1, b'a', 9, 1, 0]), Malformed),
        ("§2.2.2.2 truncated property value", v5, v5_publish_props(&[0x02, 0, 0]), Malformed),
        // Properties.
        ("§3.3.2.3.2 duplicate Payload Format Indicator", v5, v5_publish_props(&[1, 0, 1, 1]), ProtoErr),
        ("§3.3.2.3.2 Payload Format Indicator 2", v5, v5_publish_props(&[1, 2]), ProtoErr),
        ("§3.3.2.3.7 User Property may repeat", v5, v5_publish_props(&[0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0]), Ok),
        ("§3.3.2.3.8 Subscription Identifier may repeat in PUBLISH", v5, v5_publish_props(&[0x0B, 1, 0x0B, 2]), Ok),
        ("§3.3.2.3.8 Subscription Identifier 0", v5, v5_publish_props(&[0x0B, 0]), ProtoErr),
        ("[MQTT-3.3.2-8] Topic Alias 0", v5, v5_publish_props(&[0x23, 0, 0]), ProtoErr),
        ("[MQTT-3.3.2-14] wildcard in Response Topic", v5, v5_publish_props(&[0x08, 0, 1, b'#']), ProtoErr),
        ("§2.2.2.2 property not valid for PUBLISH", v5, v5_publish_props(&[0x11, 0, 0, 0, 1]), Malformed),
        ("§2.2.2.2 unknown property identifier", v5, v5_publish_props(&[0x05, 0]), Malformed),
        ("§2.2.2.2 property identifier beyond the table", v5, v5_publish_props(&[0x7F, 0]), Malformed),
        ("§3.1.2.11.3 Receive Maximum 0", v5, v5_connect_props(0, &[0x21, 0, 0], &[]), ProtoErr),
        ("§3.1.2.11.4 Maximum Packet Size 0", v5, v5_connect_props(0, &[0x27, 0, 0, 0, 0], &[]), ProtoErr),
        ("§3.1.2.11.7 Request Problem Information 2", v5, v5_connect_props(0, &[0x17, 2], &[]), ProtoErr),
        ("§3.1.2.11.6 Request Response Information 2", v5, v5_connect_props(0, &[0x19, 2], &[]), ProtoErr),
        ("§3.1.2.11.2 duplicate Session Expiry Interval", v5, v5_connect_props(0, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1], &[]), ProtoErr),
        ("§3.1.2.11.10 Authentication Data without Method", v5, v5_connect_props(0, &[0x16, 0, 0], &[]), ProtoErr),
        ("§3.1.2.9 v5 password without user name is allowed", v5, v5_connect_props(0x40, &[], &[0, 1, b'p']), Ok),
        // CONNECT.
        ("[MQTT-3.1.2-3] CONNECT reserved flag", v311, c311(0x01, &[]), Malformed),
        ("[MQTT-3.1.2-13] will QoS without will flag", v311, c311(0x08, &[]), Malformed),
        ("[MQTT-3.1.2-15] will retain without will flag", v311, c311(0x20, &[]), Malformed),
        ("[MQTT-3.1.2-14] will QoS 3", v311, c311(0x1C, &[0, 1, b't', 0, 0]), Malformed),
        ("[MQTT-3.1.2-22] password without user name (3.1.1)", v311, c311(0x40, &[0, 1, b'p']), Malformed),
        ("[MQTT-3.1.3-3] missing client identifier", v311, pkt(0x10, &connect_body("MQTT", 4, 0, &[])), Malformed),
        ("§3.1.3 user name flag without user name", v311, c311(0x80, &[]), Malformed),
        ("§3.1 trailing bytes after CONNECT payload", v311, c311(0, &[0]), Malformed),
        ("[MQTT-3.1.2-1] unknown protocol name", None, pkt(0x10, &connect_body("MQTX", 4, 0, &[0, 1, b'c'])), Unsupported(4)),
        ("[MQTT-3.1.2-2] unsupported level 6", None, pkt(0x10, &connect_body("MQTT", 6, 0, &[0, 1, b'c'])), Unsupported(6)),
        ("[MQTT-3.1.2-2] MQTT with level 3", None, pkt(0x10, &connect_body("MQTT", 3, 0, &[0, 1, b'c'])), Unsupported(3)),
        ("[MQTT-3.1.2-2] MQIsdp with level 4", None, pkt(0x10, &connect_body("MQIsdp", 4, 0, &[0, 1, b'c'])), Unsupported(4)),
        ("§3.1.2.1 MQIsdp level 3 is 3.1", None, pkt(0x10, &connect_body("MQIsdp", 3, 0, &[0, 1, b'c'])), Ok),
        // CONNACK.
        ("§3.2.2.1 CONNACK reserved flags", v311, pkt(0x20, &[2, 0]), Malformed),
        ("§3.2.2.3 unknown v3 return code", v311, pkt(0x20, &[0, 6]), Malformed),
        ("§3.2.2.3.4 Maximum QoS 2 in CONNACK", v5, pkt(0x20, &[0, 0, 2, 0x24, 2]), ProtoErr),
        // Acknowledgements.
        ("[MQTT-2.3.1-1] PUBACK packet id 0", v311, pkt(0x40, &[0, 0]), ProtoErr),
        ("§3.4 PUBACK longer than 2 bytes (3.1.1)", v311, pkt(0x40, &[0, 1, 0]), Malformed),
        ("§3.4 PUBACK shorter than 2 bytes", v5, pkt(0x40, &[0]), Malformed),
        ("§2.4 unknown v5 reason code", v5, pkt(0x40, &[0, 1, 0x03]), Malformed),
        ("§3.4.2.2 PUBACK property not allowed", v5, pkt(0x40, &[0, 1, 0, 2, 0x01, 0]), Malformed),
        ("§3.12 PINGREQ with a body", v311, pkt(0xC0, &[0]), Malformed),
        ("§3.14 v3 DISCONNECT with a body", v311, pkt(0xE0, &[0]), Malformed),
        ("§3.9.3 invalid v3 SUBACK return code", v311, pkt(0x90, &[0, 1, 3]), Malformed),
        ("§3.11 v3 UNSUBACK with payload", v311, pkt(0xB0, &[0, 1, 0]), Malformed),
        // SUBSCRIBE / UNSUBSCRIBE.
        ("[MQTT-3.8.3-3] SUBSCRIBE without filters", v311, pkt(0x82, &[0, 1]), ProtoErr),
        ("[MQTT-3.8.3-2] SUBSCRIBE without filters (v5)", v5, pkt(0x82, &[0, 1, 0]), ProtoErr),
        ("[MQTT-2.3.1-1] SUBSCRIBE packet id 0", v311, pkt(0x82, &[0, 0, 0, 1, b'a', 0]), ProtoErr),
        ("[MQTT-3-8.3-4] SUBSCRIBE reserved option bits (3.1.1)", v311, pkt(0x82, &[0, 1, 0, 1, b'a', 0x04]), Malformed),
        ("[MQTT-3-8.3-4] SUBSCRIBE QoS 3 (3.1.1)", v311, pkt(0x82, &[0, 1, 0, 1, b'a', 0x03]), Malformed),
        ("[MQTT-3.8.3-5] SUBSCRIBE reserved option bits (v5)", v5, pkt(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]), Malformed),
        ("§3.8.3.1 Retain Handling 3", v5, pkt(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]), ProtoErr),
        ("§3.8.3.1 SUBSCRIBE QoS 3 (v5)", v5, pkt(0x82, &[0, 1, 0, 0, 1, b'a', 0x03]), ProtoErr),
        ("[MQTT-3.8.3-4] No Local on a shared subscription", v5, pkt(0x82, &[0, 1, 0, 0, 9, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', 0x04]), ProtoErr),
        ("§3.8.2.1.2 Subscription Identifier 0", v5, pkt(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]), ProtoErr),
        ("§3.8.2.1.2 duplicate Subscription Identifier in SUBSCRIBE", v5, pkt(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]), ProtoErr),
        ("§3.8.3 filter without options byte", v311, pkt(0x82, &[0, 1, 0, 1, b'a']), Malformed),
        ("[MQTT-3.10.3-2] UNSUBSCRIBE without filters", v311, pkt(0xA2, &[0, 1]), ProtoErr),
        ("[MQTT-3.10.3-2] UNSUBSCRIBE without filters (v5)", v5, pkt(0xA2, &[0, 1, 0]), ProtoErr),
        ("§3.10.2.1 UNSUBSCRIBE property not allowed", v5, pkt(0xA2, &[0, 1, 2, 0x0B, 1, 0, 1, b'a']), Malformed),
        // AUTH.
        ("§3.15.2.1 AUTH unknown reason code", v5, pkt(0xF0, &[0x03, 0]), Malformed),
        ("§3.15.2.2 AUTH duplicate method", v5, pkt(0xF0, &[0x18, 8, 0x15, 0, 1, b'm', 0x15, 0, 1, b'm']), ProtoErr),
    ];
    for (spec, proto, bytes, want) in table {
        let got = dec(&bytes, proto);
        assert_eq!(class(&got), want, "{spec}: {bytes:02x?} gave {got:?}");
    }
}

// ------------------------------------------------------------------ strategies

const VARINT_MAX: u32 = 268_435_455;

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/ é€😀]{0,6}"
}
fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9/é]{1,8}"
}
fn filter() -> impl Strategy<Value = String> {
    "[a-z0-9/+#]{0,8}"
}
fn bin() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}
fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    prop::collection::vec((text(), text()), 0..3)
}
fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}
fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}
fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_filter_map("defined reason code", ReasonCode::from_u8)
}
fn ack_props() -> impl Strategy<Value = AckProperties> {
    (opt(text()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            opt(any::<u32>()),
            opt(1..=u16::MAX),
            opt(1..=u32::MAX),
            opt(any::<u16>()),
        ),
        (
            opt(any::<bool>()),
            opt(any::<bool>()),
            users(),
            opt(text()),
            opt(bin()),
        ),
    )
        .prop_map(
            |((sei, rm, mps, tam), (rri, rpi, up, am, ad))| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_data: if am.is_some() { ad } else { None },
                authentication_method: am,
            },
        )
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        opt(any::<u32>()),
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(text()),
        opt(topic_name()),
        opt(bin()),
        users(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(proto: Protocol) -> impl Strategy<Value = Packet> {
    let will = opt((topic_name(), bin(), qos(), any::<bool>(), will_props())).prop_map(|w| {
        w.map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
    });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        opt(text()),
        opt(bin()),
        connect_props(),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                if !proto.is_v5() && password.is_some() && username.is_none() {
                    username = Some(String::new()); // [MQTT-3.1.2-22]
                }
                Packet::Connect(Box::new(Connect {
                    protocol: proto,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    let a = (
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(0..=1u8),
        opt(any::<bool>()),
        opt(1..=u32::MAX),
        opt(text()),
    );
    let b = (
        opt(any::<u16>()),
        opt(text()),
        users(),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    let c = (
        opt(any::<u16>()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(bin()),
    );
    (any::<bool>(), reason(), a, b, c).prop_map(|(session_present, code, a, b, c)| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: ConnAckProperties {
                session_expiry_interval: a.0,
                receive_maximum: a.1,
                maximum_qos: a.2,
                retain_available: a.3,
                maximum_packet_size: a.4,
                assigned_client_identifier: a.5,
                topic_alias_maximum: b.0,
                reason_string: b.1,
                user_properties: b.2,
                wildcard_subscription_available: b.3,
                subscription_identifiers_available: b.4,
                shared_subscription_available: b.5,
                server_keep_alive: c.0,
                response_information: c.1,
                server_reference: c.2,
                authentication_method: c.3,
                authentication_data: c.4,
            },
        })
    })
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(topic_name()),
        opt(bin()),
        users(),
        prop::collection::vec(1..=VARINT_MAX, 0..3),
        opt(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

fn publish(v5: bool) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(String::new()), topic_name()],
        1..=u16::MAX,
        publish_props(),
        bin(),
    )
        .prop_map(
            move |(qos, dup, retain, mut topic, id, properties, payload)| {
                if topic.is_empty() && (!v5 || properties.topic_alias.is_none()) {
                    topic = "t".into();
                }
                let q = qos != QoS::AtMostOnce;
                Publish {
                    dup: dup && q,
                    qos,
                    retain,
                    topic,
                    packet_id: q.then_some(id),
                    properties,
                    payload,
                }
            },
        )
}

fn pub_resp() -> impl Strategy<Value = PubResp> {
    (1..=u16::MAX, reason(), ack_props()).prop_map(|(packet_id, reason, properties)| PubResp {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let opts = (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(|(qos, nl, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: [
                RetainHandling::SendAlways,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ][rh as usize],
        }
    });
    let f = (filter(), opts).prop_map(|(filter, options)| SubscribeFilter { filter, options });
    (
        1..=u16::MAX,
        prop::collection::vec(f, 1..4),
        opt(1..=VARINT_MAX),
        users(),
    )
        .prop_map(
            |(packet_id, filters, subscription_identifier, user_properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    subscription_identifier,
                    user_properties,
                })
            },
        )
}

fn packet(proto: Protocol) -> BoxedStrategy<Packet> {
    let v5 = proto.is_v5();
    let mut arms: Vec<BoxedStrategy<Packet>> = vec![
        connect(proto).boxed(),
        connack().boxed(),
        publish(v5).prop_map(Packet::Publish).boxed(),
        pub_resp().prop_map(Packet::PubAck).boxed(),
        pub_resp().prop_map(Packet::PubRec).boxed(),
        pub_resp().prop_map(Packet::PubRel).boxed(),
        pub_resp().prop_map(Packet::PubComp).boxed(),
        subscribe().boxed(),
        (
            1..=u16::MAX,
            prop::collection::vec(reason(), 0..4),
            ack_props(),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        (1..=u16::MAX, prop::collection::vec(filter(), 1..4), users())
            .prop_map(|(packet_id, filters, user_properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    user_properties,
                })
            })
            .boxed(),
        (
            1..=u16::MAX,
            prop::collection::vec(reason(), 0..4),
            ack_props(),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (
            reason(),
            opt(any::<u32>()),
            opt(text()),
            users(),
            opt(text()),
        )
            .prop_map(|(reason, sei, rs, up, sr)| {
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: DisconnectProperties {
                        session_expiry_interval: sei,
                        reason_string: rs,
                        user_properties: up,
                        server_reference: sr,
                    },
                })
            })
            .boxed(),
    ];
    if v5 {
        arms.push(
            (reason(), opt(text()), opt(bin()), opt(text()), users())
                .prop_map(|(reason, am, ad, rs, up)| {
                    Packet::Auth(Auth {
                        reason,
                        properties: AuthProperties {
                            authentication_method: am,
                            authentication_data: ad,
                            reason_string: rs,
                            user_properties: up,
                        },
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

fn any_proto() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

/// What a receiver of `p` encoded for `proto` gets back: v5-only fields dropped and
/// v5 codes folded onto their v3 equivalents for 3.1/3.1.1.
fn expected(p: &Packet, proto: Protocol) -> Packet {
    if proto.is_v5() {
        return p.clone();
    }
    let mut p = p.clone();
    match &mut p {
        Packet::Connect(c) => {
            c.properties = Default::default();
            if let Some(w) = &mut c.will {
                w.properties = Default::default();
            }
        }
        Packet::ConnAck(c) => {
            c.code = ReasonCode::from_v3_connack(c.code.to_v3_connack()).unwrap();
            c.properties = Default::default();
        }
        Packet::Publish(p) => p.properties = Default::default(),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.reason = ReasonCode::Success;
            r.properties = Default::default();
        }
        Packet::Subscribe(s) => {
            s.subscription_identifier = None;
            s.user_properties.clear();
            for f in &mut s.filters {
                f.options = SubscriptionOptions {
                    qos: f.options.qos,
                    ..Default::default()
                };
            }
        }
        Packet::SubAck(s) => {
            s.properties = Default::default();
            for r in &mut s.reasons {
                if r.as_u8() > 2 {
                    *r = ReasonCode::UnspecifiedError;
                }
            }
        }
        Packet::Unsubscribe(u) => u.user_properties.clear(),
        Packet::UnsubAck(u) => {
            u.reasons.clear();
            u.properties = Default::default();
        }
        Packet::Disconnect(d) => *d = Default::default(),
        Packet::PingReq | Packet::PingResp | Packet::Auth(_) => {}
    }
    p
}

fn proto_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    any_proto().prop_flat_map(|proto| (Just(proto), packet(proto)))
}

/// The varying fields of a [`Delivery`]: QoS, retain, dup, packet id, topic alias,
/// send topic, subscription ids, message expiry.
type DeliveryParts = (
    QoS,
    bool,
    bool,
    u16,
    Option<u16>,
    bool,
    Vec<u32>,
    Option<u32>,
);

/// A v5 PUBLISH that can be fanned out, and one delivery of it.
fn publish_and_delivery() -> impl Strategy<Value = (Publish, DeliveryParts)> {
    (
        publish(true),
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            1..=u16::MAX,
            opt(1..=u16::MAX),
            any::<bool>(),
            prop::collection::vec(1..=VARINT_MAX, 0..4),
            opt(any::<u32>()),
        ),
    )
        .prop_map(|(mut p, d)| {
            if p.topic.is_empty() {
                p.topic = "t".into();
            }
            (p, d)
        })
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// encode → decode gives back the packet (less what the version cannot carry), and
    /// encoded_len is exact.
    #[test]
    fn roundtrip((proto, p) in proto_and_packet()) {
        let bytes = enc(&p, proto);
        let back = dec(&bytes, Some(proto));
        prop_assert_eq!(back, Ok(Some(expected(&p, proto))));
        // CONNECT also decodes before the version is known.
        if let Packet::Connect(_) = p {
            prop_assert_eq!(dec(&bytes, None), Ok(Some(expected(&p, proto))));
        }
    }

    /// Fed a valid packet in two pieces split anywhere, the decoder waits, then yields
    /// the same packet; two packets back to back come out one at a time.
    #[test]
    fn split_anywhere((proto, p) in proto_and_packet(), q in packet(Protocol::V5)) {
        let bytes = enc(&p, proto);
        let want = expected(&p, proto);
        for k in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..k]);
            prop_assert_eq!(decode(&mut b, Some(proto), MAX), Ok(None));
            prop_assert_eq!(b.len(), k);
            b.extend_from_slice(&bytes[k..]);
            prop_assert_eq!(decode(&mut b, Some(proto), MAX), Ok(Some(want.clone())));
            prop_assert!(b.is_empty());
        }
        let mut two = enc(&q, Protocol::V5);
        two.extend_from_slice(&enc(&q, Protocol::V5));
        prop_assert_eq!(decode(&mut two, Some(Protocol::V5), MAX), Ok(Some(q.clone())));
        prop_assert_eq!(decode(&mut two, Some(Protocol::V5), MAX), Ok(Some(q)));
        prop_assert!(two.is_empty());
    }

    /// Arbitrary bytes never panic the decoder; it consumes a whole packet or nothing,
    /// and what it accepts re-encodes to bytes that decode to the same packet.
    #[test]
    fn fuzz_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        proto in opt(any_proto()),
        max in prop_oneof![Just(8usize), Just(64), Just(MAX)],
    ) {
        check_decoder(&bytes, proto, max)?;
    }

    /// Valid packets with a byte changed, removed or inserted never panic the decoder.
    #[test]
    fn fuzz_mutated_packets(
        (proto, p) in proto_and_packet(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        op in 0..4u8,
        dproto in opt(any_proto()),
    ) {
        let mut bytes = enc(&p, proto).to_vec();
        let i = pos.index(bytes.len());
        match op {
            0 => bytes[i] = byte,
            1 => bytes[i] ^= 1 << (byte % 8),
            2 => { bytes.remove(i); }
            _ => bytes.insert(i, byte),
        }
        check_decoder(&bytes, Some(proto), MAX)?;
        check_decoder(&bytes, dproto, MAX)?;
    }

    /// SharedPublish writes exactly encoded_len bytes, the same bytes as encoding the
    /// equivalent Publish, and they decode to that Publish, for 3.1.1 and 5.0.
    #[test]
    fn shared_publish_matches_plain_encoding((publ, d) in publish_and_delivery()) {
        let (qos, retain, dup, id, topic_alias, send_topic, subs, message_expiry) = d;
        let q = qos != QoS::AtMostOnce;
        let delivery = Delivery {
            qos,
            retain,
            dup: dup && q,
            packet_id: q.then_some(id),
            topic_alias,
            send_topic: send_topic || topic_alias.is_none(),
            subscription_ids: &subs,
            message_expiry,
        };
        let shared = SharedPublish::new(&publ);
        prop_assert_eq!(shared.topic(), publ.topic.as_str());
        prop_assert_eq!(shared.payload(), &publ.payload);
        prop_assert_eq!(shared.message_expiry(), publ.properties.message_expiry_interval);
        for proto in [Protocol::V311, Protocol::V5] {
            let mut out = BytesMut::new();
            shared.encode(proto, &delivery, &mut out);
            prop_assert_eq!(out.len(), shared.encoded_len(proto, &delivery));
            let mut want = shared.to_publish(&delivery);
            if !proto.is_v5() {
                want.topic = publ.topic.clone();
            }
            let plain = enc(&Packet::Publish(want.clone()), proto);
            prop_assert_eq!(&out[..], &plain[..]);
            let want = expected(&Packet::Publish(want), proto);
            prop_assert_eq!(dec(&out, Some(proto)), Ok(Some(want)));
        }
    }
}

/// The decoder contract for one input.
fn check_decoder(bytes: &[u8], proto: Option<Protocol>, max: usize) -> Result<(), TestCaseError> {
    let mut b = BytesMut::from(bytes);
    match decode(&mut b, proto, max) {
        Ok(None) | Err(_) => prop_assert_eq!(&b[..], bytes),
        Ok(Some(p)) => {
            let used = bytes.len() - b.len();
            prop_assert!(used >= 2 && used <= bytes.len() && used <= max);
            prop_assert_eq!(&b[..], &bytes[used..]);
            // Accepted packets are valid: they re-encode and decode to themselves.
            let eproto = match &p {
                Packet::Connect(c) => c.protocol,
                _ => proto.unwrap_or(Protocol::V311),
            };
            let again = enc(&p, eproto);
            prop_assert_eq!(dec(&again, proto), Ok(Some(p)));
        }
    }
    Ok(())
}

#[test]
fn shared_publish_hidden_topic_with_alias() {
    let publ = Publish {
        topic: "sensors/1".into(),
        payload: Bytes::from_static(b"hi"),
        properties: PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(60),
            topic_alias: Some(4),
            subscription_identifiers: vec![9],
            ..Default::default()
        },
        ..Default::default()
    };
    let shared = SharedPublish::new(&publ);
    let d = Delivery {
        qos: QoS::AtLeastOnce,
        packet_id: Some(3),
        topic_alias: Some(2),
        send_topic: false,
        subscription_ids: &[1, 300],
        message_expiry: Some(30),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    shared.encode(Protocol::V5, &d, &mut out);
    let Some(Packet::Publish(got)) = dec(&out, Some(Protocol::V5)).unwrap() else {
        panic!()
    };
    assert_eq!(got.topic, "");
    assert_eq!(got.packet_id, Some(3));
    assert_eq!(got.properties.topic_alias, Some(2));
    assert_eq!(got.properties.subscription_identifiers, vec![1, 300]);
    assert_eq!(got.properties.message_expiry_interval, Some(30));
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got, shared.to_publish(&d));
    // In 3.1.1 the topic is always sent and properties are dropped.
    let mut out = BytesMut::new();
    shared.encode(Protocol::V311, &d, &mut out);
    let Some(Packet::Publish(got)) = dec(&out, Some(Protocol::V311)).unwrap() else {
        panic!()
    };
    assert_eq!(got.topic, "sensors/1");
    assert_eq!(got.properties, PublishProperties::default());
    assert_eq!(
        SharedPublish::try_new(&Publish {
            topic: "a".repeat(70_000),
            ..Default::default()
        })
        .err(),
        Some(EncodeError::FieldTooLong("topic name"))
    );
}
