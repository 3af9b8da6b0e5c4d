//! A static list of backends (`--backends`): how each strategy spreads connections,
//! what happens when a node is killed, and PROXY protocol v2 toward the brokers.

use super::*;

/// Issue #5 §6: "round robin spreads 30 connections over 3 nodes evenly (±1)".
#[tokio::test]
async fn round_robin_spreads_30_connections_over_3_nodes_evenly() {
    let nodes = nodes(3);
    let lb = static_lb(&nodes, &[]);
    let mut held = Vec::new();
    for i in 0..30 {
        held.push(client(lb.addr, &format!("rr-{i}")).await);
    }
    let mut counts = [0usize; 3];
    for i in 0..30 {
        counts[landed_on(&nodes, &format!("rr-{i}"), 1).await] += 1;
    }
    for c in counts {
        assert!((9..=11).contains(&c), "uneven: {counts:?}");
    }
}

/// Issue #5 §1: least-connections sends new clients to the node with the fewest.
#[tokio::test]
async fn least_connections_fills_the_emptiest_node() {
    let nodes = nodes(3);
    let lb = static_lb(&nodes, &["--strategy", "least-connections"]);
    let mut held = Vec::new();
    for i in 0..6 {
        let id = format!("lc-{i}");
        let c = client(lb.addr, &id).await;
        held.push((landed_on(&nodes, &id, 1).await, c));
    }
    let per_node = |held: &[(usize, RawClient)], n: usize| held.iter().filter(|h| h.0 == n).count();
    assert!(
        (0..3).all(|n| per_node(&held, n) == 2),
        "6 connections, 2 per node"
    );
    // Close both connections of node 0: the next two go there.
    held.retain(|h| h.0 != 0);
    let closed = format!("backend={} ", nodes[0].proxy);
    wait_for(
        T,
        "the balancer to see node 0's two connections close",
        || {
            lb.stderr()
                .lines()
                .filter(|l| l.contains("connection closed") && l.contains(&closed))
                .count()
                == 2
        },
    )
    .await;
    let mut next = Vec::new();
    for i in 6..8 {
        let id = format!("lc-{i}");
        next.push(client(lb.addr, &id).await);
        assert_eq!(
            landed_on(&nodes, &id, 1).await,
            0,
            "{id} should fill node 0"
        );
    }
}

/// Issue #5 §6: "client-id affinity sends a reconnect to the same node" — checked
/// by the session: only the node that holds it answers Session Present.
#[tokio::test]
async fn client_id_affinity_sends_a_reconnect_to_the_same_node() {
    let nodes = nodes(3);
    let lb = static_lb(&nodes, &["--strategy", "client-id"]);
    let ids: Vec<String> = (0..9).map(|i| format!("sticky-{i}")).collect();
    let mut first_node = Vec::new();
    for id in &ids {
        let (mut c, ack) =
            RawClient::connect(lb.addr, Connect::persistent(Version::V311, id, false, 0)).await;
        assert_eq!((ack.code, ack.session_present), (0, false), "{id}");
        c.send(&encode_disconnect(Version::V311, 0, &Props::new()))
            .await;
        c.expect_closed(T).await;
        first_node.push(landed_on(&nodes, id, 1).await);
    }
    let used: std::collections::HashSet<_> = first_node.iter().collect();
    assert!(
        used.len() >= 2,
        "9 ids all hashed to one node: {first_node:?}"
    );
    for (id, &node) in ids.iter().zip(&first_node) {
        let (_c, ack) =
            RawClient::connect(lb.addr, Connect::persistent(Version::V311, id, false, 0)).await;
        assert_eq!(ack.code, 0);
        assert!(
            ack.session_present,
            "{id} reconnected away from its session"
        );
        assert_eq!(landed_on(&nodes, id, 2).await, node, "{id}");
    }
}

/// Issue #5 §6: "a non-MQTT first packet is rejected in client-id mode"
/// [MQTT-3.1.0-1]: nothing reaches a node.
#[tokio::test]
async fn client_id_mode_rejects_a_non_mqtt_first_packet() {
    let nodes = nodes(1);
    let lb = static_lb(&nodes, &["--strategy", "client-id"]);
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xc0, 0x00][..],                           // PINGREQ before CONNECT
        &[0x10, 0x06, 0, 4, b'H', b'T', b'T', b'P'], // CONNECT with a bad protocol name
    ] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("the balancer must close, not wait")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing may be answered to {junk:?}");
    }
    wait_for(T, "the rejections in the lb log", || {
        lb.stderr().matches("not a valid MQTT CONNECT").count() == 3
    })
    .await;
    // A real client still gets through.
    client(lb.addr, "after-junk").await;
    let log = nodes[0].broker.stderr();
    assert!(
        !log.contains("closing:"),
        "a rejected connection reached the node:\n{log}"
    );
}

/// Issue #5 §6: "a killed node stops receiving connections within 5 s and none of
/// the new connections fail" (static list: the refusal marks it down and the
/// connection is retried on another node).
#[tokio::test]
async fn killed_node_stops_receiving_within_5s_and_no_new_connection_fails() {
    let mut nodes = nodes(3);
    let lb = static_lb(&nodes, &["--backoff-ms", "60000"]);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(client(lb.addr, &format!("before-{i}")).await);
    }
    let victim = nodes.remove(1);
    let victim_addr = victim.proxy;
    drop(victim); // SIGKILL
    let killed = Instant::now();
    for i in 0..30 {
        let started = Instant::now();
        client(lb.addr, &format!("after-{i}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "connection {i} was slow"
        );
    }
    assert!(killed.elapsed() < Duration::from_secs(20));
    for i in 0..30 {
        landed_on(&nodes, &format!("after-{i}"), 1).await;
    }
    assert_eq!(
        lb.stderr().matches("backend unreachable").count(),
        1,
        "one refusal marks the node down for the backoff period"
    );
    assert!(lb.stderr().contains(&victim_addr.to_string()));
}

/// Issue #5 §6: "the broker sees the real client address through PROXY protocol".
#[tokio::test]
async fn broker_sees_the_real_client_address_through_proxy_protocol() {
    let nodes = nodes(1);
    let lb = static_lb(&nodes, &[]);
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(&Connect::new(Version::V311, "where-am-i").encode())
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let needle = format!("peer={me} ");
    wait_for(T, &format!("the node to log {needle}"), || {
        nodes[0]
            .broker
            .stderr()
            .lines()
            .any(|l| l.contains("client connected") && l.contains(&needle))
    })
    .await;
}

/// Issue #5 §2: "broker listeners accept it when configured (and only then)": a
/// PROXY listener refuses a connection without the header, a plain listener
/// refuses one with it.
#[tokio::test]
async fn proxy_header_is_required_on_proxy_listen_and_refused_elsewhere() {
    let node = Node::start();
    // Plain MQTT on the PROXY listener.
    let mut c = RawClient::tcp(node.proxy).await;
    c.send(&Connect::new(Version::V311, "no-header").encode())
        .await;
    c.expect_closed(T).await;
    // A PROXY header on the plain listener: not MQTT, closed.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[
        0x21, 0x11, 0, 12, 10, 9, 8, 7, 127, 0, 0, 1, 0x30, 0x39, 7, 91,
    ]);
    let mut c = RawClient::tcp(node.broker.addr()).await;
    c.send(&header).await;
    c.send(&Connect::new(Version::V311, "forged").encode())
        .await;
    c.expect_closed(T).await;
    assert!(
        !node.broker.stderr().contains("10.9.8.7"),
        "forged address used"
    );
    // With the header, on the PROXY listener: accepted, forged address reported.
    let mut c = RawClient::tcp(node.proxy).await;
    c.send(&header).await;
    c.send(&Connect::new(Version::V311, "proxied").encode())
        .await;
    assert!(matches!(
        c.next(T).await,
        Packet::Connack(Connack { code: 0, .. })
    ));
    wait_for(T, "the node to log the PROXY source address", || {
        node.broker.stderr().contains("peer=10.9.8.7:12345")
    })
    .await;
}
