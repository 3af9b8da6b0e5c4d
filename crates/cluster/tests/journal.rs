//! The persistent-session journal's ownership marks, on a real `redis-server` started
//! here on a free port (loopback, no persistence): an entry written by a node that
//! does not own the session (a stale copy after a partition, a node still routing to
//! a session that moved) is nobody's, so the owner's own copy of that message is
//! queued rather than taken for a duplicate. Without this, partition test p5 lost a
//! message now and then (docs/reliability.md).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use astramq_cluster::conn::{Keys, Redis};
use astramq_cluster::sessions::Sessions;
use astramq_cluster::tls::RedisTls;
use broker::config::QueueOverflow;
use broker::mailbox::{Delivery, Mailbox, MailboxLimits};
use broker::message::Message;
use broker::router::Blocked;

/// A `redis-server` for one test, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redis-server` on a free loopback port; returns it and its URL once it
/// answers.
async fn redis_server() -> (Server, Redis) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let server = Server(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Redis::connect(&url, &RedisTls::default(), Duration::from_secs(1)).await {
            Ok(r) => return (server, r),
            Err(e) => assert!(
                Instant::now() < deadline,
                "redis-server did not answer: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let keys = Keys::new("t");
    let grace = Duration::from_secs(300);
    let (sessions, _writer) =
        Sessions::start(redis.durable_conn(), keys.clone(), "n3".into(), 100, grace);
    // The session is at epoch 2 (its owner's claim); a stale node still has epoch 1.
    let _: () = redis::cmd("HSET")
        .arg(keys.session("c"))
        .arg("epoch")
        .arg(2)
        .arg("owner")
        .arg("n3")
        .query_async(&mut redis.conn())
        .await
        .unwrap();
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
