//! Redis authentication (issue #12 item 5): three `astramq` nodes log in to Redis as
//! an ACL user (`redis://astramq:<password>@127.0.0.1:<port>`) that may run exactly
//! the commands the nodes call, on exactly their keys — the ACL documented in
//! docs/reliability.md ("Redis authentication"), [`NODE_ACL`] here. The test runs
//! what touches every part of the schema: routes and the change feed, inbox streams
//! (forwarding, consumer groups), persistent sessions and their journals, liveness
//! keys and the claim/adopt scripts of a kill -9 repair. Redis's `ACL LOG` must stay
//! empty: one command outside the ACL, anywhere, fails the test.
//!
//! ```sh
//! cargo test -p astramq --test redis_acl
//! ```

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// The minimal rules for the nodes' user (after `ACL SETUSER astramq on >password`),
/// derived from every command `crates/cluster` sends, scripts included (a script's
/// `redis.call`s are checked against the caller's ACL too). Keep in sync with
/// docs/reliability.md.
const NODE_ACL: &[&str] = &[
    "resetkeys",
    "~astramq:*",
    "resetchannels",
    "-@all",
    "+ping",
    "+get",
    "+set",
    "+del",
    "+exists",
    // Key lifetimes (crates/cluster/src/lifetime.rs): session keys' TTL, and the
    // claim script's epoch seed.
    "+pexpire",
    "+pttl",
    "+persist",
    "+time",
    "+hget",
    "+hset",
    "+hsetnx",
    "+hdel",
    "+hgetall",
    "+hkeys",
    "+hmget",
    "+hincrby",
    "+hexists",
    "+sadd",
    "+srem",
    "+smembers",
    "+zadd",
    "+zscore",
    "+zremrangebyscore",
    "+xadd",
    "+xlen",
    "+xread",
    "+xreadgroup",
    "+xack",
    "+xdel",
    "+xgroup|create",
    "+xautoclaim",
    "+xrevrange",
    "+eval",
    "+evalsha",
    "+script|load",
];

const USER: &str = "astramq";
const PASSWORD: &str = "s3cret-acl-pw";
const EXPIRY: u32 = 300;
/// How long survivors may take to repair a killed node.
const DETECTION: Duration = Duration::from_secs(10);

/// The rules, plus `+client|setinfo` on Redis 7.2 and later: the redis crate sends
/// `CLIENT SETINFO` when it connects and ignores a refusal, but Redis would record
/// the refusal in `ACL LOG` (the subcommand does not exist before 7.2).
fn rules() -> Vec<&'static str> {
    let out = std::process::Command::new(redis_tool("redis-server"))
        .arg("--version")
        .output()
        .expect("redis-server --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version: Vec<u32> = text
        .split("v=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.split('.').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let mut rules = NODE_ACL.to_vec();
    if version.as_slice() >= [7, 2].as_slice() {
        rules.push("+client|setinfo");
    }
    rules
}

/// `ACL LOG` entries (refused commands and keys), as text.
fn acl_log(c: &TestCluster) -> Vec<String> {
    match c.redis().cmd(&["ACL", "LOG"]) {
        resp::Value::Array(Some(entries)) => entries.iter().map(|e| format!("{e:?}")).collect(),
        other => vec![format!("unexpected ACL LOG reply {other:?}")],
    }
}

/// Waits until a survivor logs that it took over `dead`'s sessions.
async fn wait_taken_over(c: &TestCluster, survivors: &[usize], dead: &str) {
    let token = format!("node={dead}");
    let deadline = Instant::now() + DETECTION;
    loop {
        let done = survivors.iter().any(|&i| {
            c.node(i).stderr().lines().any(|l| {
                l.contains("took over a failed node's sessions")
                    && l.split_whitespace().any(|w| w == token)
            })
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no survivor took over {dead}'s sessions within {DETECTION:?}:\n{}\nACL LOG: {:?}",
            c.node(survivors[0]).stderr(),
            acl_log(c)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Invariants 1 and 3 under a Redis ACL user: cross-node delivery, a persistent
// session's queued message resumed on another node, and a kill -9 repair, with no
// command refused by Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_under_the_minimal_acl_user() {
    let mut c = TestCluster::builder(3)
        .redis_user(USER, PASSWORD, &rules())
        .start()
        .await;
    // Every node's connections are logged in as the ACL user.
    let clients = c.redis().cmd(&["CLIENT", "LIST"]).text();
    let as_user = clients
        .lines()
        .filter(|l| l.contains(&format!(" user={USER} ")))
        .count();
    assert!(
        as_user >= 3,
        "expected the nodes' connections as user {USER}:\n{clients}"
    );
    assert!(
        !clients
            .lines()
            .any(|l| l.contains(" user=default ") && l.contains("lib-name=redis-rs")),
        "a node connected as the default user:\n{clients}"
    );

    // Cross-node QoS 1 to a persistent session on n2.
    let v = Version::V5;
    let (mut sub, _) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "acl-sub", false, EXPIRY),
    )
    .await;
    sub.sub("acl/#", 1).await;
    c.sync_from(1).await;
    let mut publ = c.client(0, v, "acl-pub").await;
    assert_eq!(publ.publish("acl/x", b"live", 1, false).await, 0);
    assert_eq!(sub.recv_publish(T).await.payload, b"live");

    // Offline: the message is journaled for the session, which resumes on n3.
    sub.disconnect().await;
    assert_eq!(publ.publish("acl/x", b"queued-1", 1, false).await, 0);
    let (mut sub, ca) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "acl-sub", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present, "the session resumes on another node");
    assert_eq!(sub.recv_publish(T).await.payload, b"queued-1");
    c.sync_from(2).await;

    // kill -9 of n3 while the session, owned there, is offline with a message
    // queued: a survivor takes it over (liveness keys, the adopt script).
    sub.disconnect().await;
    assert_eq!(publ.publish("acl/x", b"queued-2", 1, false).await, 0);
    c.kill(2);
    wait_taken_over(&c, &[0, 1], c.id(2)).await;
    let (mut sub, ca) = RawClient::connect(
        c.node(1).addr(),
        Connect::persistent(v, "acl-sub", false, EXPIRY),
    )
    .await;
    assert!(ca.session_present, "the session survives its node");
    assert_eq!(sub.recv_publish(T).await.payload, b"queued-2");
    c.sync_from(1).await;
    assert_eq!(publ.publish("acl/x", b"after", 1, false).await, 0);
    assert_eq!(sub.recv_publish(T).await.payload, b"after");

    let refused = acl_log(&c);
    assert!(
        refused.is_empty(),
        "Redis refused commands of the nodes' ACL user (the documented ACL is too \
         narrow):\n{}",
        refused.join("\n")
    );
}

// A wrong password is a clear start-up error naming the URL, not a node that runs
// without Redis.
#[tokio::test]
async fn wrong_password_is_a_start_up_error() {
    let redis = RedisServer::start();
    let pass = format!(">{PASSWORD}");
    let mut args = vec!["ACL", "SETUSER", USER, "on", pass.as_str()];
    args.extend(NODE_ACL);
    redis.cmd(&args);
    let wrong = "not-the-password-9431";
    let url = format!("redis://{USER}:{wrong}@127.0.0.1:{}", redis.port());
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
        &[("ASTRAMQ_CLUSTER_REDIS_CONNECT_TIMEOUT_SECS", "2")],
        Duration::from_secs(20),
    )
    .await;
    let stderr = &out.stderr;
    assert!(
        !out.status.success(),
        "started with a wrong password:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("redis://{USER}:***@127.0.0.1:{}", redis.port())),
        "the error names the URL, password redacted:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("pass"),
        "the error says authentication failed:\n{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the password is not printed:\n{stderr}"
    );
}

// Sentinel: `redis+sentinel://user:password@s1,s2,s3/mymaster` logs in to the master
// (and, after a failover, the promoted replica) as the ACL user; the sentinels are
// reached without credentials. Through Sentinel the ACL also needs `+role` (the
// redis crate checks the master's role, and so does the node's probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_url_carries_the_master_credentials() {
    let mut rules = rules();
    rules.push("+role");
    let mut c = TestCluster::builder(2)
        .sentinel(1)
        .redis_user(USER, PASSWORD, &rules)
        .start()
        .await;
    assert!(
        c.node(0)
            .stderr()
            .contains(&format!("redis+sentinel://{USER}:***@")),
        "the node logs the URL with its password redacted:\n{}",
        c.node(0).stderr()
    );
    let v = Version::V5;
    let mut sub = c.client(1, v, "acl-s-sub").await;
    sub.sub("acls/#", 1).await;
    c.sync_from(1).await;
    let mut publ = c.client(0, v, "acl-s-pub").await;
    assert_eq!(publ.publish("acls/x", b"before", 1, false).await, 0);
    assert_eq!(sub.recv_publish(T).await.payload, b"before");

    // kill -9 of the master: the nodes log in to the promoted replica as well.
    let old = c.redis_sentinel().kill_master();
    let Backend::Sentinel(s) = c.redis() else {
        unreachable!()
    };
    s.wait_failover(old, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Refused (0x80) until the node sees the new master.
        if publ.publish("acls/x", b"after", 1, false).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cross-node QoS 1 still refused 15 s after the promotion:\n{}",
            c.node(0).stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sub.recv_publish(T).await.payload, b"after");
    let refused = acl_log(&c);
    assert!(
        refused.is_empty(),
        "the new master refused commands of the ACL user:\n{}",
        refused.join("\n")
    );
}

// A 3.1.1 publisher cannot be refused: when the cluster cannot store a QoS 2
// message's copies, the node closes the connection without PUBREC, and the client
// resends the PUBLISH after reconnecting, same packet id, DUP set [MQTT-4.4.0-1].
// That resend must be routed and delivered once. Taken for a redelivery of a message
// already received [MQTT-4.3.3-9], it was acknowledged and reached no one (lost in
// the Sentinel failover test `kill9_master_qos2_wait_replicas`). The store is made
// to fail, deterministically, by taking ZSCORE (which only the journal's script
// uses: its delivered-id check) from the nodes' ACL user for a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_resent_after_a_failed_store_is_delivered_once() {
    let c = TestCluster::builder(1)
        .redis_user(USER, PASSWORD, &rules())
        .start()
        .await;
    let v = Version::V311;
    let addr = c.node(0).addr();
    let (mut sub, _) =
        RawClient::connect(addr, Connect::persistent(v, "q2-sub", false, EXPIRY)).await;
    sub.sub("q2/t", 2).await;
    let (mut publ, _) =
        RawClient::connect(addr, Connect::persistent(v, "q2-pub", false, EXPIRY)).await;
    assert_eq!(publ.publish("q2/t", b"before", 2, false).await, 0);
    assert_eq!(sub.recv_publish(T).await.payload, b"before");

    c.redis().cmd(&["ACL", "SETUSER", USER, "-zscore"]);
    let mut msg = Publish::new("q2/t", b"resent", 2).pid(42);
    publ.send(&msg.encode(v)).await;
    let seen = publ.expect_closed(T).await;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::Pubrec(_))),
        "PUBREC for a message whose copy was not stored: {seen:?}"
    );
    c.redis().cmd(&["ACL", "SETUSER", USER, "+zscore"]);

    // The node may refuse connections until it has seen Redis answer again.
    let deadline = Instant::now() + DETECTION;
    let mut publ = loop {
        let (cl, ca) =
            RawClient::connect(addr, Connect::persistent(v, "q2-pub", false, EXPIRY)).await;
        if ca.code == 0 {
            assert!(ca.session_present, "the publisher's session is kept");
            break cl;
        }
        assert!(
            Instant::now() < deadline,
            "reconnect refused ({}) for {DETECTION:?}",
            ca.code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    msg.dup = true;
    publ.send(&msg.encode(v)).await;
    let rec = publ
        .wait_packet(T, "PUBREC", |p| match p {
            Packet::Pubrec(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(rec.pid, 42);
    publ.send(&encode_ack(PUBREL, 42, 0, v)).await;
    publ.wait_packet(T, "PUBCOMP", |p| {
        matches!(p, Packet::Pubcomp(_)).then_some(())
    })
    .await;
    assert_eq!(
        sub.recv_publish(T).await.payload,
        b"resent",
        "the resend reached the subscriber"
    );
    // Exactly once [MQTT-4.3.3-9]: nothing else arrives for it.
    sub.expect_no_publish(Duration::from_millis(500)).await;
}
