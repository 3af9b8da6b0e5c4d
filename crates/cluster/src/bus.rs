//! The bus between nodes: one inbox stream per node in Redis.
//!
//! - [`forwarder`]: takes messages published here, batches whatever accumulated while
//!   the previous round trip was in flight, and appends one entry per destination node
//!   (many records per entry) in one pipelined round trip. Each publisher waiting on a
//!   QoS 1/2 acknowledgement is told once its copies are stored.
//! - [`consumer`]: reads this node's inbox through a consumer group, delivers every
//!   record locally (never forwarding it again: no loops), then acknowledges and
//!   deletes the entries. Entries left pending by an earlier run of this node id are
//!   read first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker::broker::Broker;
use broker::cluster::ClusterError;
use bytes::{Bytes, BytesMut};
use redis::streams::StreamReadReply;
use tokio::sync::{mpsc, oneshot, watch};

use crate::conn::{Keys, Redis, INBOX_GROUP};
use crate::wire::{read_records, BusRecord};

/// One message on its way to other nodes.
#[derive(Debug)]
pub struct Outgoing {
    /// Destination node and the record bytes for it.
    pub dests: Vec<(String, Bytes)>,
    /// Told when the records are stored (QoS 1/2 publishers wait for it).
    pub done: Option<oneshot::Sender<Result<(), ClusterError>>>,
}

/// Most messages carried by one round trip.
const MAX_BATCH: usize = 1024;

/// Appends outgoing records to the destination inboxes, batching.
pub async fn forwarder(redis: Redis, keys: Keys, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut conn = redis.conn();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut per_node: HashMap<&str, BytesMut> = HashMap::new();
        for o in &batch {
            for (node, record) in &o.dests {
                per_node
                    .entry(node.as_str())
                    .or_default()
                    .extend_from_slice(record);
            }
        }
        let mut pipe = redis::pipe();
        for (node, records) in &per_node {
            pipe.cmd("XADD")
                .arg(keys.inbox(node))
                .arg("*")
                .arg("b")
                .arg(records.as_ref())
                .ignore();
        }
        let result: Result<(), redis::RedisError> = pipe.query_async(&mut conn).await;
        let outcome = result.map_err(|e| ClusterError(e.to_string()));
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, messages = batch.len(), "could not forward messages to other nodes");
        }
        for o in batch.drain(..) {
            if let Some(done) = o.done {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

/// How long one XREADGROUP blocks.
const BLOCK: Duration = Duration::from_millis(1000);

/// Reads this node's inbox until `stop` turns true.
pub async fn consumer(
    redis: Redis,
    keys: Keys,
    node: String,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let key = keys.inbox(&node);
    let mut scratch = Vec::new();
    // "0" reads entries delivered to this consumer before but never acknowledged (an
    // earlier run of this node id crashed); then ">" for new ones.
    let mut from = "0";
    let mut conn = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match redis.dedicated(BLOCK).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "inbox: cannot connect to redis; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(INBOX_GROUP)
            .arg(&node)
            .arg("COUNT")
            .arg(256)
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
                backoff = Duration::from_millis(100);
                r
            }
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    let _ = ensure_group(c, &key).await;
                } else {
                    tracing::warn!(error = %e, "inbox: read failed; reconnecting");
                    conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(redis::Value::BulkString(bytes)) = entry.map.get("b") {
                match read_records(bytes) {
                    Ok(records) => deliver(&broker, records, &mut scratch),
                    Err(e) => {
                        tracing::error!(id = %entry.id, error = %e, "inbox: skipping undecodable entry")
                    }
                }
            }
            ids.push(entry.id);
        }
        // Delivered to local sessions: acknowledge and delete, so the stream never
        // needs trimming and nothing unread is ever trimmed away.
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(INBOX_GROUP)
            .arg(&ids)
            .ignore();
        pipe.cmd("XDEL").arg(&key).arg(&ids).ignore();
        if let Err(e) = pipe.query_async::<()>(c).await {
            tracing::warn!(error = %e, "inbox: acknowledge failed; entries will be read again");
            conn = None;
        }
    }
}

fn deliver(broker: &Broker, records: Vec<BusRecord>, scratch: &mut Vec<broker::router::Target>) {
    for record in records {
        match record {
            BusRecord::Message { msg, groups } => {
                broker.deliver_remote(&msg, &groups, scratch);
            }
            BusRecord::Kick { client_id, epoch } => {
                tracing::debug!(%client_id, epoch, "client id claimed by another node");
                broker.kick(&client_id, epoch);
            }
        }
    }
}

/// Creates the inbox stream and its consumer group if they do not exist.
pub async fn ensure_group(
    conn: &mut crate::conn::Conn,
    key: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(INBOX_GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}
