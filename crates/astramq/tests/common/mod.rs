//! Test harness for AstraMQ's end-to-end suite.
//!
//! Every test starts its own broker process on a free loopback port, so the
//! suite runs in parallel. The map:
//!
//! - [`Broker`]: spawns the real `astramq` binary (or, with
//!   `ASTRAMQ_TEST_BROKER=mosquitto`, Debian's mosquitto as a reference), waits
//!   for its `listening on` line, kills it on drop, keeps its stderr for
//!   failure messages.
//! - [`raw`]: a small independent MQTT 3.1/3.1.1/5.0 encoder/decoder and
//!   [`RawClient`], for exact reason codes, properties and malformed input.
//! - [`V4Client`] / [`V5Client`]: rumqttc clients whose event loop runs in a
//!   task forwarding events to a channel.
//! - [`mosquitto_pub`] / [`mosquitto_sub`]: the Debian command-line clients.
//! - [`wait_for`]: poll a condition with a timeout instead of sleeping.
//! - [`versions_test!`]: run one `async fn(Version)` as a 3.1.1 and a 5.0 test.
//! - [`certs`]: a test CA and certificates (rcgen), written to files.
//! - [`wsclients`]: paho-mqtt and MQTT.js over WebSocket.
//! - [`admin`]: API keys (`astramq ctl key add`) and admin listener flags.
//! - [`browser`]: a headless Chromium driven over the DevTools protocol.
//! - [`cluster`]: `redis-server` processes and clusters of `astramq` nodes
//!   (used by `tests/cluster/`).
//!
//! The files: `broker_process.rs` ([`Broker`], [`BrokerBuilder`]), `lb_process.rs`
//! ([`Lb`]), `commands.rs` (the astramq binary run to completion, Mosquitto's
//! command-line clients, [`BgSub`]), `rumqttc_clients.rs` ([`V4Client`],
//! [`V5Client`]), `http.rs` (the health endpoint: [`http_get`], [`metric_at`]), `raw.rs`
//! and `raw/`, `cluster.rs` and `cluster/`, `certs.rs`, `resp.rs` (a tiny RESP client),
//! `sentinel.rs` (Redis Sentinel), `wsclients.rs`; this file holds what every one of
//! them uses ([`T`], [`wait_for`], [`versions_test!`]…).

// Each test file compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod admin;
mod broker_process;
pub mod browser;
pub mod certs;
pub mod cluster;
mod commands;
mod http;
mod lb_process;
pub mod raw;
pub mod resp;
mod rumqttc_clients;
pub mod sentinel;
pub mod wsclients;

// Each test binary uses part of what these re-export (see `allow(dead_code)`).
#[allow(unused_imports)]
pub use broker_process::*;
#[allow(unused_imports)]
pub use commands::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use lb_process::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use rumqttc_clients::*;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default timeout for things that should happen "now" (a reply to a packet).
pub const T: Duration = Duration::from_secs(5);
/// How long tests wait to prove something does *not* happen.
pub const ABSENCE: Duration = Duration::from_millis(500);

/// Run `async fn $name(v: Version)` once per protocol version as
/// `$name::v311` and `$name::v5`.
#[macro_export]
macro_rules! versions_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn v311() {
                super::$name($crate::common::Version::V311).await
            }
            #[tokio::test]
            async fn v5() {
                super::$name($crate::common::Version::V5).await
            }
        }
    };
}

/// True when the suite runs against Debian's mosquitto instead of astramq.
pub fn reference_mode() -> bool {
    std::env::var("ASTRAMQ_TEST_BROKER").is_ok_and(|v| v == "mosquitto")
}

/// Poll `cond` every 20 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of the astramq binary under test.
pub fn astramq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_astramq"))
}

/// A Debian tool that some tests need; missing means a broken test
/// environment, which must fail loudly rather than skip.
pub fn required_tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is required by this test but is missing: install it with \
         `apt-get install mosquitto mosquitto-clients`"
    );
    p
}

pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

pub fn capture(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b2 = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// A port that was free a moment ago (only for the mosquitto reference mode,
/// which cannot report the port it bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
