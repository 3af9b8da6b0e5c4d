//! Gossip mode: keeps the backend pool equal to the live broker members.
//!
//! [`sync`] is the pure part (members in, pool updated); [`run`] is the task that
//! calls it on every membership change and advertises our own connection count.

use std::sync::Arc;
use std::time::Duration;

use cluster::membership::{Member, MembershipHandle, NodeMeta, Role};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Pool};

/// How often the balancer re-advertises its own connection count.
const ADVERTISE_EVERY: Duration = Duration::from_secs(1);

/// Whether a live broker takes new connections. A broker that drains keeps its
/// clients for a while but should get no new ones; today it says so by advertising
/// no MQTT address (the balancer then leaves its existing connections alone).
/// A dedicated `draining` flag in [`NodeMeta`] would be checked here.
fn accepts_new(meta: &NodeMeta) -> bool {
    !meta.mqtt.is_empty()
}

/// Brings `pool` in line with `members`. A backend is one run of a node
/// (node id + generation + address): a restarted or readdressed node is a new
/// backend and the old one is cancelled, which closes the connections proxied to
/// it. A member that disappears (down or left) is cancelled the same way.
pub(crate) fn sync(pool: &Pool, members: &[Member]) {
    let current = pool.snapshot();
    let mut next = Vec::new();
    for m in members.iter().filter(|m| m.meta.role == Role::Broker) {
        let existing = current
            .iter()
            .find(|b| b.key() == m.node_id && b.generation() == m.generation);
        let accepting = accepts_new(&m.meta);
        let backend = match (existing, m.meta.mqtt.first()) {
            (Some(b), Some(&addr)) if b.addr() == addr => b.clone(),
            // Draining: keep the old backend (and its connections), route nothing new.
            (Some(b), None) => b.clone(),
            (_, Some(&addr)) => {
                tracing::info!(node = %m.node_id, %addr, generation = m.generation, "broker up: routing connections to it");
                Arc::new(Backend::new(m.node_id.clone(), m.generation, addr))
            }
            (None, None) => continue,
        };
        if backend.is_accepting() != accepting {
            tracing::info!(node = %m.node_id, accepting, "broker drain state changed");
        }
        backend.set_accepting(accepting);
        backend.set_advertised(m.meta.connections);
        next.push(backend);
    }
    for gone in current
        .iter()
        .filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b)))
    {
        tracing::info!(node = %gone.key(), generation = gone.generation(), open = gone.active(), "broker gone: no new connections, closing the ones it had");
    }
    pool.replace(next);
}

/// Follows membership until `stop`, then leaves the cluster cleanly.
pub(crate) async fn run(handle: MembershipHandle, pool: Arc<Pool>, stop: CancellationToken) {
    let mut members = handle.members();
    let mut tick = tokio::time::interval(ADVERTISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sync(&pool, &members.borrow_and_update());
        tokio::select! {
            changed = members.changed() => if changed.is_err() { break },
            _ = tick.tick() => handle.set_connections(pool.active()),
            _ = stop.cancelled() => break,
        }
    }
    handle.leave().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn member(id: &str, generation: u64, mqtt: &[&str], connections: u64) -> Member {
        Member {
            node_id: id.into(),
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            generation,
            meta: NodeMeta {
                mqtt: mqtt.iter().map(|a| a.parse().unwrap()).collect(),
                connections,
                ..NodeMeta::broker()
            },
        }
    }

    fn keys(pool: &Pool) -> Vec<(String, SocketAddr, bool)> {
        pool.snapshot()
            .iter()
            .map(|b| (b.key().to_string(), b.addr(), b.is_accepting()))
            .collect()
    }

    #[test]
    fn brokers_become_backends_and_others_do_not() {
        let pool = Pool::default();
        let mut lb = member("lb-2", 1, &[], 0);
        lb.meta.role = Role::LoadBalancer;
        sync(
            &pool,
            &[
                member("a", 1, &["127.0.0.1:1883", "127.0.0.1:1884"], 3),
                lb,
                member("b", 1, &["127.0.0.1:2883"], 0),
                member("c", 1, &[], 0),
            ],
        );
        assert_eq!(
            keys(&pool),
            [
                ("a".into(), "127.0.0.1:1883".parse().unwrap(), true),
                ("b".into(), "127.0.0.1:2883".parse().unwrap(), true),
            ]
        );
        assert_eq!(pool.snapshot()[0].load(), 3);
    }

    #[test]
    fn a_vanished_member_is_cancelled_and_updates_keep_the_backend() {
        let pool = Pool::default();
        sync(
            &pool,
            &[
                member("a", 1, &["127.0.0.1:1"], 0),
                member("b", 1, &["127.0.0.1:2"], 0),
            ],
        );
        let before = pool.snapshot();
        sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 7)]);
        assert!(
            Arc::ptr_eq(&pool.snapshot()[0], &before[0]),
            "same run, same backend"
        );
        assert_eq!(pool.snapshot()[0].load(), 7);
        assert!(before[1].gone().is_cancelled());
        assert!(!before[0].gone().is_cancelled());
    }

    #[test]
    fn a_restart_replaces_the_backend() {
        let pool = Pool::default();
        sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        let old = pool.snapshot()[0].clone();
        sync(&pool, &[member("a", 2, &["127.0.0.1:1"], 0)]);
        assert!(old.gone().is_cancelled());
        assert_eq!(pool.snapshot()[0].generation(), 2);
    }

    #[test]
    fn a_draining_broker_keeps_its_connections_but_gets_no_new_ones() {
        let pool = Pool::default();
        sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        let a = pool.snapshot()[0].clone();
        sync(&pool, &[member("a", 1, &[], 0)]);
        assert!(!a.gone().is_cancelled());
        assert!(!pool.snapshot()[0].is_accepting());
        sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        assert!(pool.snapshot()[0].is_accepting());
    }
}
