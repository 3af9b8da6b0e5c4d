//! What records are made of: length-prefixed strings, big-endian integers, capped
//! counts, subscription options, queued deliveries and v5 PUBLISH bytes.

use std::sync::Arc;
use std::time::Instant;

use broker::mailbox::{Delivery as Queued, Journaled};
use broker::message::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt::codec::Delivery as Wire;
use mqtt::{decode, Packet, Protocol, QoS, SubscriptionOptions};

use super::WireError;

/// How many of `len` items a 16-bit count carries. Records never hold more in
/// practice (shared groups one node serves for one message; subscription identifiers
/// of one delivery); should they, the count is capped explicitly and the rest left
/// out, rather than the count wrapping and the record being misread.
pub(super) fn capped(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// A message's cluster-wide id: Unix ms (13 digits, zero-padded), the node that gave
/// it, and that node's sequence number (16 hex digits), so ids sort by time and then by
/// the node's order. Written by hand: `format!` was 9 % of a forwarding node's samples.
pub fn message_key(now_ms: u64, node: &str, seq: u64) -> String {
    let mut out = Vec::with_capacity(13 + 1 + node.len() + 1 + 16);
    let mut digits = [b'0'; 20];
    let mut n = now_ms;
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i.min(digits.len() - 13)..]);
    out.push(b':');
    out.extend_from_slice(node.as_bytes());
    out.push(b':');
    out.extend_from_slice(&broker::message::sortable_hex(seq));
    // Digits, separators and the node id (a `str`): valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The v5 PUBLISH bytes of `msg` as forwarded now (remaining expiry), shared by every
/// destination's record.
pub fn publish_bytes(msg: &Message) -> Bytes {
    let message_expiry = msg.remaining_expiry_now();
    let delivery = Wire {
        qos: msg.qos,
        retain: msg.retain,
        dup: false,
        packet_id: (msg.qos != mqtt::QoS::AtMostOnce).then_some(1),
        topic_alias: None,
        send_topic: true,
        subscription_ids: &[],
        message_expiry,
    };
    let mut out = BytesMut::with_capacity(msg.publish.encoded_len(Protocol::V5, &delivery));
    msg.publish.encode(Protocol::V5, &delivery, &mut out);
    out.freeze()
}

pub(super) fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.to_byte()
}

pub(super) fn options_from(b: u8) -> Result<SubscriptionOptions, WireError> {
    SubscriptionOptions::from_byte(b).ok_or_else(|| WireError("bad qos".into()))
}

pub(super) fn put_delivery(out: &mut BytesMut, d: &Queued) {
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

pub(super) fn get_delivery(buf: &mut &[u8], now: Instant) -> Result<Queued, WireError> {
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

pub(super) fn get_publish(
    buf: &mut &[u8],
    origin: &str,
    now: Instant,
) -> Result<Arc<Message>, WireError> {
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

pub(super) fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
    }
}

pub(super) fn get_opt_str(buf: &mut &[u8]) -> Result<Option<String>, WireError> {
    Ok(match get_u8(buf)? {
        0 => None,
        _ => Some(get_str(buf)?),
    })
}

/// A string of at most 65,535 bytes: MQTT's own limit for every string carried here
/// (topics, client ids, filters, group names), and node ids are at most 200.
pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= usize::from(u16::MAX),
        "string too long for the wire"
    );
    out.put_u16(capped(s.len()));
    out.put_slice(s.as_bytes());
}

/// Reads a record's first byte, its format (inbox entries, stored subscriptions,
/// wills and retained messages), and checks it is `format`: another value (written
/// by a node of another version) is an error naming both, which the caller logs
/// before skipping the record.
pub(super) fn expect_format(buf: &mut &[u8], what: &str, format: u8) -> Result<(), WireError> {
    match get_u8(buf)? {
        f if f == format => Ok(()),
        other => Err(WireError(format!(
            "{what} in format {other:#04x}; this node reads {format:#04x} (written by a node of another version?)"
        ))),
    }
}

pub(super) fn get_u8(buf: &mut &[u8]) -> Result<u8, WireError> {
    if buf.remaining() < 1 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u8())
}

pub(super) fn get_u64(buf: &mut &[u8]) -> Result<u64, WireError> {
    if buf.remaining() < 8 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u64())
}

pub(super) fn get_u16(buf: &mut &[u8]) -> Result<u16, WireError> {
    if buf.remaining() < 2 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u16())
}

pub(super) fn get_u32(buf: &mut &[u8]) -> Result<u32, WireError> {
    if buf.remaining() < 4 {
        return Err(WireError("truncated".into()));
    }
    Ok(buf.get_u32())
}

pub(super) fn get_str(buf: &mut &[u8]) -> Result<String, WireError> {
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
