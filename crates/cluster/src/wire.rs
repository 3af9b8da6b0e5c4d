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
use broker::mailbox::{Delivery as Queued, Journaled};
use broker::message::Message;
use broker::session::{Outbound, PendingWill, SessionSnapshot, Subscription};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt::codec::Delivery as Wire;
use mqtt::{decode, Packet, Protocol, QoS, RetainHandling, SubscriptionOptions};
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
    /// Node `to` claimed `client_id` with ownership `epoch`: disconnect ours and hand
    /// the session over.
    Kick {
        /// The client id.
        client_id: String,
        /// The new owner's epoch.
        epoch: u64,
        /// The new owner's node id.
        to: String,
    },
    /// The session a kicked node handed over (`None`: it had none).
    Handover {
        /// The client id.
        client_id: String,
        /// The epoch of the claim it answers.
        epoch: u64,
        /// The session.
        session: Option<SessionSnapshot>,
    },
}

const MESSAGE: u8 = 1;
const KICK: u8 = 2;
const HANDOVER: u8 = 3;

/// The first byte of every inbox entry: the format of the records after it. A node
/// meeting another value (a node of another version in the same cluster) refuses the
/// entry with an error naming both, instead of misreading it.
pub const BUS_FORMAT: u8 = 0xB1;

/// An empty inbox entry, ready for records (`put_message`, `put_kick`,
/// `put_handover`).
pub fn bus_entry() -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(BUS_FORMAT);
    out
}

/// How many of `len` items a 16-bit count carries. Records never hold more in
/// practice (shared groups one node serves for one message; subscription identifiers
/// of one delivery); should they, the count is capped explicitly and the rest left
/// out, rather than the count wrapping and the record being misread.
fn capped(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// The v5 PUBLISH bytes of `msg` as forwarded now (remaining expiry), shared by every
/// destination's record.
pub fn publish_bytes(msg: &Message) -> Bytes {
    let now = Instant::now();
    let delivery = Wire {
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
    id: &str,
    groups: &[(String, String)],
    publish: &[u8],
) {
    out.put_u8(MESSAGE);
    put_str(out, origin.unwrap_or(""));
    put_str(out, id);
    let n = capped(groups.len());
    out.put_u16(n);
    for (g, f) in groups.iter().take(usize::from(n)) {
        put_str(out, g);
        put_str(out, f);
    }
    out.put_u32(publish.len() as u32);
    out.put_slice(publish);
}

/// Appends a takeover record to `out`.
pub fn put_kick(out: &mut BytesMut, client_id: &str, epoch: u64, to: &str) {
    out.put_u8(KICK);
    put_str(out, client_id);
    out.put_u64(epoch);
    put_str(out, to);
}

/// Appends a handover record (the session moving to the node that claimed it).
pub fn put_handover(
    out: &mut BytesMut,
    client_id: &str,
    epoch: u64,
    session: Option<&SessionSnapshot>,
) {
    out.put_u8(HANDOVER);
    put_str(out, client_id);
    out.put_u64(epoch);
    let Some(s) = session else {
        out.put_u8(0);
        return;
    };
    out.put_u8(1);
    out.put_u32(s.expiry_secs);
    out.put_u32(s.subscriptions.len() as u32);
    for (filter, sub) in &s.subscriptions {
        put_str(out, filter);
        out.put_u8(options_byte(&sub.options));
        out.put_u32(sub.id.unwrap_or(0));
    }
    out.put_u32(s.inflight.len() as u32);
    for (id, o) in &s.inflight {
        out.put_u16(*id);
        match o {
            Outbound::Published(d) => {
                out.put_u8(0);
                put_delivery(out, d);
            }
            Outbound::Released(key) => {
                out.put_u8(1);
                put_opt_str(out, key.as_deref());
            }
        }
    }
    out.put_u32(s.inbound_qos2.len() as u32);
    for id in &s.inbound_qos2 {
        out.put_u16(*id);
    }
    out.put_u32(s.queued.len() as u32);
    for d in &s.queued {
        put_delivery(out, d);
    }
    out.put_u32(s.unsettled.len() as u32);
    for (id, msg) in &s.unsettled {
        out.put_u16(*id);
        put_str(out, msg);
    }
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> Result<SubscriptionOptions, WireError> {
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(b & 3).ok_or_else(|| WireError("bad qos".into()))?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAlways,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    })
}

fn put_delivery(out: &mut BytesMut, d: &Queued) {
    out.put_u8(d.qos as u8);
    out.put_u8(u8::from(d.retain));
    let n = capped(d.sub_ids.len());
    out.put_u16(n);
    for id in d.sub_ids.iter().take(usize::from(n)) {
        out.put_u32(*id);
    }
    put_str(out, d.msg.origin.as_deref().unwrap_or(""));
    let publish = publish_bytes(&d.msg);
    out.put_u32(publish.len() as u32);
    out.put_slice(&publish);
    match &d.journal {
        None => out.put_u8(0),
        Some(j) => {
            out.put_u8(1);
            put_str(out, &j.key);
            out.put_u16(j.packet_id);
        }
    }
}

fn get_delivery(buf: &mut &[u8], now: Instant) -> Result<Queued, WireError> {
    let qos = QoS::from_u8(get_u8(buf)?).ok_or_else(|| WireError("bad qos".into()))?;
    let retain = get_u8(buf)? != 0;
    let n = get_u16(buf)?;
    let mut sub_ids = Vec::with_capacity(usize::from(n).min(64));
    for _ in 0..n {
        sub_ids.push(get_u32(buf)?);
    }
    let origin = get_str(buf)?;
    let msg = get_publish(buf, &origin, now)?;
    let journal = match get_u8(buf)? {
        0 => None,
        _ => Some(Box::new(Journaled {
            key: get_str(buf)?.into(),
            packet_id: get_u16(buf)?,
        })),
    };
    Ok(Queued {
        msg,
        qos,
        retain,
        sub_ids,
        journal,
    })
}

fn get_publish(buf: &mut &[u8], origin: &str, now: Instant) -> Result<Arc<Message>, WireError> {
    let len = get_u32(buf)? as usize;
    if buf.remaining() < len {
        return Err(WireError("truncated publish".into()));
    }
    let mut packet = BytesMut::from(&buf[..len]);
    buf.advance(len);
    let publish = match decode(&mut packet, Some(Protocol::V5), usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        other => return Err(WireError(format!("not a PUBLISH: {other:?}"))),
    };
    let origin = (!origin.is_empty()).then(|| Arc::from(origin));
    Ok(Arc::new(Message::new(&publish, origin, now)))
}

fn get_snapshot(buf: &mut &[u8], now: Instant) -> Result<SessionSnapshot, WireError> {
    let mut s = SessionSnapshot {
        expiry_secs: get_u32(buf)?,
        ..Default::default()
    };
    for _ in 0..get_u32(buf)? {
        let filter = get_str(buf)?;
        let options = options_from(get_u8(buf)?)?;
        let id = get_u32(buf)?;
        s.subscriptions.push((
            filter,
            Subscription {
                options,
                id: (id != 0).then_some(id),
            },
        ));
    }
    for _ in 0..get_u32(buf)? {
        let id = get_u16(buf)?;
        let o = match get_u8(buf)? {
            0 => Outbound::Published(get_delivery(buf, now)?),
            _ => Outbound::Released(get_opt_str(buf)?.map(Box::from)),
        };
        s.inflight.push((id, o));
    }
    for _ in 0..get_u32(buf)? {
        s.inbound_qos2.push(get_u16(buf)?);
    }
    for _ in 0..get_u32(buf)? {
        s.queued.push(get_delivery(buf, now)?);
    }
    for _ in 0..get_u32(buf)? {
        let id = get_u16(buf)?;
        s.unsettled.push((id, get_str(buf)?.into()));
    }
    Ok(s)
}

/// Decodes every record of one stream entry.
pub fn read_records(mut buf: &[u8]) -> Result<Vec<BusRecord>, WireError> {
    match get_u8(&mut buf)? {
        BUS_FORMAT => {}
        other => {
            return Err(WireError(format!(
                "inbox entry in format {other:#04x}; this node reads {BUS_FORMAT:#04x} (a node of another version in the cluster?)"
            )))
        }
    }
    let mut records = Vec::new();
    let now = Instant::now();
    while buf.has_remaining() {
        match buf.get_u8() {
            MESSAGE => {
                let origin = get_str(&mut buf)?;
                let id = get_str(&mut buf)?;
                let n = get_u16(&mut buf)?;
                let mut groups = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    groups.push((get_str(&mut buf)?, get_str(&mut buf)?));
                }
                let msg = get_publish(&mut buf, &origin, now)?;
                if !id.is_empty() {
                    let _ = msg.id.set(id.into());
                }
                records.push(BusRecord::Message {
                    msg,
                    groups: LocalGroups(groups),
                });
            }
            KICK => records.push(BusRecord::Kick {
                client_id: get_str(&mut buf)?,
                epoch: get_u64(&mut buf)?,
                to: get_str(&mut buf)?,
            }),
            HANDOVER => {
                let client_id = get_str(&mut buf)?;
                let epoch = get_u64(&mut buf)?;
                let session = match get_u8(&mut buf)? {
                    0 => None,
                    _ => Some(get_snapshot(&mut buf, now)?),
                };
                records.push(BusRecord::Handover {
                    client_id,
                    epoch,
                    session,
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

/// A journal entry's value: the delivery, or (`R` + packet id) once the client sent
/// PUBREC for it.
pub fn journal_value(d: &Queued) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    put_delivery(&mut out, d);
    out.to_vec()
}

/// A journal entry's delivery without kind and packet id, for a script that
/// prepends `P` and the id it reserves (see [`read_journal`]).
pub fn journal_value_unnumbered(d: &Queued) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_delivery(&mut out, d);
    out.to_vec()
}

/// The value that marks a journaled QoS 2 delivery as received by the client.
pub fn journal_received(packet_id: u16) -> Vec<u8> {
    let mut v = vec![b'R'];
    v.extend_from_slice(&packet_id.to_be_bytes());
    v
}

/// What a session's journal holds for one key.
#[derive(Debug)]
pub enum JournalEntry {
    /// A delivery not yet acknowledged (it may or may not have been sent).
    Pending(Queued),
    /// A QoS 2 delivery the client received (PUBREC): PUBREL is due.
    Received(u16),
}

/// Decodes a journal entry's value.
pub fn read_journal(mut value: &[u8]) -> Result<JournalEntry, WireError> {
    match get_u8(&mut value)? {
        // `F`: written by a node that was not the session's owner (see the journal
        // script in sessions.rs); the same delivery.
        b'D' | b'F' => Ok(JournalEntry::Pending(get_delivery(
            &mut value,
            Instant::now(),
        )?)),
        b'R' => Ok(JournalEntry::Received(get_u16(&mut value)?)),
        // Written by a repair: the packet id the script reserved, then the delivery.
        b'P' => {
            let packet_id = get_u16(&mut value)?;
            let mut d = get_delivery(&mut value, Instant::now())?;
            d.journal = Some(Box::new(Journaled {
                key: "".into(),
                packet_id,
            }));
            Ok(JournalEntry::Pending(d))
        }
        k => Err(WireError(format!("unknown journal entry kind {k}"))),
    }
}

/// A stored subscription's value.
pub fn subscription_value(sub: &Subscription) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(options_byte(&sub.options));
    out.put_u32(sub.id.unwrap_or(0));
    out.to_vec()
}

/// Decodes a stored subscription.
pub fn read_subscription(mut value: &[u8]) -> Result<Subscription, WireError> {
    let options = options_from(get_u8(&mut value)?)?;
    let id = get_u32(&mut value)?;
    Ok(Subscription {
        options,
        id: (id != 0).then_some(id),
    })
}

/// A will as stored with its session: user name, then the will as a v5 PUBLISH
/// (its properties ride along) with the Will Delay Interval.
pub fn will_value(w: &PendingWill) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_str(&mut out, w.username.as_deref().unwrap_or(""));
    out.put_u32(w.will.properties.will_delay_interval.unwrap_or(0));
    let publish = w.to_publish();
    let msg = Message::new(&publish, None, Instant::now());
    let bytes = publish_bytes(&msg);
    out.put_u32(bytes.len() as u32);
    out.put_slice(&bytes);
    out.to_vec()
}

/// Decodes a stored will of `client_id`.
pub fn read_will(client_id: &str, mut value: &[u8]) -> Result<PendingWill, WireError> {
    let username = get_str(&mut value)?;
    let delay = get_u32(&mut value)?;
    let len = get_u32(&mut value)? as usize;
    if value.remaining() < len {
        return Err(WireError("truncated will".into()));
    }
    let mut packet = BytesMut::from(&value[..len]);
    let p = match decode(&mut packet, Some(Protocol::V5), usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        other => return Err(WireError(format!("will is not a PUBLISH: {other:?}"))),
    };
    let pp = p.properties;
    Ok(PendingWill {
        client_id: client_id.into(),
        username: (!username.is_empty()).then(|| username.as_str().into()),
        will: mqtt::Will {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: mqtt::WillProperties {
                will_delay_interval: (delay > 0).then_some(delay),
                payload_format_indicator: pp.payload_format_indicator,
                message_expiry_interval: pp.message_expiry_interval,
                content_type: pp.content_type,
                response_topic: pp.response_topic,
                correlation_data: pp.correlation_data,
                user_properties: pp.user_properties,
            },
        },
    })
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
    }
}

fn get_opt_str(buf: &mut &[u8]) -> Result<Option<String>, WireError> {
    Ok(match get_u8(buf)? {
        0 => None,
        _ => Some(get_str(buf)?),
    })
}

/// A string of at most 65,535 bytes: MQTT's own limit for every string carried here
/// (topics, client ids, filters, group names), and node ids are at most 200.
fn put_str(out: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= usize::from(u16::MAX),
        "string too long for the wire"
    );
    out.put_u16(capped(s.len()));
    out.put_slice(s.as_bytes());
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, WireError> {
    if buf.remaining() < 1 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u8())
}

fn get_u64(buf: &mut &[u8]) -> Result<u64, WireError> {
    if buf.remaining() < 8 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u64())
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
    fn an_entry_in_another_format_is_refused_not_misread() {
        let mut out = bus_entry();
        put_kick(&mut out, "c1", 7, "n2");
        out[0] = 0x01; // what an entry without the format byte starts with
        let e = read_records(&out).unwrap_err();
        assert!(e.0.contains("format 0x01") && e.0.contains("0xb1"), "{e:?}");
    }

    #[test]
    fn counts_beyond_16_bits_are_capped_not_wrapped() {
        assert_eq!(capped(3), 3);
        assert_eq!(capped(70_000), u16::MAX);
    }

    #[test]
    fn message_and_kick_round_trip() {
        let msg = message();
        let mut out = bus_entry();
        let groups = vec![("g".to_string(), "a/+".to_string())];
        put_message(
            &mut out,
            msg.origin.as_deref(),
            "1700000000000:n1:2a",
            &groups,
            &publish_bytes(&msg),
        );
        put_kick(&mut out, "c1", 7, "n2");
        let records = read_records(&out).unwrap();
        assert_eq!(records.len(), 2);
        match &records[0] {
            BusRecord::Message { msg: m, groups: g } => {
                assert_eq!(m.topic(), "a/b");
                assert_eq!(m.qos, QoS::AtLeastOnce);
                assert!(m.retain);
                assert_eq!(m.origin.as_deref(), Some("pub-1"));
                assert_eq!(m.id.get().map(|s| &**s), Some("1700000000000:n1:2a"));
                assert_eq!(m.publish.payload().as_ref(), b"hello");
                let left = m.remaining_expiry(Instant::now()).unwrap();
                assert!((59..=60).contains(&left), "{left}");
                assert_eq!(g.0, groups);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&records[1], BusRecord::Kick { client_id, epoch: 7, to } if client_id == "c1" && to == "n2")
        );
    }

    #[test]
    fn a_session_handover_round_trips() {
        let msg = message();
        let d = |qos| Queued {
            msg: msg.clone(),
            qos,
            retain: false,
            sub_ids: vec![3, 4],
            journal: (qos == QoS::ExactlyOnce).then(|| {
                Box::new(Journaled {
                    key: "j1".into(),
                    packet_id: 21,
                })
            }),
        };
        let snapshot = SessionSnapshot {
            expiry_secs: 300,
            subscriptions: vec![(
                "a/+".into(),
                Subscription {
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                    id: Some(3),
                },
            )],
            inflight: vec![
                (7, Outbound::Published(d(QoS::AtLeastOnce))),
                (9, Outbound::Released(Some("k9".into()))),
            ],
            inbound_qos2: vec![11],
            queued: vec![d(QoS::ExactlyOnce)],
            unsettled: vec![(12, "1700000000000:n1:7".into())],
            maybe_sent: false,
        };
        let mut out = bus_entry();
        put_handover(&mut out, "c", 5, Some(&snapshot));
        put_handover(&mut out, "d", 6, None);
        let records = read_records(&out).unwrap();
        let BusRecord::Handover {
            client_id,
            epoch: 5,
            session: Some(s),
        } = &records[0]
        else {
            panic!("{:?}", records[0]);
        };
        assert_eq!(client_id, "c");
        assert_eq!(s.expiry_secs, 300);
        assert_eq!(s.subscriptions, snapshot.subscriptions);
        assert_eq!(s.inbound_qos2, vec![11]);
        assert_eq!(s.unsettled, snapshot.unsettled);
        assert!(
            matches!(&s.inflight[0], (7, Outbound::Published(q)) if q.qos == QoS::AtLeastOnce && q.sub_ids == vec![3, 4])
        );
        assert!(matches!(&s.inflight[1], (9, Outbound::Released(Some(k))) if &**k == "k9"));
        assert_eq!(s.queued.len(), 1);
        assert_eq!(s.queued[0].msg.publish.payload().as_ref(), b"hello");
        assert_eq!(
            s.queued[0].journal.as_deref(),
            Some(&Journaled {
                key: "j1".into(),
                packet_id: 21
            }),
            "a journaled delivery keeps its key and reserved packet id across nodes"
        );
        assert!(matches!(
            &records[1],
            BusRecord::Handover {
                session: None,
                epoch: 6,
                ..
            }
        ));
        for cut in 0..out.len() {
            let _ = read_records(&out[..cut]);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let msg = message();
        let mut out = bus_entry();
        put_message(&mut out, None, "m1", &[], &publish_bytes(&msg));
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

    #[test]
    fn journal_entries_and_subscriptions_round_trip() {
        let d = Queued {
            msg: message(),
            qos: QoS::AtLeastOnce,
            retain: true,
            sub_ids: vec![9],
            journal: Some(Box::new(Journaled {
                key: "k".into(),
                packet_id: 300,
            })),
        };
        match read_journal(&journal_value(&d)).unwrap() {
            JournalEntry::Pending(q) => {
                assert_eq!(
                    (q.qos, q.retain, q.sub_ids.clone()),
                    (QoS::AtLeastOnce, true, vec![9])
                );
                assert_eq!(q.journal.map(|j| j.packet_id), Some(300));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_journal(&journal_received(300)).unwrap(),
            JournalEntry::Received(300)
        ));
        assert!(
            read_journal(b"X").is_err(),
            "an unknown kind is an error, not a panic"
        );
        let sub = Subscription {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::DoNotSend,
            },
            id: Some(77),
        };
        assert_eq!(read_subscription(&subscription_value(&sub)).unwrap(), sub);
    }

    #[test]
    fn a_stored_will_round_trips_with_its_delay_and_properties() {
        let w = PendingWill {
            client_id: "c".into(),
            username: Some("u".into()),
            will: mqtt::Will {
                topic: "dead/c".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: mqtt::WillProperties {
                    will_delay_interval: Some(5),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            },
        };
        let back = read_will("c", &will_value(&w)).unwrap();
        assert_eq!(back.will, w.will);
        assert_eq!(back.username.as_deref(), Some("u"));
        assert!(read_will("c", b"\x00").is_err());
    }
}
