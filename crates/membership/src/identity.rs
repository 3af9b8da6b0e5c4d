//! The identity foca gossips about: node id + gossip address + generation.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who a member is, as far as SWIM is concerned.
///
/// foca keys members by [`foca::Identity::addr`], the gossip address; when two
/// identities share an address the one with the higher `generation` wins. A node
/// takes a fresh generation (wall-clock microseconds) each time it starts, so a
/// restarted node replaces its previous incarnation instead of being mistaken for
/// it, and a node wrongly declared down rejoins as `generation + 1`
/// ([`foca::Identity::renew`]).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct NodeIdentity {
    pub node_id: String,
    pub addr: SocketAddr,
    pub generation: u64,
}

impl NodeIdentity {
    /// A new identity for a node starting now.
    pub fn new(node_id: String, addr: SocketAddr) -> Self {
        // Wall clock, not a counter: a restarted process has no memory of its
        // previous generation, and microseconds make two starts of the same node
        // differ unless the clock jumps back between them.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Self {
            node_id,
            addr,
            generation,
        }
    }

    /// A placeholder for a seed whose real identity we do not know yet. foca
    /// accepts an announce addressed to any identity with the right address.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            node_id: String::new(),
            addr,
            generation: 0,
        }
    }
}

// Short form: identities appear in every foca trace line.
impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.node_id, self.addr, self.generation)
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn renewed_identity_wins_the_address() {
        let old = NodeIdentity::new("a".into(), "127.0.0.1:7000".parse().unwrap());
        let new = old.renew().unwrap();
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }
}
