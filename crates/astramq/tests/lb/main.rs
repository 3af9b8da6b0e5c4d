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
//!
//! The tests, by way of finding the brokers: `static_backends.rs` (a fixed list:
//! round robin, least connections, client-id affinity, PROXY v2 toward the nodes),
//! `gossip.rs` (the brokers gossip announces), `haproxy.rs` (Debian's haproxy
//! with `deploy/haproxy.cfg` instead of our balancer) and `tls_termination.rs`.
//! This file holds the nodes and helpers they share.

#[path = "../common/mod.rs"]
mod common;

mod gossip;
mod haproxy;
mod static_backends;
mod tls_termination;

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
