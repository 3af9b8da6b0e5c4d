//! `GET /metrics` on the health/admin listener (issue #16): typed metrics with units,
//! per listener and per QoS, a delivery-latency histogram, the cluster's Redis
//! round-trip histogram and gossip members by state; and the shipped Grafana
//! dashboard (`deploy/grafana/astramq.json`) querying only metrics a node serves.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use rumqttc::v5::mqttbytes::QoS;

/// The dashboard shipped in `deploy/`.
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/astramq.json"
);

/// A broker serving `/metrics` on a health listener of its own.
fn broker_with_health() -> Broker {
    Broker::builder()
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
}

/// Waits until sample `name` (labels included) reads `want`.
async fn until(health: SocketAddr, name: &str, want: u64) {
    let deadline = Instant::now() + T;
    loop {
        let got = metric_at(health, name).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every name of a metric family in a `/metrics` text: its samples' names.
fn sample_names(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect()
}

/// Every `astramq_…` metric name the dashboard mentions (queries, variables).
fn dashboard_metrics(json: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = json;
    while let Some(at) = rest.find("astramq_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

// Messages in and out are counted by QoS, connections per listener, and each live
// delivery once in the latency histogram; a retained message sent on SUBSCRIBE is
// sent (counted) but says nothing of latency (not observed). Types are declared.
#[tokio::test]
async fn messages_by_qos_connections_per_listener_and_delivery_latency() {
    let b = broker_with_health();
    let health = b.health_addr();
    let mut publisher = V5Client::connect(&b, "publisher").await;
    // A retained QoS 1 message, acknowledged (so stored) before anyone subscribes.
    publisher
        .client
        .publish("m/retained", QoS::AtLeastOnce, true, "r")
        .await
        .unwrap();
    publisher
        .wait_incoming(T, "PUBACK", |p| {
            matches!(p, V5Packet::PubAck(_)).then_some(())
        })
        .await;
    let mut subscriber = V5Client::connect(&b, "subscriber").await;
    subscriber.subscribe("m/#", QoS::ExactlyOnce).await;
    let mut seen = 0;
    let count = |p: &V5Packet| matches!(p, V5Packet::Publish(_)).then_some(());
    subscriber
        .wait_incoming(T, "the retained message", count)
        .await;
    for (qos, n) in [
        (QoS::AtMostOnce, 1),
        (QoS::AtLeastOnce, 2),
        (QoS::ExactlyOnce, 3),
    ] {
        for i in 0..n {
            publisher
                .client
                .publish("m/live", qos, false, format!("{i}"))
                .await
                .unwrap();
        }
    }
    while seen < 6 {
        subscriber
            .wait_incoming(T, "six live messages", count)
            .await;
        seen += 1;
    }
    for (name, want) in [
        (r#"astramq_messages_received_total{qos="0"}"#, 1),
        (r#"astramq_messages_received_total{qos="1"}"#, 3),
        (r#"astramq_messages_received_total{qos="2"}"#, 3),
        (r#"astramq_messages_sent_total{qos="0"}"#, 1),
        (r#"astramq_messages_sent_total{qos="1"}"#, 3),
        (r#"astramq_messages_sent_total{qos="2"}"#, 3),
        ("astramq_delivery_latency_seconds_count", 6),
        ("astramq_clients_connected", 2),
    ] {
        until(health, name, want).await;
    }
    let listener = format!(
        r#"{{listener="{}",transport="tcp",proxy="false"}}"#,
        b.addr()
    );
    until(
        health,
        &format!("astramq_listener_connections{listener}"),
        2,
    )
    .await;
    until(
        health,
        &format!("astramq_listener_connections_accepted_total{listener}"),
        2,
    )
    .await;
    let (code, text) = http_get(health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "# TYPE astramq_clients_connected gauge",
        "# TYPE astramq_messages_received_total counter",
        "# TYPE astramq_delivery_latency_seconds histogram",
        r#"astramq_delivery_latency_seconds_bucket{le="+Inf"} 6"#,
        r#"astramq_dropped_total{reason="expired"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // One client leaves: its listener's gauge follows.
    subscriber.shutdown();
    until(
        health,
        &format!("astramq_listener_connections{listener}"),
        1,
    )
    .await;
    until(health, "astramq_clients_connected", 1).await;
}

// Every metric the Grafana dashboard queries is served by a running cluster node
// (a renamed or removed metric fails here, not in an operator's empty panel); and
// the cluster's own series carry real values: the other node alive in gossip, Redis
// round trips timed.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_a_node_serves() {
    let json = std::fs::read_to_string(DASHBOARD).expect("deploy/grafana/astramq.json");
    let wanted = dashboard_metrics(&json);
    assert!(
        wanted.len() >= 30,
        "the dashboard queries only {} metrics: {wanted:?}",
        wanted.len()
    );
    let c = TestCluster::builder(2)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
        .await;
    let health = c.node(0).health_addr();
    until(health, r#"astramq_gossip_members{state="alive"}"#, 1).await;
    let (code, text) = http_get(health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let served = sample_names(&text);
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !served.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no node serves: {missing:?}\n--- /metrics ---\n{text}"
    );
    assert!(metric_at(health, "astramq_redis_round_trip_seconds_count").await > 0);
    assert_eq!(metric_at(health, "astramq_redis_reachable").await, 1);
    assert_eq!(
        metric_at(health, r#"astramq_gossip_members{state="suspect"}"#).await,
        0
    );
}

// Gossip members by state follow a node killed with SIGKILL: alive goes from 1 to 0
// and the dead node is counted down (suspect on the way); its failure is counted.
#[tokio::test]
async fn gossip_members_by_state_follow_a_killed_node() {
    let mut c = TestCluster::builder(2)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
        .await;
    let health = c.node(0).health_addr();
    until(health, r#"astramq_gossip_members{state="alive"}"#, 1).await;
    assert_eq!(
        metric_at(health, r#"astramq_gossip_members{state="down"}"#).await,
        0
    );
    c.kill(1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alive = metric_at(health, r#"astramq_gossip_members{state="alive"}"#).await;
        let down = metric_at(health, r#"astramq_gossip_members{state="down"}"#).await;
        if alive == 0 && down == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alive {alive}, down {down}: the killed node is not counted down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(health, "astramq_cluster_node_failures_total", 1).await;
}

// Redis round trips are timed on every request of the shared connection, and the
// failed ones counted: while Redis is stopped the errors grow and the node says it is
// unreachable; once it is back, round trips go on being timed.
#[tokio::test]
async fn redis_round_trips_and_errors_are_counted_through_an_outage() {
    let mut c = TestCluster::builder(1)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
        .await;
    let health = c.node(0).health_addr();
    let trips = "astramq_redis_round_trip_seconds_count";
    let before = metric_at(health, trips).await;
    assert!(before > 0, "no Redis round trip timed at start");
    // A subscription is a Redis write (the route feed): one more round trip at least.
    let mut s = c.client(0, Version::V5, "s").await;
    s.sub("t/#", 1).await;
    let deadline = Instant::now() + T;
    while metric_at(health, trips).await <= before {
        assert!(
            Instant::now() < deadline,
            "the subscription's write was not timed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = metric_at(health, "astramq_redis_errors_total").await;
    c.redis_server().shutdown(true);
    until(health, "astramq_redis_reachable", 0).await;
    let deadline = Instant::now() + T;
    while metric_at(health, "astramq_redis_errors_total").await <= errors {
        assert!(
            Instant::now() < deadline,
            "no failed round trip counted while Redis is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.redis_server().restart();
    until(health, "astramq_redis_reachable", 1).await;
    assert!(metric_at(health, "astramq_redis_outages_total").await >= 1);
}

// A message no subscription matches is counted as dropped for "no_subscribers"
// (the v5 publisher also hears 0x10 No matching subscribers, MQTT-3.4.2.1); a
// retained one is kept, not dropped, and one that reaches a subscriber is not counted.
#[tokio::test]
async fn a_message_nobody_subscribes_to_is_counted_as_dropped() {
    let b = broker_with_health();
    let health = b.health_addr();
    let name = r#"astramq_dropped_total{reason="no_subscribers"}"#;
    let mut publisher = b.client(Version::V5, "publisher").await;
    publisher.publish("nobody/here", b"x", 1, false).await;
    until(health, name, 1).await;
    publisher.publish("nobody/retained", b"r", 1, true).await;
    let mut subscriber = b.client(Version::V5, "subscriber").await;
    subscriber.sub("somebody/#", 1).await;
    publisher.publish("somebody/here", b"y", 1, false).await;
    subscriber.recv_publish(T).await;
    publisher.publish("nobody/again", b"z", 0, false).await;
    // The QoS 0 message above is the second drop; had the retained one or the
    // delivered one counted, the counter would pass 2.
    until(health, name, 2).await;
    assert_eq!(metric_at(health, name).await, 2);
}

// A refusing CONNACK is counted for its listener by reason: a 3.1.1 client with an
// empty client id and Clean Session 0 is refused with return code 0x02 Identifier
// rejected [MQTT-3.1.3-8], MQTT 5's Client Identifier not valid.
#[tokio::test]
async fn refused_connects_are_counted_per_listener_by_reason() {
    let b = broker_with_health();
    let health = b.health_addr();
    let name = format!(
        r#"astramq_connack_refused_total{{listener="{}",transport="tcp",proxy="false",reason="client_identifier_not_valid"}}"#,
        b.addr()
    );
    for n in 1..=2 {
        let (_c, ack) =
            RawClient::connect(b.addr(), Connect::new(Version::V311, "").clean(false)).await;
        assert_eq!(ack.code, 0x02, "CONNACK return code");
        until(health, &name, n).await;
    }
    let (_c, ack) = RawClient::connect(b.addr(), Connect::new(Version::V311, "fine")).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        metric_at(health, &name).await,
        2,
        "an accepted CONNECT is not counted"
    );
}

// Queue depth in total (read at each scrape): a parked persistent session with three
// QoS 1 messages queued shows in `astramq_queued_messages`, `astramq_queued_bytes`
// and `astramq_sessions_parked`; once it reconnects they are sent: no longer queued
// but in flight (`astramq_inflight_messages`) until the client's PUBACKs.
#[tokio::test]
async fn queue_depth_counts_what_waits_for_parked_sessions() {
    let b = broker_with_health();
    let h = b.health_addr();
    let v = Version::V5;
    let (mut s, _) =
        RawClient::connect(b.addr(), Connect::persistent(v, "depth", false, 600)).await;
    s.sub("depth/#", 1).await;
    s.disconnect().await;
    until(h, "astramq_sessions_parked", 1).await;
    let mut p = b.client(v, "depth-pub").await;
    for i in 0..3 {
        assert_eq!(
            p.publish("depth/x", format!("m{i}").as_bytes(), 1, false)
                .await,
            0
        );
    }
    until(h, "astramq_queued_messages", 3).await;
    assert!(metric_at(h, "astramq_queued_bytes").await > 0);
    let (mut s, ack) =
        RawClient::connect(b.addr(), Connect::persistent(v, "depth", false, 600)).await;
    assert!(ack.session_present);
    s.auto_ack = false;
    let mut pids = Vec::new();
    for _ in 0..3 {
        pids.push(s.recv_publish(T).await.pid);
    }
    // Sent, not acknowledged: in flight, no longer queued.
    until(h, "astramq_queued_messages", 0).await;
    until(h, "astramq_queued_bytes", 0).await;
    until(h, "astramq_inflight_messages", 3).await;
    until(h, "astramq_sessions_parked", 0).await;
    for pid in pids {
        s.send(&encode_ack(PUBACK, pid, 0, v)).await;
    }
    until(h, "astramq_inflight_messages", 0).await;
}
