//! The keys of a cluster (`[cluster]`, `redis`, gossip), and the settings the cluster
//! crate gets from them.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Config;

/// Cluster settings that rarely change.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTuning {
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// How long start-up waits for Redis before giving up.
    pub redis_connect_timeout_secs: u64,
    /// Gossip: how often each node probes one random member, ms.
    pub probe_period_ms: u64,
    /// Gossip: how long a probe waits for a direct answer before asking others, ms.
    pub probe_rtt_ms: u64,
    /// Gossip: how long a suspected node has to refute before it is declared
    /// failed, ms.
    pub suspect_to_down_ms: u64,
    /// How long a node's liveness key outlives its last refresh (refreshed four
    /// times per period): a node gossip declares failed is taken over only once this
    /// has run out, ms.
    pub liveness_ttl_ms: u64,
    /// QoS 0 messages waiting to cross the bus toward one other node; beyond it new
    /// ones to that node are shed (`astramq_dropped_total{reason="bus_backlog_full"}`).
    pub forward_qos0_backlog: usize,
    /// QoS 1/2 messages waiting to cross the bus toward one other node; a publisher
    /// whose message finds that lane at the bound is not read again until the message
    /// is written (TCP backpressure; nothing is dropped).
    pub forward_qos12_backlog: usize,
    /// Bytes waiting to cross the bus toward one other node, per lane (QoS 0, QoS 1/2).
    pub forward_backlog_bytes: usize,
    /// Entries waiting in another node's inbox stream (each carries at most 1024
    /// messages) beyond which QoS 0 messages to it are shed
    /// (`reason="inbox_backlog_full"`): a slow consumer neither grows Redis nor delays
    /// the QoS 1/2 records queued behind them.
    pub inbox_backlog_entries: usize,
    /// Longest a QoS 1/2 publisher's acknowledgement waits, ms, once its message was
    /// written to another node's inbox holding `inbox_backlog_entries` or more: the
    /// acknowledgement is sent when that inbox is seen below the bound again, and
    /// the publisher is not read meanwhile, so a slow node slows its publishers
    /// instead of growing Redis. After this long it is sent all the same (the
    /// message is stored either way: a node that stopped reading is declared failed
    /// and its inbox taken over long before). 0 = never wait.
    pub inbox_backlog_hold_ms: u64,
    /// Replicas that must confirm the Redis writes a QoS 1/2 acknowledgement depends
    /// on (`WAIT`) before it is sent, so that a Redis failover cannot lose an
    /// acknowledged message; 0 = off (Redis replicates asynchronously).
    pub redis_wait_replicas: u32,
    /// How long each `WAIT` may take before the write counts as failed, ms.
    pub redis_wait_timeout_ms: u64,
    /// Deliveries to persistent sessions waiting to be journaled in Redis; beyond it
    /// a QoS 1/2 message for a persistent session is not acknowledged (v5 0x97, a
    /// 3.1.1 publisher is disconnected and resends; a copy from another node stays in
    /// this node's inbox and is read again), so a Redis slower than the publishers
    /// costs them speed, not memory.
    pub session_store_max_queued: usize,
    /// Other changes to persistent sessions waiting to be stored in Redis
    /// (subscriptions, acknowledgements of journaled deliveries, wills, inbound QoS 2
    /// ids). They cannot be refused once the client was answered: at the bound, the
    /// connections of persistent sessions stop being read until Redis took some, so
    /// a slow or unreachable Redis costs those clients speed, not the node's memory.
    pub session_store_max_changes: usize,
    /// How long a session's Redis keys outlive the session, s: a parked session's
    /// keys expire `session expiry + this` after they were last refreshed, a clean
    /// session's this long after its node last refreshed them, refreshed every
    /// quarter of it by the node holding the session (see the cluster crate's
    /// `lifetime` module).
    pub session_grace_secs: u64,
    /// PEM file of the certificate authorities that sign the Redis servers'
    /// certificates (`rediss://` only); default: the system's trust store.
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Redis for mutual TLS; needs
    /// `redis_tls_key`.
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of `redis_tls_cert`.
    pub redis_tls_key: Option<PathBuf>,
}

/// Bounds of what waits to cross the bus toward one destination node (from
/// [`ClusterTuning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLimits {
    /// See [`ClusterTuning::forward_qos0_backlog`].
    pub qos0_messages: usize,
    /// See [`ClusterTuning::forward_qos12_backlog`].
    pub qos12_messages: usize,
    /// See [`ClusterTuning::forward_backlog_bytes`].
    pub bytes: usize,
    /// See [`ClusterTuning::inbox_backlog_entries`].
    pub inbox_entries: usize,
    /// See [`ClusterTuning::inbox_backlog_hold_ms`].
    pub inbox_hold: std::time::Duration,
}

impl Default for ClusterTuning {
    fn default() -> Self {
        ClusterTuning {
            key_prefix: "astramq".into(),
            redis_connect_timeout_secs: 5,
            probe_period_ms: 500,
            probe_rtt_ms: 200,
            suspect_to_down_ms: 1000,
            liveness_ttl_ms: 2000,
            forward_qos0_backlog: 10_000,
            forward_qos12_backlog: 10_000,
            forward_backlog_bytes: 16 * 1024 * 1024,
            inbox_backlog_entries: 16,
            inbox_backlog_hold_ms: 5000,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            session_store_max_queued: 65_536,
            session_store_max_changes: 65_536,
            session_grace_secs: 300,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
        }
    }
}

/// Everything a clustered node needs, resolved from [`Config`].
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: String,
    /// Redis URL.
    pub redis: String,
    /// Gossip UDP address.
    pub gossip_listen: SocketAddr,
    /// Advertised gossip address.
    pub gossip_advertise: Option<SocketAddr>,
    /// Seeds.
    pub join: Vec<SocketAddr>,
    /// Gossip authentication key.
    pub cluster_key: Option<String>,
    /// Redis key prefix.
    pub key_prefix: String,
    /// Start-up wait for Redis.
    pub redis_connect_timeout_secs: u64,
    /// Gossip failure detection: probe period.
    pub probe_period: std::time::Duration,
    /// Gossip failure detection: direct probe timeout.
    pub probe_rtt: std::time::Duration,
    /// Gossip failure detection: suspicion timeout.
    pub suspect_to_down: std::time::Duration,
    /// Liveness key lifetime in Redis.
    pub liveness_ttl: std::time::Duration,
    /// Bus backlog bounds per destination node.
    pub forward: ForwardLimits,
    /// Replicas that must confirm a write an acknowledgement depends on (0 = off).
    pub redis_wait_replicas: u32,
    /// How long each `WAIT` may take.
    pub redis_wait_timeout: std::time::Duration,
    /// See [`ClusterTuning::session_store_max_queued`].
    pub session_store_max_queued: usize,
    /// See [`ClusterTuning::session_store_max_changes`].
    pub session_store_max_changes: usize,
    /// See [`ClusterTuning::session_grace_secs`].
    pub session_grace: std::time::Duration,
    /// See [`ClusterTuning::redis_tls_ca`].
    pub redis_tls_ca: Option<PathBuf>,
    /// See [`ClusterTuning::redis_tls_cert`].
    pub redis_tls_cert: Option<PathBuf>,
    /// See [`ClusterTuning::redis_tls_key`].
    pub redis_tls_key: Option<PathBuf>,
}

impl Config {
    /// The cluster settings, when `redis` is set.
    pub fn cluster_settings(&self) -> Option<ClusterSettings> {
        let redis = self.redis.clone()?;
        Some(ClusterSettings {
            node_id: self.node_id.clone().unwrap_or_default(),
            redis,
            gossip_listen: self.gossip_listen,
            gossip_advertise: self.gossip_advertise,
            join: self.join.clone(),
            cluster_key: self.cluster_key.clone(),
            key_prefix: self.cluster.key_prefix.clone(),
            redis_connect_timeout_secs: self.cluster.redis_connect_timeout_secs,
            probe_period: std::time::Duration::from_millis(self.cluster.probe_period_ms),
            probe_rtt: std::time::Duration::from_millis(self.cluster.probe_rtt_ms),
            suspect_to_down: std::time::Duration::from_millis(self.cluster.suspect_to_down_ms),
            liveness_ttl: std::time::Duration::from_millis(self.cluster.liveness_ttl_ms),
            forward: ForwardLimits {
                qos0_messages: self.cluster.forward_qos0_backlog,
                qos12_messages: self.cluster.forward_qos12_backlog,
                bytes: self.cluster.forward_backlog_bytes,
                inbox_entries: self.cluster.inbox_backlog_entries,
                inbox_hold: std::time::Duration::from_millis(self.cluster.inbox_backlog_hold_ms),
            },
            redis_wait_replicas: self.cluster.redis_wait_replicas,
            redis_wait_timeout: std::time::Duration::from_millis(
                self.cluster.redis_wait_timeout_ms,
            ),
            session_store_max_queued: self.cluster.session_store_max_queued,
            session_store_max_changes: self.cluster.session_store_max_changes,
            session_grace: std::time::Duration::from_secs(self.cluster.session_grace_secs),
            redis_tls_ca: self.cluster.redis_tls_ca.clone(),
            redis_tls_cert: self.cluster.redis_tls_cert.clone(),
            redis_tls_key: self.cluster.redis_tls_key.clone(),
        })
    }
}
