//! TLS to Redis (issue #12 item 3): the nodes reach a `redis-server` that speaks TLS
//! only (`--port 0 --tls-port P`, so a plain-text connection cannot work at all)
//! through `rediss://`, verifying the server's certificate against
//! `--redis-tls-ca`, and presenting a client certificate (`--redis-tls-cert`,
//! `--redis-tls-key`) where Redis requires one. A wrong CA or a certificate for
//! another host name is a start-up error naming the URL: the node exits non-zero
//! before listening. Certificates are made per test with `rcgen`.
//!
//! ```sh
//! cargo test -p astramq --test redis_tls
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::*;
use common::*;

/// A CA: its certificate (PEM file) and what signs with it.
struct Ca {
    pem: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("AstraMQ test CA {name}"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { pem, cert, key }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA,
    /// written as `<file>.pem` and `<file>.key`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A TLS-only server whose certificate names `names`, signed by `ca`.
fn tls_files(dir: &Path, ca: &Ca, names: &[&str], client_cert: bool) -> RedisTlsFiles {
    let (cert, key) = ca.issue(dir, "server", names);
    RedisTlsFiles {
        cert,
        key,
        ca: ca.pem.clone(),
        client: client_cert.then(|| ca.issue(dir, "client", &["astramq-node"])),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The node flags for mutual TLS to Redis: trust `ca`, present `cert` and `key`.
fn node_tls_args<'a>(ca: &'a Path, cert: &'a Path, key: &'a Path) -> [&'a str; 6] {
    [
        "--redis-tls-ca",
        path(ca),
        "--redis-tls-cert",
        path(cert),
        "--redis-tls-key",
        path(key),
    ]
}

/// Runs one node against `url` until it exits (it must, at start-up).
async fn start_up_error(url: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "n1",
        "--redis",
        url,
        "--gossip-listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    let out = run_astramq(
        &args,
        &[("ASTRAMQ_CLUSTER_REDIS_CONNECT_TIMEOUT_SECS", "3")],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        !out.status.success(),
        "the node started on {url}:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("listening on") && !out.stdout.contains("listening on"),
        "the node listened before failing:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(url),
        "the error names the URL {url}:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "a panic, not an error:\n{}",
        out.stderr
    );
    out
}

// Invariant 1 over TLS: two nodes on `rediss://` with mutual TLS (Redis requires a
// client certificate), a QoS 1 message from a rumqttc publisher on n1 to a rumqttc
// subscriber on n2 crosses the inbox stream; a persistent session's queued message
// is journaled in Redis and resumed on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_rediss_pass_qos1_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let tls = tls_files(dir.path(), &ca, &["localhost", "127.0.0.1"], true);
    let (cert, key) = tls.client.clone().unwrap();
    let c = TestCluster::builder(2)
        .redis_tls(tls)
        .args(&node_tls_args(&ca.pem, &cert, &key))
        .start()
        .await;
    assert!(
        c.redis().url().starts_with("rediss://"),
        "{}",
        c.redis().url()
    );
    // The server has no plain-text port: every connection of the nodes is TLS.
    let clients = c.redis().cmd(&["CLIENT", "LIST"]).text();
    assert!(
        clients
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .count()
            >= 2,
        "the nodes are connected:\n{clients}"
    );

    qos1_across_nodes(&c).await;
}

/// A rumqttc QoS 1 PUBLISH on n1 reaches a rumqttc subscriber on n2; a message queued
/// while that persistent subscriber is away is resumed on n1.
async fn qos1_across_nodes(c: &TestCluster) {
    let mut sub = V4Client::connect_with({
        let mut o = V4Client::options(c.node(1), "tls-sub");
        o.set_clean_session(false);
        o
    })
    .await;
    sub.subscribe("tls/#", rumqttc::QoS::AtLeastOnce).await;
    c.sync_from(1).await;
    let mut publ = V4Client::connect(c.node(0), "tls-pub").await;
    publ.client
        .publish("tls/x", rumqttc::QoS::AtLeastOnce, false, "over-tls")
        .await
        .unwrap();
    publ.wait_incoming(T, "PUBACK", |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;
    let got = sub.recv_publish(T).await;
    assert_eq!(&got.payload[..], b"over-tls");
    assert_eq!(got.qos, rumqttc::QoS::AtLeastOnce);

    // Offline: journaled in Redis (over TLS), resumed on n1.
    // (Whether n2 has noticed the close yet or not, the message is journaled for the
    // session: offline queue or unacknowledged in flight.)
    sub.shutdown();
    publ.client
        .publish("tls/x", rumqttc::QoS::AtLeastOnce, false, "queued")
        .await
        .unwrap();
    publ.wait_incoming(T, "PUBACK", |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;
    let mut sub = V4Client::connect_with({
        let mut o = V4Client::options(c.node(0), "tls-sub");
        o.set_clean_session(false);
        o
    })
    .await;
    assert!(sub.connack.session_present, "the session resumes on n1");
    assert_eq!(&sub.recv_publish(T).await.payload[..], b"queued");
}

// A server certificate from a CA the node was not told to trust: a start-up error
// naming the URL and the certificate problem, not a plain-text fallback (the
// server has no plain-text port) and not a panic.
#[tokio::test]
async fn wrong_ca_is_a_start_up_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let redis = RedisServer::start_tls(tls_files(
        dir.path(),
        &ca,
        &["localhost", "127.0.0.1"],
        false,
    ));
    let url = redis.url();
    let out = start_up_error(&url, &["--redis-tls-ca", path(&other.pem)]).await;
    assert!(
        out.stderr.contains("UnknownIssuer"),
        "the error says the certificate's issuer is not trusted:\n{}",
        out.stderr
    );
    // No CA given: the system's trust store does not know the test CA either.
    let out = start_up_error(&url, &[]).await;
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
}

// The right CA, but a certificate for another host name than the one dialled: the
// node dials 127.0.0.1, the certificate names `localhost` only.
#[tokio::test]
async fn host_name_mismatch_is_a_start_up_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let redis = RedisServer::start_tls(tls_files(dir.path(), &ca, &["localhost"], false));
    let out = start_up_error(&redis.url(), &["--redis-tls-ca", path(&ca.pem)]).await;
    assert!(
        out.stderr.contains("not valid for name"),
        "the error says the certificate is for another name:\n{}",
        out.stderr
    );
}

// Redis requires a client certificate and the node has none: refused at start-up.
// TLS files with a plain `redis://` URL are refused too, rather than ignored.
#[tokio::test]
async fn missing_client_certificate_and_plain_url_with_tls_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let redis = RedisServer::start_tls(tls_files(
        dir.path(),
        &ca,
        &["localhost", "127.0.0.1"],
        true,
    ));
    start_up_error(&redis.url(), &["--redis-tls-ca", path(&ca.pem)]).await;

    let plain = format!("redis://127.0.0.1:{}", redis.port());
    let out = start_up_error(&plain, &["--redis-tls-ca", path(&ca.pem)]).await;
    assert!(
        out.stderr.contains("plain text"),
        "the error says TLS files need a TLS URL:\n{}",
        out.stderr
    );
}

// Redis Cluster over TLS (`rediss+cluster://`): three masters with TLS-only client
// ports, cluster bus and replication; the nodes learn every master from the slot map
// and reach each with the same CA and client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_rediss_redis_cluster_pass_qos1_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let tls = tls_files(dir.path(), &ca, &["localhost", "127.0.0.1"], true);
    let (cert, key) = tls.client.clone().unwrap();
    let c = TestCluster::builder(2)
        .redis_tls(tls)
        .redis_cluster()
        .args(&node_tls_args(&ca.pem, &cert, &key))
        .start()
        .await;
    assert!(
        c.redis().url().starts_with("rediss+cluster://"),
        "{}",
        c.redis().url()
    );
    qos1_across_nodes(&c).await;
}

// Redis Cluster with a CA the node does not trust: a start-up error naming the URL.
#[tokio::test]
async fn redis_cluster_with_a_wrong_ca_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let redis = RedisCluster::start_tls(tls_files(
        dir.path(),
        &ca,
        &["localhost", "127.0.0.1"],
        false,
    ));
    let url = redis.url();
    let out = start_up_error(&url, &["--redis-tls-ca", path(&other.pem)]).await;
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
}

// Sentinel over TLS (`rediss+sentinel://`): the sentinels, the master and its
// replica speak TLS only; the nodes ask a sentinel for the master and reach it with
// the same CA and client certificate, and follow a `kill -9` failover to the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_rediss_sentinel_pass_qos1_and_follow_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let tls = tls_files(dir.path(), &ca, &["localhost", "127.0.0.1"], true);
    let (cert, key) = tls.client.clone().unwrap();
    let mut c = TestCluster::builder(2)
        .redis_tls(tls)
        .sentinel(1)
        .args(&node_tls_args(&ca.pem, &cert, &key))
        .start()
        .await;
    assert!(
        c.redis().url().starts_with("rediss+sentinel://"),
        "{}",
        c.redis().url()
    );
    qos1_across_nodes(&c).await;

    let v = Version::V5;
    let mut sub = c.client(1, v, "tls-s-sub").await;
    sub.sub("tlss/#", 1).await;
    c.sync_from(1).await;
    let mut publ = c.client(0, v, "tls-s-pub").await;
    let old = c.redis_sentinel().kill_master();
    let Backend::Sentinel(s) = c.redis() else {
        unreachable!()
    };
    s.wait_failover(old, Duration::from_secs(20)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Refused (0x80) until the nodes reach the promoted replica, over TLS.
        if publ.publish("tlss/x", b"after", 1, false).await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cross-node QoS 1 still refused 15 s after the promotion:\n{}",
            c.node(0).stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sub.recv_publish(T).await.payload, b"after");
}
