//! Gossip membership: which nodes are alive, and what they advertise.
//!
//! The SWIM protocol itself is `foca`'s: an I/O-free state machine fed with
//! datagrams and timer events. This module wraps it in one tokio task that owns the
//! UDP socket and the timer queue, and publishes the result.
//!
//! - `config` — [`MembershipConfig`], [`NodeMeta`], [`Role`]: what a node is told and
//!   what it advertises; timing defaults and their validation.
//! - `identity` — the foca identity: node id + gossip address + generation, so that a
//!   restarted node is a new identity that replaces the old one.
//! - `meta` — node metadata as versioned foca custom broadcasts (newest version wins).
//! - `frame` — the datagram envelope: `HMAC-SHA256(key, payload)[..16] || payload`.
//! - `view` — pure logic turning foca notifications and metadata into the published
//!   member list and [`MemberEvent`]s (unit-tested without sockets).
//! - `driver` — the task: one `select!` loop over the socket, the timers, and the
//!   handle's commands.
//! - `handle` — [`spawn`] and [`MembershipHandle`], the public face.
//! - `error` — [`MembershipError`].
//!
//! Design notes, timing trade-offs and the wire format: `docs/membership.md`.

mod config;
mod driver;
mod error;
mod frame;
mod handle;
mod identity;
mod meta;
mod view;

pub use config::{AdvertisedListener, ListenerKind, MembershipConfig, NodeMeta, Role};
pub use error::MembershipError;
pub use handle::{spawn, MembershipHandle, MembershipStats};
pub use view::{Member, MemberEvent};
