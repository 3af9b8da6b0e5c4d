//! The persistent-session journal's ownership marks, on a real `redis-server` started
//! here on a free port (loopback, no persistence): an entry written by a node that
//! does not own the session (a stale copy after a partition, a node still routing to
//! a session that moved) is nobody's, so the owner's own copy of that message is
//! queued rather than taken for a duplicate. Without this, partition test p5 lost a
//! message now and then (docs/reliability.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use astramq_cluster::conn::{Keys, Redis};
use astramq_cluster::sessions::Sessions;
use broker::cluster::SessionChange;
use broker::config::QueueOverflow;
use broker::mailbox::{Delivery, Mailbox, MailboxLimits};
use broker::message::Message;
use broker::router::Blocked;
use broker::session::JournalUpdate;
use common::redis_server;

/// The session store of node `me` on `redis`, bounded at `bounds` (journal entries,
/// other changes), with its writer task.
fn store(redis: &Redis, me: &str, bounds: (usize, usize)) -> (Arc<Sessions>, Keys) {
    let keys = Keys::new("t");
    let (sessions, _writer) = Sessions::start(
        redis.durable_conn(),
        keys.clone(),
        me.into(),
        bounds,
        Duration::from_secs(300),
    );
    (sessions, keys)
}

/// Makes `me` the owner of `client_id`'s session at `epoch`, as its claim would.
async fn own(redis: &Redis, keys: &Keys, client_id: &str, epoch: u64, me: &str) {
    let _: () = redis::cmd("HSET")
        .arg(keys.session(client_id))
        .arg("epoch")
        .arg(epoch)
        .arg("owner")
        .arg(me)
        .query_async(&mut redis.conn())
        .await
        .unwrap();
}

/// A session's mailbox as the node holding it at `epoch` has it.
fn mailbox(client_id: &str, epoch: u64) -> Arc<Mailbox> {
    let m = Mailbox::new(MailboxLimits {
        max_messages: 100,
        max_bytes: 1 << 20,
        overflow: QueueOverflow::DropOldest,
    });
    m.set_stored(&Arc::from(client_id), epoch);
    m
}

fn copy(mailbox: &Arc<Mailbox>, msg: &Arc<Message>) -> Blocked {
    Blocked {
        mailbox: mailbox.clone(),
        delivery: Delivery {
            msg: msg.clone(),
            qos: mqtt::QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            journal: None,
        },
    }
}

async fn first_byte(redis: &Redis, keys: &Keys, key: &str) -> u8 {
    let v: Vec<u8> = redis::cmd("HGET")
        .arg(keys.journal("c"))
        .arg(key)
        .query_async(&mut redis.conn())
        .await
        .unwrap();
    v[0]
}

#[tokio::test]
async fn the_owners_copy_of_an_entry_a_non_owner_journaled_is_queued() {
    let (_server, redis) = redis_server().await;
    let (sessions, keys) = store(&redis, "n3", (100, 100));
    // The session is at epoch 2 (its owner's claim); a stale node still has epoch 1.
    own(&redis, &keys, "c", 2, "n3").await;
    let (stale, owner) = (mailbox("c", 1), mailbox("c", 2));
    let publish = mqtt::packet::Publish {
        qos: mqtt::QoS::AtLeastOnce,
        topic: "t".into(),
        packet_id: Some(1),
        payload: bytes::Bytes::from_static(b"m"),
        ..Default::default()
    };
    let msg = Arc::new(Message::new(
        &publish,
        None,
        tokio::time::Instant::now().into(),
    ));
    let key = "0000000000001:n1:0000000000000001".to_string();
    let journal = |b: Blocked| sessions.journal(vec![b], Some(key.clone()));

    journal(copy(&stale, &msg)).await.unwrap().unwrap();
    assert_eq!(
        first_byte(&redis, &keys, &key).await,
        b'F',
        "stored as nobody's"
    );

    journal(copy(&owner, &msg)).await.unwrap().unwrap();
    assert_eq!(owner.len(), 1, "the owner queues its own copy");
    assert_eq!(
        first_byte(&redis, &keys, &key).await,
        b'D',
        "now the owner's"
    );

    // The same copy again at the owner (an inbox entry read twice) is not queued twice.
    journal(copy(&owner, &msg)).await.unwrap().unwrap();
    assert_eq!(owner.len(), 1, "not queued twice");
}

/// `INFO commandstats` calls of `name` since the last `CONFIG RESETSTAT`.
async fn calls(redis: &Redis, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.conn())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

async fn redis_do(redis: &Redis, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut redis.conn()).await.unwrap();
}

// The data path's scripts go as EVALSHA, the journal writes of every session in one
// round trip as one call: a Redis that lost its script cache (restarted, failed over,
// SCRIPT FLUSH) still gets every write and every acknowledgement, and nothing is
// refused or lost.
#[tokio::test]
async fn journal_writes_and_acknowledgements_of_many_sessions_survive_a_lost_script_cache() {
    let (_server, redis) = redis_server().await;
    let (sessions, keys) = store(&redis, "n1", (100, 100));
    let ids = ["a", "b", "c"];
    for id in ids {
        own(&redis, &keys, id, 1, "n1").await;
    }
    let boxes: Vec<_> = ids.iter().map(|id| mailbox(id, 1)).collect();
    let publish = mqtt::packet::Publish {
        qos: mqtt::QoS::AtLeastOnce,
        topic: "t".into(),
        packet_id: Some(1),
        payload: bytes::Bytes::from_static(b"m"),
        ..Default::default()
    };
    let now = tokio::time::Instant::now().into();
    let key = |n: u64| format!("0000000000001:n2:{n:016x}");
    let journal = |n: u64| {
        let msg = Arc::new(Message::new(&publish, None, now));
        sessions.journal(boxes.iter().map(|b| copy(b, &msg)).collect(), Some(key(n)))
    };

    redis_do(&redis, &["SCRIPT", "FLUSH"]).await;
    journal(1).await.unwrap().expect("written after NOSCRIPT");
    for b in &boxes {
        assert_eq!(b.len(), 1, "queued once");
    }

    // One call for the three sessions.
    redis_do(&redis, &["CONFIG", "RESETSTAT"]).await;
    journal(2).await.unwrap().unwrap();
    assert_eq!(calls(&redis, "evalsha").await, 1, "one script call");
    assert_eq!(calls(&redis, "eval").await, 0);
    for b in &boxes {
        assert_eq!(b.len(), 2);
    }

    // Acknowledgements after the cache is lost again.
    redis_do(&redis, &["SCRIPT", "FLUSH"]).await;
    for id in ids {
        sessions.changed(SessionChange::Journal {
            client_id: id.into(),
            updates: vec![JournalUpdate::Done(key(1).into())],
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in ids {
        loop {
            let left: Vec<String> = redis::cmd("HKEYS")
                .arg(keys.journal(id))
                .query_async(&mut redis.conn())
                .await
                .unwrap();
            let done: Option<f64> = redis::cmd("ZSCORE")
                .arg(keys.done(id))
                .arg(key(1))
                .query_async(&mut redis.conn())
                .await
                .unwrap();
            if left == [key(2)] && done.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: journal {left:?}, done {done:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A delivered message journaled again is not queued again.
    journal(1).await.unwrap().unwrap();
    for b in &boxes {
        assert_eq!(b.len(), 2, "delivered: not queued again");
    }
}

// cluster.session_store_max_changes: changes that cannot be refused (here
// subscriptions) are counted until Redis stored them; at the bound the store says
// "no room" (the connections of persistent sessions then stop reading), and room
// comes back once Redis took them — here after a `CLIENT PAUSE` of its writes.
#[tokio::test]
async fn unstored_changes_are_bounded_and_room_comes_back_once_redis_takes_them() {
    let (_server, redis) = redis_server().await;
    let (sessions, keys) = store(&redis, "n1", (100, 5));
    redis_do(&redis, &["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let paused = Instant::now();
    let subscribe = |n: usize| SessionChange::Subscribed {
        client_id: "c".into(),
        filter: format!("f/{n}"),
        sub: broker::session::Subscription {
            options: Default::default(),
            id: None,
        },
    };
    for n in 0..4 {
        sessions.changed(subscribe(n));
    }
    assert!(sessions.changes_room().is_none(), "4 of 5: room");
    sessions.changed(subscribe(4));
    let wait = sessions.changes_room().expect("5 of 5 unstored: no room");
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("room once Redis stored them");
    assert!(
        paused.elapsed() >= Duration::from_millis(1400),
        "room came back only after the pause ({:?})",
        paused.elapsed()
    );
    let stored: u64 = redis::cmd("HLEN")
        .arg(keys.subscriptions("c"))
        .query_async(&mut redis.conn())
        .await
        .unwrap();
    assert!(stored >= 1, "stored before room came back");
    assert!(sessions.changes_room().is_none());
}
