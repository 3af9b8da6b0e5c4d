//! Writes that survive a Redis failover: `WAIT` before an acknowledgement
//! (setting `cluster.redis_wait_replicas`).
//!
//! Redis replicates asynchronously. A write the master answered can still be missing
//! on the replica Sentinel promotes when that master dies, and with it a QoS 1/2
//! message the broker had acknowledged to its publisher (`docs/reliability.md`,
//! "Redis failover", has the measured rate). With `redis_wait_replicas = N`, the
//! connections whose writes an acknowledgement depends on — the forwarder's `XADD`
//! pipeline to other nodes' inboxes, and the session store's journal writes — append
//! `WAIT N timeout` to every pipeline they send (same connection, same round trip
//! when the replicas are quick): the pipeline counts as failed unless at least N
//! replicas confirmed every write made on the connection so far. A failed pipeline
//! means what any Redis failure means there: the publisher is refused (v5 0x80; a
//! 3.1.1 connection is closed so the client resends), a journal write is retried.
//!
//! The cost: each such round trip waits for the replicas (measured in
//! docs/reliability.md), and while fewer than N replicas are connected, QoS 1/2
//! messages for other nodes are refused — the same trade as Redis's own
//! `min-replicas-to-write`, chosen per deployment.
//!
//! On Redis Cluster a pipeline goes to the master of its keys' slot (the client
//! routes it by its first keyed command; `WAIT` itself has no key), so the appended
//! `WAIT` runs on the connection that made the writes and counts that master's
//! replicas. A request without a key (`SCRIPT LOAD`, which the client sends to every
//! master) writes no data and is passed through without `WAIT`: on its own, `WAIT`
//! would be sent to every master.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::conn::Conn;

/// A connection whose every request ends with `WAIT replicas timeout`.
#[derive(Clone)]
pub struct Durable {
    inner: Conn,
    replicas: u32,
    timeout: Duration,
}

impl Durable {
    /// `inner` (a single server, Sentinel or Redis Cluster connection), waiting for
    /// `replicas` replicas at most `timeout` after each request.
    pub fn new(inner: Conn, replicas: u32, timeout: Duration) -> Durable {
        Durable {
            inner,
            replicas,
            timeout,
        }
    }

    /// Whether the connection underneath reaches a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

    fn wait_cmd(&self) -> Cmd {
        let mut c = redis::cmd("WAIT");
        c.arg(self.replicas).arg(self.timeout.as_millis() as u64);
        c
    }

    /// The error when `WAIT` answered fewer replicas than required.
    fn check(&self, reply: Option<Value>) -> Result<(), RedisError> {
        match reply {
            Some(Value::Int(n)) if n >= i64::from(self.replicas) => Ok(()),
            Some(Value::Int(n)) => Err(RedisError::from((
                ErrorKind::Client,
                "write not replicated",
                format!(
                    "WAIT: {n} of {} replicas confirmed within {:?} (cluster.redis_wait_replicas)",
                    self.replicas, self.timeout
                ),
            ))),
            other => Err(RedisError::from((
                ErrorKind::Client,
                "unexpected WAIT reply",
                format!("{other:?}"),
            ))),
        }
    }

    async fn commands(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        if self.inner.is_cluster() && !pipeline.cmd_iter().any(routed_to_one_slot) {
            return self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
        }
        if pipeline.is_transaction() {
            // WAIT may not run inside MULTI: after the transaction, on the same
            // connection (requests on it are answered in order).
            let values = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await?;
            let wait = self.inner.req_packed_command(&self.wait_cmd()).await?;
            self.check(Some(wait))?;
            return Ok(values);
        }
        let mut with_wait = pipeline.clone();
        with_wait.add_command(self.wait_cmd());
        let mut values = self
            .inner
            .req_packed_commands(&with_wait, offset, count + 1)
            .await?;
        let wait = values.pop();
        self.check(wait)?;
        Ok(values)
    }
}

/// Whether Redis Cluster routes `cmd` by a key to one slot's server (`WAIT` in the
/// same pipeline then reaches that server). The client's own routing table is
/// private: this mirrors it for the commands this crate sends — every data command
/// has its key first; the keyless ones are server commands and scripts called with
/// no key.
fn routed_to_one_slot(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &b""[..],
    });
    let Some(name) = args.next() else {
        return false;
    };
    match name.to_ascii_uppercase().as_slice() {
        b"SCRIPT" | b"PING" | b"WAIT" | b"TIME" | b"ROLE" | b"INFO" | b"CLIENT" | b"FUNCTION" => {
            false
        }
        b"EVAL" | b"EVALSHA" => args.nth(1).is_some_and(|keys| keys != b"0"),
        _ => true,
    }
}

impl ConnectionLike for Durable {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone());
            let mut values = self.commands(&pipe, 0, 1).await?;
            let value = values.pop().unwrap_or(Value::Nil);
            // A single command's error is the request's error, as without WAIT.
            value.extract_error()
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.commands(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable(replicas: u32) -> Durable {
        // `check` never touches the connection: one that is never opened will do.
        let client = redis::sentinel::SentinelClient::build(
            vec!["redis://127.0.0.1:1"],
            "m",
            None,
            redis::sentinel::SentinelServerType::Master,
        )
        .unwrap();
        let never = crate::sentinel::SentinelConn::new(
            client,
            Default::default(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        Durable::new(Conn::Sentinel(never), replicas, Duration::from_millis(250))
    }

    #[test]
    fn too_few_replicas_is_an_error_naming_the_setting() {
        let d = durable(2);
        assert!(d.check(Some(Value::Int(2))).is_ok());
        assert!(d.check(Some(Value::Int(3))).is_ok());
        let e = d.check(Some(Value::Int(1))).unwrap_err();
        assert!(!crate::health::is_connection_error(&e), "{e}");
        assert!(e.to_string().contains("cluster.redis_wait_replicas"), "{e}");
        assert!(d.check(None).is_err());
    }

    #[test]
    fn only_keyed_commands_are_followed_by_wait_on_redis_cluster() {
        assert!(routed_to_one_slot(redis::cmd("XADD").arg("k").arg("*")));
        assert!(routed_to_one_slot(
            redis::cmd("EVALSHA").arg("abc").arg(1).arg("k")
        ));
        assert!(!routed_to_one_slot(
            redis::cmd("SCRIPT").arg("LOAD").arg("return 1")
        ));
        assert!(!routed_to_one_slot(&redis::cmd("PING")));
        assert!(!routed_to_one_slot(
            redis::cmd("EVAL").arg("return 1").arg(0)
        ));
    }
}
