//! The Redis commands that mirror a [`SessionChange`] of a persistent session (the
//! session store's writer sends them in order, batched), and the scripts only they
//! use.

use broker::cluster::SessionChange;
use broker::session::Outbound;

use crate::conn::Keys;
use crate::scripts::{INBOUND_SCRIPT, KEEP_TTL_SCRIPT, RESTORE_SCRIPT};
use crate::wire::{journal_received, journal_value, subscription_value, will_value};

/// The Redis commands that mirror one change.
pub(super) fn change_cmds(
    keys: &Keys,
    (me, grace): (&str, std::time::Duration),
    c: &SessionChange,
    out: &mut Vec<(String, redis::Cmd)>,
) {
    match c {
        // The session's keys live by their TTLs (lifetime.rs), refreshed by its owner.
        SessionChange::Parked { .. } => {}
        SessionChange::Subscribed {
            client_id,
            filter,
            sub,
        } => {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(keys.subscriptions(client_id))
                .arg(filter)
                .arg(subscription_value(sub));
            out.push((keys.session(client_id), cmd));
            // A new `:subs` hash takes the session's TTL (`crate::lifetime`).
            let mut ttl = redis::cmd("EVAL");
            ttl.arg(KEEP_TTL_SCRIPT)
                .arg(2)
                .arg(keys.session(client_id))
                .arg(keys.subscriptions(client_id));
            out.push((keys.session(client_id), ttl));
        }
        SessionChange::Unsubscribed { client_id, filter } => {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys.subscriptions(client_id)).arg(filter);
            out.push((keys.session(client_id), cmd));
        }
        // Merged into one script call per round trip (`batch.rs`).
        SessionChange::Journal { .. } => {}
        SessionChange::WillDone { client_id } => {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys.session(client_id)).arg("will");
            out.push((keys.session(client_id), cmd));
        }
        SessionChange::InboundQos2 {
            client_id,
            epoch,
            packet_id,
            message_id,
        } => {
            let mut cmd = match message_id {
                Some(id) => {
                    let mut c = redis::cmd("EVAL");
                    c.arg(INBOUND_SCRIPT)
                        .arg(2)
                        .arg(keys.session(client_id))
                        .arg(keys.inbound(client_id))
                        .arg(*epoch)
                        .arg(*packet_id)
                        .arg(&**id);
                    c
                }
                None => {
                    let mut c = redis::cmd("HDEL");
                    c.arg(keys.inbound(client_id)).arg(*packet_id);
                    c
                }
            };
            out.push((keys.session(client_id), std::mem::take(&mut cmd)));
        }
        SessionChange::Restore(r) => {
            let id = &r.client_id;
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RESTORE_SCRIPT)
                .arg(3)
                .arg(keys.session(id))
                .arg(keys.subscriptions(id))
                .arg(keys.journal(id))
                .arg(me)
                .arg(r.epoch)
                .arg(r.expiry_secs)
                .arg(r.will.as_ref().map(will_value).unwrap_or_default())
                .arg(r.subscriptions.len());
            for (filter, sub) in &r.subscriptions {
                cmd.arg(filter).arg(subscription_value(sub));
            }
            for (id, o) in &r.journal {
                match o {
                    Outbound::Published(d) => {
                        if let Some(j) = &d.journal {
                            cmd.arg(&*j.key).arg(journal_value(d));
                        }
                    }
                    Outbound::Released(Some(key)) => {
                        cmd.arg(&**key).arg(journal_received(*id));
                    }
                    Outbound::Released(None) => {}
                }
            }
            out.push((keys.session(id), cmd));
            if r.expiry_secs > 0 || r.will.is_some() {
                let mut sadd = redis::cmd("SADD");
                sadd.arg(keys.owned(me)).arg(&**id);
                out.push((keys.owned(me), sadd));
            }
        }
        SessionChange::Ended { client_id } => {
            let mut del = redis::cmd("DEL");
            del.arg(keys.subscriptions(client_id))
                .arg(keys.journal(client_id))
                .arg(keys.done(client_id))
                .arg(keys.inbound(client_id));
            out.push((keys.session(client_id), del));
            // The hash stays: its epoch keeps counting, so fencing tokens only grow.
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(keys.session(client_id)).arg("exp").arg("will");
            out.push((keys.session(client_id), hdel));
            // ... for the grace only (`crate::lifetime`).
            let mut end = redis::cmd("EVAL");
            end.arg(crate::scripts::ENDED_SCRIPT).arg(1);
            end.arg(keys.session(client_id))
                .arg(me)
                .arg(grace.as_millis() as u64);
            out.push((keys.session(client_id), end));
            let mut srem = redis::cmd("SREM");
            srem.arg(keys.owned(me)).arg(&**client_id);
            out.push((keys.owned(me), srem));
        }
    }
}
