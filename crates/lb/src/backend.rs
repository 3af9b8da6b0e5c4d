//! The backend pool: the broker nodes a connection may go to, with what the
//! balancer knows about each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::balance::{self, Candidate};
use crate::config::Strategy;

/// Longest a failing node is skipped before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One broker node as seen by the balancer.
#[derive(Debug)]
pub struct Backend {
    /// Stable identity: the node id in gossip mode, the address in static mode.
    /// Client-id hashing uses it, so it must survive restarts.
    key: String,
    /// Gossip generation (0 in static mode); a new one is a new backend.
    generation: u64,
    /// Where to connect.
    addr: SocketAddr,
    /// Whether connections start with a PROXY v2 header (`addr` is a PROXY listener).
    proxy_v2: bool,
    /// False while the node drains: no new connections, existing ones stay.
    accepting: AtomicBool,
    /// Connections this balancer holds to the node now.
    active: AtomicU64,
    /// Connections the node last advertised through gossip (all sources).
    advertised: AtomicU64,
    /// `active` when `advertised` was last updated: connections we added since are
    /// not in the advertised figure yet.
    active_at_advert: AtomicI64,
    /// Failure backoff: skip until `until`; `failures` in a row so far.
    failure: Mutex<Failure>,
    /// Cancelled when the node is gone: every proxied connection to it closes.
    gone: CancellationToken,
}

#[derive(Debug, Default)]
struct Failure {
    until: Option<Instant>,
    failures: u32,
}

impl Backend {
    /// A backend that accepts connections and has none yet. With `proxy_v2` every
    /// connection to `addr` starts with a PROXY protocol v2 header, so `addr` must be
    /// a PROXY listener (`--proxy-listen`); without it, a plain MQTT listener.
    pub fn new(
        key: impl Into<String>,
        generation: u64,
        addr: SocketAddr,
        proxy_v2: bool,
    ) -> Backend {
        Backend {
            key: key.into(),
            generation,
            addr,
            proxy_v2,
            accepting: AtomicBool::new(true),
            active: AtomicU64::new(0),
            advertised: AtomicU64::new(0),
            active_at_advert: AtomicI64::new(0),
            failure: Mutex::new(Failure::default()),
            gone: CancellationToken::new(),
        }
    }

    /// The node's stable key (node id or address).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The gossip generation (0 for static backends).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The MQTT address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections to the node start with a PROXY protocol v2 header.
    pub fn proxy_v2(&self) -> bool {
        self.proxy_v2
    }

    /// Connections this balancer currently proxies to the node.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether new connections may go to the node (false while draining).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Relaxed);
    }

    /// Records the connection count the node advertises.
    pub(crate) fn set_advertised(&self, n: u64) {
        let own = self.active() as i64;
        self.advertised.store(n, Ordering::Relaxed);
        self.active_at_advert.store(own, Ordering::Relaxed);
    }

    /// Best estimate of the node's connections: what it advertised, corrected by
    /// what we opened or closed since, and never below what we hold ourselves.
    pub(crate) fn load(&self) -> u64 {
        let own = self.active() as i64;
        let advertised = self.advertised.load(Ordering::Relaxed) as i64;
        let since = own - self.active_at_advert.load(Ordering::Relaxed);
        (advertised + since).max(own).max(0) as u64
    }

    /// Whether the node is in failure backoff at `now`.
    pub(crate) fn is_backing_off(&self, now: Instant) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .until
            .is_some_and(|until| now < until)
    }

    /// A connection attempt failed: skip the node for `base` × 2^(failures − 1).
    pub(crate) fn mark_failed(&self, base: Duration) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.failures = f.failures.saturating_add(1);
        let backoff = base
            .saturating_mul(1 << (f.failures - 1).min(16))
            .min(MAX_BACKOFF);
        f.until = Some(Instant::now() + backoff);
        tracing::warn!(backend = %self.key, addr = %self.addr, ?backoff, failures = f.failures, "backend unreachable, skipping it");
    }

    /// A connection attempt succeeded: forget past failures.
    pub(crate) fn mark_ok(&self) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.failures > 0 {
            tracing::info!(backend = %self.key, addr = %self.addr, "backend reachable again");
        }
        *f = Failure::default();
    }

    /// Counts one proxied connection until the guard is dropped.
    pub(crate) fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Resolves once the node is gone (dead, left, or replaced by a restart).
    pub(crate) fn gone(&self) -> &CancellationToken {
        &self.gone
    }
}

/// One connection counted on a [`Backend`]; the count drops with the guard.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current set of backends, shared by every connection task.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    /// Round-robin position (also rotates least-connections ties).
    turn: AtomicUsize,
    /// Woken on every [`replace`](Self::replace).
    changed: Notify,
}

impl Pool {
    /// A pool over a fixed list.
    pub fn new(backends: Vec<Arc<Backend>>) -> Pool {
        Pool {
            backends: RwLock::new(backends),
            turn: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// Every backend, in pool order.
    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the set (gossip changes). Backends that are no longer present are
    /// cancelled, which closes the connections proxied to them.
    pub fn replace(&self, next: Vec<Arc<Backend>>) {
        let previous = std::mem::replace(
            &mut *self.backends.write().unwrap_or_else(|p| p.into_inner()),
            next.clone(),
        );
        for old in previous {
            if !next.iter().any(|b| Arc::ptr_eq(b, &old)) {
                old.gone.cancel();
            }
        }
        self.changed.notify_waiters();
    }

    /// Resolves at the next [`replace`](Self::replace). Create it before checking
    /// the pool, so a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Total connections proxied now.
    pub fn active(&self) -> u64 {
        self.snapshot().iter().map(|b| b.active()).sum()
    }

    /// Chooses a backend for a new connection, skipping `tried` ones (that already
    /// failed for this connection) and draining ones. Nodes in failure backoff are
    /// used only when nothing else is left: a node that refused once may be back,
    /// and trying it beats refusing the client.
    pub fn pick(
        &self,
        strategy: Strategy,
        client_id: Option<&str>,
        factor: f64,
        tried: &[Arc<Backend>],
    ) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let open: Vec<Arc<Backend>> = self
            .snapshot()
            .into_iter()
            .filter(|b| b.is_accepting() && !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .collect();
        let healthy: Vec<Arc<Backend>> = open
            .iter()
            .filter(|b| !b.is_backing_off(now))
            .cloned()
            .collect();
        let pool = if healthy.is_empty() { open } else { healthy };
        if pool.is_empty() {
            return None;
        }
        let candidates: Vec<Candidate<'_>> = pool
            .iter()
            .map(|b| Candidate {
                key: b.key(),
                load: b.load(),
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let index = match (strategy, client_id) {
            (Strategy::RoundRobin, _) => balance::round_robin(pool.len(), turn),
            // An empty client id gets a server-assigned one: no session to find.
            (Strategy::ClientId, Some(id)) if !id.is_empty() => {
                balance::by_client_id(&candidates, id, factor)
            }
            (Strategy::LeastConnections | Strategy::ClientId, _) => {
                balance::least_loaded(&candidates, turn)
            }
        };
        Some(pool[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool::new(
            (0..n)
                .map(|i| {
                    Arc::new(Backend::new(
                        format!("n{i}"),
                        0,
                        SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                        true,
                    ))
                })
                .collect(),
        )
    }

    fn pick(p: &Pool, s: Strategy, tried: &[Arc<Backend>]) -> String {
        p.pick(s, None, 1.25, tried).unwrap().key().to_string()
    }

    #[test]
    fn failed_nodes_are_skipped_while_others_remain() {
        let p = pool(3);
        let all = p.snapshot();
        all[1].mark_failed(Duration::from_secs(60));
        for _ in 0..6 {
            assert_ne!(pick(&p, Strategy::RoundRobin, &[]), "n1");
        }
        // Last resort: only the failed one is left untried.
        assert_eq!(
            pick(&p, Strategy::RoundRobin, &[all[0].clone(), all[2].clone()]),
            "n1"
        );
        all[1].mark_ok();
        assert!(!all[1].is_backing_off(Instant::now()));
    }

    #[test]
    fn draining_nodes_get_nothing_new() {
        let p = pool(2);
        p.snapshot()[0].set_accepting(false);
        for _ in 0..4 {
            assert_eq!(pick(&p, Strategy::RoundRobin, &[]), "n1");
        }
        p.snapshot()[1].set_accepting(false);
        assert!(p.pick(Strategy::RoundRobin, None, 1.25, &[]).is_none());
    }

    #[test]
    fn least_connections_counts_own_and_advertised() {
        let p = pool(2);
        let all = p.snapshot();
        let _a = all[0].track();
        let _b = all[0].track();
        assert_eq!(pick(&p, Strategy::LeastConnections, &[]), "n1");
        // n1 advertises many connections (other balancers, direct clients).
        all[1].set_advertised(10);
        assert_eq!(all[1].load(), 10);
        assert_eq!(pick(&p, Strategy::LeastConnections, &[]), "n0");
        // Our own new connections count on top of the advertised figure.
        let _c = all[1].track();
        assert_eq!(all[1].load(), 11);
        drop(_a);
        assert_eq!(all[0].active(), 1);
    }

    #[test]
    fn removed_backends_are_cancelled() {
        let p = pool(2);
        let all = p.snapshot();
        p.replace(vec![all[1].clone()]);
        assert!(all[0].gone().is_cancelled());
        assert!(!all[1].gone().is_cancelled());
    }
}
