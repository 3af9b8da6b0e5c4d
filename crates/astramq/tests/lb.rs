//! The load balancer (`astramq lb`, issue #5) and PROXY protocol v2 listeners.
//!
//! Every test runs real `astramq broker` processes (single-node, no Redis: the
//! balancer only forwards TCP) with a `--proxy-listen` listener, and a real
//! `astramq lb` in front of them. Which node a client landed on is read from the
//! nodes' logs (`client connected ... client_id=ID`).
//!
//! Gossip mode: until brokers join gossip themselves, the tests run in-process
//! membership members with the broker role whose metadata points at the real
//! brokers; dropping one without leaving is a crash as far as gossip can tell.
//!
//! The TLS test generates a self-signed certificate with `rcgen` and drives
//! `mosquitto_sub`/`mosquitto_pub` through the balancer.
//!
//! The HAProxy test runs Debian's `haproxy` with `deploy/haproxy.cfg`, its
//! addresses replaced by the test's.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// `::cluster` is the crate; `common::cluster` (the test harness) is glob-imported.
use common::*;
use membership::{self, MembershipConfig, MembershipHandle, NodeMeta, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker node with a plain and a PROXY listener.
struct Node {
    broker: Broker,
    proxy: SocketAddr,
}

impl Node {
    fn start() -> Node {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let broker = Broker::builder()
            .args(&["--proxy-listen", &proxy.to_string()])
            .start();
        Node { broker, proxy }
    }

    /// How many times client `id` connected here.
    fn connects(&self, id: &str) -> usize {
        let needle = format!("client_id={id} ");
        self.broker
            .stderr()
            .lines()
            .filter(|l| l.contains("client connected") && l.contains(&needle))
            .count()
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|_| Node::start()).collect()
}

fn proxy_addrs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.proxy.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `astramq lb --backends` over the nodes' PROXY listeners (`--proxy-protocol
/// true`, which a static list must state) and `extra` flags.
fn static_lb(nodes: &[Node], extra: &[&str]) -> Lb {
    let backends = proxy_addrs(nodes);
    Lb::start(
        &[
            &["--backends", &backends, "--proxy-protocol", "true"],
            extra,
        ]
        .concat(),
    )
}

/// The node client `id` has connected to `times` times in all (waiting for the
/// logs); panics if the connections are spread over several nodes.
async fn landed_on(nodes: &[Node], id: &str, times: usize) -> usize {
    wait_for(
        T,
        &format!("{id} connected {times}× in the nodes' logs"),
        || nodes.iter().map(|n| n.connects(id)).sum::<usize>() >= times,
    )
    .await;
    let hits: Vec<usize> = nodes.iter().map(|n| n.connects(id)).collect();
    let on: Vec<usize> = (0..nodes.len()).filter(|&i| hits[i] > 0).collect();
    assert_eq!(on.len(), 1, "{id} connected to several nodes: {hits:?}");
    on[0]
}

/// A clean MQTT 3.1.1 connection through `addr`, CONNACK 0 checked.
async fn client(addr: SocketAddr, id: &str) -> RawClient {
    RawClient::connect_ok(addr, Connect::new(Version::V311, id)).await
}

// ---------------------------------------------------------------------------
// Static backends
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Gossip mode
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------

/// `deploy/haproxy.cfg` with the test's addresses: the frontend on `listen`, the
/// servers on the nodes' PROXY listeners.
fn haproxy_cfg(listen: SocketAddr, nodes: &[Node]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
    let cfg = std::fs::read_to_string(&path).expect("read deploy/haproxy.cfg");
    let mut servers = nodes.iter();
    cfg.lines()
        .map(|line| {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let words: Vec<&str> = t.split_whitespace().collect();
            match words.first() {
                Some(&"bind") => format!("{indent}bind {listen}"),
                Some(&"server") => {
                    let node = servers.next().expect("more servers than nodes in the cfg");
                    let rest = words[3..].join(" ");
                    format!("{indent}server {} {} {rest}", words[1], node.proxy)
                }
                Some(&"stats") if words.get(1) == Some(&"socket") => String::new(),
                _ => line.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect()
}

/// Issue #5 §5: `deploy/haproxy.cfg` against a 3-node cluster with Debian's
/// haproxy: client-id stickiness (`mqtt_field_value`), `send-proxy-v2` (the node
/// sees the client's address), MQTT health checks, and new connections keep
/// succeeding when a node is killed.
#[tokio::test]
async fn haproxy_cfg_sticks_client_ids_sends_proxy_v2_and_checks_health() {
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("haproxy is required by this test: install it with `apt-get install haproxy`");
    let mut nodes = nodes(3);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_cfg(listen, &nodes)).unwrap();
    let check = Command::new(&bin)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c rejects the config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = capture(child.stdout.take().unwrap());
    let err = capture(child.stderr.take().unwrap());
    struct Kill(Child, Arc<Mutex<String>>, Arc<Mutex<String>>);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- haproxy ---\n{}{}",
                    self.1.lock().unwrap(),
                    self.2.lock().unwrap()
                );
            }
        }
    }
    let _haproxy = Kill(child, out.clone(), err);
    // haproxy logs a session when it ends (`option tcplog`), with the client id.
    let closed = |id: &str, times: usize| {
        let out = out.clone();
        let suffix = format!(" client_id={id}");
        let what = format!("haproxy to log {id}'s session {times}×");
        async move {
            wait_for(T, &what, || {
                out.lock()
                    .unwrap()
                    .lines()
                    .filter(|l| l.ends_with(&suffix))
                    .count()
                    >= times
            })
            .await
        }
    };

    // Health checks reach every node (an MQTT CONNECT behind a PROXY header).
    wait_for(
        Duration::from_secs(10),
        "haproxy's MQTT health checks on every node",
        || {
            nodes
                .iter()
                .all(|n| n.broker.stderr().contains("client connected"))
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy does not listen on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stickiness: a persistent session is found again on reconnect.
    let ids: Vec<String> = (0..9).map(|i| format!("ha-{i}")).collect();
    let mut home = Vec::new();
    for id in &ids {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(&Connect::persistent(Version::V311, id, false, 0).encode())
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut ack))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "{id}");
        s.write_all(&[0xe0, 0x00]).await.unwrap();
        drop(s);
        let node = landed_on(&nodes, id, 1).await;
        // leastconn counts open sessions: each one is over before the next
        // starts, so that the first placements are spread.
        closed(id, 1).await;
        let needle = format!("peer={me} ");
        wait_for(
            T,
            "send-proxy-v2: the node logs the client's address",
            || nodes[node].broker.stderr().contains(&needle),
        )
        .await;
        home.push(node);
    }
    let used: std::collections::HashSet<_> = home.iter().collect();
    assert!(used.len() >= 2, "9 ids all on one node: {home:?}");
    for (id, &node) in ids.iter().zip(&home) {
        let (c, ack) =
            RawClient::connect(listen, Connect::persistent(Version::V311, id, false, 0)).await;
        assert_eq!(landed_on(&nodes, id, 2).await, node, "{id} moved");
        assert!(ack.session_present, "{id} lost its session through haproxy");
        drop(c);
        closed(id, 2).await;
    }

    // Kill a node: new connections keep succeeding (redispatch, then the health
    // check marks it down).
    drop(nodes.remove(0));
    for i in 0..12 {
        let id = format!("ha-after-{i}");
        let (_c, ack) = tokio::time::timeout(
            Duration::from_secs(10),
            RawClient::connect(listen, Connect::new(Version::V311, &id)),
        )
        .await
        .unwrap_or_else(|_| panic!("{id}: no CONNACK through haproxy"));
        assert_eq!(ack.code, 0);
    }
}

// ---------------------------------------------------------------------------
// TLS termination (--tls-cert/--tls-key)
// ---------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as
/// `cert.pem` and `key.pem` in a temporary directory.
fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (dir, cert, key)
}

/// `mosquitto_sub` and `mosquitto_pub` over TLS through the balancer: a message
/// published through it reaches a subscriber connected through it.
async fn mosquitto_roundtrip_over_tls(lb: &Lb, cafile: &std::path::Path, tag: &str) {
    let port = lb.addr.port().to_string();
    let cafile = cafile.to_str().unwrap();
    let topic = format!("tls/{tag}");
    let payload = format!("hello over tls ({tag})");
    let tls_args = |id: &str| {
        vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.clone(),
            "--cafile".into(),
            cafile.into(),
            "-V".into(),
            "mqttv311".into(),
            "-i".into(),
            id.into(),
            "-t".into(),
            topic.clone(),
        ]
    };
    let mut sub = Command::new("mosquitto_sub")
        .args(tls_args(&format!("tls-sub-{tag}")))
        .args(["-C", "1", "-W", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");
    let sub_err = capture(sub.stderr.take().unwrap());
    let sub_out = capture(sub.stdout.take().unwrap());
    // Publish until the subscriber has it (its SUBSCRIBE may not be in yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub got nothing through the TLS balancer\n--- sub stderr ---\n{}\n--- lb stderr ---\n{}",
            sub_err.lock().unwrap(),
            lb.stderr()
        );
        let publish = Command::new("mosquitto_pub")
            .args(tls_args(&format!("tls-pub-{tag}")))
            .args(["-m", &payload])
            .output()
            .expect("run mosquitto_pub");
        assert!(
            publish.status.success(),
            "mosquitto_pub through the TLS balancer failed: {}",
            String::from_utf8_lossy(&publish.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The capture threads may still be draining the pipes.
    wait_for(T, "the subscriber's output", || {
        sub_out.lock().unwrap().contains(&payload)
    })
    .await;
    assert!(
        status.success(),
        "mosquitto_sub: {status}\n{}",
        sub_err.lock().unwrap()
    );
}

/// `--tls-cert`/`--tls-key`: the balancer terminates TLS and forwards plain MQTT
/// (after the PROXY v2 header) to the broker, with the round-robin and the
/// client-id strategy (which reads the CONNECT after the handshake); a plain-TCP
/// client gets no CONNACK; a missing certificate stops startup with its name.
#[tokio::test]
async fn tls_termination_forwards_decrypted_mqtt_and_refuses_plain_tcp() {
    let (_dir, cert, key) = self_signed();
    let nodes = nodes(1);
    let backends = proxy_addrs(&nodes);
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for strategy in ["round-robin", "client-id"] {
        let lb = Lb::start(&[
            "--backends",
            &backends,
            "--proxy-protocol",
            "true",
            "--strategy",
            strategy,
            "--tls-cert",
            c,
            "--tls-key",
            k,
        ]);
        mosquitto_roundtrip_over_tls(&lb, &cert, strategy).await;
        assert!(nodes[0].connects(&format!("tls-sub-{strategy}")) >= 1);

        // Plain MQTT to the TLS listener: no CONNACK, the connection is closed.
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(&Connect::new(Version::V311, "plain-to-tls").encode())
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .expect("the balancer must close a plain-TCP connection, not wait");
        assert_ne!(got.first(), Some(&0x20), "a CONNACK came back: {got:?}");
        wait_for(T, "the failed handshake in the lb log", || {
            lb.stderr().contains("TLS handshake failed")
        })
        .await;
        // The listener still serves TLS clients afterwards.
        mosquitto_roundtrip_over_tls(&lb, &cert, &format!("{strategy}-after")).await;
    }
    assert_eq!(nodes[0].connects("plain-to-tls"), 0);

    // Startup errors name the flag and the file.
    let out = Command::new(astramq_bin())
        .args(["lb", "--listen", "127.0.0.1:0", "--backends", &backends])
        .args(["--proxy-protocol", "true"])
        .args(["--tls-cert", "/nonexistent/cert.pem", "--tls-key", k])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-cert /nonexistent/cert.pem"), "{err}");
    let out = Command::new(astramq_bin())
        .args(["lb", "--listen", "127.0.0.1:0", "--backends", &backends])
        .args(["--proxy-protocol", "true"])
        .args(["--tls-cert", c])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-key"), "{err}");
}
