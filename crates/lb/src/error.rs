//! [`LbError`]: why the load balancer could not start.

use std::net::SocketAddr;

use membership::MembershipError;

/// Why [`LoadBalancer::bind`](crate::LoadBalancer::bind) failed. Once running, the
/// balancer does not fail as a whole: a connection that cannot be served is closed
/// and logged.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The configuration is inconsistent (the message names the flag).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client listener could not be bound.
    #[error("listen: cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be read or used (the message names
    /// the file and flag).
    #[error("{0}")]
    Tls(String),
    /// Gossip membership could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}
