//! Claiming a client id: the ownership epoch in Redis, and the handover from the
//! node that held the session before (it disconnects its client and sends the
//! session through this node's inbox).

use super::*;

pub(super) use crate::timings::{HANDOVER_WAIT, HANDOVER_WAIT_MAX};

impl ClusterNode {
    /// What waits for the forwarder (for metrics).
    pub(crate) fn backlog_totals(&self) -> crate::backlog::Totals {
        self.backlog.totals()
    }

    /// Claims the client id in Redis and, if another node owned it, has that node
    /// hand the session over. Also says whether a persistent session existed.
    pub(super) async fn claim_inner(
        &self,
        client_id: &str,
        request: ClaimRequest<'_>,
    ) -> Result<(ClusterClaim, bool), ClusterError> {
        {
            let mut conn = self.redis.conn();
            // A previous owner that died is repaired first (its sessions adopted, its
            // inbox delivered), so that nothing it held for this client is lost.
            let owner: Option<String> = redis::cmd("HGET")
                .arg(self.keys.session(client_id))
                .arg("owner")
                .query_async(&mut conn)
                .await
                .map_err(ClusterError::unavailable)?;
            if let Some(owner) = owner.filter(|o| !o.is_empty() && *o != self.me) {
                if !self
                    .is_alive(&owner)
                    .await
                    .map_err(ClusterError::unavailable)?
                {
                    if self.member_up(&owner) {
                        // Its liveness lapsed but gossip hears it: it is cut off from
                        // Redis (or Redis just came back), so it cannot hand the
                        // session over while its connection may still be served.
                        // Taking the session now would make two live owners
                        // (invariant 7): refuse, the client tries again.
                        return Err(ClusterError::Unavailable(format!(
                            "previous owner {owner} is up but not reaching redis; cannot take the session over now"
                        )));
                    }
                    self.repair_node(&owner).await;
                }
            }
            let will = request.will.map(wire::will_value).unwrap_or_default();
            let (prev, epoch, existed): (String, u64, u8) = self
                .claim_script
                .key(self.keys.session(client_id))
                .key(self.keys.subscriptions(client_id))
                .key(self.keys.journal(client_id))
                .key(self.keys.done(client_id))
                .key(self.keys.inbound(client_id))
                .arg(&self.me)
                .arg(request.expiry_secs)
                .arg(will)
                .arg(u8::from(request.clean_start))
                .arg(self.session_grace.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(ClusterError::unavailable)?;
            if request.expiry_secs > 0 || request.will.is_some() {
                // A survivor finds it here if this node dies.
                redis::cmd("SADD")
                    .arg(self.keys.owned(&self.me))
                    .arg(client_id)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(ClusterError::unavailable)?;
            }
            if prev.is_empty() || prev == self.me {
                return Ok((
                    ClusterClaim {
                        epoch,
                        ..Default::default()
                    },
                    existed == 1,
                ));
            }
            // [MQTT-3.1.4-3] The other node disconnects its connection (0x8E) and
            // hands the session over through our inbox.
            let handed = self.handovers.expect(client_id, epoch);
            let mut record = crate::wire::bus_entry();
            put_kick(&mut record, client_id, epoch, &self.me);
            let kicked = redis::cmd("XADD")
                .arg(self.keys.inbox(&prev))
                .arg("*")
                .arg("b")
                .arg(record.as_ref())
                .query_async::<()>(&mut conn)
                .await;
            if let Err(e) = kicked {
                self.handovers.cancel(client_id, epoch);
                return Err(ClusterError::unavailable(&e));
            }
            // Wait for the handover; if the previous node turns out dead meanwhile
            // (its liveness key expires), repair it instead: what it held for this
            // session is then in Redis, where the caller loads it from.
            let mut deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
            let give_up = tokio::time::Instant::now() + HANDOVER_WAIT_MAX;
            tokio::pin!(handed);
            let session = loop {
                tokio::select! {
                    r = &mut handed => break r.ok().flatten(),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        // A later claim took the id (two connects raced): the session
                        // goes there, not here.
                        if let Ok(Some((owner, current))) = self.sessions.owner(client_id).await {
                            if current > epoch {
                                self.handovers.cancel(client_id, epoch);
                                return Err(ClusterError::Unavailable(format!(
                                    "client id claimed again on {owner} meanwhile"
                                )));
                            }
                        }
                        // Dead by both signals (liveness expired, gossip lost it):
                        // nothing can still serve the old connection.
                        if !self.is_alive(&prev).await.unwrap_or(true) && !self.member_up(&prev) {
                            self.handovers.cancel(client_id, epoch);
                            self.repair_node(&prev).await;
                            break None;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            // Alive by both signals: it will read the kick once it has
                            // worked through its inbox (after a partition that can take
                            // seconds); wait on, within bounds.
                            let now = tokio::time::Instant::now();
                            if now < give_up
                                && self.member_up(&prev)
                                && self.is_alive(&prev).await.unwrap_or(false)
                            {
                                deadline = now + HANDOVER_WAIT;
                                continue;
                            }
                            // Alive by one signal only: it may still serve the old
                            // connection (cut off from Redis). Give the id back and
                            // refuse (invariant 7) — unless it already committed to
                            // the handover, which is then on its way.
                            let released = self.sessions.release(client_id, epoch, &prev).await;
                            if released == Ok(crate::sessions::Released::HandoverUnderway)
                                && tokio::time::Instant::now() < give_up
                            {
                                deadline += HANDOVER_WAIT;
                                continue;
                            }
                            self.handovers.cancel(client_id, epoch);
                            tracing::warn!(%client_id, previous = %prev, ?released, "previous node did not hand the session over in time; connection refused");
                            return Err(ClusterError::Unavailable(format!(
                                "previous owner {prev} did not hand the session over within {HANDOVER_WAIT:?}"
                            )));
                        }
                    }
                }
            };
            Ok((
                ClusterClaim {
                    epoch,
                    session,
                    ..Default::default()
                },
                existed == 1,
            ))
        }
    }
}
