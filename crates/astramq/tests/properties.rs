//! MQTT 5 properties end to end (MQTT 5.0 §3.1.2.11, §3.2.2.3, §3.3.2.3,
//! §3.8.2.1, §4.8-4.9, §4.12, §4.13): message expiry, subscription
//! identifiers, no local, topic aliases, maximum packet size, receive
//! maximum, forwarded application properties, problem information, AUTH.

mod common;

use std::time::Duration;

use common::*;

const V: Version = Version::V5;

// [MQTT-3.3.2-5] an expired message is not delivered to an offline session;
// [MQTT-3.3.2-6] the forwarded Message Expiry Interval is the remaining time.
#[tokio::test]
async fn message_expiry() {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(b.addr(), Connect::persistent(V, "exp", false, 60)).await;
    c.sub("exp/#", 1).await;
    c.disconnect().await;
    let mut p = b.client(V, "p").await;
    p.publish_msg(
        Publish::new("exp/short", b"dies", 1)
            .props(Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, 1)),
    )
    .await;
    p.publish_msg(
        Publish::new("exp/long", b"lives", 1)
            .props(Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, 60)),
    )
    .await;
    // The wait is the feature: let the 1 s message expire (and at least one
    // second pass for the 60 s one).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut c = RawClient::connect_ok(b.addr(), Connect::persistent(V, "exp", false, 60)).await;
    let m = c.recv_publish(T).await;
    assert_eq!(m.payload, b"lives", "expired message must not be delivered");
    let left = m
        .props
        .get_u32(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("expiry forwarded");
    assert!(
        (50..60).contains(&left),
        "remaining interval {left} must be reduced"
    );
    c.expect_no_publish(ABSENCE).await;
}

// [MQTT-3.3.4-3]/[MQTT-3.3.4-4]/[MQTT-3.3.4-5] subscription identifiers:
// one copy carries every matching identifier, or each copy carries its own.
#[tokio::test]
async fn subscription_identifiers() {
    let b = Broker::start();
    let mut c = b.client(V, "sid").await;
    c.subscribe_with(
        &[("sid/+", SubOpts::qos(1))],
        Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 7),
    )
    .await;
    c.subscribe_with(
        &[("sid/#", SubOpts::qos(1))],
        Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, 300),
    )
    .await;
    c.sub("other", 0).await; // no identifier
    let mut p = b.client(V, "p").await;
    p.publish("sid/x", b"m", 1, false).await;
    let mut ids = Vec::new();
    let first = c.recv_publish(T).await;
    ids.extend(first.props.all_u32(prop::SUBSCRIPTION_IDENTIFIER));
    while let Ok(Packet::Publish(m)) = c.read(ABSENCE).await {
        let own = m.props.all_u32(prop::SUBSCRIPTION_IDENTIFIER);
        assert_eq!(
            own.len(),
            1,
            "a separate copy carries only its own id [MQTT-3.3.4-5]"
        );
        ids.extend(own);
    }
    ids.sort();
    assert_eq!(ids, vec![7, 300]);
    p.publish("other", b"n", 0, false).await;
    let m = c.recv_publish(T).await;
    assert!(!m.props.has(prop::SUBSCRIPTION_IDENTIFIER), "{m:?}");
}

// [MQTT-3.8.3-3] No Local: the server must not forward a client's own
// message to it on a No Local subscription.
#[tokio::test]
async fn no_local() {
    let b = Broker::start();
    let mut c = b.client(V, "nl").await;
    let o = SubOpts {
        no_local: true,
        ..SubOpts::qos(1)
    };
    c.subscribe_with(&[("nl/t", o)], Props::new()).await;
    c.publish("nl/t", b"mine", 1, false).await;
    c.expect_no_publish(ABSENCE).await;
    let mut other = b.client(V, "other").await;
    other.publish("nl/t", b"theirs", 1, false).await;
    assert_eq!(c.recv_publish(T).await.payload, b"theirs");
}

// [MQTT-3.3.2-12 area] inbound topic alias: the client sets alias 1 with a
// topic, then publishes with an empty topic and alias 1.
#[tokio::test]
async fn topic_alias_inbound() {
    let b = Broker::start();
    let mut s = b.client(V, "s").await;
    s.sub("alias/t", 0).await;
    let (mut p, ca) = RawClient::connect(b.addr(), Connect::new(V, "p")).await;
    let max = ca.props.get_u32(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(max >= 1, "default config accepts topic aliases: {ca:?}");
    p.publish_msg(Publish::new("alias/t", b"1", 0).props(Props::new().u16(prop::TOPIC_ALIAS, 1)))
        .await;
    p.publish_msg(Publish::new("", b"2", 0).props(Props::new().u16(prop::TOPIC_ALIAS, 1)))
        .await;
    let got = s.recv_publishes(2, T).await;
    assert_eq!(got[1].topic, "alias/t");
    assert_eq!(got[1].payload, b"2");
}

// [MQTT-3.3.2-8 area] an alias larger than the server's Topic Alias Maximum
// is a Topic Alias invalid error: DISCONNECT 0x94.
#[tokio::test]
async fn topic_alias_out_of_range() {
    let b = Broker::start_with("[limits]\ntopic_alias_maximum = 2\n", &[]);
    let (mut p, ca) = RawClient::connect(b.addr(), Connect::new(V, "p")).await;
    assert_eq!(ca.props.get_u32(prop::TOPIC_ALIAS_MAXIMUM), Some(2));
    p.send(
        &Publish::new("t", b"x", 0)
            .props(Props::new().u16(prop::TOPIC_ALIAS, 3))
            .encode(V),
    )
    .await;
    p.expect_disconnect(rc::TOPIC_ALIAS_INVALID, T).await;
}

// An empty topic with an alias never set is a Protocol Error (0x82).
#[tokio::test]
async fn topic_alias_unknown_is_protocol_error() {
    let b = Broker::start();
    let mut p = b.client(V, "p").await;
    p.send(
        &Publish::new("", b"x", 0)
            .props(Props::new().u16(prop::TOPIC_ALIAS, 1))
            .encode(V),
    )
    .await;
    p.expect_disconnect(rc::PROTOCOL_ERROR, T).await;
}

// [MQTT-3.3.2-9 / 3.3.2-10 area] outbound topic alias: when the client
// allows aliases, the server may use them; any alias it uses must be within
// the client's maximum and resolvable (first use carries the topic).
// That AstraMQ uses them at all is its design, not a spec requirement.
// Without a client maximum the server must send none [MQTT-3.3.2-9].
#[tokio::test]
async fn topic_alias_outbound() {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(
        b.addr(),
        Connect::new(V, "ta").props(Props::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 2)),
    )
    .await;
    let mut none = b.client(V, "none").await;
    c.sub("out/+", 0).await;
    none.sub("out/+", 0).await;
    let mut p = b.client(V, "p").await;
    let topics = ["out/a", "out/a", "out/b", "out/c", "out/a", "out/c"];
    for t in topics {
        p.publish(t, t.as_bytes(), 0, false).await;
    }
    let mut aliases: std::collections::HashMap<u32, String> = Default::default();
    let mut used = false;
    for m in c.recv_publishes(topics.len(), T).await {
        let topic = match m.props.get_u32(prop::TOPIC_ALIAS) {
            Some(a) => {
                used = true;
                assert!(
                    (1..=2).contains(&a),
                    "alias {a} outside the client's maximum 2"
                );
                if !m.topic.is_empty() {
                    aliases.insert(a, m.topic.clone());
                }
                aliases
                    .get(&a)
                    .cloned()
                    .expect("alias used before being set")
            }
            None => m.topic.clone(),
        };
        assert_eq!(
            topic.as_bytes(),
            &m.payload[..],
            "alias resolves to the right topic"
        );
    }
    assert!(
        used,
        "server should use topic aliases when the client allows them"
    );
    for m in none.recv_publishes(topics.len(), T).await {
        assert!(
            !m.props.has(prop::TOPIC_ALIAS),
            "no alias without client maximum"
        );
    }
}

// [MQTT-3.1.2-24] the server never sends a packet larger than the client's
// Maximum Packet Size; such messages are discarded [MQTT-3.1.2-25].
#[tokio::test]
async fn client_maximum_packet_size_respected() {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(
        b.addr(),
        Connect::new(V, "small").props(Props::new().u32(prop::MAXIMUM_PACKET_SIZE, 128)),
    )
    .await;
    c.sub("mps", 0).await;
    let mut p = b.client(V, "p").await;
    p.publish("mps", &[b'x'; 500], 0, false).await;
    p.publish("mps", b"small", 0, false).await;
    let m = c.recv_publish(T).await;
    assert_eq!(m.payload, b"small", "oversize message must be skipped");
    assert!(
        c.received_sizes.iter().all(|&(_, n)| n <= 128),
        "{:?}",
        c.received_sizes
    );
}

// [MQTT-3.2.2 Maximum Packet Size] the configured limit is announced in
// CONNACK; an inbound packet over it gets DISCONNECT 0x95 [MQTT-3.1.2-24
// server side, §4.13].
#[tokio::test]
async fn server_maximum_packet_size_enforced() {
    let b = Broker::start_with("[limits]\nmax_packet_size = 1024\n", &[]);
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(V, "big")).await;
    assert_eq!(ca.props.get_u32(prop::MAXIMUM_PACKET_SIZE), Some(1024));
    c.send_lossy(&Publish::new("t", &[0u8; 2000], 0).encode(V))
        .await;
    c.expect_disconnect(rc::PACKET_TOO_LARGE, T).await;
}

// 3.1.1 has no packet-size property: an oversize packet just closes.
#[tokio::test]
async fn server_maximum_packet_size_v311_closes() {
    let b = Broker::start_with("[limits]\nmax_packet_size = 1024\n", &[]);
    let mut c = b.client(Version::V311, "big").await;
    c.send_lossy(&Publish::new("t", &[0u8; 2000], 0).encode(Version::V311))
        .await;
    c.expect_disconnect(0, T).await;
}

// [MQTT-3.3.4-7 / 4.9] receive maximum: the server announces it; a client
// that has more unacknowledged QoS>0 PUBLISHes than that gets DISCONNECT 0x93.
#[tokio::test]
async fn receive_maximum_exceeded() {
    let b = Broker::start_with("[limits]\nreceive_maximum = 2\n", &[]);
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(V, "flood")).await;
    assert_eq!(ca.props.get_u32(prop::RECEIVE_MAXIMUM), Some(2));
    // QoS 2 PUBLISHes stay unacknowledged until PUBREL: send 3 without PUBREL.
    for pid in 1..=3u16 {
        c.send_lossy(&Publish::new("rm", b"x", 2).pid(pid).encode(V))
            .await;
    }
    c.expect_disconnect(rc::RECEIVE_MAXIMUM_EXCEEDED, T).await;
}

// The default Receive Maximum (limits.receive_maximum = 100) is announced in the v5
// CONNACK (§3.2.2.3.3; absent would mean 65,535) and enforced: 100 unreleased QoS 2
// PUBLISHes are accepted, the 101st exceeds it [MQTT-3.3.4-7] and gets DISCONNECT
// 0x93 (§4.9).
#[tokio::test]
async fn receive_maximum_default() {
    const DEFAULT: u16 = 100;
    let b = Broker::start();
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(V, "window")).await;
    assert_eq!(
        ca.props.get_u32(prop::RECEIVE_MAXIMUM),
        Some(u32::from(DEFAULT))
    );
    let mut burst = Vec::new();
    for pid in 1..=DEFAULT {
        burst.extend(Publish::new("rm", b"x", 2).pid(pid).encode(V));
    }
    c.send(&burst).await;
    for pid in 1..=DEFAULT {
        match c.next(T).await {
            Packet::Pubrec(a) => assert_eq!(a.pid, pid),
            other => panic!("expected PUBREC {pid}, got {other:?}"),
        }
    }
    c.send_lossy(&Publish::new("rm", b"x", 2).pid(DEFAULT + 1).encode(V))
        .await;
    c.expect_disconnect(rc::RECEIVE_MAXIMUM_EXCEEDED, T).await;
}

// A QoS 2 PUBLISH sent again before PUBREL (DUP, same packet id) is the same
// message, not one more against the Receive Maximum: with the window full it is
// acknowledged again with PUBREC [MQTT-4.3.3-9], not refused with 0x93. (A client
// resuming its session resends exactly these.)
#[tokio::test]
async fn receive_maximum_not_charged_for_a_resend() {
    let b = Broker::start_with("[limits]\nreceive_maximum = 2\n", &[]);
    let mut c = b.client(V, "resend").await;
    for pid in 1..=2u16 {
        c.send(&Publish::new("rm", b"x", 2).pid(pid).encode(V))
            .await;
        let rec = c
            .wait_packet(T, "PUBREC", |p| match p {
                Packet::Pubrec(a) => Some(a.pid),
                _ => None,
            })
            .await;
        assert_eq!(rec, pid);
    }
    let again = Publish {
        dup: true,
        ..Publish::new("rm", b"x", 2).pid(2)
    };
    c.send(&again.encode(V)).await;
    match c.next(T).await {
        Packet::Pubrec(a) => assert_eq!(a.pid, 2),
        other => panic!("expected PUBREC for the resent PUBLISH, got {other:?}"),
    }
    // The window is still full for a new packet id.
    c.send_lossy(&Publish::new("rm", b"x", 2).pid(3).encode(V))
        .await;
    c.expect_disconnect(rc::RECEIVE_MAXIMUM_EXCEEDED, T).await;
}

// [MQTT-3.3.4-9] the server does not send more unacknowledged QoS>0
// PUBLISHes than the client's Receive Maximum.
#[tokio::test]
async fn client_receive_maximum_respected() {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(
        b.addr(),
        Connect::new(V, "slow").props(Props::new().u16(prop::RECEIVE_MAXIMUM, 2)),
    )
    .await;
    c.auto_ack = false;
    c.sub("crm", 1).await;
    let mut p = b.client(V, "p").await;
    for i in 0..5u8 {
        p.publish("crm", &[i], 1, false).await;
    }
    let first = c.recv_publishes(2, T).await;
    c.expect_no_publish(ABSENCE).await;
    c.send(&encode_ack(PUBACK, first[0].pid, 0, V)).await;
    let third = c.recv_publish(T).await;
    assert_eq!(third.payload, [2]);
    c.expect_no_publish(ABSENCE).await;
}

// [MQTT-3.3.2-15..20 area] Response Topic, Correlation Data, User Properties
// (in order), Content Type and Payload Format Indicator are forwarded
// unaltered [MQTT-3.3.2-4] [MQTT-3.3.2-18].
#[tokio::test]
async fn application_properties_forwarded() {
    let b = Broker::start();
    let mut s = b.client(V, "s").await;
    s.sub("app", 1).await;
    let mut p = b.client(V, "p").await;
    let props = Props::new()
        .byte(prop::PAYLOAD_FORMAT_INDICATOR, 1)
        .str(prop::CONTENT_TYPE, "text/plain")
        .str(prop::RESPONSE_TOPIC, "reply/to")
        .bin(prop::CORRELATION_DATA, &[0, 1, 2, 255])
        .user("a", "1")
        .user("b", "2")
        .user("a", "3");
    p.publish_msg(Publish::new("app", b"hello", 1).props(props))
        .await;
    let m = s.recv_publish(T).await;
    assert_eq!(m.props.get_u32(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
    assert_eq!(m.props.get_str(prop::CONTENT_TYPE), Some("text/plain"));
    assert_eq!(m.props.get_str(prop::RESPONSE_TOPIC), Some("reply/to"));
    assert_eq!(
        m.props.get_bin(prop::CORRELATION_DATA),
        Some(&[0u8, 1, 2, 255][..])
    );
    let user: Vec<(String, String)> = [("a", "1"), ("b", "2"), ("a", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(m.props.user_props(), user);
}

// The same properties set with mosquitto_pub -D reach a rumqttc v5 subscriber.
#[tokio::test]
async fn mosquitto_pub_properties_to_rumqttc() {
    let b = Broker::start();
    let mut s = V5Client::connect(&b, "r5").await;
    s.subscribe("mp/props", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let out = mosquitto_pub(
        &b,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "mp/props",
            "-m",
            "x",
            "-D",
            "publish",
            "response-topic",
            "r/t",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "publish",
            "content-type",
            "ct",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let m = s.recv_publish(T).await;
    let pr = m.properties.expect("properties");
    assert_eq!(pr.response_topic.as_deref(), Some("r/t"));
    assert_eq!(pr.correlation_data.as_deref(), Some(&b"abc"[..]));
    assert_eq!(pr.content_type.as_deref(), Some("ct"));
    assert_eq!(pr.user_properties, vec![("k".to_string(), "v".to_string())]);
}

// [MQTT-3.1.2-29] Request Problem Information 0: no Reason String or User
// Property on anything but PUBLISH, CONNACK and DISCONNECT. Checked on a
// refused SUBSCRIBE (SUBACK with a failure code).
#[tokio::test]
async fn request_problem_information_zero() {
    let acl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(acl.path(), "topic read allowed/#\n").unwrap();
    let b = Broker::start_with("", &["--acl-file", acl.path().to_str().unwrap()]);
    let mut c = RawClient::connect_ok(
        b.addr(),
        Connect::new(V, "quiet").props(Props::new().byte(prop::REQUEST_PROBLEM_INFORMATION, 0)),
    )
    .await;
    let s = c
        .subscribe_with(&[("denied/t", SubOpts::qos(0))], Props::new())
        .await;
    assert_eq!(s.codes, vec![rc::NOT_AUTHORIZED]);
    assert!(!s.props.has(prop::REASON_STRING), "{s:?}");
    assert!(s.props.user_props().is_empty(), "{s:?}");
}

// CONNACK announces the configured limits [MQTT-3.2.2 properties].
#[tokio::test]
async fn connack_announces_limits() {
    let b = Broker::start_with(
        "[limits]\nreceive_maximum = 10\ntopic_alias_maximum = 0\nmax_packet_size = 4096\n",
        &[],
    );
    let (_c, ca) = RawClient::connect(b.addr(), Connect::new(V, "lim")).await;
    assert_eq!(ca.props.get_u32(prop::RECEIVE_MAXIMUM), Some(10));
    assert_eq!(ca.props.get_u32(prop::MAXIMUM_PACKET_SIZE), Some(4096));
    // 0 = aliases not accepted; absent also means 0.
    assert!(matches!(
        ca.props.get_u32(prop::TOPIC_ALIAS_MAXIMUM),
        None | Some(0)
    ));
}

// [MQTT-4.12.0-1] an Authentication Method the server does not support =>
// CONNACK 0x8C (Bad authentication method) and close.
#[tokio::test]
async fn unsupported_auth_method() {
    let b = Broker::start();
    let (mut c, ca) = RawClient::connect(
        b.addr(),
        Connect::new(V, "auth").props(Props::new().str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-1")),
    )
    .await;
    assert_eq!(ca.code, rc::BAD_AUTHENTICATION_METHOD);
    c.expect_closed(T).await;
}

// [MQTT-3.15.0 / 4.12] an AUTH packet on a connection that did not use
// extended authentication is a Protocol Error.
#[tokio::test]
async fn auth_packet_without_method_is_protocol_error() {
    let b = Broker::start();
    let mut c = b.client(V, "a").await;
    let mut body = vec![0x19]; // Re-authenticate
    body.extend(Props::new().str(prop::AUTHENTICATION_METHOD, "X").encode());
    c.send(&frame(AUTH << 4, &body)).await;
    c.expect_disconnect(rc::PROTOCOL_ERROR, T).await;
}
