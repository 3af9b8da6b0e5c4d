//! The choice of a node for a new connection, without I/O.
//!
//! Every function takes the candidates (live nodes that accept connections, in a
//! stable order) with their current load and returns an index into them. The
//! caller guarantees at least one candidate.
//!
//! Client-id affinity uses rendezvous (highest-random-weight) hashing: each node
//! scores `hash(node, client id)` and the highest score wins. When a node leaves,
//! only its own clients move, and every balancer instance computes the same answer
//! from the same member list without sharing state. Bounded load (Mirrokni et al.,
//! "Consistent Hashing with Bounded Loads", 2018) caps a node at
//! `ceil(factor × (total + 1) / n)` connections: a client whose first choice is
//! full goes to its next choice, so a hot spot or a reconnect storm spills over
//! instead of piling onto one node.

/// A node as the balancing functions see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// Stable identity used for hashing (node id in gossip mode, address otherwise).
    pub key: &'a str,
    /// Current connection count (see `Backend::load`).
    pub load: u64,
}

/// Round robin: the `turn`-th candidate, cycling.
pub(crate) fn round_robin(n: usize, turn: usize) -> usize {
    turn % n
}

/// The least-loaded candidate. Ties are broken by `turn`, so equally loaded nodes
/// take turns instead of the first one taking every burst.
pub(crate) fn least_loaded(candidates: &[Candidate<'_>], turn: usize) -> usize {
    let min = candidates.iter().map(|c| c.load).min().unwrap_or(0);
    let tied: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].load == min)
        .collect();
    tied[turn % tied.len()]
}

/// Client-id affinity with bounded load: the highest-scoring candidate that has room.
///
/// Capacity is `ceil(factor × (total + 1) / n) + 1`. The `+ 1` is slack for the
/// common case of a client that reconnects before the balancer has seen its old
/// connection close: without it, with few connections, the old connection alone
/// would fill its node and push the client away from its session.
pub(crate) fn by_client_id(candidates: &[Candidate<'_>], client_id: &str, factor: f64) -> usize {
    let n = candidates.len() as f64;
    let total: u64 = candidates.iter().map(|c| c.load).sum();
    let capacity = (factor * (total as f64 + 1.0) / n).ceil() as u64 + 1;
    let mut order: Vec<(u64, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (score(c.key, client_id), i))
        .collect();
    // Highest score first; the index breaks (astronomically unlikely) ties.
    order.sort_unstable_by(|a, b| b.cmp(a));
    order
        .iter()
        .map(|&(_, i)| i)
        .find(|&i| candidates[i].load < capacity)
        // Unreachable: the least-loaded node is at most at the average, below
        // capacity. Kept total rather than panicking.
        .unwrap_or_else(|| least_loaded(candidates, 0))
}

/// The rendezvous score of `client_id` on `node`: FNV-1a over both (with a
/// separator), then a SplitMix64 finaliser so that similar keys score unrelated
/// values. Stable across processes, builds and versions, unlike `std`'s hasher:
/// several balancers must agree.
pub(crate) fn score(node: &str, client_id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in node.bytes().chain([0xff]).chain(client_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes<'a>(keys: &[&'a str], loads: &[u64]) -> Vec<Candidate<'a>> {
        keys.iter()
            .zip(loads)
            .map(|(&key, &load)| Candidate { key, load })
            .collect()
    }

    #[test]
    fn round_robin_cycles() {
        let picks: Vec<_> = (0..6).map(|t| round_robin(3, t)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_loaded_takes_the_minimum_and_rotates_ties() {
        let c = nodes(&["a", "b", "c"], &[5, 2, 9]);
        assert_eq!(least_loaded(&c, 0), 1);
        assert_eq!(least_loaded(&c, 7), 1);
        let tie = nodes(&["a", "b", "c"], &[1, 4, 1]);
        assert_eq!(least_loaded(&tie, 0), 0);
        assert_eq!(least_loaded(&tie, 1), 2);
    }

    #[test]
    fn client_id_is_sticky_and_spreads_evenly() {
        let c = nodes(&["node-a", "node-b", "node-c"], &[0, 0, 0]);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let id = format!("client-{i}");
            let first = by_client_id(&c, &id, 1.25);
            assert_eq!(by_client_id(&c, &id, 1.25), first, "same answer twice");
            counts[first] += 1;
        }
        for n in counts {
            assert!((850..=1150).contains(&n), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_clients() {
        let three = nodes(&["node-a", "node-b", "node-c"], &[0, 0, 0]);
        let two = nodes(&["node-a", "node-c"], &[0, 0]);
        for i in 0..1000 {
            let id = format!("c{i}");
            let before = three[by_client_id(&three, &id, 1.25)].key;
            let after = two[by_client_id(&two, &id, 1.25)].key;
            if before != "node-b" {
                assert_eq!(before, after, "{id} moved although its node stayed");
            }
        }
    }

    #[test]
    fn bounded_load_spills_to_the_next_choice() {
        // Find the id's first choice, then overload it.
        let empty = nodes(&["a", "b", "c"], &[0, 0, 0]);
        let first = by_client_id(&empty, "x", 1.25);
        let mut loads = [10, 10, 10];
        loads[first] = 30;
        let busy = nodes(&["a", "b", "c"], &loads);
        // total 50 → capacity ceil(1.25 × 51 / 3) + 1 = 23.
        assert_ne!(by_client_id(&busy, "x", 1.25), first);
        // Within capacity the first choice holds.
        loads[first] = 15;
        let fine = nodes(&["a", "b", "c"], &loads);
        assert_eq!(by_client_id(&fine, "x", 1.25), first);
    }

    #[test]
    fn a_stale_connection_does_not_push_a_reconnecting_client_away() {
        let empty = nodes(&["a", "b", "c"], &[0, 0, 0]);
        let first = by_client_id(&empty, "session", 1.25);
        let mut loads = [0, 0, 0];
        loads[first] = 1; // its old connection, not yet seen closing
        assert_eq!(
            by_client_id(&nodes(&["a", "b", "c"], &loads), "session", 1.25),
            first
        );
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned (computed independently): several balancer instances, and
        // versions, must agree, so changing the hash is a breaking change.
        assert_eq!(score("node-a", "client-1"), 0x18fa_5db7_dfcc_3bd8);
        assert_ne!(score("node-a", "client-1"), score("node-b", "client-1"));
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }
}
