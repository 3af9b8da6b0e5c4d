//! Persistent sessions in Redis: what lets a session outlive the node that holds it.
//!
//! A node keeps its sessions in memory and mirrors what another node would need to
//! resume them, all in the session's own slot (`{s:<client-id>}`):
//! - `{s:id}` — owner, ownership epoch, expiry, will;
//! - `{s:id}:subs` — subscriptions;
//! - `{s:id}:j` — the journal: every QoS 1/2 delivery not yet acknowledged by the
//!   client, written *before* it is queued (so before the publisher's PUBACK), with
//!   the packet id reserved for it, and marked once the client sent PUBREC.
//!
//! and `{n:<node>}:own` lists the sessions (and wills) a node holds, for the survivor
//! that takes over when it dies. Journal writes are fenced by the ownership epoch: a
//! node that lost a session (it was paused and declared dead) cannot write to it.
//! One writer task applies every change in order, many per round trip.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::cluster::{ClusterError, SessionChange};
use broker::mailbox::Journaled;
use broker::router::Blocked;
use broker::session::{JournalUpdate, Outbound, PendingWill, SessionSnapshot};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{query_per_key, Backoff, Conn, Keys};
use crate::wire::{
    journal_received, journal_value, read_journal, read_subscription, read_will,
    subscription_value, JournalEntry,
};

/// Appends journal entries to a session if this node still holds its epoch.
const JOURNAL_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
";

/// Takes over a session from a dead node, if that node still owns it and there is
/// something to take (a persistent session or a will): new epoch, new owner.
const ADOPT_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
local will = redis.call('HGET', KEYS[1], 'will')
if exp == 0 and not will then return false end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return {epoch, exp, will or ''}
";

/// Changes kept for retry while Redis is unreachable; beyond this the oldest go.
const MAX_RETRY: usize = 100_000;

/// Most operations per round trip.
const MAX_BATCH: usize = 512;

/// Journal entries of one message, waiting to be written and then queued.
#[derive(Debug)]
struct JournalOp {
    /// Per delivery: client id, epoch, entry key, entry value, and the delivery.
    entries: Vec<(Arc<str>, u64, String, Vec<u8>, Blocked)>,
    done: oneshot::Sender<Result<(), ClusterError>>,
}

#[derive(Debug)]
enum Op {
    Journal(JournalOp),
    Change(SessionChange),
}

/// A session another node can resume, as read from Redis.
#[derive(Debug)]
pub struct Stored {
    /// Its state.
    pub snapshot: SessionSnapshot,
    /// Its will, if one is waiting.
    pub will: Option<PendingWill>,
}

/// This node's side of the persistent sessions in Redis.
#[derive(Debug)]
pub struct Sessions {
    keys: Keys,
    me: String,
    conn: Conn,
    ops: mpsc::UnboundedSender<Op>,
    seq: AtomicU64,
}

impl Sessions {
    /// The store and its writer task.
    pub fn start(
        conn: Conn,
        keys: Keys,
        me: String,
    ) -> (Arc<Sessions>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer(conn.clone(), keys.clone(), me.clone(), rx));
        let sessions = Arc::new(Sessions {
            keys,
            me,
            conn,
            ops: tx,
            seq: AtomicU64::new(0),
        });
        (sessions, task)
    }

    /// Journals deliveries to persistent sessions, then queues them. The receiver
    /// resolves once they are queued, or with the error that kept them from Redis.
    pub fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<Result<(), ClusterError>> {
        let (done, rx) = oneshot::channel();
        let now = unix_ms();
        let entries = entries
            .into_iter()
            .filter_map(|mut b| {
                let (client_id, epoch) = {
                    let (c, e) = b.mailbox.journal()?;
                    (c.clone(), e)
                };
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                // Sorted by time, then by this node's order: how a session resumes
                // them elsewhere.
                let key = format!("{now:013}:{}:{seq:016x}", self.me);
                b.delivery.journal = Some(Box::new(Journaled {
                    key: key.as_str().into(),
                    packet_id: b.mailbox.reserve_packet_id(),
                }));
                let value = journal_value(&b.delivery);
                Some((client_id, epoch, key, value, b))
            })
            .collect();
        let op = Op::Journal(JournalOp { entries, done });
        if let Err(mpsc::error::SendError(Op::Journal(op))) = self.ops.send(op) {
            let _ = op
                .done
                .send(Err(ClusterError("session store stopped".into())));
        }
        rx
    }

    /// Mirrors a change to a persistent session, in order with the journal.
    pub fn changed(&self, change: SessionChange) {
        let _ = self.ops.send(Op::Change(change));
    }

    /// The session of `client_id` as stored, if it has any state.
    pub async fn load(
        &self,
        client_id: &str,
    ) -> Result<Option<SessionSnapshot>, redis::RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(self.keys.subscriptions(client_id))
            .cmd("HGETALL")
            .arg(self.keys.journal(client_id))
            .cmd("HGET")
            .arg(self.keys.session(client_id))
            .arg("exp");
        type Fields = Vec<(String, Vec<u8>)>;
        let (subs, journal, exp): (Fields, Fields, Option<u32>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        if subs.is_empty() && journal.is_empty() {
            return Ok(None);
        }
        Ok(Some(snapshot(client_id, subs, journal, exp.unwrap_or(0))))
    }

    /// Takes `client_id` over from `dead` if that node still owns it: returns the new
    /// epoch and the stored session and will.
    pub async fn adopt(
        &self,
        client_id: &str,
        dead: &str,
    ) -> Result<Option<(u64, Stored)>, redis::RedisError> {
        let adopted: Option<(u64, u32, Vec<u8>)> = redis::Script::new(ADOPT_SCRIPT)
            .key(self.keys.session(client_id))
            .arg(dead)
            .arg(&self.me)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let Some((epoch, exp, will)) = adopted else {
            return Ok(None);
        };
        let mut snapshot = self.load(client_id).await?.unwrap_or_default();
        snapshot.expiry_secs = exp;
        let will = if will.is_empty() {
            None
        } else {
            match read_will(client_id, &will) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(%client_id, error = %e, "stored will unreadable; not published");
                    None
                }
            }
        };
        Ok(Some((epoch, Stored { snapshot, will })))
    }

    /// The client ids `node` holds sessions or wills for.
    pub async fn owned_by(&self, node: &str) -> Result<Vec<String>, redis::RedisError> {
        redis::cmd("SMEMBERS")
            .arg(self.keys.owned(node))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Records that this node now holds `clients`, and `from` no longer does.
    pub async fn moved(
        &self,
        from: &str,
        clients: &HashSet<String>,
    ) -> Result<(), redis::RedisError> {
        if clients.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = clients.iter().map(String::as_str).collect();
        let mut conn = self.conn.clone();
        if from != self.me {
            redis::cmd("SREM")
                .arg(self.keys.owned(from))
                .arg(&ids)
                .query_async::<()>(&mut conn)
                .await?;
        }
        redis::cmd("SADD")
            .arg(self.keys.owned(&self.me))
            .arg(&ids)
            .query_async(&mut conn)
            .await
    }
}

/// Builds a session from its stored fields: released QoS 2 deliveries become
/// in-flight PUBRELs, the rest is queued in journal order with the packet ids
/// reserved for it.
fn snapshot(
    client_id: &str,
    subs: Vec<(String, Vec<u8>)>,
    mut journal: Vec<(String, Vec<u8>)>,
    exp: u32,
) -> SessionSnapshot {
    let mut s = SessionSnapshot {
        expiry_secs: exp,
        ..Default::default()
    };
    for (filter, value) in subs {
        match read_subscription(&value) {
            Ok(sub) => s.subscriptions.push((filter, sub)),
            Err(e) => {
                tracing::error!(%client_id, %filter, error = %e, "stored subscription unreadable; skipped")
            }
        }
    }
    journal.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in journal {
        match read_journal(&value) {
            Ok(JournalEntry::Received(id)) => {
                s.inflight.push((id, Outbound::Released(Some(key.into()))))
            }
            Ok(JournalEntry::Pending(mut d)) => {
                if let Some(j) = d.journal.as_mut() {
                    j.key = key.into();
                }
                s.queued.push(d);
            }
            Err(e) => {
                tracing::error!(%client_id, error = %e, "stored delivery unreadable; skipped")
            }
        }
    }
    s
}

/// Applies operations in order, batching.
async fn writer(conn: Conn, keys: Keys, me: String, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut retry: Vec<SessionChange> = Vec::new();
    let mut backoff = Backoff::default();
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let mut batch = Vec::new();
        if retry.is_empty() {
            match rx.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Changes that failed before go first, in their order.
        let mut changes: Vec<SessionChange> = std::mem::take(&mut retry);
        let mut journals = Vec::new();
        let mut cmds: Vec<(String, redis::Cmd)> = Vec::new();
        for c in &changes {
            change_cmds(&keys, &me, c, &mut cmds);
        }
        for op in batch {
            match op {
                Op::Change(c) => {
                    change_cmds(&keys, &me, &c, &mut cmds);
                    changes.push(c);
                }
                Op::Journal(j) => {
                    let mut at = Vec::new();
                    for group in groups(&j.entries) {
                        let (client_id, epoch) =
                            (&j.entries[group.start].0, j.entries[group.start].1);
                        // EVAL with the script text each time: a Redis that restarted
                        // has no script cache, and a pipeline cannot fall back from
                        // EVALSHA.
                        let mut cmd = redis::cmd("EVAL");
                        cmd.arg(JOURNAL_SCRIPT)
                            .arg(2)
                            .arg(keys.session(client_id))
                            .arg(keys.journal(client_id))
                            .arg(epoch);
                        for (_, _, key, value, _) in &j.entries[group.clone()] {
                            cmd.arg(key).arg(value.as_slice());
                        }
                        at.push((cmds.len(), group));
                        cmds.push((keys.session(client_id), cmd));
                    }
                    journals.push((j, at));
                }
            }
        }
        match query_per_key(&conn, cmds).await {
            Ok(values) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        secs = since.elapsed().as_secs(),
                        "session store: redis reachable again"
                    );
                }
                backoff.reset();
                for (j, at) in journals {
                    let mut entries: Vec<Option<_>> = j.entries.into_iter().map(Some).collect();
                    for (i, group) in at {
                        let fenced = !matches!(values.get(i), Some(redis::Value::Int(1)));
                        for e in &mut entries[group] {
                            let (client_id, _, _, _, b) = e.take().expect("each entry once");
                            if fenced {
                                // Another node took this session over: it is theirs now.
                                tracing::warn!(%client_id, "session owned by another node now; delivery not queued here");
                                continue;
                            }
                            b.mailbox.push(b.delivery);
                        }
                    }
                    let _ = j.done.send(Ok(()));
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, "session store: redis unreachable; persistent-session messages are refused until it is back");
                }
                let err = ClusterError(e.to_string());
                for (j, _) in journals {
                    let _ = j.done.send(Err(err.clone()));
                }
                if changes.len() > MAX_RETRY {
                    let drop = changes.len() - MAX_RETRY;
                    tracing::warn!(
                        dropped = drop,
                        "session store: too many changes waiting for redis; oldest dropped"
                    );
                    changes.drain(..drop);
                }
                retry = changes;
                backoff.wait().await;
            }
        }
    }
}

/// Consecutive runs of entries for one session (and epoch): one fenced write each.
fn groups(entries: &[(Arc<str>, u64, String, Vec<u8>, Blocked)]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match out.last_mut() {
            Some(r) if entries[r.start].0 == e.0 && entries[r.start].1 == e.1 => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// The Redis commands that mirror one change.
fn change_cmds(keys: &Keys, me: &str, c: &SessionChange, out: &mut Vec<(String, redis::Cmd)>) {
    match c {
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
        }
        SessionChange::Unsubscribed { client_id, filter } => {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys.subscriptions(client_id)).arg(filter);
            out.push((keys.session(client_id), cmd));
        }
        SessionChange::Journal { client_id, updates } => {
            for u in updates {
                let mut cmd = match u {
                    JournalUpdate::Done(key) => {
                        let mut cmd = redis::cmd("HDEL");
                        cmd.arg(keys.journal(client_id)).arg(&**key);
                        cmd
                    }
                    JournalUpdate::Received(j) => {
                        let mut cmd = redis::cmd("HSET");
                        cmd.arg(keys.journal(client_id))
                            .arg(&*j.key)
                            .arg(journal_received(j.packet_id));
                        cmd
                    }
                };
                out.push((keys.session(client_id), std::mem::take(&mut cmd)));
            }
        }
        SessionChange::WillDone { client_id } => {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys.session(client_id)).arg("will");
            out.push((keys.session(client_id), cmd));
        }
        SessionChange::Ended { client_id } => {
            let mut del = redis::cmd("DEL");
            del.arg(keys.subscriptions(client_id))
                .arg(keys.journal(client_id));
            out.push((keys.session(client_id), del));
            // The hash stays: its epoch keeps counting, so fencing tokens only grow.
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(keys.session(client_id)).arg("exp").arg("will");
            out.push((keys.session(client_id), hdel));
            let mut srem = redis::cmd("SREM");
            srem.arg(keys.owned(me)).arg(&**client_id);
            out.push((keys.owned(me), srem));
        }
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long to wait between liveness refreshes, and how long a liveness key lives:
/// a node that has not refreshed it for this long is dead as far as Redis knows.
pub const LIVENESS_REFRESH: Duration = Duration::from_millis(500);
/// See [`LIVENESS_REFRESH`].
pub const LIVENESS_TTL: Duration = Duration::from_millis(2000);
