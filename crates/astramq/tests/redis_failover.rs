//! Redis failover under load (issue #12 item 1; DESIGN invariants 6 and 1): three
//! `astramq` nodes on `redis+sentinel://…/mymaster` (one master, one replica, three
//! `redis-sentinel` processes, quorum 2, down-after 1 s — `common/sentinel.rs`), the
//! chaos load through `astramq lb` (persistent subscribers on every node, QoS 1 or 2
//! publishers — `common/chaos/`), and a fault on the Redis master.
//!
//! ```sh
//! cargo test -p astramq --test redis_failover -- --test-threads=1 --nocapture
//! ```
//!
//! | test | fault | asserts |
//! |---|---|---|
//! | `kill9_master_qos1` / `_qos2` | `kill -9` of the master | Sentinel promotes the replica; every node says Redis is reachable again and the load is acknowledged again within [`RECOVER`] of the promotion, with no node restarted |
//! | `sentinel_failover_demotes_master_qos1` | `SENTINEL FAILOVER` (the master keeps running until Sentinel demotes it, closing its clients' connections) | the same |
//! | `*_wait_replicas` | the same, nodes with `cluster.redis_wait_replicas = 1` and one replica (WAIT must cover every replica); after a `kill -9` the killed server is restarted and becomes the new master's replica | the same (recovery counted from the restarted server's resync), and lost = 0 |
//! | `wait_replicas_cost` | none: 300 sequential cross-node QoS 1 messages with the setting off, then on | reports the mean acknowledgement time of each |
//! | `redis_cluster_kill9_master_qos1` | Redis Cluster, 3 masters + 3 replicas, `kill -9` of a master | the nodes serve again within 10 s of the replica taking the slots over; lost reported |
//! | `redis_cluster_kill9_master_qos1_wait_replicas` | the same, `cluster.redis_wait_replicas = 1`; the killed server restarted (it rejoins as the new master's replica) | the same (counted from its resync), and lost = 0 |
//! | `redis_cluster_wait_replicas_cost` | none: 300 sequential cross-node QoS 1 messages on Redis Cluster, setting off then on | the masters answered no `WAIT` with the setting off, at least one per message with it on; reports the mean acknowledgement times |
//! | `redis_cluster_reshard_under_load_loses_nothing` | Redis Cluster, 1,000 slots moved between masters (`redis-cli --cluster reshard`) under QoS 1 load | lost = 0, load acknowledged after |
//!
//! Lost and duplicates are counted as in the chaos suite and reported (a table row,
//! appended as JSON to `$CARGO_TARGET_TMPDIR/chaos.jsonl`). With the setting off they
//! are *reported, not asserted*: Redis replicates asynchronously, so a write the old
//! master acknowledged in its last moments can be missing on the new one, and with it
//! a message the broker acknowledged (docs/reliability.md, "Redis failover", has the
//! measured rows). With `cluster.redis_wait_replicas = 1` every write an
//! acknowledgement depends on was confirmed by the replica first: lost = 0 is asserted.
//! Recovery is asserted: before the fix in `astramq-cluster` (`sentinel.rs`), the
//! nodes' shared connection stayed bound to the dead master and every test here
//! failed at "reachable again".

mod common;
#[path = "common/chaos/mod.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use common::cluster::*;
use common::sentinel::RedisSentinel;
use common::*;
use harness::*;

/// Upper bound of one scenario, cluster start included.
const LIMIT: Duration = Duration::from_secs(90);
/// Sentinel's own time to promote the replica (down-after 1 s, then election), and
/// to demote a master that kept running (it did so ~11 s after the promotion here).
const PROMOTION: Duration = Duration::from_secs(20);
/// After the promotion: how long the nodes may take to serve cross-node QoS 1/2
/// messages again (they probe Redis every second).
const RECOVER: Duration = Duration::from_secs(10);
/// After the load stops: how long acknowledged messages may take to arrive.
const SETTLE: Duration = Duration::from_secs(12);

fn sentinel(c: &TestCluster) -> &RedisSentinel {
    match c.redis() {
        Backend::Sentinel(s) => s,
        _ => unreachable!("these tests run under Sentinel"),
    }
}

/// What happens to the master.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL: every connection to it breaks.
    Kill9,
    /// `SENTINEL FAILOVER`: it keeps running, is made a replica of the promoted one,
    /// and answers writes on the nodes' open connections with `READONLY`.
    Demote,
}

/// A TOML file turning `cluster.redis_wait_replicas` on (1 replica, 1 s), for
/// `--config`; deleted on drop.
fn wait_replicas_config() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut f,
        b"[cluster]\nredis_wait_replicas = 1\nredis_wait_timeout_ms = 1000\n",
    )
    .unwrap();
    f
}

/// Runs the load on Redis with `replicas` replicas, applies `fault` to the master,
/// and returns the row (emitted). `wait`: the nodes run with
/// `cluster.redis_wait_replicas = 1`, and lost = 0 is asserted.
async fn failover_under_load(
    scenario: &str,
    spec: LoadSpec,
    fault: Fault,
    replicas: usize,
    wait: bool,
) -> Row {
    let config = wait_replicas_config();
    let path = config.path().to_str().unwrap().to_string();
    let args: &[&str] = if wait { &["--config", &path] } else { &[] };
    let builder = TestCluster::builder(3).sentinel(replicas).args(args);
    let ch = Chaos::start_with(builder).await;
    let load = Load::start(&ch, &spec).await;
    assert!(
        load.wait_more_acked(200, T).await,
        "load not flowing before the fault"
    );
    let mut ch = ch;
    let wall = SystemTime::now();
    let fault_at = Instant::now();
    let old = match fault {
        Fault::Kill9 => ch.cluster.redis_sentinel().kill_master(),
        Fault::Demote => sentinel(&ch.cluster).failover(),
    };
    let mut promoted_in = sentinel(&ch.cluster).wait_failover(old, PROMOTION).await;
    if let Fault::Demote = fault {
        // The old master keeps serving until Sentinel reconfigures it as a replica;
        // recovery counts from then.
        promoted_in = sentinel(&ch.cluster)
            .wait_demoted(old, PROMOTION)
            .await
            .max(promoted_in);
    }
    if let (Fault::Kill9, true) = (fault, wait) {
        // WAIT 1 on the promoted master needs a replica again: the killed server is
        // restarted, as its supervisor would, and Sentinel makes it one. Recovery
        // counts from then.
        let back = ch
            .cluster
            .redis_sentinel()
            .restart_as_replica(old, PROMOTION)
            .await;
        promoted_in += back;
    }
    let promoted_at = Instant::now();
    let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVER).await;
    let recover = fault_at.elapsed();
    let after_promotion = promoted_at.elapsed();
    // Every node, not only those the publishers happen to use, follows the failover.
    let mut reachable = Vec::new();
    for i in 0..ch.cluster.len() {
        let log = ch.cluster.node(i).stderr();
        let outage = log.contains("serving local clients only");
        reachable.push(!outage || log.contains("redis reachable again after"));
    }
    let disconnects = load.disconnect_reasons();
    let (counts, details) = load.finish(SETTLE).await;
    let mut note = format!(
        "{fault:?}; Sentinel promoted the replica (and, for Demote, the old master \
         answered ROLE slave; for Kill9 with WAIT, the restarted old master was a \
         replica again) {} ms after the fault; load acknowledged again {} ms after that",
        promoted_in.as_millis(),
        after_promotion.as_millis()
    );
    note.push_str(&format!("; {replicas} replica(s)"));
    if wait {
        note.push_str("; cluster.redis_wait_replicas = 1");
    }
    if !disconnects.is_empty() {
        note.push_str(&format!(
            "; server DISCONNECTs (reason: count) {disconnects:?}"
        ));
    }
    let row = Row {
        scenario: scenario.to_string(),
        counts,
        detect_ms: first_log_ms(&ch.cluster, "serving local clients only", wall),
        recover_ms: flowing.then_some(recover.as_millis() as u64),
        note,
    };
    report(&row, &details, flowing, wait, || {
        format!(
            "the load was not acknowledged again within {RECOVER:?} of the promotion \
             ({} more needed)\n{}\n{}",
            AFTER_RECOVERY,
            tail(&ch.cluster.node(0).stderr(), 4000),
            sentinel(&ch.cluster).logs()
        )
    });
    for (i, ok) in reachable.iter().enumerate() {
        assert!(
            ok,
            "invariant 6: {} saw the outage but never said Redis was reachable again:\n{}",
            ch.cluster.id(i),
            tail(&ch.cluster.node(i).stderr(), 4000)
        );
    }
    row
}

/// Emits the row of a failover scenario and prints its details; checks that the
/// load was acknowledged at all, that it flowed again (`flowing`, else fails with
/// `stuck`), and with `wait` (`cluster.redis_wait_replicas = 1`) that nothing
/// acknowledged was lost.
fn report(
    row: &Row,
    details: &[String],
    flowing: bool,
    wait: bool,
    stuck: impl FnOnce() -> String,
) {
    row.emit();
    for d in details {
        println!("  {d}");
    }
    assert!(row.counts.acknowledged > 0, "nothing acknowledged: {row:?}");
    assert!(flowing, "invariant 6: {}", stuck());
    if wait {
        assert_eq!(
            row.counts.lost,
            0,
            "invariant 1 with cluster.redis_wait_replicas = 1: acknowledged deliveries lost \
             in the failover:\n{}",
            details.join("\n")
        );
    }
}

async fn bounded(f: impl std::future::Future<Output = Row>) -> Row {
    let _alone = SERIAL.lock().await;
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("scenario exceeded {LIMIT:?}"))
}

// Invariant 6 through a Redis master failure: the master is SIGKILLed under QoS 1
// load; Sentinel promotes the replica; the nodes find it by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_qos1() {
    let spec = LoadSpec::new("sk1", 1);
    bounded(failover_under_load(
        "s1. Sentinel: kill -9 of the master, QoS 1",
        spec,
        Fault::Kill9,
        1,
        false,
    ))
    .await;
}

// The same at QoS 2 ([MQTT-4.3.3]: duplicates are reported; a write lost with the
// old master can show as a loss or, for a PUBREL state, a duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_qos2() {
    let spec = LoadSpec::new("sk2", 2);
    bounded(failover_under_load(
        "s2. Sentinel: kill -9 of the master, QoS 2",
        spec,
        Fault::Kill9,
        1,
        false,
    ))
    .await;
}

// A master demoted while it runs (`SENTINEL FAILOVER`): the nodes' connections to it
// stay open and its writes answer `READONLY`; that must send them to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_demotes_master_qos1() {
    let spec = LoadSpec::new("sd1", 1);
    bounded(failover_under_load(
        "s3. Sentinel: SENTINEL FAILOVER (master demoted), QoS 1",
        spec,
        Fault::Demote,
        1,
        false,
    ))
    .await;
}

// Invariant 1 through a failover: with `cluster.redis_wait_replicas = 1` and one
// replica, nothing the old master acknowledged is missing on the promoted replica
// (it confirmed every such write). The promoted master has no replica until the
// killed server is restarted and Sentinel makes it one: until then, QoS 1/2 messages
// for other nodes are refused (the setting's price; docs/reliability.md).
// (Two replicas with WAIT 1 are not enough: Sentinel may promote the one lacking a
// write the other confirmed — measured, docs/reliability.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_qos1_wait_replicas() {
    let spec = LoadSpec::new("sw1", 1);
    bounded(failover_under_load(
        "s4. Sentinel: kill -9 of the master, QoS 1, redis_wait_replicas = 1",
        spec,
        Fault::Kill9,
        1,
        true,
    ))
    .await;
}

// The same at QoS 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_master_qos2_wait_replicas() {
    let spec = LoadSpec::new("sw2", 2);
    bounded(failover_under_load(
        "s5. Sentinel: kill -9 of the master, QoS 2, redis_wait_replicas = 1",
        spec,
        Fault::Kill9,
        1,
        true,
    ))
    .await;
}

// A demoted master keeps accepting writes until Sentinel reconfigures it, but its
// only replica has left it to be master: WAIT 1 fails there, so nothing acknowledged
// is lost. (With a second replica still following the old master, WAIT 1 would
// succeed there and the write be lost: against this fault the setting must equal
// the number of replicas — docs/reliability.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_demotes_master_qos1_wait_replicas() {
    let spec = LoadSpec::new("sdw1", 1);
    bounded(failover_under_load(
        "s6. Sentinel: SENTINEL FAILOVER (master demoted), QoS 1, redis_wait_replicas = 1",
        spec,
        Fault::Demote,
        1,
        true,
    ))
    .await;
}

/// Mean time from PUBLISH to PUBACK of `n` sequential QoS 1 messages published on
/// node 1 with a subscriber on node 2 (so each waits for its copy in node 2's inbox).
async fn cross_node_ack_time(c: &TestCluster, n: usize) -> Duration {
    let mut sub = c.client(1, Version::V5, "cost-sub").await;
    sub.sub("cost/#", 1).await;
    c.sync_feed(1, 0).await;
    let mut publ = c.client(0, Version::V5, "cost-pub").await;
    let start = Instant::now();
    for i in 0..n {
        let reason = publ
            .publish("cost/x", format!("{i}").as_bytes(), 1, false)
            .await;
        assert_eq!(reason, 0, "message {i} refused");
    }
    let mean = start.elapsed() / n as u32;
    for _ in 0..n {
        sub.recv_publish(T).await;
    }
    mean
}

// The price of `cluster.redis_wait_replicas = 1`, measured (reported, not asserted:
// the machine is shared): sequential cross-node QoS 1 acknowledgements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_cost() {
    let _alone = SERIAL.lock().await;
    const N: usize = 300;
    let off = TestCluster::builder(2).sentinel(2).start().await;
    let t_off = cross_node_ack_time(&off, N).await;
    drop(off);
    let config = wait_replicas_config();
    let path = config.path().to_str().unwrap().to_string();
    let on = TestCluster::builder(2)
        .sentinel(2)
        .args(&["--config", &path])
        .start()
        .await;
    let t_on = cross_node_ack_time(&on, N).await;
    println!(
        "cross-node QoS 1, {N} sequential messages: mean PUBLISH→PUBACK {:.2} ms with \
         redis_wait_replicas off, {:.2} ms with redis_wait_replicas = 1",
        t_off.as_secs_f64() * 1000.0,
        t_on.as_secs_f64() * 1000.0
    );
}

// ---------------------------------------------------------------------------
// Redis Cluster (issue #12 item 2: the failing first step)
// ---------------------------------------------------------------------------

/// Waits until server 0 of the Redis Cluster sees `killed` failed and the cluster
/// whole again (a replica took its slots over); returns the time waited.
async fn wait_cluster_failover(c: &TestCluster, killed: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    let Backend::Cluster(rc) = c.redis() else {
        unreachable!("a Redis Cluster test")
    };
    loop {
        let info = rc.servers[0].cmd(&["CLUSTER", "INFO"]).text();
        let nodes = rc.servers[0].cmd(&["CLUSTER", "NODES"]).text();
        // Flagged `fail` (agreed; `fail?` is one node's suspicion) and holding no slot
        // any more (fields 8.. of its line): its replica was elected and took them.
        let failed = nodes.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields
                .get(1)
                .is_some_and(|a| a.contains(&format!(":{killed}@")))
                && fields
                    .get(2)
                    .is_some_and(|f| f.split(',').any(|x| x == "fail"))
                && fields.len() <= 8
        });
        if failed && info.contains("cluster_state:ok") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "no Redis Cluster failover within {timeout:?}:\n{info}\n{nodes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the restarted server `port` is a replica whose link to its master is
/// up (it rejoined the Redis Cluster, found its slots taken and followed the new
/// master); returns the time waited.
async fn wait_rejoined_as_replica(c: &TestCluster, port: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    let Backend::Cluster(rc) = c.redis() else {
        unreachable!("a Redis Cluster test")
    };
    let server = rc
        .servers
        .iter()
        .find(|s| s.port() == port)
        .expect("the restarted server");
    loop {
        let info = server.cmd(&["INFO", "replication"]).text();
        if info.contains("role:slave") && info.contains("master_link_status:up") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "restarted server :{port} not a synced replica within {timeout:?}:\n{info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis Cluster, three masters with a replica each (`cluster-node-timeout` 5 s):
/// one master is SIGKILLed under QoS 1 load and its replica takes its slots over.
/// The nodes must serve again within RECOVER of the cluster being whole (with
/// `wait`: of the killed server being back as the new master's replica, as its
/// supervisor would restart it — `WAIT 1` on the promoted master needs a replica).
/// Lost is asserted 0 with `wait` (`cluster.redis_wait_replicas = 1`), reported
/// without.
async fn redis_cluster_failover_under_load(scenario: &str, prefix: &str, wait: bool) {
    let config = wait_replicas_config();
    let path = config.path().to_str().unwrap().to_string();
    let args: &[&str] = if wait { &["--config", &path] } else { &[] };
    let builder = TestCluster::builder(3)
        .redis_cluster_with_replicas()
        .args(args);
    let mut ch = Chaos::start_with(builder).await;
    let load = Load::start(&ch, &LoadSpec::new(prefix, 1)).await;
    assert!(
        load.wait_more_acked(200, T).await,
        "load not flowing before the fault"
    );
    let wall = SystemTime::now();
    let fault_at = Instant::now();
    // servers[1] is a master at start (servers[0] answers the test's commands).
    let victim = &mut ch.cluster.redis_cluster_mut().servers[1];
    let killed = victim.port();
    victim.kill();
    let mut failover = wait_cluster_failover(&ch.cluster, killed, Duration::from_secs(30)).await;
    if wait {
        ch.cluster.redis_cluster_mut().servers[1].restart();
        failover += wait_rejoined_as_replica(&ch.cluster, killed, Duration::from_secs(30)).await;
    }
    let whole_at = Instant::now();
    let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVER).await;
    let after = whole_at.elapsed();
    let recover = fault_at.elapsed();
    let (counts, details) = load.finish(SETTLE).await;
    let mut note = format!(
        "the replica took the slots over {} ms after the kill{}; waited {} ms after \
         that for the load to be acknowledged again",
        failover.as_millis(),
        if wait {
            " (and the restarted server was its replica again)"
        } else {
            ""
        },
        after.as_millis()
    );
    if wait {
        note.push_str("; cluster.redis_wait_replicas = 1");
    }
    let row = Row {
        scenario: scenario.to_string(),
        counts,
        detect_ms: first_log_ms(&ch.cluster, "serving local clients only", wall),
        recover_ms: flowing.then_some(recover.as_millis() as u64),
        note,
    };
    report(&row, &details, flowing, wait, || {
        format!(
            "the load was not acknowledged again within {RECOVER:?} of the Redis Cluster \
             failover\n{}",
            tail(&ch.cluster.node(0).stderr(), 4000)
        )
    });
}

// Invariant 6 on Redis Cluster, setting off: lost and duplicates are reported
// (replication is asynchronous, so a write acknowledged just before the kill can be
// lost: not asserted).
//
// This test was ignored until 2026-12-06 as "nodes do not follow a Redis Cluster
// failover". They did; the harness killed a master before its replica had finished
// its first sync (a replica without its master's data is never elected, so the
// cluster stayed down), and the wait took `fail?` (one node's suspicion) for the
// failover. The harness now waits for every replica's link, and the wait for the
// agreed `fail` flag and the slots moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_kill9_master_qos1() {
    alone_within(
        LIMIT,
        redis_cluster_failover_under_load(
            "r1. Redis Cluster: kill -9 of a master (3 masters + 3 replicas), QoS 1",
            "rc1",
            false,
        ),
    )
    .await;
}

// Invariant 1 through a Redis Cluster failover: with `cluster.redis_wait_replicas =
// 1` every inbox append and journal write a PUBACK depends on was confirmed by the
// replica of the master holding its slot, so the replica elected has it: lost = 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_kill9_master_qos1_wait_replicas() {
    alone_within(
        LIMIT,
        redis_cluster_failover_under_load(
            "r3. Redis Cluster: kill -9 of a master (3 masters + 3 replicas), QoS 1, \
             redis_wait_replicas = 1",
            "rc3",
            true,
        ),
    )
    .await;
}

/// `WAIT` calls answered by the Redis Cluster's servers so far (`INFO commandstats`).
fn wait_calls(c: &TestCluster) -> u64 {
    let Backend::Cluster(rc) = c.redis() else {
        unreachable!("a Redis Cluster test")
    };
    rc.servers
        .iter()
        .map(|s| {
            let stats = s.cmd(&["INFO", "commandstats"]).text();
            stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                .and_then(|v| v.split(',').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        })
        .sum()
}

// `cluster.redis_wait_replicas` on Redis Cluster: with the setting on, the masters
// answer `WAIT`s (one per forwarded batch, on the connection that wrote it); with it
// off, none. Sequential cross-node QoS 1 acknowledgement times are reported, as for
// Sentinel above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_wait_replicas_cost() {
    let _alone = SERIAL.lock().await;
    const N: usize = 300;
    let off = TestCluster::builder(2)
        .redis_cluster_with_replicas()
        .start()
        .await;
    let t_off = cross_node_ack_time(&off, N).await;
    assert_eq!(wait_calls(&off), 0, "WAIT sent with the setting off");
    drop(off);
    let config = wait_replicas_config();
    let path = config.path().to_str().unwrap().to_string();
    let on = TestCluster::builder(2)
        .redis_cluster_with_replicas()
        .args(&["--config", &path])
        .start()
        .await;
    let t_on = cross_node_ack_time(&on, N).await;
    let calls = wait_calls(&on);
    assert!(
        calls >= N as u64,
        "{calls} WAITs for {N} sequential cross-node QoS 1 messages: each PUBACK must wait \
         for its inbox append to be replicated"
    );
    println!(
        "Redis Cluster, cross-node QoS 1, {N} sequential messages: mean PUBLISH→PUBACK \
         {:.2} ms with redis_wait_replicas off, {:.2} ms with redis_wait_replicas = 1 \
         ({calls} WAITs)",
        t_off.as_secs_f64() * 1000.0,
        t_on.as_secs_f64() * 1000.0
    );
}

/// How many slots the server answering `CLUSTER NODES` serves (its `myself` line).
fn own_slots(nodes: &str) -> usize {
    let line = nodes.lines().find(|l| l.contains("myself")).unwrap_or("");
    line.split_whitespace()
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

// MOVED and ASK under load: `redis-cli --cluster reshard` moves 1,000 slots of one
// master to another while QoS 1 load runs (keys migrate one by one: commands meet
// `ASK` for keys already moved and `MOVED` once a slot is done). No server fails, so
// every acknowledged message must arrive (lost = 0), and the load is acknowledged
// throughout and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_reshard_under_load_loses_nothing() {
    alone_within(LIMIT, async {
        let ch = Chaos::start_with(TestCluster::builder(3).redis_cluster()).await;
        let load = Load::start(&ch, &LoadSpec::new("rc2", 1)).await;
        assert!(
            load.wait_more_acked(200, T).await,
            "load not flowing before the reshard"
        );
        let Backend::Cluster(rc) = ch.cluster.redis() else {
            unreachable!("a Redis Cluster test")
        };
        let id = |i: usize| rc.servers[i].cmd(&["CLUSTER", "MYID"]).text();
        let (from, to) = (id(1), id(0));
        let entry = rc.servers[0].addr().to_string();
        let before = own_slots(&rc.servers[1].cmd(&["CLUSTER", "NODES"]).text());
        let started = Instant::now();
        let out = tokio::process::Command::new(redis_tool("redis-cli"))
            .args(["--cluster", "reshard", &entry, "--cluster-from", &from])
            .args([
                "--cluster-to",
                &to,
                "--cluster-slots",
                "1000",
                "--cluster-yes",
            ])
            .output()
            .await
            .expect("run redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "reshard failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let moved_in = started.elapsed();
        let after = rc.servers[1].cmd(&["CLUSTER", "NODES"]).text();
        assert_eq!(
            own_slots(&after),
            before - 1000,
            "the source master's slots after the reshard:\n{after}"
        );
        let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVER).await;
        let (counts, details) = load.finish(SETTLE).await;
        let row = Row {
            scenario: "r2. Redis Cluster: 1,000 slots resharded under load, QoS 1".to_string(),
            counts,
            detect_ms: None,
            recover_ms: None,
            note: format!("the reshard took {} ms", moved_in.as_millis()),
        };
        row.emit();
        for d in &details {
            println!("  {d}");
        }
        assert!(flowing, "the load was not acknowledged after the reshard");
        assert_eq!(
            row.counts.lost,
            0,
            "invariant 1: acknowledged deliveries lost during a reshard:\n{}",
            details.join("\n")
        );
    })
    .await;
}
