//! Network partitions (issue #11 item 3; DESIGN invariants 1, 2 and 7): real network
//! faults made by the test itself — iptables rules on the loopback ports of the
//! processes it started, and a UDP relay that delays gossip — in a real 3-node cluster
//! behind `astramq lb`, under the chaos suite's QoS 1 load.
//!
//! ```sh
//! cargo test -p astramq --test partition -- --test-threads=1 --nocapture
//! ```
//!
//! | scenario | fault | asserts |
//! |---|---|---|
//! | p1 | `n2`'s gossip cut both ways (it still reaches Redis and its clients) | lost = 0; a client id held on `n2` connecting on `n1` meanwhile is taken over cleanly: `n2`'s connection is closed (0x8E) before `n1` accepts, never two live |
//! | p2 | `n2` cut off from Redis (it still gossips and serves its clients) | lost = 0; the same id on `n1` is refused (0x88) while `n2` cannot hand the session over, and taken over cleanly once the cut heals |
//! | p3 | asymmetric: `n2` hears `n1`, `n1` does not hear `n2` | lost = 0; the takeover is clean |
//! | p4 | 5 % loss and 50 ms delay on every node's gossip for 8 s | lost = 0; the takeover is clean; false failure declarations counted |
//! | p5 | `n2` cut off from gossip *and* Redis, its clients still reach it | lost = 0; the survivors repair `n2` and the id moves to `n1`; `n2`'s old connection is held (never answers) from the moment its lease ends, and closed (0x8E) after the heal |
//!
//! Each scenario prints a table row (and appends it to the chaos suite's JSON lines)
//! before asserting. Detect = from the fault to the first line saying so (a survivor's
//! "node failed" for gossip faults, "redis unreachable" for p2); recover = from the
//! heal until `n1` sees `n2` up again (gossip faults) or `n2` says Redis is reachable
//! again (p2), and the load is acknowledged again.
//!
//! The rules touch only loopback (`-i lo`) and name the test's own ports; they are
//! removed when the scenario ends, also on failure (`common/netfault.rs`).

mod common;
#[path = "common/chaos/mod.rs"]
mod harness;
#[path = "common/netfault.rs"]
mod netfault;

use std::time::{Duration, Instant, SystemTime};

use common::cluster::*;
use common::*;
use harness::*;
use netfault::{Firewall, UdpDelay};

/// Upper bound of one scenario, cluster start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
/// How long each partition lasts: past failure detection (~2 s), the liveness TTL
/// (2 s) and the handover wait (3 s).
const HOLD: Duration = Duration::from_secs(8);
/// How long the cluster may take to be whole again after a heal.
const RECOVERY: Duration = Duration::from_secs(15);
/// After the load stops: how long acknowledged messages may take to arrive.
const SETTLE: Duration = Duration::from_secs(15);

/// The partitioned node (`n2`) and the node a client id moves to (`n1`).
const CUT: usize = 1;
const OTHER: usize = 0;

/// Runs one scenario alone within [`SCENARIO_LIMIT`].
async fn bounded(f: impl std::future::Future<Output = ()>) {
    alone_within(SCENARIO_LIMIT, f).await
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The last `n` lines of a log, without the Redis client's chatter.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" redis::")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of node `i`'s log that satisfy `pred`.
fn log_count(c: &TestCluster, i: usize, pred: impl Fn(&str) -> bool) -> usize {
    c.node(i).stderr().lines().filter(|l| pred(l)).count()
}

/// Whether a log line is node `i`'s gossip seeing `id` come up.
fn sees_up(line: &str, id: &str) -> bool {
    line.contains(&format!("Up(Member {{ node_id: \"{id}\""))
}

/// A persistent MQTT 5 client connected directly to node `on`, subscribed, whose id
/// is then claimed on another node during the partition (invariant 7 on the wire).
struct Witness {
    id: String,
    conn: RawClient,
    /// The old connection after a move, when its node held it (a fenced node answers
    /// nothing) instead of closing it: it must be closed once the partition heals.
    held: Option<RawClient>,
}

impl Witness {
    async fn connect(c: &TestCluster, on: usize, tag: &str) -> Witness {
        let id = format!("part-{tag}-witness");
        let mut conn = RawClient::connect_ok(
            c.node(on).addr(),
            Connect::persistent(Version::V5, &id, false, EXPIRY),
        )
        .await;
        conn.sub(&format!("part/{tag}/witness/#"), 1).await;
        c.sync_from(on).await;
        Witness {
            id,
            conn,
            held: None,
        }
    }

    /// Connects the same id on node `to`. Accepted: the old connection must already
    /// be closed (a PINGREQ on it gets no answer, at most DISCONNECT 0x8E first,
    /// [MQTT-3.1.4-3]); returns true. Refused: it must say 0x88 Server unavailable and
    /// the old connection must still be the live one; returns false (the caller
    /// tries again after the heal).
    async fn move_to(&mut self, c: &TestCluster, to: usize) -> bool {
        let (fresh, ack) = try_connect(
            c.node(to).addr(),
            Connect::persistent(Version::V5, &self.id, false, EXPIRY),
            3 * T,
        )
        .await;
        let ack = ack.unwrap_or_else(|| panic!("{}: no CONNACK on {}", self.id, c.id(to)));
        if ack.code != 0 {
            assert_eq!(
                ack.code,
                rc::SERVER_UNAVAILABLE,
                "{}: a refused takeover says Server unavailable: {ack:?}",
                self.id
            );
            let mut discs = Vec::new();
            let live = answers_ping(&mut self.conn, &mut discs).await;
            assert_eq!(
                live,
                Ok(true),
                "{}: the takeover was refused, so the old connection must still be served",
                self.id
            );
            return false;
        }
        let fate = stale_fate(&mut self.conn).await;
        // Closed, or held by a node that fenced itself: never answering, never
        // delivering.
        let held = fate.closed_after.is_none();
        assert!(
            fate.ok() || (held && !fate.answered_ping && fate.publishes == 0),
            "invariant 7, [MQTT-3.1.4-3]: {} was accepted on {} while its old connection \
             lived on: {}\n--- {} log (last lines) ---\n{}",
            self.id,
            c.id(to),
            fate.describe(),
            c.id(CUT),
            tail(&c.node(CUT).stderr(), 40)
        );
        assert_eq!(
            c.session_owner(&self.id).as_deref(),
            Some(c.id(to)),
            "{}: Redis names the new connection's node as the owner",
            self.id
        );
        let old = std::mem::replace(&mut self.conn, fresh);
        if held {
            self.held = Some(old);
        }
        true
    }

    /// After the heal: a connection its node held must now be closed (0x8E at most),
    /// still without answering.
    async fn held_connection_closed(&mut self) {
        if let Some(mut old) = self.held.take() {
            let fate = stale_fate(&mut old).await;
            assert!(
                fate.ok(),
                "{}: the connection held during the partition must be closed after the \
                 heal, never served: {}",
                self.id,
                fate.describe()
            );
        }
    }
}

/// What one scenario does to the network, and how it is observed.
struct Fault {
    scenario: &'static str,
    tag: &'static str,
    /// A log line of `observer` saying it saw the fault (None: nothing to see).
    detect: Option<fn(&str) -> bool>,
    /// A log line of `observer` saying the cluster is whole again, awaited after the
    /// heal when `detect` was seen.
    recovered: fn(&str) -> bool,
    /// Whose log `detect` and `recovered` read.
    observer: usize,
}

/// The first line of node `i`'s log at or after `since` satisfying `pred`, as the time
/// since `since`.
fn first_line_after(
    c: &TestCluster,
    i: usize,
    since: SystemTime,
    pred: impl Fn(&str) -> bool,
) -> Option<Duration> {
    c.node(i)
        .stderr()
        .lines()
        .filter(|l| pred(l))
        .filter_map(|l| parse_log_time(l.split_whitespace().next()?))
        .find(|t| *t >= since)
        .and_then(|t| t.duration_since(since).ok())
}

/// Runs a fault (applied by `apply`, healed when what it returns is dropped) for
/// [`HOLD`] under QoS 1 load, moves a client id from `n2` to `n1` meanwhile, and
/// checks lost = 0 and at most one live connection per client id.
async fn partition_under_load<G>(
    f: Fault,
    builder: ClusterBuilder,
    relays: Vec<UdpDelay>,
    apply: impl FnOnce(&Chaos, &[UdpDelay]) -> G,
) {
    let ch = Chaos::start_with(builder).await;
    let c = &ch.cluster;
    let load = Load::start(&ch, &LoadSpec::new(f.tag, 1)).await;
    let mut witness = Witness::connect(c, CUT, f.tag).await;
    assert!(
        load.wait_more_acked(200, T).await,
        "load not flowing before the fault"
    );
    let recovered_before = log_count(c, f.observer, f.recovered);

    let (t0, wall) = (Instant::now(), SystemTime::now());
    let guard = apply(&ch, &relays);
    // Let the fault take effect (failure detection, liveness expiry) before the move;
    // the move itself is at most HOLD / 2 into the fault either way.
    if let Some(detect) = f.detect {
        wait_until(HOLD / 2, || {
            first_line_after(c, f.observer, wall, detect).is_some()
        })
        .await;
    } else {
        tokio::time::sleep(HOLD / 2).await;
    }
    let moved_during = witness.move_to(c, OTHER).await;
    // The fault lasts HOLD: this sleep is the fault, not a wait for an outcome.
    tokio::time::sleep_until((t0 + HOLD).into()).await;
    drop(guard);
    for r in &relays {
        r.set_delay(Duration::ZERO);
    }
    let healed = Instant::now();
    let detect = f
        .detect
        .and_then(|d| first_line_after(c, f.observer, wall, d));
    let whole = detect.is_none()
        || wait_until(RECOVERY, || {
            log_count(c, f.observer, f.recovered) > recovered_before
        })
        .await;
    let flowing = load.wait_more_acked(AFTER_RECOVERY, RECOVERY).await;
    let recover = healed.elapsed();
    witness.held_connection_closed().await;
    if !moved_during {
        assert!(
            witness.move_to(c, OTHER).await,
            "{}: the takeover refused during the partition must succeed after the heal\n{}",
            witness.id,
            (0..c.len())
                .flat_map(|i| {
                    c.node(i)
                        .stderr()
                        .lines()
                        .filter(|l| l.contains(&witness.id))
                        .map(|l| format!("[{}] {l}", c.id(i)))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let disconnects = load.disconnect_reasons();
    let (counts, missing) = load.finish(SETTLE).await;
    let failures = (0..c.len())
        .map(|i| log_count(c, i, |l| l.contains("node failed")))
        .sum::<usize>();
    let mut note = vec![
        format!(
            "witness moved {}",
            if moved_during {
                "during the partition"
            } else {
                "after the heal (refused 0x88 during it)"
            }
        ),
        format!("failure declarations logged: {failures}"),
    ];
    if !disconnects.is_empty() {
        note.push(format!(
            "server DISCONNECTs (reason: count) {disconnects:?}"
        ));
    }
    let row = Row {
        scenario: f.scenario.to_string(),
        counts,
        detect_ms: detect.map(ms),
        recover_ms: (whole && flowing).then(|| ms(recover)),
        note: note.join("; "),
    };
    row.emit();
    if let (Some(dir), true) = (std::env::var_os("PARTITION_LOGS"), row.counts.lost > 0) {
        // Every node's log, for looking into a loss afterwards.
        for i in 0..c.len() {
            let path = std::path::Path::new(&dir).join(format!("{}-{}.log", f.tag, c.id(i)));
            let _ = std::fs::write(path, c.node(i).stderr());
            let inbox = c.key(&format!("{{inbox:{}}}", c.id(i)));
            let info = format!(
                "XLEN {:?}\nXINFO GROUPS {:?}\nXPENDING {:?}\n",
                c.redis().cmd(&["XLEN", &inbox]),
                c.redis().cmd(&["XINFO", "GROUPS", &inbox]),
                c.redis().cmd(&["XPENDING", &inbox, "astramq"]),
            );
            let path = std::path::Path::new(&dir).join(format!("{}-{}.redis", f.tag, c.id(i)));
            let _ = std::fs::write(path, info);
        }
    }
    if std::env::var_os("PARTITION_DEBUG").is_some() {
        for i in 0..c.len() {
            for l in c.node(i).stderr().lines().filter(|l| {
                l.contains("failed")
                    || l.contains("uspect")
                    || l.contains("Down")
                    || l.contains("declared")
            }) {
                println!("  [{}] {}", c.id(i), &l[..l.len().min(260)]);
            }
        }
    }
    for m in &missing {
        println!("  {m}");
    }
    let k = &row.counts;
    assert!(k.acknowledged > 0, "nothing acknowledged: {k:?}");
    assert_eq!(
        k.lost,
        0,
        "invariants 1 and 7: {} acknowledged deliveries lost ({k:?}):\n{}",
        k.lost,
        missing.join("\n")
    );
    assert!(
        whole,
        "the cluster was not whole again within {RECOVERY:?} of the heal"
    );
    assert!(flowing, "load did not flow again after the heal");
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn n2_failed(l: &str) -> bool {
    l.contains("node failed") && l.split_whitespace().any(|w| w == "node=n2")
}

fn n2_up(l: &str) -> bool {
    sees_up(l, "n2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_gossip_cut_node_still_reaches_redis() {
    bounded(async {
        let f = Fault {
            scenario: "p1. gossip cut (n2), Redis reachable, QoS 1",
            tag: "p1",
            detect: Some(n2_failed),
            recovered: n2_up,
            observer: OTHER,
        };
        partition_under_load(f, TestCluster::builder(3), Vec::new(), |ch, _| {
            let mut fw = Firewall::new();
            fw.cut_udp_port(ch.cluster.node(CUT).gossip_addr().port());
            fw
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_redis_cut_node_still_gossips_and_serves() {
    bounded(async {
        let f = Fault {
            scenario: "p2. Redis cut (n2), gossip and clients reachable, QoS 1",
            tag: "p2",
            detect: Some(|l| l.contains("serving local clients only")),
            recovered: |l| l.contains("redis reachable again"),
            observer: CUT,
        };
        let builder = TestCluster::builder(3).redis_address_per_node();
        partition_under_load(f, builder, Vec::new(), |ch, _| {
            let mut fw = Firewall::new();
            fw.cut_tcp(ch.cluster.redis_addr_of(CUT));
            fw
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_node_cut_from_gossip_and_redis_still_reaching_its_clients() {
    bounded(async {
        let f = Fault {
            scenario: "p5. gossip and Redis cut (n2), clients reach it, QoS 1",
            tag: "p5",
            // n2 is declared failed and repaired: its sessions move to a survivor.
            detect: Some(|l| {
                l.contains("took over a failed node's sessions")
                    && l.split_whitespace().any(|w| w == "node=n2")
            }),
            recovered: n2_up,
            observer: OTHER,
        };
        let builder = TestCluster::builder(3).redis_address_per_node();
        partition_under_load(f, builder, Vec::new(), |ch, _| {
            let c = &ch.cluster;
            let mut fw = Firewall::new();
            fw.cut_udp_port(c.node(CUT).gossip_addr().port());
            fw.cut_tcp(c.redis_addr_of(CUT));
            fw
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_asymmetric_gossip_n1_does_not_hear_n2() {
    bounded(async {
        let f = Fault {
            scenario: "p3. asymmetric gossip cut (n1 does not hear n2), QoS 1",
            tag: "p3",
            // SWIM's indirect probes may keep n2 up: a declared failure is allowed,
            // not required.
            detect: Some(n2_failed),
            recovered: n2_up,
            observer: OTHER,
        };
        partition_under_load(f, TestCluster::builder(3), Vec::new(), |ch, _| {
            let c = &ch.cluster;
            let mut fw = Firewall::new();
            fw.cut_udp_one_way(
                c.node(CUT).gossip_addr().port(),
                c.node(OTHER).gossip_addr().port(),
            );
            fw
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4_gossip_loss_5pct_and_delay_50ms() {
    bounded(async {
        // Every node gossips through a relay (advertised), which adds the delay.
        let mut builder = TestCluster::builder(3);
        let mut relays = Vec::new();
        for i in 0..3 {
            let port = free_udp_port();
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let relay = UdpDelay::start(target).await;
            builder = builder.node_args(
                i,
                &[
                    "--gossip-listen",
                    &target.to_string(),
                    "--gossip-advertise",
                    &relay.addr().to_string(),
                ],
            );
            relays.push(relay);
        }
        let f = Fault {
            scenario: "p4. gossip 5 % loss + 50 ms delay, QoS 1",
            tag: "p4",
            // A false failure declaration is allowed (counted in the note), not required.
            detect: Some(n2_failed),
            recovered: n2_up,
            observer: OTHER,
        };
        partition_under_load(f, builder, relays, |ch, relays| {
            let mut fw = Firewall::new();
            // Datagrams are lost on their way into each node's relay (the address
            // every other member sends to), then delayed by it.
            for (i, r) in relays.iter().enumerate() {
                assert_eq!(ch.cluster.node(i).gossip_addr(), r.addr(), "advertised");
                assert!(r.relayed() > 0, "gossip passes through the relay");
                r.set_delay(Duration::from_millis(50));
                fw.lose_udp(r.addr().port(), 0.05);
            }
            fw
        })
        .await
    })
    .await
}

/// A UDP port free right now on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp")
        .port()
}
