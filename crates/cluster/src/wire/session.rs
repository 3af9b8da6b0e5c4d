//! A session's state as stored in Redis: its journal entries, its subscriptions and
//! its will.

use std::time::Instant;

use broker::mailbox::{Delivery as Queued, Journaled};
use broker::message::Message;
use broker::session::{PendingWill, Subscription};
use bytes::{Buf, BufMut, BytesMut};
use mqtt::{decode, Packet, Protocol};

use super::parts::*;
use super::WireError;

/// The format of a stored subscription (its first byte).
pub const SUBSCRIPTION_FORMAT: u8 = 0x51;
/// The format of a stored will (its first byte).
pub const WILL_FORMAT: u8 = 0x57;

/// A journal entry's value: the delivery, or (`R` + packet id) once the client sent
/// PUBREC for it. The first byte, the entry's kind (`D`, `F`, `P`, `R`), is also its
/// format: a kind this node does not know is an error its caller logs and skips.
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

/// A stored subscription's value: format byte, options, identifier (0: none).
pub fn subscription_value(sub: &Subscription) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(SUBSCRIPTION_FORMAT);
    out.put_u8(options_byte(&sub.options));
    out.put_u32(sub.id.unwrap_or(0));
    out.to_vec()
}

/// Decodes a stored subscription.
pub fn read_subscription(mut value: &[u8]) -> Result<Subscription, WireError> {
    expect_format(&mut value, "stored subscription", SUBSCRIPTION_FORMAT)?;
    let options = options_from(get_u8(&mut value)?)?;
    let id = get_u32(&mut value)?;
    Ok(Subscription {
        options,
        id: (id != 0).then_some(id),
    })
}

/// A will as stored with its session: format byte, user name, then the will as a v5 PUBLISH
/// (its properties ride along) with the Will Delay Interval.
pub fn will_value(w: &PendingWill) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(WILL_FORMAT);
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
    expect_format(&mut value, "stored will", WILL_FORMAT)?;
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
    Ok(PendingWill {
        client_id: client_id.into(),
        username: (!username.is_empty()).then(|| username.as_str().into()),
        will: PendingWill::will_from_publish(p, delay),
    })
}
