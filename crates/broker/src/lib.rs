//! The AstraMQ broker: a complete MQTT 3.1 / 3.1.1 / 5.0 broker node.
//!
//! - [`config`] — typed configuration and its validation.
//! - [`server`] — listeners, accept loop, graceful shutdown.
//! - [`listener`] — set-up before MQTT: PROXY header, TLS handshake (client
//!   certificates, reloading), WebSocket upgrade.
//! - [`proxy`] — PROXY protocol v2 headers on `proxy_listen` listeners.
//! - [`connection`] — bytes ⇄ packets on one socket.
//! - [`client`] — one connection's life: CONNECT, PUBLISH flows, SUBSCRIBE.
//! - [`session`] — a session's protocol state (packet ids, in-flight window), no I/O.
//! - [`mailbox`] — a session's bounded delivery queue (also its offline queue).
//! - [`router`] — the subscription index and fan-out, shared subscriptions.
//! - [`retain`] — retained messages.
//! - [`registry`] — one connection per client id, takeover, parked sessions.
//! - [`broker`] — the state shared by all connections; publish, wills, session end.
//! - [`access`] — what the admin API and the binary may read or change in a broker.
//! - [`handle`] — what the cluster and the disk store's restore may do to it.
//! - [`durable`] — what a publisher's acknowledgement waits for (stored copies).
//! - [`cluster`] — the interface a cluster offers the broker (none on a single node).
//! - [`message`] — a message as it travels through the broker.
//! - [`auth`] — anonymous access, password file and ACL decisions.
//! - [`metrics`] — typed metrics (counters, gauges, histograms) in one registry;
//!   `depth` adds the queue depths, read at each scrape.
//! - [`rate`] — token buckets for publish and connection rate limits.
//! - [`health`] — the node's health as `GET /health` reports it.
//! - [`signal`] — a small wake-up for the one task waiting on it.

pub mod access;
pub mod arrival;
pub mod auth;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
mod depth;
pub mod durable;
pub mod handle;
pub mod health;
pub mod listener;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod rate;
pub mod registry;
pub mod retain;
pub mod router;
pub mod server;
pub mod session;
pub mod signal;
pub mod store;
pub mod sys;
#[cfg(test)]
mod test_support;

pub use config::Config;
pub use server::{Server, ServerError};
