//! PUBLISH and the QoS 0/1/2 flows in both directions (MQTT 3.1.1 §3.3-3.7,
//! §4.3; MQTT 5.0 §3.3-3.7, §4.3).

mod common;

use common::*;

// [MQTT-3.8.4-8 area] / [MQTT-3.3.5-1]: the delivered QoS is
// min(publish QoS, granted subscription QoS), for every combination.
async fn qos_downgrade_matrix(v: Version) {
    let b = Broker::start();
    let mut subs = Vec::new();
    for sq in 0..=2u8 {
        let mut s = b.client(v, &format!("s{sq}")).await;
        s.sub("q/t", sq).await;
        subs.push(s);
    }
    let mut p = b.client(v, "p").await;
    for pq in 0..=2u8 {
        let payload = format!("pq{pq}");
        let code = p.publish("q/t", payload.as_bytes(), pq, false).await;
        assert!(code < 0x80, "publish QoS {pq} refused: {code:#x}");
        for (sq, s) in subs.iter_mut().enumerate() {
            let got = s.recv_publish(T).await;
            assert_eq!(got.payload_str(), payload);
            assert_eq!(got.qos, pq.min(sq as u8), "pub QoS {pq}, sub QoS {sq}");
            assert!(!got.retain, "[MQTT-3.3.1-9] live message has retain 0");
            assert!(!got.dup, "first delivery has DUP 0 [MQTT-3.3.1-1 area]");
            if got.qos > 0 {
                assert_ne!(got.pid, 0, "[MQTT-2.2.1-3] non-zero packet id");
            }
        }
    }
}
versions_test!(qos_downgrade_matrix);

// [MQTT-4.3.2-1]/[MQTT-4.3.2-2 area] QoS 1 inbound: PUBACK with the same packet id.
// v5 may answer 0x10 (No matching subscribers) when nobody is subscribed.
async fn qos1_inbound_puback(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "p").await;
    let code = p
        .publish_msg(Publish::new("nobody/here", b"x", 1).pid(777))
        .await;
    assert!(
        code == rc::SUCCESS || code == rc::NO_MATCHING_SUBSCRIBERS,
        "{code:#x}"
    );
}
versions_test!(qos1_inbound_puback);

// [MQTT-4.3.3-2] QoS 2 inbound (method B): the server must not deliver the
// message again when the client resends the PUBLISH with DUP before PUBREL;
// PUBREL is answered by PUBCOMP with the same id [MQTT-4.3.3-3 area].
async fn qos2_inbound_exactly_once(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.sub("e/1", 2).await;
    let mut p = b.client(v, "p").await;
    let mut msg = Publish::new("e/1", b"once", 2).pid(42);
    p.send(&msg.encode(v)).await;
    let rec = p
        .wait_packet(T, "PUBREC", |x| match x {
            Packet::Pubrec(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(rec.pid, 42);
    msg.dup = true;
    p.send(&msg.encode(v)).await; // resend before PUBREL
    let rec2 = p
        .wait_packet(T, "second PUBREC", |x| match x {
            Packet::Pubrec(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(rec2.pid, 42);
    p.send(&encode_ack(PUBREL, 42, 0, v)).await;
    let comp = p
        .wait_packet(T, "PUBCOMP", |x| match x {
            Packet::Pubcomp(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(comp.pid, 42);
    assert_eq!(s.recv_publish(T).await.payload, b"once");
    s.expect_no_publish(ABSENCE).await;
}
versions_test!(qos2_inbound_exactly_once);

// [MQTT-4.3.3-1 area] QoS 2 outbound: PUBLISH -> our PUBREC -> the server's
// PUBREL (fixed header flags 0010 [MQTT-3.6.1-1]) -> our PUBCOMP.
async fn qos2_outbound_flow(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.auto_ack = false;
    s.sub("e/2", 2).await;
    let mut p = b.client(v, "p").await;
    p.publish("e/2", b"x", 2, false).await;
    let got = s.recv_publish(T).await;
    assert_eq!(got.qos, 2);
    s.send(&encode_ack(PUBREC, got.pid, 0, v)).await;
    // The decoder only yields Pubrel for a PUBREL; check the flags on the wire.
    let rel = s
        .wait_packet(T, "PUBREL", |x| match x {
            Packet::Pubrel(a) => Some(a.clone()),
            Packet::Other { first, .. } if first >> 4 == PUBREL => {
                panic!("PUBREL with flags {:#x}", first & 0xf)
            }
            _ => None,
        })
        .await;
    assert_eq!(rel.pid, got.pid);
    s.send(&encode_ack(PUBCOMP, got.pid, 0, v)).await;
    s.ping().await;
}
versions_test!(qos2_outbound_flow);

// [MQTT-2.2.1-3]/[MQTT-2.2.1-4 area] unacknowledged outbound QoS 1/2
// messages each use a distinct non-zero packet id.
async fn inflight_packet_ids_unique(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.auto_ack = false;
    s.sub("ids", 2).await;
    let mut p = b.client(v, "p").await;
    for i in 0..5u8 {
        p.publish("ids", &[i], 1 + i % 2, false).await;
    }
    let got = s.recv_publishes(5, T).await;
    let mut ids: Vec<u16> = got.iter().map(|x| x.pid).collect();
    assert!(ids.iter().all(|&i| i != 0));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{got:?}");
}
versions_test!(inflight_packet_ids_unique);

// Messages from one publisher on one topic arrive in order (4.6 ordered topic).
async fn ordering_preserved(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.sub("ord", 1).await;
    let mut p = b.client(v, "p").await;
    for i in 0..50u32 {
        p.publish("ord", i.to_string().as_bytes(), 1, false).await;
    }
    let got: Vec<String> = s
        .recv_publishes(50, T)
        .await
        .iter()
        .map(|x| x.payload_str())
        .collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}
versions_test!(ordering_preserved);

// Zero-length and large (256 KiB) payloads are forwarded unchanged.
async fn payload_sizes(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "s").await;
    s.sub("sz", 1).await;
    let mut p = b.client(v, "p").await;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    p.publish("sz", b"", 1, false).await;
    p.publish("sz", &big, 1, false).await;
    assert_eq!(s.recv_publish(T).await.payload, b"");
    assert_eq!(s.recv_publish(T).await.payload, big);
}
versions_test!(payload_sizes);

// A client subscribed to its own topic receives its own messages (no No
// Local by default).
async fn receives_own_messages(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "me").await;
    c.sub("self", 0).await;
    c.publish("self", b"echo", 0, false).await;
    assert_eq!(c.recv_publish(T).await.payload, b"echo");
}
versions_test!(receives_own_messages);

// rumqttc v4: QoS 0/1/2 round trip through the broker.
#[tokio::test]
async fn rumqttc_v4_qos_round_trip() {
    use rumqttc::QoS;
    let b = Broker::start();
    let mut s = V4Client::connect(&b, "s4").await;
    s.subscribe("rt/4", QoS::ExactlyOnce).await;
    let p = V4Client::connect(&b, "p4").await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        p.client
            .publish("rt/4", q, false, format!("{q:?}"))
            .await
            .unwrap();
        let got = s.recv_publish(T).await;
        assert_eq!(got.qos, q);
        assert_eq!(got.payload, format!("{q:?}"));
    }
}

// rumqttc v5: QoS 0/1/2 round trip through the broker.
#[tokio::test]
async fn rumqttc_v5_qos_round_trip() {
    use rumqttc::v5::mqttbytes::QoS;
    let b = Broker::start();
    let mut s = V5Client::connect(&b, "s5").await;
    s.subscribe("rt/5", QoS::ExactlyOnce).await;
    let p = V5Client::connect(&b, "p5").await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        p.client
            .publish("rt/5", q, false, format!("{q:?}"))
            .await
            .unwrap();
        let got = s.recv_publish(T).await;
        assert_eq!(got.qos, q);
        assert_eq!(got.payload, format!("{q:?}"));
    }
}

// mosquitto_pub QoS 2 -> mosquitto_sub QoS 2 (libmosquitto on both ends).
async fn mosquitto_clients_qos2(v: Version) {
    let b = Broker::start();
    let mut s = b.client(v, "raw").await;
    s.sub("mq/2", 2).await;
    let out = mosquitto_pub(&b, &["-V", v.cli(), "-q", "2", "-t", "mq/2", "-m", "two"]).await;
    assert!(out.status.success(), "{out:?}");
    let got = s.recv_publish(T).await;
    assert_eq!((got.qos, &got.payload[..]), (2, &b"two"[..]));
}
versions_test!(mosquitto_clients_qos2);

// The test client itself: `RawClient::recv_publish` honours its timeout when a packet
// other than PUBLISH is queued (here a PINGRESP) and no PUBLISH comes. It used to
// take that packet back from its queue forever without awaiting anything, so even
// an outer timeout could not stop it: it runs on a thread of its own here, and the
// test waits for that thread with a timeout.
#[test]
fn raw_recv_publish_honours_its_timeout() {
    let b = Broker::start();
    let addr = b.addr();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = rt.block_on(async {
            let mut c = RawClient::connect_ok(addr, Connect::new(Version::V5, "idle")).await;
            c.send(&encode_pingreq()).await;
            let waited = std::time::Instant::now();
            let r = c.try_recv_publish(ABSENCE).await;
            // The PINGRESP is still there for a later read.
            let next = c.read(T).await;
            (r, waited.elapsed(), next)
        });
        let _ = done_tx.send(format!("{outcome:?}"));
    });
    let outcome = done_rx
        .recv_timeout(T * 2)
        .expect("recv_publish did not return within twice the test timeout");
    assert!(
        outcome.starts_with("(Err(Timeout)") && outcome.ends_with("Ok(Pingresp))"),
        "{outcome}"
    );
}
