//! The chaos suite (issue #6 item 3): faults injected into a real 3-node cluster (three
//! `astramq` processes, one `redis-server`, one `astramq lb` that follows gossip) while
//! clients keep publishing and receiving, and a table of what was acknowledged, lost
//! and duplicated.
//!
//! ```sh
//! cargo test -p astramq --test chaos -- --test-threads=1 --nocapture
//! scripts/chaos-report.sh        # the same, then renders docs/reliability.md
//! ```
//!
//! Every scenario starts a fresh cluster, is bounded by [`SCENARIO_LIMIT`], prints one
//! table row and appends it as JSON to `$CARGO_TARGET_TMPDIR/chaos.jsonl` (or
//! `$ASTRAMQ_CHAOS_OUT`) *before* asserting, so a failing scenario still reports its
//! numbers. The harness (load driver, balancer, counting) is `common/chaos/`.
//!
//! | scenario | fault | asserts |
//! |---|---|---|
//! | a | `kill -9` of one node under QoS 1 load | lost = 0, every session on the dead node resumes (Session Present 1) |
//! | b | the same at QoS 2 | lost = 0, duplicates = 0 |
//! | c | `kill -9` of a node while its clients are being taken over, and while two other nodes race for their ids | exactly one live connection per id, owner in Redis = its node, a later message received once |
//! | e | a node frozen (SIGSTOP) past the failure timeout, its client id taken over elsewhere, then SIGCONT | the stale connection never acts live, QoS 2 load: lost = 0, duplicates = 0 |
//! | f | rolling restart (SIGTERM, wait, start again) of all three nodes under QoS 1 load | lost = 0, every session moves with Session Present 1 |
//! | g | scenario a with the subscribers in one shared subscription group | lost = 0 (each message reaches a member) |
//! | h | the same at QoS 2 | lost = 0, duplicates = 0 (each message reaches one member once) |
//!
//! Scenario d (Redis stopped for 10 s) lives elsewhere.
//!
//! Lost and duplicates: a message counts once its publisher got PUBACK (QoS 1) or
//! PUBCOMP (QoS 2); every subscriber's session matched it (they all subscribe before
//! the first publish and never unsubscribe), so invariant 1 promises it to every one of
//! them. After the fault the suite waits, event-driven and bounded by [`SETTLE`], until
//! every subscriber has every acknowledged message; whatever is still missing then is
//! lost. Receipts of one message beyond the first by one subscriber are duplicates
//! (allowed at QoS 1, [MQTT-4.3.2]; forbidden at QoS 2, [MQTT-4.3.3]).

mod common;
#[path = "common/chaos/mod.rs"]
mod harness;

use std::time::{Duration, Instant, SystemTime};

use common::cluster::*;
use common::*;
use harness::*;

/// Upper bound of one scenario, cluster start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
/// How long a survivor may take to declare a killed or frozen node failed.
const DETECTION: Duration = Duration::from_secs(10);
/// How long the clients of a failed node may take to be served again.
const RECOVERY: Duration = Duration::from_secs(12);
/// After the load stops: how long acknowledged messages may take to arrive.
const SETTLE: Duration = Duration::from_secs(12);
/// How long scenario e keeps the node frozen (well past the ~2 s failure detection).
const FREEZE: Duration = Duration::from_secs(6);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs one scenario alone within [`SCENARIO_LIMIT`].
async fn bounded(f: impl std::future::Future<Output = ()>) {
    alone_within(SCENARIO_LIMIT, f).await
}

/// Prints the row, appends it to the JSON lines, and prints what is missing or
/// duplicated per subscriber.
fn emit(row: &Row, details: &[String]) {
    row.emit();
    for d in details {
        println!("  {d}");
    }
}

fn assert_counts(row: &Row, details: &[String], exactly_once: bool) {
    let c = &row.counts;
    assert!(c.acknowledged > 0, "no message was acknowledged: {c:?}");
    assert_eq!(
        c.lost,
        0,
        "invariant 1: {} acknowledged deliveries lost ({c:?}):\n{}",
        c.lost,
        details.join("\n")
    );
    if exactly_once {
        assert_eq!(
            c.duplicates,
            0,
            "[MQTT-4.3.3] QoS 2 is exactly once: {} duplicates ({c:?}):\n{}",
            c.duplicates,
            details.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// a, b: kill -9 of one node under load
// ---------------------------------------------------------------------------

/// Invariants 1 and 3: one of three nodes is SIGKILLed while four publishers send
/// 200 msg/s through the balancer to subscribers with persistent sessions on every
/// node. Survivors detect the failure, the dead node's clients reconnect through the
/// balancer to a survivor and resume their sessions (Session Present 1,
/// [MQTT-3.2.2-2] 3.1.1 / [MQTT-3.2.2-3] 5.0), and every acknowledged message reaches
/// every subscriber.
async fn kill_one_node_under_load(scenario: &str, spec: LoadSpec) {
    let qos = spec.qos;
    let mut ch = Chaos::start(3).await;
    let load = Load::start(&ch, &spec).await;
    assert!(
        load.wait_more_acked(200, T).await,
        "load not flowing before the fault"
    );
    let victim = 1;
    let on_victim = load.sessions_on(&ch.cluster, ch.cluster.id(victim));
    assert!(!on_victim.is_empty(), "no subscriber session on the victim");
    let pubs_on_victim = load.publishers_on(&ch.cluster, ch.cluster.id(victim));

    let (t0, wall) = (Instant::now(), SystemTime::now());
    ch.cluster.kill(victim);
    let recovered = load.wait_recovered(&on_victim, t0, RECOVERY).await;
    // Keep publishing once the dead node's clients are back (or given up on), so
    // messages published after recovery count too.
    let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVERY).await;
    let disconnects = load.disconnect_reasons();
    let (counts, missing) = load.finish(SETTLE).await;
    let detect = detect_ms(&ch.cluster, victim, wall);
    let row = Row {
        scenario: scenario.to_string(),
        counts,
        detect_ms: detect,
        recover_ms: recovered.as_ref().ok().map(|d| ms(*d)),
        note: note(
            &recovered,
            flowing,
            &disconnects,
            &on_victim,
            &pubs_on_victim,
        ),
    };
    emit(&row, &missing);
    assert!(
        detect.is_some(),
        "invariant 3: no survivor logged {} failed",
        ch.cluster.id(victim)
    );
    assert_counts(&row, &missing, qos == 2);
    recovered.expect("invariant 1: the dead node's persistent sessions resume elsewhere");
    assert!(flowing, "load did not flow again after the kill");
}

fn note(
    recovered: &Result<Duration, String>,
    flowing: bool,
    disconnects: &std::collections::BTreeMap<u8, usize>,
    subs_on_victim: &[String],
    pubs_on_victim: &[String],
) -> String {
    let mut n = vec![format!(
        "sessions on the failed node: subscribers {subs_on_victim:?}, publishers \
         {pubs_on_victim:?}"
    )];
    if let Err(e) = recovered {
        n.push(e.clone());
    }
    if !flowing {
        n.push("load did not flow again".to_string());
    }
    if !disconnects.is_empty() {
        n.push(format!(
            "server DISCONNECTs (reason: count) {disconnects:?}"
        ));
    }
    n.join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill9_one_of_three_under_qos1_load() {
    bounded(kill_one_node_under_load(
        "a. kill -9, QoS 1",
        LoadSpec::new("a", 1),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_kill9_one_of_three_under_qos2_load() {
    bounded(kill_one_node_under_load(
        "b. kill -9, QoS 2",
        LoadSpec::new("b", 2),
    ))
    .await
}

/// Scenario a with the subscribers as the members of one shared subscription group
/// (`$share/g/chaos/g/#`, persistent MQTT 5 sessions on every node): each acknowledged
/// message must reach at least one member, also those routed to the killed node's
/// members before and after it died ([MQTT-4.8.2], invariant 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_kill9_shared_group_under_qos1_load() {
    let spec = LoadSpec {
        shared_group: Some("g".to_string()),
        ..LoadSpec::new("g", 1)
    };
    bounded(kill_one_node_under_load(
        "g. kill -9, shared group, QoS 1",
        spec,
    ))
    .await
}

/// Scenario g at QoS 2: each acknowledged message reaches exactly one member once
/// ([MQTT-4.3.3], [MQTT-4.8.2]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_kill9_shared_group_under_qos2_load() {
    let spec = LoadSpec {
        shared_group: Some("g".to_string()),
        ..LoadSpec::new("h", 2)
    };
    bounded(kill_one_node_under_load(
        "h. kill -9, shared group, QoS 2",
        spec,
    ))
    .await
}

// ---------------------------------------------------------------------------
// d: Redis stopped under load
// ---------------------------------------------------------------------------

/// How long scenario d keeps Redis down.
const REDIS_DOWN: Duration = Duration::from_secs(10);

/// Invariants 6 and 1: Redis is stopped (`SHUTDOWN SAVE`) for 10 s under QoS 1 load,
/// then started again on the same port. Meanwhile nodes keep serving: what needs
/// Redis (new connections, copies for other nodes, deliveries to persistent
/// sessions, which are journaled) is refused with a reason code (0x88 / 0x80, or a
/// 3.1.1 publisher is disconnected so it resends), so nothing refused counts as
/// acknowledged. Once Redis is back, traffic resumes with no restart and every
/// message acknowledged before, during or after the outage reaches every subscriber.
/// Detect = first "redis unreachable" log line after the stop; recover = from the
/// restart until the load is acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_redis_stopped_10s_under_qos1_load() {
    bounded(async {
        let mut ch = Chaos::start(3).await;
        let load = Load::start(&ch, &LoadSpec::new("d", 1)).await;
        assert!(
            load.wait_more_acked(200, T).await,
            "load not flowing before the fault"
        );
        let wall = SystemTime::now();
        ch.cluster.redis_server().shutdown(true);
        // The fault lasts REDIS_DOWN: this sleep is the fault, not a wait for an outcome.
        tokio::time::sleep(REDIS_DOWN).await;
        ch.cluster.redis_server().restart();
        let back = Instant::now();
        let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVERY).await;
        let recover = back.elapsed();
        let disconnects = load.disconnect_reasons();
        let (counts, missing) = load.finish(SETTLE).await;
        let mut note = format!("Redis down {} s", REDIS_DOWN.as_secs());
        if !disconnects.is_empty() {
            note.push_str(&format!(
                "; server DISCONNECTs (reason: count) {disconnects:?}"
            ));
        }
        let row = Row {
            scenario: "d. Redis stopped 10 s, QoS 1".to_string(),
            counts,
            detect_ms: first_log_ms(&ch.cluster, "serving local clients only", wall),
            recover_ms: flowing.then(|| ms(recover)),
            note,
        };
        emit(&row, &missing);
        assert!(
            row.detect_ms.is_some(),
            "invariant 6: no node said Redis was unreachable"
        );
        assert_counts(&row, &missing, false);
        assert!(
            flowing,
            "invariant 6: traffic did not resume after Redis came back"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// c: kill -9 during takeover; racing connects
// ---------------------------------------------------------------------------

/// One client id's contenders: (node index, connection, CONNACK).
struct Contest {
    id: String,
    conns: Vec<(usize, RawClient, Option<Connack>)>,
}

/// Invariant 2: waits until exactly one of the contenders is live and returns its
/// index in `conns`; checks the loser got 0x8E if it had been accepted (MQTT 5,
/// [MQTT-3.1.4-3]) and Redis names the winner's node as the owner.
async fn one_live(c: &TestCluster, k: &mut Contest) -> usize {
    let deadline = Instant::now() + 2 * T;
    let mut discs = vec![Vec::new(); k.conns.len()];
    let winner = loop {
        let mut live = Vec::new();
        for (j, (_, conn, ack)) in k.conns.iter_mut().enumerate() {
            let accepted = ack.as_ref().is_some_and(|a| a.code == 0);
            let up = accepted
                && answers_ping(conn, &mut discs[j])
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", k.id));
            if up {
                live.push(j);
            }
        }
        match live.as_slice() {
            [w] => break *w,
            [] => panic!("{}: no live connection left", k.id),
            _ => assert!(
                Instant::now() < deadline,
                "{}: {} live connections {:?} after the contest",
                k.id,
                live.len(),
                2 * T
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (j, (_, _, ack)) in k.conns.iter().enumerate() {
        if j != winner && ack.as_ref().is_some_and(|a| a.code == 0) {
            assert!(
                discs[j].iter().all(|&r| r == rc::SESSION_TAKEN_OVER),
                "{}: the accepted loser is told 0x8E, got {:?}",
                k.id,
                discs[j]
            );
        }
    }
    let node = k.conns[winner].0;
    assert_eq!(
        c.session_owner(&k.id).as_deref(),
        Some(c.id(node)),
        "{}: Redis owner is the node of the live connection",
        k.id
    );
    winner
}

/// The next PUBLISH within `t`, acknowledged.
async fn recv(c: &mut RawClient, t: Duration) -> Option<Publish> {
    c.next_publish_acked(t).await.ok()
}

/// Session consistency after a contest: the winner re-subscribes only if its session
/// is new; a QoS 1 message published afterwards on another node is received exactly
/// once. Returns (session present, receipts).
async fn probe_once(
    c: &TestCluster,
    k: &mut Contest,
    winner: usize,
    publisher: &mut RawClient,
    round: &str,
) -> (bool, u32) {
    let (node, conn, ack) = &mut k.conns[winner];
    let present = ack.as_ref().unwrap().session_present;
    let topic = format!("chaos/c/{}", k.id);
    if !present {
        conn.sub(&topic, 1).await;
    }
    c.sync_from(*node).await;
    let payload = format!("{round}:{}", k.id);
    publisher
        .publish(&topic, payload.as_bytes(), 1, false)
        .await;
    let mut n = 0;
    // Once within T, then nothing more for ABSENCE.
    let mut t = T;
    while let Some(p) = recv(conn, t).await {
        assert_eq!(p.payload_str(), payload, "{}: unexpected message", k.id);
        n += 1;
        t = ABSENCE;
    }
    (present, n)
}

/// Invariant 2 under a crash. Twelve persistent clients (MQTT 5) live on n1. At once:
/// six of them connect again on n2 (a takeover: n2 claims the id and asks n1 for the
/// session), the other six connect on n2 *and* n3 simultaneously (two nodes racing
/// for one id), and n1 is SIGKILLed right after the CONNECTs are written, so it dies
/// in the middle of the takeovers. For every id: exactly one live connection, the
/// owner in Redis is its node, and a message published afterwards is received once.
/// Then the twelve ids race again between n2 and n3 (no crash): exactly one live
/// connection each, and now the session must be kept (Session Present 1,
/// [MQTT-3.1.4-3] / [MQTT-3.2.2-3]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_kill9_during_takeover_and_racing_connects() {
    bounded(async {
        let mut c = TestCluster::start(3).await;
        let v = Version::V5;
        let persistent = |id: &str| Connect::persistent(v, id, false, EXPIRY);
        let ids: Vec<String> = (0..12).map(|k| format!("chaos-c-{k}")).collect();
        let mut olds = Vec::new();
        for id in &ids {
            let mut cl = RawClient::connect_ok(c.node(0).addr(), persistent(id)).await;
            cl.sub(&format!("chaos/c/{id}"), 1).await;
            olds.push(cl);
        }
        c.sync_from(0).await;

        // Every contender's socket is opened first, then the CONNECTs are written back
        // to back (the two racers of one id microseconds apart) and n1 dies at once.
        let (n2, n3) = (c.node(1).addr(), c.node(2).addr());
        let mut written = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            let targets = if k < 6 {
                vec![(1, n2)]
            } else {
                vec![(1, n2), (2, n3)]
            };
            let mut writes = Vec::new();
            for (node, addr) in targets {
                let mut cl = RawClient::tcp(addr).await;
                cl.version = v;
                writes.push((node, cl));
            }
            written.push((id.clone(), writes));
        }
        for (id, writes) in &mut written {
            let bytes = persistent(id).encode();
            for (_, cl) in writes.iter_mut() {
                cl.send(&bytes).await;
            }
        }
        let (t0, wall) = (Instant::now(), SystemTime::now());
        c.kill(0);
        drop(olds);

        // Every CONNACK (the claimer may wait for the dead owner's handover first).
        let mut contests = Vec::new();
        for (id, writes) in written {
            let mut conns = Vec::new();
            for (node, mut cl) in writes {
                let ack = match cl.read(2 * T).await {
                    Ok(Packet::Connack(a)) => Some(a),
                    Ok(other) => panic!("{id}: expected CONNACK, got {other:?}"),
                    Err(_) => None,
                };
                conns.push((node, cl, ack));
            }
            contests.push(Contest { id, conns });
        }
        // Recovery: every contender has its answer (the claimers may have waited for
        // the dead owner's handover).
        let recover = t0.elapsed();
        let mut publisher = c.client(2, Version::V311, "chaos-c-pub").await;
        let mut counts = Counts::default();
        let mut winners = Vec::new();
        for k in &mut contests {
            let w = one_live(&c, k).await;
            let (present, n) = probe_once(&c, k, w, &mut publisher, "after-kill").await;
            counts.acknowledged += 1;
            counts.expected += 1;
            counts.received += u64::from(n.min(1));
            counts.duplicates += u64::from(n.saturating_sub(1));
            counts.sessions_lost += u64::from(!present);
            winners.push(w);
        }
        let detect = detect_ms(&c, 0, wall);

        // The same ids race again between the two survivors, no crash this time: the
        // sessions exist on a live node, so they must be kept.
        drop(contests);
        let mut again = Vec::new();
        for id in &ids {
            let id = id.clone();
            let p = persistent(&id);
            let q = persistent(&id);
            let ((ca, aa), (cb, ab)) =
                tokio::join!(try_connect(n2, p, 2 * T), try_connect(n3, q, 2 * T));
            again.push(Contest {
                id,
                conns: vec![(1, ca, aa), (2, cb, ab)],
            });
        }
        let mut kept_lost = Vec::new();
        for k in &mut again {
            let w = one_live(&c, k).await;
            let (present, n) = probe_once(&c, k, w, &mut publisher, "after-race").await;
            counts.acknowledged += 1;
            counts.expected += 1;
            counts.received += u64::from(n.min(1));
            counts.duplicates += u64::from(n.saturating_sub(1));
            if !present {
                kept_lost.push(k.id.clone());
            }
        }
        counts.sessions_lost += kept_lost.len() as u64;
        // What the two nodes did with each lost session, for whoever investigates.
        for id in &kept_lost {
            let needle = format!("client_id={id} ");
            for i in 1..3 {
                for l in c.node(i).stderr().lines().filter(|l| l.contains(&needle)) {
                    println!("  {}: {l}", c.id(i));
                }
            }
        }
        counts.lost = counts.expected - counts.received;
        let row = Row {
            scenario: "c. kill -9 during takeover, racing connects".to_string(),
            counts: counts.clone(),
            detect_ms: detect,
            recover_ms: Some(ms(recover)),
            note: if kept_lost.is_empty() {
                String::new()
            } else {
                format!("sessions lost in the race without a crash: {kept_lost:?}")
            },
        };
        row.emit();
        assert!(
            detect.is_some(),
            "invariant 3: no survivor logged n1 failed"
        );
        assert_eq!(counts.lost, 0, "a probe was not received: {counts:?}");
        assert_eq!(
            counts.duplicates, 0,
            "a probe was received twice: {counts:?}"
        );
        assert!(
            kept_lost.is_empty(),
            "[MQTT-3.1.4-3]/invariant 2: racing connects between live nodes lost the \
             session of {kept_lost:?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// e: SIGSTOP past the failure timeout, then SIGCONT
// ---------------------------------------------------------------------------

/// Invariants 1–3 for a node that was declared dead but was only paused (issue #6
/// item 1, "a node that comes back"). Under QoS 2 load through the balancer, node n3
/// is frozen with SIGSTOP. While it is frozen and declared failed, a client whose
/// connection is held *directly* by n3 (so no balancer can close it) connects again
/// on n1 and takes its id over. n3 is resumed after [`FREEZE`]. The stale connection
/// on n3 must then not act as a live one: it gets DISCONNECT 0x8E or is closed, never
/// a PINGRESP and never a PUBLISH ([MQTT-3.1.4-3], invariant 2); the new one receives a
/// QoS 2 message once; and the QoS 2 load loses and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_sigstop_past_failure_timeout_then_sigcont() {
    bounded(async {
        let ch = Chaos::start(3).await;
        let load = Load::start(&ch, &LoadSpec::new("e", 2)).await;
        let c = &ch.cluster;
        let victim = 2;
        let direct_id = "chaos-e-direct";
        let topic = "chaos/e-direct/x";
        let v = Version::V5;
        let mut stale = RawClient::connect_ok(
            c.node(victim).addr(),
            Connect::persistent(v, direct_id, false, EXPIRY),
        )
        .await;
        stale.sub("chaos/e-direct/#", 2).await;
        c.sync_from(victim).await;
        assert!(
            load.wait_more_acked(200, T).await,
            "load not flowing before the fault"
        );
        let on_victim = load.sessions_on(c, c.id(victim));
        assert!(!on_victim.is_empty(), "no subscriber session on the victim");
        let pubs_on_victim = load.publishers_on(c, c.id(victim));

        let (t0, wall) = (Instant::now(), SystemTime::now());
        c.pause(victim);
        let token = format!("node={}", c.id(victim));
        c.wait_log(0, DETECTION, "n3 declared failed", |l| {
            l.contains("node failed") && l.split_whitespace().any(|w| w == token)
        })
        .await;
        // Take the id over on n1 while n3 is frozen.
        let (mut fresh, ack) = try_connect(
            c.node(0).addr(),
            Connect::persistent(v, direct_id, false, EXPIRY),
            2 * T,
        )
        .await;
        let ack = ack.expect("CONNACK for the takeover while n3 is frozen");
        assert_eq!(ack.code, 0, "takeover refused: {ack:?}");
        let direct_session_lost = !ack.session_present;
        if direct_session_lost {
            fresh.sub("chaos/e-direct/#", 2).await;
        }
        // The fault lasts FREEZE: this sleep is the fault, not a wait for an outcome.
        tokio::time::sleep_until((t0 + FREEZE).into()).await;
        c.resume(victim);

        // While the stale connection is watched for T, the new one is checked and a
        // QoS 2 message goes to the id: only the new connection may get it.
        let (fate, (got, again)) = tokio::join!(stale_fate(&mut stale), async {
            fresh.ping().await;
            c.sync_from(0).await;
            let mut p = c.client(1, Version::V5, "chaos-e-probe").await;
            p.publish(topic, b"after-resume", 2, false).await;
            let got = recv(&mut fresh, T).await;
            (got, recv(&mut fresh, ABSENCE).await)
        });

        let recovered = load.wait_recovered(&on_victim, t0, RECOVERY).await;
        let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVERY).await;
        let disconnects = load.disconnect_reasons();
        let (counts, missing) = load.finish(SETTLE).await;
        let detect = detect_ms(c, victim, wall);
        let mut n = note(
            &recovered,
            flowing,
            &disconnects,
            &on_victim,
            &pubs_on_victim,
        );
        if !fate.ok() {
            n.push_str(&format!(
                "; stale connection on the resumed node: {}",
                fate.describe()
            ));
        }
        if direct_session_lost {
            n.push_str("; the direct client's takeover got Session Present 0");
        }
        let row = Row {
            scenario: "e. SIGSTOP 6 s, SIGCONT, QoS 2".to_string(),
            counts,
            detect_ms: detect,
            recover_ms: recovered.as_ref().ok().map(|d| ms(*d)),
            note: n.trim_start_matches("; ").to_string(),
        };
        emit(&row, &missing);
        assert!(
            fate.ok(),
            "invariant 2, [MQTT-3.1.4-3]: after SIGCONT the connection {} holds for a \
             taken-over id must be closed (v5: DISCONNECT 0x8E), not served: {}",
            c.id(victim),
            fate.describe()
        );
        assert_eq!(
            got.map(|p| p.payload_str()).as_deref(),
            Some("after-resume"),
            "the new connection receives the message"
        );
        assert!(again.is_none(), "[MQTT-4.3.3] received twice: {again:?}");
        assert_counts(&row, &missing, true);
        recovered.expect("the frozen node's persistent sessions resume elsewhere");
        assert!(flowing, "load did not flow again after the freeze");
    })
    .await
}

// ---------------------------------------------------------------------------
// f: rolling restart
// ---------------------------------------------------------------------------

/// Issue #6 item 3f and issue #5 item 4 (drain): under QoS 1 load through the
/// balancer, each node in turn gets SIGTERM (it leaves the balancer's rotation, asks
/// its clients to move — v5 DISCONNECT 0x9C — and hands their sessions over), exits 0,
/// and starts again with the same node id; the next node goes only once the balancer
/// routes to the restarted one. Every session moves with Session Present 1 and no
/// acknowledged message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_rolling_restart_under_qos1_load() {
    bounded(async {
        let mut ch = Chaos::start(3).await;
        let load = Load::start(&ch, &LoadSpec::new("f", 1)).await;
        assert!(
            load.wait_more_acked(200, T).await,
            "load not flowing before the restarts"
        );
        let mut worst = Duration::ZERO;
        let mut problems = Vec::new();
        for k in 0..3 {
            let id = ch.cluster.id(k).to_string();
            let on_k = load.sessions_on(&ch.cluster, &id);
            let runs = ch.lb.ups(&id);
            let t0 = Instant::now();
            let st = ch.cluster.stop(k).await;
            assert!(st.success(), "{id}: SIGTERM exits 0, got {st}");
            match load.wait_recovered(&on_k, t0, RECOVERY).await {
                Ok(d) => worst = worst.max(d),
                Err(e) => problems.push(format!("{id}: {e}")),
            }
            ch.cluster.restart(k).await;
            ch.cluster.wait_formed().await;
            ch.wait_lb_routes_to(k, runs + 1).await;
            if !load.wait_more_acked(100, RECOVERY).await {
                problems.push(format!("load did not flow after restarting {id}"));
            }
        }
        let disconnects = load.disconnect_reasons();
        let (counts, missing) = load.finish(SETTLE).await;
        let mut n = problems.clone();
        if !disconnects.is_empty() {
            n.push(format!(
                "server DISCONNECTs (reason: count) {disconnects:?}"
            ));
        }
        let row = Row {
            scenario: "f. rolling restart, QoS 1".to_string(),
            counts,
            detect_ms: None,
            recover_ms: problems.is_empty().then(|| ms(worst)),
            note: n.join("; "),
        };
        emit(&row, &missing);
        assert_counts(&row, &missing, false);
        assert!(problems.is_empty(), "{problems:?}");
    })
    .await
}
