//! Malformed inputs as a table: each row the bytes, the version, what the decoder must
//! answer, and the spec statement it checks.

use super::*;

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
