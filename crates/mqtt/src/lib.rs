//! The MQTT protocol, free of I/O: what every other AstraMQ crate speaks.
//!
//! - [`packet`] — the packet types of MQTT 3.1, 3.1.1 and 5.0, with their properties.
//! - [`reason`] — v5 reason codes and their v3 equivalents.
//! - [`codec`] — bytes ⇄ packets (`decode`, `encode`), and [`codec::SharedPublish`],
//!   a PUBLISH encoded once and patched per subscriber.
//! - [`topic`] — topic name and filter validation, matching, shared-subscription
//!   parsing, and [`topic::TopicTree`], the subscription index.

pub mod codec;
pub mod packet;
pub mod reason;
pub mod topic;

pub use codec::{decode, encode, DecodeError, EncodeError, SharedPublish};
pub use packet::*;
pub use reason::ReasonCode;
