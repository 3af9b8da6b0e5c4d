//! The Redis a test cluster runs on: one `redis-server` ([`RedisServer`], with TLS or
//! persistence if asked), a Redis Cluster of three masters ([`RedisCluster`]), or
//! either of them or a Sentinel deployment as a [`Backend`].

use super::*;

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
    /// In a Redis Cluster: its cluster bus port (a restart rejoins with the same
    /// node id, from its `nodes-<port>.conf`).
    cluster_bus: Option<u16>,
}

/// `redis-server` arguments for a Redis Cluster member.
fn cluster_args(port: u16, bus: u16) -> Vec<String> {
    [
        "--cluster-enabled".to_string(),
        "yes".into(),
        "--cluster-config-file".into(),
        format!("nodes-{port}.conf"),
        // An explicit bus port: the default (port + 10000) may not exist.
        "--cluster-port".into(),
        bus.to_string(),
        "--cluster-node-timeout".into(),
        "5000".into(),
    ]
    .into()
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
            let cluster_bus = cluster_mode.then(free_port);
            if let Some(bus) = cluster_bus {
                cmd.args(cluster_args(port, bus));
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
                cluster_bus,
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
    /// for it to answer PING. A Redis Cluster member rejoins its cluster with the
    /// same node id (its data is gone unless it is persistent).
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
                .args(
                    self.cluster_bus
                        .map(|bus| cluster_args(self.port, bus))
                        .unwrap_or_default(),
                )
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
    Sentinel(crate::common::sentinel::RedisSentinel),
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
