//! Membership: gossip join through one seed, clean leave, SIGKILL detection and its
//! routes, a node restarting with the same id.

use super::*;

// Gossip: n2 and n3 each join through n1 only, yet learn of each other (checked by
// `TestCluster::start`, repeated here). Invariant 3 for a clean leave: SIGTERM on n3
// exits 0, removes its routes from Redis, the others log that it left, and n1 no
// longer forwards to it.
#[tokio::test]
async fn gossip_join_one_seed_then_leave() {
    let mut c = TestCluster::start(3).await;
    c.wait_formed().await;
    let mut s = c.client(2, Version::V5, "sub").await;
    s.sub("l/#", 1).await;
    c.wait_route_visible(2, "l/#").await;
    c.sync_feed(2, 0).await;

    let status = c.stop(2).await;
    assert!(status.success(), "SIGTERM exits 0: {status}");
    c.wait_route_gone(2, "l/#").await;
    for i in 0..2 {
        c.wait_log(i, DETECTION, "n3 left", |l| {
            l.contains("node left") && l.split_whitespace().any(|w| w == "node=n3")
        })
        .await;
    }
    let before = c.inbox_added(2);
    let mut p = c.client(0, Version::V5, "pub").await;
    p.publish("l/x", b"after-leave", 1, false).await;
    assert_eq!(
        c.inbox_added(2),
        before,
        "n1 still forwards to n3 after it left"
    );
}

// Invariant 3: a node killed with SIGKILL is detected by gossip within a few
// seconds, and every survivor drops its routes (stops forwarding to its inbox).
#[tokio::test]
async fn gossip_kill9_node_routes_dropped() {
    let mut c = TestCluster::start(3).await;
    let mut s = c.client(2, Version::V5, "sub").await;
    s.sub("k/#", 1).await;
    c.sync_from(2).await;
    let mut pubs = [
        c.client(0, Version::V5, "pub-1").await,
        c.client(1, Version::V5, "pub-2").await,
    ];
    for (i, p) in pubs.iter_mut().enumerate() {
        let before = c.inbox_added(2);
        p.publish("k/x", format!("live-{i}").as_bytes(), 1, false)
            .await;
        assert!(c.inbox_added(2) > before, "forwarded to n3 while it lives");
        s.recv_publish(T).await;
    }

    c.kill(2);
    let killed = Instant::now();
    let mut dropped = [false, false];
    while dropped != [true, true] {
        assert!(
            killed.elapsed() < DETECTION,
            "{DETECTION:?} after SIGKILL of n3, still forwarding to it: n1 {}, n2 {}",
            if dropped[0] { "stopped" } else { "forwards" },
            if dropped[1] { "stopped" } else { "forwards" }
        );
        for (i, p) in pubs.iter_mut().enumerate() {
            let before = c.inbox_added(2);
            p.publish("k/x", b"after-kill", 1, false).await;
            dropped[i] = c.inbox_added(2) == before;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "routes of the killed node dropped after {:?}",
        killed.elapsed()
    );
    assert!(c.logged_failure_of(0, 2) && c.logged_failure_of(1, 2));
}

// Invariant 3 ("when a node dies, the survivors clean up after it: its routes"):
// the routes of a node killed with SIGKILL leave Redis too, so a node that joins
// later does not forward to the dead node's inbox.
#[tokio::test]
async fn gossip_kill9_routes_not_loaded_by_a_later_node() {
    let mut c = TestCluster::start(2).await;
    let mut s = c.client(1, Version::V5, "sub").await;
    s.sub("d/#", 1).await;
    c.wait_route_visible(1, "d/#").await;
    c.kill(1);
    c.wait_log(0, DETECTION, "n2 failed", |l| {
        l.contains("node failed") && l.split_whitespace().any(|w| w == "node=n2")
    })
    .await;

    let n3 = c.add_node().await;
    let before = c.inbox_added(1);
    let mut p = c.client(n3, Version::V5, "pub").await;
    p.publish("d/x", b"to-nobody", 1, false).await;
    assert_eq!(
        c.inbox_added(1),
        before,
        "n3, started after n2 was declared dead, forwards to n2's inbox (routes in Redis: {:?})",
        c.routes()
    );
    c.wait_route_gone(1, "d/#").await;
}

// A node restarting with the same id (after SIGKILL) starts clean: routes its
// earlier run left in Redis are removed; its new subscriptions are served from
// every node, also after the others have processed the old run's failure (the
// old generation's Down must not drop the new generation's routes).
#[tokio::test]
async fn node_restart_same_id() {
    let mut c = TestCluster::start(3).await;
    let mut old = c.client(1, Version::V5, "old-sub").await;
    old.sub("old/#", 1).await;
    c.wait_route_visible(1, "old/#").await;

    c.kill(1);
    c.restart(1).await;
    c.wait_route_gone(1, "old/#").await;

    let mut s = c.client(1, Version::V5, "new-sub").await;
    s.sub("new/#", 1).await;
    c.sync_from(1).await;
    for i in [0, 2] {
        c.wait_log(i, DETECTION, "the old n2 declared down", |l| {
            l.contains("node failed") && l.split_whitespace().any(|w| w == "node=n2")
        })
        .await;
    }
    for i in [0, 2] {
        let mut p = c.client(i, Version::V5, &format!("pub-{i}")).await;
        p.publish("new/x", format!("from-{i}").as_bytes(), 1, false)
            .await;
        let got = try_recv_publish(&mut s, T).await.unwrap_or_else(|| {
            panic!(
                "a subscriber on the restarted n2 got nothing published on {} after {} \
                 processed the old n2's failure",
                c.id(i),
                c.id(i)
            )
        });
        assert_eq!(got.payload_str(), format!("from-{i}"));
    }
    assert!(
        !c.routes().iter().any(|(n, f)| n == "n2" && f == "old/#"),
        "stale route came back"
    );
}
