//! Malformed packets and protocol errors, as a data table (like mosquitto's
//! test/broker/13-malformed-*): each row is the bytes sent, the normative
//! statement it checks and the expected outcome.
//!
//! Outcome after CONNECT: 3.1.1 => the server closes the connection
//! [MQTT-4.8.0-1]; 5.0 => the server sends DISCONNECT with one of the listed
//! reason codes, then closes [MQTT-4.13.1-1] (the DISCONNECT is a SHOULD in
//! the spec and a MUST in AstraMQ's contract).
//! Outcome for a bad CONNECT: close, optionally after a CONNACK with a
//! failure code; never a successful CONNACK.

mod common;

use common::*;

#[derive(Clone, Copy, PartialEq)]
enum Only {
    Both,
    V3,
    V5,
}

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// Sent after a successful CONNECT.
    Connected,
    /// Sent instead of a valid CONNECT.
    Connect,
}

struct Case {
    name: &'static str,
    spec: &'static str,
    only: Only,
    stage: Stage,
    bytes: fn(Version) -> Vec<u8>,
    /// v5 DISCONNECT (or CONNACK) reason codes accepted.
    v5: &'static [u8],
}

const MAL: &[u8] = &[rc::MALFORMED_PACKET];
const MAL_OR_PROTO: &[u8] = &[rc::MALFORMED_PACKET, rc::PROTOCOL_ERROR];

/// PUBLISH with raw topic bytes.
fn publish_raw(v: Version, first: u8, topic: &[u8], pid: Option<u16>, props: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic);
    if let Some(p) = pid {
        put_u16(&mut b, p);
    }
    if v.is_v5() {
        b.extend_from_slice(props);
    }
    b.extend_from_slice(b"payload");
    frame(first, &b)
}

fn no_props() -> Vec<u8> {
    vec![0]
}

fn sub_raw(v: Version, first: u8, pid: u16, filters: &[(&str, u8)], props: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() {
        b.extend_from_slice(props);
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(*o);
    }
    frame(first, &b)
}

/// CONNECT with the connect-flags byte replaced.
fn connect_flags(v: Version, flags: u8) -> Vec<u8> {
    let mut b = Connect::new(v, "bad").encode();
    // header(2) + name(6) + level(1) => flags at 9
    b[9] = flags;
    b
}

const CASES: &[Case] = &[
    Case {
        name: "remaining length uses 5 bytes",
        spec: "[MQTT-2.2.3 / 1.5.5] Remaining Length is at most 4 bytes",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        v5: MAL,
    },
    Case {
        name: "topic length longer than remaining length",
        spec: "[MQTT-1.5.3 / 2.1.4] field lengths must fit the packet",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0x30, 0x04, 0x00, 0x0a, b'a', b'b'],
        v5: MAL,
    },
    Case {
        name: "invalid UTF-8 in topic",
        spec: "[MQTT-1.5.4-1] (5) / [MQTT-1.5.3-1] (3.1.1) ill-formed UTF-8",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, &[b'a', 0xc3, 0x28], None, &no_props()),
        v5: MAL,
    },
    Case {
        name: "UTF-16 surrogate encoded in topic",
        spec: "[MQTT-1.5.4-1] (5) / [MQTT-1.5.3-1] (3.1.1) surrogates are ill-formed",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, &[b'a', 0xed, 0xa0, 0x80], None, &no_props()),
        v5: MAL,
    },
    Case {
        name: "U+0000 in topic",
        spec: "[MQTT-1.5.4-2] (5) / [MQTT-1.5.3-2] (3.1.1) no null character",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, b"a\0b", None, &no_props()),
        v5: MAL,
    },
    Case {
        name: "reserved packet type 0",
        spec: "[MQTT-2.1.2] packet type 0 is reserved / forbidden",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0x00, 0x00],
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "reserved flag bits on PINGREQ",
        spec: "[MQTT-2.1.3-1] (5) / [MQTT-2.2.2-2] (3.1.1) reserved flags must be as listed",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0xc1, 0x00],
        v5: MAL,
    },
    Case {
        name: "PINGREQ with a body",
        spec: "[MQTT-3.12] PINGREQ has remaining length 0",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0xc0, 0x01, 0x00],
        v5: MAL,
    },
    Case {
        name: "SUBSCRIBE with fixed header flags 0000",
        spec: "[MQTT-3.8.1-1] SUBSCRIBE flags must be 0010",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x80, 1, &[("a", 0)], &no_props()),
        v5: MAL,
    },
    Case {
        name: "UNSUBSCRIBE with fixed header flags 0000",
        spec: "[MQTT-3.10.1-1] UNSUBSCRIBE flags must be 0010",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| {
            let mut b = encode_unsubscribe(v, 1, &["a"]);
            b[0] = 0xa0;
            b
        },
        v5: MAL,
    },
    Case {
        name: "PUBREL with fixed header flags 0000",
        spec: "[MQTT-3.6.1-1] PUBREL flags must be 0010",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |_| vec![0x60, 0x02, 0x00, 0x01],
        v5: MAL,
    },
    Case {
        name: "SUBSCRIBE with packet id 0",
        spec: "[MQTT-2.2.1-3] (5) / [MQTT-2.3.1-1] (3.1.1) non-zero packet identifier",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 0, &[("a", 0)], &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "QoS 1 PUBLISH with packet id 0",
        spec: "[MQTT-2.2.1-3] (5) / [MQTT-2.3.1-1] (3.1.1) non-zero packet identifier",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x32, b"a", Some(0), &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "wildcard in PUBLISH topic",
        spec: "[MQTT-3.3.2-2] topic name must not contain wildcards",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, b"a/+/b", None, &no_props()),
        v5: &[
            rc::MALFORMED_PACKET,
            rc::PROTOCOL_ERROR,
            rc::TOPIC_NAME_INVALID,
        ],
    },
    Case {
        name: "empty PUBLISH topic (no alias)",
        spec: "[MQTT-4.7.3-1] topic names are at least one character",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, b"", None, &no_props()),
        v5: &[
            rc::MALFORMED_PACKET,
            rc::PROTOCOL_ERROR,
            rc::TOPIC_NAME_INVALID,
        ],
    },
    Case {
        name: "PUBLISH QoS 3",
        spec: "[MQTT-3.3.1-4] a PUBLISH must not have both QoS bits set",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x36, b"a", Some(1), &no_props()),
        v5: MAL,
    },
    Case {
        name: "PUBLISH QoS 0 with DUP 1",
        spec: "[MQTT-3.3.1-2] DUP must be 0 for QoS 0",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x38, b"a", None, &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "SUBSCRIBE without topic filters",
        spec: "[MQTT-3.8.3-3] (5) / [MQTT-3.8.3-3] (3.1.1) at least one filter",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 1, &[], &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "UNSUBSCRIBE without topic filters",
        spec: "[MQTT-3.10.3-2] at least one filter",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| encode_unsubscribe(v, 1, &[]),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "SUBSCRIBE requested QoS 3",
        spec: "[MQTT-3-8.3-4] (3.1.1) / [MQTT-3.8.3 QoS] (5) QoS 3 is malformed",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 1, &[("a", 3)], &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "SUBSCRIBE options reserved bits set",
        spec: "[MQTT-3.8.3-4] (3.1.1 upper 6 bits) / [MQTT-3.8.3-5] (5 bits 6-7)",
        only: Only::Both,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 1, &[("a", 0xc0)], &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "SUBSCRIBE Retain Handling 3",
        spec: "[MQTT-3.8.3 Retain Handling] value 3 is a Protocol Error",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 1, &[("a", 0x30)], &no_props()),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "No Local on a shared subscription",
        spec: "[MQTT-3.8.3-4] (5) No Local 1 on a Shared Subscription",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| sub_raw(v, 0x82, 1, &[("$share/g/a", 0x04)], &no_props()),
        v5: &[rc::PROTOCOL_ERROR],
    },
    Case {
        name: "Subscription Identifier 0",
        spec: "[MQTT-3.8.2.1.2] Subscription Identifier 0 is a Protocol Error",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| {
            sub_raw(
                v,
                0x82,
                1,
                &[("a", 0)],
                &Props::new()
                    .varint(prop::SUBSCRIPTION_IDENTIFIER, 0)
                    .encode(),
            )
        },
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "duplicate Message Expiry Interval property",
        spec:
            "[MQTT-2.2.2 / 3.3.2.3.3] a property other than User Property twice is a Protocol Error",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| {
            let p = Props::new()
                .u32(prop::MESSAGE_EXPIRY_INTERVAL, 10)
                .u32(prop::MESSAGE_EXPIRY_INTERVAL, 20)
                .encode();
            publish_raw(v, 0x30, b"a", None, &p)
        },
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "unknown property identifier",
        spec: "[MQTT-2.2.2.2] unknown property id => Malformed Packet",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, b"a", None, &[0x02, 0x7f, 0x00]),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "property not allowed in PUBLISH (Session Expiry Interval)",
        spec: "[MQTT-2.2.2.2] a property in a packet it is not defined for",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| {
            publish_raw(
                v,
                0x30,
                b"a",
                None,
                &Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 1).encode(),
            )
        },
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "property length beyond packet",
        spec: "[MQTT-2.2.2.1] property length must fit the packet",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| publish_raw(v, 0x30, b"a", None, &[0x7f]),
        v5: MAL,
    },
    Case {
        name: "Topic Alias 0",
        spec: "[MQTT-3.3.2-8] Topic Alias 0 is not permitted (0x94 or Protocol Error)",
        only: Only::V5,
        stage: Stage::Connected,
        bytes: |v| {
            publish_raw(
                v,
                0x30,
                b"a",
                None,
                &Props::new().u16(prop::TOPIC_ALIAS, 0).encode(),
            )
        },
        v5: &[rc::TOPIC_ALIAS_INVALID, rc::PROTOCOL_ERROR],
    },
    // --- CONNECT ---
    Case {
        name: "CONNECT reserved flag bit set",
        spec: "[MQTT-3.1.2-3] the reserved connect flag must be 0",
        only: Only::Both,
        stage: Stage::Connect,
        bytes: |v| connect_flags(v, 0x03),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "Will QoS 1 without Will Flag",
        spec: "[MQTT-3.1.2-13] (3.1.1) / [MQTT-3.1.2-11] (5) Will QoS must be 0 without a will",
        only: Only::Both,
        stage: Stage::Connect,
        bytes: |v| connect_flags(v, 0x0a),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "Will Retain without Will Flag",
        spec: "[MQTT-3.1.2-15] (3.1.1) / [MQTT-3.1.2-13] (5) Will Retain must be 0 without a will",
        only: Only::Both,
        stage: Stage::Connect,
        bytes: |v| connect_flags(v, 0x22),
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "Will QoS 3",
        spec: "[MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5) Will QoS must not be 3",
        only: Only::Both,
        stage: Stage::Connect,
        bytes: |v| {
            let mut c = Connect::new(v, "w3").will(Will::new("w", b"x")).encode();
            c[9] |= 0x18;
            c
        },
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "password flag without user name flag",
        spec: "[MQTT-3.1.2-22] (3.1.1) password requires user name",
        only: Only::V3,
        stage: Stage::Connect,
        bytes: |v| {
            let mut c = Connect::new(v, "pw");
            c.password = Some(b"secret".to_vec());
            c.encode()
        },
        v5: MAL_OR_PROTO,
    },
    Case {
        name: "client id with invalid UTF-8",
        spec: "[MQTT-1.5.4-1] / [MQTT-3.1.3-4] client id is UTF-8",
        only: Only::Both,
        stage: Stage::Connect,
        bytes: |v| {
            let mut c = Connect::new(v, "ab").encode();
            let n = c.len();
            c[n - 1] = 0xff;
            c
        },
        v5: &[
            rc::MALFORMED_PACKET,
            rc::PROTOCOL_ERROR,
            rc::CLIENT_ID_NOT_VALID,
        ],
    },
];

/// Run one case; Err describes a deviation.
async fn run_case(b: &Broker, v: Version, i: usize, case: &Case) -> Result<(), String> {
    let bytes = (case.bytes)(v);
    let mut c = match case.stage {
        Stage::Connected => {
            let mut c = b.client(v, &format!("mal{i}")).await;
            c.send_lossy(&bytes).await;
            c
        }
        Stage::Connect => {
            let mut c = b.raw().await;
            c.version = v;
            c.send_lossy(&bytes).await;
            c
        }
    };
    let deadline = tokio::time::Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.read(left).await {
            Ok(p) => seen.push(p),
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Decode(e)) => return Err(format!("undecodable reply {e:?}")),
            Err(ReadError::Timeout) => return Err(format!("connection not closed; saw {seen:?}")),
        }
    }
    match case.stage {
        Stage::Connect => {
            for p in &seen {
                match p {
                    Packet::Connack(ca) if ca.code >= 0x80 || (!v.is_v5() && ca.code > 0) => {
                        if v.is_v5() && !case.v5.contains(&ca.code) {
                            return Err(format!(
                                "CONNACK {:#04x} not in {:02x?}",
                                ca.code, case.v5
                            ));
                        }
                    }
                    other => return Err(format!("unexpected {other:?}")),
                }
            }
        }
        Stage::Connected => {
            if v.is_v5() {
                match seen.as_slice() {
                    [Packet::Disconnect(r, _)] if case.v5.contains(r) => {}
                    other => {
                        return Err(format!(
                            "expected DISCONNECT in {:02x?}, saw {other:?}",
                            case.v5
                        ))
                    }
                }
            } else if !seen.is_empty() {
                return Err(format!("3.1.1: expected a bare close, saw {seen:?}"));
            }
        }
    }
    Ok(())
}

async fn malformed_table(v: Version) {
    let b = Broker::start();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, case) in CASES.iter().enumerate() {
        let applies = match case.only {
            Only::Both => true,
            Only::V3 => !v.is_v5(),
            Only::V5 => v.is_v5(),
        };
        if !applies {
            continue;
        }
        ran += 1;
        if let Err(e) = run_case(&b, v, i, case).await {
            failures.push(format!("{} {}: {e}", case.spec, case.name));
        }
    }
    assert!(ran > 20);
    assert!(
        failures.is_empty(),
        "{} of {ran} malformed cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The broker survived all of it.
    let mut ok = b.client(v, "after").await;
    ok.ping().await;
}
versions_test!(malformed_table);
