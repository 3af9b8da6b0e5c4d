//! Arrival order across connections: a SUBSCRIBE that reached the broker before
//! another connection's PUBLISH takes effect first.
//!
//! No normative statement orders packets across connections (MQTT 5.0 §4.6 orders
//! one connection's), but clients of a single-threaded broker rely on it: B sends
//! SUBSCRIBE and, microseconds later, A sends a matching PUBLISH without waiting for
//! B's SUBACK; Mosquitto delivers it to B. docs/architecture.md ("Arrival order")
//! says what AstraMQ promises: the order in which the kernel reported the sockets
//! readable, for connections waiting to read; not for a connection still busy with
//! its previous bytes when the next arrive, nor through TLS or WebSocket.
//!
//! The runtime does not keep that order by itself: without `broker::arrival`'s
//! waiting, B missed the message in about half the rounds with two worker threads
//! and in nine rounds of ten with one (the task woken last runs first). With it, B
//! misses it only where a connection was still busy or its thread was descheduled
//! for longer than the wait's bound: 0 to 3 rounds in a thousand alone on this 2-core
//! machine, at most 7 with the four tests of this file running at once, at most 13
//! beside a chaos soak (load average 4). So each
//! test runs many rounds and bounds the misses far below the first rates and well
//! above the second.

mod common;

use common::*;

const ROUNDS: usize = 1000;
/// At most this many rounds may miss (5 %; see the module comment for the rates).
const MAX_MISSED: usize = ROUNDS / 20;

/// Runs the rounds against `b`; the rounds in which B missed the PUBLISH.
async fn missed_rounds(b: &Broker, v: Version) -> Vec<usize> {
    let mut sub = b.client(v, "order-sub").await;
    let mut publisher = b.client(v, "order-pub").await;
    let mut missed = Vec::new();
    for round in 0..ROUNDS {
        let topic = format!("order/{round}");
        let pid = sub.pid();
        let subscribe = encode_subscribe(v, pid, &Props::new(), &[(&topic, SubOpts::qos(0))]);
        let publish = Publish::new(&topic, b"x", 0).encode(v);
        // Back to back, no reply awaited in between.
        sub.send(&subscribe).await;
        publisher.send(&publish).await;
        let publish_first = sub
            .wait_packet(T, "the PUBLISH or the SUBACK", |p| match p {
                Packet::Publish(p) if p.topic == topic => Some(true),
                Packet::Suback(s) if s.pid == pid => Some(false),
                _ => None,
            })
            .await;
        let delivered = if publish_first {
            sub.wait_packet(T, "SUBACK", |p| match p {
                Packet::Suback(s) if s.pid == pid => Some(()),
                _ => None,
            })
            .await;
            true
        } else {
            // The subscription is in place now: A's next PUBLISH on the topic comes
            // for sure, and after the first if that was routed (one publisher's
            // messages keep their order, MQTT-4.6.0-6).
            publisher
                .send(&Publish::new(&topic, b"marker", 0).encode(v))
                .await;
            let first = sub.recv_publish(T).await;
            assert_eq!(first.topic, topic, "round {round}");
            if &first.payload[..] == b"x" {
                let marker = sub.recv_publish(T).await;
                assert_eq!(&marker.payload[..], b"marker", "round {round}");
                true
            } else {
                false
            }
        };
        if !delivered {
            missed.push(round);
        }
    }
    missed
}

/// Runs the rounds against `b` and bounds the misses.
async fn assert_arrival_order(b: &Broker, v: Version) {
    let missed = missed_rounds(b, v).await;
    assert!(
        missed.len() <= MAX_MISSED,
        "B missed the PUBLISH sent after its SUBSCRIBE in {} of {ROUNDS} rounds: {missed:?}",
        missed.len()
    );
}

async fn subscribe_then_publish_on_another_connection(v: Version) {
    assert_arrival_order(&Broker::start(), v).await;
}
versions_test!(subscribe_then_publish_on_another_connection);

/// One worker thread: the order the scheduler alone would reverse (its LIFO slot).
async fn subscribe_then_publish_on_one_worker_thread(v: Version) {
    let b = Broker::builder().env("TOKIO_WORKER_THREADS", "1").start();
    assert_arrival_order(&b, v).await;
}
versions_test!(subscribe_then_publish_on_one_worker_thread);
