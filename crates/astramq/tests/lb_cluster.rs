//! `astramq lb --join` in front of real cluster nodes (issue #11, point 5): which
//! listener of each node gets the connections, and whether they start with a PROXY
//! v2 header.
//!
//! Nodes advertise their plain (`--listen`) and PROXY (`--proxy-listen`) listeners
//! through gossip. The balancer sends PROXY v2 to a node's PROXY listener when it
//! has one, and plain TCP to its MQTT listener when it has none (logging once per
//! node that the node will see the balancer's address).
//!
//! Every test runs `redis-server`, real `astramq broker` nodes and a real
//! `astramq lb`; which node a client landed on, and the address it saw, are read
//! from the nodes' logs (`client connected peer=ADDR client_id=ID`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{RedisServer, TestCluster};
use common::*;

/// How long nodes and the balancer may take to find each other through gossip.
const GOSSIP: Duration = Duration::from_secs(15);

/// The lines of node `broker`'s log for client `id`'s connections.
fn connects(broker: &Broker, id: &str) -> Vec<String> {
    let needle = format!("client_id={id} ");
    broker
        .stderr()
        .lines()
        .filter(|l| l.contains("client connected") && l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Which of `nodes` client `id` connected to (waiting for the log line), and the
/// `peer` address that node logged for it.
async fn landed_on(nodes: &[&Broker], id: &str) -> (usize, SocketAddr) {
    wait_for(T, &format!("{id} connected in a node's log"), || {
        nodes.iter().any(|n| !connects(n, id).is_empty())
    })
    .await;
    let on: Vec<usize> = (0..nodes.len())
        .filter(|&i| !connects(nodes[i], id).is_empty())
        .collect();
    assert_eq!(on.len(), 1, "{id} connected to several nodes: {on:?}");
    let line = connects(nodes[on[0]], id).remove(0);
    let peer = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer address in {line:?}"));
    (on[0], peer)
}

/// Waits until the balancer routes to every node id in `ids`.
async fn wait_lb_routes_to(lb: &Lb, ids: &[&str]) {
    for id in ids {
        wait_for(GOSSIP, &format!("the balancer to route to {id}"), || {
            lb.ups(id) >= 1
        })
        .await;
    }
}

/// The balancer's `broker up` lines for node `id`.
fn up_lines(lb: &Lb, id: &str) -> Vec<String> {
    let token = format!("node={id}");
    lb.stderr()
        .lines()
        .filter(|l| l.contains("broker up") && l.split_whitespace().any(|w| w == token))
        .map(str::to_string)
        .collect()
}

/// Clients connect through `lb` (CONNACK 0 each) until every one of `nodes` has
/// received one; returns each client with the node it landed on and the peer
/// address that node saw.
async fn spread(lb: &Lb, nodes: &[&Broker], tag: &str) -> Vec<(RawClient, usize, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held: Vec<(RawClient, usize, SocketAddr)> = Vec::new();
    while !(0..nodes.len()).all(|n| held.iter().any(|h| h.1 == n)) {
        assert!(
            Instant::now() < deadline,
            "the balancer never reached every node"
        );
        let id = format!("{tag}-{}", held.len());
        let c = RawClient::connect_ok(lb.addr(), Connect::new(Version::V311, &id)).await;
        let (node, peer) = landed_on(nodes, &id).await;
        held.push((c, node, peer));
    }
    held
}

/// `publisher` publishes QoS 1 to `topic` until `subscriber` (subscribed to it,
/// possibly on another node) receives one: route changes reach other nodes
/// asynchronously, so the first publishes may find no route yet.
async fn flows(publisher: &mut RawClient, subscriber: &mut RawClient, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publisher.publish(topic, b"hi", 1, false).await;
        if let Ok(Packet::Publish(p)) = subscriber.read(Duration::from_millis(100)).await {
            assert_eq!(p.topic, topic);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no message on {topic} within 10 s"
        );
    }
}

// ---------------------------------------------------------------------------
// The README's example
// ---------------------------------------------------------------------------

/// The commands of the README's "Three nodes on one machine with one Redis"
/// example: each command's words, `\` continuations joined, trailing `&` and
/// comments dropped.
fn readme_example() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let after = readme
        .split_once("Three nodes on one machine with one Redis:")
        .expect("the README's three-node example")
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a ```sh block after the heading")
        .0;
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_once(" #").map_or(l, |(cmd, _)| cmd))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| *w != "&")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

/// `word` with every `127.0.0.1:PORT` port replaced through `ports` (a port not
/// seen before gets a free one).
fn substitute(word: &str, ports: &mut HashMap<u16, u16>) -> String {
    let Some((head, port)) = word.rsplit_once("127.0.0.1:") else {
        return word.to_string();
    };
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| panic!("unexpected address {word:?} in the README example"));
    let new = *ports.entry(port).or_insert_with(free_port);
    format!("{head}127.0.0.1:{new}")
}

/// Issue #11 §5: the README's three-node cluster, then `astramq lb --join` as the
/// README writes it (same commands and flags; only the ports are free ones the
/// test chose). The nodes have no PROXY listener: every client must still connect
/// through the balancer, land on every node, and messages must cross nodes. Before
/// the fix the balancer sent PROXY v2 to the nodes' plain listeners, which closed
/// every connection.
#[tokio::test]
async fn readme_cluster_example_then_lb_join_as_documented() {
    let commands = readme_example();
    let redis = RedisServer::start();
    let mut ports = HashMap::new();
    let mut nodes = Vec::new();
    let mut lb = None;
    for words in &commands {
        match words[0].as_str() {
            "redis-server" => {
                // The harness's server is this command on a free port.
                assert_eq!(words[1..3], ["--port", "6379"], "{words:?}");
                ports.insert(6379, redis.port());
            }
            "astramq" => {
                let args: Vec<String> = words[2..]
                    .iter()
                    .map(|w| substitute(w, &mut ports))
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match words[1].as_str() {
                    "broker" => nodes.push(Broker::builder().no_listen_arg().args(&args).start()),
                    "lb" => lb = Some(Lb::start_exact(&args)),
                    other => panic!("unexpected `astramq {other}` in the README example"),
                }
            }
            "mosquitto_sub" | "mosquitto_pub" => {} // played by the clients below
            other => panic!("unexpected command {other:?} in the README example"),
        }
    }
    assert_eq!(nodes.len(), 3, "the README example starts three nodes");
    let lb = lb.expect("the README example starts `astramq lb`");
    wait_lb_routes_to(&lb, &["n1", "n2", "n3"]).await;

    let nodes: Vec<&Broker> = nodes.iter().collect();
    let mut held = Vec::new();
    for i in 0..30 {
        let id = format!("readme-{i}");
        let c = RawClient::connect_ok(lb.addr(), Connect::new(Version::V311, &id)).await;
        let (node, _) = landed_on(&nodes, &id).await;
        held.push((c, node));
    }
    let mut per_node = [0usize; 3];
    for (_, n) in &held {
        per_node[*n] += 1;
    }
    assert!(
        per_node.iter().all(|&n| n > 0),
        "not every node got clients: {per_node:?}"
    );

    // Messages flow between clients the balancer put on different nodes.
    let sub = held.iter().position(|h| h.1 == 2).unwrap();
    let (mut subscriber, _) = held.swap_remove(sub);
    subscriber.sub("demo/#", 1).await;
    for from in [0, 1] {
        let p = held.iter().position(|h| h.1 == from).unwrap();
        flows(
            &mut held[p].0,
            &mut subscriber,
            &format!("demo/from-{from}"),
        )
        .await;
    }
    // Told once per node why the nodes see the balancer's address.
    for id in ["n1", "n2", "n3"] {
        let ups = up_lines(&lb, id);
        assert_eq!(ups.len(), 1, "{ups:?}");
        assert!(ups[0].contains("proxy_v2=false") && ups[0].contains("--proxy-listen"));
    }
}

// ---------------------------------------------------------------------------
// PROXY listeners advertised or not
// ---------------------------------------------------------------------------

/// Issue #11 §5: nodes started with `--proxy-listen` still get the PROXY v2 header
/// from `astramq lb --join`, on that listener: each logs the client's own address.
#[tokio::test]
async fn nodes_with_proxy_listen_get_the_header_and_see_the_client_address() {
    let cluster = TestCluster::builder(2)
        .args(&["--proxy-listen", "127.0.0.1:0"])
        .start()
        .await;
    let seed = cluster.node(0).gossip_addr().to_string();
    let lb = Lb::start(&["--join", &seed, "--gossip-listen", "127.0.0.1:0"]);
    wait_lb_routes_to(&lb, &["n1", "n2"]).await;
    for i in 0..2 {
        let up = up_lines(&lb, cluster.id(i)).remove(0);
        assert!(up.contains("proxy_v2=true"), "{up}");
        let plain = format!("addr={} ", cluster.node(i).addr());
        assert!(!up.contains(&plain), "routed to the plain listener: {up}");
    }
    let nodes = [cluster.node(0), cluster.node(1)];
    for (client, node, peer) in spread(&lb, &nodes, "proxied").await {
        assert_eq!(peer, client.local_addr(), "node {node} saw another address");
    }
    assert!(!lb.stderr().contains("without PROXY v2"));
}

/// Issue #11 §5: a mixed cluster. n1 has a PROXY listener and gets the header
/// (sees the client's address); n2 has none and gets plain TCP on its MQTT listener
/// (sees the balancer's address), which the balancer logs once. Clients on both
/// nodes exchange messages.
#[tokio::test]
async fn mixed_nodes_get_proxy_v2_where_advertised_and_plain_tcp_elsewhere() {
    let redis = RedisServer::start();
    let url = redis.url();
    let cluster_args = |id: &'static str| {
        let mut args = vec!["--node-id", id, "--redis", &url];
        args.extend(["--gossip-listen", "127.0.0.1:0"]);
        args
    };
    let n1 = Broker::builder()
        .args(&cluster_args("n1"))
        .args(&["--proxy-listen", "127.0.0.1:0"])
        .start();
    let seed = n1.gossip_addr().to_string();
    let n2 = Broker::builder()
        .args(&cluster_args("n2"))
        .args(&["--join", &seed])
        .start();
    let lb = Lb::start(&["--join", &seed, "--gossip-listen", "127.0.0.1:0"]);
    wait_lb_routes_to(&lb, &["n1", "n2"]).await;
    let n1_up = up_lines(&lb, "n1").remove(0);
    assert!(n1_up.contains("proxy_v2=true"), "{n1_up}");
    let n2_up = up_lines(&lb, "n2").remove(0);
    assert!(n2_up.contains("proxy_v2=false"), "{n2_up}");
    assert!(n2_up.contains(&format!("addr={} ", n2.addr())), "{n2_up}");

    let nodes = [&n1, &n2];
    let mut held = spread(&lb, &nodes, "mixed").await;
    for (client, node, peer) in &held {
        let me = client.local_addr();
        match node {
            0 => assert_eq!(*peer, me, "n1 should see the client's address"),
            _ => assert_ne!(*peer, me, "n2 has no PROXY listener: it sees the balancer"),
        }
    }
    let on_n2 = held.iter().position(|h| h.1 == 1).unwrap();
    let (mut subscriber, _, _) = held.swap_remove(on_n2);
    subscriber.sub("mixed/#", 1).await;
    let on_n1 = held.iter().position(|h| h.1 == 0).unwrap();
    flows(&mut held[on_n1].0, &mut subscriber, "mixed/hello").await;

    // Once per node, not at every membership update.
    let warned = lb
        .stderr()
        .lines()
        .filter(|l| l.contains("without PROXY v2"))
        .count();
    assert_eq!(warned, 1, "{}", lb.stderr());
    drop((n1, n2));
}

/// Issue #11 §5, static mode: a `--backends` list says nothing about which
/// listener an address is, so `astramq lb` refuses to guess: without
/// `--proxy-protocol` it exits at once, naming both choices.
#[tokio::test]
async fn static_backends_without_proxy_protocol_refuse_to_start_naming_the_flag() {
    let out = run_astramq(
        &["lb", "--listen", "127.0.0.1:0", "--backends", "127.0.0.1:1"],
        &[],
        T,
    )
    .await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "started listening: {}", out.stdout);
    for choice in ["--proxy-protocol true", "--proxy-protocol false"] {
        assert!(out.stderr.contains(choice), "{}", out.stderr);
    }
}
