//! Queue-depth metrics, read at each scrape: messages and bytes queued for the
//! node's sessions in total (`astramq_queued_messages`, `astramq_queued_bytes`),
//! deliveries in flight (`astramq_inflight_messages`) and sessions parked without a
//! connection (`astramq_sessions_parked`). Per session:
//! `GET /api/v1/clients/{id}`.

use std::fmt;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::broker::Broker;
use crate::metrics::Scrape;

/// Reads the broker at each scrape. Holds it weakly: the broker's metrics registry
/// holds this.
#[derive(Debug)]
pub(crate) struct QueueDepth(pub(crate) Weak<Broker>);

impl Collector for QueueDepth {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(broker) = self.0.upgrade() else {
            return Ok(());
        };
        let (messages, bytes, inflight) = broker.router.queued();
        let mut s = Scrape::new(encoder);
        s.gauge(
            "astramq_queued_messages",
            "Messages queued for this node's sessions (connected or parked), not yet \
             sent; bounded per session by limits.max_queued_messages.",
            messages as i64,
        )?;
        s.gauge(
            "astramq_queued_bytes",
            "Bytes of the messages queued for this node's sessions; bounded per session \
             by limits.max_queued_bytes.",
            bytes as i64,
        )?;
        s.gauge(
            "astramq_inflight_messages",
            "Deliveries sent to this node's subscribed sessions and not yet acknowledged \
             (QoS 1 PUBACK, QoS 2 PUBCOMP); bounded per session by its Receive Maximum.",
            inflight as i64,
        )?;
        s.gauge(
            "astramq_sessions_parked",
            "Persistent sessions held on this node without a connection.",
            broker.registry.parked() as i64,
        )
    }
}
