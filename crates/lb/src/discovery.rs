//! Gossip mode: keeps the backend pool equal to the live broker members.
//!
//! [`Follower::sync`] is the pure part (members in, pool updated); [`run`] is the
//! task that calls it on every membership change and advertises our own connection
//! count. Which listener of a broker gets the connections, and whether they start
//! with a PROXY v2 header, is decided per broker from its metadata ([`target`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use membership::{ListenerKind, Member, MembershipHandle, NodeMeta, Role};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Pool};
use crate::config::BackendTransport;

/// How often the balancer re-advertises its own connection count.
const ADVERTISE_EVERY: Duration = Duration::from_secs(1);

/// Where new connections to one broker go, and whether they start with a PROXY v2
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    proxy_v2: bool,
}

/// The listener new connections to a broker advertising `meta` go to. With PROXY v2
/// on (`--proxy-protocol true`, the default): its first PROXY listener, else its
/// first plain MQTT listener *without* the header (a plain listener closes a
/// connection that starts with one). With PROXY v2 off: its first plain listener
/// only (a PROXY listener closes a connection without the header). The same, among
/// its TLS or WebSocket listeners of the kind asked for, with `--backend-transport`.
///
/// `None` when there is no such listener. A live broker advertising no listener at
/// all is draining: it keeps its clients for a while but gets no new ones.
fn target(meta: &NodeMeta, proxy_protocol: bool, transport: BackendTransport) -> Option<Target> {
    let (proxied, plain) = match kind(transport) {
        None => (meta.proxy.first().copied(), meta.mqtt.first().copied()),
        Some(kind) => {
            let of = |proxy: bool| {
                meta.listeners
                    .iter()
                    .find(|l| l.kind == kind && l.proxy == proxy)
                    .map(|l| l.addr)
            };
            (of(true), of(false))
        }
    };
    match (proxy_protocol, proxied, plain) {
        (true, Some(addr), _) => Some(Target {
            addr,
            proxy_v2: true,
        }),
        (_, _, Some(addr)) => Some(Target {
            addr,
            proxy_v2: false,
        }),
        _ => None,
    }
}

/// The advertised listener kind a transport uses (`None`: plain MQTT).
fn kind(transport: BackendTransport) -> Option<ListenerKind> {
    match transport {
        BackendTransport::Mqtt => None,
        BackendTransport::Tls => Some(ListenerKind::Tls),
        BackendTransport::Ws => Some(ListenerKind::Ws),
        BackendTransport::Wss => Some(ListenerKind::Wss),
    }
}

/// Keeps the pool in line with gossip membership for a balancer that sends (or
/// not) PROXY v2 headers.
#[derive(Debug)]
pub(crate) struct Follower {
    /// `--proxy-protocol`: use a broker's PROXY listener when it advertises one.
    proxy_protocol: bool,
    /// `--backend-transport`: which kind of listener.
    transport: BackendTransport,
    /// Runs (node id, generation) already reported as unusable: only PROXY
    /// listeners while PROXY v2 is off. Reported once, not at every sync.
    unusable: HashSet<(String, u64)>,
}

impl Follower {
    /// A follower for a balancer with `--proxy-protocol proxy_protocol` and
    /// `--backend-transport transport`.
    pub(crate) fn new(proxy_protocol: bool, transport: BackendTransport) -> Follower {
        Follower {
            proxy_protocol,
            transport,
            unusable: HashSet::new(),
        }
    }

    /// Brings `pool` in line with `members`. A backend is one run of a node (node
    /// id + generation + target): a restarted or readdressed node is a new backend
    /// and the old one is cancelled, which closes the connections proxied to it. A
    /// member that disappears (down or left) is cancelled the same way.
    pub(crate) fn sync(&mut self, pool: &Pool, members: &[Member]) {
        let current = pool.snapshot();
        let mut next = Vec::new();
        let brokers: Vec<&Member> = members
            .iter()
            .filter(|m| m.meta.role == Role::Broker)
            .collect();
        self.unusable.retain(|(id, generation)| {
            brokers
                .iter()
                .any(|m| &m.node_id == id && m.generation == *generation)
        });
        for m in brokers {
            let existing = current
                .iter()
                .find(|b| b.key() == m.node_id && b.generation() == m.generation);
            let target = target(&m.meta, self.proxy_protocol, self.transport);
            let backend = match (existing, target) {
                (Some(b), Some(t)) if b.addr() == t.addr && b.proxy_v2() == t.proxy_v2 => b.clone(),
                // Draining: keep the old backend (and its connections), route nothing new.
                (Some(b), None) => b.clone(),
                (_, Some(t)) => self.up(m, t),
                (None, None) => {
                    let proxy_only = match kind(self.transport) {
                        None => !m.meta.proxy.is_empty(),
                        Some(k) => m.meta.listeners.iter().any(|l| l.kind == k && l.proxy),
                    };
                    if proxy_only && self.unusable.insert((m.node_id.clone(), m.generation)) {
                        tracing::warn!(node = %m.node_id, proxy = ?m.meta.proxy, "broker has only PROXY listeners and --proxy-protocol is false: no connections for it (give it a --listen address, or run the balancer with --proxy-protocol true)");
                    }
                    continue;
                }
            };
            let accepting = target.is_some();
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

    /// A new backend for `m`, logged once: a node that will see the balancer's
    /// address instead of its clients' says so (at warn level when the balancer
    /// would have sent PROXY v2 but the node has no listener for it).
    fn up(&self, m: &Member, t: Target) -> Arc<Backend> {
        let (node, addr, generation) = (&m.node_id, t.addr, m.generation);
        if t.proxy_v2 {
            tracing::info!(%node, %addr, generation, proxy_v2 = true, "broker up: routing connections to it");
        } else if self.proxy_protocol {
            tracing::warn!(%node, %addr, generation, proxy_v2 = false, "broker up: routing connections to it without PROXY v2, as it advertises no PROXY listener; it will see the balancer's address instead of the clients' (start it with --proxy-listen ADDR to get them)");
        } else {
            tracing::info!(%node, %addr, generation, proxy_v2 = false, "broker up: routing connections to it (--proxy-protocol false: it sees the balancer's address)");
        }
        Arc::new(Backend::new(node.clone(), generation, addr, t.proxy_v2))
    }
}

/// Follows membership until `stop`, then leaves the cluster cleanly.
pub(crate) async fn run(
    handle: MembershipHandle,
    pool: Arc<Pool>,
    proxy_protocol: bool,
    transport: BackendTransport,
    stop: CancellationToken,
) {
    let mut follower = Follower::new(proxy_protocol, transport);
    let mut members = handle.members();
    let mut tick = tokio::time::interval(ADVERTISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        follower.sync(&pool, &members.borrow_and_update());
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
    fn backend_transport_picks_the_nodes_tls_or_websocket_listener() {
        use membership::AdvertisedListener;
        let l = |kind, addr: &str, proxy| AdvertisedListener {
            kind,
            addr: addr.parse().unwrap(),
            proxy,
        };
        let mut m = member("a", 1, &["127.0.0.1:1883"], 0);
        m.meta.listeners = vec![
            l(ListenerKind::Tls, "127.0.0.1:8883", false),
            l(ListenerKind::Ws, "127.0.0.1:8080", false),
            l(ListenerKind::Ws, "127.0.0.1:9080", true),
        ];
        let pick = |proxy, transport| {
            let t = target(&m.meta, proxy, transport)?;
            Some((t.addr.port(), t.proxy_v2))
        };
        assert_eq!(pick(true, BackendTransport::Ws), Some((9080, true)));
        assert_eq!(pick(false, BackendTransport::Ws), Some((8080, false)));
        assert_eq!(pick(true, BackendTransport::Tls), Some((8883, false)));
        assert_eq!(pick(true, BackendTransport::Wss), None, "no wss listener");
        assert_eq!(pick(true, BackendTransport::Mqtt), Some((1883, false)));
    }

    #[test]
    fn brokers_become_backends_and_others_do_not() {
        let pool = Pool::default();
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        let mut lb = member("lb-2", 1, &[], 0);
        lb.meta.role = Role::LoadBalancer;
        f.sync(
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
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        f.sync(
            &pool,
            &[
                member("a", 1, &["127.0.0.1:1"], 0),
                member("b", 1, &["127.0.0.1:2"], 0),
            ],
        );
        let before = pool.snapshot();
        f.sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 7)]);
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
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        f.sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        let old = pool.snapshot()[0].clone();
        f.sync(&pool, &[member("a", 2, &["127.0.0.1:1"], 0)]);
        assert!(old.gone().is_cancelled());
        assert_eq!(pool.snapshot()[0].generation(), 2);
    }

    #[test]
    fn a_draining_broker_keeps_its_connections_but_gets_no_new_ones() {
        let pool = Pool::default();
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        f.sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        let a = pool.snapshot()[0].clone();
        f.sync(&pool, &[member("a", 1, &[], 0)]);
        assert!(!a.gone().is_cancelled());
        assert!(!pool.snapshot()[0].is_accepting());
        f.sync(&pool, &[member("a", 1, &["127.0.0.1:1"], 0)]);
        assert!(pool.snapshot()[0].is_accepting());
    }

    fn with_proxy(mut m: Member, proxy: &[&str]) -> Member {
        m.meta.proxy = proxy.iter().map(|a| a.parse().unwrap()).collect();
        m
    }

    fn targets(pool: &Pool) -> Vec<(String, SocketAddr, bool)> {
        pool.snapshot()
            .iter()
            .map(|b| (b.key().to_string(), b.addr(), b.proxy_v2()))
            .collect()
    }

    #[test]
    fn proxy_v2_goes_to_a_proxy_listener_and_plain_tcp_to_a_node_without_one() {
        let pool = Pool::default();
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        let members = [
            with_proxy(member("a", 1, &["127.0.0.1:1883"], 0), &["127.0.0.1:2883"]),
            member("b", 1, &["127.0.0.1:1884"], 0),
            with_proxy(member("c", 1, &[], 0), &["127.0.0.1:2885"]),
        ];
        f.sync(&pool, &members);
        assert_eq!(
            targets(&pool),
            [
                ("a".into(), "127.0.0.1:2883".parse().unwrap(), true),
                ("b".into(), "127.0.0.1:1884".parse().unwrap(), false),
                ("c".into(), "127.0.0.1:2885".parse().unwrap(), true),
            ]
        );
    }

    #[test]
    fn without_proxy_v2_plain_listeners_only_and_proxy_only_nodes_reported_once() {
        let pool = Pool::default();
        let mut f = Follower::new(false, BackendTransport::Mqtt);
        let members = [
            with_proxy(member("a", 1, &["127.0.0.1:1883"], 0), &["127.0.0.1:2883"]),
            with_proxy(member("c", 1, &[], 0), &["127.0.0.1:2885"]),
        ];
        f.sync(&pool, &members);
        f.sync(&pool, &members);
        assert_eq!(
            targets(&pool),
            [("a".into(), "127.0.0.1:1883".parse().unwrap(), false)]
        );
        assert_eq!(f.unusable.len(), 1, "c is reported once");
        // Forgotten once it is gone (a later run is reported again).
        f.sync(&pool, &members[..1]);
        assert!(f.unusable.is_empty());
    }

    #[test]
    fn a_node_that_starts_advertising_a_proxy_listener_gets_a_new_backend() {
        let pool = Pool::default();
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        f.sync(&pool, &[member("a", 1, &["127.0.0.1:1883"], 0)]);
        let plain = pool.snapshot()[0].clone();
        f.sync(
            &pool,
            &[with_proxy(
                member("a", 1, &["127.0.0.1:1883"], 0),
                &["127.0.0.1:2883"],
            )],
        );
        assert!(plain.gone().is_cancelled());
        assert!(pool.snapshot()[0].proxy_v2());
    }

    #[test]
    fn a_proxy_only_node_drains_when_it_stops_advertising() {
        let pool = Pool::default();
        let mut f = Follower::new(true, BackendTransport::Mqtt);
        f.sync(
            &pool,
            &[with_proxy(member("a", 1, &[], 0), &["127.0.0.1:2883"])],
        );
        let a = pool.snapshot()[0].clone();
        f.sync(&pool, &[member("a", 1, &[], 0)]);
        assert!(!a.gone().is_cancelled());
        assert!(!pool.snapshot()[0].is_accepting());
    }
}
