//! Will messages (MQTT 3.1.1 §3.1.2.5-3.1.2.7; MQTT 5.0 §3.1.2.5-3.1.2.7,
//! §3.1.3.2 Will Delay Interval, §3.14.2.1 reason 0x04).

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn watcher(b: &Broker, v: Version, filter: &str) -> RawClient {
    let mut w = b.client(v, "watcher").await;
    w.sub(filter, 2).await;
    w
}

fn with_will(v: Version, id: &str, topic: &str, payload: &[u8], qos: u8) -> Connect {
    let mut w = Will::new(topic, payload);
    w.qos = qos;
    Connect::new(v, id).will(w)
}

// 3.1.1:[MQTT-3.1.2-8] / 5:[MQTT-3.1.2-8]: the will is published when the
// network connection closes without DISCONNECT, with its QoS.
async fn will_on_abrupt_close(v: Version) {
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let c = RawClient::connect_ok(b.addr(), with_will(v, "dying", "will/a", b"gone", 1)).await;
    c.drop_abruptly();
    let m = w.recv_publish(T).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("will/a", &b"gone"[..], 1)
    );
    assert!(!m.retain);
}
versions_test!(will_on_abrupt_close);

// 3.1.1:[MQTT-3.1.2-10] / 5:[MQTT-3.1.2-10]: DISCONNECT (reason 0) removes the
// will without publishing it.
async fn no_will_on_normal_disconnect(v: Version) {
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let c = RawClient::connect_ok(b.addr(), with_will(v, "polite", "will/b", b"x", 0)).await;
    c.disconnect().await;
    w.expect_no_publish(ABSENCE).await;
}
versions_test!(no_will_on_normal_disconnect);

// 5:[MQTT-3.14.4-3 area] DISCONNECT with reason 0x04 (Disconnect with Will
// Message) publishes the will.
#[tokio::test]
async fn disconnect_with_will_0x04_v5() {
    let v = Version::V5;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut c = RawClient::connect_ok(b.addr(), with_will(v, "x04", "will/c", b"asked", 0)).await;
    c.send(&encode_disconnect(
        v,
        rc::DISCONNECT_WITH_WILL,
        &Props::new(),
    ))
    .await;
    c.expect_closed(T).await;
    assert_eq!(w.recv_publish(T).await.payload, b"asked");
}

// [MQTT-3.1.2-8] closing for a keep-alive timeout publishes the will.
async fn will_on_keep_alive_timeout(v: Version) {
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let _c = RawClient::connect_ok(
        b.addr(),
        with_will(v, "silent", "will/k", b"timeout", 0).keep_alive(1),
    )
    .await;
    // 1.5 x 1 s plus slack: the wait is the feature.
    assert_eq!(
        w.recv_publish(Duration::from_secs(4)).await.payload,
        b"timeout"
    );
}
versions_test!(will_on_keep_alive_timeout);

// [MQTT-3.1.2-8] closing for a protocol error publishes the will.
async fn will_on_protocol_error(v: Version) {
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut c = RawClient::connect_ok(b.addr(), with_will(v, "bad", "will/e", b"error", 0)).await;
    c.send(&[0x00, 0x00]).await; // packet type 0 is reserved
    c.expect_closed(T).await;
    assert_eq!(w.recv_publish(T).await.payload, b"error");
}
versions_test!(will_on_protocol_error);

// 3.1.1:[MQTT-3.1.2-17] / 5:[MQTT-3.1.2-17]: Will Retain 1 publishes the will
// as a retained message.
async fn will_retain(v: Version) {
    let b = Broker::start();
    let mut will = Will::new("will/r", b"retained will");
    will.retain = true;
    let c = RawClient::connect_ok(b.addr(), Connect::new(v, "wr").will(will)).await;
    c.drop_abruptly();
    // Wait until the will is out (a live subscriber sees it), then a new
    // subscriber must get it as a retained message.
    let mut live = watcher(&b, v, "will/r").await;
    let _ = live.recv_publish(T).await;
    let mut s = b.client(v, "late").await;
    s.sub("will/r", 0).await;
    let m = s.recv_publish(T).await;
    assert!(m.retain);
    assert_eq!(m.payload, b"retained will");
}
versions_test!(will_retain);

// 5:[MQTT-3.1.3-9 area] the will is delayed by the Will Delay Interval.
#[tokio::test]
async fn will_delay_interval_v5() {
    let v = Version::V5;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut will = Will::new("will/d", b"late");
    will.props = Props::new().u32(prop::WILL_DELAY_INTERVAL, 2);
    let c = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "delayed").session_expiry(60).will(will),
    )
    .await;
    let start = Instant::now();
    c.drop_abruptly();
    let m = w.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(m.payload, b"late");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "will sent after {took:?}, before the 2 s delay"
    );
}

// 5:[MQTT-3.1.3-9] a client that reconnects (same id, session resumed)
// before the Will Delay Interval elapses cancels the will.
#[tokio::test]
async fn will_delay_cancelled_by_reconnect_v5() {
    let v = Version::V5;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut will = Will::new("will/x", b"should not appear");
    will.props = Props::new().u32(prop::WILL_DELAY_INTERVAL, 1);
    let c = RawClient::connect_ok(
        b.addr(),
        Connect::persistent(v, "back", false, 60).will(will),
    )
    .await;
    c.drop_abruptly();
    let _c = RawClient::connect_ok(b.addr(), Connect::persistent(v, "back", false, 60)).await;
    // Absence over the delay plus slack: 2.5 s.
    w.expect_no_publish(Duration::from_millis(2500)).await;
}

// 5: the will is published when the session ends even if the Will Delay
// Interval is longer ("whichever happens first", §3.1.3.2.2).
#[tokio::test]
async fn will_sent_at_session_end_before_delay_v5() {
    let v = Version::V5;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut will = Will::new("will/s", b"session over");
    will.props = Props::new().u32(prop::WILL_DELAY_INTERVAL, 30);
    let c = RawClient::connect_ok(
        b.addr(),
        Connect::persistent(v, "short", false, 1).will(will),
    )
    .await;
    c.drop_abruptly();
    assert_eq!(
        w.recv_publish(Duration::from_secs(4)).await.payload,
        b"session over"
    );
}

// 5: will properties (content type, user properties...) are forwarded.
#[tokio::test]
async fn will_properties_forwarded_v5() {
    let v = Version::V5;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut will = Will::new("will/p", b"{}");
    will.props = Props::new()
        .str(prop::CONTENT_TYPE, "application/json")
        .str(prop::RESPONSE_TOPIC, "reply/here")
        .user("k", "v");
    let c = RawClient::connect_ok(b.addr(), Connect::new(v, "wp").will(will)).await;
    c.drop_abruptly();
    let m = w.recv_publish(T).await;
    assert_eq!(
        m.props.get_str(prop::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(m.props.get_str(prop::RESPONSE_TOPIC), Some("reply/here"));
    assert_eq!(
        m.props.user_props(),
        vec![("k".to_string(), "v".to_string())]
    );
}

// mosquitto_sub's --will-* options: killing it publishes the will.
#[tokio::test]
async fn mosquitto_sub_will_on_kill() {
    let v = Version::V311;
    let b = Broker::start();
    let mut w = watcher(&b, v, "will/#").await;
    let mut sub = BgSub::spawn(
        &b,
        &[
            "-t",
            "x",
            "-i",
            "mswill",
            "--will-topic",
            "will/m",
            "--will-payload",
            "bye",
        ],
    );
    sub.probe(&b, "x", b"ready?").await;
    sub.kill();
    assert_eq!(w.recv_publish(T).await.payload, b"bye");
}
