//! Node metadata as foca custom broadcasts.
//!
//! Each node gossips a [`MetaRecord`] about itself. Records are versioned per
//! identity: `(generation, version)` orders them, and a member keeps and re-gossips
//! only records newer than the one it has. That makes updates idempotent and lets
//! foca drop a queued stale record as soon as a newer one arrives
//! ([`foca::Invalidates`]).
//!
//! Connection counts change often, which is why metadata lives here and not in the
//! identity: changing a foca identity means leaving and rejoining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::config::NodeMeta;
use super::identity::NodeIdentity;

/// One node's advertisement, as gossiped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    /// Whose record: the identity it belongs to.
    pub node_id: String,
    pub addr: SocketAddr,
    pub generation: u64,
    /// Bumped by the owner on every change (and every periodic refresh).
    pub version: u64,
    /// The owner is leaving cleanly. Lets members report `Left` rather than `Down`,
    /// and drop the node at once even before foca's own down update arrives.
    pub leaving: bool,
    pub meta: NodeMeta,
}

impl MetaRecord {
    /// Whether this record is about `id` (same node incarnation).
    pub fn is_about(&self, id: &NodeIdentity) -> bool {
        self.addr == id.addr && self.generation == id.generation && self.node_id == id.node_id
    }

    fn order(&self) -> (u64, u64) {
        (self.generation, self.version)
    }
}

/// What foca keeps to decide which queued broadcast supersedes which.
#[derive(Debug)]
pub(crate) struct MetaKey {
    addr: SocketAddr,
    order: (u64, u64),
}

impl foca::Invalidates for MetaKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.addr == other.addr && self.order > other.order
    }
}

/// Why a broadcast could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata broadcast: {0}")]
pub(crate) struct MetaDecodeError(#[from] postcard::Error);

/// Records newly accepted by the handler, waiting for the driver. foca owns the
/// handler and offers no way back to it, so the two share this queue. Only the
/// driver task touches either side, so the lock is never contended.
pub(crate) type MetaInbox = Arc<Mutex<Vec<MetaRecord>>>;

/// foca's hook for our broadcasts: decodes a record, keeps it if it is news.
pub(crate) struct MetaHandler {
    /// Newest `(generation, version)` seen per gossip address.
    newest: HashMap<SocketAddr, (u64, u64)>,
    inbox: MetaInbox,
}

impl MetaHandler {
    pub fn new(inbox: MetaInbox) -> Self {
        Self {
            newest: HashMap::new(),
            inbox,
        }
    }
}

impl foca::BroadcastHandler<NodeIdentity> for MetaHandler {
    type Key = MetaKey;
    type Error = MetaDecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<MetaKey>, MetaDecodeError> {
        let record: MetaRecord = postcard::from_bytes(data)?;
        let order = record.order();
        let newer = self
            .newest
            .get(&record.addr)
            .is_none_or(|&seen| order > seen);
        if !newer {
            // Already have it (or something newer): returning None stops foca
            // from re-gossiping it, which is what ends dissemination.
            return Ok(None);
        }
        self.newest.insert(record.addr, order);
        let key = MetaKey {
            addr: record.addr,
            order,
        };
        self.inbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(record);
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{BroadcastHandler, Invalidates};

    fn record(generation: u64, version: u64, connections: u64) -> MetaRecord {
        MetaRecord {
            node_id: "a".into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            generation,
            version,
            leaving: false,
            meta: NodeMeta {
                connections,
                ..NodeMeta::broker()
            },
        }
    }

    #[test]
    fn newer_versions_win_and_repeats_are_dropped() {
        let inbox = MetaInbox::default();
        let mut handler = MetaHandler::new(inbox.clone());
        let encode = |r: &MetaRecord| postcard::to_allocvec(r).unwrap();

        assert!(handler
            .receive_item(&encode(&record(1, 1, 5)), None)
            .unwrap()
            .is_some());
        assert!(handler
            .receive_item(&encode(&record(1, 1, 5)), None)
            .unwrap()
            .is_none());
        assert!(handler
            .receive_item(&encode(&record(1, 0, 9)), None)
            .unwrap()
            .is_none());
        assert!(handler
            .receive_item(&encode(&record(1, 2, 7)), None)
            .unwrap()
            .is_some());
        // A new generation beats any version of the old one.
        assert!(handler
            .receive_item(&encode(&record(2, 0, 0)), None)
            .unwrap()
            .is_some());
        assert!(handler
            .receive_item(&encode(&record(1, 99, 0)), None)
            .unwrap()
            .is_none());

        let got: Vec<_> = inbox
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.meta.connections)
            .collect();
        assert_eq!(got, [5, 7, 0]);
        assert!(handler.receive_item(b"\xff\xff", None).is_err());
    }

    /// `NodeMeta::proxy` was appended last: a record with it still decodes with the
    /// layout before it (foca hands the handler exactly one record's bytes, and
    /// postcard ignores what follows the fields it knows).
    #[test]
    fn proxy_listeners_travel_and_an_older_layout_still_decodes() {
        #[derive(Deserialize)]
        struct OldMeta {
            _role: super::super::Role,
            mqtt: Vec<SocketAddr>,
            _admin: Option<SocketAddr>,
            connections: u64,
        }
        #[derive(Deserialize)]
        struct OldRecord {
            _node_id: String,
            _addr: SocketAddr,
            _generation: u64,
            _version: u64,
            _leaving: bool,
            meta: OldMeta,
        }
        let mut r = record(1, 1, 4);
        r.meta.mqtt = vec!["127.0.0.1:1883".parse().unwrap()];
        r.meta.proxy = vec!["127.0.0.1:2883".parse().unwrap()];
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<MetaRecord>(&bytes).unwrap(), r);
        let old: OldRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.meta.mqtt, r.meta.mqtt);
        assert_eq!(old.meta.connections, 4);
    }

    #[test]
    fn keys_invalidate_older_versions_of_the_same_address_only() {
        let a = "127.0.0.1:1".parse().unwrap();
        let b = "127.0.0.1:2".parse().unwrap();
        let key = |addr, order| MetaKey { addr, order };
        assert!(key(a, (1, 2)).invalidates(&key(a, (1, 1))));
        assert!(!key(a, (1, 1)).invalidates(&key(a, (1, 2))));
        assert!(!key(a, (1, 2)).invalidates(&key(b, (1, 1))));
    }
}
