//! Taking over a failed node: once gossip and Redis agree it is dead, its sessions are
//! adopted (one survivor each), its inbox is drained into the sessions and groups it
//! held, and its routes are removed behind the adopters' own.

use std::collections::HashSet;

use super::drain::{delivery_for, group_members};
use super::*;
use crate::timings;

impl ClusterNode {
    /// Drops the routes of node id `dead` (every run but one that is alive again: a
    /// frozen node may have resumed meanwhile), here and in Redis.
    pub(super) async fn drop_routes_of(&self, dead: &str) {
        let mut conn = self.redis.conn();
        let alive: Option<u64> = redis::cmd("GET")
            .arg(self.keys.alive(dead))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        let live_run = alive.map(|g| route_identity(dead, g));
        let runs = {
            let mut table = self.routes.lock();
            let runs: Vec<String> = table
                .runs_of(dead)
                .into_iter()
                .filter(|r| Some(r) != live_run.as_ref())
                .collect();
            for r in &runs {
                table.remove_node(r);
            }
            runs
        };
        let fields: Vec<String> = match redis::cmd("HKEYS")
            .arg(self.keys.routes())
            .query_async(&mut conn)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(node = %dead, error = %e, "route repair: cannot read routes");
                return;
            }
        };
        let routes: Vec<(&str, &str)> = fields
            .iter()
            .filter_map(|f| f.split_once('\n'))
            .filter(|(identity, _)| {
                node_of(identity) == dead && Some(*identity) != live_run.as_deref()
            })
            .collect();
        // Through the feed writer, behind the routes this node just announced for the
        // sessions it adopted: another node never sees the dead node's routes gone
        // before the adopter's are there.
        for (identity, filter) in &routes {
            self.changes.push(Change::RouteRemoved(
                identity.to_string(),
                filter.to_string(),
            ));
        }
        if !routes.is_empty() {
            tracing::info!(node = %dead, routes = routes.len(), runs = runs.len(), "removing a failed node's routes");
        }
    }

    /// Takes over the sessions (and wills) `from` held, as far as it still owns them:
    /// installs them here (wills then go out after their delay) and delivers what
    /// `from`'s inbox still held for them. Returns (sessions, inbox messages, and what
    /// a later drain of the inbox needs).
    pub(super) async fn adopt_sessions(&self, from: &str) -> (usize, usize, Option<Taken>) {
        // Gone: this process is shutting down, the sessions stay for another node.
        let Some(broker) = self.broker.upgrade() else {
            return (0, 0, None);
        };
        let ids = match self.sessions.owned_by(from).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(node = %from, error = %e, "cannot list a failed node's sessions");
                return (0, 0, None);
            }
        };
        let mut adopted: HashSet<String> = HashSet::new();
        let mut targets = Vec::new();
        for id in ids {
            match self.sessions.adopt(&id, from).await {
                Ok(Some((epoch, stored))) => {
                    let username = stored.will.as_ref().and_then(|w| w.username.clone());
                    let client_id: Arc<str> = id.as_str().into();
                    if broker
                        .adopt(
                            client_id,
                            epoch,
                            stored.snapshot,
                            stored.will,
                            username.as_deref(),
                        )
                        .await
                    {
                        adopted.insert(id.clone());
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(client_id = %id, error = %e, "cannot take a session over"),
            }
            if from != self.me {
                // Adopted here or claimed by its client elsewhere: either way what the
                // dead inbox holds for it goes into its journal, which the node that
                // holds it now reads (see `Cluster::resumed`).
                match self.sessions.subscriptions(&id).await {
                    Ok(subs) if !subs.is_empty() => targets.push((id, subs)),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(client_id = %id, error = %e, "cannot read a session"),
                }
            }
        }
        if let Err(e) = self.sessions.moved(&adopted).await {
            tracing::warn!(error = %e, "cannot record the sessions taken over");
        }
        self.sessions_adopted
            .fetch_add(adopted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let n = adopted.len();
        if from == self.me {
            // This node's own inbox: its consumer reads what is pending.
            return (n, 0, None);
        }
        let messages = self.take_inbox(from, &targets).await;
        let taken = (!targets.is_empty()).then_some(targets);
        (n, messages, taken)
    }

    /// Whether `node` refreshed its liveness key lately.
    /// The gossip layer's datagram counters, while it runs.
    pub(super) fn membership_stats(&self) -> Option<membership::MembershipStats> {
        self.membership.lock().as_ref().map(|m| m.stats())
    }

    /// Other broker nodes gossip lists as live.
    pub(super) fn broker_peers(&self) -> usize {
        self.membership.lock().as_ref().map_or(0, |m| {
            m.members()
                .borrow()
                .iter()
                .filter(|x| x.meta.role == membership::Role::Broker)
                .count()
        })
    }

    /// Whether gossip currently lists node id `node` as a live member.
    pub(super) fn member_up(&self, node: &str) -> bool {
        self.membership
            .lock()
            .as_ref()
            .is_some_and(|m| m.members().borrow().iter().any(|x| x.node_id == node))
    }

    pub(super) async fn is_alive(&self, node: &str) -> Result<bool, redis::RedisError> {
        redis::cmd("EXISTS")
            .arg(self.keys.alive(node))
            .query_async(&mut self.redis.conn())
            .await
    }

    /// Takes over a dead node's sessions, once: one node (a Redis lock) does it while
    /// the others wait for it to finish.
    pub(super) async fn repair_node(&self, dead: &str) {
        let started = std::time::Instant::now();
        let mut conn = self.redis.conn();
        let lock = self.keys.repair(dead);
        loop {
            let won: Result<Option<String>, _> = redis::cmd("SET")
                .arg(&lock)
                .arg(&self.me)
                .arg("NX")
                .arg("PX")
                .arg(timings::REPAIR_LOCK_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            match won {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < timings::REPAIR_LOCK_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => {
                    tracing::warn!(node = %dead, "repair of a failed node still running elsewhere after 15 s; going on");
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %dead, error = %e, "cannot take the repair lock");
                    return;
                }
            }
        }
        let (sessions, messages, taken) = self.adopt_sessions(dead).await;
        let _ = redis::cmd("DEL")
            .arg(&lock)
            .query_async::<()>(&mut conn)
            .await;
        let draining = self.keys.draining(dead);
        match taken {
            None => {
                // Another repair that took sessions over drops the routes itself, once
                // its drains are done.
                let busy: bool = redis::cmd("EXISTS")
                    .arg(&draining)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(false);
                if !busy {
                    self.drop_routes_of(dead).await;
                    lifetime::forget_later(self.redis.conn(), self.keys.clone(), dead);
                }
            }
            Some(targets) => {
                let _ = redis::cmd("SET")
                    .arg(&draining)
                    .arg(&self.me)
                    .arg("PX")
                    .arg(timings::DRAINING_MARK.as_millis() as u64)
                    .query_async::<()>(&mut conn)
                    .await;
                // The dead node's routes stay a few seconds more: until every node
                // knows the routes of the sessions' new homes, copies keep going into
                // the dead inbox, and these drains deliver them (a copy that also came
                // another way is stored once, by its message id; a session claimed
                // elsewhere picks them up from its journal).
                let node = self.this.get().cloned().unwrap_or_default();
                let dead = dead.to_string();
                tokio::spawn(async move {
                    for (wait, then_drop) in timings::DEAD_INBOX_DRAINS {
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        let Some(node) = node.upgrade() else { return };
                        if then_drop {
                            node.take_inbox(&dead, &targets).await;
                            node.drop_routes_of(&dead).await;
                            let _ = redis::cmd("DEL")
                                .arg(&draining)
                                .query_async::<()>(&mut node.redis.conn())
                                .await;
                        } else {
                            node.take_inbox(&dead, &targets).await;
                        }
                    }
                    if let Some(node) = node.upgrade() {
                        lifetime::forget_dead_node(&node.redis.conn(), &node.keys, &dead).await;
                    }
                });
            }
        }
        if sessions > 0 || messages > 0 {
            self.nodes_repaired
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.last_repair_ms.store(
                started.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::info!(node = %dead, sessions, messages, ms = started.elapsed().as_millis() as u64, "took over a failed node's sessions");
        }
    }

    /// For each message (with its journal key), which of `targets` already has it in
    /// its journal or its done set — asked only of shared groups' members, for
    /// messages with group copies: one round trip per session.
    async fn holders(
        &self,
        targets: &Taken,
        messages: &[(
            Arc<broker::message::Message>,
            broker::cluster::LocalGroups,
            String,
        )],
    ) -> Result<Vec<Vec<bool>>, redis::RedisError> {
        let mut held = vec![vec![false; targets.len()]; messages.len()];
        let mut cmds = Vec::new();
        let mut at = Vec::new();
        for (m, (_, groups, key)) in messages.iter().enumerate() {
            if groups.0.is_empty() {
                continue;
            }
            for (t, (id, subs)) in targets.iter().enumerate() {
                if !subs.iter().any(|(f, _)| f.starts_with("$share/")) {
                    continue;
                }
                let mut exists = redis::cmd("HEXISTS");
                exists.arg(self.keys.journal(id)).arg(key);
                let mut done = redis::cmd("ZSCORE");
                done.arg(self.keys.done(id)).arg(key);
                cmds.push((self.keys.session(id), exists));
                cmds.push((self.keys.session(id), done));
                at.push((m, t));
            }
        }
        let values = crate::conn::query_per_key(&self.redis.conn(), cmds).await?;
        for ((m, t), pair) in at.into_iter().zip(values.chunks(2)) {
            held[m][t] =
                matches!(pair[0], redis::Value::Int(1)) || !matches!(pair[1], redis::Value::Nil);
        }
        Ok(held)
    }

    /// Stores what a dead node's inbox holds (pending and unread entries) in the
    /// journals of the sessions it held, then acknowledges and deletes the entries.
    pub(super) async fn take_inbox(&self, dead: &str, targets: &Taken) -> usize {
        let key = self.keys.inbox(dead);
        let mut conn = self.redis.conn();
        let mut delivered = 0;
        // Entries the dead node read but never acknowledged, then those it never read.
        let mut cursor = "0-0".to_string();
        for pass in 0..2 {
            loop {
                let entries: Vec<redis::streams::StreamId> = if pass == 0 {
                    let r: Result<redis::streams::StreamAutoClaimReply, _> =
                        redis::cmd("XAUTOCLAIM")
                            .arg(&key)
                            .arg(INBOX_GROUP)
                            .arg(&self.me)
                            .arg(0)
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(256)
                            .query_async(&mut conn)
                            .await;
                    match r {
                        Ok(r) => {
                            cursor = r.next_stream_id;
                            r.claimed
                        }
                        Err(e) => {
                            tracing::warn!(node = %dead, error = %e, "cannot claim a failed node's inbox");
                            return delivered;
                        }
                    }
                } else {
                    let r: Result<Option<redis::streams::StreamReadReply>, _> =
                        redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(INBOX_GROUP)
                            .arg(&self.me)
                            .arg("COUNT")
                            .arg(256)
                            .arg("STREAMS")
                            .arg(&key)
                            .arg(">")
                            .query_async(&mut conn)
                            .await;
                    match r {
                        Ok(r) => r
                            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                            .unwrap_or_default(),
                        Err(e) => {
                            tracing::warn!(node = %dead, error = %e, "cannot read a failed node's inbox");
                            return delivered;
                        }
                    }
                };
                if entries.is_empty() {
                    break;
                }
                let mut ids = Vec::with_capacity(entries.len());
                // Every message record of the batch, with the key its journal entries
                // have (the same the failed node's own delivery used).
                let mut messages = Vec::new();
                for entry in entries {
                    if let Some(redis::Value::BulkString(bytes)) = entry.map.get("b") {
                        if let Ok(records) = crate::wire::read_records(bytes) {
                            for (i, r) in records.into_iter().enumerate() {
                                let crate::wire::BusRecord::Message { msg, groups } = r else {
                                    continue;
                                };
                                let key = match msg.id.get() {
                                    Some(k) => k.to_string(),
                                    None => crate::sessions::inbox_key(dead, &entry.id, i),
                                };
                                messages.push((msg, groups, key));
                            }
                        }
                    }
                    ids.push(entry.id);
                }
                // A shared group's copy the failed node had already delivered (the
                // member's journal or done set has it: its PUBLISH may have reached
                // the client) goes back to that member, where it is known, never to a
                // second one [MQTT-4.8.2, and exactly once at QoS 2].
                let held = match self.holders(targets, &messages).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(node = %dead, error = %e, "failed node's inbox: cannot check which members hold its copies; left for a later repair");
                        return delivered;
                    }
                };
                // Per session, everything this batch of entries holds for it: one
                // round trip per session per batch.
                let mut per_target: Vec<Vec<(String, broker::mailbox::Delivery)>> =
                    vec![Vec::new(); targets.len()];
                for ((msg, groups, key), held) in messages.iter().zip(&held) {
                    delivered += 1;
                    let members = group_members(targets, groups, delivered, held);
                    for (((id, subs), out), groups) in
                        targets.iter().zip(per_target.iter_mut()).zip(&members)
                    {
                        if let Some(d) = delivery_for(id, subs, msg, groups) {
                            out.push((key.clone(), d));
                        }
                    }
                }
                for ((id, _), ds) in targets.iter().zip(per_target) {
                    if let Err(e) = self.sessions.journal_stored(id, ds).await {
                        tracing::warn!(client_id = %id, error = %e, "failed node's inbox: copies not stored; left for a later repair");
                        return delivered;
                    }
                }
                if let Err(e) = bus::acknowledge(&mut conn, &key, &ids).await {
                    tracing::warn!(node = %dead, error = %e, "failed node's inbox: acknowledge failed");
                    return delivered;
                }
                if pass == 0 && cursor == "0-0" {
                    break;
                }
            }
        }
        delivered
    }
}
