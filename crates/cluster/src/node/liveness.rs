//! This node's liveness key in Redis and what it means for serving: the lease other
//! nodes go by before they take this node's sessions over, the stall gate that holds
//! every connection once that lease may have ended (a frozen process, or a node cut
//! off from both gossip and Redis), and the check of which sessions were taken over
//! meanwhile before the gate opens again.

use std::sync::Arc;
use std::time::Duration;

use broker::handle::BrokerHandle;
use tokio::sync::{oneshot, watch};

use super::ClusterNode;

/// Keeps this node's liveness key alive while it runs. If this process was frozen
/// longer than the key lives (SIGSTOP, a paused VM), connections are held (see
/// `StallGate`) while it checks which of its sessions other nodes took over.
///
/// While Redis is out of reach connections go on (a Redis outage: nobody can take
/// this node's sessions), unless this node, which was in a cluster, also hears no one
/// on gossip any more: then the others may declare it failed and take its sessions
/// over once its key lapses, so it holds every connection from that moment on (the
/// lease it last renewed ends) until Redis is back and it has dropped what it lost.
pub(super) async fn liveness(
    conn: crate::conn::Conn,
    key: String,
    generation: u64,
    ttl: Duration,
    handle: BrokerHandle,
    this: oneshot::Receiver<std::sync::Weak<ClusterNode>>,
    mut stop: watch::Receiver<bool>,
) {
    let node = this.await.unwrap_or_default();
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = Lease::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (Some(n), Some(broker)) = (node.upgrade(), handle.upgrade()) else {
                    return;
                };
                if let Some(gap) = broker.stall().stalled() {
                    if lease.note_stall() {
                        tracing::warn!(ms = gap.as_millis() as u64, "this node was frozen or cut off longer than cluster.liveness_ttl_ms; checking which sessions it still owns before serving");
                    }
                    // Connections stay held until that check could be made.
                    if !n.drop_lost_sessions().await {
                        continue;
                    }
                }
                let started = std::time::Instant::now();
                // Bounded by a tick, so that a Redis that stopped answering (a cut
                // link, no reset) does not hold up the ticks.
                let set = tokio::time::timeout(
                    ttl / 4,
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(generation)
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async::<()>(&mut conn.clone()),
                )
                .await
                .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()));
                let heard = n.membership_stats().map_or(0, |s| s.received);
                match set {
                    Ok(()) => {
                        lease.renewed(started, n.broker_peers(), heard);
                        broker.stall().beat();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot refresh the liveness key");
                        if lease.isolated(heard, ttl / 2) {
                            if lease.fence() {
                                tracing::warn!("cut off from redis and from every other node; holding client connections (other nodes may take this node's sessions over) until redis is back");
                            }
                            broker.stall().rewind(lease.since);
                        } else {
                            // Redis is out of reach for everyone, or the others still
                            // hear this node (their claims are refused): go on.
                            broker.stall().beat();
                        }
                    }
                }
            }
            _ = stop.changed() => {
                let _ = redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn.clone()).await;
                return;
            }
        }
    }
}

/// This node's liveness lease as the liveness task sees it (see [`liveness`]).
#[derive(Debug)]
struct Lease {
    /// When the last refresh that succeeded was sent: the key lives at least until
    /// this + `liveness_ttl`.
    since: std::time::Instant,
    /// Other broker nodes gossip listed at that refresh (none: nobody could take
    /// this node's sessions).
    peers: usize,
    /// Gossip datagrams received as of the last look, and when that count last moved.
    heard: u64,
    heard_at: std::time::Instant,
    fenced: bool,
    /// The current stall (gate closed) was logged.
    stall_noted: bool,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            since: std::time::Instant::now(),
            peers: 0,
            heard: 0,
            heard_at: std::time::Instant::now(),
            fenced: false,
            stall_noted: false,
        }
    }
}

impl Lease {
    fn renewed(&mut self, at: std::time::Instant, peers: usize, heard: u64) {
        *self = Lease {
            since: at,
            peers,
            heard,
            heard_at: std::time::Instant::now(),
            fenced: false,
            stall_noted: false,
        };
    }

    /// After a failed refresh: whether this node, which had other broker nodes, has
    /// heard no gossip datagram for `quiet` (every member probes one other every
    /// probe period and gossips more often: silence that long means nobody hears
    /// this node either).
    fn isolated(&mut self, heard: u64, quiet: Duration) -> bool {
        if heard != self.heard {
            self.heard = heard;
            self.heard_at = std::time::Instant::now();
        }
        self.peers > 0 && self.heard_at.elapsed() >= quiet
    }

    /// Marks the current stall as seen; true the first time (to log once).
    fn note_stall(&mut self) -> bool {
        !std::mem::replace(&mut self.stall_noted, true)
    }

    /// Marks the lease as given up; true the first time (to log once).
    fn fence(&mut self) -> bool {
        !std::mem::replace(&mut self.fenced, true)
    }
}

/// Takes over a failed node's sessions once Redis confirms it is dead (its liveness
/// key expired): gossip alone may call a merely slow node dead.
pub(super) async fn repair_sessions(node: Arc<ClusterNode>, dead: String) {
    let declared = std::time::Instant::now();
    let deadline = declared + Duration::from_secs(10);
    loop {
        match node.is_alive(&dead).await {
            Ok(false) => break,
            Ok(true) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(true) => {
                tracing::info!(node = %dead, "node declared failed by gossip is alive in redis; its sessions stay with it");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %dead, error = %e, "cannot confirm a node's failure in redis; not taking its sessions");
                return;
            }
        }
    }
    let ms = declared.elapsed().as_millis() as u64;
    node.last_confirm_ms
        .store(ms, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(node = %dead, ms, "node failure confirmed in redis (liveness expired)");
    node.repair_node(&dead).await;
}
