//! The bytes a single node keeps on disk: one value per session, subscription,
//! journal entry (a delivery not yet acknowledged), inbound QoS 2 id and retained
//! message, and the keys they are stored under. Pure functions, no I/O.
//!
//! Messages are kept as MQTT 5.0 PUBLISH packets, encoded by our own codec, so every
//! property survives with no second format to maintain; expiry is kept as an absolute
//! wall-clock time, so time spent stopped counts [MQTT-3.3.2-5].

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use broker::mailbox::{Delivery, Journaled};
use broker::message::{sortable_hex, Message};
use broker::session::{PendingWill, Subscription};
use bytes::{Buf, BufMut, BytesMut};
use mqtt::codec::Delivery as Wire;
use mqtt::{decode, Packet, Protocol, QoS, SubscriptionOptions};
use thiserror::Error;

/// The layout of everything in the data directory. A store written in another
/// layout is refused at start-up with both numbers (see `db.rs`).
pub const FORMAT: u32 = 1;

/// A value that could not be decoded (a bug, or a file damaged outside the database's
/// checks): the entry is logged and skipped, never half-read.
#[derive(Debug, Error)]
#[error("unreadable stored record: {0}")]
pub struct RecordError(pub String);

fn err(s: &str) -> RecordError {
    RecordError(s.to_string())
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The key of a client's row in a table keyed by client and then something else:
/// the client id, a 0 byte (never in an MQTT string [MQTT-1.5.4-2]), then `rest`.
pub fn child_key(client_id: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1 + rest.len());
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// The range of every child key of `client_id` (see [`child_key`]).
pub fn child_range(client_id: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = client_id.as_bytes().to_vec();
    lo.push(0);
    let mut hi = client_id.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

/// Splits a child key into the client id and the rest.
pub fn split_child(key: &[u8]) -> Result<(&str, &[u8]), RecordError> {
    let at = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| err("key without a client id"))?;
    let client = std::str::from_utf8(&key[..at]).map_err(|_| err("client id not UTF-8"))?;
    Ok((client, &key[at + 1..]))
}

/// A persistent session's own row.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// When its connection ended (Unix ms); 0 while connected.
    pub parked_at_ms: u64,
    /// The user name its connection authenticated with.
    pub username: Option<Arc<str>>,
    /// The will waiting for the connection's end (or its delay), if any.
    pub will: Option<mqtt::Will>,
}

/// Encodes a session row.
pub fn session_value(row: &SessionRow) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(row.expiry_secs);
    out.put_u64(row.parked_at_ms);
    put_str(&mut out, row.username.as_deref().unwrap_or(""));
    match &row.will {
        None => out.put_u8(0),
        Some(w) => {
            out.put_u8(1);
            out.put_u32(w.properties.will_delay_interval.unwrap_or(0));
            let pending = PendingWill {
                client_id: "".into(),
                username: None,
                will: w.clone(),
            };
            let msg = Message::new(&pending.to_publish(), None, Instant::now());
            StoredPublish::of(&msg).put(&mut out, &msg);
        }
    }
    out.into()
}

/// Decodes a session row.
pub fn read_session(mut v: &[u8]) -> Result<SessionRow, RecordError> {
    let expiry_secs = get_u32(&mut v)?;
    let parked_at_ms = get_u64(&mut v)?;
    let username = get_str(&mut v)?;
    let will = match get_u8(&mut v)? {
        0 => None,
        _ => {
            let delay = get_u32(&mut v)?;
            let (_, p) = get_publish(&mut v)?;
            Some(PendingWill::will_from_publish(p, delay))
        }
    };
    Ok(SessionRow {
        expiry_secs,
        parked_at_ms,
        username: (!username.is_empty()).then(|| username.as_str().into()),
        will,
    })
}

/// Encodes a subscription's options and identifier.
pub fn subscription_value(sub: &Subscription) -> Vec<u8> {
    let mut out = vec![sub.options.to_byte()];
    out.extend_from_slice(&sub.id.unwrap_or(0).to_be_bytes());
    out
}

/// Decodes a subscription.
pub fn read_subscription(mut v: &[u8]) -> Result<Subscription, RecordError> {
    let b = get_u8(&mut v)?;
    let id = get_u32(&mut v)?;
    Ok(Subscription {
        options: SubscriptionOptions::from_byte(b).ok_or_else(|| err("bad qos"))?,
        id: (id != 0).then_some(id),
    })
}

/// What a session's journal holds for one key.
#[derive(Debug)]
pub enum JournalEntry {
    /// A delivery not yet acknowledged (it may or may not have been sent).
    Pending(Delivery),
    /// A QoS 2 delivery the client received (PUBREC): PUBREL is due, under this id.
    Received(u16),
}

/// A message's key in the journal: its sequence number as 16 lower-case hex digits,
/// so keys sort by number ([`sortable_hex`]).
pub fn message_key(seq: u64) -> Box<str> {
    // Only ASCII hex digits.
    std::str::from_utf8(&sortable_hex(seq)).map_or_else(|_| Box::from(""), Box::from)
}

/// A journaled delivery (it carries its key and reserved packet id).
pub fn journal_value(d: &Delivery) -> Vec<u8> {
    let n = d.sub_ids.len().min(usize::from(u16::MAX));
    let origin = d.msg.origin.as_deref().unwrap_or("");
    let publish = StoredPublish::of(&d.msg);
    // Sized once: the hot path of a persistent session writes one per delivery.
    let mut out = BytesMut::with_capacity(7 + 4 * n + 2 + origin.len() + publish.record_len());
    out.put_u8(b'D');
    out.put_u8(d.qos as u8);
    out.put_u8(u8::from(d.retain));
    out.put_u16(n as u16);
    for id in &d.sub_ids[..n] {
        out.put_u32(*id);
    }
    out.put_u16(d.journal.as_ref().map_or(0, |j| j.packet_id));
    put_str(&mut out, origin);
    publish.put(&mut out, &d.msg);
    out.into()
}

/// The value that marks a journaled QoS 2 delivery as received by the client.
pub fn journal_received(packet_id: u16) -> Vec<u8> {
    let mut v = vec![b'R'];
    v.extend_from_slice(&packet_id.to_be_bytes());
    v
}

/// Appended to an inbound QoS 2 record (the message id) once the message's journal
/// entries are written: its resend after a restart is not routed again. Message ids
/// are hex, so the zero byte cannot be part of one.
const ROUTED: &[u8] = b"\0routed";

/// An inbound QoS 2 record marked routed; `None` if it already is.
pub fn inbound_routed(v: &[u8]) -> Option<Vec<u8>> {
    if v.ends_with(ROUTED) {
        return None;
    }
    let mut out = v.to_vec();
    out.extend_from_slice(ROUTED);
    Some(out)
}

/// An inbound QoS 2 record: the message id, and whether it was routed.
pub fn read_inbound(v: &[u8]) -> Result<(&str, bool), RecordError> {
    let (id, routed) = match v.strip_suffix(ROUTED) {
        Some(id) => (id, true),
        None => (v, false),
    };
    let id = std::str::from_utf8(id).map_err(|_| err("message id not UTF-8"))?;
    Ok((id, routed))
}

/// Messages already read back, by message id: one message journaled for many
/// sessions is one `Message` again after a restart, as it was before.
pub type MessageCache = std::collections::HashMap<Box<str>, Arc<Message>>;

/// Decodes a journal entry stored under `key` (a message id), reusing the message
/// from `cache` when another session's entry already read it. `None`: its message
/// expired while it waited [MQTT-3.3.2-5].
pub fn read_journal(
    key: &str,
    mut v: &[u8],
    cache: &mut MessageCache,
) -> Result<Option<JournalEntry>, RecordError> {
    match get_u8(&mut v)? {
        b'R' => Ok(Some(JournalEntry::Received(get_u16(&mut v)?))),
        b'D' => {
            let qos = QoS::from_u8(get_u8(&mut v)?).ok_or_else(|| err("bad qos"))?;
            let retain = get_u8(&mut v)? != 0;
            let n = get_u16(&mut v)?;
            let mut sub_ids = Vec::with_capacity(usize::from(n).min(64));
            for _ in 0..n {
                sub_ids.push(get_u32(&mut v)?);
            }
            let packet_id = get_u16(&mut v)?;
            let origin = get_str(&mut v)?;
            let msg = match cache.get(key) {
                Some(msg) if !msg.is_expired(Instant::now()) => msg.clone(),
                Some(_) => return Ok(None),
                None => {
                    let (expired, publish) = get_publish(&mut v)?;
                    if expired {
                        return Ok(None);
                    }
                    let origin = (!origin.is_empty()).then(|| Arc::from(origin.as_str()));
                    let msg = Message::new(&publish, origin, Instant::now());
                    let _ = msg.id.set(key.into());
                    let msg = Arc::new(msg);
                    cache.insert(key.into(), msg.clone());
                    msg
                }
            };
            Ok(Some(JournalEntry::Pending(Delivery {
                msg,
                qos,
                retain,
                sub_ids,
                journal: Some(Box::new(Journaled {
                    key: key.into(),
                    packet_id,
                })),
            })))
        }
        k => Err(RecordError(format!("unknown journal entry kind {k}"))),
    }
}

/// A retained message.
pub fn retained_value(msg: &Message) -> Vec<u8> {
    let publish = StoredPublish::of(msg);
    let mut out = BytesMut::with_capacity(publish.record_len());
    publish.put(&mut out, msg);
    out.into()
}

/// Decodes a retained message; `None` if it expired.
pub fn read_retained(mut v: &[u8]) -> Result<Option<Arc<Message>>, RecordError> {
    let (expired, publish) = get_publish(&mut v)?;
    Ok((!expired).then(|| Arc::new(Message::new(&publish, None, Instant::now()))))
}

/// A message as its absolute expiry (Unix ms, 0 = none) and its v5 PUBLISH bytes,
/// sized before it is written.
struct StoredPublish {
    remaining: Option<u32>,
    /// The v5 PUBLISH packet's length.
    packet_len: usize,
}

impl StoredPublish {
    /// `msg` as it would be stored now (what is left of its expiry).
    fn of(msg: &Message) -> Self {
        let remaining = msg.remaining_expiry_now();
        let packet_len = msg
            .publish
            .encoded_len(Protocol::V5, &Self::wire(msg, remaining));
        StoredPublish {
            remaining,
            packet_len,
        }
    }

    /// How the PUBLISH is encoded for storage (v5, packet id 1, no alias).
    fn wire(msg: &Message, remaining: Option<u32>) -> Wire<'static> {
        Wire {
            qos: msg.qos,
            retain: msg.retain,
            dup: false,
            packet_id: (msg.qos != QoS::AtMostOnce).then_some(1),
            topic_alias: None,
            send_topic: true,
            subscription_ids: &[],
            message_expiry: remaining,
        }
    }

    /// The bytes [`StoredPublish::put`] writes.
    fn record_len(&self) -> usize {
        12 + self.packet_len
    }

    /// Appends the expiry, the length and the PUBLISH (`record_len` bytes).
    fn put(&self, out: &mut BytesMut, msg: &Message) {
        let expires = self
            .remaining
            .map_or(0, |s| unix_ms() + u64::from(s) * 1000);
        out.put_u64(expires);
        out.put_u32(self.packet_len as u32);
        msg.publish
            .encode(Protocol::V5, &Self::wire(msg, self.remaining), out);
    }
}

/// Reads what [`StoredPublish::put`] wrote: whether it expired, and the PUBLISH with what
/// is left of its expiry.
fn get_publish(v: &mut &[u8]) -> Result<(bool, mqtt::Publish), RecordError> {
    let expires = get_u64(v)?;
    let len = get_u32(v)? as usize;
    if v.remaining() < len {
        return Err(err("truncated publish"));
    }
    let mut packet = BytesMut::from(&v[..len]);
    v.advance(len);
    let mut publish = match decode(&mut packet, Some(Protocol::V5), usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        other => return Err(RecordError(format!("not a PUBLISH: {other:?}"))),
    };
    if expires != 0 {
        let now = unix_ms();
        if expires <= now {
            return Ok((true, publish));
        }
        publish.properties.message_expiry_interval = Some((expires - now).div_ceil(1000) as u32);
    }
    Ok((false, publish))
}

fn put_str(out: &mut BytesMut, s: &str) {
    let n = s.len().min(usize::from(u16::MAX));
    out.put_u16(n as u16);
    out.put_slice(&s.as_bytes()[..n]);
}

fn get_u8(v: &mut &[u8]) -> Result<u8, RecordError> {
    (v.remaining() >= 1)
        .then(|| v.get_u8())
        .ok_or_else(|| err("truncated"))
}

fn get_u16(v: &mut &[u8]) -> Result<u16, RecordError> {
    (v.remaining() >= 2)
        .then(|| v.get_u16())
        .ok_or_else(|| err("truncated"))
}

fn get_u32(v: &mut &[u8]) -> Result<u32, RecordError> {
    (v.remaining() >= 4)
        .then(|| v.get_u32())
        .ok_or_else(|| err("truncated"))
}

fn get_u64(v: &mut &[u8]) -> Result<u64, RecordError> {
    (v.remaining() >= 8)
        .then(|| v.get_u64())
        .ok_or_else(|| err("truncated"))
}

fn get_str(v: &mut &[u8]) -> Result<String, RecordError> {
    let len = usize::from(get_u16(v)?);
    if v.remaining() < len {
        return Err(err("truncated string"));
    }
    let s = std::str::from_utf8(&v[..len])
        .map_err(|_| err("invalid UTF-8"))?
        .to_string();
    v.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbound_record_is_marked_routed_once_and_reads_back() {
        let v = b"00000000000000a1".to_vec();
        assert_eq!(read_inbound(&v).unwrap(), ("00000000000000a1", false));
        let marked = inbound_routed(&v).expect("not yet marked");
        assert_eq!(read_inbound(&marked).unwrap(), ("00000000000000a1", true));
        assert_eq!(inbound_routed(&marked), None, "marked once");
        assert!(read_inbound(b"\xff").is_err());
    }
    use bytes::Bytes;

    fn message(expiry: Option<u32>) -> Arc<Message> {
        let p = mqtt::Publish {
            topic: "a/b".into(),
            qos: QoS::ExactlyOnce,
            packet_id: Some(7),
            payload: Bytes::from_static(b"hello"),
            properties: mqtt::PublishProperties {
                message_expiry_interval: expiry,
                content_type: Some("text/plain".into()),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        Arc::new(Message::new(&p, Some("pub".into()), Instant::now()))
    }

    #[test]
    fn a_journaled_delivery_reads_back_with_its_key_id_and_properties() {
        let d = Delivery {
            msg: message(Some(60)),
            qos: QoS::AtLeastOnce,
            retain: true,
            sub_ids: vec![3, 9],
            journal: Some(Box::new(Journaled {
                key: "k".into(),
                packet_id: 42,
            })),
        };
        let mut cache = MessageCache::new();
        let value = journal_value(&d);
        let Some(JournalEntry::Pending(back)) = read_journal("k2", &value, &mut cache).unwrap()
        else {
            panic!("not a pending delivery")
        };
        // A second session's entry for the same message shares it.
        let Some(JournalEntry::Pending(again)) = read_journal("k2", &value, &mut cache).unwrap()
        else {
            panic!("not a pending delivery")
        };
        assert!(Arc::ptr_eq(&back.msg, &again.msg));
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(back.retain);
        assert_eq!(back.sub_ids, vec![3, 9]);
        let j = back.journal.unwrap();
        assert_eq!((&*j.key, j.packet_id), ("k2", 42));
        assert_eq!(back.msg.origin.as_deref(), Some("pub"));
        assert_eq!(back.msg.topic(), "a/b");
        assert_eq!(back.msg.id.get().map(|s| &**s), Some("k2"));
        let left = back.msg.remaining_expiry(Instant::now()).unwrap();
        assert!((59..=60).contains(&left), "{left}");
    }

    #[test]
    fn an_expired_message_is_not_read_back() {
        let msg = message(Some(1));
        let mut v = retained_value(&msg);
        // The absolute expiry is the first 8 bytes: move it into the past.
        v[..8].copy_from_slice(&(unix_ms() - 1).to_be_bytes());
        assert!(read_retained(&v).unwrap().is_none());
        assert!(read_retained(&retained_value(&message(None)))
            .unwrap()
            .is_some());
    }

    #[test]
    fn session_rows_keep_the_will_and_its_delay() {
        let row = SessionRow {
            expiry_secs: 300,
            parked_at_ms: 12,
            username: Some("u".into()),
            will: Some(mqtt::Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: mqtt::WillProperties {
                    will_delay_interval: Some(30),
                    ..Default::default()
                },
            }),
        };
        let back = read_session(&session_value(&row)).unwrap();
        assert_eq!((back.expiry_secs, back.parked_at_ms), (300, 12));
        assert_eq!(back.username.as_deref(), Some("u"));
        let w = back.will.unwrap();
        assert_eq!(w.properties.will_delay_interval, Some(30));
        assert_eq!(&w.payload[..], b"gone");
    }

    #[test]
    fn message_keys_are_sixteen_hex_digits_in_number_order() {
        for n in [0, 1, 0xabc, u64::MAX / 3, u64::MAX] {
            assert_eq!(&*message_key(n), format!("{n:016x}"));
        }
        assert!(message_key(9) < message_key(10));
        assert!(message_key(0xff) < message_key(0x100));
    }

    #[test]
    fn child_keys_of_one_client_sort_together_and_split_back() {
        let k = child_key("c1", b"f/#");
        let (lo, hi) = child_range("c1");
        assert!(lo <= k && k < hi);
        assert!(child_key("c10", b"x") >= hi, "c10 is not a child of c1");
        assert_eq!(split_child(&k).unwrap(), ("c1", &b"f/#"[..]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"D", b"Z12", b"D\x01\x00\x00\x05"] {
            assert!(read_journal("k", bad, &mut MessageCache::new()).is_err());
        }
        assert!(read_session(b"\x00").is_err());
        assert!(read_subscription(b"\x07\x00\x00\x00\x00").is_err());
    }
}
