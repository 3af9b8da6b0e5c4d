//! Gossip mode: the balancer routes to the brokers gossip announces; members that
//! crash, leave, join or drain.

use super::*;

/// An in-test gossip member advertising `node`'s plain and PROXY listeners as a
/// broker (the balancer uses the PROXY one).
async fn member(id: &str, node: &Node, seed: Option<SocketAddr>) -> MembershipHandle {
    membership::spawn(MembershipConfig {
        join: seed.into_iter().collect(),
        meta: NodeMeta {
            role: Role::Broker,
            mqtt: vec![node.broker.addr()],
            admin: None,
            connections: 0,
            proxy: vec![node.proxy],
            listeners: Vec::new(),
        },
        ..MembershipConfig::for_test(id)
    })
    .await
    .expect("spawn gossip member")
}

/// Connects round-robin clients until every node in `want` has received one and
/// returns the nodes each client landed on.
async fn connect_until_all_seen(
    lb: &Lb,
    nodes: &[Node],
    want: &[usize],
    tag: &str,
) -> Vec<RawClient> {
    for &n in want {
        let up = format!("addr={} ", nodes[n].proxy);
        wait_for(
            Duration::from_secs(10),
            &format!("the balancer to learn node {n}"),
            || {
                lb.stderr()
                    .lines()
                    .any(|l| l.contains("broker up") && l.contains(&up))
            },
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![false; nodes.len()];
    let mut held = Vec::new();
    let mut i = 0;
    while !want.iter().all(|&n| seen[n]) {
        assert!(
            Instant::now() < deadline,
            "the balancer never routed to all of {want:?}"
        );
        let id = format!("{tag}-{i}");
        held.push(client(lb.addr, &id).await);
        seen[landed_on(nodes, &id, 1).await] = true;
        i += 1;
    }
    held
}

/// Issue #5 §1/§6: gossip mode. A member that crashes (no leave) stops receiving
/// connections within 5 s, and the connections the balancer holds to it are
/// closed so their clients reconnect elsewhere — here the broker process is still
/// alive, so only the balancer can have closed them.
#[tokio::test]
async fn gossip_crashed_member_stops_receiving_within_5s_and_its_connections_close() {
    let nodes = nodes(3);
    let a = member("node-a", &nodes[0], None).await;
    let b = member("node-b", &nodes[1], Some(a.local_addr())).await;
    let c = member("node-c", &nodes[2], Some(a.local_addr())).await;
    let lb = Lb::start(&[
        "--join",
        &a.local_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
    ]);
    let held = connect_until_all_seen(&lb, &nodes, &[0, 1, 2], "warm").await;
    let mut on_b = Vec::new();
    for (i, cl) in held.into_iter().enumerate() {
        if landed_on(&nodes, &format!("warm-{i}"), 1).await == 1 {
            on_b.push(cl);
        }
    }
    assert!(!on_b.is_empty());

    // Meanwhile, new connections keep coming and none may fail (during the
    // detection window they may still go to B, which is alive).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lb_addr = lb.addr;
    let steady = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client(lb_addr, &format!("steady-{n}")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        }
    });

    drop(b); // crash: no leave
    let crashed = Instant::now();
    for cl in &mut on_b {
        cl.expect_closed(Duration::from_secs(5)).await;
    }
    let detected = crashed.elapsed();
    assert!(
        detected < Duration::from_secs(5),
        "closed after {detected:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let steady = steady.await.expect("a connection failed during the crash");
    assert!(steady > 0);

    // The balancer has dropped B (that is what closed its connections): nothing
    // new goes there.
    for i in 0..12 {
        let id = format!("after-{i}");
        let _c = client(lb.addr, &id).await;
        assert_ne!(
            landed_on(&nodes, &id, 1).await,
            1,
            "{id} sent to the crashed member"
        );
    }
    drop((a, c));
}

/// Issue #5 §1: a member that leaves stops receiving connections; a member that
/// joins starts receiving them.
#[tokio::test]
async fn gossip_member_that_leaves_stops_and_one_that_joins_starts_receiving() {
    let nodes = nodes(3);
    let a = member("node-a", &nodes[0], None).await;
    let b = member("node-b", &nodes[1], Some(a.local_addr())).await;
    let lb = Lb::start(&[
        "--join",
        &a.local_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
    ]);
    let _warm = connect_until_all_seen(&lb, &nodes, &[0, 1], "warm").await;

    let c = member("node-c", &nodes[2], Some(a.local_addr())).await;
    let _joined = connect_until_all_seen(&lb, &nodes, &[2], "joined").await;

    b.leave().await;
    wait_for(T, "the balancer to drop node-b", || {
        lb.stderr().contains("broker gone") && lb.stderr().contains("node=node-b")
    })
    .await;
    for i in 0..9 {
        let id = format!("left-{i}");
        let _c = client(lb.addr, &id).await;
        assert_ne!(
            landed_on(&nodes, &id, 1).await,
            1,
            "{id} sent to a member that left"
        );
    }
    drop((a, c));
}

/// Issue #5 §4 (the balancer's part of drain): a member still alive that stops
/// advertising listeners gets no new connections, and keeps the ones it has.
#[tokio::test]
async fn draining_member_gets_no_new_connections_and_keeps_its_clients() {
    let nodes = nodes(2);
    let a = member("node-a", &nodes[0], None).await;
    let b = member("node-b", &nodes[1], Some(a.local_addr())).await;
    let lb = Lb::start(&[
        "--join",
        &a.local_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
    ]);
    let held = connect_until_all_seen(&lb, &nodes, &[0, 1], "warm").await;
    let mut on_b = None;
    for (i, cl) in held.into_iter().enumerate() {
        if landed_on(&nodes, &format!("warm-{i}"), 1).await == 1 {
            on_b = Some(cl);
        }
    }
    let mut on_b = on_b.unwrap();

    b.set_meta(NodeMeta {
        mqtt: Vec::new(),
        proxy: Vec::new(),
        listeners: Vec::new(),
        ..b.meta()
    });
    wait_for(
        Duration::from_secs(5),
        "the balancer to see node-b draining",
        || lb.stderr().contains("accepting=false"),
    )
    .await;
    for i in 0..6 {
        let id = format!("drain-{i}");
        let _c = client(lb.addr, &id).await;
        assert_eq!(
            landed_on(&nodes, &id, 1).await,
            0,
            "{id} sent to a draining member"
        );
    }
    // The drained node's existing client is untouched.
    on_b.send(&encode_pingreq()).await;
    assert!(matches!(on_b.next(T).await, Packet::Pingresp));
    drop((a, b));
}
