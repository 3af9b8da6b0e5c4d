//! The bus between nodes: one inbox stream per node in Redis.
//!
//! - [`forwarder`]: takes messages published here from the [`Backlog`] (QoS 1/2
//!   first), batches whatever accumulated while the previous round trip was in flight,
//!   and appends one entry per destination node (many records per entry) in one
//!   pipelined round trip. Each publisher waiting on a QoS 1/2 acknowledgement is told
//!   once its copies are stored.
//! - [`consumer`]: reads this node's inbox through a consumer group, delivers every
//!   record locally (never forwarding it again: no loops), then acknowledges and
//!   deletes the entries. Entries left pending by an earlier run of this node id are
//!   read first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::cluster::ClusterError;
use broker::handle::{BrokerHandle, LocalBroker};
use bytes::{Bytes, BytesMut};
use redis::streams::StreamReadReply;
use tokio::sync::{oneshot, watch};

use crate::backlog::Backlog;
use crate::conn::{query_per_key, Backoff, Keys, Redis, INBOX_GROUP};
use crate::sessions::Sessions;
use crate::wire::{put_handover, read_records, BusRecord};
use broker::session::SessionSnapshot;
use parking_lot::Mutex;

/// One message on its way to other nodes.
#[derive(Debug)]
pub struct Outgoing {
    /// Destination node and the record bytes for it.
    pub dests: Vec<(String, Bytes)>,
    /// Told when the records are stored (QoS 1/2 publishers wait for it).
    pub done: Option<oneshot::Sender<Result<(), ClusterError>>>,
}

/// Where a handed-over session (or word that there is none) is delivered.
type HandoverSender = oneshot::Sender<Option<SessionSnapshot>>;

/// Claims on this node waiting for the previous owner to hand a session over.
#[derive(Debug, Default)]
pub struct Handovers {
    waiting: Mutex<HashMap<(String, u64), HandoverSender>>,
}

impl Handovers {
    /// Registers a claim of `client_id` at `epoch`; the receiver gets the session.
    pub fn expect(
        &self,
        client_id: &str,
        epoch: u64,
    ) -> oneshot::Receiver<Option<SessionSnapshot>> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .insert((client_id.to_string(), epoch), tx);
        rx
    }

    /// Forgets a claim that stopped waiting.
    pub fn cancel(&self, client_id: &str, epoch: u64) {
        self.waiting.lock().remove(&(client_id.to_string(), epoch));
    }

    /// Hands a session to the claim waiting for it; returns it when no claim waits
    /// any more (the claim gave up: the caller parks it here, see [`adopt_late`]).
    fn complete(
        &self,
        client_id: &str,
        epoch: u64,
        session: Option<SessionSnapshot>,
    ) -> Option<SessionSnapshot> {
        let waiter = self.waiting.lock().remove(&(client_id.to_string(), epoch));
        match waiter {
            Some(tx) => tx.send(session).err().flatten(),
            None => session,
        }
    }
}

/// Most messages carried by one round trip.
const MAX_BATCH: usize = 1024;

/// How often a destination whose inbox was over its bound is looked at again while
/// nothing else is written to it.
const INBOX_RECHECK: Duration = Duration::from_millis(50);

/// Appends queued records to the destination inboxes, batching: whatever accumulated
/// while the previous round trip was in flight (QoS 1/2 first, see [`Backlog`]) goes
/// in one pipelined round trip, one entry per destination. Each write also reads the
/// destination inbox's length, which decides whether QoS 0 to it is shed
/// (`cluster.inbox_backlog_entries`) and whether QoS 1/2 publishers wait for room in
/// it before they are acknowledged (`cluster.inbox_backlog_hold_ms`). Runs until
/// `stop` turns true.
pub async fn forwarder(
    redis: Redis,
    keys: Keys,
    backlog: Arc<Backlog>,
    mut stop: watch::Receiver<bool>,
) {
    // The publishers' acknowledgements wait on these appends: replicated first when
    // `cluster.redis_wait_replicas` is set.
    let conn = redis.durable_conn();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut rounds: u64 = 0;
    // Acknowledgements the backlog holds for a full inbox (see `Backlog::settle`).
    let mut held = 0;
    loop {
        let recheck = backlog.inbox_full();
        let wait = async {
            // Held acknowledgements wait for a full inbox: looked at again below.
            if recheck.is_empty() && held == 0 {
                backlog.ready().await;
            } else {
                let _ = tokio::time::timeout(INBOX_RECHECK, backlog.ready()).await;
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stop.changed() => {
                // Every held message was written: its publisher is answered.
                backlog.release(None);
                return;
            }
        }
        backlog.take(MAX_BATCH, &mut batch);
        let mut per_node: HashMap<&str, BytesMut> = HashMap::new();
        for o in &batch {
            for (node, record) in &o.dests {
                per_node
                    .entry(node.as_str())
                    .or_insert_with(crate::wire::bus_entry)
                    .extend_from_slice(record);
            }
        }
        // XADD then XLEN per destination written, XLEN alone for those whose inbox
        // was full; `lens` says which reply is whose length.
        let mut cmds = Vec::with_capacity(per_node.len() * 2 + recheck.len());
        let mut lens: Vec<(usize, String)> = Vec::new();
        for (node, records) in &per_node {
            let mut c = redis::cmd("XADD");
            c.arg(keys.inbox(node))
                .arg("*")
                .arg("b")
                .arg(records.as_ref());
            cmds.push((keys.inbox(node), c));
            lens.push((cmds.len(), node.to_string()));
            cmds.push((keys.inbox(node), xlen(&keys, node)));
        }
        for node in recheck
            .iter()
            .filter(|n| !per_node.contains_key(n.as_str()))
        {
            lens.push((cmds.len(), node.clone()));
            cmds.push((keys.inbox(node), xlen(&keys, node)));
        }
        drop(per_node);
        // While Redis is known to be unreachable, fail at once: the publishers get
        // their refusal now instead of after a connection timeout.
        let outcome = if redis.health().is_reachable() {
            match query_per_key(&conn, cmds).await {
                Ok(replies) => {
                    for (at, node) in lens {
                        if let Some(redis::Value::Int(n)) = replies.get(at) {
                            backlog.inbox_len(&node, usize::try_from(*n).unwrap_or(0));
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::debug!(error = %e, messages = batch.len(), "could not forward messages to other nodes");
                    redis
                        .health()
                        .failed("forwarding messages to other nodes", &e);
                    Err(ClusterError::unavailable(&e))
                }
            }
        } else {
            Err(redis.health().unavailable())
        };
        let now = Instant::now();
        for o in batch.drain(..) {
            backlog.settle(o, &outcome, now);
        }
        held = backlog.release(Some(now));
        rounds += 1;
        if rounds.is_multiple_of(1024) {
            backlog.prune();
        }
    }
}

fn xlen(keys: &Keys, node: &str) -> redis::Cmd {
    let mut c = redis::cmd("XLEN");
    c.arg(keys.inbox(node));
    c
}

/// Entries one XREADGROUP takes. Each carries up to 1024 messages, all held in memory
/// until delivered, so a read is kept to a few of them.
const READ_COUNT: usize = 32;

/// How often the inbox consumer reads its pending entries again (see [`consumer`]).
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// How long one XREADGROUP blocks.
const BLOCK: Duration = Duration::from_millis(1000);

/// Reads this node's inbox until `stop` turns true.
pub async fn consumer(
    redis: Redis,
    keys: Keys,
    node: String,
    broker: BrokerHandle,
    handovers: Arc<Handovers>,
    sessions: Arc<Sessions>,
    mut stop: watch::Receiver<bool>,
) {
    let key = keys.inbox(&node);
    let mut scratch = Vec::new();
    // "0" reads entries delivered to this consumer before but never acknowledged (an
    // earlier run of this node id crashed); then ">" for new ones.
    let mut from = "0";
    // Entries delivered whose acknowledgement failed (Redis trouble).
    let mut delivered_unacked: std::collections::HashSet<String> = Default::default();
    let mut conn = None;
    let mut backoff = Backoff::default();
    let mut pending_checked = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        // Now and then the pending entries again, even when nothing failed: a read
        // sent on a connection that was then cut can still reach Redis after the link
        // heals (TCP retransmits it after this consumer gave up on it and read the
        // pending entries on a new connection), and Redis hands its entries to this
        // consumer with nobody reading the answer. They wait in the pending list, and
        // only a read from "0" returns them.
        if from == ">" && pending_checked.elapsed() >= PENDING_RECHECK {
            from = "0";
        }
        if from == "0" {
            pending_checked = std::time::Instant::now();
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match redis.dedicated(BLOCK).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    redis.health().cannot_connect("inbox consumer", &e);
                    tokio::select! {
                        _ = backoff.wait_or_recovered(redis.health()) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(INBOX_GROUP)
            .arg(&node)
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(from);
        let read = cmd.query_async::<Option<StreamReadReply>>(c);
        let reply = tokio::select! {
            r = read => r,
            _ = stop.changed() => return,
        };
        let reply = match reply {
            Ok(r) => {
                backoff.reset();
                r
            }
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    // The group vanished: Redis lost its data (a restart without
                    // persistence, a flush). Everything now in the stream was sent
                    // after that, so the new group reads it from the start.
                    tracing::warn!(stream = %key, "inbox: consumer group missing (redis lost its data?); creating it");
                    if let Err(e) = ensure_group_from(c, &key, "0").await {
                        redis
                            .health()
                            .failed("inbox consumer: creating the group", &e);
                        backoff.wait_or_recovered(redis.health()).await;
                    }
                } else {
                    redis.health().failed("inbox consumer", &e);
                    conn = None;
                    // The read may have happened and only its answer been lost (a
                    // cut link, Redis shutting down): Redis then counts those entries
                    // as delivered to this consumer, and ">" would never return them.
                    // Read the pending ones again first.
                    from = "0";
                    backoff.wait_or_recovered(redis.health()).await;
                }
                continue;
            }
        };
        let entries: Vec<_> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if entries.is_empty() {
            from = ">";
            continue;
        }
        // Gone: this process is shutting down; the entries stay for the next run.
        let Some(broker) = broker.upgrade() else {
            return;
        };
        tracing::debug!(
            entries = entries.len(),
            from,
            first = %entries[0].id,
            last = %entries[entries.len() - 1].id,
            "inbox: read"
        );
        let mut ids = Vec::with_capacity(entries.len());
        let mut stored = true;
        for entry in entries {
            if delivered_unacked.contains(&entry.id) {
                // Delivered before; only its acknowledgement failed.
                ids.push(entry.id);
                continue;
            }
            if let Some(redis::Value::BulkString(bytes)) = entry.map.get("b") {
                match read_records(bytes) {
                    Ok(records) => {
                        let ctx = Ctx {
                            broker: &broker,
                            redis: &redis,
                            keys: &keys,
                            handovers: &handovers,
                            sessions: &sessions,
                        };
                        let source = (node.as_str(), entry.id.as_str());
                        if let Err(e) = deliver(ctx, records, source, &mut scratch).await {
                            // Not acknowledged: read again once Redis is back.
                            tracing::debug!(error = %e, "inbox: persistent-session copies not stored; will retry");
                            redis
                                .health()
                                .error("inbox consumer: storing persistent-session copies", &e);
                            stored = false;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(id = %entry.id, error = %e, "inbox: skipping undecodable entry")
                    }
                }
            }
            ids.push(entry.id);
        }
        // Delivered to local sessions: acknowledge and delete, so the stream never
        // needs trimming and nothing unread is ever trimmed away.
        let mut acked = true;
        if !ids.is_empty() {
            if let Err(e) = acknowledge(c, &key, &ids).await {
                tracing::debug!(error = %e, "inbox: acknowledge failed; entries will be read again");
                redis.health().failed("inbox consumer: acknowledging", &e);
                acked = false;
                // Read again later: acknowledged then, not delivered twice.
                delivered_unacked.extend(ids.iter().cloned());
            } else {
                for id in &ids {
                    delivered_unacked.remove(id);
                }
            }
        }
        if !acked || !stored {
            conn = None;
            // Pending entries are read again ("0"), those delivered only acknowledged.
            from = "0";
        }
        if !stored {
            // What was not stored is still pending: read it again after a pause.
            from = "0";
            backoff.wait_or_recovered(redis.health()).await;
        }
    }
}

/// What delivering inbox records needs.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    broker: &'a LocalBroker,
    redis: &'a Redis,
    keys: &'a Keys,
    handovers: &'a Handovers,
    sessions: &'a Arc<Sessions>,
}

/// Delivers records locally, in order. A QoS 1/2 delivery that finds a connected
/// session's queue full waits for room (up to `limits.queue_full_wait_ms`) before the
/// next record: the inbox then backs up in Redis instead of messages being dropped.
/// Deliveries to persistent sessions are journaled first; `Err` when that failed
/// (the entry must not be acknowledged). `source` is the inbox (node) and entry the
/// records came from: it names the journal entries of records without a message id.
async fn deliver(
    ctx: Ctx<'_>,
    records: Vec<BusRecord>,
    source: (&str, &str),
    scratch: &mut Vec<broker::router::Target>,
) -> Result<(), ClusterError> {
    let Ctx {
        broker,
        redis,
        keys,
        handovers,
        sessions,
    } = ctx;
    let mut blocked = Vec::new();
    let mut journal = Vec::new();
    let mut stored = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        match record {
            BusRecord::Message { msg, groups } => {
                broker.deliver_remote(&msg, &groups, scratch, &mut blocked, &mut journal);
                if !journal.is_empty() {
                    // The message's id names its journal entries; a record from a node
                    // that gave none is named by its place in the inbox.
                    let key = match msg.id.get() {
                        Some(id) => id.to_string(),
                        None => crate::sessions::inbox_key(source.0, source.1, index),
                    };
                    stored.push(sessions.journal(std::mem::take(&mut journal), Some(key)));
                }
                if !blocked.is_empty() {
                    broker.place_blocked(&mut blocked).await;
                }
            }
            BusRecord::Kick {
                client_id,
                epoch,
                to,
            } => {
                tracing::debug!(%client_id, epoch, %to, "client id claimed by another node");
                // Waiting for the connection to close must not hold up the inbox.
                let (broker, conn, keys) = (broker.clone(), redis.conn(), keys.clone());
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    // Not for a claim given up meanwhile (the claimer gave the id
                    // back to this node): that must not cost this node the session.
                    match sessions.begin_handover(&client_id, epoch, &to).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::debug!(%client_id, epoch, %to, "kick for a claim given back to this node; ignored");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%client_id, error = %e, "cannot check a kick against redis; ignored (the claimer refuses its client, which tries again)");
                            return;
                        }
                    }
                    let session = broker.kick(&client_id, epoch).await;
                    let mut record = crate::wire::bus_entry();
                    put_handover(&mut record, &client_id, epoch, session.as_ref());
                    let sent = redis::cmd("XADD")
                        .arg(keys.inbox(&to))
                        .arg("*")
                        .arg("b")
                        .arg(record.as_ref())
                        .query_async::<()>(&mut conn.clone())
                        .await;
                    if let Err(e) = sent {
                        tracing::warn!(%client_id, error = %e, "could not hand the session over");
                    }
                });
            }
            BusRecord::Handover {
                client_id,
                epoch,
                session,
            } => {
                if let Some(session) = handovers.complete(&client_id, epoch, session) {
                    tokio::spawn(adopt_late(
                        broker.clone(),
                        sessions.clone(),
                        client_id,
                        epoch,
                        session,
                    ));
                }
            }
        }
    }
    for rx in stored {
        let mut full = rx
            .await
            .unwrap_or_else(|_| Err(ClusterError::unavailable("session store stopped")))?;
        if !full.is_empty() {
            // Full queues of connected persistent sessions: wait for room (the inbox
            // backs up in Redis meanwhile), as for any other delivery.
            broker.place_blocked(&mut full).await;
        }
    }
    Ok(())
}

/// A session handed over after its claim here gave up (the previous node was cut
/// off and read the kick late; the client was refused meanwhile). The claim made this
/// node its owner in Redis, so it parks the session here — its subscriptions routed,
/// its queue kept — as long as Redis still names this node at that epoch; otherwise a
/// later claim took it and the copy is dropped (that claim resumes from Redis).
async fn adopt_late(
    broker: LocalBroker,
    sessions: Arc<Sessions>,
    client_id: String,
    epoch: u64,
    session: SessionSnapshot,
) {
    match sessions.owner(&client_id).await {
        Ok(Some((owner, current))) if owner == sessions.node() && current == epoch => {
            let parked = broker
                .adopt(client_id.as_str().into(), epoch, session, None, None)
                .await;
            tracing::info!(%client_id, epoch, parked, "a session handed over after its claim gave up is parked here");
        }
        Ok(other) => {
            tracing::info!(%client_id, epoch, now = ?other, "a late handover for a session claimed again since; dropped (the new owner resumes it from redis)");
        }
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "a late handover could not be checked against redis; dropped (the session resumes from redis)");
        }
    }
}

/// Acknowledges inbox entries and deletes them (so the stream never needs trimming and
/// nothing unread is ever trimmed away), in one round trip.
pub async fn acknowledge(
    conn: &mut crate::conn::Conn,
    key: &str,
    ids: &[String],
) -> Result<(), redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.cmd("XACK").arg(key).arg(INBOX_GROUP).arg(ids).ignore();
    pipe.cmd("XDEL").arg(key).arg(ids).ignore();
    pipe.query_async(conn).await
}

/// Creates the inbox stream and its consumer group if they do not exist.
pub async fn ensure_group(
    conn: &mut crate::conn::Conn,
    key: &str,
) -> Result<(), redis::RedisError> {
    ensure_group_from(conn, key, "$").await
}

/// Creates the inbox stream and its consumer group if they do not exist, the group
/// starting after entry `from` (`$`: only entries added from now on; `0`: every entry
/// already in the stream, as after Redis lost its data and other nodes wrote to the
/// new stream before this node recreated the group).
pub async fn ensure_group_from(
    conn: &mut crate::conn::Conn,
    key: &str,
    from: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(INBOX_GROUP)
        .arg(from)
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}
