//! The chaos harness for `tests/chaos.rs` (issue #6 item 3): a 3-node cluster behind a
//! gossip-backed `astramq lb`, a load driver that counts every acknowledged message
//! and every receipt, and the table row each scenario reports.
//!
//! Only `tests/chaos.rs`, `tests/partition.rs` and `tests/redis_failover.rs` include
//! this module (`#[path = "common/chaos/mod.rs"]`), so the other test binaries do not
//! compile it.
//!
//! - [`Chaos`]: a [`TestCluster`] whose nodes also listen for PROXY v2, plus an
//!   `astramq lb` that joins their gossip ([`Lb`]); clients connect through it and are
//!   sent only to live nodes.
//! - [`Load`]: S persistent-session subscribers (at least one whose session lives on
//!   every node) and P publishers with sequence-numbered payloads, each one a task
//!   that reconnects through the balancer whenever its connection ends.
//! - [`Counts`], [`Row`]: lost / duplicates per subscriber, the table row, the JSON
//!   line appended to `chaos.jsonl`.
//!
//! ## Why a hand-written client and not rumqttc
//!
//! The driver's MQTT client is built on the suite's own codec (`common/raw.rs`, which
//! shares no code with the broker) rather than rumqttc 0.24, because rumqttc cannot
//! count exactly across reconnects: `MqttState::clean` (`state.rs`, run on every
//! connection error) forgets the packet ids of inbound QoS 2 messages awaiting
//! PUBREL, so a QoS 2 PUBLISH the broker legitimately resends after a reconnect is
//! handed to the application a second time (a duplicate the broker did not cause),
//! and the broker's PUBREL for it is then an "Unsolicited pubrel" error that drops the
//! connection again, after every reconnect. It also resends unacknowledged PUBLISHes
//! without the DUP flag and maps no acknowledgement back to the message it acknowledges.
//! The client here follows the specification on both ends:
//!
//! - a publisher keeps every unacknowledged QoS 1/2 message with its packet id and,
//!   after a reconnect, resends PUBLISH (DUP = 1) or PUBREL with the original packet id
//!   ([MQTT-4.4.0-1]); a message is *acknowledged* when its PUBACK (QoS 1) or PUBCOMP
//!   (QoS 2) arrives, and a v5 PUBACK/PUBREC with a failure reason (>= 0x80) is counted
//!   as refused, never as acknowledged;
//! - a subscriber hands a QoS 2 message to the application once: a PUBLISH whose packet
//!   id is still awaiting PUBREL is acknowledged again but not delivered again
//!   ([MQTT-4.3.3-9] v5 / [MQTT-4.3.3-2] 3.1.1, "method B"); that state survives a
//!   reconnect with Session Present 1 and is dropped with a session the server lost.
//!
//! ## The files
//!
//! - this file: [`Chaos`] (the cluster and its balancer), [`SERIAL`] and the settings
//!   every scenario shares;
//! - `chaos/client.rs`: the reconnecting load client (publisher or subscriber) over the
//!   raw codec;
//! - `chaos/stats.rs`: what the load clients record ([`Stats`]) and the [`Counts`] a
//!   scenario reports;
//! - `chaos/load.rs`: [`Load`], the subscribers and publishers of a scenario;
//! - `chaos/detection.rs`: failure detection times, read from the nodes' logs;
//! - `chaos/report.rs`: [`Row`], one line of the chaos table (markdown and JSON);
//! - `chaos/takeover.rs`: what a connection whose client id was taken over elsewhere
//!   does ([`Fate`]).

#![allow(dead_code)]

mod client;
mod detection;
mod load;
mod report;
mod stats;
mod takeover;

// Each test binary uses part of what these re-export (see `allow(dead_code)`).
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use detection::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use report::*;
#[allow(unused_imports)]
pub use stats::*;
#[allow(unused_imports)]
pub use takeover::*;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::common::cluster::*;
use crate::common::*;

/// Scenarios run one at a time even when the test harness runs tests in parallel
/// (`cargo test --workspace` does): each one loads the machine, and measures times.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one scenario alone (see [`SERIAL`]), failing it if it takes longer than
/// `limit`.
pub async fn alone_within(limit: Duration, f: impl std::future::Future<Output = ()>) {
    let _alone = SERIAL.lock().await;
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("scenario exceeded {limit:?}"));
}

/// Session expiry of every persistent client in the load (seconds).
pub const EXPIRY: u32 = 300;
/// The keep-alive every load client announces. Clients ping every third of it and
/// drop a connection that stayed silent for a whole keep-alive period.
pub const KEEP_ALIVE: u16 = 6;
/// How long the load runs after the fault is over, so that messages published after
/// recovery are counted too: at least this many more acknowledged messages.
pub const AFTER_RECOVERY: u64 = 200;

/// `astramq lb --join SEED --gossip-listen 127.0.0.1:0`: round robin over the live
/// brokers gossip announces, PROXY v2 toward them.
pub fn start_lb(seed: SocketAddr) -> Lb {
    let seed = seed.to_string();
    Lb::start(&[
        "--join",
        &seed,
        "--gossip-listen",
        "127.0.0.1:0",
        "--node-id",
        "lb",
    ])
}

// ---------------------------------------------------------------------------
// The cluster under test
// ---------------------------------------------------------------------------

/// A fresh cluster of `n` nodes (PROXY v2 listeners for the balancer) and a balancer
/// that routes to every one of them.
pub struct Chaos {
    // Field order is drop order: the balancer first, then the nodes and Redis.
    pub lb: Lb,
    pub cluster: TestCluster,
}

impl Chaos {
    pub async fn start(n: usize) -> Chaos {
        Chaos::start_with(TestCluster::builder(n)).await
    }

    /// [`Chaos::start`] on a cluster built by `builder` (PROXY listeners added).
    pub async fn start_with(builder: ClusterBuilder) -> Chaos {
        let cluster = builder
            .args(&["--proxy-listen", "127.0.0.1:0"])
            .start()
            .await;
        let n = cluster.len();
        let lb = start_lb(cluster.node(0).gossip_addr());
        let ch = Chaos { lb, cluster };
        for i in 0..n {
            ch.wait_lb_routes_to(i, 1).await;
        }
        ch
    }

    /// Waits until the balancer has started routing to node `i` at least `runs` times
    /// (a restarted node is a new run).
    pub async fn wait_lb_routes_to(&self, i: usize, runs: usize) {
        let id = self.cluster.id(i).to_string();
        wait_for(
            STARTUP,
            &format!("the balancer to route to {id} (run {runs})"),
            || self.lb.ups(&id) >= runs,
        )
        .await;
    }
}
