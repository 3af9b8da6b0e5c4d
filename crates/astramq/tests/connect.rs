//! CONNECT / CONNACK, client identifiers, protocol levels, keep alive,
//! takeover (MQTT 3.1.1 §3.1-3.2, MQTT 5.0 §3.1-3.2, §4.13).

mod common;

use std::time::{Duration, Instant};

use common::*;

// [MQTT-3.2.0-1] the first packet from the server is CONNACK;
// [MQTT-3.2.2-1]/[MQTT-3.2.2-2] clean start => Session Present 0.
async fn connect_accepted(v: Version) {
    let b = Broker::start();
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(v, "c1")).await;
    assert_eq!(ca.code, rc::SUCCESS);
    assert!(!ca.session_present);
    c.ping().await;
}
versions_test!(connect_accepted);

// rumqttc, an independent client implementation, can connect with both versions.
#[tokio::test]
async fn rumqttc_v4_and_v5_connect() {
    let b = Broker::start();
    let c4 = V4Client::connect(&b, "r4").await;
    assert_eq!(c4.connack.code, rumqttc::ConnectReturnCode::Success);
    let c5 = V5Client::connect(&b, "r5").await;
    assert_eq!(
        c5.connack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
}

// MQTT 3.1 ("MQIsdp", level 3) clients are accepted and can publish/subscribe.
#[tokio::test]
async fn mqtt31_mqisdp_accepted() {
    let b = Broker::start();
    let mut c = b.client(Version::V31, "old").await;
    c.sub("a/b", 1).await;
    c.publish("a/b", b"x", 1, false).await;
    assert_eq!(c.recv_publish(T).await.payload, b"x");
}

// [MQTT-3.2.2-16] empty client id in v5: accepted with an Assigned Client
// Identifier; [MQTT-3.1.3-6] in 3.1.1 with clean session 1 it is accepted.
async fn empty_client_id_clean(v: Version) {
    let b = Broker::start();
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(v, "")).await;
    assert_eq!(ca.code, rc::SUCCESS);
    if v.is_v5() {
        let id = ca
            .props
            .get_str(prop::ASSIGNED_CLIENT_IDENTIFIER)
            .expect("v5 CONNACK must carry Assigned Client Identifier [MQTT-3.2.2-16]");
        assert!(!id.is_empty());
    }
    c.ping().await;
}
versions_test!(empty_client_id_clean);

// [MQTT-3.1.3-8] 3.1.1: empty client id with clean session 0 => CONNACK 0x02
// (identifier rejected) and close.
#[tokio::test]
async fn empty_client_id_persistent_v311_rejected() {
    let b = Broker::start();
    let (mut c, ca) =
        RawClient::connect(b.addr(), Connect::new(Version::V311, "").clean(false)).await;
    assert_eq!(ca.code, rc::V3_IDENTIFIER_REJECTED);
    c.expect_closed(T).await;
}

// Two assigned identifiers differ (they must be unique on the server).
#[tokio::test]
async fn assigned_client_ids_are_unique_v5() {
    let b = Broker::start();
    let (_a, ca1) = RawClient::connect(b.addr(), Connect::new(Version::V5, "")).await;
    let (_b, ca2) = RawClient::connect(b.addr(), Connect::new(Version::V5, "")).await;
    let id1 = ca1.props.get_str(prop::ASSIGNED_CLIENT_IDENTIFIER).unwrap();
    let id2 = ca2.props.get_str(prop::ASSIGNED_CLIENT_IDENTIFIER).unwrap();
    assert_ne!(id1, id2);
}

/// CONNECT with protocol name "MQTT" and an arbitrary level.
fn connect_with_level(level: u8) -> Vec<u8> {
    let mut bytes = Connect::new(Version::V311, "lvl").encode();
    // fixed header (2) + name (6) => level at index 8
    assert_eq!(bytes[8], 4);
    bytes[8] = level;
    bytes
}

// [MQTT-3.1.2-2] unsupported protocol level: 3.1.1 CONNACK 0x01 or v5
// CONNACK 0x84, then close.
#[tokio::test]
async fn unsupported_protocol_level_refused() {
    let b = Broker::start();
    for level in [2u8, 6, 0x7f] {
        let mut c = b.raw().await;
        c.send(&connect_with_level(level)).await;
        let bytes = c.read_bytes(T).await.expect("CONNACK before close");
        assert_eq!(
            bytes[0], 0x20,
            "level {level}: expected CONNACK, got {bytes:02x?}"
        );
        let ok_v3 = bytes[..] == [0x20, 0x02, 0x00, rc::V3_UNACCEPTABLE_PROTOCOL];
        let ok_v5 = bytes.len() >= 4 && bytes[3] == rc::UNSUPPORTED_PROTOCOL_VERSION;
        assert!(ok_v3 || ok_v5, "level {level}: CONNACK {bytes:02x?}");
        c.expect_closed(T).await;
    }
}

// [MQTT-3.1.2-1] a wrong protocol name => close without CONNACK (3.1.1 lets
// the server close without answering; a v5 server MAY answer 0x84).
#[tokio::test]
async fn wrong_protocol_name_closed() {
    let b = Broker::start();
    let mut bytes = Connect::new(Version::V311, "x").encode();
    bytes[4..8].copy_from_slice(b"MQTX");
    let mut c = b.raw().await;
    c.send(&bytes).await;
    for p in c.expect_closed(T).await {
        match p {
            Packet::Connack(ca) => assert!(ca.code >= 0x01, "must not accept: {ca:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

// [MQTT-3.1.0-1] the first packet must be CONNECT; anything else => close.
#[tokio::test]
async fn first_packet_not_connect_closed() {
    let b = Broker::start();
    for first in [
        encode_pingreq(),
        encode_subscribe(Version::V311, 1, &Props::new(), &[("a", SubOpts::qos(0))]),
        Publish::new("a", b"x", 0).encode(Version::V311),
    ] {
        let mut c = b.raw().await;
        c.send(&first).await;
        let seen = c.expect_closed(T).await;
        assert!(seen.is_empty(), "no reply before CONNECT: {seen:?}");
    }
}

// A connection that sends no CONNECT within connect_timeout_secs is closed.
#[tokio::test]
async fn no_connect_within_timeout_closed() {
    let b = Broker::start_with("[limits]\nconnect_timeout_secs = 1\n", &[]);
    let mut c = b.raw().await;
    let start = Instant::now();
    c.expect_closed(Duration::from_secs(4)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the 1 s connect timeout: {:?}",
        start.elapsed()
    );
}

// [MQTT-3.1.0-2] a second CONNECT is a protocol violation => close (v5 may
// send DISCONNECT 0x82 first).
async fn second_connect_closed(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "twice").await;
    c.send(&Connect::new(v, "twice").encode()).await;
    c.expect_closed_with_any(&[rc::PROTOCOL_ERROR], T).await;
}
versions_test!(second_connect_closed);

// [MQTT-3.1.4-3] a second connection with the same client id takes over: the
// first is closed (v5: DISCONNECT 0x8E Session taken over) and the new one works.
async fn takeover_same_client_id(v: Version) {
    let b = Broker::start();
    let mut old = b.client(v, "dup").await;
    let mut new = b.client(v, "dup").await;
    old.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    new.sub("t", 0).await;
    new.publish("t", b"still here", 0, false).await;
    assert_eq!(new.recv_publish(T).await.payload, b"still here");
}
versions_test!(takeover_same_client_id);

// [MQTT-3.1.2-24] no packet within 1.5 x keep alive => the server closes
// (v5: DISCONNECT 0x8D Keep Alive timeout may be sent first).
async fn keep_alive_timeout_closes(v: Version) {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(b.addr(), Connect::new(v, "ka").keep_alive(1)).await;
    let start = Instant::now();
    c.expect_closed_with_any(&[rc::KEEP_ALIVE_TIMEOUT], Duration::from_secs(4))
        .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "closed after {took:?}, before the keep alive (1 s) even elapsed"
    );
}
versions_test!(keep_alive_timeout_closes);

// [MQTT-3.1.2-23] PINGREQs within the keep alive keep the connection open
// beyond 1.5 x keep alive.
async fn pings_keep_connection_alive(v: Version) {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(b.addr(), Connect::new(v, "ka2").keep_alive(1)).await;
    let start = Instant::now();
    // The wait is the point: 3 s of pings every 0.5 s, twice the 1.5 s limit.
    while start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.ping().await;
    }
}
versions_test!(pings_keep_connection_alive);

// [MQTT-3.2.2-21] server_keep_alive_secs overrides the client's keep alive and
// is sent as Server Keep Alive; the server then enforces it.
#[tokio::test]
async fn server_keep_alive_sent_and_enforced_v5() {
    let b = Broker::start_with("[limits]\nserver_keep_alive_secs = 1\n", &[]);
    let (mut c, ca) =
        RawClient::connect(b.addr(), Connect::new(Version::V5, "ska").keep_alive(60)).await;
    assert_eq!(ca.code, 0);
    assert_eq!(ca.props.get_u32(prop::SERVER_KEEP_ALIVE), Some(1), "{ca:?}");
    c.expect_closed_with_any(&[rc::KEEP_ALIVE_TIMEOUT], Duration::from_secs(4))
        .await;
}

// [MQTT-3.2.2-21] limits.max_keep_alive_secs: a v5 client asking for more than the
// cap, or for 0, is sent the cap as Server Keep Alive, and [MQTT-3.1.2-24] the broker
// closes it after 1.5 x the cap of silence; a client asking for less keeps its own
// value (no Server Keep Alive) [MQTT-3.2.2-22: absent, the client's value applies].
#[tokio::test]
async fn max_keep_alive_caps_v5() {
    let b = Broker::start_with("", &["--max-keep-alive-secs", "2"]);
    let (mut short, ca) =
        RawClient::connect(b.addr(), Connect::new(Version::V5, "short").keep_alive(1)).await;
    assert_eq!(ca.code, 0);
    assert_eq!(ca.props.get_u32(prop::SERVER_KEEP_ALIVE), None, "{ca:?}");
    short.ping().await;
    for asked in [0u16, 600] {
        let id = format!("ka{asked}");
        let (mut c, ca) =
            RawClient::connect(b.addr(), Connect::new(Version::V5, &id).keep_alive(asked)).await;
        assert_eq!(ca.code, 0);
        assert_eq!(ca.props.get_u32(prop::SERVER_KEEP_ALIVE), Some(2), "{ca:?}");
        let start = Instant::now();
        c.expect_closed_with_any(&[rc::KEEP_ALIVE_TIMEOUT], Duration::from_secs(6))
            .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2000),
            "asked {asked}: closed after {took:?}, before the 2 s cap even elapsed"
        );
    }
}

// limits.max_keep_alive_secs with 3.1.1, which has no Server Keep Alive: the broker
// does not refuse the client (Mosquitto since 2.0.12 answers CONNACK 2, "identifier
// rejected") but applies the cap silently, as a server may close an inactive
// connection at any time (3.1.1 §3.1.2.10); [MQTT-3.1.2-24] a client that asked for
// no keep alive (0) or a huge one and goes silent is closed after 1.5 x the cap.
#[tokio::test]
async fn max_keep_alive_applied_v311() {
    let b = Broker::start_with("[limits]\nmax_keep_alive_secs = 1\n", &[]);
    for asked in [0u16, 65535] {
        let id = format!("ka{asked}");
        let (mut c, ca) =
            RawClient::connect(b.addr(), Connect::new(Version::V311, &id).keep_alive(asked)).await;
        assert_eq!(ca.code, 0, "the client is not refused");
        let start = Instant::now();
        c.expect_closed(Duration::from_secs(4)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1000),
            "asked {asked}: closed after {took:?}, before the 1 s cap even elapsed"
        );
    }
}

// mosquitto_pub (libmosquitto) connects, publishes and disconnects cleanly.
async fn mosquitto_pub_connects(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "sub").await;
    s.sub("m/p", 0).await;
    let out = mosquitto_pub(&b, &["-V", v.cli(), "-t", "m/p", "-m", "hi"]).await;
    assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
    assert_eq!(s.recv_publish(T).await.payload, b"hi");
}
versions_test!(mosquitto_pub_connects);
