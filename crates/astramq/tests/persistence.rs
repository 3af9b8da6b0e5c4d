//! A single node with `--data-dir`: what survives `kill -9` and SIGTERM (persistent
//! sessions, queued and in-flight QoS 1/2 messages, inbound QoS 2 ids, retained
//! messages, delayed wills), and what the node says about a data directory it cannot
//! use. Every test restarts a real broker process on the same directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A broker on `dir`, with extra flags.
fn node(dir: &Path, extra: &[&str]) -> Broker {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["--data-dir", dir];
    args.extend_from_slice(extra);
    Broker::builder().args(&args).start()
}

/// Stops `b` the hard way (`kill -9`) or with SIGTERM, and waits for it.
async fn stop(mut b: Broker, how: &str) {
    b.signal(how);
    b.wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("broker did not exit after SIG{how}"));
}

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Connects `id` with a persistent session (v5: expiry `expiry`).
async fn persistent(b: &Broker, v: Version, id: &str, expiry: u32) -> (RawClient, bool) {
    let (c, ack) = RawClient::connect(b.addr(), Connect::persistent(v, id, false, expiry)).await;
    assert_eq!(ack.code, 0, "CONNACK");
    (c, ack.session_present)
}

/// Leaves `id` as an offline persistent session (expiry 600 s) subscribed to `filter`.
async fn offline_subscriber(b: &Broker, v: Version, id: &str, filter: &str, qos: u8) {
    let (mut c, _) = persistent(b, v, id, 600).await;
    c.sub(filter, qos).await;
    c.disconnect().await;
}

// [MQTT-3.1.2-4]/[MQTT-3.1.2-5] (3.1.1 and 5.0): a persistent session and the QoS 1
// and QoS 2 messages queued for it while it is offline survive the broker process
// being killed; [MQTT-3.2.2-2]: Session Present is 1 when it resumes.
async fn queued_messages_survive_kill_9(v: Version) {
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(!present);
    s.subscribe(&[("q/1", 1), ("q/2", 2)]).await;
    s.disconnect().await;
    let mut p = b.client(v, "pub").await;
    for i in 0..40u32 {
        let topic = if i % 2 == 0 { "q/1" } else { "q/2" };
        let qos = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(p.publish(topic, &i.to_be_bytes(), qos, false).await, 0);
    }
    stop(b, "KILL").await;

    let b = node(dir.path(), &[]);
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present, "the session survived kill -9");
    let got: Vec<u32> = s
        .recv_publishes(40, T)
        .await
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..40).collect::<Vec<_>>(), "every message, in order");
    s.expect_no_publish_default().await;
    // Delivered and acknowledged: not delivered again after another restart, this
    // time a SIGTERM.
    s.disconnect().await;
    stop(b, "TERM").await;
    let b = node(dir.path(), &[]);
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    s.expect_no_publish_default().await;
}
versions_test!(queued_messages_survive_kill_9);

// [MQTT-4.4.0-1]: unacknowledged PUBLISHes are resent on resume with DUP set and
// their original packet ids, after the broker was killed or stopped; subscriptions
// made before keep routing afterwards.
async fn inflight_is_resent_with_dup_after_kill_9(v: Version) {
    inflight_is_resent_with_dup_after(v, "KILL").await
}
versions_test!(inflight_is_resent_with_dup_after_kill_9);

#[tokio::test]
async fn inflight_is_resent_with_dup_after_sigterm() {
    inflight_is_resent_with_dup_after(Version::V5, "TERM").await
}

async fn inflight_is_resent_with_dup_after(v: Version, how: &str) {
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    let (mut s, _) = persistent(&b, v, "sub", 600).await;
    s.sub("f/#", 1).await;
    s.auto_ack = false;
    let mut p = b.client(v, "pub").await;
    for i in 0..3u8 {
        assert_eq!(p.publish("f/x", &[i], 1, false).await, 0);
    }
    let first: Vec<(u16, Vec<u8>)> = s
        .recv_publishes(3, T)
        .await
        .into_iter()
        .map(|m| (m.pid, m.payload))
        .collect();
    stop(b, how).await;

    let b = node(dir.path(), &[]);
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    let again = s.recv_publishes(3, T).await;
    for (m, (pid, payload)) in again.iter().zip(&first) {
        assert!(m.dup, "resent with DUP");
        assert_eq!(
            (m.pid, &m.payload),
            (*pid, payload),
            "same packet id and message"
        );
    }
    // The subscription survived too.
    let mut p = b.client(v, "pub").await;
    assert_eq!(p.publish("f/y", b"after", 1, false).await, 0);
    let m = s.recv_publish(T).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("f/y", &b"after"[..]));
}

// [MQTT-4.3.3-9] (5.0) / [MQTT-4.3.3-2] (3.1.1): a QoS 2 message whose PUBREC the
// publisher received before the broker was killed is delivered once: the publisher
// releases it after the restart, and a resent PUBLISH with the same id is not routed
// again.
async fn inbound_qos2_is_exactly_once_across_kill_9(v: Version) {
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    offline_subscriber(&b, v, "sub", "x", 2).await;
    let (mut p, _) = persistent(&b, v, "pub", 600).await;
    p.send(&Publish::new("x", b"once", 2).pid(7).encode(v))
        .await;
    let rec = p
        .wait_packet(T, "PUBREC", |x| match x {
            Packet::Pubrec(a) if a.pid == 7 => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(rec, 0);
    stop(b, "KILL").await;

    let b = node(dir.path(), &[]);
    let (mut p, present) = persistent(&b, v, "pub", 600).await;
    assert!(present);
    let mut again = Publish::new("x", b"once", 2).pid(7);
    again.dup = true;
    p.send(&again.encode(v)).await;
    p.send(&encode_ack(PUBREL, 7, 0, v)).await;
    p.wait_packet(T, "PUBCOMP", |x| match x {
        Packet::Pubcomp(a) if a.pid == 7 => Some(()),
        _ => None,
    })
    .await;
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    let m = s.recv_publish(T).await;
    assert_eq!(&m.payload[..], b"once");
    s.expect_no_publish_default().await;
}
versions_test!(inbound_qos2_is_exactly_once_across_kill_9);

// [MQTT-4.3.3-9] (5.0) / [MQTT-4.3.3-2] (3.1.1): a QoS 2 message the broker routed
// and a subscriber received completely (PUBREC, PUBREL, PUBCOMP: its journal entry is
// gone) before the broker was killed, whose PUBREC the publisher then never saw, is
// not delivered again when the publisher resends it after the restart: the packet
// id's record says it was routed (written with the message's journal entries).
async fn a_delivered_qos2_message_is_not_routed_again_after_kill_9(v: Version) {
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    offline_subscriber(&b, v, "barrier", "b", 1).await;
    let (mut s, _) = persistent(&b, v, "sub", 600).await;
    s.sub("x", 2).await;
    let (mut p, _) = persistent(&b, v, "pub", 600).await;
    p.send(&Publish::new("x", b"once", 2).pid(7).encode(v))
        .await;
    // The subscriber takes it all the way (its PUBREC is sent by recv_publish).
    let m = s.recv_publish(T).await;
    assert_eq!(&m.payload[..], b"once");
    let pubrel = s
        .wait_packet(T, "PUBREL", |x| match x {
            Packet::Pubrel(a) => Some(a.pid),
            _ => None,
        })
        .await;
    s.send(&encode_ack(PUBCOMP, pubrel, 0, v)).await;
    // A barrier: its PUBACK comes once a write queued after the PUBCOMP's is on disk
    // (one connection's packets are handled in order; the store writes in order).
    s.publish("b", b"barrier", 1, false).await;
    stop(b, "KILL").await;

    let b = node(dir.path(), &[]);
    let (mut p, present) = persistent(&b, v, "pub", 600).await;
    assert!(present);
    // As if the PUBREC had been lost with the broker: the PUBLISH again, then PUBREL.
    let mut again = Publish::new("x", b"once", 2).pid(7);
    again.dup = true;
    p.send(&again.encode(v)).await;
    let rec = p
        .wait_packet(T, "PUBREC", |x| match x {
            Packet::Pubrec(a) if a.pid == 7 => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(rec, 0);
    p.send(&encode_ack(PUBREL, 7, 0, v)).await;
    p.wait_packet(T, "PUBCOMP", |x| match x {
        Packet::Pubcomp(a) if a.pid == 7 => Some(()),
        _ => None,
    })
    .await;
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    s.expect_no_publish_default().await;
    // The barrier's subscriber has its message: the session store was working.
    let (mut barrier, _) = persistent(&b, v, "barrier", 600).await;
    assert_eq!(&barrier.recv_publish(T).await.payload[..], b"barrier");
}
versions_test!(a_delivered_qos2_message_is_not_routed_again_after_kill_9);

// [MQTT-3.3.1-5]: retained messages survive SIGTERM and kill -9;
// [MQTT-3.3.2-5]: one whose Message Expiry Interval ran out while the broker was
// stopped is gone, and one still alive carries what is left of its interval
// [MQTT-3.3.2-6].
#[tokio::test]
async fn retained_messages_survive_restarts_and_keep_their_expiry() {
    let v = Version::V5;
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    let mut p = b.client(v, "pub").await;
    p.publish("r/plain", b"kept", 1, true).await;
    let expiring = |topic: &str, secs: u32| {
        Publish::new(topic, b"exp", 1)
            .retain(true)
            .props(Props::new().u32(0x02, secs))
    };
    p.publish_msg(expiring("r/short", 1)).await;
    p.publish_msg(expiring("r/long", 600)).await;
    p.publish("r/cleared", b"x", 1, true).await;
    p.publish("r/cleared", b"", 1, true).await;
    stop(b, "TERM").await;
    // The wait is the thing under test: the short interval runs out while stopped.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let b = node(dir.path(), &[]);
    let mut s = b.client(v, "s").await;
    s.sub("r/#", 1).await;
    let mut got = s.recv_publishes(2, T).await;
    s.expect_no_publish_default().await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got[0].topic, "r/long");
    let left = got[0].props.get_u32(0x02).expect("expiry interval");
    assert!((590..=600).contains(&left), "{left}");
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..]),
        ("r/plain", &b"kept"[..])
    );
    assert!(got.iter().all(|m| m.retain));
    stop(b, "KILL").await;

    let b = node(dir.path(), &[]);
    let mut s = b.client(v, "s").await;
    s.sub("r/plain", 0).await;
    assert_eq!(&s.recv_publish(T).await.payload[..], b"kept");
}

// [MQTT-3.1.2-23]: the Session Expiry Interval counts while the broker is stopped: a
// session that expired meanwhile is gone (Session Present 0), a longer one is not.
#[tokio::test]
async fn a_session_that_expired_while_stopped_is_gone() {
    let v = Version::V5;
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    for (id, expiry) in [("short", 1), ("long", 600)] {
        let (mut c, _) = persistent(&b, v, id, expiry).await;
        c.sub("t", 1).await;
        c.disconnect().await;
    }
    stop(b, "TERM").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let b = node(dir.path(), &[]);
    let mut p = b.client(v, "pub").await;
    p.publish("t", b"m", 1, false).await;
    let (mut long, present) = persistent(&b, v, "long", 600).await;
    assert!(present);
    assert_eq!(&long.recv_publish(T).await.payload[..], b"m");
    let (mut short, present) = persistent(&b, v, "short", 600).await;
    assert!(!present, "expired while the broker was stopped");
    short.expect_no_publish_default().await;
}

// [MQTT-3.1.2-23] after kill -9: a session still connected when the process died
// lost its connection then (the store's last write), and its expiry counts from
// there.
#[tokio::test]
async fn a_connected_session_expires_counting_from_the_crash() {
    let v = Version::V5;
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    let (mut short, _) = persistent(&b, v, "short", 1).await;
    short.sub("t", 1).await;
    let (mut long, _) = persistent(&b, v, "long", 600).await;
    long.sub("t", 1).await;
    stop(b, "KILL").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let b = node(dir.path(), &[]);
    let (_, present) = persistent(&b, v, "long", 600).await;
    assert!(present, "600 s have not passed");
    let (_, present) = persistent(&b, v, "short", 600).await;
    assert!(!present, "expired 1 s after the crash");
}

// [MQTT-3.1.3-9]: a will with a delay, pending when the broker was killed, is
// published after the restart once its delay has passed (counted from the crash);
// the session was connected when the process died, so its connection ended then.
#[tokio::test]
async fn a_pending_delayed_will_is_published_after_kill_9() {
    let v = Version::V5;
    let dir = data_dir();
    let b = node(dir.path(), &[]);
    let mut w = Will::new("will/t", b"gone");
    w.qos = 1;
    w.props = Props::new().u32(0x18, 2);
    let _c = RawClient::connect_ok(
        b.addr(),
        Connect::persistent(v, "dying", false, 600).will(w),
    )
    .await;
    stop(b, "KILL").await;

    let b = node(dir.path(), &[]);
    let mut watcher = b.client(v, "watcher").await;
    watcher.sub("will/#", 1).await;
    let m = watcher.recv_publish(Duration::from_secs(10)).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("will/t", &b"gone"[..]));
    // Published once: a restart after it does not publish it again.
    stop(b, "KILL").await;
    let b = node(dir.path(), &[]);
    let mut watcher = b.client(v, "watcher").await;
    watcher.sub("will/#", 1).await;
    watcher.expect_no_publish(Duration::from_secs(3)).await;
}

// With `store.sync = "periodic"` every batch still reaches the operating system
// before its PUBACK: a killed process (not a crashed machine) loses nothing, even
// with a minute between fsyncs.
#[tokio::test]
async fn periodic_sync_loses_nothing_on_kill_9() {
    let v = Version::V311;
    let dir = data_dir();
    let cfg = "[store]\nsync = \"periodic\"\nsync_interval_ms = 60000\n";
    let dir_s = dir.path().to_str().unwrap();
    let start = || {
        Broker::builder()
            .config(cfg)
            .args(&["--data-dir", dir_s])
            .start()
    };
    let b = start();
    let (mut s, _) = persistent(&b, v, "sub", 0).await;
    s.sub("p", 1).await;
    s.disconnect().await;
    let mut p = b.client(v, "pub").await;
    for i in 0..20u8 {
        p.publish("p", &[i], 1, false).await;
    }
    stop(b, "KILL").await;
    let b = start();
    let (mut s, present) = persistent(&b, v, "sub", 0).await;
    assert!(present);
    let got: Vec<u8> = s
        .recv_publishes(20, T)
        .await
        .iter()
        .map(|m| m.payload[0])
        .collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// Runs a broker that must refuse to start, and returns what it printed.
async fn refused(dir: &Path) -> String {
    let out = run_astramq(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        !out.status.success(),
        "the broker must refuse to start: {}",
        out.stderr
    );
    out.stderr
}

#[tokio::test]
async fn a_data_dir_in_use_by_another_process_is_refused() {
    let dir = data_dir();
    let _running = node(dir.path(), &[]);
    let err = refused(dir.path()).await;
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains("/db"), "names the database: {err}");
}

#[tokio::test]
async fn a_damaged_database_is_refused_with_its_name() {
    let dir = data_dir();
    // A database written once, then its format marker overwritten.
    let b = node(dir.path(), &[]);
    stop(b, "TERM").await;
    let db: PathBuf = dir.path().join("db");
    std::fs::write(db.join("version"), b"\xde\xad\xbe\xef").unwrap();
    let err = refused(dir.path()).await;
    assert!(
        err.contains(&*db.to_string_lossy()),
        "names the database: {err}"
    );
    assert!(err.contains("move it away"), "says what to do: {err}");
}

#[tokio::test]
async fn data_dir_with_redis_is_a_config_error() {
    let out = run_astramq(
        &[
            "broker",
            "--data-dir",
            "/tmp/x",
            "--redis",
            "redis://127.0.0.1:1",
            "--node-id",
            "n",
        ],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("data_dir"), "{}", out.stderr);
}

/// A tmpfs of `mb` MiB mounted by the test (root, as CI runs), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount a {mb} MiB tmpfs (needs root, as CI has)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

// A full disk: new QoS 1 messages to persistent sessions are refused with v5 0x97
// Quota exceeded ([MQTT-3.4.2-1]: a PUBACK reason code ≥ 0x80 means not accepted),
// the node logs it once, keeps serving, and takes messages again once space
// returns; every message acknowledged with 0x00 is delivered, before and after a
// kill -9.
#[tokio::test]
async fn a_full_disk_refuses_with_quota_exceeded_and_recovers() {
    let v = Version::V5;
    let disk = SmallDisk::mount(8);
    let data = disk.path().join("data");
    let b = node(&data, &[]);
    offline_subscriber(&b, v, "sub", "big", 1).await;
    // Leave ~256 KiB free for the database to grow into.
    let filler = disk.path().join("filler");
    let fill = disk.free_bytes().saturating_sub(256 * 1024);
    std::fs::write(&filler, vec![0u8; fill as usize]).expect("write filler");

    let mut p = b.client(v, "pub").await;
    // Incompressible, or the store's compression would make room.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let payload: Vec<u8> = (0..8 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..400u32 {
        let mut body = i.to_be_bytes().to_vec();
        body.extend_from_slice(&payload);
        match p.publish("big", &body, 1, false).await {
            0 => accepted.push(i),
            0x97 => {
                refused = Some(i);
                break;
            }
            r => panic!("message {i}: unexpected PUBACK reason {r:#x}"),
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert!(
        !accepted.is_empty(),
        "some messages fit before the disk was full"
    );

    // Space returns: messages are taken again (the store reopens its file).
    std::fs::remove_file(&filler).unwrap();
    let mut next = refused + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut body = next.to_be_bytes().to_vec();
        body.extend_from_slice(b"after");
        match p.publish("big", &body, 1, false).await {
            0 => {
                accepted.push(next);
                break;
            }
            0x97 | 0x80 => {}
            r => panic!("unexpected PUBACK reason {r:#x}"),
        }
        next += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = b
        .stderr()
        .matches("cannot write the data directory")
        .count();
    assert_eq!(logged, 1, "logged once: {}", tail(&b.stderr(), 4000));
    stop(b, "KILL").await;

    let b = node(&data, &[]);
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    let got: Vec<u32> = s
        .recv_publishes(accepted.len(), T)
        .await
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, accepted, "every accepted message, nothing refused");
    s.expect_no_publish_default().await;
}

// A clean start refused because the disk is full (CONNACK 0x88) leaves no trace
// once space returns: the next clean start is accepted, and the session it discards
// does not come back after a restart [MQTT-3.1.2-4: Clean Start discards an
// existing session]. The store's set of sessions on disk, which a clean start with
// no expiry consults to decide whether there is anything to delete, was changed by
// the failed commit before it failed; it is re-read from the database when the
// writer reopens it. (Here fjall's failed commit had reached its journal, so the set
// and the disk agreed even without the re-read; the re-read covers a commit that
// had not, which this test does not produce.)
#[tokio::test]
async fn a_clean_start_refused_on_a_full_disk_discards_the_session_later() {
    let v = Version::V5;
    let disk = SmallDisk::mount(8);
    let data = disk.path().join("data");
    let b = node(&data, &[]);
    // A QoS 1 message for this offline session is acknowledged once on disk, and
    // writes go in order: a barrier for what was queued before it.
    offline_subscriber(&b, v, "barrier", "b", 1).await;
    let (mut s, _) = persistent(&b, v, "dev", 600).await;
    // Enough subscriptions that deleting them writes more than the last page of the
    // database's files has spare on a full tmpfs.
    let filters: Vec<String> = (0..300).map(|i| format!("dev/filter/{i}")).collect();
    let wanted: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 1)).collect();
    assert!(s.subscribe(&wanted).await.iter().all(|&c| c == 1));
    s.disconnect().await;
    let mut p = b.client(v, "pub").await;
    assert_eq!(
        p.publish("b", b"1", 1, false).await,
        0,
        "subscriptions on disk"
    );
    drop(p);

    // Nothing left: every write fails.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; disk.free_bytes() as usize]).expect("write filler");
    let (_c, ack) = RawClient::connect(b.addr(), Connect::persistent(v, "dev", true, 0)).await;
    assert_ne!(
        ack.code, 0,
        "a clean start the disk cannot record is refused"
    );

    // Space returns; the next clean start is accepted once the store writes again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (c, ack) = RawClient::connect(b.addr(), Connect::persistent(v, "dev", true, 0)).await;
        if ack.code == 0 {
            assert!(!ack.session_present);
            c.disconnect().await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clean start still refused after space returned: {:#x}",
            ack.code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (A claim's CONNACK comes after its commit: what it deleted is gone from disk.)
    stop(b, "KILL").await;

    let b = node(&data, &[]);
    let (_s, present) = persistent(&b, v, "dev", 600).await;
    assert!(!present, "the session a clean start discarded came back");
}

// What arrives for an offline persistent session stays on disk, not in memory,
// until its client is back (then it is delivered in order), and the session's queue
// bound and overflow policy apply to it there as in memory.
async fn spilled_to_disk_with(overflow: &str) -> Vec<u32> {
    let v = Version::V5;
    let dir = data_dir();
    let cfg = format!("[limits]\nmax_queued_messages = 10\nqueue_overflow = \"{overflow}\"\n");
    let dir_s = dir.path().to_str().unwrap();
    let b = Broker::builder()
        .config(&cfg)
        .args(&["--data-dir", dir_s, "--health-listen", "127.0.0.1:0"])
        .start();
    offline_subscriber(&b, v, "sub", "d", 1).await;
    let mut p = b.client(v, "pub").await;
    for i in 0..25u32 {
        assert_eq!(p.publish("d", &i.to_be_bytes(), 1, false).await, 0);
    }
    assert_eq!(
        metric_at(b.health_addr(), "astramq_store_spilled").await,
        10
    );
    assert_eq!(
        metric_at(b.health_addr(), "astramq_store_spill_dropped_total").await,
        15
    );
    let (mut s, present) = persistent(&b, v, "sub", 600).await;
    assert!(present);
    let got: Vec<u32> = s
        .recv_publishes(10, T)
        .await
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect();
    s.expect_no_publish_default().await;
    assert_eq!(metric_at(b.health_addr(), "astramq_store_spilled").await, 0);
    got
}

#[tokio::test]
async fn an_offline_session_keeps_the_newest_on_disk_with_drop_oldest() {
    assert_eq!(
        spilled_to_disk_with("drop-oldest").await,
        (15..25).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_offline_session_keeps_the_oldest_on_disk_with_drop_newest() {
    assert_eq!(
        spilled_to_disk_with("drop-newest").await,
        (0..10).collect::<Vec<_>>()
    );
}

// store.max_queued bounds deliveries waiting for the disk; one message for more
// persistent sessions than that passes alone (refused, a resend would be refused
// again, forever) and reaches every one of them.
#[tokio::test]
async fn a_message_for_more_sessions_than_store_max_queued_passes_alone() {
    let v = Version::V5;
    let dir = data_dir();
    let dir_s = dir.path().to_str().unwrap();
    let b = Broker::builder()
        .config("[store]\nmax_queued = 2\n")
        .args(&["--data-dir", dir_s])
        .start();
    for id in ["s1", "s2", "s3", "s4"] {
        offline_subscriber(&b, v, id, "many", 1).await;
    }
    let mut p = b.client(v, "pub").await;
    assert_eq!(p.publish("many", b"m", 1, false).await, 0, "PUBACK success");
    for id in ["s1", "s2", "s3", "s4"] {
        let (mut s, present) = persistent(&b, v, id, 600).await;
        assert!(present);
        let got = s.recv_publishes(1, T).await;
        assert_eq!(&got[0].payload[..], b"m", "{id}");
    }
}
