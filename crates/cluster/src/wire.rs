//! The bytes nodes exchange through Redis: bus records (forwarded messages, takeover
//! requests) and change-feed records (routes, retained messages).
//!
//! A forwarded message is carried as an MQTT 5.0 PUBLISH packet, encoded by our own
//! codec, so every property (expiry, user properties, correlation data...) crosses
//! nodes with no second format to maintain. Around it a small header says who
//! published it and which shared-subscription groups the receiving node serves.

use std::sync::Arc;
use std::time::Instant;

use broker::cluster::LocalGroups;
use broker::message::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt::codec::Delivery;
use mqtt::{decode, Packet, Protocol};
use thiserror::Error;

/// A record that could not be decoded (a bug or a foreign writer): it is logged and
/// skipped, never delivered half-read.
#[derive(Debug, Error)]
#[error("bad cluster record: {0}")]
pub struct WireError(pub String);

/// One entry on a node's inbox stream.
#[derive(Debug)]
pub enum BusRecord {
    /// A message published on another node.
    Message {
        /// The message.
        msg: Arc<Message>,
        /// The shared groups this node serves for it.
        groups: LocalGroups,
    },
    /// Another node claimed `client_id` with ownership `epoch`: drop ours.
    Kick {
        /// The client id.
        client_id: String,
        /// The new owner's epoch.
        epoch: u64,
    },
}

const MESSAGE: u8 = 1;
const KICK: u8 = 2;

/// The v5 PUBLISH bytes of `msg` as forwarded now (remaining expiry), shared by every
/// destination's record.
pub fn publish_bytes(msg: &Message) -> Bytes {
    let now = Instant::now();
    let delivery = Delivery {
        qos: msg.qos,
        retain: msg.retain,
        dup: false,
        packet_id: (msg.qos != mqtt::QoS::AtMostOnce).then_some(1),
        topic_alias: None,
        send_topic: true,
        subscription_ids: &[],
        message_expiry: msg.remaining_expiry(now),
    };
    let mut out = BytesMut::with_capacity(msg.publish.encoded_len(Protocol::V5, &delivery));
    msg.publish.encode(Protocol::V5, &delivery, &mut out);
    out.freeze()
}

/// Appends a message record to `out`.
pub fn put_message(
    out: &mut BytesMut,
    origin: Option<&str>,
    groups: &[(String, String)],
    publish: &[u8],
) {
    out.put_u8(MESSAGE);
    put_str(out, origin.unwrap_or(""));
    out.put_u16(groups.len() as u16);
    for (g, f) in groups {
        put_str(out, g);
        put_str(out, f);
    }
    out.put_u32(publish.len() as u32);
    out.put_slice(publish);
}

/// Appends a takeover record to `out`.
pub fn put_kick(out: &mut BytesMut, client_id: &str, epoch: u64) {
    out.put_u8(KICK);
    put_str(out, client_id);
    out.put_u64(epoch);
}

/// Decodes every record of one stream entry.
pub fn read_records(mut buf: &[u8]) -> Result<Vec<BusRecord>, WireError> {
    let mut records = Vec::new();
    let now = Instant::now();
    while buf.has_remaining() {
        match buf.get_u8() {
            MESSAGE => {
                let origin = get_str(&mut buf)?;
                let n = get_u16(&mut buf)?;
                let mut groups = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    groups.push((get_str(&mut buf)?, get_str(&mut buf)?));
                }
                let len = get_u32(&mut buf)? as usize;
                if buf.remaining() < len {
                    return Err(WireError("truncated publish".into()));
                }
                let mut packet = BytesMut::from(&buf[..len]);
                buf.advance(len);
                let publish = match decode(&mut packet, Some(Protocol::V5), usize::MAX) {
                    Ok(Some(Packet::Publish(p))) => p,
                    other => return Err(WireError(format!("not a PUBLISH: {other:?}"))),
                };
                let origin = (!origin.is_empty()).then(|| Arc::from(origin.as_str()));
                records.push(BusRecord::Message {
                    msg: Arc::new(Message::new(&publish, origin, now)),
                    groups: LocalGroups(groups),
                });
            }
            KICK => {
                let client_id = get_str(&mut buf)?;
                if buf.remaining() < 8 {
                    return Err(WireError("truncated kick".into()));
                }
                records.push(BusRecord::Kick {
                    client_id,
                    epoch: buf.get_u64(),
                });
            }
            k => return Err(WireError(format!("unknown record kind {k}"))),
        }
    }
    Ok(records)
}

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

/// A retained message as stored in Redis: absolute expiry (Unix ms, 0 = none) and
/// the v5 PUBLISH bytes.
pub fn retained_value(msg: &Message) -> Vec<u8> {
    let expires_unix_ms = msg
        .remaining_expiry(Instant::now())
        .map(|s| unix_ms() + u64::from(s) * 1000)
        .unwrap_or(0);
    let publish = publish_bytes(msg);
    let mut out = Vec::with_capacity(8 + publish.len());
    out.put_u64(expires_unix_ms);
    out.put_slice(&publish);
    out
}

/// Reads a stored retained message; `None` if it has expired.
pub fn read_retained(value: &[u8]) -> Result<Option<Arc<Message>>, WireError> {
    let mut buf = value;
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

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn get_u16(buf: &mut &[u8]) -> Result<u16, WireError> {
    if buf.remaining() < 2 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u16())
}

fn get_u32(buf: &mut &[u8]) -> Result<u32, WireError> {
    if buf.remaining() < 4 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u32())
}

fn get_str(buf: &mut &[u8]) -> Result<String, WireError> {
    let len = usize::from(get_u16(buf)?);
    if buf.remaining() < len {
        return Err(WireError("truncated string".into()));
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| WireError("invalid UTF-8".into()))?
        .to_string();
    buf.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt::{Publish, PublishProperties, QoS};

    fn message() -> Arc<Message> {
        let p = Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(9),
            properties: PublishProperties {
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            },
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        Arc::new(Message::new(&p, Some("pub-1".into()), Instant::now()))
    }

    #[test]
    fn message_and_kick_round_trip() {
        let msg = message();
        let mut out = BytesMut::new();
        let groups = vec![("g".to_string(), "a/+".to_string())];
        put_message(
            &mut out,
            msg.origin.as_deref(),
            &groups,
            &publish_bytes(&msg),
        );
        put_kick(&mut out, "c1", 7);
        let records = read_records(&out).unwrap();
        assert_eq!(records.len(), 2);
        match &records[0] {
            BusRecord::Message { msg: m, groups: g } => {
                assert_eq!(m.topic(), "a/b");
                assert_eq!(m.qos, QoS::AtLeastOnce);
                assert!(m.retain);
                assert_eq!(m.origin.as_deref(), Some("pub-1"));
                assert_eq!(m.publish.payload().as_ref(), b"hello");
                let left = m.remaining_expiry(Instant::now()).unwrap();
                assert!((59..=60).contains(&left), "{left}");
                assert_eq!(g.0, groups);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&records[1], BusRecord::Kick { client_id, epoch: 7 } if client_id == "c1")
        );
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let msg = message();
        let mut out = BytesMut::new();
        put_message(&mut out, None, &[], &publish_bytes(&msg));
        for cut in 0..out.len() {
            let _ = read_records(&out[..cut]);
        }
        assert!(read_records(&out[..out.len() - 1]).is_err());
    }

    #[test]
    fn retained_value_round_trips_and_expires() {
        let msg = message();
        let stored = retained_value(&msg);
        let back = read_retained(&stored).unwrap().unwrap();
        assert_eq!(back.topic(), "a/b");
        let mut expired = stored.clone();
        expired[..8].copy_from_slice(&1u64.to_be_bytes());
        assert!(read_retained(&expired).unwrap().is_none());
    }
}
