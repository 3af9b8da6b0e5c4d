//! `$SYS` topics (Mosquitto's names; `sys_interval_secs`): what a node publishes
//! about itself, and who sees it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn broker() -> Broker {
    Broker::start_with("sys_interval_secs = 1\n", &[])
}

/// Reads `$SYS` messages until every topic in `want` was seen in a live publication
/// (one made after the subscription); the latest value of each topic seen.
///
/// The values are retained, so a subscription first receives the last tick's values
/// with RETAIN set, possibly from before this client connected; they are skipped
/// (a live copy has RETAIN 0 without Retain As Published: MQTT-3.3.1-12).
async fn collect(c: &mut RawClient, want: &[&str]) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    while !want.iter().all(|w| seen.contains_key(*w)) {
        let m = c.recv_publish(Duration::from_secs(5)).await;
        if m.retain {
            continue;
        }
        seen.insert(
            m.topic.clone(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        );
    }
    seen
}

#[tokio::test]
async fn sys_topics_are_published_on_mosquittos_names() {
    let b = broker();
    let mut c = b.client(Version::V5, "watcher").await;
    c.sub("$SYS/broker/#", 0).await;
    let want = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/sent/15min",
    ];
    let seen = collect(&mut c, &want).await;
    assert!(
        seen["$SYS/broker/version"].starts_with("astramq version "),
        "{seen:?}"
    );
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"), "{seen:?}");
    let connected: u64 = seen["$SYS/broker/clients/connected"].parse().unwrap();
    assert!(connected >= 1, "the watcher itself: {seen:?}");
    let load: f64 = seen["$SYS/broker/load/messages/received/1min"]
        .parse()
        .unwrap();
    assert!(load >= 0.0);
}

#[tokio::test]
async fn messages_received_counts_publishes() {
    let b = broker();
    let mut p = b.client(Version::V311, "pub").await;
    for _ in 0..3 {
        p.publish("t", b"x", 1, false).await;
    }
    let mut c = b.client(Version::V311, "watcher").await;
    c.sub("$SYS/broker/messages/received", 0).await;
    // The retained value comes at once, then one per interval: wait for one that
    // counts the three publishes (published after them).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.recv_publish(Duration::from_secs(5)).await;
        let n: u64 = String::from_utf8_lossy(&m.payload).parse().unwrap();
        if n >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages/received stayed at {n}"
        );
    }
}

// [MQTT-4.7.2-1]: a filter starting with a wildcard does not match topics starting
// with `$`.
#[tokio::test]
async fn a_wildcard_filter_does_not_match_sys_topics() {
    let b = broker();
    let mut all = b.client(Version::V5, "all").await;
    all.sub("#", 0).await;
    let mut plus = b.client(Version::V5, "plus").await;
    plus.sub("+/broker/#", 0).await;
    let mut sys = b.client(Version::V5, "sys").await;
    sys.sub("$SYS/#", 0).await;
    // One interval has passed once `sys` got a live (not retained) value.
    while sys.recv_publish(Duration::from_secs(5)).await.retain {}
    all.expect_no_publish_default().await;
    plus.expect_no_publish_default().await;
}

#[tokio::test]
async fn sys_interval_zero_publishes_nothing() {
    let b = Broker::start_with("sys_interval_secs = 0\n", &[]);
    let mut c = b.client(Version::V5, "watcher").await;
    c.sub("$SYS/#", 0).await;
    // With publishing on, the first value is retained at once or within 1 s.
    c.expect_no_publish(Duration::from_secs(2)).await;
}

// The ACL applies to `$SYS` as to any topic: a client may read only what its ACL
// grants ([MQTT-3.9.3-2]: a refused filter gets a failure code in SUBACK).
#[tokio::test]
async fn the_acl_applies_to_sys_topics() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    // Anonymous clients may read the uptime and nothing else of $SYS.
    std::fs::write(&acl, "topic read $SYS/broker/uptime\ntopic readwrite t/#\n").unwrap();
    let b = Broker::start_with(
        "sys_interval_secs = 1\n",
        &["--acl-file", acl.to_str().unwrap()],
    );
    let mut c = b.client(Version::V5, "reader").await;
    let codes = c
        .subscribe(&[
            ("$SYS/broker/uptime", 0),
            ("$SYS/broker/clients/connected", 0),
        ])
        .await;
    assert_eq!(
        codes,
        vec![0, 0x87],
        "uptime granted, the rest not authorized"
    );
    let m = c.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(m.topic, "$SYS/broker/uptime");
    // Only the uptime comes, interval after interval.
    let m = c.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(m.topic, "$SYS/broker/uptime");
}

// Cluster-wide totals (`$SYS/cluster/`, issue #16 item 2): each node writes its
// counters to Redis every interval and publishes the sums to its own subscribers.
// A watcher on n1 sees both nodes, the clients connected to each, and the messages
// received on n2 in the cluster's count.
#[tokio::test]
async fn cluster_totals_add_up_every_nodes_counters() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("astramq.toml");
    std::fs::write(&config, "sys_interval_secs = 1\n").unwrap();
    let c = common::cluster::TestCluster::builder(2)
        .args(&["--config", config.to_str().unwrap()])
        .start()
        .await;
    let mut watcher = c.client(0, Version::V5, "watcher").await;
    let mut other = c.client(1, Version::V5, "elsewhere").await;
    for _ in 0..5 {
        other.publish("t", b"x", 1, false).await;
    }
    watcher.sub("$SYS/cluster/#", 0).await;
    let want = [
        "$SYS/cluster/nodes",
        "$SYS/cluster/clients/connected",
        "$SYS/cluster/messages/received",
        "$SYS/cluster/subscriptions/count",
    ];
    // A tick of n1 after n2 wrote a record counting the five publishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let seen = collect(&mut watcher, &want).await;
        let n = |t: &str| seen[t].parse::<u64>().unwrap();
        if n("$SYS/cluster/nodes") == 2
            && n("$SYS/cluster/clients/connected") == 2
            && n("$SYS/cluster/messages/received") >= 5
            && n("$SYS/cluster/subscriptions/count") >= 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster totals never counted both nodes: {seen:?}"
        );
    }
}
