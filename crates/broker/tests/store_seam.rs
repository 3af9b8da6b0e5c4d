//! The broker against a fake session store, in process (no Redis, no disk, no
//! second process): what a publisher is told when the store is slow, full or failing,
//! through the `SessionStore` seam every real store (Redis, disk) sits behind. The
//! broker runs on a loopback port; clients are rumqttc.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Event;

/// Invariant 1: a QoS 1 message is acknowledged only once its copy for a persistent
/// session is stored ([MQTT-4.3.2-2] PUBACK after taking ownership).
#[tokio::test]
async fn puback_waits_for_the_store() {
    let store = FakeStore::new(Mode::Hold);
    let (addr, _stop) = broker(store.clone()).await;
    persistent_subscriber(addr, "t").await;
    let (p, mut ev) = client(addr, "pub", 0);
    p.publish("t", QoS::AtLeastOnce, false, "m").await.unwrap();
    wait(&mut ev, "CONNACK", |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    // Held: no PUBACK (an absence, waited for a bounded time).
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = ev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(early.is_err(), "PUBACK before the store answered");
    store.release();
    assert_eq!(next_ack(&mut ev).await, "Success");
}

/// A full store: v5 PUBACK 0x97 Quota exceeded [MQTT-3.4.2-1]; a store that fails:
/// 0x80 Unspecified error. Nothing is acknowledged as accepted.
#[tokio::test]
async fn a_full_or_failing_store_refuses_with_a_reason_code() {
    for (mode, want) in [
        (Mode::Full, "QuotaExceeded"),
        (Mode::Fail, "UnspecifiedError"),
    ] {
        let store = FakeStore::new(Mode::Store);
        let (addr, _stop) = broker(store.clone()).await;
        persistent_subscriber(addr, "t").await;
        *store.mode.lock() = mode;
        let (p, mut ev) = client(addr, "pub", 0);
        p.publish("t", QoS::AtLeastOnce, false, "m").await.unwrap();
        assert_eq!(next_ack(&mut ev).await, want, "{mode:?}");
    }
}

/// Deferred QoS 2: a persistent publisher's inbound packet id is stored before the
/// message is routed, so PUBREC waits for it; if it cannot be stored, PUBREC says so
/// (0x80) and nothing was routed ([MQTT-4.3.3-9] across a crash needs the id stored).
#[tokio::test]
async fn a_persistent_publishers_qos2_waits_for_its_packet_id_to_be_stored() {
    let store = FakeStore::new(Mode::Hold);
    let (addr, _stop) = broker(store.clone()).await;
    let (p, mut ev) = client(addr, "pub", 600);
    p.publish("q", QoS::ExactlyOnce, false, "m").await.unwrap();
    wait(&mut ev, "CONNACK", |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubRec(_))) = ev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(early.is_err(), "PUBREC before the packet id was stored");
    store.release();
    // Accepted; nobody subscribed (0x10 is a success code).
    assert_eq!(next_ack(&mut ev).await, "NoMatchingSubscribers");

    let store = FakeStore::new(Mode::Fail);
    let (addr, _stop) = broker(store).await;
    let (p, mut ev) = client(addr, "pub2", 600);
    p.publish("q", QoS::ExactlyOnce, false, "m").await.unwrap();
    assert_eq!(next_ack(&mut ev).await, "UnspecifiedError");
}

/// A store that cannot claim the client id: CONNACK 0x88 Server unavailable.
#[tokio::test]
async fn a_store_that_cannot_claim_refuses_the_connection() {
    let store = FakeStore::with_claims(Mode::Store, true);
    let (addr, _stop) = broker(store).await;
    let (_c, mut ev) = client(addr, "c", 600);
    let code = tokio::time::timeout(T, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Some(a.code),
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("an answer to CONNECT");
    assert_eq!(
        code,
        Some(rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ServerUnavailable)
    );
}

/// cluster.session_store_max_changes: a store with no room for more changes (they
/// cannot be refused once the client was answered) leaves the sockets of persistent
/// sessions unread until it has room; clean sessions are not held.
#[tokio::test]
async fn a_store_without_room_for_changes_holds_persistent_sessions_only() {
    let store = FakeStore::new(Mode::Store);
    let (addr, _stop) = broker(store.clone()).await;
    let (p, mut pev) = client(addr, "persistent", 600);
    let (c, mut cev) = client(addr, "clean", 0);
    p.subscribe("p/0", QoS::AtMostOnce).await.unwrap();
    wait(&mut pev, "SUBACK", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    c.subscribe("c", QoS::AtLeastOnce).await.unwrap();
    wait(&mut cev, "SUBACK", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;

    store.set_changes_full(true);
    // A message wakes the persistent session's connection: it looks at the store
    // before it reads again.
    c.publish("p/0", QoS::AtMostOnce, false, "wake")
        .await
        .unwrap();
    tokio::time::timeout(T, async {
        while !matches!(
            cev.poll().await,
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))
        ) {}
    })
    .await
    .expect("wake-up sent");
    wait(&mut pev, "PUBLISH", |p| {
        matches!(p, Packet::Publish(_)).then_some(())
    })
    .await;
    // The clean session is served as before.
    c.subscribe("c/2", QoS::AtLeastOnce).await.unwrap();
    wait(&mut cev, "SUBACK (clean session)", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    // The persistent one is not read: no SUBACK (an absence, waited for a bounded
    // time).
    p.subscribe("p/1", QoS::AtLeastOnce).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = pev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(early.is_err(), "SUBACK while the store had no room");
    store.set_changes_full(false);
    wait(&mut pev, "SUBACK once the store has room", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
}
