//! Clustering for AstraMQ: the parts that make several broker nodes one broker.
//!
//! - who is in the cluster: the `astramq-membership` crate (SWIM-style gossip over
//!   UDP through `foca`; each node advertises its id, MQTT listeners, admin address,
//!   role and connection count). The load balancer uses that crate alone.
//! - [`conn`] — connections to Redis (single, TLS, Sentinel, Cluster) and the key
//!   layout (prefix and hash tags).
//! - [`tls`] — TLS toward Redis (`rediss://`, `rediss+cluster://`,
//!   `rediss+sentinel://`): verification, a custom CA, a client certificate.
//! - [`durable`] — `WAIT` for replicas before an acknowledgement is released
//!   (`cluster.redis_wait_replicas`).
//! - [`sentinel`] — a connection that follows a Sentinel failover (reopens through
//!   Sentinel after a lost connection or a `READONLY` from a demoted master).
//! - [`routes`] — the cluster route table in memory: which nodes need a message, and
//!   which node serves each shared-subscription group.
//! - [`wire`] — the records nodes exchange through Redis.
//! - [`feed`] — routes and retained messages in Redis, and the change feed that keeps
//!   every node's copy current.
//! - [`backlog`] — what waits to cross the bus: two lanes (QoS 1/2 first), bounded
//!   per destination node.
//! - [`bus`] — the inbox streams: batched forwarding, and the consumer that delivers
//!   what other nodes sent.
//! - [`health`] — whether Redis is reachable: outage detection, fail-fast refusals,
//!   one log line per transition, the counters behind the health endpoint.
//! - [`sessions`] — persistent sessions in Redis (subscriptions, will, and a journal
//!   of unacknowledged deliveries), so that a session outlives its node.
//! - [`lifetime`] — every key's lifetime: session keys expire with their session
//!   (refreshed while it lives), a failed node's inbox goes after its repair.
//! - [`node`] — [`node::ClusterNode`]: starts all of the above and implements the
//!   broker's `Cluster` interface.

pub mod backlog;
pub mod bus;
pub mod conn;
pub mod durable;
pub mod feed;
pub mod health;
pub mod keys;
pub mod lifetime;
pub mod node;
pub mod routes;
mod scripts;
pub mod sentinel;
pub mod sessions;
pub mod timings;
pub mod tls;
pub mod wire;

pub use node::{ClusterNode, StartError};
