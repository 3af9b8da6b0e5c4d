//! Clusters of real processes for `tests/cluster.rs`: `redis-server` (one server, or a
//! three-master Redis Cluster) and `astramq` nodes joined through gossip.
//!
//! - [`RedisServer`]: one `redis-server` on a free loopback port, no persistence,
//!   killed on drop. [`RedisCluster`]: three of them in cluster mode, slots assigned
//!   by `redis-cli --cluster create`. A missing `redis-server` fails the test.
//! - [`resp`] (`common/resp.rs`, re-exported here): a tiny blocking RESP client
//!   (follows `MOVED`; TLS through the redis crate) to look at the keys the nodes
//!   write (`astramq:{routes}`, the inbox streams, sessions).
//! - [`TestCluster`]: Redis plus n nodes `n1..nN`; `n1` is the gossip seed every other
//!   node joins. [`TestCluster::kill`] (SIGKILL), [`TestCluster::stop`] (SIGTERM),
//!   [`TestCluster::restart`] (same node id, same gossip address),
//!   [`TestCluster::pause`] / [`TestCluster::resume`] (SIGSTOP / SIGCONT).
//! - Waiting, never sleeping: [`TestCluster::wait_formed`] (every node saw every
//!   other come up), [`TestCluster::wait_route_visible`] (a route is in Redis),
//!   [`TestCluster::sync_feed`] (a node has applied every route and retained change
//!   another node made so far — the barrier to pass before asserting exact counts),
//!   [`TestCluster::wait_log`], and [`super::wait_for`] for anything else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{capture, free_port, tail, wait_for, Broker, RawClient, Version, T};

/// The key prefix the nodes use (config `[cluster] key_prefix`, default).
pub const PREFIX: &str = "astramq";

/// How long a cluster (Redis, nodes, gossip) may take to come up.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Finds a Redis command-line tool. Missing means a broken test environment, which
/// must fail loudly rather than skip.
pub fn redis_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is required by the cluster tests but is not installed: run scripts/test.sh, \
         or `apt-get install redis-server redis-tools redis-sentinel`"
    );
}

pub use super::resp;

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// The loopback addresses a test `redis-server` listens on: `127.0.0.1`, and one
/// more per node for tests that cut a single node off from Redis (node `i` may use
/// `127.0.0.{11 + i}`, see [`ClusterBuilder::redis_address_per_node`]).
const REDIS_BINDS: [&str; 9] = [
    "127.0.0.1",
    "127.0.0.11",
    "127.0.0.12",
    "127.0.0.13",
    "127.0.0.14",
    "127.0.0.15",
    "127.0.0.16",
    "127.0.0.17",
    "127.0.0.18",
];

/// The TLS files of a `redis-server` that speaks TLS only ([`RedisServer::start_tls`]).
#[derive(Clone, Debug)]
pub struct RedisTlsFiles {
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the server's certificate and the clients' certificates.
    pub ca: PathBuf,
    /// A client certificate and key signed by `ca`: required from every client
    /// (`--tls-auth-clients yes`) when set, not asked for otherwise.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    tls: Option<RedisTlsFiles>,
    /// Keeps an append-only file, so a restart comes back with the data.
    persistent: bool,
}

/// `redis-server` arguments for persistence: an append-only file (fsync every second;
/// a SIGKILL loses nothing the kernel has) or none at all.
fn persistence_args(persistent: bool) -> [&'static str; 6] {
    if persistent {
        [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ]
    } else {
        ["--save", "", "--appendonly", "no", "--appendfsync", "no"]
    }
}

impl RedisServer {
    /// Starts a standalone server: no snapshots, no AOF, loopback only.
    pub fn start() -> RedisServer {
        Self::spawn(false, false, None)
    }

    /// Starts a standalone server with an append-only file: restarted after a kill,
    /// it has its data again, as a supervised Redis in production has (the Redis
    /// documentation warns against restarting a master without persistence: its
    /// replicas, or a Sentinel that promotes it, would take its empty data set).
    pub fn start_persistent() -> RedisServer {
        Self::spawn(false, true, None)
    }

    /// Starts a standalone server that speaks TLS only (`--port 0 --tls-port P`);
    /// [`RedisServer::cmd`] then speaks TLS too. [`RedisServer::restart`] is not
    /// supported.
    pub fn start_tls(tls: RedisTlsFiles) -> RedisServer {
        Self::spawn(false, false, Some(tls))
    }

    fn spawn(cluster_mode: bool, persistent: bool, tls: Option<RedisTlsFiles>) -> RedisServer {
        let bin = redis_tool("redis-server");
        let mut last_log = String::new();
        // The port is free when picked but could be taken before redis binds it:
        // retry on "Address already in use".
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let mut cmd = Command::new(&bin);
            match &tls {
                None => cmd.args(["--port", &port.to_string()]),
                Some(t) => cmd
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .args([
                        "--tls-auth-clients",
                        if t.client.is_some() { "yes" } else { "no" },
                    ])
                    // A Redis Cluster's bus and replication over TLS too.
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"]),
            };
            cmd.arg("--bind")
                .args(REDIS_BINDS)
                .args(persistence_args(persistent))
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(dir.path().join("redis.log"));
            if cluster_mode {
                // An explicit bus port: the default (port + 10000) may not exist.
                cmd.args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-port", &free_port().to_string()])
                    .args(["--cluster-node-timeout", "5000"]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let stderr = capture(child.stderr.take().unwrap());
            let mut server = RedisServer {
                child,
                port,
                stderr,
                dir,
                persistent,
                tls: tls.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if server.answers_pong() {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    last_log = server.log();
                    if last_log.contains("Address already in use") {
                        break;
                    }
                    panic!("redis-server exited at start ({status}):\n{last_log}");
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {port} did not answer PING within 10 s:\n{}",
                    server.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("redis-server could not bind a free port in 5 attempts:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server answers PING with PONG (not an error such as `LOADING`
    /// while it reads its append-only file back).
    fn answers_pong(&self) -> bool {
        matches!(self.try_cmd(&["PING"]), Ok(resp::Value::Status(s)) if s == "PONG")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL nodes are given: `redis://127.0.0.1:PORT` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<resp::Value> {
        resp::command_with(self.addr(), self.tls.as_ref(), args)
    }

    /// The TLS files, when the server speaks TLS only.
    pub fn tls(&self) -> Option<&RedisTlsFiles> {
        self.tls.as_ref()
    }

    /// Runs a command; panics if Redis cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> resp::Value {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// The server's log file and standard error.
    pub fn log(&self) -> String {
        let file = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        format!("{file}{}", self.stderr.lock().unwrap())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server and waits for it to exit. `keep_data`: `SHUTDOWN SAVE` (the
    /// data goes to `dump.rdb` in its directory and is loaded again by
    /// [`RedisServer::restart`]); otherwise `SHUTDOWN NOSAVE` and any earlier dump is
    /// deleted, so the restarted server is empty (a restart that lost its data).
    pub fn shutdown(&mut self, keep_data: bool) {
        let how = if keep_data { "SAVE" } else { "NOSAVE" };
        // The server closes the connection instead of answering.
        let _ = self.try_cmd(&["SHUTDOWN", how]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .child
            .try_wait()
            .expect("try_wait redis-server")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} still running 10 s after SHUTDOWN {how}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if !keep_data {
            let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        // `try_wait` needs `&mut`; a killed server is reaped by `kill`, so a running
        // one answers PING.
        self.try_cmd(&["PING"]).is_ok()
    }

    /// SIGKILLs the server and reaps it (no shutdown, nothing saved).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the (shut down) server again on the same port and directory, and waits
    /// for it to answer PING.
    pub fn restart(&mut self) {
        assert!(
            self.child
                .try_wait()
                .expect("try_wait redis-server")
                .is_some(),
            "restart: redis-server on port {} is still running",
            self.port
        );
        let bin = redis_tool("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(&bin)
                .args(["--port", &self.port.to_string(), "--bind"])
                .args(REDIS_BINDS)
                .args(persistence_args(self.persistent))
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(self.dir.path().join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            self.stderr = capture(child.stderr.take().unwrap());
            self.child = child;
            loop {
                if self.answers_pong() {
                    return;
                }
                if self.child.try_wait().expect("try_wait").is_some() {
                    // The port may linger a moment after the previous server: retry.
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "restarted redis-server on port {} did not answer PING within 10 s:\n{}",
                    self.port,
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server could not start again on port {} within 10 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server :{} log (last 2 KiB) ---\n{}",
                self.port,
                tail(&self.log(), 2048)
            );
        }
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `redis-server --cluster-enabled yes`, joins them with
    /// `redis-cli --cluster create`, and waits for `cluster_state:ok` on each.
    pub fn start() -> RedisCluster {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (`servers[0..3]` are the
    /// masters at start: `redis-cli --cluster create` makes the first addresses
    /// masters).
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        Self::start_with(replicas, None)
    }

    /// Three masters speaking TLS only (clients, cluster bus, replication), no
    /// replicas; [`RedisCluster::url`] is then `rediss+cluster://`.
    pub fn start_tls(tls: RedisTlsFiles) -> RedisCluster {
        Self::start_with(0, Some(tls))
    }

    fn start_with(replicas: usize, tls: Option<RedisTlsFiles>) -> RedisCluster {
        let n = 3 * (1 + replicas);
        let servers: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::spawn(true, false, tls.clone()))
            .collect();
        let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
        let mut create = Command::new(redis_tool("redis-cli"));
        if let Some(t) = &tls {
            create.arg("--tls").arg("--cacert").arg(&t.ca);
            if let Some((cert, key)) = &t.client {
                create.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create {addrs:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + STARTUP;
        for s in &servers {
            loop {
                let info = s.cmd(&["CLUSTER", "INFO"]).text();
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Redis Cluster not ok on port {} within {STARTUP:?}:\n{info}",
                    s.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every replica has its master's data: a replica that never synced cannot be
        // elected, and a test that kills a master before then sees no failover at all.
        for s in &servers {
            loop {
                let info = s.cmd(&["INFO", "replication"]).text();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica on port {} not in sync within {STARTUP:?}:\n{info}",
                    s.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { servers }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (`rediss+cluster://`
    /// with TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.servers.iter().map(|s| s.addr().to_string()).collect();
        let scheme = if self.servers[0].tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// Runs a command on whichever master holds the key (redirections followed).
    pub fn cmd(&self, args: &[&str]) -> resp::Value {
        self.servers[0]
            .try_cmd(args)
            .unwrap_or_else(|e| panic!("redis cluster {args:?}: {e}"))
    }
}

/// The Redis a [`TestCluster`] runs on.
pub enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
    /// A master, a replica and three sentinels (`common/sentinel.rs`).
    Sentinel(super::sentinel::RedisSentinel),
}

impl Backend {
    pub fn url(&self) -> String {
        match self {
            Backend::Single(s) => s.url(),
            Backend::Cluster(c) => c.url(),
            Backend::Sentinel(s) => s.url(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> resp::Value {
        match self {
            Backend::Single(s) => s.cmd(args),
            Backend::Cluster(c) => c.cmd(args),
            Backend::Sentinel(s) => s.cmd(args),
        }
    }
}

// ---------------------------------------------------------------------------
// astramq nodes
// ---------------------------------------------------------------------------

/// Options for [`TestCluster`].
pub struct ClusterBuilder {
    nodes: usize,
    redis_cluster: bool,
    cluster_replicas: usize,
    args: Vec<String>,
    node_args: Vec<Vec<String>>,
    redis_per_node: bool,
    sentinel: Option<usize>,
    user: Option<(String, String, Vec<String>)>,
    tls: Option<RedisTlsFiles>,
}

impl ClusterBuilder {
    /// Run on one `redis-server` that speaks TLS only ([`RedisServer::start_tls`]), or
    /// with [`Self::redis_cluster`] on a TLS Redis Cluster; the nodes get the
    /// `rediss://` (`rediss+cluster://`) URL (their TLS flags go in [`Self::args`]).
    pub fn redis_tls(mut self, tls: RedisTlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Run on Redis under Sentinel (a master, `replicas` replicas, three sentinels);
    /// the nodes get the `redis+sentinel://` URL.
    pub fn sentinel(mut self, replicas: usize) -> Self {
        self.sentinel = Some(replicas);
        self
    }

    /// Before the nodes start, create the Redis ACL user `user` with `password` and
    /// `rules` (`ACL SETUSER user on >password rules...`, on every data server), and
    /// give the nodes a URL that logs in as that user.
    pub fn redis_user(mut self, user: &str, password: &str, rules: &[&str]) -> Self {
        let rules = rules.iter().map(|r| r.to_string()).collect();
        self.user = Some((user.to_string(), password.to_string(), rules));
        self
    }

    /// Run on a three-master Redis Cluster instead of one server.
    pub fn redis_cluster(mut self) -> Self {
        self.redis_cluster = true;
        self
    }

    /// Run on a three-master Redis Cluster with one replica per master.
    pub fn redis_cluster_with_replicas(mut self) -> Self {
        self.redis_cluster = true;
        self.cluster_replicas = 1;
        self
    }

    /// Extra command-line arguments for every node.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra command-line arguments for node `i` only (after those for every node).
    pub fn node_args(mut self, i: usize, args: &[&str]) -> Self {
        self.node_args[i].extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Node `i` reaches Redis at `127.0.0.{11 + i}` instead of `127.0.0.1` (the same
    /// server), so a firewall rule can cut that one node off from Redis
    /// ([`TestCluster::redis_addr_of`]).
    pub fn redis_address_per_node(mut self) -> Self {
        self.redis_per_node = true;
        self
    }

    /// Starts Redis, then `n1` (the seed), then the others joining `n1`, and waits
    /// until every node has seen every other come up.
    pub async fn start(self) -> TestCluster {
        let redis = if let (true, Some(tls)) = (self.redis_cluster, &self.tls) {
            Backend::Cluster(RedisCluster::start_tls(tls.clone()))
        } else if self.redis_cluster {
            Backend::Cluster(RedisCluster::start_with_replicas(self.cluster_replicas))
        } else if let (Some(replicas), Some(tls)) = (self.sentinel, &self.tls) {
            Backend::Sentinel(super::sentinel::RedisSentinel::start_tls(
                replicas,
                tls.clone(),
            ))
        } else if let Some(replicas) = self.sentinel {
            Backend::Sentinel(super::sentinel::RedisSentinel::start(replicas))
        } else if let Some(tls) = self.tls {
            Backend::Single(RedisServer::start_tls(tls))
        } else {
            Backend::Single(RedisServer::start())
        };
        let mut credentials = None;
        if let Some((user, password, rules)) = &self.user {
            let servers: Vec<&RedisServer> = match &redis {
                Backend::Single(s) => vec![s],
                Backend::Cluster(c) => c.servers.iter().collect(),
                Backend::Sentinel(s) => s.servers.iter().collect(),
            };
            let pass = format!(">{password}");
            let mut args = vec!["ACL", "SETUSER", user.as_str(), "on", pass.as_str()];
            args.extend(rules.iter().map(String::as_str));
            for server in servers {
                let r = server.cmd(&args);
                assert_eq!(r, resp::Value::Status("OK".into()), "{args:?}: {r:?}");
            }
            credentials = Some(format!("{user}:{password}@"));
        }
        let mut c = TestCluster {
            nodes: Vec::new(),
            redis,
            ids: (1..=self.nodes).map(|i| format!("n{i}")).collect(),
            args: self.args,
            node_args: self.node_args,
            redis_per_node: self.redis_per_node,
            credentials,
            running: Vec::new(),
            seq: AtomicU64::new(0),
        };
        for i in 0..self.nodes {
            let join = (i > 0).then(|| c.nodes[0].gossip_addr());
            let node = c.spawn_node(&c.ids[i], "127.0.0.1:0", join);
            c.nodes.push(node);
            c.running.push(true);
        }
        c.wait_formed().await;
        c
    }
}

/// With `ASTRAMQ_TEST_LOGS=DIR`, every node's log is written to `DIR/<pid>-<node>.log`
/// when the cluster is dropped (for looking into a run afterwards).
impl Drop for TestCluster {
    fn drop(&mut self) {
        let Some(dir) = std::env::var_os("ASTRAMQ_TEST_LOGS") else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        for (node, id) in self.nodes.iter().zip(&self.ids) {
            let name = format!("{}-{seq}-{id}.log", std::process::id());
            let _ = std::fs::write(std::path::Path::new(&dir).join(name), node.stderr());
        }
    }
}

/// Redis plus `n` astramq nodes `n1..nN` (index 0 is `n1`, the gossip seed).
pub struct TestCluster {
    // Field order is drop order: the nodes go before Redis.
    /// Every node's latest process; a killed or stopped one stays for its logs.
    nodes: Vec<Broker>,
    redis: Backend,
    ids: Vec<String>,
    args: Vec<String>,
    node_args: Vec<Vec<String>>,
    redis_per_node: bool,
    /// `user:password@` for the nodes' Redis URL ([`ClusterBuilder::redis_user`]).
    credentials: Option<String>,
    running: Vec<bool>,
    seq: AtomicU64,
}

impl TestCluster {
    pub fn builder(nodes: usize) -> ClusterBuilder {
        ClusterBuilder {
            nodes,
            redis_cluster: false,
            cluster_replicas: 0,
            args: Vec::new(),
            node_args: vec![Vec::new(); nodes],
            redis_per_node: false,
            sentinel: None,
            user: None,
            tls: None,
        }
    }

    /// Redis and `n` nodes, formed.
    pub async fn start(n: usize) -> TestCluster {
        Self::builder(n).start().await
    }

    /// The address node `i` reaches Redis at (see
    /// [`ClusterBuilder::redis_address_per_node`]).
    pub fn redis_addr_of(&self, i: usize) -> SocketAddr {
        let port = match &self.redis {
            Backend::Single(r) => r.port(),
            _ => panic!("one address per node needs a single Redis server"),
        };
        if self.redis_per_node {
            SocketAddr::from(([127, 0, 0, 11 + i as u8], port))
        } else {
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    }

    fn spawn_node(&self, id: &str, gossip: &str, join: Option<SocketAddr>) -> Broker {
        let i = self.ids.iter().position(|n| n == id).unwrap_or(0);
        let mut url = if self.redis_per_node {
            format!("redis://{}", self.redis_addr_of(i))
        } else {
            self.redis.url()
        };
        if let Some(c) = &self.credentials {
            url = url.replacen("://", &format!("://{c}"), 1);
        }
        let mut args = vec!["--node-id", id, "--redis", &url];
        // A node given its own gossip address (`node_args`) keeps it.
        if !self.node_args[i].iter().any(|a| a == "--gossip-listen") {
            args.extend(["--gossip-listen", gossip]);
        }
        let join = join.map(|a| a.to_string());
        if let Some(j) = &join {
            args.extend(["--join", j.as_str()]);
        }
        // Debug for our crates (gossip events are logged at debug), not for the
        // Redis client's chatter.
        let mut b = Broker::builder().args(&args).env(
            "ASTRAMQ_LOG_LEVEL",
            "info,astramq_cluster=debug,astramq_membership=debug,astramq_broker=debug",
        );
        for a in self
            .args
            .iter()
            .chain(self.node_args.get(i).into_iter().flatten())
        {
            b = b.args(&[a.as_str()]);
        }
        // Always astramq: the mosquitto reference mode has no cluster.
        Broker::start_astramq(b)
    }

    /// Node `i` (0-based) as a [`Broker`]: `addr()`, `stderr()`, and every helper
    /// that takes a broker (`V5Client::connect`, `mosquitto_pub`, ...).
    pub fn node(&self, i: usize) -> &Broker {
        &self.nodes[i]
    }

    /// Node `i`'s id (`n{i+1}`).
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn redis(&self) -> &Backend {
        &self.redis
    }

    /// The Redis Cluster (panics on another backend).
    pub fn redis_cluster_mut(&mut self) -> &mut RedisCluster {
        match &mut self.redis {
            Backend::Cluster(c) => c,
            _ => panic!("redis_cluster_mut: the cluster does not run on Redis Cluster"),
        }
    }

    /// Redis under Sentinel (panics on another backend).
    pub fn redis_sentinel(&mut self) -> &mut super::sentinel::RedisSentinel {
        match &mut self.redis {
            Backend::Sentinel(s) => s,
            _ => panic!("redis_sentinel: the cluster does not run under Sentinel"),
        }
    }

    /// The single `redis-server` (panics on a Redis Cluster backend).
    pub fn redis_server(&mut self) -> &mut RedisServer {
        match &mut self.redis {
            Backend::Single(s) => s,
            _ => panic!("redis_server: the cluster does not run on a single Redis server"),
        }
    }

    /// A full key name: `key("{routes}")` is `astramq:{routes}`.
    pub fn key(&self, tagged: &str) -> String {
        format!("{PREFIX}:{tagged}")
    }

    /// A raw client on node `i`, connected (clean) with CONNACK success.
    pub async fn client(&self, i: usize, v: Version, id: &str) -> RawClient {
        self.node(i).client(v, id).await
    }

    /// SIGKILL node `i` and reap it (no goodbye: gossip must notice).
    pub fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let _ = n.child.kill();
        n.exited = Some(n.child.wait().expect("wait for killed node"));
        self.running[i] = false;
    }

    /// SIGSTOP node `i`: the process freezes (no gossip, no MQTT, no Redis) but keeps
    /// its sockets open, as a node stalled by a long GC-like pause or a hung VM.
    pub fn pause(&self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    /// SIGCONT node `i` after [`TestCluster::pause`]: it carries on where it stopped.
    pub fn resume(&self, i: usize) {
        self.nodes[i].signal("CONT");
    }

    /// SIGTERM node `i` and wait for it to exit; returns its status.
    pub async fn stop(&mut self, i: usize) -> ExitStatus {
        self.nodes[i].signal("TERM");
        let st = self.nodes[i].wait_exit(Duration::from_secs(15)).await;
        self.running[i] = false;
        st.unwrap_or_else(|| panic!("{} did not exit within 15 s of SIGTERM", self.ids[i]))
    }

    /// Starts node `i` again with the same node id and gossip address (as a node with
    /// a fixed `gossip_listen` restarts), joining the first other running node. A node
    /// still running is killed first.
    pub async fn restart(&mut self, i: usize) {
        if self.running[i] {
            self.kill(i);
        }
        let gossip = self.nodes[i].gossip_addr().to_string();
        let seed = (0..self.len())
            .find(|&j| j != i && self.running[j])
            .map(|j| self.nodes[j].gossip_addr());
        let node = self.spawn_node(&self.ids[i], &gossip, seed);
        self.nodes[i] = node;
        self.running[i] = true;
    }

    /// Starts one more node (`n{len+1}`) joining the first running node, waits until
    /// it and the running nodes see each other, and returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.len();
        self.ids.push(format!("n{}", i + 1));
        self.node_args.push(Vec::new());
        let seed = (0..i)
            .find(|&j| self.running[j])
            .map(|j| self.nodes[j].gossip_addr());
        let node = self.spawn_node(&self.ids[i], "127.0.0.1:0", seed);
        self.nodes.push(node);
        self.running.push(true);
        self.wait_formed().await;
        i
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.running[i]
    }

    /// Waits until every running node has logged every other running node coming up
    /// in gossip (the nodes log membership events at debug level).
    pub async fn wait_formed(&self) {
        let live: Vec<usize> = (0..self.len()).filter(|&i| self.running[i]).collect();
        for &i in &live {
            for &j in &live {
                if i != j {
                    let needle = format!("Up(Member {{ node_id: \"{}\"", self.ids[j]);
                    self.wait_log(
                        i,
                        STARTUP,
                        &format!("{} sees {} up", self.ids[i], self.ids[j]),
                        |l| l.contains(&needle),
                    )
                    .await;
                }
            }
        }
    }

    /// Waits until some line of node `i`'s log satisfies `pred`.
    pub async fn wait_log(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.nodes[i].stderr().lines().any(&pred) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} in {}'s log:\n{}",
                    self.ids[i],
                    tail(&self.nodes[i].stderr(), 6000)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether node `i` logged that node `j` failed (and dropped its routes).
    pub fn logged_failure_of(&self, i: usize, j: usize) -> bool {
        let token = format!("node={}", self.ids[j]);
        self.nodes[i]
            .stderr()
            .lines()
            .any(|l| l.contains("node failed;") && l.split_whitespace().any(|w| w == token))
    }

    /// Every `(node id, filter)` in `astramq:{routes}`.
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut routes: Vec<(String, String)> = self
            .redis
            .cmd(&["HKEYS", &self.key("{routes}")])
            .strings()
            .into_iter()
            .filter_map(|field| {
                // Fields are `node@generation\nfilter`: one node id, several runs.
                let (n, f) = field.split_once('\n')?;
                Some((
                    n.rsplit_once('@').map_or(n, |(id, _)| id).to_string(),
                    f.to_string(),
                ))
            })
            .collect();
        routes.sort();
        routes
    }

    fn has_route(&self, i: usize, filter: &str) -> bool {
        self.routes()
            .iter()
            .any(|(n, f)| n == self.id(i) && f == filter)
    }

    /// Waits until node `i`'s route for `filter` is stored in Redis. This says the
    /// route is written, not that the other nodes applied it: use
    /// [`TestCluster::sync_feed`] before counting messages.
    pub async fn wait_route_visible(&self, i: usize, filter: &str) {
        let what = format!("route ({}, {filter}) in {PREFIX}:{{routes}}", self.id(i));
        wait_for(T, &what, || self.has_route(i, filter)).await;
    }

    /// Waits until node `i`'s route for `filter` is gone from Redis.
    pub async fn wait_route_gone(&self, i: usize, filter: &str) {
        let what = format!("route ({}, {filter}) removed from Redis", self.id(i));
        wait_for(T, &what, || !self.has_route(i, filter)).await;
    }

    /// Barrier: once this returns, node `reader` has applied every route and retained
    /// change node `writer` made before the call.
    ///
    /// Each node writes its changes to the change feed in order and every node applies
    /// the feed in order. A helper on `writer` subscribes to a fresh topic (a change
    /// queued after all earlier ones); a helper on `reader` publishes QoS 1 probes to
    /// it until one arrives, which proves `reader` applied that change and so
    /// everything `writer` queued before it.
    pub async fn sync_feed(&self, writer: usize, reader: usize) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let topic = format!("astramq-test/sync/{n}");
        let mut sub = self
            .client(writer, Version::V311, &format!("sync-sub-{n}"))
            .await;
        sub.sub(&topic, 0).await;
        if writer == reader {
            sub.disconnect().await;
            return;
        }
        let mut probe = self
            .client(reader, Version::V311, &format!("sync-pub-{n}"))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            probe.publish(&topic, b"sync", 1, false).await;
            if sub
                .read(Duration::from_millis(50))
                .await
                .is_ok_and(|p| matches!(p, super::Packet::Publish(_)))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not see {}'s subscription to {topic} within 10 s",
                self.id(reader),
                self.id(writer)
            );
        }
        probe.disconnect().await;
        sub.disconnect().await;
    }

    /// [`TestCluster::sync_feed`] from `writer` to every other running node.
    pub async fn sync_from(&self, writer: usize) {
        for r in 0..self.len() {
            if r != writer && self.running[r] {
                self.sync_feed(writer, r).await;
            }
        }
    }

    /// Messages ever appended to node `i`'s inbox stream (`XINFO STREAM`
    /// `entries-added`; entries are deleted once consumed, so `XLEN` would not do).
    pub fn inbox_added(&self, i: usize) -> u64 {
        let key = self.key(&format!("{{inbox:{}}}", self.id(i)));
        match self.redis.cmd(&["XINFO", "STREAM", &key]) {
            resp::Value::Error(e) if e.contains("no such key") => 0,
            v => v
                .field("entries-added")
                .unwrap_or_else(|| panic!("XINFO STREAM {key}: no entries-added in {v:?}"))
                .int() as u64,
        }
    }

    /// Entries waiting in node `i`'s inbox stream.
    pub fn inbox_len(&self, i: usize) -> u64 {
        let key = self.key(&format!("{{inbox:{}}}", self.id(i)));
        self.redis.cmd(&["XLEN", &key]).int() as u64
    }

    /// The node that owns `client_id`'s session in Redis, if any.
    pub fn session_owner(&self, client_id: &str) -> Option<String> {
        let key = self.key(&format!("{{s:{client_id}}}"));
        let owner = self.redis.cmd(&["HGET", &key, "owner"]).text();
        (!owner.is_empty()).then_some(owner)
    }
}
