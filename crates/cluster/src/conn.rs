//! Connections to Redis, whichever way it is deployed, and the key layout.
//!
//! `--redis` accepts:
//! - `redis://host:port[/db]` or `rediss://...` (TLS): one server, through a
//!   `ConnectionManager` that reconnects by itself;
//! - `redis+cluster://host:port,host:port,...`: a Redis Cluster seed list;
//! - `redis+sentinel://[user:password@]host:port[,host:port...]/master`: Sentinel.
//!   Every connection asks Sentinel for the current master when it opens, and opens
//!   again after a lost connection or a `READONLY` from a demoted master
//!   ([`crate::sentinel`]), so the node follows a failover by itself. The credentials,
//!   if any, are those of the Redis master and replicas (an ACL user); the sentinels
//!   themselves are reached without authentication.
//!
//! With TLS ([`crate::tls`]): `rediss://`, `rediss+cluster://`, `rediss+sentinel://`;
//! the server certificate and host name are always verified (against
//! `cluster.redis_tls_ca` when set), a client certificate is optional.
//!
//! `redis://user:password@host:port` logs in as a Redis ACL user (`AUTH user password`
//! on every connection); `docs/reliability.md` lists the minimal ACL the nodes need.
//!
//! The key layout is [`crate::keys`].
//!
//! Blocking stream reads (`XREAD`/`XREADGROUP ... BLOCK`) each get a dedicated
//! connection whose response timeout exceeds the BLOCK time; everything else shares
//! one multiplexed connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};
use thiserror::Error;

use crate::durable::Durable;
use crate::health::RedisHealth;
use crate::sentinel::{Master, SentinelConn};
use crate::tls::{is_tls_url, RedisTls, TlsError};

pub use crate::keys::{Keys, INBOX_GROUP};

/// Redis could not be reached or used.
#[derive(Debug, Error)]
pub enum RedisError {
    /// The URL is not one of the accepted forms.
    #[error("redis: invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No connection within the timeout.
    #[error("redis: cannot connect to {url} within {secs} s: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The timeout.
        secs: u64,
        /// The last error.
        reason: String,
    },
    /// The TLS settings cannot be used with this URL.
    #[error("redis: {url}: {source}")]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong.
        source: TlsError,
    },
    /// A command failed.
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
}

/// A connection of any deployment kind, usable with `redis::cmd(...).query_async`.
#[derive(Clone)]
pub enum Conn {
    /// One server, reconnecting.
    Managed(ConnectionManager),
    /// One server, plain multiplexed (dedicated readers, Sentinel).
    Plain(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
    /// Whichever server Sentinel names master, followed across failovers.
    Sentinel(SentinelConn),
    /// Another connection whose requests each end with `WAIT` ([`Redis::durable_conn`]).
    Durable(Box<Durable>),
    /// Another connection whose round trips are timed and counted
    /// (`astramq_redis_round_trip_seconds`, `astramq_redis_errors_total`).
    Measured(Box<Measured>),
}

impl Conn {
    /// Whether this reaches a Redis Cluster (through any wrapper): a pipeline must
    /// then stay within one slot.
    pub fn is_cluster(&self) -> bool {
        match self {
            Conn::Cluster(_) => true,
            Conn::Measured(m) => m.inner.is_cluster(),
            Conn::Durable(d) => d.is_cluster(),
            Conn::Managed(_) | Conn::Plain(_) | Conn::Sentinel(_) => false,
        }
    }
}

/// A connection and where its round trips are recorded.
#[derive(Clone)]
pub struct Measured {
    inner: Conn,
    health: Arc<RedisHealth>,
}

impl Measured {
    /// Times `request` (one command or pipeline) into the health's histogram. One
    /// clock read on each side and a boxed future per round trip, which carries a
    /// whole batch of messages on the hot paths.
    fn time<'a, T: Send + 'a>(
        health: &'a RedisHealth,
        request: RedisFuture<'a, T>,
    ) -> RedisFuture<'a, T> {
        let start = Instant::now();
        Box::pin(async move {
            let r = request.await;
            health.round_trip(start.elapsed(), r.is_err());
            r
        })
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Managed(_) => "Conn::Managed",
            Conn::Plain(_) => "Conn::Plain",
            Conn::Cluster(_) => "Conn::Cluster",
            Conn::Sentinel(_) => "Conn::Sentinel",
            Conn::Durable(_) => "Conn::Durable",
            Conn::Measured(_) => "Conn::Measured",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Durable(c) => c.req_packed_command(cmd),
            Conn::Measured(m) => {
                let Measured { inner, health } = &mut **m;
                Measured::time(health, inner.req_packed_command(cmd))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Durable(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Measured(m) => {
                let Measured { inner, health } = &mut **m;
                Measured::time(health, inner.req_packed_commands(pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Durable(c) => c.get_db(),
            Conn::Measured(m) => m.inner.get_db(),
        }
    }
}

#[derive(Clone)]
enum Target {
    Single(Client),
    Cluster(Box<ClusterClient>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// The master's and replicas' credentials, from the URL.
        node: Option<redis::RedisConnectionInfo>,
        /// Shared by every connection of the deployment (see [`Redis::forget_master`]).
        current: Arc<Master>,
        /// `rediss+sentinel://`: TLS to the sentinels and to the servers they name,
        /// with these certificates (`None`: the system's trust store).
        tls: Option<Option<redis::TlsCertificates>>,
    },
}

/// A Redis deployment: the shared connection, a way to open dedicated ones, and the
/// node's view of whether Redis is reachable ([`RedisHealth`], shared by every clone).
#[derive(Clone)]
pub struct Redis {
    url: String,
    target: Target,
    shared: Conn,
    timeout: Duration,
    health: Arc<RedisHealth>,
    /// `cluster.redis_wait_replicas` and its timeout, when set.
    wait: Option<(u32, Duration)>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish()
    }
}

/// How long a command may take before it counts as failed (blocking reads excepted).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Redis {
    /// Connects, failing if Redis does not answer a PING within `timeout`. `tls`
    /// applies to the TLS forms of the URL only ([`crate::tls`]); given with a
    /// plain-text URL it is an error.
    pub async fn connect(
        url: &str,
        tls: &RedisTls,
        timeout: Duration,
    ) -> Result<Redis, RedisError> {
        let full = url;
        // What errors, logs and `url()` show: the password replaced by `***`.
        let url = &redact(full);
        let bad = |reason: &str| RedisError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let secure = is_tls_url(full);
        if !secure && !tls.is_empty() {
            return Err(bad(
                "cluster.redis_tls_ca/cert/key are set but the URL is not \
                 rediss://, rediss+cluster:// or rediss+sentinel://: refusing to send \
                 in plain text",
            ));
        }
        let certs = tls.certificates().map_err(|source| RedisError::Tls {
            url: url.to_string(),
            source,
        })?;
        // `rediss+...` is the TLS form of `redis+...`.
        let plain = match full.strip_prefix("rediss+") {
            Some(rest) => format!("redis+{rest}"),
            None => full.to_string(),
        };
        let scheme = if secure { "rediss" } else { "redis" };
        let target = if let Some(rest) = plain.strip_prefix("redis+cluster://") {
            let seeds: Vec<String> = rest.split(',').map(|h| format!("{scheme}://{h}")).collect();
            let mut builder = ClusterClient::builder(seeds)
                .connection_timeout(timeout)
                .response_timeout(RESPONSE_TIMEOUT);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Target::Cluster(Box::new(builder.build().map_err(|e| bad(&e.to_string()))?))
        } else if let Some(rest) = plain.strip_prefix("redis+sentinel://") {
            let (hosts, master) = rest.split_once('/').ok_or_else(|| {
                bad("expected redis+sentinel://[user:password@]host:port[,host:port]/master")
            })?;
            let (credentials, hosts) = match hosts.rsplit_once('@') {
                Some((c, h)) => (Some(c), h),
                None => (None, hosts),
            };
            let node = credentials
                .map(|c| master_credentials(c, hosts))
                .transpose()
                .map_err(|e| bad(&e.to_string()))?;
            Target::Sentinel {
                sentinels: hosts
                    .split(',')
                    .map(|h| format!("{scheme}://{h}"))
                    .collect(),
                master: master.to_string(),
                node,
                current: Arc::new(Master::default()),
                tls: secure.then_some(certs),
            }
        } else {
            let client = match certs {
                Some(certs) => Client::build_with_tls(full, certs),
                None => Client::open(full),
            };
            Target::Single(client.map_err(|e| bad(&e.to_string()))?)
        };
        let unreachable = |reason: String| RedisError::Unreachable {
            url: url.to_string(),
            secs: timeout.as_secs(),
            reason,
        };
        let connect = async {
            let mut conn = match &target {
                Target::Single(client) => {
                    // Few, short reconnection retries: a command issued while Redis
                    // is down waits for the manager's reconnection attempt, which
                    // must fail fast (the node's watcher and loops retry on their own).
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_millis(500));
                    Conn::Managed(client.get_connection_manager_with_config(config).await?)
                }
                other => open(other, RESPONSE_TIMEOUT, timeout).await?,
            };
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<Conn, redis::RedisError>(conn)
        };
        let shared = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let health = Arc::new(RedisHealth::new());
        let shared = Conn::Measured(Box::new(Measured {
            inner: shared,
            health: health.clone(),
        }));
        Ok(Redis {
            url: url.to_string(),
            target,
            shared,
            timeout,
            health,
            wait: None,
        })
    }

    /// Whether Redis is reachable, as this node sees it (shared by every clone).
    pub fn health(&self) -> &Arc<RedisHealth> {
        &self.health
    }

    /// The URL this deployment was reached through, its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection (cheap to clone; multiplexed).
    pub fn conn(&self) -> Conn {
        self.shared.clone()
    }

    /// A new connection for a blocking reader: its response timeout is `block` plus a
    /// margin, so a BLOCK that returns empty is not mistaken for a dead server.
    pub async fn dedicated(&self, block: Duration) -> Result<Conn, RedisError> {
        let response = block + RESPONSE_TIMEOUT;
        let opening = open(&self.target, response, self.timeout);
        match tokio::time::timeout(self.timeout, opening).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisError::Unreachable {
                url: self.url.clone(),
                secs: self.timeout.as_secs(),
                reason: "timed out".into(),
            }),
        }
    }

    /// Makes [`Redis::durable_conn`] wait for `replicas` replicas (at most `timeout`)
    /// after each request (`cluster.redis_wait_replicas`; see [`crate::durable`]).
    /// Zero turns it off. On Redis Cluster each `WAIT` counts the replicas of the
    /// master its pipeline's slot lives on.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Redis {
        self.wait = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The connection for writes an acknowledgement depends on (the forwarder's
    /// inbox appends, the session journal): the shared one, each request followed by
    /// `WAIT` when `cluster.redis_wait_replicas` is set.
    pub fn durable_conn(&self) -> Conn {
        match self.wait {
            Some((replicas, timeout)) => Conn::Durable(Box::new(Durable::new(
                self.shared.clone(),
                replicas,
                timeout,
            ))),
            None => self.shared.clone(),
        }
    }

    /// Whether this deployment is reached through Sentinel (whose master can change).
    pub fn follows_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// The server the connections were opened to is no longer master (its `ROLE`
    /// says replica): every connection asks Sentinel again at its next command. Does
    /// nothing for other deployments.
    pub fn forget_master(&self) {
        if let Target::Sentinel { current, .. } = &self.target {
            current.forget();
        }
    }
}

/// `url` with the password of its user information, if any, replaced by `***`, for
/// errors and logs: `redis://astramq:***@host:6379`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{shown}@{hosts}{path}")
        }
        None => url.to_string(),
    }
}

/// `user:password` (percent-encoded as in a `redis://` URL) as the connection
/// settings of a Sentinel deployment's master and replicas.
fn master_credentials(
    credentials: &str,
    hosts: &str,
) -> Result<redis::RedisConnectionInfo, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let first = hosts.split(',').next().unwrap_or_default();
    let info = format!("redis://{credentials}@{first}").into_connection_info()?;
    let parsed = info.redis_settings();
    let mut settings = redis::RedisConnectionInfo::default();
    if let Some(user) = parsed.username() {
        settings = settings.set_username(user);
    }
    if let Some(password) = parsed.password() {
        settings = settings.set_password(password);
    }
    Ok(settings)
}

async fn open(
    target: &Target,
    response: Duration,
    connect: Duration,
) -> Result<Conn, redis::RedisError> {
    Ok(match target {
        Target::Single(client) => {
            let config = AsyncConnectionConfig::new().set_response_timeout(Some(response));
            Conn::Plain(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )
        }
        Target::Cluster(client) => {
            let config = redis::cluster::ClusterConfig::new().set_response_timeout(response);
            Conn::Cluster(client.get_async_connection_with_config(config).await?)
        }
        Target::Sentinel {
            sentinels,
            master,
            node,
            current,
            tls,
        } => {
            let client = match tls {
                Some(certs) => sentinel_tls_client(sentinels, master, node, certs)?,
                None => redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    node.clone().map(|settings| {
                        redis::sentinel::SentinelNodeConnectionInfo::default()
                            .set_redis_connection_info(settings)
                    }),
                    redis::sentinel::SentinelServerType::Master,
                )?,
            };
            let conn = SentinelConn::new(client, current.clone(), response, connect);
            conn.connect().await?;
            Conn::Sentinel(conn)
        }
    })
}

/// A Sentinel client speaking TLS to the sentinels and to the master they name, both
/// verified against `certs` (or the system's trust store), with the master's
/// credentials from `node`.
fn sentinel_tls_client(
    sentinels: &[String],
    master: &str,
    node: &Option<redis::RedisConnectionInfo>,
    certs: &Option<redis::TlsCertificates>,
) -> Result<redis::sentinel::SentinelClient, redis::RedisError> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    use redis::{IntoConnectionInfo, TlsMode};
    let addrs = sentinels
        .iter()
        .map(|s| s.as_str().into_connection_info().map(|i| i.addr().clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
        .set_client_to_redis_tls_mode(TlsMode::Secure);
    if let Some(certs) = certs {
        b = b
            .set_client_to_sentinel_certificates(certs.clone())
            .set_client_to_redis_certificates(certs.clone());
    }
    if let Some(settings) = node {
        if let Some(user) = settings.username() {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            b = b.set_client_to_redis_password(password);
        }
    }
    b.build()
}

/// Retry pacing for the Redis loops: 100 ms, doubling to at most 5 s, back to 100 ms
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// Waits the current delay and doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Backoff::MAX);
    }

    /// [`Backoff::wait`], cut short when `health` sees Redis come back, so a loop
    /// that backed off to the longest delay during an outage retries at once.
    pub async fn wait_or_recovered(&mut self, health: &RedisHealth) {
        let delay = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = health.recovered() => self.reset(),
        }
    }
}

/// Runs commands, each on one key, as few round trips as the deployment allows: one
/// pipeline on a single server; on Redis Cluster, where a pipeline may not cross
/// slots, one pipeline per key, the keys in parallel. Order is kept per key.
pub async fn run_per_key(
    conn: &Conn,
    cmds: Vec<(String, redis::Cmd)>,
) -> Result<(), redis::RedisError> {
    if cmds.is_empty() {
        return Ok(());
    }
    if !conn.is_cluster() {
        let mut pipe = redis::pipe();
        for (_, cmd) in cmds {
            pipe.add_command(cmd).ignore();
        }
        return pipe.query_async(&mut conn.clone()).await;
    }
    let mut per_key: Vec<(String, redis::Pipeline)> = Vec::new();
    for (key, cmd) in cmds {
        match per_key.iter_mut().find(|(k, _)| *k == key) {
            Some((_, pipe)) => {
                pipe.add_command(cmd).ignore();
            }
            None => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd).ignore();
                per_key.push((key, pipe));
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (_, pipe) in per_key {
        let mut c = conn.clone();
        set.spawn(async move { pipe.query_async::<()>(&mut c).await });
    }
    let mut result = Ok(());
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => {
                result = Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "pipeline task failed",
                    e.to_string(),
                )))
            }
        }
    }
    result
}

/// Runs commands like [`run_per_key`] and returns each command's reply, in the
/// order given.
pub async fn query_per_key(
    conn: &Conn,
    cmds: Vec<(String, redis::Cmd)>,
) -> Result<Vec<redis::Value>, redis::RedisError> {
    query(conn, cmds, false).await
}

/// Runs commands like [`query_per_key`], but an error answer to one command is
/// returned in its place (`Value::ServerError`) instead of failing them all.
pub async fn query_per_key_lenient(
    conn: &Conn,
    cmds: Vec<(String, redis::Cmd)>,
) -> Result<Vec<redis::Value>, redis::RedisError> {
    query(conn, cmds, true).await
}

async fn query(
    conn: &Conn,
    cmds: Vec<(String, redis::Cmd)>,
    lenient: bool,
) -> Result<Vec<redis::Value>, redis::RedisError> {
    let new_pipe = || {
        let mut pipe = redis::pipe();
        if lenient {
            pipe.ignore_errors();
        }
        pipe
    };
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    if !conn.is_cluster() {
        let mut pipe = new_pipe();
        for (_, cmd) in cmds {
            pipe.add_command(cmd);
        }
        return pipe.query_async(&mut conn.clone()).await;
    }
    // Per key, remembering where each reply goes.
    let n = cmds.len();
    let mut per_key: Vec<(String, redis::Pipeline, Vec<usize>)> = Vec::new();
    for (i, (key, cmd)) in cmds.into_iter().enumerate() {
        match per_key.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, pipe, at)) => {
                pipe.add_command(cmd);
                at.push(i);
            }
            None => {
                let mut pipe = new_pipe();
                pipe.add_command(cmd);
                per_key.push((key, pipe, vec![i]));
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (_, pipe, at) in per_key {
        let mut c = conn.clone();
        set.spawn(async move {
            let r: Result<Vec<redis::Value>, _> = pipe.query_async(&mut c).await;
            r.map(|v| (at, v))
        });
    }
    let mut out = vec![redis::Value::Nil; n];
    while let Some(r) = set.join_next().await {
        let (at, values) = r.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "pipeline task failed", e.to_string()))
        })??;
        for (i, v) in at.into_iter().zip(values) {
            out[i] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://astramq:pw@127.0.0.1:6379/0"),
            "redis://astramq:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis+sentinel://u:p@w@h1:1,h2:2/mymaster"),
            "redis+sentinel://u:***@h1:1,h2:2/mymaster"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let e = Redis::connect(
            "redis://127.0.0.1:1",
            &RedisTls::default(),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cannot connect to redis://127.0.0.1:1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_url_is_a_clear_error() {
        let e = Redis::connect(
            "redis+sentinel://nohost",
            &RedisTls::default(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RedisError::Url { .. }), "{e}");
    }
}
