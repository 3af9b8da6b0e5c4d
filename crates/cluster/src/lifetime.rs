//! Every key has a lifetime: how session keys expire, and what is removed after a
//! failed node's repair.
//!
//! **Session keys** (`{s:<id>}`, `:subs`, `:j`, `:done`, `:in`) always carry a TTL of
//! *session expiry + grace* (`cluster.session_grace_secs`, default 300 s; a clean
//! session's expiry is 0, so its hash lives `grace`), computed in Redis from the
//! hash's `exp` field. The claim script sets it at CONNECT, and the node that holds
//! the session — connected or parked — sets it again every quarter of the grace
//! ([`refresher`]). So:
//! - a live session never loses its keys: its node rewrites a TTL of at least the
//!   grace four times per grace period (one missed refresh, a Redis hiccup, costs
//!   nothing; a Redis outage longer than ¾ of the grace may let a clean session's hash
//!   lapse, and the first refresh after it writes the hash back with the epoch the
//!   node holds);
//! - a session whose node died is adopted by a survivor (seconds, far inside the
//!   grace), which refreshes it from then on; one nobody adopts (a clean session
//!   without a will, or every node gone) expires `expiry + grace` after its node's
//!   last refresh: a persistent session survives a whole-cluster outage as long as
//!   MQTT says it should;
//! - a session that ends normally (expiry reached, clean session disconnected) has
//!   its other keys deleted by `SessionChange::Ended` and its hash's TTL cut to the
//!   grace (only if this node still owns it: a claim that raced the end keeps its own).
//!
//! Why a grace at all: the hash carries the ownership epoch (the fencing token) and
//! the will; it must outlive the detection and repair of a failed owner (≈ 4 s, the
//! repair lock 30 s) with a wide margin, and cover Redis outages of a few minutes
//! without rewriting. 300 s costs one small hash per departed client id for 5 min.
//!
//! **Epochs stay monotonic across expiry**: a hash created anew starts its epoch at
//! Redis's clock in microseconds (the claim script), above any epoch the expired hash
//! reached unless it was claimed more than once per microsecond over its whole life;
//! so a node's fence for a client id (kept in memory) never refuses a fresh claim.
//!
//! **A failed node's per-node keys**: once the repair of a dead node has drained its
//! inbox for the last time and dropped its routes, [`forget_dead_node`] deletes its
//! inbox stream and its `{n:<node>}:own` set — unless the node id runs again (its
//! liveness key is back). Its liveness, repair and draining keys expire on their own.

use std::time::Duration;

use crate::conn::{Conn, Keys};

/// A Lua function for the session scripts: `keep_ttl(key, from)` gives `key`, if it
/// has no TTL (it was just created), the TTL `from` (the session hash) has — so a key
/// written between two refreshes has a lifetime at once.
macro_rules! keep_ttl_lua {
    () => {
        r"
local function keep_ttl(key, from)
  if redis.call('PTTL', key) == -1 then
    local t = redis.call('PTTL', from)
    if t > 0 then redis.call('PEXPIRE', key, t) end
  end
end
"
    };
}
pub(crate) use keep_ttl_lua;

/// The session keys of `client_id` in the order the scripts take them.
pub fn session_keys(keys: &Keys, client_id: &str) -> [String; 5] {
    [
        keys.session(client_id),
        keys.subscriptions(client_id),
        keys.journal(client_id),
        keys.done(client_id),
        keys.inbound(client_id),
    ]
}

/// How often the node holding a session rewrites its keys' TTL: a quarter of the
/// grace.
pub fn refresh_period(grace: Duration) -> Duration {
    (grace / 4).max(Duration::from_millis(100))
}

/// Refreshes the TTL of every session this node holds (connected or parked), every
/// [`refresh_period`], one script call per session, batched in pipelines of 512.
pub fn refresher(
    conn: Conn,
    keys: Keys,
    me: &str,
    broker: broker::handle::BrokerHandle,
    settings: &broker::config::ClusterSettings,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (me, grace) = (me.to_string(), settings.session_grace);
    async move { refresh_loop(conn, keys, me, grace, broker).await }
}

async fn refresh_loop(
    conn: Conn,
    keys: Keys,
    me: String,
    grace: Duration,
    broker: broker::handle::BrokerHandle,
) {
    let mut tick = tokio::time::interval(refresh_period(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(held) = broker.upgrade().map(|b| b.held_epochs()) else {
            return;
        };
        let mut rewritten = 0usize;
        for chunk in held.chunks(512) {
            let cmds = chunk
                .iter()
                .map(|(id, epoch)| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(crate::scripts::REFRESH_SCRIPT).arg(5);
                    for k in session_keys(&keys, id) {
                        cmd.arg(k);
                    }
                    cmd.arg(&me).arg(*epoch).arg(grace.as_millis() as u64);
                    (keys.session(id), cmd)
                })
                .collect();
            match crate::conn::query_per_key(&conn, cmds).await {
                Ok(values) => {
                    rewritten += values
                        .iter()
                        .filter(|v| matches!(v, redis::Value::Int(2)))
                        .count()
                }
                Err(e) => {
                    // The next tick retries; the TTLs left cover three more.
                    tracing::debug!(error = %e, "session keys: TTL refresh failed");
                    break;
                }
            }
        }
        if rewritten > 0 {
            tracing::warn!(
                sessions = rewritten,
                "session keys had expired in redis (an outage longer than the grace?); written back"
            );
        }
    }
}

/// [`forget_dead_node`] 2 s from now: copies routed to `dead` just before its routes
/// went may still land in its inbox meanwhile (there is nobody left to drain them).
pub fn forget_later(conn: Conn, keys: Keys, dead: &str) {
    let dead = dead.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        forget_dead_node(&conn, &keys, &dead).await;
    });
}

/// Deletes a failed node's inbox stream and `own` set after its repair, unless the
/// node id is running again (liveness key present). Returns whether it did.
pub async fn forget_dead_node(conn: &Conn, keys: &Keys, dead: &str) -> bool {
    let mut c = conn.clone();
    let back: Result<bool, _> = redis::cmd("EXISTS")
        .arg(keys.alive(dead))
        .query_async(&mut c)
        .await;
    if !matches!(back, Ok(false)) {
        return false;
    }
    let dels = [keys.inbox(dead), keys.owned(dead)].map(|k| {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&k);
        (k, cmd)
    });
    match crate::conn::run_per_key(conn, dels.into()).await {
        Ok(()) => {
            tracing::info!(node = %dead, "removed a failed node's inbox and session list");
            true
        }
        Err(e) => {
            tracing::warn!(node = %dead, error = %e, "cannot remove a failed node's inbox");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_a_quarter_of_the_grace() {
        assert_eq!(
            refresh_period(Duration::from_secs(300)),
            Duration::from_secs(75)
        );
        assert_eq!(
            refresh_period(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn session_keys_share_the_session_slot() {
        let k = Keys::new("amq");
        for key in session_keys(&k, "c1") {
            assert!(key.starts_with("amq:{s:c1}"), "{key}");
        }
    }
}
