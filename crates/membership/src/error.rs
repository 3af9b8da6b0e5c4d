//! [`MembershipError`]: why membership could not start.

use std::net::SocketAddr;

/// Why [`spawn`](super::spawn) failed. Once running, membership does not fail: bad
/// datagrams are dropped and counted, and network trouble shows up as members going
/// down.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is inconsistent (the message says which field and why).
    #[error("invalid membership configuration: {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind gossip socket on {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The bound socket has no usable address to advertise (e.g. bound to
    /// `0.0.0.0` without [`advertise`](super::MembershipConfig::advertise)).
    #[error("cannot advertise {0}: set `advertise` to an address other members can reach")]
    Unadvertisable(SocketAddr),
    /// The membership thread or its runtime could not be started.
    #[error("cannot start the membership thread: {0}")]
    Runtime(std::io::Error),
    /// The advertised metadata does not fit in one gossip datagram.
    #[error("node metadata encodes to {len} bytes, more than the {max} a datagram can carry")]
    MetaTooLarge {
        /// Encoded size.
        len: usize,
        /// Limit.
        max: usize,
    },
}
