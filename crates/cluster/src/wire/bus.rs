//! A node's inbox stream: each entry a format byte and records, forwarded messages
//! ([`BusRecord::Message`]), takeover requests ([`BusRecord::Kick`]) and the sessions
//! they hand over ([`BusRecord::Handover`]).

use std::sync::Arc;
use std::time::Instant;

use broker::cluster::LocalGroups;
use broker::message::Message;
use broker::session::{Outbound, SessionSnapshot, Subscription};
use bytes::{Buf, BufMut, BytesMut};

use super::parts::*;
use super::WireError;

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
    expect_format(&mut buf, "inbox entry", BUS_FORMAT)?;
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
