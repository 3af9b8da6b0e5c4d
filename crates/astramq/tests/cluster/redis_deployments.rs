//! Redis deployments: a node refuses to start without Redis; the cluster on a
//! three-master Redis Cluster.

use super::*;

// Invariant 6 at start-up: a node whose Redis is unreachable refuses to start —
// exit status non-zero, no listener announced, and one error line naming the URL —
// for a single server and for a Redis Cluster seed list.
#[tokio::test]
async fn unreachable_redis_refuses_to_start() {
    let (p1, p2) = (free_port(), free_port());
    for url in [
        format!("redis://127.0.0.1:{p1}"),
        format!("redis+cluster://127.0.0.1:{p1},127.0.0.1:{p2}"),
    ] {
        let started = Instant::now();
        let out = run_astramq(
            &[
                "broker",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                "n1",
                "--redis",
                &url,
                "--gossip-listen",
                "127.0.0.1:0",
            ],
            &[("ASTRAMQ_CLUSTER_REDIS_CONNECT_TIMEOUT_SECS", "1")],
            Duration::from_secs(20),
        )
        .await;
        assert!(!out.status.success(), "{url}: started anyway: {out:?}");
        assert!(
            !out.stdout.contains("listening on"),
            "{url}: announced a listener: {out:?}"
        );
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("astramq:"))
            .collect();
        assert_eq!(errors.len(), 1, "{url}: one error line: {out:?}");
        assert!(
            errors[0].contains(&url),
            "{url}: error names the URL: {out:?}"
        );
        eprintln!("{url}: refused in {:?}: {}", started.elapsed(), errors[0]);
    }
}

// The nodes run on a real three-master Redis Cluster (`redis+cluster://`): every
// key group lives in one slot, so cross-node QoS 1 delivery, retained messages and
// takeover (invariants 1, 4, 2) work as on one server.
#[tokio::test]
async fn redis_cluster_3_masters_cross_node_delivery() {
    let c = TestCluster::builder(3).redis_cluster().start().await;
    let mut subs = Vec::new();
    for i in [1, 2] {
        let mut s = c.client(i, Version::V5, &format!("sub-{i}")).await;
        s.sub("rc/#", 1).await;
        c.sync_feed(i, 0).await;
        subs.push(s);
    }
    let mut p = c.client(0, Version::V5, "pub").await;
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for m in &sent {
        assert_eq!(p.publish("rc/t", m.as_bytes(), 1, false).await, 0);
    }
    for s in &mut subs {
        assert_eq!(payloads(&s.recv_publishes(sent.len(), T).await), sent);
        s.expect_no_publish_default().await;
    }

    p.publish("rc/retained", b"kept", 1, true).await;
    c.sync_feed(0, 2).await;
    let mut late = c.client(2, Version::V311, "late").await;
    late.sub("rc/retained", 1).await;
    let got = late.recv_publish(T).await;
    assert!(got.retain && got.payload == b"kept");

    let mut old = c.client(0, Version::V5, "rc-dup").await;
    let mut new = c.client(2, Version::V5, "rc-dup").await;
    old.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    new.ping().await;
    let Backend::Cluster(rc) = c.redis() else {
        unreachable!()
    };
    let keys: i64 = rc.servers.iter().map(|s| s.cmd(&["DBSIZE"]).int()).sum();
    assert!(keys > 0, "the nodes wrote to the Redis Cluster");
}
