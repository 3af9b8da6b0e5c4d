//! The cluster, end to end: real `astramq` nodes (separate processes) sharing a real
//! `redis-server` (or a three-master Redis Cluster) and joined through gossip, driven
//! by rumqttc, the raw client and Mosquitto's command-line clients.
//!
//! Each test checks one statement of the MQTT specification (3.1.1 and 5.0 where both
//! apply, cited `[MQTT-x.y.z-n]`) or one invariant of `DESIGN.md` ("invariant N"),
//! across nodes. Route and retained-message propagation is asynchronous (a change
//! feed in Redis), so before counting messages a test passes the
//! [`TestCluster::sync_feed`] barrier; it never sleeps and hopes.
//!
//! The tests, by feature: `delivery.rs` (cross-node delivery at every QoS),
//! `retained.rs`, `shared.rs` (shared subscriptions),
//! `takeover.rs` (one client id on two nodes), `node_lifecycle.rs` (join,
//! leave, failure, restart), `redis_deployments.rs`,
//! `sessions.rs` (persistent sessions across nodes, drain) and
//! `repair.rs` (a survivor takes over what a SIGKILLed node held). This file
//! holds the helpers they share.

#[path = "../common/mod.rs"]
mod common;

mod delivery;
mod node_lifecycle;
mod redis_deployments;
mod repair;
mod retained;
mod sessions;
mod shared;
mod takeover;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// Failure detection must act within "a few seconds" (DESIGN invariant 3).
const DETECTION: Duration = Duration::from_secs(10);

/// The next PUBLISH within `t`, acknowledged (QoS 1/2), or None on timeout.
async fn try_recv_publish(c: &mut RawClient, t: Duration) -> Option<Publish> {
    match c.next_publish_acked(t).await {
        Ok(p) => Some(p),
        Err(ReadError::Timeout) => None,
        Err(e) => panic!("connection failed while waiting for PUBLISH: {e}"),
    }
}

fn payloads(ps: &[Publish]) -> Vec<String> {
    ps.iter().map(Publish::payload_str).collect()
}

/// A rumqttc client of either protocol version.
enum Rumq {
    V4(Box<V4Client>),
    V5(Box<V5Client>),
}

impl Rumq {
    async fn connect(b: &Broker, v: Version, id: &str) -> Rumq {
        match v {
            Version::V5 => Rumq::V5(Box::new(V5Client::connect(b, id).await)),
            _ => Rumq::V4(Box::new(V4Client::connect(b, id).await)),
        }
    }

    async fn subscribe_qos1(&mut self, filter: &str) {
        match self {
            Rumq::V4(c) => {
                let codes = c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
                assert_eq!(
                    codes,
                    vec![rumqttc::SubscribeReasonCode::Success(
                        rumqttc::QoS::AtLeastOnce
                    )]
                );
            }
            Rumq::V5(c) => {
                let codes = c
                    .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    .await;
                assert_eq!(
                    codes,
                    vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                    )]
                );
            }
        }
    }

    /// (topic, payload, QoS) of the next PUBLISH.
    async fn recv(&mut self) -> (String, Vec<u8>, u8) {
        match self {
            Rumq::V4(c) => {
                let p = c.recv_publish(T).await;
                (p.topic, p.payload.to_vec(), p.qos as u8)
            }
            Rumq::V5(c) => {
                let p = c.recv_publish(T).await;
                (
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload.to_vec(),
                    p.qos as u8,
                )
            }
        }
    }

    async fn expect_no_publish(&mut self) {
        match self {
            Rumq::V4(c) => c.expect_no_publish(ABSENCE).await,
            Rumq::V5(c) => c.expect_no_publish(ABSENCE).await,
        }
    }
}

/// Whether the connection still answers PINGREQ; false once the server closed it.
/// Records every DISCONNECT reason it reads.
async fn answers_ping(c: &mut RawClient, disconnects: &mut Vec<u8>) -> bool {
    c.send_lossy(&encode_pingreq()).await;
    loop {
        match c.read(T).await {
            Ok(Packet::Pingresp) => return true,
            Ok(Packet::Disconnect(r, _)) => disconnects.push(r),
            Ok(_) => {}
            Err(ReadError::Timeout) => panic!("no PINGRESP and no close within {T:?}"),
            Err(_) => return false,
        }
    }
}

/// Session expiry of the persistent sessions these tests create (seconds).
const EXPIRY: u32 = 300;
