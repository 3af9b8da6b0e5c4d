//! The bytes nodes exchange through Redis: bus records (forwarded messages, takeover
//! requests) and change-feed records (routes, retained messages).
//!
//! A forwarded message is carried as an MQTT 5.0 PUBLISH packet, encoded by our own
//! codec, so every property (expiry, user properties, correlation data...) crosses
//! nodes with no second format to maintain. Around it a small header says who
//! published it and which shared-subscription groups the receiving node serves.
//!
//! The files: `wire/bus.rs` (inbox entries: [`BusRecord`], [`read_records`]),
//! `wire/feed.rs` (change-feed records and retained messages), `wire/session.rs`
//! (a session's journal, subscriptions and will as stored in Redis) and
//! `wire/parts.rs` (what records are made of: strings, integers, subscription options,
//! deliveries, PUBLISH bytes).

mod bus;
mod feed;
mod parts;
mod session;
#[cfg(test)]
mod tests;

pub use bus::*;
pub use feed::*;
pub use parts::{message_key, publish_bytes};
pub use session::*;

use thiserror::Error;

/// A record that could not be decoded (a bug or a foreign writer): it is logged and
/// skipped, never delivered half-read.
#[derive(Debug, Error)]
#[error("bad cluster record: {0}")]
pub struct WireError(pub String);
