//! Retained messages across nodes: set on one node, seen on another, cleared
//! everywhere.

use super::*;

// Invariant 4 (cluster-wide state is consistent) for retained messages:
// 3.1.1:[MQTT-3.3.1-6] / 5:[MQTT-3.3.1-6] a new subscriber on n2 gets the message
// retained on n1, with RETAIN 1; 3.1.1:[MQTT-3.3.1-10]/[MQTT-3.3.1-11],
// 5:[MQTT-3.3.1-6]/[MQTT-3.3.1-7] an empty retained payload (sent on n2) clears it
// everywhere: a new subscriber on n1 gets nothing, and Redis holds nothing.
async fn retained_set_on_a_seen_on_b(v: Version) {
    let c = TestCluster::start(2).await;
    let mut p = c.client(0, v, "pub").await;
    p.publish("r/t", b"kept", 1, true).await;
    c.sync_feed(0, 1).await;

    let mut s = c.client(1, v, "s1").await;
    s.sub("r/#", 1).await;
    let got = s.recv_publish(T).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("r/t", &b"kept"[..])
    );
    assert!(got.retain, "a retained copy carries RETAIN 1");
    assert_eq!(got.qos, 1);
    assert_eq!(
        c.redis().cmd(&["HKEYS", &c.key("{retained}")]).strings(),
        ["r/t"]
    );

    let mut clear = c.client(1, v, "clear").await;
    clear.publish("r/t", b"", 1, true).await;
    c.sync_feed(1, 0).await;
    let mut s2 = c.client(0, v, "s2").await;
    s2.sub("r/#", 1).await;
    s2.expect_no_publish_default().await;
    assert!(
        c.redis()
            .cmd(&["HKEYS", &c.key("{retained}")])
            .strings()
            .is_empty(),
        "the cleared message is gone from Redis"
    );
}
versions_test!(retained_set_on_a_seen_on_b);
