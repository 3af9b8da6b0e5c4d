//! Connections that follow a Sentinel failover.
//!
//! The redis crate's `SentinelClient` asks Sentinel for the master only when a
//! connection is *opened*; the `MultiplexedConnection` it returns stays bound to that
//! server for good. Once that master is killed the connection fails every command,
//! and once it is demoted to a replica it answers every write with `READONLY`, while
//! Sentinel names another server master. [`SentinelConn`] keeps the current
//! connection and replaces it by asking Sentinel again:
//!
//! - after a connection error or a timeout (the master is gone or hung);
//! - after `READONLY`, `MASTERDOWN` or `UNBLOCKED` (the server is, or is becoming, a
//!   replica): the command was refused, not run, so it is sent once more on the new
//!   master — a demotion costs the caller nothing;
//! - when the node's probe saw its own connection's server report `ROLE` replica
//!   ([`Master::forget`]): every connection of the deployment reopens at its next
//!   command, so a blocking reader that only reads (and so never hears `READONLY`)
//!   does not stay on a demoted master.
//!
//! While no master can be reached, opening fails fast: after a failed attempt the next
//! ones within [`RETRY_AFTER`] return the same error without asking Sentinel, so a burst
//! of commands during an outage does not become a burst of Sentinel lookups. Every such
//! failure is an I/O error, which [`crate::health::RedisHealth::failed`] reads as "Redis
//! unreachable".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

/// After a failed attempt to reach the master, how long further attempts fail at once.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What every connection of one Sentinel deployment shares: which master generation
/// is current. [`Master::forget`] moves it on, and each [`SentinelConn`] opened under
/// an older one reopens through Sentinel at its next command.
#[derive(Debug, Default)]
pub struct Master {
    epoch: AtomicU64,
}

impl Master {
    /// The server connections were opened to is no longer master: every connection
    /// of the deployment asks Sentinel again at its next command.
    pub fn forget(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

/// Whether an error means the connection's server is no longer a usable master, so
/// the next command must go through Sentinel again.
pub fn needs_new_master(e: &RedisError) -> bool {
    crate::health::is_connection_error(e) || e.is_timeout() || refused_as_replica(e)
}

/// `READONLY` (a write on a replica), `MASTERDOWN` (a replica without its master),
/// `UNBLOCKED` (a blocked command ended by a role change): the command did not run.
fn refused_as_replica(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "UNBLOCKED"))
}

fn replica_reply(values: &[Value]) -> bool {
    values.iter().any(|v| {
        matches!(v, Value::ServerError(se)
            if matches!(se.code(), "READONLY" | "MASTERDOWN" | "UNBLOCKED"))
    })
}

/// One connection to whichever server Sentinel currently names master (see the
/// module documentation). Clones share the connection.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
}

struct Inner {
    /// Held while asking Sentinel, so concurrent commands wait for one lookup.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The open connection, with the [`Master`] epoch it was opened at and its own
    /// generation (so a failure only discards the connection it happened on).
    current: Mutex<Option<Current>>,
    generation: AtomicU64,
    /// The last failed attempt to reach the master.
    failed: Mutex<Option<(Instant, String)>>,
    master: Arc<Master>,
    response_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    epoch: u64,
    generation: u64,
}

impl SentinelConn {
    /// A connection through `client`, opened at the first command. `response_timeout`
    /// bounds each command, `connect_timeout` each attempt to reach the master.
    pub fn new(
        client: SentinelClient,
        master: Arc<Master>,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> SentinelConn {
        SentinelConn {
            inner: Arc::new(Inner {
                client: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
                failed: Mutex::new(None),
                master,
                response_timeout,
                connect_timeout,
            }),
        }
    }

    /// Opens the connection now (otherwise the first command does).
    pub async fn connect(&self) -> Result<(), RedisError> {
        self.get().await.map(|_| ())
    }

    /// The open connection if it is still current.
    fn current(&self) -> Option<Current> {
        let epoch = self.inner.master.epoch();
        let mut current = self.inner.current.lock();
        if current.as_ref().is_some_and(|c| c.epoch != epoch) {
            *current = None;
        }
        current.clone()
    }

    /// The current connection, or a new one to the master Sentinel names now.
    async fn get(&self) -> Result<Current, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let mut client = self.inner.client.lock().await;
        // Another command may have opened one while this one waited.
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some((at, e)) = self.inner.failed.lock().as_ref() {
            if at.elapsed() < RETRY_AFTER {
                return Err(unreachable(e.clone()));
            }
        }
        let epoch = self.inner.master.epoch();
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.inner.response_timeout))
            .set_connection_timeout(Some(self.inner.connect_timeout));
        let opened = tokio::time::timeout(
            self.inner.connect_timeout,
            client.get_async_connection_with_config(&config),
        )
        .await;
        let reason = match opened {
            Ok(Ok(conn)) => {
                let c = Current {
                    conn,
                    epoch,
                    generation: self.inner.generation.fetch_add(1, Ordering::Relaxed),
                };
                *self.inner.current.lock() = Some(c.clone());
                *self.inner.failed.lock() = None;
                return Ok(c);
            }
            Ok(Err(e)) => format!("no master through Sentinel: {e}"),
            Err(_) => format!(
                "no master through Sentinel within {:?}",
                self.inner.connect_timeout
            ),
        };
        *self.inner.failed.lock() = Some((Instant::now(), reason.clone()));
        Err(unreachable(reason))
    }

    /// Forgets the connection of `generation` (if still the current one).
    fn discard(&self, generation: u64) {
        let mut current = self.inner.current.lock();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    async fn command(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let mut c = self.get().await?;
        let first = c.conn.send_packed_command(cmd).await;
        match first {
            Err(e) if needs_new_master(&e) => {
                self.discard(c.generation);
                if !refused_as_replica(&e) {
                    return Err(e);
                }
                tracing::info!(error = %e, "redis: the master was demoted; asking Sentinel again");
                // Refused, not run: safe to send once more to the new master.
                c = self.get().await?;
                let again = c.conn.send_packed_command(cmd).await;
                if again.as_ref().is_err_and(needs_new_master) {
                    self.discard(c.generation);
                }
                again
            }
            other => other,
        }
    }

    async fn commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        let mut c = self.get().await?;
        let mut retried = false;
        loop {
            let r = c.conn.send_packed_commands(pipeline, offset, count).await;
            let demoted = match &r {
                Err(e) if needs_new_master(e) => {
                    self.discard(c.generation);
                    refused_as_replica(e)
                }
                Ok(values) if replica_reply(values) => {
                    self.discard(c.generation);
                    true
                }
                _ => false,
            };
            // A replica refuses every write of the pipeline and runs the reads, which
            // may run again: the whole pipeline is sent once more to the new master.
            if !demoted || retried {
                return r;
            }
            tracing::info!("redis: the master was demoted; asking Sentinel again");
            retried = true;
            c = self.get().await?;
        }
    }
}

fn unreachable(reason: String) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        reason,
    ))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
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
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_refusals_and_lost_connections_need_a_new_master() {
        let reply =
            redis::parse_redis_value(b"-READONLY You can't write against a read only replica.\r\n")
                .unwrap();
        assert!(replica_reply(std::slice::from_ref(&reply)));
        let readonly = reply.extract_error().unwrap_err();
        assert!(needs_new_master(&readonly), "{readonly:?}");
        assert!(needs_new_master(&unreachable("gone".into())));
        let other = RedisError::from((redis::ErrorKind::Client, "bad"));
        assert!(!needs_new_master(&other));
        let ok = redis::parse_redis_value(b"+OK\r\n").unwrap();
        assert!(!replica_reply(&[ok]));
    }

    #[test]
    fn forgetting_the_master_moves_the_epoch() {
        let m = Master::default();
        let e = m.epoch();
        m.forget();
        assert_ne!(m.epoch(), e);
    }
}
