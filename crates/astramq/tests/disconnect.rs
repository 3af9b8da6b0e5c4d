//! Server-sent DISCONNECT (MQTT 5.0 §3.14, §4.13): a client still sending when the
//! server closes must still read the reason code.
//!
//! A server that sends DISCONNECT with a reason of 0x80 or more must then close the
//! Network Connection [MQTT-3.14.4-2, MQTT-4.13.2-1]. Closing a socket whose peer
//! is still sending makes the kernel answer with a TCP reset: the client's next
//! write fails (broken pipe, connection reset), and a client library that gives up
//! on a failed write never reads the DISCONNECT that says why (some systems also
//! throw away unread data on a reset). So the broker shuts down its write side after
//! the DISCONNECT and reads, and discards, what the client still sends, until the
//! client closes or a short time passes (`LINGER` in crates/broker/src/connection.rs,
//! 2 s, and at most `LINGER_MAX_BYTES`, 4 MiB).
//!
//! These tests make the client write a burst after the packet that makes the broker
//! close, through a small send buffer so the writes are still going on when the
//! broker acts; then the client reads. Before the lingering close the burst met a
//! broken pipe.

mod common;

use std::time::{Duration, Instant};

use common::*;

const V: Version = Version::V5;

/// What the client writes after the packet that makes the broker close: far more
/// than the client's send buffer and the broker's receive window hold, so the
/// client is still writing when the broker closes (and less than the broker's
/// `LINGER_MAX_BYTES`).
const BURST: usize = 1 << 20;

/// The broker's lingering time (`LINGER` in crates/broker/src/connection.rs).
const LINGER: Duration = Duration::from_secs(2);

/// `trigger` followed by [`BURST`] bytes of QoS 0 PUBLISHes.
fn with_burst(mut trigger: Vec<u8>) -> Vec<u8> {
    let one = Publish::new("burst", &[0u8; 16 * 1024], 0).encode(V);
    let end = trigger.len() + BURST;
    while trigger.len() < end {
        trigger.extend_from_slice(&one);
    }
    trigger
}

/// Connects to a broker started with `config`, writes `trigger` and a burst in one
/// go, and then expects DISCONNECT `reason` followed by the close.
async fn disconnect_reaches_a_sending_client(config: &str, trigger: Vec<u8>, reason: u8) {
    let b = Broker::start_with(config, &[]);
    // A small send buffer: the burst cannot hide in kernel buffers, the client is
    // still writing when the broker acts on the trigger.
    let mut c = RawClient::tcp_small_send_buffer(b.addr(), 64 * 1024).await;
    let ca = c.handshake(Connect::new(V, "busy")).await;
    assert_eq!(ca.code, 0, "{ca:?}");
    let wrote = c.try_send(&with_burst(trigger)).await;
    // The broker reads what is sent after its DISCONNECT rather than resetting the
    // connection, so the writes succeed...
    assert!(
        wrote.is_ok(),
        "writing the burst: {wrote:?} (the broker closed without reading on)"
    );
    // ...and the client reads the reason, then an orderly close.
    c.expect_orderly_disconnect(reason, T).await;
}

// Three QoS 2 PUBLISHes without PUBREL against a Receive Maximum of 2
// [MQTT-3.3.4-7], DISCONNECT 0x93 (§4.9), then the close [MQTT-4.13.2-1].
#[tokio::test]
async fn receive_maximum_exceeded_while_sending() {
    let mut trigger = Vec::new();
    for pid in 1..=3u16 {
        trigger.extend(Publish::new("rm", b"x", 2).pid(pid).encode(V));
    }
    disconnect_reaches_a_sending_client(
        "[limits]\nreceive_maximum = 2\n",
        trigger,
        rc::RECEIVE_MAXIMUM_EXCEEDED,
    )
    .await;
}

// A packet over the announced Maximum Packet Size [MQTT-3.2.2-15]: DISCONNECT 0x95,
// then the close [MQTT-4.13.2-1].
#[tokio::test]
async fn packet_too_large_while_sending() {
    disconnect_reaches_a_sending_client(
        "[limits]\nmax_packet_size = 1024\n",
        Publish::new("big", &[0u8; 2000], 0).encode(V),
        rc::PACKET_TOO_LARGE,
    )
    .await;
}

// A second CONNECT is a Protocol Error [MQTT-3.1.0-2]: DISCONNECT 0x82, then the
// close [MQTT-4.13.2-1].
#[tokio::test]
async fn protocol_error_while_sending() {
    disconnect_reaches_a_sending_client("", Connect::new(V, "busy").encode(), rc::PROTOCOL_ERROR)
        .await;
}

// Takeover [MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E and is closed,
// and the lingering of that old connection (whose client neither reads nor closes
// here, so the broker lingers the whole `LINGER`) does not delay the new one: the
// session and the client id are released before the broker lingers.
#[tokio::test]
async fn takeover_not_delayed_by_lingering() {
    let b = Broker::start();
    let mut old = b.client(V, "twice").await;
    let asked = Instant::now();
    let (mut new, ca) = RawClient::connect(b.addr(), Connect::new(V, "twice")).await;
    let took = asked.elapsed();
    assert_eq!(ca.code, 0, "takeover refused: {ca:?}");
    assert!(
        took < LINGER / 2,
        "the takeover's CONNACK took {took:?}: it waited for the old connection's lingering"
    );
    old.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    // The new connection owns the id.
    new.sub("twice/t", 1).await;
    new.publish("twice/t", b"mine", 1, false).await;
    assert_eq!(new.recv_publish(T).await.payload, b"mine");
}
