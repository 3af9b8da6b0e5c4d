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
//! that takes over when it dies. One writer task applies every change in order, many
//! per round trip.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use broker::cluster::{ClusterError, JournalOutcome, SessionChange};
use broker::mailbox::{Durability, Journaled};
use broker::router::Blocked;
use broker::session::{Outbound, PendingWill, SessionSnapshot};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{Backoff, Conn, Keys};
use crate::wire::{
    journal_value, journal_value_unnumbered, read_journal, read_subscription, read_will,
    JournalEntry,
};

use crate::scripts::{ADOPT_SCRIPT, BEGIN_HANDOVER_SCRIPT, JOURNAL_ANY_SCRIPT, RELEASE_SCRIPT};

mod queue;
pub use queue::StoreQueue;
mod batch;
mod changes;
use batch::Batch;

/// What became of a claim given up for want of a handover ([`Sessions::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The previous owner has it again.
    GivenBack,
    /// The previous owner committed to hand it over: it is on its way.
    HandoverUnderway,
    /// Another claim took it since.
    ClaimedSince,
}

/// Changes kept for retry while Redis is unreachable; beyond this the oldest go.
const MAX_RETRY: usize = 100_000;

/// Most operations per round trip.
const MAX_BATCH: usize = 512;

/// One delivery on its way into a session's journal.
#[derive(Debug)]
struct Entry {
    client_id: Arc<str>,
    epoch: u64,
    key: String,
    value: Vec<u8>,
    blocked: Blocked,
}

/// Journal entries of one message, waiting to be written and then queued.
#[derive(Debug)]
struct JournalOp {
    entries: Vec<Entry>,
    done: oneshot::Sender<JournalOutcome>,
}

/// Told once a change is stored.
type Stored = Option<oneshot::Sender<Result<(), ClusterError>>>;

#[derive(Debug)]
enum Op {
    Journal(JournalOp),
    Change(SessionChange, Stored),
}

/// A session another node can resume, as read from Redis.
#[derive(Debug)]
pub struct StoredSession {
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
    queue: Arc<StoreQueue>,
    seq: AtomicU64,
}

impl Sessions {
    /// The store and its writer task.
    pub fn start(
        conn: Conn,
        keys: Keys,
        me: String,
        (max_queued, max_changes): (usize, usize),
        grace: std::time::Duration,
    ) -> (Arc<Sessions>, tokio::task::JoinHandle<()>) {
        // Journal entries, the data path, are bounded by `max_queued`: beyond it a
        // message is refused (not acknowledged) rather than queued. The other changes
        // (subscriptions, acknowledgements of journaled deliveries, wills, inbound
        // QoS 2 ids) cannot be refused after the fact: at `max_changes` not yet stored
        // the connections of persistent sessions stop being read
        // ([`Sessions::changes_room`]), so each adds at most the changes of the one
        // packet it is handling. The channel itself is therefore not given a bound
        // (a full one could only block or drop); its depth is the metric
        // `astramq_session_store_queued{kind="change"}`.
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(StoreQueue::new(max_queued, max_changes));
        let task = tokio::spawn(writer(
            conn.clone(),
            keys.clone(),
            (me.clone(), grace),
            rx,
            queue.clone(),
        ));
        let sessions = Arc::new(Sessions {
            keys,
            me,
            conn,
            ops: tx,
            queue,
            seq: AtomicU64::new(0),
        });
        (sessions, task)
    }

    /// Journals deliveries to persistent sessions, then queues them. The receiver
    /// resolves once they are queued, or with the error that kept them from Redis.
    /// `key` names the entries when the message has a stable identity (an inbox
    /// entry): writing it again after a crash then replaces the entry instead of adding
    /// a second copy.
    pub fn journal(
        &self,
        entries: Vec<Blocked>,
        key: Option<String>,
    ) -> oneshot::Receiver<JournalOutcome> {
        let (done, rx) = oneshot::channel();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter_map(|mut b| {
                let (client_id, epoch) = {
                    let (c, e) = b.mailbox.durability().owner()?;
                    (c.clone(), e)
                };
                let key = match &key {
                    Some(k) => k.clone(),
                    None => self.message_id(&b.delivery.msg).to_string(),
                };
                b.delivery.journal = Some(Box::new(Journaled {
                    key: key.as_str().into(),
                    packet_id: b.mailbox.reserve_packet_id(),
                }));
                let value = journal_value(&b.delivery);
                Some(Entry {
                    client_id,
                    epoch,
                    key,
                    value,
                    blocked: b,
                })
            })
            .collect();
        let n = entries.len();
        if n > 0 && !self.queue.admit(n) {
            if let Some(count) = self.queue.refuse(n) {
                tracing::warn!(
                    refused = count,
                    max = self.queue.max(),
                    "session store: deliveries to persistent sessions refused, too many wait for redis (cluster.session_store_max_queued; count since the last line)"
                );
            }
            let _ = done.send(Err(ClusterError::QueueFull(self.queue.max())));
            return rx;
        }
        let op = Op::Journal(JournalOp { entries, done });
        if let Err(mpsc::error::SendError(Op::Journal(op))) = self.ops.send(op) {
            let _ = op
                .done
                .send(Err(ClusterError::unavailable("session store stopped")));
        }
        rx
    }

    /// A fresh message id: sorted by time, then by this node's order, which is the
    /// order a session resumes its journal entries in elsewhere.
    fn next_key(&self, now_ms: u64) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        crate::wire::message_key(now_ms, &self.me, seq)
    }

    /// The cluster-wide id of `msg`, given now if it has none yet.
    pub fn message_id<'m>(&self, msg: &'m broker::message::Message) -> &'m str {
        msg.id.get_or_init(|| self.next_key(unix_ms()).into())
    }

    /// Mirrors a change to a persistent session, in order with the journal.
    pub fn changed(&self, change: SessionChange) {
        self.queue.change_sent();
        let _ = self.ops.send(Op::Change(change, None));
    }

    /// What waits for the writer, and what it refused.
    pub fn queue(&self) -> &StoreQueue {
        &self.queue
    }

    /// `None` while changes have room; at `cluster.session_store_max_changes` not yet
    /// stored, a future that resolves once Redis took some (the connections of
    /// persistent sessions wait for it before reading on).
    pub fn changes_room(&self) -> Option<broker::cluster::BoxFuture<'static, ()>> {
        self.queue.changes_room()
    }

    /// Mirrors a change; the receiver resolves once it is stored.
    pub fn changed_stored(
        &self,
        change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>> {
        let (tx, rx) = oneshot::channel();
        self.queue.change_sent();
        if let Err(mpsc::error::SendError(Op::Change(_, Some(tx)))) =
            self.ops.send(Op::Change(change, Some(tx)))
        {
            let _ = tx.send(Err(ClusterError::unavailable("session store stopped")));
        }
        rx
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
            .arg("exp")
            .cmd("HGETALL")
            .arg(self.keys.inbound(client_id));
        type Fields = Vec<(String, Vec<u8>)>;
        let (subs, journal, exp, inbound): (Fields, Fields, Option<u32>, Vec<(u16, String)>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        if subs.is_empty() && journal.is_empty() && inbound.is_empty() {
            return Ok(None);
        }
        let mut s = snapshot(client_id, subs, journal, exp.unwrap_or(0));
        s.unsettled = inbound
            .into_iter()
            .map(|(id, msg)| (id, msg.into()))
            .collect();
        Ok(Some(s))
    }

    /// The journaled deliveries of `client_id` not yet acknowledged, in journal order
    /// (those the client received — PUBREC — are left out).
    pub async fn late_entries(
        &self,
        client_id: &str,
    ) -> Result<Vec<broker::mailbox::Delivery>, redis::RedisError> {
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.keys.journal(client_id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(snapshot(client_id, Vec::new(), fields, 0).queued)
    }

    /// Takes `client_id` over from `dead` if that node still owns it: returns the new
    /// epoch and the stored session and will.
    pub async fn adopt(
        &self,
        client_id: &str,
        dead: &str,
    ) -> Result<Option<(u64, StoredSession)>, redis::RedisError> {
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
        Ok(Some((epoch, StoredSession { snapshot, will })))
    }

    /// The stored subscriptions of `client_id`.
    pub async fn subscriptions(
        &self,
        client_id: &str,
    ) -> Result<Vec<(String, broker::session::Subscription)>, redis::RedisError> {
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.keys.subscriptions(client_id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(f, v)| match read_subscription(&v) {
                Ok(s) => Some((f, s)),
                Err(e) => {
                    tracing::error!(%client_id, filter = %f, error = %e, "stored subscription unreadable; skipped");
                    None
                }
            })
            .collect())
    }

    /// Journals deliveries straight into a session that is not installed anywhere yet
    /// (its new owner loads it once the repair that calls this is done).
    pub async fn journal_stored(
        &self,
        client_id: &str,
        deliveries: Vec<(String, broker::mailbox::Delivery)>,
    ) -> Result<(), redis::RedisError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(JOURNAL_ANY_SCRIPT)
            .arg(3)
            .arg(self.keys.session(client_id))
            .arg(self.keys.journal(client_id))
            .arg(self.keys.done(client_id));
        for (key, mut d) in deliveries {
            // The script prepends the packet id it reserves.
            d.journal = None;
            cmd.arg(key).arg(journal_value_unnumbered(&d));
        }
        cmd.query_async(&mut self.conn.clone()).await
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.me
    }

    /// The owner node and ownership epoch Redis holds for `client_id`, if any.
    pub async fn owner(&self, client_id: &str) -> Result<Option<(String, u64)>, redis::RedisError> {
        let (owner, epoch): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.keys.session(client_id))
            .arg("owner")
            .arg("epoch")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(owner.map(|o| (o, epoch.unwrap_or(0))))
    }

    /// This node, kicked by the claim of `to` at `epoch`: false if Redis names this
    /// node the owner again (the claim was given back), so it keeps the session; else
    /// true, and if that claim is still the latest the claimer no longer gives the id
    /// back ([`Sessions::release`]).
    pub async fn begin_handover(
        &self,
        client_id: &str,
        epoch: u64,
        to: &str,
    ) -> Result<bool, redis::RedisError> {
        let r: i64 = redis::Script::new(BEGIN_HANDOVER_SCRIPT)
            .key(self.keys.session(client_id))
            .arg(to)
            .arg(epoch)
            .arg(&self.me)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(r == 1)
    }

    /// Gives client id `client_id`, claimed by this node at `epoch`, back to `prev`
    /// after no handover came, unless the previous owner already committed to hand
    /// it over ([`Released::HandoverUnderway`]) or another claim came since.
    pub async fn release(
        &self,
        client_id: &str,
        epoch: u64,
        prev: &str,
    ) -> Result<Released, redis::RedisError> {
        let r: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(self.keys.session(client_id))
            .arg(&self.me)
            .arg(epoch)
            .arg(prev)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match r {
            1 => Released::GivenBack,
            2 => Released::HandoverUnderway,
            _ => Released::ClaimedSince,
        })
    }

    /// The client ids `node` holds sessions or wills for.
    pub async fn owned_by(&self, node: &str) -> Result<Vec<String>, redis::RedisError> {
        redis::cmd("SMEMBERS")
            .arg(self.keys.owned(node))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Records that this node now holds `clients` (a failed node's set stays for
    /// later repairs and inbox drains: they serve every session it held).
    pub async fn moved(&self, clients: &HashSet<String>) -> Result<(), redis::RedisError> {
        if clients.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = clients.iter().map(String::as_str).collect();
        let mut conn = self.conn.clone();
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
async fn writer(
    conn: Conn,
    keys: Keys,
    (me, grace): (String, std::time::Duration),
    mut rx: mpsc::UnboundedReceiver<Op>,
    queue: Arc<StoreQueue>,
) {
    let mut retry: Vec<(SessionChange, Stored)> = Vec::new();
    // Journal entries whose write failed (maybe after it happened).
    let mut uncertain: HashSet<(Arc<str>, String)> = HashSet::new();
    let mut backoff = Backoff::default();
    let mut failing_since: Option<std::time::Instant> = None;
    // The second of the last round trip that checked TTLs and pruned delivered ids.
    let mut last_upkeep = 0;
    loop {
        let mut batch = Vec::new();
        if retry.is_empty() {
            match rx.recv().await {
                Some(op) => {
                    queue.taken(&op);
                    batch.push(op)
                }
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => {
                    queue.taken(&op);
                    batch.push(op)
                }
                Err(_) => break,
            }
        }
        // Changes that failed before go first, in their order.
        let mut changes: Vec<(SessionChange, Stored)> = std::mem::take(&mut retry);
        let mut journals = Vec::new();
        let second = unix_ms() / 1000;
        let upkeep = second != last_upkeep;
        last_upkeep = second;
        let mut round = Batch::new(&keys, (&me, grace), conn.is_cluster(), upkeep);
        for (c, _) in &changes {
            round.change(c);
        }
        for op in batch {
            match op {
                Op::Change(c, stored) => {
                    round.change(&c);
                    changes.push((c, stored));
                }
                Op::Journal(j) => {
                    round.journal(&j.entries);
                    journals.push(j);
                }
            }
        }
        let mut round = round.finish();
        let writing: usize = journals.iter().map(|j| j.entries.len()).sum();
        queue.set_writing(writing);
        let result = round.send(&conn).await;
        queue.set_writing(0);
        match result {
            Ok(values) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        secs = since.elapsed().as_secs(),
                        "session store: redis reachable again"
                    );
                }
                backoff.reset();
                queue.changes_stored(changes.len());
                for ((c, stored), at) in changes.into_iter().zip(round.change_at) {
                    let Some(tx) = stored else { continue };
                    let at = at.unwrap_or(usize::MAX);
                    // An inbound QoS 2 id is stored only while the connection still
                    // owns its session (the script answers 0 otherwise).
                    let fenced = matches!(
                        c,
                        SessionChange::InboundQos2 {
                            message_id: Some(_),
                            ..
                        }
                    ) && !matches!(values.get(at), Some(redis::Value::Int(1)));
                    let _ = tx.send(if fenced {
                        Err(ClusterError::TakenOver)
                    } else {
                        Ok(())
                    });
                }
                for (j, at) in journals.into_iter().zip(round.journal_at) {
                    let mut entries: Vec<Option<_>> = j.entries.into_iter().map(Some).collect();
                    let mut full = Vec::new();
                    for batch::JournalAt {
                        cmd,
                        session,
                        entries: group,
                    } in at
                    {
                        let flags: Vec<i64> = match values.get(cmd) {
                            Some(redis::Value::Array(per_session)) => per_session
                                .get(session)
                                .and_then(|v| redis::from_redis_value_ref(v).ok())
                                .unwrap_or_default(),
                            _ => Vec::new(),
                        };
                        if flags.first() == Some(&0) {
                            tracing::debug!("journaled for a session being taken over");
                        }
                        for (n, e) in entries[group].iter_mut().enumerate() {
                            let Entry {
                                client_id,
                                key,
                                blocked: b,
                                ..
                            } = e.take().expect("each entry once");
                            let retried = uncertain.remove(&(client_id.clone(), key.clone()));
                            if let Durability::Moved { .. } = b.mailbox.durability() {
                                tracing::debug!(%client_id, %key, "journaled for the session's new node; not queued here");
                                continue; // stored for the session's new node
                            }
                            // Already in the journal or delivered (flag 0): the same
                            // message came again (a resend, a repair) and was queued
                            // when first stored — unless that first write's answer was
                            // lost with Redis (`uncertain`): then it was never queued.
                            if flags.get(n + 1) == Some(&0) && !retried {
                                tracing::debug!(%client_id, %key, "already journaled; not queued twice");
                                continue;
                            }
                            if !b.mailbox.is_online() {
                                // Offline: its queue's bounds and policy apply.
                                b.mailbox.push_journaled(b.delivery);
                                continue;
                            }
                            match b.mailbox.try_push_journaled(b.delivery) {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::debug!(%client_id, %key, "journaled delivery the session already has; not queued twice")
                                }
                                // A connected session's queue is full: the publisher (or
                                // the inbox consumer) waits for room.
                                Err(delivery) => full.push(Blocked {
                                    mailbox: b.mailbox,
                                    delivery,
                                }),
                            }
                        }
                    }
                    let _ = j.done.send(Ok(full));
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, "session store: redis unreachable; persistent-session messages are refused until it is back");
                }
                let err = ClusterError::unavailable(&e);
                for j in journals {
                    // Their write may have happened, its answer lost: a retry that
                    // finds them stored still queues them.
                    if uncertain.len() < MAX_RETRY {
                        uncertain.extend(
                            j.entries
                                .iter()
                                .map(|e| (e.client_id.clone(), e.key.clone())),
                        );
                    }
                    let _ = j.done.send(Err(err.clone()));
                }
                if changes.len() > MAX_RETRY {
                    let drop = changes.len() - MAX_RETRY;
                    tracing::warn!(
                        dropped = drop,
                        "session store: too many changes waiting for redis; oldest dropped"
                    );
                    changes.drain(..drop);
                    queue.changes_stored(drop);
                }
                retry = changes;
                backoff.wait().await;
            }
        }
    }
}

/// The journal key of record `index` of inbox entry `entry` (a stream id,
/// `<ms>-<seq>`) of `node`'s inbox: the same wherever and however often the entry is
/// delivered.
pub fn inbox_key(node: &str, entry: &str, index: usize) -> String {
    let ms: u64 = entry
        .split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0);
    format!("{ms:013}:{node}:{entry}:{index}")
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
