//! Clusters of real processes for `tests/cluster/`: `redis-server` (one server, or a
//! three-master Redis Cluster) and `astramq` nodes joined through gossip.
//!
//! - [`RedisServer`]: one `redis-server` on a free loopback port, no persistence,
//!   killed on drop. [`RedisCluster`]: three of them in cluster mode, slots assigned
//!   by `redis-cli --cluster create`. A missing `redis-server` fails the test.
//! - [`resp`] (`common/resp.rs`, re-exported here): a tiny blocking RESP client
//!   (follows `MOVED`; TLS through the redis crate) to look at the keys the nodes
//!   write (`astramq:{routes}`, the inbox streams, sessions).
//! - [`TestCluster`]: Redis plus n nodes `n1..nN`; `n1` is the gossip seed every other
//!   node joins. [`TestCluster::kill`] (SIGKILL), [`TestCluster::stop`] (SIGTERM),
//!   [`TestCluster::restart`] (same node id, same gossip address),
//!   [`TestCluster::pause`] / [`TestCluster::resume`] (SIGSTOP / SIGCONT).
//! - Waiting, never sleeping: [`TestCluster::wait_formed`] (every node saw every
//!   other come up), [`TestCluster::wait_route_visible`] (a route is in Redis),
//!   [`TestCluster::sync_feed`] (a node has applied every route and retained change
//!   another node made so far — the barrier to pass before asserting exact counts),
//!   [`TestCluster::wait_log`], and [`super::wait_for`] for anything else.
//!
//! The files: `cluster/redis_servers.rs` (Redis: [`RedisServer`], [`RedisCluster`],
//! [`Backend`]) and `cluster/nodes.rs` (the astramq nodes: [`ClusterBuilder`],
//! [`TestCluster`]); this file holds what both use.

mod nodes;
mod redis_servers;

// Each test binary uses part of what these re-export (see `allow(dead_code)`).
#[allow(unused_imports)]
pub use nodes::*;
#[allow(unused_imports)]
pub use redis_servers::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{capture, free_port, tail, wait_for, Broker, RawClient, Version, T};

/// The key prefix the nodes use (config `[cluster] key_prefix`, default).
pub const PREFIX: &str = "astramq";

/// How long a cluster (Redis, nodes, gossip) may take to come up.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Finds a Redis command-line tool. Missing means a broken test environment, which
/// must fail loudly rather than skip.
pub fn redis_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is required by the cluster tests but is not installed: run scripts/test.sh, \
         or `apt-get install redis-server redis-tools redis-sentinel`"
    );
}

pub use super::resp;
