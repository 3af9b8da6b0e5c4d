//! The change feed's records ([`FeedRecord`]: routes added and removed, retained
//! messages changed) and a retained message as stored in Redis.

use std::sync::Arc;
use std::time::Instant;

use broker::message::Message;
use bytes::{Buf, BufMut, BytesMut};
use mqtt::{decode, Packet, Protocol};

use super::parts::*;
use super::WireError;

/// A change to cluster-wide state, as carried on the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRecord {
    /// `node` now has local subscribers for `filter`.
    RouteAdded {
        /// The node.
        node: String,
        /// The full filter (`$share/...` included).
        filter: String,
    },
    /// `node` no longer has local subscribers for `filter`.
    RouteRemoved {
        /// The node.
        node: String,
        /// The full filter.
        filter: String,
    },
    /// The retained message of `topic` changed; the value is in the retained hash.
    Retained {
        /// The node that set it (it already applied the change).
        node: String,
        /// The topic.
        topic: String,
    },
}

impl FeedRecord {
    /// The stream entry fields for this record.
    pub fn to_fields(&self) -> [(&'static str, &str); 3] {
        match self {
            FeedRecord::RouteAdded { node, filter } => [("k", "r+"), ("n", node), ("v", filter)],
            FeedRecord::RouteRemoved { node, filter } => [("k", "r-"), ("n", node), ("v", filter)],
            FeedRecord::Retained { node, topic } => [("k", "t"), ("n", node), ("v", topic)],
        }
    }

    /// The record of a stream entry's fields.
    pub fn from_fields(kind: &str, node: String, value: String) -> Option<FeedRecord> {
        match kind {
            "r+" => Some(FeedRecord::RouteAdded {
                node,
                filter: value,
            }),
            "r-" => Some(FeedRecord::RouteRemoved {
                node,
                filter: value,
            }),
            "t" => Some(FeedRecord::Retained { node, topic: value }),
            _ => None,
        }
    }
}

/// The format of a stored retained message (its first byte).
pub const RETAINED_FORMAT: u8 = 0x52;

/// A retained message as stored in Redis: format byte, absolute expiry (Unix ms,
/// 0 = none) and the v5 PUBLISH bytes.
pub fn retained_value(msg: &Message) -> Vec<u8> {
    let expires_unix_ms = msg
        .remaining_expiry_now()
        .map(|s| unix_ms() + u64::from(s) * 1000)
        .unwrap_or(0);
    let publish = publish_bytes(msg);
    let mut out = Vec::with_capacity(9 + publish.len());
    out.put_u8(RETAINED_FORMAT);
    out.put_u64(expires_unix_ms);
    out.put_slice(&publish);
    out
}

/// Reads a stored retained message; `None` if it has expired.
pub fn read_retained(value: &[u8]) -> Result<Option<Arc<Message>>, WireError> {
    let mut buf = value;
    expect_format(&mut buf, "stored retained message", RETAINED_FORMAT)?;
    if buf.remaining() < 8 {
        return Err(WireError("truncated retained value".into()));
    }
    let expires = buf.get_u64();
    let now_ms = unix_ms();
    if expires != 0 && expires <= now_ms {
        return Ok(None);
    }
    let mut packet = BytesMut::from(buf);
    let mut publish = match decode(&mut packet, Some(Protocol::V5), usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        other => return Err(WireError(format!("not a PUBLISH: {other:?}"))),
    };
    if expires != 0 {
        publish.properties.message_expiry_interval =
            Some(((expires - now_ms).div_ceil(1000)) as u32);
    }
    Ok(Some(Arc::new(Message::new(&publish, None, Instant::now()))))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
