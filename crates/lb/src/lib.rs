//! The AstraMQ load balancer (`astramq lb`): a TCP proxy that sends each new client
//! connection to a live broker node.
//!
//! - [`config`] — [`LbArgs`] (the command-line flags) and [`LbConfig`], the validated
//!   configuration they turn into: where to listen, how backends are found (static
//!   list or gossip), the [`Strategy`], timeouts.
//! - `balance` — the choice itself, pure and unit-tested: round robin,
//!   least connections, and client-id affinity by rendezvous hashing with bounded
//!   load.
//! - `backend` — the backend pool: one [`Backend`] per broker node with its own
//!   connection count, advertised count, failure backoff and a token that closes
//!   every proxied connection when the node dies.
//! - `discovery` — keeps the pool in step with gossip membership (brokers joining,
//!   draining, leaving, dying), and picks each broker's listener: its PROXY listener
//!   (with the header) when it advertises one, else its plain MQTT listener.
//! - `first_packet` — client-id mode: read and validate the first packet as an MQTT
//!   CONNECT before choosing a node.
//! - `proxy_v2` — the PROXY protocol v2 header written first to a broker's PROXY
//!   listener.
//! - [`server`] — [`LoadBalancer`]: bind, accept, connect with retry on another
//!   node, copy both ways, shutdown.
//! - [`tls`] — optional TLS termination (`--tls-cert`/`--tls-key`).
//! - [`error`] — [`LbError`].
//!
//! The balancer works at the TCP level: it never terminates MQTT, so WebSocket (or
//! TLS, when the balancer does not terminate it) from the client passes through
//! unchanged, except in client-id mode, which must read a plain MQTT CONNECT. With
//! `--tls-cert`/`--tls-key` the balancer terminates TLS itself and every strategy
//! works on the decrypted stream; the brokers get plain MQTT (after the PROXY v2
//! header, where one is sent). Deployment notes: `docs/deploy.md`.

mod backend;
mod balance;
pub mod config;
mod discovery;
pub mod error;
mod first_packet;
mod proxy_v2;
pub mod server;
pub mod tls;

pub use backend::Backend;
pub use config::{Discovery, LbArgs, LbConfig, Strategy};
pub use error::LbError;
pub use server::LoadBalancer;
pub use tls::TlsFiles;
