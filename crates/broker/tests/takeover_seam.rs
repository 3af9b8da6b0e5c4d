//! Takeover through the seam, in process: the broker driven as a cluster drives it
//! when another node claims a session (`Broker::kick` with the new owner's epoch),
//! with the fake session store of `common/` (no Redis, no second process). The
//! multi-process suites (`tests/cluster/takeover.rs` in the `astramq` crate) cover
//! the same paths with real nodes; these pin the broker's half of the contract:
//! who is disconnected, what the new owner receives, what still arrives during the
//! handover grace and what the fence keeps out.

mod common;

use std::time::{Duration, Instant};

use astramq_broker::broker::HANDOVER_GRACE;
use astramq_broker::handle::LocalBroker;
use common::*;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connected persistent v5 client subscribed to `topic` at QoS 1.
async fn subscribed(addr: std::net::SocketAddr, id: &str, topic: &str) -> (AsyncClient, EventLoop) {
    let (c, mut ev) = client(addr, id, 600);
    c.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    wait(&mut ev, "SUBACK", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    (c, ev)
}

/// Publishes one QoS 1 message from a fresh clean-session client and returns the
/// PUBACK's reason.
async fn publish_once(addr: std::net::SocketAddr, topic: &str) -> String {
    let (p, mut ev) = client(addr, "publisher", 0);
    p.publish(topic, QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    next_ack(&mut ev).await
}

/// A raw v5 client (rumqttc reports a DISCONNECT that arrives with the connection's
/// end as a closed connection): sends `packets`, then returns every packet the
/// broker sends until `until` picks one, or fails after [`T`].
struct Raw {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr, id: &str, topic: &str) -> Raw {
        let mut raw = Raw {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: bytes::BytesMut::new(),
        };
        let connect = mqtt::Packet::Connect(Box::new(mqtt::Connect {
            protocol: mqtt::Protocol::V5,
            clean_start: false,
            keep_alive: 60,
            client_id: id.into(),
            properties: mqtt::ConnectProperties {
                session_expiry_interval: Some(600),
                ..Default::default()
            },
            ..Default::default()
        }));
        let subscribe = mqtt::Packet::Subscribe(mqtt::Subscribe {
            packet_id: 1,
            filters: vec![mqtt::SubscribeFilter {
                filter: topic.into(),
                options: mqtt::SubscriptionOptions {
                    qos: mqtt::QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
            ..Default::default()
        });
        let mut out = bytes::BytesMut::new();
        for p in [connect, subscribe] {
            mqtt::encode(&p, mqtt::Protocol::V5, &mut out).unwrap();
        }
        raw.stream.write_all(&out).await.unwrap();
        raw.next(|p| matches!(p, mqtt::Packet::SubAck(_)).then_some(()))
            .await;
        raw
    }

    /// Reads packets until `f` picks one.
    async fn next<R>(&mut self, mut f: impl FnMut(&mqtt::Packet) -> Option<R>) -> R {
        tokio::time::timeout(T, async {
            loop {
                while let Some(p) =
                    mqtt::decode(&mut self.buf, Some(mqtt::Protocol::V5), 1 << 20).unwrap()
                {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "connection closed before the packet looked for");
            }
        })
        .await
        .expect("the packet looked for within T")
    }
}

/// [MQTT-3.1.4-3] (v5: DISCONNECT 0x8E Session taken over): a connected session
/// claimed by another node with a newer epoch is disconnected with 0x8E, and the new
/// owner receives its subscriptions.
#[tokio::test]
async fn a_newer_claim_disconnects_the_connected_owner_with_0x8e() {
    let store = FakeStore::new(Mode::Store);
    let (addr, _stop, broker) = broker_handle(store).await;
    let mut raw = Raw::connect(addr, "dev", "t/#").await;

    // The fake store's claims give epoch 1; another node now holds epoch 2.
    let kicked = tokio::spawn({
        let broker = broker.clone();
        async move { LocalBroker::of(&broker).kick("dev", 2).await }
    });
    let reason = raw
        .next(|p| match p {
            mqtt::Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, mqtt::ReasonCode::SessionTakenOver);
    let snapshot = tokio::time::timeout(T, kicked)
        .await
        .expect("kick answered")
        .unwrap()
        .expect("the session handed over");
    let filters: Vec<&str> = snapshot
        .subscriptions
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(filters, ["t/#"]);
    assert_eq!(snapshot.expiry_secs, 600);
}

/// The fence: a claim whose epoch is not newer than the owner's (a late or
/// duplicate request) leaves the connection and its session alone.
#[tokio::test]
async fn an_older_or_equal_claim_leaves_the_owner_connected() {
    let store = FakeStore::new(Mode::Store);
    let (addr, _stop, broker) = broker_handle(store).await;
    let (c, mut ev) = subscribed(addr, "dev", "t/#").await;
    for epoch in [0, 1] {
        assert!(
            LocalBroker::of(&broker).kick("dev", epoch).await.is_none(),
            "epoch {epoch} took the session"
        );
    }
    // Still connected and still subscribed: a message to it arrives.
    assert_eq!(publish_once(addr, "t/x").await, "Success");
    let topic = wait(&mut ev, "PUBLISH", |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&topic[..], b"t/x");
    drop(c);
}

/// A parked session (client offline) claimed elsewhere is handed over at once with
/// its queued messages, oldest first. During the handover grace its subscription
/// stays here in forward-only mode: a message that still arrives is written to the
/// store marked as belonging to a moved session (the new owner picks it up there),
/// not queued here. After the grace the subscription is gone from this node.
#[tokio::test]
async fn a_parked_session_is_handed_over_and_forwards_during_the_grace() {
    let store = FakeStore::new(Mode::Store);
    let (addr, _stop, broker) = broker_handle(store.clone()).await;
    persistent_subscriber(addr, "q/#").await;
    for i in 0..3 {
        assert_eq!(publish_once(addr, &format!("q/{i}")).await, "Success");
    }

    let kicked_at = Instant::now();
    let snapshot = LocalBroker::of(&broker)
        .kick("sub", 5)
        .await
        .expect("the parked session");
    let queued: Vec<String> = snapshot
        .queued
        .iter()
        .map(|d| d.msg.topic().to_string())
        .collect();
    assert_eq!(queued, ["q/0", "q/1", "q/2"]);
    assert!(
        store.journaled.lock().iter().all(|(_, moved)| !moved),
        "a delivery before the kick was marked as for a moved session"
    );

    // Within the grace: still routed here, journaled for the new owner.
    assert_eq!(publish_once(addr, "q/late").await, "Success");
    assert!(
        kicked_at.elapsed() < HANDOVER_GRACE,
        "the machine was too slow to publish within the grace"
    );
    assert!(
        store
            .journaled
            .lock()
            .iter()
            .any(|(topic, moved)| topic == "q/late" && *moved),
        "a message arriving in the grace was not journaled for the new owner: {:?}",
        store.journaled.lock()
    );

    // After the grace the route is gone: nobody here subscribes any more (v5 PUBACK
    // 0x10 No matching subscribers).
    let deadline = kicked_at + HANDOVER_GRACE + Duration::from_secs(5);
    loop {
        tokio::time::sleep_until((kicked_at + HANDOVER_GRACE).into()).await;
        let ack = publish_once(addr, "q/after").await;
        if ack == "NoMatchingSubscribers" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still subscribed here 5 s after the grace ended ({ack})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A claim for a client id this node has never seen hands nothing over, and its
/// fence keeps out a local CONNECT that claimed the id with an older epoch (the fake
/// store answers every claim with epoch 1): the connection is refused rather than
/// installed beside the newer owner ([MQTT-3.1.4-3]: the newer claim wins).
#[tokio::test]
async fn a_claim_fences_out_an_older_local_connect() {
    let store = FakeStore::new(Mode::Store);
    let (addr, _stop, broker) = broker_handle(store).await;
    assert!(LocalBroker::of(&broker).kick("dev", 3).await.is_none());
    let (_c, mut ev) = client(addr, "dev", 600);
    let accepted = tokio::time::timeout(T, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return a.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("an answer to CONNECT");
    assert!(
        !accepted,
        "a CONNECT with epoch 1 was accepted behind a fence at 3"
    );
}
