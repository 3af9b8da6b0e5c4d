//! Cross-node delivery: a message published on one node reaches subscribers on
//! another, in order, at QoS 0, 1 and 2, from rumqttc, the raw client and Mosquitto's
//! clients.

use super::*;

// DESIGN "every PUBLISH that has subscribers on other nodes travels to those nodes";
// [MQTT-4.6.0-6]: messages on one topic from one client reach a subscriber in the
// order they were published, here across two nodes.
async fn cross_node_qos0_publisher_on_a_subscriber_on_b(v: Version) {
    let c = TestCluster::start(2).await;
    let mut s = c.client(1, v, "sub").await;
    s.sub("x/#", 0).await;
    c.sync_feed(1, 0).await;
    let mut p = c.client(0, v, "pub").await;
    let sent: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for m in &sent {
        p.publish("x/q0", m.as_bytes(), 0, false).await;
    }
    let got = s.recv_publishes(sent.len(), T).await;
    assert_eq!(payloads(&got), sent, "every QoS 0 message, in order");
    assert!(got.iter().all(|g| g.topic == "x/q0" && g.qos == 0));
    s.expect_no_publish_default().await;
}
versions_test!(cross_node_qos0_publisher_on_a_subscriber_on_b);

// Invariant 1 (no acknowledged message is lost): the PUBACK for a QoS 1 message
// with a subscriber on another node comes only once the copy for that node is stored
// in its Redis inbox; the rumqttc subscriber on B gets every message at QoS 1, in
// order ([MQTT-4.3.2-*], [MQTT-4.6.0-6]).
async fn cross_node_qos1_publisher_on_a_subscriber_on_b(v: Version) {
    let c = TestCluster::start(2).await;
    let mut s = Rumq::connect(c.node(1), v, "rumq-sub").await;
    s.subscribe_qos1("q1/#").await;
    c.sync_feed(1, 0).await;
    let mut p = c.client(0, v, "raw-pub").await;
    for i in 0..10 {
        let before = c.inbox_added(1);
        let rc = p
            .publish("q1/t", format!("m{i}").as_bytes(), 1, false)
            .await;
        assert_eq!(rc, rc::SUCCESS, "PUBACK reason");
        assert!(
            c.inbox_added(1) > before,
            "PUBACK for m{i} arrived before its copy was in n2's inbox stream"
        );
    }
    for i in 0..10 {
        let (topic, payload, qos) = s.recv().await;
        assert_eq!(
            (topic.as_str(), payload, qos),
            ("q1/t", format!("m{i}").into_bytes(), 1)
        );
    }
    s.expect_no_publish().await;
}
versions_test!(cross_node_qos1_publisher_on_a_subscriber_on_b);

// [MQTT-4.3.3-*] QoS 2 is delivered exactly once across nodes; invariant 1: PUBREC
// only once the remote copy is stored in Redis. 3.1.1 only: a PUBLISH resent (DUP 1,
// same packet id) after PUBREC and before PUBREL is the same message
// (3.1.1:[MQTT-4.3.3-2] method B), not a second one. (MQTT 5 forbids resending
// except on reconnect, [MQTT-4.4.0-1].)
async fn cross_node_qos2_exactly_once(v: Version) {
    let c = TestCluster::start(2).await;
    let mut s = c.client(1, v, "sub").await;
    s.sub("q2/#", 2).await;
    c.sync_feed(1, 0).await;
    let mut p = c.client(0, v, "pub").await;
    const N: usize = 20;
    let pubrec = |pid: u16| {
        move |x: &Packet| match x {
            Packet::Pubrec(a) if a.pid == pid => Some(a.reason),
            _ => None,
        }
    };
    for i in 0..N {
        let before = c.inbox_added(1);
        let pid = p.pid();
        let msg = Publish::new("q2/t", format!("m{i}").as_bytes(), 2).pid(pid);
        p.send(&msg.encode(v)).await;
        let rec = p.wait_packet(T, "PUBREC", pubrec(pid)).await;
        assert_eq!(rec, rc::SUCCESS, "PUBREC reason");
        assert!(
            c.inbox_added(1) > before,
            "PUBREC for m{i} arrived before its copy was in n2's inbox stream"
        );
        if i == 0 && !v.is_v5() {
            let mut dup = msg.clone();
            dup.dup = true;
            p.send(&dup.encode(v)).await;
            let rec = p
                .wait_packet(T, "PUBREC for the resent PUBLISH", pubrec(pid))
                .await;
            assert_eq!(rec, rc::SUCCESS);
        }
        p.send(&encode_ack(PUBREL, pid, 0, v)).await;
        p.wait_packet(T, "PUBCOMP", |x| match x {
            Packet::Pubcomp(a) if a.pid == pid => Some(()),
            _ => None,
        })
        .await;
    }
    let got = s.recv_publishes(N, T).await;
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads(&got), want, "each QoS 2 message once, in order");
    assert!(got.iter().all(|g| g.qos == 2));
    s.expect_no_publish_default().await;
}
versions_test!(cross_node_qos2_exactly_once);

// Mosquitto's clients across nodes: mosquitto_sub (MQTT 5) on n2 receives what
// mosquitto_pub (3.1.1 and 5) publishes on n1 — the protocol version of the
// publisher does not matter to a subscriber on another node.
#[tokio::test]
async fn cross_node_mosquitto_clients() {
    let c = TestCluster::start(2).await;
    let mut sub = BgSub::spawn(c.node(1), &["-V", "mqttv5", "-q", "1", "-t", "m/#", "-v"]);
    // Subscribed on n2 (a local probe arrives), then visible on n1.
    sub.probe(c.node(1), "m/probe", b"p").await;
    c.sync_feed(1, 0).await;
    for (proto, msg) in [("mqttv311", "from-311"), ("mqttv5", "from-5")] {
        let out = mosquitto_pub(c.node(0), &["-V", proto, "-q", "1", "-t", "m/x", "-m", msg]).await;
        assert!(out.status.success(), "mosquitto_pub: {out:?}");
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = sub
            .next_line(T)
            .await
            .unwrap_or_else(|| panic!("mosquitto_sub got only {got:?}"));
        if !line.starts_with("m/probe") {
            got.push(line);
        }
    }
    assert_eq!(got, ["m/x from-311", "m/x from-5"]);
}
