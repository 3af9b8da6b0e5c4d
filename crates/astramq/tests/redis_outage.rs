//! Redis trouble, end to end (DESIGN invariant 6: "Redis trouble degrades, never
//! corrupts"; issue #6 item 2): real `astramq` nodes on a real `redis-server` that the
//! test stops (`SHUTDOWN SAVE` / `SHUTDOWN NOSAVE`) and starts again on the same port.
//!
//! - While Redis is down a node reports 503 on `/health`, keeps serving publish and
//!   subscribe between its own clients, and refuses with a reason code what needs
//!   Redis: a cross-node QoS 1 message (MQTT 5 PUBACK 0x80; a 3.1.1 publisher is
//!   disconnected so it resends), a new connection (CONNACK 0x88 / 3).
//! - Redis back with its data: `/health` 200 and cross-node delivery again, with no
//!   node restarted; a subscription made during the outage reaches the cluster.
//! - Redis back *without* its data: the nodes notice (incarnation marker) and put back
//!   what they hold: routes, retained messages, inbox consumer groups.
//!
//! Every wait is on an event with a deadline (a status code, a log line, a key in
//! Redis, a packet); nothing sleeps and hopes.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// "Within a few seconds": the node probes Redis every second.
const DETECT: Duration = Duration::from_secs(10);
/// Time for a node to notice Redis is back and resynchronise.
const RECOVER: Duration = Duration::from_secs(20);

/// A cluster of `n` nodes, each with a health endpoint.
async fn cluster(n: usize) -> TestCluster {
    TestCluster::builder(n)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start()
        .await
}

/// Polls `GET /health` on node `i` until it answers `code`; returns the body.
async fn wait_health(c: &TestCluster, i: usize, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http_get(c.node(i).health_addr(), "/health").await {
            Ok((got, body)) if got == code => return body,
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "{}: GET /health did not answer {code} within {timeout:?}; last: {last:?}\n{}",
            c.id(i),
            c.node(i).stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lines of node `i`'s log containing `needle`.
fn log_count(c: &TestCluster, i: usize, needle: &str) -> usize {
    c.node(i)
        .stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The metric `name`'s value in node `i`'s `GET /metrics`.
async fn metric(c: &TestCluster, i: usize, name: &str) -> u64 {
    metric_at(c.node(i).health_addr(), name).await
}

/// The incarnation marker the nodes keep in Redis.
fn incarnation(c: &TestCluster) -> String {
    c.redis()
        .cmd(&["GET", &c.key("{cluster}:incarnation")])
        .text()
}

const LOST_LINE: &str = "serving local clients only";
const BACK_LINE: &str = "redis reachable again after";

// (a) Redis stopped: unhealthy, local traffic flows, what needs Redis is refused.
#[tokio::test]
async fn redis_down_local_traffic_flows_remote_refused_health_503() {
    let mut c = cluster(2).await;
    for i in 0..2 {
        let body = wait_health(&c, i, 200, T).await;
        assert!(body.contains("\"status\":\"ok\""), "{body}");
        assert!(body.contains("\"redis\":\"reachable\""), "{body}");
    }
    // A subscriber on n2, known to n1 (sync_feed is the barrier).
    let mut remote = c.client(1, Version::V5, "remote-sub").await;
    remote.sub("out/remote", 1).await;
    c.sync_feed(1, 0).await;
    // Everything else on n1, connected before the outage.
    let mut local = c.client(0, Version::V5, "local-sub").await;
    local.sub("out/local/#", 1).await;
    let mut pub5 = c.client(0, Version::V5, "pub-v5").await;
    let mut pub3 = c.client(0, Version::V311, "pub-v311").await;

    c.redis_server().shutdown(false);
    for i in 0..2 {
        let body = wait_health(&c, i, 503, DETECT).await;
        assert!(body.contains("\"status\":\"unhealthy\""), "{body}");
        assert!(body.contains("\"redis\":\"unreachable since "), "{body}");
    }

    // Local publish/subscribe keeps working, QoS 0 and 1, both protocol versions.
    assert_eq!(pub5.publish("out/local/a", b"q0", 0, false).await, 0);
    assert_eq!(local.recv_publish(T).await.payload, b"q0");
    // [MQTT-4.3.2-1] (v5 §4.3.2) PUBACK with reason 0x00 Success: delivered locally.
    assert_eq!(pub5.publish("out/local/b", b"q1", 1, false).await, 0x00);
    assert_eq!(local.recv_publish(T).await.payload, b"q1");
    assert_eq!(pub3.publish("out/local/c", b"v311", 1, false).await, 0x00);
    assert_eq!(local.recv_publish(T).await.payload, b"v311");

    // QoS 0 for the other node is dropped without holding anything up.
    assert_eq!(pub5.publish("out/remote", b"lost q0", 0, false).await, 0);
    assert_eq!(pub5.publish("out/local/d", b"after q0", 1, false).await, 0);
    assert_eq!(local.recv_publish(T).await.payload, b"after q0");

    // A QoS 1/2 message whose copy for n2 cannot be stored is refused: MQTT 5 PUBACK
    // / PUBREC reason 0x80 Unspecified error (v5 §3.4.2.1, §3.5.2.1: a reason code of
    // 0x80 or greater means the message was not accepted).
    assert_eq!(pub5.publish("out/remote", b"q1", 1, false).await, 0x80);
    assert_eq!(pub5.publish("out/remote", b"q2", 2, false).await, 0x80);
    // The connection stays usable.
    assert_eq!(pub5.publish("out/local/e", b"still", 1, false).await, 0);
    assert_eq!(local.recv_publish(T).await.payload, b"still");
    // 3.1.1 has no negative PUBACK: the connection is closed without one, so the
    // client sends the message again when it reconnects [MQTT-4.4.0-1].
    pub3.send(
        &Publish::new("out/remote", b"v311 q1", 1)
            .pid(7)
            .encode(Version::V311),
    )
    .await;
    let seen = pub3.expect_closed(T).await;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::Puback(_))),
        "no PUBACK for a message not stored: {seen:?}"
    );

    // A new connection cannot claim its client id: CONNACK 0x88 Server unavailable
    // (v5 §3.2.2.2) / return code 3 (3.1.1 §3.2.2.3), then the server closes
    // [MQTT-3.2.2-5].
    let (mut late, ack) =
        RawClient::connect(c.node(0).addr(), Connect::new(Version::V5, "late")).await;
    assert_eq!(ack.code, 0x88, "{ack:?}");
    late.expect_closed(T).await;
    let (mut late, ack) =
        RawClient::connect(c.node(0).addr(), Connect::new(Version::V311, "late3")).await;
    assert_eq!(ack.code, 3, "{ack:?}");
    late.expect_closed(T).await;

    // The remote subscriber got none of it; n2 stays up.
    remote.expect_no_publish_default().await;

    // Said once, not per refused message; counted in the metrics.
    assert_eq!(log_count(&c, 0, LOST_LINE), 1, "{}", c.node(0).stderr());
    for i in 0..2 {
        let log = c.node(i).stderr();
        let since = log.find(LOST_LINE).expect("outage logged");
        let warnings: Vec<&str> = log[since..]
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(
            warnings.len() <= 3,
            "{}: the outage floods the log: {warnings:#?}",
            c.id(i)
        );
    }
    assert_eq!(metric(&c, 0, "astramq_redis_reachable").await, 0);
    assert!(metric(&c, 0, "astramq_redis_refused_publishes_total").await >= 2);
    assert!(metric(&c, 0, "astramq_redis_refused_connects_total").await >= 2);
    assert!(metric(&c, 0, "astramq_redis_dropped_qos0_total").await >= 1);
    assert_eq!(log_count(&c, 0, "panicked"), 0);
}

// (b) Redis restarted with its data: healthy again and cross-node delivery resumes,
// no node restarted; what changed during the outage reaches the cluster.
#[tokio::test]
async fn redis_back_with_data_cross_node_delivery_resumes() {
    let mut c = cluster(2).await;
    let mut before = c.client(1, Version::V5, "sub-before").await;
    before.sub("kept/a", 1).await;
    c.sync_feed(1, 0).await;
    let mut publisher = c.client(0, Version::V5, "pub").await;

    c.redis_server().shutdown(true);
    for i in 0..2 {
        wait_health(&c, i, 503, DETECT).await;
    }
    c.redis_server().restart();
    for i in 0..2 {
        let body = wait_health(&c, i, 200, RECOVER).await;
        assert!(body.contains("\"status\":\"ok\""), "{body}");
    }
    assert_eq!(log_count(&c, 0, BACK_LINE), 1, "{}", c.node(0).stderr());
    assert_eq!(log_count(&c, 0, LOST_LINE), 1, "{}", c.node(0).stderr());
    assert_eq!(
        log_count(&c, 0, "incarnation marker missing or changed"),
        0,
        "the data was kept"
    );

    // Cross-node QoS 1 again: PUBACK 0x00 once the copy is stored, and delivered.
    assert_eq!(publisher.publish("kept/a", b"after", 1, false).await, 0);
    let p = before.recv_publish(RECOVER).await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("kept/a", &b"after"[..])
    );

    // New connections are accepted again, and a new subscription propagates.
    let mut fresh = c.client(1, Version::V5, "sub-after").await;
    fresh.sub("kept/b", 1).await;
    c.sync_feed(1, 0).await;
    assert_eq!(publisher.publish("kept/b", b"new route", 1, false).await, 0);
    assert_eq!(fresh.recv_publish(RECOVER).await.payload, b"new route");
    assert_eq!(metric(&c, 0, "astramq_redis_reachable").await, 1);
    assert_eq!(metric(&c, 0, "astramq_redis_outages_total").await, 1);
}

// (b') A subscription and a retained message set during the outage are stored once
// Redis is back.
#[tokio::test]
async fn changes_made_during_the_outage_are_stored_when_redis_returns() {
    let mut c = cluster(2).await;
    // Connected before: a new CONNECT would be refused during the outage.
    let mut sub = c.client(1, Version::V5, "sub").await;
    let mut publisher = c.client(0, Version::V5, "pub").await;
    c.redis_server().shutdown(true);
    for i in 0..2 {
        wait_health(&c, i, 503, DETECT).await;
    }
    sub.sub("during/t", 1).await;
    // Retained locally at once [MQTT-3.3.1-5]; its cluster copy waits for Redis.
    // 0x10 No matching subscribers is a success code (v5 §3.4.2.1).
    assert_eq!(publisher.publish("during/r", b"kept", 1, true).await, 0x10);

    c.redis_server().restart();
    for i in 0..2 {
        wait_health(&c, i, 200, RECOVER).await;
    }
    c.wait_route_visible(1, "during/t").await;
    wait_for(RECOVER, "retained during/r stored in Redis", || {
        c.redis()
            .cmd(&["HEXISTS", &c.key("{retained}"), "during/r"])
            .int()
            == 1
    })
    .await;
    c.sync_feed(1, 0).await;
    assert_eq!(publisher.publish("during/t", b"routed", 1, false).await, 0);
    assert_eq!(sub.recv_publish(RECOVER).await.payload, b"routed");
    // n2 learnt the retained message through the feed [MQTT-3.3.1-6].
    let mut reader = c.client(1, Version::V5, "retained-reader").await;
    reader.sub("during/r", 1).await;
    let p = reader.recv_publish(T).await;
    assert_eq!((p.payload.as_slice(), p.retain), (&b"kept"[..], true));
}

// (c) Redis restarted WITHOUT its data: the nodes detect it and re-publish what they
// hold in memory.
#[tokio::test]
async fn redis_back_without_data_state_is_republished() {
    let mut c = cluster(2).await;
    let mut sub = c.client(1, Version::V5, "sub").await;
    sub.sub("lost/t", 1).await;
    c.sync_feed(1, 0).await;
    let mut publisher = c.client(0, Version::V5, "pub").await;
    // 0x10 No matching subscribers is a success code (v5 §3.4.2.1).
    assert_eq!(publisher.publish("lost/r", b"keep me", 1, true).await, 0x10);
    wait_for(T, "retained lost/r in Redis", || {
        c.redis()
            .cmd(&["HEXISTS", &c.key("{retained}"), "lost/r"])
            .int()
            == 1
    })
    .await;
    wait_for(T, "incarnation marker written", || {
        !incarnation(&c).is_empty()
    })
    .await;
    let first = incarnation(&c);

    c.redis_server().shutdown(false);
    for i in 0..2 {
        wait_health(&c, i, 503, DETECT).await;
    }
    c.redis_server().restart();
    assert!(c.routes().is_empty(), "the restarted Redis is empty");
    for i in 0..2 {
        wait_health(&c, i, 200, RECOVER).await;
        c.wait_log(i, RECOVER, "state re-published", |l| {
            l.contains("re-published this node's routes")
        })
        .await;
    }
    assert_ne!(incarnation(&c), first, "a new incarnation marker");
    assert_eq!(log_count(&c, 0, "incarnation marker missing or changed"), 1);

    // Routes are back in Redis and in every node's table: the subscriber made before
    // the outage gets a message published on n1 after it.
    c.wait_route_visible(1, "lost/t").await;
    c.sync_feed(1, 0).await;
    assert_eq!(
        publisher.publish("lost/t", b"after loss", 1, false).await,
        0
    );
    let p = sub.recv_publish(RECOVER).await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("lost/t", &b"after loss"[..])
    );

    // The retained message is back in Redis: a node started now loads it, and a new
    // subscriber there receives it with the RETAIN flag [MQTT-3.3.1-6, MQTT-3.3.1-9].
    wait_for(RECOVER, "retained lost/r written back", || {
        c.redis()
            .cmd(&["HEXISTS", &c.key("{retained}"), "lost/r"])
            .int()
            == 1
    })
    .await;
    let n3 = c.add_node().await;
    let mut reader = c.client(n3, Version::V311, "late-reader").await;
    reader.sub("lost/r", 1).await;
    let p = reader.recv_publish(T).await;
    assert_eq!((p.payload.as_slice(), p.retain), (&b"keep me"[..], true));
    assert!(metric(&c, 0, "astramq_redis_data_losses_total").await >= 1);
}

// A single node (no Redis) is healthy whenever it serves; /metrics counts clients.
#[tokio::test]
async fn single_node_health_ok_and_metrics() {
    let b = Broker::builder()
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    let (code, body) = b.health().await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"mode\":\"single\""), "{body}");
    let _client = b.client(Version::V5, "counted").await;
    let (code, body) = http_get(b.health_addr(), "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\nastramq_clients_connected 1\n"), "{body}");
    let (code, _) = http_get(b.health_addr(), "/nope").await.unwrap();
    assert_eq!(code, 404);
}

// (d) Redis back without its data: sessions are re-published too. A parked persistent
// session's queued QoS 1 message survives a later kill -9 of its node (Invariant 1),
// and a connected persistent session can still be taken over from another node with
// its session [MQTT-3.1.4-3, MQTT-3.2.2-3].
#[tokio::test]
async fn redis_back_without_data_sessions_are_republished() {
    let mut c = cluster(3).await;
    let expiry = 300;
    // Parked on n1 with a queued message.
    let (mut parked, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(Version::V5, "rp-parked", false, expiry),
    )
    .await;
    parked.sub("rp/parked", 1).await;
    parked.disconnect().await;
    let mut publisher = c.client(0, Version::V5, "rp-pub").await;
    assert_eq!(publisher.publish("rp/parked", b"queued", 1, false).await, 0);
    // Connected on n1.
    let (mut live, _) = RawClient::connect(
        c.node(0).addr(),
        Connect::persistent(Version::V5, "rp-live", false, expiry),
    )
    .await;
    live.sub("rp/live", 1).await;
    wait_for(T, "incarnation marker written", || {
        !incarnation(&c).is_empty()
    })
    .await;

    c.redis_server().shutdown(false);
    wait_health(&c, 0, 503, DETECT).await;
    c.redis_server().restart();
    for i in 0..3 {
        wait_health(&c, i, 200, RECOVER).await;
    }
    c.wait_log(0, RECOVER, "sessions re-published", |l| {
        l.contains("re-published this node's routes") && l.contains("parked_sessions=1")
    })
    .await;
    wait_for(RECOVER, "both sessions back in Redis", || {
        ["rp-parked", "rp-live"].iter().all(|id| {
            c.redis()
                .cmd(&["HGET", &c.key(&format!("{{s:{id}}}")), "owner"])
                .text()
                == "n1"
        })
    })
    .await;

    // The connected session moves to n2 with its subscription; the old connection
    // is told 0x8E.
    let (mut live2, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(Version::V5, "rp-live", false, expiry),
    )
    .await;
    assert!(ca.session_present, "the re-published session is found");
    live.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    c.sync_from(1).await;
    let mut p2 = c.client(2, Version::V5, "rp-pub2").await;
    assert_eq!(p2.publish("rp/live", b"moved", 1, false).await, 0);
    assert_eq!(live2.recv_publish(T).await.payload, b"moved");

    // The parked session survives its node: its queued message was written back.
    c.kill(0);
    let (mut back, ca) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(Version::V5, "rp-parked", false, expiry),
    )
    .await;
    assert!(ca.session_present);
    assert_eq!(back.recv_publish(T).await.payload, b"queued");
}

// (g) Redis back after the nodes' liveness keys lapsed with it (invariants 2 and 7).
// A client whose parked session n2 owns connects on n1 the moment Redis is back,
// before n2 has renewed its liveness key. n2 is alive (gossip hears it): its sessions
// must not be taken over as a failed node's would be — the connection is refused
// (0x88) until n2 can hand the session over, then moves cleanly, and a subscriber that
// stayed connected to n2 keeps its session there. (Whether n1 claims before n2 renews
// is a race this test usually, not always, wins; `tests/partition.rs` p2 holds n2 away
// from Redis with a firewall rule and fails every time without the rule.)
#[tokio::test]
async fn redis_back_a_live_nodes_sessions_are_not_taken_over() {
    let mut c = cluster(2).await;
    let n2 = c.node(1).addr();
    let mut stay =
        RawClient::connect_ok(n2, Connect::persistent(Version::V5, "ro-stay", false, 300)).await;
    stay.sub("ro/stay/#", 1).await;
    let mover =
        RawClient::connect_ok(n2, Connect::persistent(Version::V5, "ro-mover", false, 300)).await;
    mover.disconnect().await;
    c.sync_feed(1, 0).await;
    assert_eq!(c.session_owner("ro-stay").as_deref(), Some("n2"));

    c.redis_server().shutdown(true);
    for i in 0..2 {
        wait_health(&c, i, 503, DETECT).await;
    }
    // The outage outlasts the liveness keys (cluster.liveness_ttl_ms, 2 s): this
    // sleep is the fault's length, not a wait for an outcome.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.redis_server().restart();

    // At once, and again every 20 ms until accepted.
    let deadline = Instant::now() + RECOVER;
    let mut refused = 0;
    let mut moved = loop {
        let mut cl = RawClient::tcp(c.node(0).addr()).await;
        cl.version = Version::V5;
        cl.send(&Connect::persistent(Version::V5, "ro-mover", false, 300).encode())
            .await;
        match cl.read(T).await {
            Ok(Packet::Connack(a)) if a.code == 0 => break cl,
            Ok(Packet::Connack(a)) => {
                assert_eq!(a.code, rc::SERVER_UNAVAILABLE, "refused how: {a:?}");
                refused += 1;
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "ro-mover never accepted on n1 after Redis came back ({refused} refusals)\n{}",
            c.node(0).stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("ro-mover accepted on n1 after {refused} refusals");
    assert_eq!(
        c.session_owner("ro-stay").as_deref(),
        Some("n2"),
        "n2 is alive: its sessions stay with it\n{}",
        c.node(0).stderr()
    );
    assert_eq!(
        log_count(&c, 0, "took over a failed node's sessions"),
        0,
        "n1 took a live node's sessions over:\n{}",
        c.node(0).stderr()
    );
    assert_eq!(c.session_owner("ro-mover").as_deref(), Some("n1"));
    // The subscriber that stayed on n2 is still served there.
    assert_eq!(moved.publish("ro/stay/x", b"after", 1, false).await, 0);
    assert_eq!(stay.recv_publish(RECOVER).await.payload, b"after");
}
