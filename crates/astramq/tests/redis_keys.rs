//! Every key has a lifetime (issue #12 item 4): after clients leave with short session
//! expiries, and a node is killed (SIGKILL) and repaired, Redis holds nothing but the
//! long-lived keys docs/architecture.md lists ("Redis key layout": `{feed}`,
//! `{routes}`, `{retained}`, `{cluster}:incarnation`, `{cluster}:stats`, and per *live* node its inbox,
//! liveness key and session list) — the key count is back to its baseline minus the
//! dead node's inbox and liveness key. The nodes run with `cluster.session_grace_secs
//! = 2` so that the session keys' grace passes within the test.
//!
//! It also prints Redis's memory per idle persistent session and per queued message
//! (`MEMORY USAGE`), the figures quoted in docs/architecture.md.
//!
//! ```sh
//! cargo test -p astramq --test redis_keys -- --nocapture
//! ```

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// `cluster.session_grace_secs` of the test's nodes.
const GRACE_SECS: u64 = 2;

/// Every key in Redis (`SCAN`, never `KEYS`).
fn all_keys(c: &TestCluster) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = c.redis().cmd(&["SCAN", &cursor, "COUNT", "1000"]);
        let resp::Value::Array(Some(parts)) = reply else {
            panic!("SCAN reply {reply:?}");
        };
        cursor = parts[0].text();
        keys.extend(parts[1].strings());
        if cursor == "0" {
            return keys;
        }
    }
}

/// Whether `key` is one of the documented long-lived keys of a cluster whose live
/// nodes are `live`.
fn long_lived(key: &str, live: &[&str]) -> bool {
    let Some(k) = key.strip_prefix(&format!("{PREFIX}:")) else {
        return false;
    };
    [
        "{feed}",
        "{routes}",
        "{retained}",
        "{cluster}:incarnation",
        "{cluster}:stats",
    ]
    .contains(&k)
        || live.iter().any(|n| {
            [
                format!("{{inbox:{n}}}"),
                format!("{{n:{n}}}:alive"),
                format!("{{n:{n}}}:own"),
            ]
            .iter()
            .any(|p| p == k)
        })
}

fn pttl(c: &TestCluster, key: &str) -> i64 {
    c.redis().cmd(&["PTTL", key]).int()
}

fn memory(c: &TestCluster, key: &str) -> i64 {
    match c.redis().cmd(&["MEMORY", "USAGE", key, "SAMPLES", "0"]) {
        resp::Value::Int(n) => n,
        _ => 0,
    }
}

// Invariant: Redis does not grow without bound. Session keys expire with their
// session (TTL = expiry + grace, refreshed by the node holding it), the hash of an
// ended session after the grace, a killed node's sessions once adopted and expired,
// its connected clean sessions' hashes after the grace, and its inbox and session
// list once its repair is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_return_to_baseline_after_clients_leave_and_a_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("astramq.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nsession_grace_secs = {GRACE_SECS}\n"),
    )
    .unwrap();
    let mut c = TestCluster::builder(3)
        .args(&["--config", config.to_str().unwrap()])
        .start()
        .await;
    // A route change creates the feed (long-lived); the helper clients' clean
    // sessions are gone after the grace; the `$SYS` totals' hash comes with the
    // nodes' first tick: the baseline is taken once only long-lived keys are left,
    // all of them.
    c.sync_from(0).await;
    let all = ["n1", "n2", "n3"];
    let stats = c.key("{cluster}:stats");
    wait_for(
        Duration::from_secs(15),
        "only long-lived keys at start",
        || {
            let keys = all_keys(&c);
            keys.contains(&stats) && keys.iter().all(|k| long_lived(k, &all))
        },
    )
    .await;
    let baseline = all_keys(&c);
    eprintln!("baseline keys: {baseline:?}");

    let v = Version::V5;
    // n1: a persistent session, parked with messages queued for it.
    let (mut s1, _) =
        RawClient::connect(c.node(0).addr(), Connect::persistent(v, "k-sub1", false, 3)).await;
    s1.sub("keys/#", 1).await;
    // n3: a persistent session with a will, parked there when n3 dies.
    let (mut s3, _) = RawClient::connect(
        c.node(2).addr(),
        Connect::persistent(v, "k-sub3", false, 3).will(Will::new("keys/will", b"gone")),
    )
    .await;
    s3.sub("keys/#", 1).await;
    c.sync_from(0).await;
    c.sync_from(2).await;
    let hash1 = c.key("{s:k-sub1}");
    let idle = memory(&c, &hash1) + memory(&c, &c.key("{s:k-sub1}:subs"));
    s1.disconnect().await;
    s3.disconnect().await;
    // n3: a clean session still connected when n3 dies (nobody adopts it).
    let clean = c.client(2, v, "k-clean3").await;

    let mut publ = c.client(1, v, "k-pub").await;
    const QUEUED: usize = 20;
    for i in 0..QUEUED {
        let payload = format!("queued-{i:03}-{}", "x".repeat(64));
        assert_eq!(
            publ.publish("keys/x", payload.as_bytes(), 1, false).await,
            0
        );
    }
    let journal1 = c.key("{s:k-sub1}:j");
    // (The PUBACK waited for n1's inbox; n1 journals it right after.)
    wait_for(T, "every message journaled for k-sub1", || {
        c.redis().cmd(&["HLEN", &journal1]).int() == QUEUED as i64
    })
    .await;
    let per_message = memory(&c, &journal1) / QUEUED as i64;
    eprintln!(
        "MEASURED: idle persistent session (hash + 1 subscription): {idle} bytes; \
         queued 64-byte QoS 1 message: {per_message} bytes in one session's journal \
         (MEMORY USAGE)"
    );

    // Every session key has a TTL: the parked session's journal, created after it
    // parked, takes its hash's TTL in the session store's next round trip that checks
    // TTLs (the first of each second; then the node holding the session rewrites both
    // every quarter of the grace).
    wait_for(T, "the journal created while parked takes a TTL", || {
        pttl(&c, &journal1) > 0
    })
    .await;
    let ttl = pttl(&c, &hash1);
    assert!(
        ttl > 0 && ttl <= (3 + GRACE_SECS as i64) * 1000,
        "parked session hash: PTTL {ttl} ms, expected expiry 3 s + grace"
    );
    let ttl = pttl(&c, &c.key("{s:k-clean3}"));
    assert!(
        ttl > 0 && ttl <= GRACE_SECS as i64 * 1000,
        "connected clean session hash: PTTL {ttl} ms, expected the grace"
    );

    // kill -9 of n3 with a parked persistent session, a will and a connected clean
    // session: a survivor adopts the session and drains the inbox.
    c.kill(2);
    drop(clean);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ![0, 1].iter().any(|&i| {
        c.node(i)
            .stderr()
            .lines()
            .any(|l| l.contains("took over a failed node's sessions") && l.contains("node=n3"))
    }) {
        assert!(Instant::now() < deadline, "n3 was not repaired within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publ.disconnect().await;

    // Sessions expire (3 s), then their hashes' grace (2 s), the repair's drains end
    // (≈ 4 s) and the dead node's inbox goes.
    let live = ["n1", "n2"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = all_keys(&c);
        let extra: Vec<&String> = keys.iter().filter(|k| !long_lived(k, &live)).collect();
        if extra.is_empty() {
            let gone: BTreeSet<String> = [c.key("{inbox:n3}"), c.key("{n:n3}:alive")].into();
            let expected: BTreeSet<String> = baseline.difference(&gone).cloned().collect();
            assert_eq!(
                keys.len(),
                expected.len(),
                "the key count returns to its baseline minus the dead node's inbox and \
                 liveness key: now {keys:?}, baseline {baseline:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys left 30 s after the clients left and n3 was repaired: {extra:?}\n\
             PTTLs: {:?}",
            extra
                .iter()
                .map(|k| (k.as_str(), pttl(&c, k)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The client ids come back after their keys expired: n1 and n2 remember the epochs
    // they saw (their fences), and a hash created anew starts above them, so the
    // claims are accepted (an epoch restarting at 1 would be refused as stale).
    for (i, id) in [(0, "k-sub1"), (1, "k-pub"), (0, "k-sub3")] {
        let (again, ca) =
            RawClient::connect(c.node(i).addr(), Connect::persistent(v, id, false, 3)).await;
        assert!(!ca.session_present, "{id}: its session had expired");
        let epoch = c
            .redis()
            .cmd(&["HGET", &c.key(&format!("{{s:{id}}}")), "epoch"]);
        assert!(
            epoch.text().len() >= 16,
            "{id}: a new hash's epoch starts at Redis's clock in µs: {epoch:?}"
        );
        again.disconnect().await;
    }
}
