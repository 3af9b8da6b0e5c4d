//! The cluster's metrics, added to the broker's registry when the node starts: a
//! collector reading the node's state when scraped (Redis health, bus backlog,
//! session store, failed nodes and repairs, gossip), plus the Redis round-trip
//! histogram, which the shared connection fills ([`crate::conn::Measured`]).

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use broker::handle::LocalBroker;
use broker::metrics::prometheus_client::collector::Collector;
use broker::metrics::prometheus_client::encoding::DescriptorEncoder;
use broker::metrics::Scrape;

use super::ClusterNode;

/// Reads a [`ClusterNode`] at each scrape. Holds it weakly: the node holds the
/// broker, whose registry holds this.
#[derive(Debug)]
struct ClusterMetrics(Weak<ClusterNode>);

/// Milliseconds as seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl ClusterNode {
    /// Registers the cluster's metrics in `broker`'s registry (once, at start).
    pub(super) fn register_metrics(self: &Arc<Self>, broker: &LocalBroker) {
        broker.metrics().register(
            "astramq_redis_round_trip_seconds",
            "Round trips to Redis on the node's shared connection (every command and \
             pipeline except the blocking stream reads), from request to reply",
            self.redis.health().round_trips.clone(),
        );
        broker
            .metrics()
            .register_collector(Box::new(ClusterMetrics(Arc::downgrade(self))));
    }
}

impl Collector for ClusterMetrics {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let mut s = Scrape::new(encoder);
        let h = node.redis.health();
        s.gauge(
            "astramq_redis_reachable",
            "1 while Redis is reachable from this node, 0 during an outage.",
            i64::from(h.is_reachable()),
        )?;
        s.counter(
            "astramq_redis_outages",
            "Redis outages seen by this node.",
            h.outages.load(Relaxed),
        )?;
        s.gauge(
            "astramq_redis_last_outage_seconds",
            "Length of the last finished Redis outage.",
            secs(h.last_outage_ms.load(Relaxed)),
        )?;
        s.counter(
            "astramq_redis_errors",
            "Failed round trips on the shared Redis connection (error replies, lost \
             connections, timeouts).",
            h.errors.load(Relaxed),
        )?;
        s.counter(
            "astramq_redis_data_losses",
            "Times Redis came back without its data (state re-published).",
            h.data_losses.load(Relaxed),
        )?;
        s.counter(
            "astramq_redis_refused_connects",
            "CONNECTs refused (0x88) because Redis was unreachable.",
            h.refused_connects.load(Relaxed),
        )?;
        s.counter(
            "astramq_redis_refused_publishes",
            "QoS 1/2 messages for other nodes refused because Redis was unreachable.",
            h.refused_publishes.load(Relaxed),
        )?;
        s.counter(
            "astramq_redis_dropped_qos0",
            "QoS 0 copies for other nodes dropped because Redis was unreachable.",
            h.dropped_qos0.load(Relaxed),
        )?;
        let backlog = node.backlog_totals();
        s.gauge(
            "astramq_cluster_forward_backlog_bytes",
            "Bytes waiting for the forwarder, every destination and lane (bounded by \
             cluster.forward_backlog_bytes per destination and lane).",
            backlog.bytes as i64,
        )?;
        s.gauges(
            "astramq_cluster_forward_backlog_messages",
            "Messages waiting for the forwarder, every destination, by lane (bounded per \
             destination by cluster.forward_qos0_backlog and cluster.forward_qos12_backlog).",
            "lane",
            &[
                ("qos0", backlog.qos0 as i64),
                ("qos12", backlog.qos12 as i64),
            ],
        )?;
        // Per peer: every other broker gossip lists, at 0 when nothing waits for it.
        let peers: Vec<String> = node
            .members()
            .into_iter()
            .filter(|m| m.meta.role == membership::Role::Broker)
            .map(|m| m.node_id)
            .collect();
        let mut messages = Vec::with_capacity(peers.len() * 2);
        let mut bytes = Vec::with_capacity(peers.len());
        let mut full = Vec::with_capacity(peers.len());
        let mut entries = Vec::with_capacity(peers.len());
        for peer in peers {
            let d = node.backlog.dest(&peer);
            let p = || ("peer", peer.clone());
            messages.push((vec![p(), ("lane", "qos0".into())], d.qos0 as i64));
            messages.push((vec![p(), ("lane", "qos12".into())], d.qos12 as i64));
            bytes.push((vec![p()], (d.qos0_bytes + d.qos12_bytes) as i64));
            full.push((vec![p()], i64::from(d.inbox_full)));
            entries.push((vec![p()], d.inbox_entries as i64));
        }
        s.gauges_by(
            "astramq_cluster_peer_backlog_messages",
            "Messages waiting to cross the bus toward each other broker, by lane.",
            &messages,
        )?;
        s.gauges_by(
            "astramq_cluster_peer_backlog_bytes",
            "Bytes waiting to cross the bus toward each other broker.",
            &bytes,
        )?;
        s.gauges_by(
            "astramq_cluster_peer_inbox_full",
            "1 while the peer's inbox stream held cluster.inbox_backlog_entries or more \
             unread entries when last written to (it is falling behind; QoS 0 to it is shed).",
            &full,
        )?;
        s.gauges_by(
            "astramq_cluster_peer_inbox_entries",
            "Entries in each other broker's inbox stream when this node last wrote to \
             it (XLEN after the XADD): batches that broker has not yet read and \
             acknowledged, from every sender — its lag.",
            &entries,
        )?;
        s.gauge(
            "astramq_cluster_inbox_backlog_full_nodes",
            "Destination nodes whose inbox stream held cluster.inbox_backlog_entries or \
             more unread entries when last written to (QoS 0 to them is shed, QoS 1/2 \
             publishers wait for room).",
            backlog.inbox_full as i64,
        )?;
        s.gauge(
            "astramq_cluster_acks_held",
            "QoS 1/2 acknowledgements of messages already written to another node's \
             inbox, held until that inbox is below cluster.inbox_backlog_entries again \
             (at most cluster.inbox_backlog_hold_ms); their publishers are not read \
             meanwhile.",
            backlog.held as i64,
        )?;
        s.gauge(
            "astramq_cluster_feed_queued",
            "Route and retained-message changes waiting to be written to Redis \
             (coalesced: at most one per route and per retained topic).",
            node.changes.len() as i64,
        )?;
        s.counter(
            "astramq_cluster_node_failures",
            "Nodes gossip declared failed, as seen by this node.",
            node.failures_detected.load(Relaxed),
        )?;
        s.gauge(
            "astramq_cluster_failure_confirm_seconds",
            "Last failure: time from gossip declaring the node failed to Redis \
             confirming it (its liveness key expired).",
            secs(node.last_confirm_ms.load(Relaxed)),
        )?;
        s.counter(
            "astramq_cluster_repairs",
            "Failed nodes whose sessions this node took over.",
            node.nodes_repaired.load(Relaxed),
        )?;
        s.counter(
            "astramq_cluster_sessions_adopted",
            "Sessions this node took over from failed nodes.",
            node.sessions_adopted.load(Relaxed),
        )?;
        s.gauge(
            "astramq_cluster_last_repair_seconds",
            "Last takeover of a failed node's sessions: how long it took.",
            secs(node.last_repair_ms.load(Relaxed)),
        )?;
        let store = node.sessions.queue();
        s.gauges(
            "astramq_session_store_queued",
            "Persistent-session writes waiting for Redis, by kind: journal entries \
             (bounded by cluster.session_store_max_queued) and other changes.",
            "kind",
            &[
                ("journal", store.entries() as i64),
                ("change", store.changes() as i64),
            ],
        )?;
        s.gauge(
            "astramq_session_store_writing",
            "Journal entries in the batch the session store is writing to Redis now.",
            store.writing() as i64,
        )?;
        s.counter(
            "astramq_session_store_refused",
            "Deliveries to persistent sessions refused (message not acknowledged) because \
             cluster.session_store_max_queued of them waited for Redis.",
            store.refused(),
        )?;
        let gossip = node.membership.lock().as_ref().map(|m| m.stats());
        let gossip = gossip.unwrap_or_default();
        s.gauges(
            "astramq_gossip_members",
            "Other members gossip knows, by state: alive, suspect (suspected of having \
             failed, not yet declared down), down (declared down, remembered for a while).",
            "state",
            &[
                ("alive", gossip.alive as i64),
                ("suspect", gossip.suspect as i64),
                ("down", gossip.down as i64),
            ],
        )?;
        s.counter(
            "astramq_gossip_datagrams_rejected",
            "Gossip datagrams dropped: failed authentication (cluster.key) or unusable.",
            gossip.rejected_auth + gossip.rejected_invalid,
        )
    }
}
