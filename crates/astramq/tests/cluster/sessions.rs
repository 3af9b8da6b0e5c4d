//! Persistent sessions across nodes: resumed on another node with their
//! subscriptions and queued messages, surviving a SIGKILL of their node, taken over,
//! moved away by a drain; a paused node announcing its routes again.

use super::*;

// Invariant 1 and DESIGN "persistent sessions resume on any node":
// 3.1.1:[MQTT-3.2.2-2] / 5:[MQTT-3.2.2-3] a client that had a persistent session on
// n1 reconnects to n2 with Session Present 1, and its subscriptions
// (3.1.1:[MQTT-3.1.2-4] / 5:[MQTT-3.1.2-5]) still deliver: a message published on
// n3 reaches it on n2.
async fn persistent_session_resumes_on_other_node(v: Version) {
    let c = TestCluster::start(3).await;
    let (mut a, ca) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "ps", false, EXPIRY),
    )
    .await;
    assert!(!ca.session_present);
    a.sub("ps/#", 1).await;
    a.disconnect().await;

    let (mut b, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "ps", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present, "session resumed on another node");
    c.sync_from(1).await;
    let mut p = c.client(2, v, "pub").await;
    p.publish("ps/x", b"after-move", 1, false).await;
    let got = b.recv_publish(T).await;
    assert_eq!(got.payload, b"after-move");
    b.expect_no_publish_default().await;
}
versions_test!(persistent_session_resumes_on_other_node);

// Invariant 1: QoS 1 and QoS 2 messages acknowledged while a persistent session was
// offline (3.1.1:[MQTT-3.1.2-5] / 5:[MQTT-3.1.2-5]: stored for it) are delivered
// when it resumes on another node, each once, in order ([MQTT-4.6.0-6]).
async fn persistent_session_queued_messages_delivered_on_other_node(v: Version) {
    let c = TestCluster::start(3).await;
    let (mut a, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "pq", false, EXPIRY),
    )
    .await;
    a.sub("pq/#", 2).await;
    c.sync_from(0).await;
    a.disconnect().await;

    let mut p = c.client(2, v, "pub").await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let qos = 1 + (i % 2) as u8;
        let m = format!("q{qos}-{i}");
        p.publish("pq/x", m.as_bytes(), qos, false).await;
        sent.push(m);
    }

    let (mut b, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "pq", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present);
    let got = b.recv_publishes(sent.len(), T).await;
    assert_eq!(payloads(&got), sent, "queued messages, once each, in order");
    b.expect_no_publish_default().await;
}
versions_test!(persistent_session_queued_messages_delivered_on_other_node);

// Invariants 1 and 3: a persistent session whose node is killed (SIGKILL) while the
// client is offline resumes on a survivor with its subscription and the QoS 1
// message queued for it.
async fn persistent_session_survives_kill9_of_its_node(v: Version) {
    let mut c = TestCluster::start(3).await;
    let (mut a, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "pk", false, EXPIRY),
    )
    .await;
    a.sub("pk/#", 1).await;
    c.sync_from(0).await;
    a.disconnect().await;
    let mut p = c.client(2, v, "pub").await;
    p.publish("pk/x", b"queued", 1, false).await;

    c.kill(0);
    let (mut b, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "pk", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present, "session survives its node");
    assert_eq!(b.recv_publish(T).await.payload, b"queued");
    c.sync_from(1).await;
    p.publish("pk/x", b"live", 1, false).await;
    assert_eq!(b.recv_publish(T).await.payload, b"live");
}
versions_test!(persistent_session_survives_kill9_of_its_node);

// Invariant 2 with persistent sessions: taking over a persistent session from
// another node keeps it (Session Present 1, 5:[MQTT-3.1.4-3]/[MQTT-3.2.2-3]) and the
// old connection gets 0x8E (MQTT 5).
async fn persistent_session_takeover_across_nodes_keeps_session(v: Version) {
    let c = TestCluster::start(2).await;
    let (mut a, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "pt", false, EXPIRY),
    )
    .await;
    a.sub("pt/#", 1).await;
    let (mut b, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "pt", false, EXPIRY),
    )
    .await;
    a.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    assert!(ca.session_present, "the taken-over session is kept");
    c.sync_from(1).await;
    let mut p = c.client(0, v, "pub").await;
    p.publish("pt/x", b"to-b", 1, false).await;
    assert_eq!(b.recv_publish(T).await.payload, b"to-b");
}
versions_test!(persistent_session_takeover_across_nodes_keeps_session);

// Invariant 3 and its false-positive side (docs/membership.md): a node paused past the
// failure timeout (SIGSTOP) is declared down and the survivors drop its routes; once it
// resumes and rejoins, it announces its routes again under its new generation, so its
// subscribers receive messages published on other nodes again.
#[tokio::test]
async fn paused_node_announces_its_routes_again() {
    let c = TestCluster::start(2).await;
    let mut s = c.client(1, Version::V5, "pz-sub").await;
    s.sub("pz/#", 1).await;
    c.wait_route_visible(1, "pz/#").await;
    c.node(1).signal("STOP");
    c.wait_log(0, DETECTION, "paused n2 declared down", |l| {
        l.contains("node failed") && l.split_whitespace().any(|w| w == "node=n2")
    })
    .await;
    c.node(1).signal("CONT");
    let mut p = c.client(0, Version::V5, "pz-pub").await;
    let deadline = tokio::time::Instant::now() + DETECTION;
    let mut n = 0;
    loop {
        n += 1;
        p.publish("pz/x", format!("m{n}").as_bytes(), 1, false)
            .await;
        if let Some(m) = try_recv_publish(&mut s, Duration::from_millis(200)).await {
            assert!(m.payload_str().starts_with('m'));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resumed node's subscriber never received from n1 again (routes: {:?})",
            c.routes()
        );
    }
}

// Issue #5 item 4, node drain: on SIGTERM a clustered node leaves the load balancers'
// rotation, moves its clients away (MQTT 5: DISCONNECT 0x9C Use another server) and
// waits for their persistent sessions to be claimed on another node, so the session
// and the message queued for it while the client moved are not lost.
#[tokio::test]
async fn drain_moves_clients_and_their_sessions_away() {
    let mut c = TestCluster::start(2).await;
    let v = Version::V5;
    let mut s = RawClient::connect_ok(
        c.node(1).addr(),
        Connect::persistent(v, "drainee", false, 300),
    )
    .await;
    s.sub("dr/#", 1).await;
    c.wait_route_visible(1, "dr/#").await;
    c.node(1).signal("TERM");
    s.expect_disconnect(0x9C, DETECTION).await;
    // A message published while the client is between nodes waits in its session.
    let mut p = c.client(0, v, "dr-pub").await;
    p.publish("dr/x", b"while-moving", 1, false).await;
    let (mut s2, ack) = try_connect(
        c.node(0).addr(),
        Connect::persistent(v, "drainee", false, 300),
        T,
    )
    .await;
    let ack = ack.expect("CONNACK on the other node");
    assert!(ack.session_present, "the session moved with the client");
    assert_eq!(s2.recv_publish(T).await.payload_str(), "while-moving");
    let st = c.stop(1).await;
    assert!(st.success(), "a drained node exits 0: {st:?}");
}
