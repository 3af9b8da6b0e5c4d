//! Clustering for AstraMQ: the parts that make several broker nodes one broker.
//!
//! - [`membership`] — who is in the cluster. SWIM-style gossip (the `foca` crate)
//!   over UDP: each node advertises its id, MQTT listeners, admin address, role and
//!   connection count; failures are detected in seconds; a clean shutdown leaves at
//!   once; with a cluster key every datagram is authenticated. The load balancer
//!   joins the same gossip with [`membership::Role::LoadBalancer`].

pub mod membership;
