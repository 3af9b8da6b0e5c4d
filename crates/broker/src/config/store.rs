//! The keys of a single node's data directory (`data_dir`, `[store]`).

use serde::{Deserialize, Serialize};

/// When a write to the data directory is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Every QoS 1/2 acknowledgement waits until what it acknowledges is on disk
    /// (fsync), one write for everything that arrived meanwhile (group commit).
    Always,
    /// Written at once, made durable every `store.sync_interval_ms`: a crash of the
    /// machine (not just the process) may lose what was acknowledged in that time.
    Periodic,
}

/// Tuning of the data directory (`data_dir`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreTuning {
    /// When writes are durable. Default `always`.
    pub sync: SyncPolicy,
    /// With `sync = periodic`, how often writes are made durable, ms.
    pub sync_interval_ms: u64,
    /// Deliveries to persistent sessions waiting for the disk at most; beyond it new
    /// QoS 1/2 messages are refused (v5 0x97 Quota exceeded).
    pub max_queued: usize,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            sync: SyncPolicy::Always,
            sync_interval_ms: 100,
            max_queued: 65_536,
        }
    }
}
