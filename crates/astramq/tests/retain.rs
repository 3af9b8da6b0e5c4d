//! Retained messages (MQTT 3.1.1 §3.3.1.3; MQTT 5.0 §3.3.1.3 and the
//! Retain Handling / Retain As Published subscription options, §3.8.3.1).
//!
//! Statement numbers differ between the versions; both are cited as
//! `3.1.1:[..]` / `5:[..]`.

mod common;

use common::*;

// 3.1.1:[MQTT-3.3.1-5]/[MQTT-3.3.1-6]/[MQTT-3.3.1-8], 5:[MQTT-3.3.1-5]/[MQTT-3.3.1-9]:
// a retained message is stored and sent, with RETAIN 1, to new subscribers,
// at min(message QoS, subscription QoS).
async fn retained_delivered_on_subscribe(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    p.publish("r/a", b"kept", 2, true).await;
    let mut s = b.client(v, "s").await;
    s.sub("r/#", 1).await;
    let got = s.recv_publish(T).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("r/a", &b"kept"[..])
    );
    assert!(got.retain, "retained copy has RETAIN 1");
    assert_eq!(got.qos, 1);
}
versions_test!(retained_delivered_on_subscribe);

// 3.1.1:[MQTT-3.3.1-9], 5:[MQTT-3.3.1-12]: a retained PUBLISH forwarded to an
// existing subscriber (no Retain As Published) carries RETAIN 0.
async fn live_retained_forwarded_with_retain_0(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.sub("r/live", 0).await;
    let mut p = b.client(v, "p").await;
    p.publish("r/live", b"x", 0, true).await;
    assert!(!s.recv_publish(T).await.retain);
}
versions_test!(live_retained_forwarded_with_retain_0);

// 3.1.1:[MQTT-3.3.1-5]/[MQTT-3.3.1-7]: a new retained message replaces the
// previous one (also at QoS 0).
async fn retained_replaced(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    p.publish("r/x", b"first", 1, true).await;
    p.publish("r/x", b"second", 0, true).await;
    let mut s = b.client(v, "s").await;
    s.sub("r/x", 1).await;
    let got = s.recv_publish(T).await;
    assert_eq!(got.payload, b"second");
    assert_eq!(got.qos, 0);
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(retained_replaced);

// 3.1.1:[MQTT-3.3.1-10]/[MQTT-3.3.1-11], 5:[MQTT-3.3.1-6]/[MQTT-3.3.1-7]:
// a retained message with an empty payload clears the topic and is not
// itself stored; it is still forwarded to current subscribers.
async fn empty_retained_clears(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    p.publish("r/c", b"old", 1, true).await;
    let mut live = b.client(v, "live").await;
    live.sub("r/c", 1).await;
    assert_eq!(live.recv_publish(T).await.payload, b"old");
    p.publish("r/c", b"", 1, true).await;
    assert_eq!(
        live.recv_publish(T).await.payload,
        b"",
        "empty message forwarded"
    );
    let mut s = b.client(v, "s").await;
    s.sub("r/c", 1).await;
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(empty_retained_clears);

// 3.1.1:[MQTT-3.3.1-12], 5:[MQTT-3.3.1-8]: a non-retained publish neither
// stores nor replaces the retained message.
async fn non_retained_does_not_replace(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    p.publish("r/n", b"kept", 1, true).await;
    p.publish("r/n", b"transient", 1, false).await;
    let mut s = b.client(v, "s").await;
    s.sub("r/n", 1).await;
    assert_eq!(s.recv_publish(T).await.payload, b"kept");
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(non_retained_does_not_replace);

// A wildcard subscription receives every matching retained message.
async fn wildcard_gets_all_retained(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    for t in ["w/1", "w/2", "w/3/x", "other"] {
        p.publish(t, t.as_bytes(), 0, true).await;
    }
    let mut s = b.client(v, "s").await;
    s.sub("w/#", 0).await;
    let mut got: Vec<String> = s
        .recv_publishes(3, T)
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    got.sort();
    assert_eq!(got, ["w/1", "w/2", "w/3/x"]);
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(wildcard_gets_all_retained);

// 5:[MQTT-3.3.1-9] Retain Handling 0: retained messages are sent at every
// subscribe, including a re-subscribe.
#[tokio::test]
async fn retain_handling_0_every_subscribe_v5() {
    let b = Broker::start();
    let mut p = b.client(Version::V5, "p").await;
    p.publish("rh/0", b"r", 0, true).await;
    let mut s = b.client(Version::V5, "s").await;
    for _ in 0..2 {
        let o = SubOpts {
            retain_handling: 0,
            ..SubOpts::qos(0)
        };
        s.subscribe_with(&[("rh/0", o)], Props::new()).await;
        assert!(s.recv_publish(T).await.retain);
    }
}

// 5:[MQTT-3.3.1-10] Retain Handling 1: sent only if the subscription did not
// already exist.
#[tokio::test]
async fn retain_handling_1_only_new_subscription_v5() {
    let b = Broker::start();
    let mut p = b.client(Version::V5, "p").await;
    p.publish("rh/1", b"r", 0, true).await;
    let mut s = b.client(Version::V5, "s").await;
    let o = SubOpts {
        retain_handling: 1,
        ..SubOpts::qos(0)
    };
    s.subscribe_with(&[("rh/1", o)], Props::new()).await;
    assert!(s.recv_publish(T).await.retain);
    s.subscribe_with(&[("rh/1", o)], Props::new()).await;
    s.expect_no_publish(ABSENCE).await;
}

// 5:[MQTT-3.3.1-11] Retain Handling 2: retained messages are never sent on
// subscribe; live messages still are.
#[tokio::test]
async fn retain_handling_2_never_v5() {
    let b = Broker::start();
    let mut p = b.client(Version::V5, "p").await;
    p.publish("rh/2", b"r", 0, true).await;
    let mut s = b.client(Version::V5, "s").await;
    let o = SubOpts {
        retain_handling: 2,
        ..SubOpts::qos(0)
    };
    s.subscribe_with(&[("rh/2", o)], Props::new()).await;
    s.expect_no_publish(ABSENCE).await;
    p.publish("rh/2", b"live", 0, false).await;
    assert_eq!(s.recv_publish(T).await.payload, b"live");
}

// 5:[MQTT-3.3.1-12]/[MQTT-3.3.1-13] Retain As Published: with RAP 1 a live
// retained message keeps RETAIN 1; with RAP 0 it is cleared.
#[tokio::test]
async fn retain_as_published_v5() {
    let b = Broker::start();
    let mut rap = b.client(Version::V5, "rap").await;
    let o = SubOpts {
        retain_as_published: true,
        ..SubOpts::qos(1)
    };
    rap.subscribe_with(&[("rap/t", o)], Props::new()).await;
    let mut plain = b.client(Version::V5, "plain").await;
    plain.sub("rap/t", 1).await;
    let mut p = b.client(Version::V5, "p").await;
    p.publish("rap/t", b"x", 1, true).await;
    p.publish("rap/t", b"y", 1, false).await;
    let got = rap.recv_publishes(2, T).await;
    assert!(got[0].retain && !got[1].retain, "{got:?}");
    let got = plain.recv_publishes(2, T).await;
    assert!(!got[0].retain && !got[1].retain, "{got:?}");
}

// mosquitto_pub -r sets a retained message that mosquitto_sub receives;
// mosquitto_pub -r -n clears it.
async fn mosquitto_clients_retain(v: Version) {
    let b = Broker::start();
    let out = mosquitto_pub(
        &b,
        &["-V", v.cli(), "-t", "mr/t", "-m", "ret", "-r", "-q", "1"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let out = mosquitto_sub(
        &b,
        &[
            "-V",
            v.cli(),
            "-t",
            "mr/t",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "%r %p",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1 ret");
    let out = mosquitto_pub(&b, &["-V", v.cli(), "-t", "mr/t", "-n", "-r", "-q", "1"]).await;
    assert!(out.status.success(), "{out:?}");
    let mut s = b.client(v, "s").await;
    s.sub("mr/t", 1).await;
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(mosquitto_clients_retain);
