//! Dead-node repair (issue #6): a survivor takes over what a SIGKILLed node held:
//! wills, unacknowledged deliveries, offline sessions, QoS 2 state.

use super::*;

/// Waits until a survivor reports it took over `dead`'s sessions.
async fn wait_taken_over(c: &TestCluster, survivors: &[usize], dead: &str) {
    let deadline = Instant::now() + DETECTION;
    loop {
        let done = survivors.iter().any(|&i| {
            c.node(i).stderr().lines().any(|l| {
                l.contains("took over a failed node's sessions")
                    && l.split_whitespace().any(|w| w == format!("node={dead}"))
            })
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no survivor took over {dead}'s sessions within {DETECTION:?}:\n{}",
            c.node(survivors[0]).stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Invariant 3, [MQTT-3.1.2-8]: the will of a client whose node is killed is
// published by a survivor (the client's network connection ended without
// DISCONNECT), exactly once.
async fn will_of_a_client_on_a_killed_node_is_published_by_a_survivor(v: Version) {
    let mut c = TestCluster::start(3).await;
    let mut w = c.client(1, v, "will-watcher").await;
    w.sub("will/#", 1).await;
    c.sync_from(1).await;
    let mut will = Will::new("will/dying", b"node died");
    will.qos = 1;
    let _dying = RawClient::connect_ok(c.node(0).addr(), Connect::new(v, "dying").will(will)).await;
    c.kill(0);
    let m = w.recv_publish(DETECTION).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/dying", &b"node died"[..])
    );
    w.expect_no_publish_default().await;
}
versions_test!(will_of_a_client_on_a_killed_node_is_published_by_a_survivor);

// Invariant 1, [MQTT-4.4.0-1]: a QoS 1 message delivered to a connected persistent
// session but not yet acknowledged when its node is killed is sent again when the
// session resumes on another node.
async fn unacknowledged_delivery_survives_kill9_of_its_node(v: Version) {
    let mut c = TestCluster::start(3).await;
    let (mut s, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "ua", false, EXPIRY),
    )
    .await;
    s.sub("ua/#", 1).await;
    c.sync_from(0).await;
    s.auto_ack = false;
    let mut p = c.client(1, v, "ua-pub").await;
    assert_eq!(p.publish("ua/x", b"m1", 1, false).await, 0, "acknowledged");
    let first = s.recv_publish(T).await;
    assert_eq!(first.payload, b"m1");
    c.kill(0);
    let (mut s2, ca) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "ua", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present, "the session survives its node");
    let again = s2.recv_publish(T).await;
    assert_eq!(
        again.payload, b"m1",
        "the unacknowledged message comes again"
    );
    s2.expect_no_publish_default().await;
}
versions_test!(unacknowledged_delivery_survives_kill9_of_its_node);

// Invariants 1 and 3: once a survivor took over a killed node's offline persistent
// session, messages published meanwhile are kept for it (the session's subscription
// lives on the survivor) and delivered when the client comes back.
//
// Item 4 of issue #6: the takeover shows in the survivors' metrics.
async fn offline_session_of_a_killed_node_keeps_collecting_messages(v: Version) {
    let mut c = TestCluster::builder(3)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
        .await;
    let (mut s, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "oc", false, EXPIRY),
    )
    .await;
    s.sub("oc/#", 1).await;
    c.sync_from(0).await;
    s.disconnect().await;
    c.kill(0);
    wait_taken_over(&c, &[1, 2], "n1").await;
    c.sync_from(1).await;
    c.sync_from(2).await;
    let mut p = c.client(1, v, "oc-pub").await;
    assert_eq!(p.publish("oc/x", b"while-away", 1, false).await, 0);
    let (mut s2, ca) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "oc", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present);
    assert_eq!(s2.recv_publish(T).await.payload, b"while-away");
    // Exactly one survivor took the session over, and says so in its metrics.
    let mut adopted = 0;
    for i in [1, 2] {
        let (code, body) = http_get(c.node(i).health_addr(), "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let value = |name: &str| -> u64 {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
        };
        assert_eq!(
            value("astramq_cluster_node_failures_total "),
            1,
            "n{} saw n1 fail",
            i + 1
        );
        adopted += value("astramq_cluster_sessions_adopted_total ");
    }
    assert_eq!(adopted, 1, "one survivor adopted the one session");
}
versions_test!(offline_session_of_a_killed_node_keeps_collecting_messages);

// Invariant 2 after a false failure: a node frozen (SIGSTOP) until a survivor took
// its sessions over drops them when it resumes: its stale connection is told 0x8E
// Session taken over, so the client never has two live sessions.
#[tokio::test]
async fn paused_node_drops_sessions_taken_over_while_it_was_away() {
    let c = TestCluster::start(2).await;
    let (mut s, _) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(Version::V5, "pz1", false, EXPIRY).keep_alive(0),
    )
    .await;
    s.sub("pz1/#", 1).await;
    c.node(1).signal("STOP");
    wait_taken_over(&c, &[0], "n2").await;
    c.node(1).signal("CONT");
    s.expect_disconnect(rc::SESSION_TAKEN_OVER, DETECTION).await;
    // The session lives on n1 now: it resumes there with its subscription.
    let (mut s2, ca) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(Version::V5, "pz1", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present);
    let mut p = c.client(0, Version::V5, "pz1-pub").await;
    p.publish("pz1/x", b"after", 1, false).await;
    assert_eq!(s2.recv_publish(T).await.payload, b"after");
}

// Invariant 1 at QoS 2 ([MQTT-4.3.3-9] as the receiver, [MQTT-4.4.0-1]): a QoS 2
// delivery the client already received (PUBREC answered with PUBREL) when its node is
// killed resumes on another node as PUBREL with the same packet id, never as a second
// PUBLISH.
async fn qos2_received_delivery_resumes_as_pubrel_after_kill9(v: Version) {
    let mut c = TestCluster::start(3).await;
    let (mut s, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "q2", false, EXPIRY),
    )
    .await;
    s.sub("q2/#", 2).await;
    c.sync_from(0).await;
    s.auto_ack = false;
    let mut p = c.client(1, v, "q2-pub").await;
    assert_eq!(p.publish("q2/x", b"once", 2, false).await, 0);
    let m = s.recv_publish(T).await;
    assert_eq!((m.payload.as_slice(), m.qos), (&b"once"[..], 2));
    s.send(&encode_ack(PUBREC, m.pid, 0, v)).await;
    match s.next(T).await {
        Packet::Pubrel(a) => assert_eq!(a.pid, m.pid),
        other => panic!("expected PUBREL, got {}", other.name()),
    }
    c.kill(0);
    let (mut s2, ca) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "q2", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present);
    match s2.next(T).await {
        Packet::Pubrel(a) => assert_eq!(a.pid, m.pid, "the same packet id"),
        other => panic!("expected PUBREL again, got {}", other.name()),
    }
    s2.send(&encode_ack(PUBCOMP, m.pid, 0, v)).await;
    s2.expect_no_publish_default().await;
}
versions_test!(qos2_received_delivery_resumes_as_pubrel_after_kill9);

// Exactly once across the publisher's node ([MQTT-4.3.3-9] kept cluster-wide): a QoS
// 2 PUBLISH whose node dies before PUBREL is sent again (DUP) by its persistent
// session to another node; the subscriber still receives it once.
async fn qos2_publisher_resend_after_kill9_is_delivered_once(v: Version) {
    let mut c = TestCluster::start(3).await;
    let (mut s, _) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "q2s", false, EXPIRY),
    )
    .await;
    s.sub("q2p/#", 2).await;
    c.sync_from(2).await;
    let (mut p, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(v, "q2p", false, EXPIRY),
    )
    .await;
    let first = Publish::new("q2p/x", b"exactly-once", 2).pid(7);
    p.send(&first.encode(v)).await;
    match p.next(T).await {
        Packet::Pubrec(a) => assert_eq!(a.pid, 7),
        other => panic!("expected PUBREC, got {}", other.name()),
    }
    assert_eq!(s.recv_publish(T).await.payload, b"exactly-once");
    c.kill(0);
    let (mut p2, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "q2p", false, EXPIRY),
    )
    .await;
    assert!(
        ca.session_present,
        "the publisher's session (no subscriptions) survives"
    );
    let mut again = Publish::new("q2p/x", b"exactly-once", 2).pid(7);
    again.dup = true;
    p2.send(&again.encode(v)).await;
    match p2.next(T).await {
        Packet::Pubrec(a) => assert_eq!(a.pid, 7),
        other => panic!("expected PUBREC, got {}", other.name()),
    }
    p2.send(&encode_ack(PUBREL, 7, 0, v)).await;
    match p2.next(T).await {
        Packet::Pubcomp(a) => assert_eq!(a.pid, 7),
        other => panic!("expected PUBCOMP, got {}", other.name()),
    }
    s.expect_no_publish_default().await;
}
versions_test!(qos2_publisher_resend_after_kill9_is_delivered_once);
