//! Session state: clean start vs persistent sessions, Session Present,
//! session expiry, offline queueing and its bound, in-flight resend
//! (MQTT 3.1.1 §3.1.2.4, §4.1, §4.4; MQTT 5.0 §3.1.2.4, §3.1.2.11.2, §4.1, §4.4).

mod common;

use std::time::Duration;

use common::*;

const LONG: u32 = 300;

async fn persistent(b: &Broker, v: Version, id: &str) -> (RawClient, Connack) {
    RawClient::connect(b.addr(), Connect::persistent(v, id, false, LONG)).await
}

// 3.1.1:[MQTT-3.2.2-2] / 5:[MQTT-3.2.2-3]: resuming a stored session sets
// Session Present 1; 3.1.1:[MQTT-3.2.2-1] / 5:[MQTT-3.2.2-2]: clean start
// sets it to 0 and discards the session [MQTT-3.1.2-6 / MQTT-3.1.2-4].
async fn session_present_flag(v: Version) {
    let b = Broker::start();
    let (c, ca) = persistent(&b, v, "sp").await;
    assert!(!ca.session_present, "no session existed yet");
    c.disconnect().await;
    let (c, ca) = persistent(&b, v, "sp").await;
    assert!(ca.session_present, "stored session resumed");
    c.disconnect().await;
    let (c, ca) = RawClient::connect(b.addr(), Connect::persistent(v, "sp", true, LONG)).await;
    assert!(!ca.session_present, "clean start discards the session");
    c.disconnect().await;
}
versions_test!(session_present_flag);

// [MQTT-3.1.2-4 (3.1.1)/MQTT-3.1.2-5 (5)] subscriptions survive in a
// persistent session and QoS 1/2 messages published while offline are
// delivered on reconnect (QoS 0 may be dropped).
async fn offline_messages_delivered(v: Version) {
    let b = Broker::start();
    let (mut c, _) = persistent(&b, v, "off").await;
    c.sub("off/t", 2).await;
    c.disconnect().await;
    let mut p = b.client(v, "p").await;
    p.publish("off/t", b"q0", 0, false).await;
    p.publish("off/t", b"q1", 1, false).await;
    p.publish("off/t", b"q2", 2, false).await;
    let (mut c, ca) = persistent(&b, v, "off").await;
    assert!(ca.session_present);
    let mut got = Vec::new();
    while got.len() < 3 {
        match c.read(if got.len() < 2 { T } else { ABSENCE }).await {
            Ok(Packet::Publish(m)) => {
                if m.qos == 1 {
                    c.send(&encode_ack(PUBACK, m.pid, 0, v)).await;
                } else if m.qos == 2 {
                    c.send(&encode_ack(PUBREC, m.pid, 0, v)).await;
                }
                got.push(m.payload_str());
            }
            Ok(Packet::Pubrel(a)) => c.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got.retain(|m| m != "q0");
    assert_eq!(got, ["q1", "q2"]);
    // The subscription itself persisted: live messages arrive too.
    p.publish("off/t", b"live", 1, false).await;
    assert_eq!(c.recv_publish(T).await.payload, b"live");
}
versions_test!(offline_messages_delivered);

// A clean session has no subscriptions left from a previous session.
async fn clean_start_drops_subscriptions(v: Version) {
    let b = Broker::start();
    let (mut c, _) = persistent(&b, v, "cs").await;
    c.sub("cs/t", 1).await;
    c.disconnect().await;
    let mut c = RawClient::connect_ok(b.addr(), Connect::persistent(v, "cs", true, LONG)).await;
    let mut p = b.client(v, "p").await;
    p.publish("cs/t", b"x", 1, false).await;
    c.expect_no_publish(ABSENCE).await;
}
versions_test!(clean_start_drops_subscriptions);

// 5:[MQTT-3.1.2-23 area] Session Expiry Interval absent (0): the session ends
// when the connection closes, even with Clean Start 0.
#[tokio::test]
async fn session_expiry_zero_ends_with_connection_v5() {
    let b = Broker::start();
    let mut c =
        RawClient::connect_ok(b.addr(), Connect::new(Version::V5, "se0").clean(false)).await;
    c.sub("se0", 1).await;
    c.disconnect().await;
    let (_c, ca) =
        RawClient::connect(b.addr(), Connect::new(Version::V5, "se0").clean(false)).await;
    assert!(!ca.session_present);
}

// 5: a session with expiry 1 s is gone 2.5 s after disconnect; one with a
// longer expiry is still there. The waits are the feature under test.
#[tokio::test]
async fn session_expiry_interval_elapses_v5() {
    let b = Broker::start();
    for id in ["short", "long"] {
        let exp = if id == "short" { 1 } else { 60 };
        let c =
            RawClient::connect_ok(b.addr(), Connect::persistent(Version::V5, id, false, exp)).await;
        c.disconnect().await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_a, ca) = RawClient::connect(
        b.addr(),
        Connect::persistent(Version::V5, "short", false, 60),
    )
    .await;
    assert!(!ca.session_present, "1 s session must have expired");
    let (_b, ca) = RawClient::connect(
        b.addr(),
        Connect::persistent(Version::V5, "long", false, 60),
    )
    .await;
    assert!(ca.session_present, "60 s session must still exist");
}

// 5:[MQTT-3.14.2-2 area] the Session Expiry Interval can be set to 0 on
// DISCONNECT, which ends the session.
#[tokio::test]
async fn disconnect_sets_session_expiry_zero_v5() {
    let b = Broker::start();
    let mut c =
        RawClient::connect_ok(b.addr(), Connect::persistent(Version::V5, "d0", false, 60)).await;
    c.send(&encode_disconnect(
        Version::V5,
        0,
        &Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 0),
    ))
    .await;
    c.expect_closed(T).await;
    let (_c, ca) =
        RawClient::connect(b.addr(), Connect::persistent(Version::V5, "d0", false, 60)).await;
    assert!(!ca.session_present);
}

// 5:[MQTT-3.14.2-2] a DISCONNECT setting a non-zero Session Expiry Interval
// when CONNECT had 0 is a Protocol Error.
#[tokio::test]
async fn disconnect_raises_expiry_from_zero_is_protocol_error_v5() {
    let b = Broker::start();
    let mut c = RawClient::connect_ok(b.addr(), Connect::new(Version::V5, "d1")).await;
    c.send(&encode_disconnect(
        Version::V5,
        0,
        &Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 60),
    ))
    .await;
    c.expect_disconnect(rc::PROTOCOL_ERROR, T).await;
}

/// Fill an offline session's queue with `n` QoS 1 messages, reconnect and
/// return the payloads delivered.
async fn overflow(b: &Broker, v: Version, n: u32) -> Vec<String> {
    let (mut c, _) = persistent(b, v, "q").await;
    c.sub("q/t", 1).await;
    c.disconnect().await;
    let mut p = b.client(v, "p").await;
    for i in 0..n {
        p.publish("q/t", i.to_string().as_bytes(), 1, false).await;
    }
    let (mut c, _) = persistent(b, v, "q").await;
    let mut got = Vec::new();
    while let Ok(Packet::Publish(m)) = c.read(ABSENCE).await {
        c.send(&encode_ack(PUBACK, m.pid, 0, v)).await;
        got.push(m.payload_str());
    }
    got
}

// max_queued_messages bounds an offline session's queue; the default
// queue_overflow = "drop-oldest" keeps the newest messages.
async fn queue_bound_drop_oldest(v: Version) {
    let b = Broker::start_with("[limits]\nmax_queued_messages = 3\n", &[]);
    assert_eq!(overflow(&b, v, 10).await, ["7", "8", "9"]);
}
versions_test!(queue_bound_drop_oldest);

// queue_overflow = "drop-newest" keeps the oldest messages.
async fn queue_bound_drop_newest(v: Version) {
    let b = Broker::start_with(
        "[limits]\nmax_queued_messages = 3\nqueue_overflow = \"drop-newest\"\n",
        &[],
    );
    assert_eq!(overflow(&b, v, 10).await, ["0", "1", "2"]);
}
versions_test!(queue_bound_drop_newest);

// [MQTT-4.4.0-1] (both versions): on resuming a session the server resends
// unacknowledged PUBLISH packets with their original packet ids and DUP 1
// [MQTT-3.3.1-1], and unacknowledged PUBRELs.
async fn inflight_resent_with_dup(v: Version) {
    let b = Broker::start();
    let (mut c, _) = persistent(&b, v, "inf").await;
    c.auto_ack = false;
    c.sub("inf/1", 1).await;
    c.sub("inf/2", 2).await;
    let mut p = b.client(v, "p").await;
    p.publish("inf/1", b"one", 1, false).await;
    p.publish("inf/2", b"two", 2, false).await;
    let first = c.recv_publishes(2, T).await;
    let q1 = first.iter().find(|m| m.qos == 1).unwrap().clone();
    let q2 = first.iter().find(|m| m.qos == 2).unwrap().clone();
    // Acknowledge neither the QoS 1 PUBLISH nor (after PUBREC) the PUBREL.
    c.send(&encode_ack(PUBREC, q2.pid, 0, v)).await;
    let rel = c
        .wait_packet(T, "PUBREL", |x| match x {
            Packet::Pubrel(a) => Some(a.pid),
            _ => None,
        })
        .await;
    assert_eq!(rel, q2.pid);
    c.drop_abruptly();

    let (mut c, ca) = persistent(&b, v, "inf").await;
    assert!(ca.session_present);
    let mut saw_publish = false;
    let mut saw_pubrel = false;
    while !(saw_publish && saw_pubrel) {
        match c.next(T).await {
            Packet::Publish(m) => {
                assert_eq!(
                    m.payload, b"one",
                    "only the unacked QoS 1 message is resent: {m:?}"
                );
                assert_eq!(m.pid, q1.pid, "original packet id");
                assert!(m.dup, "DUP set on redelivery [MQTT-3.3.1-1]");
                c.send(&encode_ack(PUBACK, m.pid, 0, v)).await;
                saw_publish = true;
            }
            Packet::Pubrel(a) => {
                assert_eq!(a.pid, q2.pid);
                c.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await;
                saw_pubrel = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.expect_no_publish(ABSENCE).await;
}
versions_test!(inflight_resent_with_dup);

// rumqttc v4 persistent session: a QoS 1 message published after the
// client went away is delivered when it comes back (whether the broker saw the
// close before the publish or resends it as in-flight, it must arrive).
#[tokio::test]
async fn rumqttc_v4_persistent_session() {
    use rumqttc::QoS;
    let b = Broker::start();
    let mut o = V4Client::options(&b, "rp");
    o.set_clean_session(false);
    let mut c = V4Client::connect_with(o.clone()).await;
    c.subscribe("rp/t", QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    c.shutdown();
    let mut p = b.client(Version::V311, "p").await;
    p.publish("rp/t", b"while away", 1, false).await;
    let mut c = V4Client::connect_with(o).await;
    assert!(c.connack.session_present);
    assert_eq!(c.recv_publish(T).await.payload, &b"while away"[..]);
}

/// A publisher that outpaces a connected subscriber: with QoS 1 and a full
/// subscriber queue, the broker stops reading the publisher (backpressure) instead
/// of dropping messages it acknowledged. Nothing is lost, order is kept, and the
/// queue never exceeds `max_queued_messages` (DESIGN invariant 1, README "Queue
/// overflow").
async fn slow_subscriber_slows_publisher_without_loss(v: Version) {
    let b = Broker::start_with(
        "[limits]\nmax_queued_messages = 3\nmax_inflight = 1\nqueue_full_wait_ms = 60000\n",
        &[],
    );
    let mut sub = b.client(v, "slow").await;
    sub.auto_ack = false;
    sub.sub("bp/t", 1).await;
    let mut p = b.client(v, "fast").await;
    const N: usize = 20;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            p.publish("bp/t", i.to_string().as_bytes(), 1, false).await;
        }
        p
    });
    // One message in flight (window 1) and three queued: the publisher's fifth
    // PUBLISH cannot be placed, so it must still be waiting. Bounded wait for an
    // absence.
    let first = sub.recv_publish(T).await;
    tokio::time::sleep(ABSENCE).await;
    assert!(!publisher.is_finished(), "publisher was not held back");
    let mut got = vec![first.payload_str()];
    sub.send(&encode_ack(PUBACK, first.pid, 0, v)).await;
    sub.auto_ack = true;
    for _ in 1..N {
        got.push(sub.recv_publish(T).await.payload_str());
    }
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every acknowledged message arrives, in order");
    tokio::time::timeout(T, publisher)
        .await
        .expect("publisher finished")
        .unwrap();
}
versions_test!(slow_subscriber_slows_publisher_without_loss);

/// When the subscriber stays stuck past `queue_full_wait_ms`, the overflow policy
/// applies after all, so one stuck client cannot stall publishers forever.
async fn stuck_subscriber_gets_overflow_policy_after_wait(v: Version) {
    let b = Broker::start_with(
        "[limits]\nmax_queued_messages = 2\nmax_inflight = 1\nqueue_full_wait_ms = 200\nqueue_overflow = \"drop-newest\"\n",
        &[],
    );
    let mut sub = b.client(v, "stuck").await;
    sub.auto_ack = false;
    sub.sub("bp/s", 1).await;
    let mut p = b.client(v, "pub").await;
    for i in 0..6 {
        p.publish("bp/s", i.to_string().as_bytes(), 1, false).await;
    }
    // The publisher got all its PUBACKs although the subscriber never acknowledged:
    // one in flight, two queued, the rest dropped after the wait.
    let first = sub.recv_publish(T).await;
    assert_eq!(first.payload_str(), "0");
    sub.send(&encode_ack(PUBACK, first.pid, 0, v)).await;
    sub.auto_ack = true;
    let rest: Vec<String> = sub
        .recv_publishes(2, T)
        .await
        .iter()
        .map(|m| m.payload_str())
        .collect();
    assert_eq!(rest, ["1", "2"]);
    sub.expect_no_publish(ABSENCE).await;
}
versions_test!(stuck_subscriber_gets_overflow_policy_after_wait);
