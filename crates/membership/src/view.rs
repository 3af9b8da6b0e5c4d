//! The published view: foca's live set joined with the metadata records.
//!
//! Pure bookkeeping, no I/O: the driver feeds it foca notifications and accepted
//! [`MetaRecord`]s, then calls [`View::publish`] to get the events that bring the
//! published member list up to date. Events are derived by diffing the desired list
//! against what was last published, so no sequence of inputs (out-of-order
//! broadcasts, renames, duplicate notifications) can make the two disagree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

use super::config::NodeMeta;
use super::identity::NodeIdentity;
use super::meta::MetaRecord;

/// A live member of the cluster, as published by
/// [`MembershipHandle::members`](super::MembershipHandle::members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's configured id.
    pub node_id: String,
    /// Where it gossips (UDP).
    pub gossip_addr: SocketAddr,
    /// Identifies one run of the node: a restarted node has a higher generation.
    /// Consumers that keep per-node state (routes, sessions) compare it to tell a
    /// restart from a metadata update.
    pub generation: u64,
    /// What the node advertises.
    pub meta: NodeMeta,
}

/// A change in the published member list.
///
/// A restart of a node that was still listed shows as `Down` for the old generation
/// followed by `Up` for the new one: the old process is gone, and whatever it owned
/// must be cleaned up as after any failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member joined (or restarted) and its metadata is known.
    Up(Member),
    /// A live member changed its metadata (e.g. its connection count).
    Updated(Member),
    /// A member failed: it stopped answering probes and did not refute the
    /// suspicion in time, or it was replaced by a newer generation.
    Down {
        /// The failed node's id.
        node_id: String,
        /// The generation that failed.
        generation: u64,
        /// When this node learnt of it.
        at: Instant,
    },
    /// A member announced a clean leave.
    Left {
        /// The departed node's id.
        node_id: String,
        /// The generation that left.
        generation: u64,
    },
}

/// The joined view. See the module docs.
#[derive(Debug)]
pub(crate) struct View {
    /// Our own gossip address: never listed.
    local: SocketAddr,
    /// foca's active set (alive or suspect), by gossip address.
    alive: HashMap<SocketAddr, NodeIdentity>,
    /// Newest metadata record per gossip address.
    records: HashMap<SocketAddr, MetaRecord>,
    /// Identities foca declared down since the last publish; their records are
    /// dropped once `publish` has used them to tell `Left` from `Down`.
    dead: HashSet<NodeIdentity>,
    /// What was last published, by node id.
    published: BTreeMap<String, Member>,
}

impl View {
    pub fn new(local: SocketAddr) -> Self {
        Self {
            local,
            alive: HashMap::new(),
            records: HashMap::new(),
            dead: HashSet::new(),
            published: BTreeMap::new(),
        }
    }

    /// foca: `MemberUp`.
    pub fn member_up(&mut self, id: &NodeIdentity) {
        self.dead.remove(id);
        self.alive.insert(id.addr, id.clone());
    }

    /// foca: `MemberDown`.
    pub fn member_down(&mut self, id: &NodeIdentity) {
        if self.alive.get(&id.addr) == Some(id) {
            self.alive.remove(&id.addr);
        }
        self.dead.insert(id.clone());
    }

    /// foca: `Rename` — a newer identity took over an address.
    pub fn member_renamed(&mut self, old: &NodeIdentity, new: &NodeIdentity) {
        if self.alive.get(&old.addr) == Some(old) {
            self.alive.insert(new.addr, new.clone());
        }
        self.dead.insert(old.clone());
    }

    /// A metadata record the broadcast handler found newer than what it had.
    pub fn record(&mut self, record: MetaRecord) {
        let newer = self.records.get(&record.addr).is_none_or(|have| {
            (record.generation, record.version) > (have.generation, have.version)
        });
        if newer {
            self.records.insert(record.addr, record);
        }
    }

    /// Brings the published list up to date, returning the events that describe
    /// the change (in order: departures first, then updates and arrivals).
    pub fn publish(&mut self, now: Instant) -> Vec<MemberEvent> {
        let desired = self.desired();
        let mut events = Vec::new();

        for (node_id, old) in &self.published {
            match desired.get(node_id) {
                Some(new) if new.generation == old.generation => {
                    if new != old {
                        events.push(MemberEvent::Updated(new.clone()));
                    }
                }
                // Gone, or replaced by a newer run of the same node.
                _ => events.push(self.departure(old, now)),
            }
        }
        for (node_id, new) in &desired {
            let known = self.published.get(node_id);
            if known.is_none_or(|old| old.generation != new.generation) {
                events.push(MemberEvent::Up(new.clone()));
            }
        }
        self.published = desired;

        // Records of dead identities have served their purpose.
        for id in self.dead.drain() {
            if self.records.get(&id.addr).is_some_and(|r| r.is_about(&id)) {
                self.records.remove(&id.addr);
            }
        }
        events
    }

    /// The published members, sorted by node id.
    pub fn members(&self) -> Vec<Member> {
        self.published.values().cloned().collect()
    }

    /// Live identities with current metadata, one per node id (the newest
    /// generation wins while an old run is not yet detected as dead).
    fn desired(&self) -> BTreeMap<String, Member> {
        let mut desired: BTreeMap<String, Member> = BTreeMap::new();
        for (addr, id) in &self.alive {
            if *addr == self.local {
                continue;
            }
            let Some(record) = self.records.get(addr) else {
                // Alive but metadata not heard yet: not useful to anyone (no
                // listener addresses), so not published until it arrives.
                continue;
            };
            if !record.is_about(id) || record.leaving {
                continue;
            }
            let member = Member {
                node_id: id.node_id.clone(),
                gossip_addr: id.addr,
                generation: id.generation,
                meta: record.meta.clone(),
            };
            let newer = desired
                .get(&id.node_id)
                .is_none_or(|have| have.generation < id.generation);
            if newer {
                desired.insert(id.node_id.clone(), member);
            }
        }
        desired
    }

    fn departure(&self, old: &Member, now: Instant) -> MemberEvent {
        let left = self.records.get(&old.gossip_addr).is_some_and(|r| {
            r.leaving && r.generation == old.generation && r.node_id == old.node_id
        });
        if left {
            MemberEvent::Left {
                node_id: old.node_id.clone(),
                generation: old.generation,
            }
        } else {
            MemberEvent::Down {
                node_id: old.node_id.clone(),
                generation: old.generation,
                at: now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str, port: u16, generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: node.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generation,
        }
    }

    fn rec(id: &NodeIdentity, version: u64, connections: u64, leaving: bool) -> MetaRecord {
        MetaRecord {
            node_id: id.node_id.clone(),
            addr: id.addr,
            generation: id.generation,
            version,
            leaving,
            meta: NodeMeta {
                connections,
                ..NodeMeta::broker()
            },
        }
    }

    fn kinds(events: &[MemberEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                MemberEvent::Up(m) => format!("up {} {}", m.node_id, m.generation),
                MemberEvent::Updated(m) => format!("updated {} {}", m.node_id, m.meta.connections),
                MemberEvent::Down {
                    node_id,
                    generation,
                    ..
                } => format!("down {node_id} {generation}"),
                MemberEvent::Left {
                    node_id,
                    generation,
                } => format!("left {node_id} {generation}"),
            })
            .collect()
    }

    #[test]
    fn member_is_published_once_alive_and_described() {
        let mut view = View::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let b = id("b", 2, 10);
        view.member_up(&b);
        assert!(view.publish(Instant::now()).is_empty(), "no metadata yet");
        view.record(rec(&b, 1, 0, false));
        assert_eq!(kinds(&view.publish(Instant::now())), ["up b 10"]);
        view.record(rec(&b, 2, 42, false));
        assert_eq!(kinds(&view.publish(Instant::now())), ["updated b 42"]);
        assert_eq!(view.members()[0].meta.connections, 42);
        // A stale record changes nothing.
        view.record(rec(&b, 1, 7, false));
        assert!(view.publish(Instant::now()).is_empty());
    }

    #[test]
    fn failure_is_down_and_clean_leave_is_left() {
        let mut view = View::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let (b, c) = (id("b", 2, 10), id("c", 3, 10));
        for x in [&b, &c] {
            view.member_up(x);
            view.record(rec(x, 1, 0, false));
        }
        assert_eq!(view.publish(Instant::now()).len(), 2);

        view.member_down(&b);
        assert_eq!(kinds(&view.publish(Instant::now())), ["down b 10"]);

        // The leave broadcast alone is enough; foca's Down arriving later is a no-op.
        view.record(rec(&c, 2, 0, true));
        assert_eq!(kinds(&view.publish(Instant::now())), ["left c 10"]);
        view.member_down(&c);
        assert!(view.publish(Instant::now()).is_empty());
        assert!(view.members().is_empty());
    }

    #[test]
    fn restart_on_same_address_is_down_then_up() {
        let mut view = View::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let old = id("b", 2, 10);
        view.member_up(&old);
        view.record(rec(&old, 1, 5, false));
        view.publish(Instant::now());

        let new = id("b", 2, 20);
        view.member_renamed(&old, &new);
        assert_eq!(kinds(&view.publish(Instant::now())), ["down b 10"]);
        view.record(rec(&new, 0, 0, false));
        assert_eq!(kinds(&view.publish(Instant::now())), ["up b 20"]);
    }

    #[test]
    fn restart_on_new_address_replaces_the_undetected_old_run() {
        let mut view = View::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let old = id("b", 2, 10);
        view.member_up(&old);
        view.record(rec(&old, 1, 5, false));
        view.publish(Instant::now());

        let new = id("b", 3, 20);
        view.member_up(&new);
        view.record(rec(&new, 0, 0, false));
        assert_eq!(
            kinds(&view.publish(Instant::now())),
            ["down b 10", "up b 20"]
        );
        // The old run finally detected dead: nothing more to say.
        view.member_down(&old);
        assert!(view.publish(Instant::now()).is_empty());
        assert_eq!(view.members().len(), 1);
    }

    #[test]
    fn own_address_is_never_listed() {
        let local = id("a", 1, 10);
        let mut view = View::new(local.addr);
        view.member_up(&local);
        view.record(rec(&local, 1, 0, false));
        assert!(view.publish(Instant::now()).is_empty());
    }
}
