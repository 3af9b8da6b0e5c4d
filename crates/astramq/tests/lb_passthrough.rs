//! TLS and WebSocket through `astramq lb` (issue #15 §4). The balancer is a TCP
//! proxy: with `--backends` it passes WebSocket through unchanged, or terminates TLS
//! in front of the nodes' WebSocket listeners; with `--join` and
//! `--backend-transport tls|ws|wss` it sends clients to the TLS or WebSocket
//! listeners the nodes advertise through gossip, and the nodes terminate TLS (client
//! certificates included) and WebSocket themselves.
//!
//! Gossip members are played in the test (as in `lb/`), advertising real
//! single nodes' listeners; clients are paho-mqtt, MQTT.js and Mosquitto's.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::certs::{Ca, Pki};
use common::wsclients::{mqttjs, paho};
use common::*;
use membership::{
    self, AdvertisedListener, ListenerKind, MembershipConfig, MembershipHandle, NodeMeta,
};
use rcgen::DnType;

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

// --- static backends ------------------------------------------------------------

/// A node with a WebSocket listener behind a PROXY v2 header (`ws_proxy_listen`)
/// and a plain one.
fn ws_node() -> (Broker, SocketAddr, SocketAddr) {
    let broker = Broker::builder()
        .config("ws_listen = [\"127.0.0.1:0\"]\nws_proxy_listen = [\"127.0.0.1:0\"]\n")
        .start();
    let proxied = broker.listener("ws, proxy");
    let plain = broker.listener("ws");
    (broker, plain, proxied)
}

/// `astramq lb` is a TCP balancer, so WebSocket passes through it unchanged: with
/// the nodes' `ws_proxy_listen` addresses as backends (PROXY v2), paho-mqtt clients
/// connect through the balancer, are spread round robin over the nodes, and each
/// node sees the client's address.
#[tokio::test]
async fn ws_through_the_load_balancer_with_proxy_protocol() {
    let (a, _, a_proxy) = ws_node();
    let (b, _, b_proxy) = ws_node();
    let backends = format!("{a_proxy},{b_proxy}");
    let lb = Lb::start(&["--backends", &backends, "--proxy-protocol", "true"]);
    for id in ["via-lb-1", "via-lb-2"] {
        let (ok, out) = paho(&["--port", &port(lb.addr()), "--client-id", id]).await;
        assert!(
            ok && out.contains("received 1"),
            "{id}: {out}\n{}",
            lb.stderr()
        );
    }
    // Round robin: one client on each node, both logged with a client address
    // (from the PROXY header) rather than failing the header.
    let on = |broker: &Broker, id: &str| broker.stderr().contains(&format!("client_id={id}"));
    assert!(
        (on(&a, "via-lb-1") && on(&b, "via-lb-2")) || (on(&a, "via-lb-2") && on(&b, "via-lb-1")),
        "not one client per node\n--- a ---\n{}\n--- b ---\n{}",
        a.stderr(),
        b.stderr()
    );
    for n in [&a, &b] {
        assert!(
            !n.stderr().contains("bad PROXY protocol header"),
            "{}",
            n.stderr()
        );
    }
}

/// The balancer terminating TLS (`--tls-cert`) in front of the nodes' plain
/// WebSocket listeners: `wss://` to the balancer, `ws` to the nodes.
#[tokio::test]
async fn wss_terminated_by_the_load_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lb test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let (node, ws, _) = ws_node();
    let lb = Lb::start(&[
        "--backends",
        &ws.to_string(),
        "--proxy-protocol",
        "false",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let (ok, out) = paho(&[
        "--port",
        &port(lb.addr()),
        "--tls",
        "--ca",
        ca_file.to_str().unwrap(),
        "--sizes",
        "10,100000",
    ])
    .await;
    assert!(
        ok && out.contains("received 2"),
        "{out}\n{}\n{}",
        lb.stderr(),
        node.stderr()
    );
}

// --- gossip: --backend-transport ----------------------------------------------------

/// An in-test gossip member advertising `listeners` as a broker's.
async fn member(
    id: &str,
    listeners: Vec<AdvertisedListener>,
    seed: Option<SocketAddr>,
) -> MembershipHandle {
    membership::spawn(MembershipConfig {
        join: seed.into_iter().collect(),
        meta: NodeMeta {
            listeners,
            ..NodeMeta::broker()
        },
        ..MembershipConfig::for_test(id)
    })
    .await
    .expect("spawn gossip member")
}

fn advertised(kind: ListenerKind, addr: SocketAddr, proxy: bool) -> AdvertisedListener {
    AdvertisedListener { kind, addr, proxy }
}

/// Waits until the balancer routes to `addr`.
async fn wait_up(lb: &Lb, addr: SocketAddr) {
    let up = format!("addr={addr} ");
    wait_for(
        Duration::from_secs(10),
        &format!("the balancer to route to {addr}"),
        || {
            lb.stderr()
                .lines()
                .any(|l| l.contains("broker up") && l.contains(&up))
        },
    )
    .await;
}

/// `--join --backend-transport ws`: clients of the balancer go to the WebSocket
/// listeners the nodes advertise (their PROXY variant), round robin; paho-mqtt and
/// MQTT.js both get through.
#[tokio::test]
async fn gossip_ws_passthrough_to_the_nodes_advertised_websocket_listeners() {
    let (a, _, a_proxy) = ws_node();
    let (b, b_plain, _) = ws_node();
    let ma = member(
        "node-a",
        vec![advertised(ListenerKind::Ws, a_proxy, true)],
        None,
    )
    .await;
    // Node b advertises only its plain WebSocket listener: reached without a header.
    let _mb = member(
        "node-b",
        vec![advertised(ListenerKind::Ws, b_plain, false)],
        Some(ma.local_addr()),
    )
    .await;
    let lb = Lb::start(&[
        "--join",
        &ma.local_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
        "--backend-transport",
        "ws",
    ]);
    wait_up(&lb, a_proxy).await;
    wait_up(&lb, b_plain).await;
    let (ok, out) = paho(&["--port", &port(lb.addr()), "--client-id", "gossip-ws-1"]).await;
    assert!(ok && out.contains("received 1"), "{out}\n{}", lb.stderr());
    let (ok, out) = mqttjs(&["--port", &port(lb.addr()), "--client-id", "gossip-ws-2"]).await;
    assert!(ok && out.contains("received 1"), "{out}\n{}", lb.stderr());
    let on = |broker: &Broker, id: &str| broker.stderr().contains(&format!("client_id={id}"));
    assert!(
        (on(&a, "gossip-ws-1") && on(&b, "gossip-ws-2"))
            || (on(&a, "gossip-ws-2") && on(&b, "gossip-ws-1")),
        "not one client per node\n--- a ---\n{}\n--- b ---\n{}",
        a.stderr(),
        b.stderr()
    );
}

/// `--join --backend-transport tls`: TLS passes through to the node's
/// `tls_proxy_listen`, which terminates it and checks the client certificate: the
/// certificate's name is the user name there (the balancer reads nothing).
#[tokio::test]
async fn gossip_tls_passthrough_keeps_client_certificates_end_to_end() {
    let pki = Pki::new();
    let (clients, clients_file) = pki.client_ca("clients");
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "topic readwrite lb/#\nuser device-9\ntopic write lb/device-9/#\n",
    )
    .unwrap();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let node = Broker::builder()
        .config(&format!(
            "tls_proxy_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n\
             tls_client_ca = {:?}\nrequire_certificate = true\nuse_identity_as_username = true\n\
             acl_file = {:?}\n",
            p(&pki.cert),
            p(&pki.key),
            p(&clients_file),
            p(&acl)
        ))
        .start();
    let tls_proxy = node.listener("tls, proxy");
    let m = member(
        "node-t",
        vec![advertised(ListenerKind::Tls, tls_proxy, true)],
        None,
    )
    .await;
    let lb = Lb::start(&[
        "--join",
        &m.local_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
        "--backend-transport",
        "tls",
    ]);
    wait_up(&lb, tls_proxy).await;
    let mut sub = BgSub::spawn(&node, &["-t", "lb/#", "-v"]);
    sub.probe(&node, "lb/probe", b"p").await;
    let (c, k) = clients
        .client(&[(DnType::CommonName, "device-9")])
        .write(pki.dir.path(), "device-9");
    let args = [
        "--cafile",
        &p(&pki.ca_file),
        "--cert",
        &p(&c),
        "--key",
        &p(&k),
    ];
    for topic in ["lb/device-8/x", "lb/device-9/x"] {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-t", topic, "-m", "via-lb", "-q", "1"]);
        let out = mosquitto_pub_at("localhost", lb.addr(), &a).await;
        assert!(out.status.success(), "{out:?}\n{}", lb.stderr());
    }
    // Only the topic the certificate's user may write to arrives.
    loop {
        let line = sub
            .next_line(T)
            .await
            .expect("the message through the balancer");
        if !line.starts_with("lb/probe ") {
            assert_eq!(line, "lb/device-9/x via-lb");
            break;
        }
    }
    // Without a certificate the node refuses the handshake, through the balancer too.
    let out = mosquitto_pub_at(
        "localhost",
        lb.addr(),
        &["--cafile", &p(&pki.ca_file), "-t", "lb/x", "-m", "m"],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
}

/// End to end with real clustered nodes: each advertises its `ws_proxy_listen`
/// through gossip by itself, and `astramq lb --join --backend-transport ws` routes
/// WebSocket clients to both; a message crosses from one node to the other.
#[tokio::test]
async fn clustered_nodes_advertise_their_websocket_listeners_to_the_balancer() {
    let redis = common::cluster::RedisServer::start();
    let url = redis.url();
    let node = |id: &str, join: Option<SocketAddr>| {
        let mut args = vec![
            "--redis".to_string(),
            url.clone(),
            "--node-id".to_string(),
            id.to_string(),
            "--gossip-listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--ws-proxy-listen".to_string(),
            "127.0.0.1:0".to_string(),
        ];
        if let Some(j) = join {
            args.extend(["--join".to_string(), j.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Broker::builder().args(&args).start()
    };
    let n1 = node("ws-n1", None);
    let n2 = node("ws-n2", Some(n1.gossip_addr()));
    let lb = Lb::start(&[
        "--join",
        &n1.gossip_addr().to_string(),
        "--gossip-listen",
        "127.0.0.1:0",
        "--backend-transport",
        "ws",
    ]);
    wait_up(&lb, n1.listener("ws, proxy")).await;
    wait_up(&lb, n2.listener("ws, proxy")).await;
    // A subscriber on n2 (plain MQTT) sees what a WebSocket client publishes.
    let mut sub = BgSub::spawn(&n2, &["-t", "cross/#", "-v"]);
    sub.probe(&n2, "cross/probe", b"p").await;
    for i in 0..2 {
        let id = format!("clustered-ws-{i}");
        let (ok, out) = paho(&[
            "--port",
            &port(lb.addr()),
            "--client-id",
            &id,
            "--topic",
            "cross/ws",
        ])
        .await;
        assert!(ok && out.contains("received 1"), "{out}\n{}", lb.stderr());
    }
    let on = |b: &Broker| b.stderr().contains("client_id=clustered-ws-");
    assert!(on(&n1) && on(&n2), "round robin over both nodes");
    loop {
        let line = sub
            .next_line(T)
            .await
            .expect("the WebSocket client's message on n2");
        if line.starts_with("cross/ws ") {
            break;
        }
    }
}
