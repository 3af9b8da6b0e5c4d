//! The cluster route table: which nodes hold subscribers for which filters, kept in
//! every node's memory (from Redis at start, then from the change feed).
//!
//! Matching a topic gives the nodes that need a copy, and for every shared
//! subscription group the one node that serves it this time (round robin over the
//! nodes holding members), so each message reaches exactly one member cluster-wide.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use broker::router::rendezvous;
use mqtt::topic::{parse_shared, TopicTree};

/// The nodes holding members of one shared group on one filter.
#[derive(Debug, Default)]
struct GroupNodes {
    nodes: BTreeSet<String>,
    next: AtomicUsize,
}

/// Where one message must go.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Other nodes and, per node, the shared groups (group, filter) it serves.
    pub remote: HashMap<String, Vec<(String, String)>>,
    /// Shared groups this node serves.
    pub local_groups: Vec<(String, String)>,
}

/// The shared groups (group, filter) one node serves for a message.
pub type Groups<'a> = Cow<'a, [(String, String)]>;

impl Placement {
    /// The shared groups of the other nodes, by node id, `me` left out. Two runs of one
    /// node id (a restart not yet noticed) share one inbox, so they get one record:
    /// their groups are merged; otherwise they are borrowed. A handful of nodes: a
    /// list, not a map.
    pub fn per_node(&self, me: &str) -> Vec<(&str, Groups<'_>)> {
        let mut out: Vec<(&str, Groups<'_>)> = Vec::with_capacity(self.remote.len());
        for (identity, groups) in &self.remote {
            let node = crate::node::node_of(identity);
            if node == me {
                continue;
            }
            match out.iter_mut().find(|(n, _)| *n == node) {
                Some((_, merged)) => merged.to_mut().extend(groups.iter().cloned()),
                None => out.push((node, Cow::Borrowed(groups))),
            }
        }
        out
    }
}

/// Routes of every node.
#[derive(Debug, Default)]
pub struct RouteTable {
    plain: TopicTree<String, ()>,
    shared: TopicTree<String, GroupNodes>,
    by_node: HashMap<String, HashSet<String>>,
    /// Runs gossip declared failed whose routes stay until a survivor took their
    /// sessions over: their plain routes still get copies (into the inbox the
    /// repair drains), their shared groups get none while another node has members.
    down: HashSet<String>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// `node` has subscribers for `filter` (full filter).
    pub fn add(&mut self, node: &str, filter: &str) {
        if !self
            .by_node
            .entry(node.to_string())
            .or_default()
            .insert(filter.to_string())
        {
            return;
        }
        match parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let mut g = self
                    .shared
                    .remove(inner, &group.to_string())
                    .unwrap_or_default();
                g.nodes.insert(node.to_string());
                self.shared.insert(inner, group.to_string(), g);
            }
            Ok(None) => {
                self.plain.insert(filter, node.to_string(), ());
            }
            Err(()) => {}
        }
    }

    /// `node` no longer has subscribers for `filter`.
    pub fn remove(&mut self, node: &str, filter: &str) {
        let Some(filters) = self.by_node.get_mut(node) else {
            return;
        };
        if !filters.remove(filter) {
            return;
        }
        if filters.is_empty() {
            self.by_node.remove(node);
        }
        match parse_shared(filter) {
            Ok(Some((group, inner))) => {
                if let Some(mut g) = self.shared.remove(inner, &group.to_string()) {
                    g.nodes.remove(node);
                    if !g.nodes.is_empty() {
                        self.shared.insert(inner, group.to_string(), g);
                    }
                }
            }
            Ok(None) => {
                self.plain.remove(filter, &node.to_string());
            }
            Err(()) => {}
        }
    }

    /// Marks `node` (a run) as failed: see `down`.
    pub fn mark_down(&mut self, node: &str) {
        if self.by_node.contains_key(node) {
            self.down.insert(node.to_string());
        }
    }

    /// The runs in the table of node id `id` (`<id>@<generation>`).
    pub fn runs_of(&self, id: &str) -> Vec<String> {
        self.by_node
            .keys()
            .filter(|r| crate::node::node_of(r) == id)
            .cloned()
            .collect()
    }

    /// Drops every route of `node` (it left or died).
    pub fn remove_node(&mut self, node: &str) {
        self.down.remove(node);
        let filters: Vec<String> = self
            .by_node
            .get(node)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default();
        for f in filters {
            self.remove(node, &f);
        }
    }

    /// The filters `node` has routes for.
    pub fn filters_of(&self, node: &str) -> Vec<String> {
        self.by_node
            .get(node)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Where a message on `topic` must go, seen from node `me`. A shared group goes
    /// to its nodes round robin, or, for a message with a cluster-wide id (`key`), to
    /// the node that id ranks highest (`broker::router::rendezvous`): a QoS 2 message
    /// a publisher sends again after its node died goes where its first copy went.
    pub fn place(&self, topic: &str, me: &str, key: Option<&str>) -> Placement {
        let mut p = Placement::default();
        self.plain.for_each_match(topic, |_, node, ()| {
            if node != me {
                p.remote.entry(node.clone()).or_default();
            }
        });
        let down = &self.down;
        self.shared.for_each_match(topic, |filter, group, g| {
            let up = g.nodes.iter().filter(|n| !down.contains(*n)).count();
            let n = if up > 0 { up } else { g.nodes.len() };
            if n == 0 {
                return;
            }
            let mut candidates = g.nodes.iter().filter(|n| up == 0 || !down.contains(*n));
            let chosen = match key {
                // Ranked by node id, not run: a restarted node keeps its place.
                Some(k) => candidates.max_by_key(|n| rendezvous(k, crate::node::node_of(n))),
                None => candidates.nth(g.next.fetch_add(1, Ordering::Relaxed) % n),
            };
            let Some(node) = chosen else {
                return;
            };
            let entry = (group.clone(), filter.to_string());
            if node == me {
                p.local_groups.push(entry);
            } else {
                p.remote.entry(node.clone()).or_default().push(entry);
            }
        });
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record per node id: two runs of one id merge their groups, a single run's
    /// are borrowed, this node's own runs are left out.
    #[test]
    fn a_placement_gives_one_destination_per_node_id() {
        let g = |name: &str| vec![(name.to_string(), "f".to_string())];
        let p = Placement {
            remote: HashMap::from([
                ("n2@1".to_string(), g("a")),
                ("n2@2".to_string(), g("b")),
                ("n3@1".to_string(), g("c")),
                ("n1@7".to_string(), g("mine")),
            ]),
            local_groups: Vec::new(),
        };
        let mut per = p.per_node("n1");
        per.sort_by_key(|(n, _)| *n);
        assert_eq!(per.len(), 2, "{per:?}");
        let (n2, n3) = (&per[0], &per[1]);
        assert_eq!(n2.0, "n2");
        let mut merged: Vec<&str> = n2.1.iter().map(|(g, _)| g.as_str()).collect();
        merged.sort();
        assert_eq!(merged, ["a", "b"]);
        assert_eq!(n3.0, "n3");
        assert!(
            matches!(n3.1, Cow::Borrowed(_)),
            "a single run is not copied"
        );
        assert_eq!(n3.1.as_ref(), g("c").as_slice());
    }

    // A node declared down while alive rejoins under a new identity and announces its
    // routes again; other nodes apply the feed one entry at a time, publishing in
    // between. At no step may a filter lose its route to that node (a parked
    // persistent session there would miss the message: lost in partition test p5).
    #[test]
    fn a_reannounced_node_keeps_its_routes_at_every_step() {
        let filters = vec!["x/#".to_string(), "$share/g/y".to_string(), "z".to_string()];
        let mut t = RouteTable::new();
        for f in &filters {
            t.add("n3@1", f);
        }
        let routed = |t: &RouteTable| {
            ["x/1", "y", "z"].iter().all(|topic| {
                let p = t.place(topic, "n1@1", Some("k"));
                p.remote.keys().any(|n| crate::node::node_of(n) == "n3")
            })
        };
        assert!(routed(&t));
        for change in crate::feed::reannouncement("n3@1", "n3@2", &filters) {
            match change {
                crate::feed::Change::RouteAdded(n, f) => t.add(&n, &f),
                crate::feed::Change::RouteRemoved(n, f) => t.remove(&n, &f),
                crate::feed::Change::Retained { .. } => unreachable!("routes only"),
            }
            assert!(routed(&t), "a filter lost its route to n3 midway");
        }
        assert_eq!(t.filters_of("n3@1"), Vec::<String>::new());
        assert_eq!(t.filters_of("n3@2").len(), filters.len());
    }

    #[test]
    fn plain_routes_go_to_other_nodes_once() {
        let mut t = RouteTable::new();
        t.add("a", "x/#");
        t.add("b", "x/+");
        t.add("b", "x/y");
        t.add("c", "z");
        let p = t.place("x/y", "a", None);
        assert_eq!(p.remote.len(), 1);
        assert!(p.remote["b"].is_empty());
        t.remove("b", "x/+");
        t.remove("b", "x/y");
        assert!(t.place("x/y", "a", None).remote.is_empty());
    }

    #[test]
    fn a_shared_group_is_served_by_one_node_per_message_round_robin() {
        let mut t = RouteTable::new();
        t.add("a", "$share/g/s/+");
        t.add("b", "$share/g/s/+");
        let mut served = HashMap::new();
        for _ in 0..10 {
            let p = t.place("s/1", "a", None);
            let local = p.local_groups.len();
            let remote: usize = p.remote.values().map(Vec::len).sum();
            assert_eq!(local + remote, 1, "exactly one node serves the group");
            let who = if local == 1 { "a" } else { "b" };
            *served.entry(who).or_insert(0) += 1;
        }
        assert_eq!((served["a"], served["b"]), (5, 5));
        t.remove_node("b");
        for _ in 0..3 {
            assert_eq!(t.place("s/1", "a", None).local_groups.len(), 1);
        }
    }

    /// [MQTT-4.8.2] and a publisher's resend: with a message id, the node serving a
    /// group is a function of that id, unchanged when another node leaves the group.
    #[test]
    fn a_message_id_picks_the_same_node_for_a_group_while_it_lives() {
        let mut t = RouteTable::new();
        for n in ["a@1", "b@1", "c@1"] {
            t.add(n, "$share/g/s/#");
        }
        let served = |t: &RouteTable, key: &str| -> String {
            let p = t.place("s/1", "a@1", Some(key));
            match p.local_groups.is_empty() {
                false => "a@1".to_string(),
                true => p.remote.keys().next().unwrap().clone(),
            }
        };
        let mut spread = std::collections::HashSet::new();
        for i in 0..60 {
            let key = format!("0001:n1:{i:016x}");
            let first = served(&t, &key);
            assert_eq!(served(&t, &key), first, "same id, same node");
            spread.insert(first.clone());
            // Another node leaving does not move it.
            let mut without = RouteTable::new();
            for n in ["a@1", "b@1", "c@1"]
                .iter()
                .filter(|n| **n != first)
                .skip(1)
            {
                without.add(n, "$share/g/s/#");
            }
            without.add(&first, "$share/g/s/#");
            assert_eq!(served(&without, &key), first);
        }
        assert_eq!(spread.len(), 3, "ids spread over every node: {spread:?}");
    }

    #[test]
    fn a_failed_run_keeps_plain_routes_but_serves_no_group_until_removed() {
        let mut t = RouteTable::new();
        t.add("a@1", "$share/g/s/+");
        t.add("b@1", "$share/g/s/+");
        t.add("b@1", "s/#");
        t.mark_down("b@1");
        assert_eq!(t.runs_of("b"), vec!["b@1".to_string()]);
        for _ in 0..4 {
            let p = t.place("s/1", "a@1", None);
            assert_eq!(p.local_groups.len(), 1, "the group goes to the live node");
            assert!(
                p.remote["b@1"].is_empty(),
                "the plain route still gets a copy"
            );
        }
        t.remove_node("b@1");
        assert!(t.place("s/1", "a@1", None).remote.is_empty());
    }
}
