//! Redis under Sentinel for the failover tests: one master, one or more replicas and
//! three `redis-sentinel` processes (quorum 2, down-after 1 s), all on free loopback
//! ports.
//!
//! - [`RedisSentinel::start`] starts the servers (the replicas follow the master with
//!   `REPLICAOF`), then the sentinels, and waits until every sentinel knows every
//!   replica and the two other sentinels: only then can a failover happen.
//! - [`RedisSentinel::url`] is `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`.
//! - [`RedisSentinel::kill_master`] (SIGKILL of whichever server is master) and
//!   [`RedisSentinel::wait_failover`] (every sentinel names the other server, and that
//!   server's `ROLE` says master), [`RedisSentinel::failover`] (`SENTINEL FAILOVER`:
//!   the master is demoted while it runs, so its clients hear `READONLY`).
//!
//! A missing `redis-sentinel` binary fails the test (Debian: `apt-get install
//! redis-sentinel`; scripts/test.sh installs it).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{redis_tool, resp, RedisServer, RedisTlsFiles};
use super::{free_port, tail};

/// The master name the sentinels monitor.
pub const MASTER: &str = "mymaster";
/// `sentinel down-after-milliseconds`: how long the master may be silent before a
/// sentinel considers it down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `redis-sentinel` process, killed on drop.
struct SentinelProcess {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    tls: Option<RedisTlsFiles>,
}

impl SentinelProcess {
    fn start(master: SocketAddr, tls: Option<&RedisTlsFiles>) -> SentinelProcess {
        let bin = redis_tool("redis-sentinel");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        // Sentinel rewrites its configuration file: it must be its own, writable.
        // With TLS: a TLS-only port, and TLS toward the servers and other sentinels.
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(t) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-replication yes\ntls-auth-clients {}\n",
                t.cert.display(),
                t.key.display(),
                t.ca.display(),
                if t.client.is_some() { "yes" } else { "no" },
            ),
        };
        let text = format!(
            "{listen}bind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {MASTER} {ip} {mport} 2\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER} 5000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.path().display(),
            ip = master.ip(),
            mport = master.port(),
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new(&bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let tls = tls.cloned();
        let mut s = SentinelProcess {
            child,
            port,
            dir,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.try_cmd(&["PING"]).is_ok_and(|v| v.text() == "PONG") {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("redis-sentinel exited at start ({status}):\n{}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-sentinel on port {port} did not answer PING within 10 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn try_cmd(&self, args: &[&str]) -> std::io::Result<resp::Value> {
        resp::command_with(self.addr(), self.tls.as_ref(), args)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// `SENTINEL MASTER mymaster` as field → value.
    fn master_info(&self) -> Vec<(String, String)> {
        let v = self
            .try_cmd(&["SENTINEL", "MASTER", MASTER])
            .unwrap_or_else(|e| panic!("SENTINEL MASTER on {}: {e}", self.port));
        v.strings()
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
            .collect()
    }

    /// The master this sentinel names.
    fn master_port(&self) -> Option<u16> {
        let v = self
            .try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            .ok()?;
        v.strings().get(1)?.parse().ok()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- redis-sentinel :{} log (last 2 KiB) ---\n{}",
                self.port,
                tail(&self.log(), 2048)
            );
        }
    }
}

/// A master, its replica and three sentinels (see the module documentation).
pub struct RedisSentinel {
    // Field order is drop order: sentinels first, so none fails over during teardown.
    sentinels: Vec<SentinelProcess>,
    /// The data servers (master first at start); which one is master changes with
    /// failovers.
    pub servers: Vec<RedisServer>,
}

impl RedisSentinel {
    /// Starts a master, `replicas` replicas and the sentinels; returns once a
    /// failover is possible.
    pub fn start(replicas: usize) -> RedisSentinel {
        Self::start_with(replicas, None)
    }

    /// [`RedisSentinel::start`] with every server and sentinel speaking TLS only
    /// (replication and the sentinels' links too); the URL is `rediss+sentinel://`.
    pub fn start_tls(replicas: usize, tls: RedisTlsFiles) -> RedisSentinel {
        Self::start_with(replicas, Some(tls))
    }

    fn start_with(replicas: usize, tls: Option<RedisTlsFiles>) -> RedisSentinel {
        let server = || match &tls {
            // An append-only file: see RedisServer::start_persistent.
            None => RedisServer::start_persistent(),
            Some(t) => RedisServer::start_tls(t.clone()),
        };
        let master = server();
        // A replica (re)joining a master is synced at once rather than after the
        // default 5 s pause that waits for more replicas to share one transfer.
        master.cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
        let port = master.port().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut servers = vec![master];
        for _ in 0..replicas {
            let replica = server();
            replica.cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
            replica.cmd(&["REPLICAOF", "127.0.0.1", &port]);
            while !replica
                .cmd(&["INFO", "replication"])
                .text()
                .contains("master_link_status:up")
            {
                assert!(
                    Instant::now() < deadline,
                    "a replica did not sync with the master within 20 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            servers.push(replica);
        }
        let sentinels = (0..3)
            .map(|_| SentinelProcess::start(servers[0].addr(), tls.as_ref()))
            .collect();
        let s = RedisSentinel { sentinels, servers };
        let want_replicas = replicas.to_string();
        // Sentinels find the replica through the master's INFO and each other through
        // hello messages (every 2 s): wait for both before any failover is attempted.
        for x in &s.sentinels {
            loop {
                let info = x.master_info();
                let get = |k: &str| {
                    info.iter()
                        .find(|(f, _)| f == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                if get("num-slaves") == want_replicas && get("num-other-sentinels") == "2" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel :{} did not see {replicas} replica(s) and two other sentinels within 20 s: {info:?}",
                    x.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        s
    }

    /// The URL nodes are given.
    pub fn url(&self) -> String {
        self.url_with("")
    }

    /// The URL with `user:password@` (or any prefix) before the sentinel hosts.
    pub fn url_with(&self, credentials: &str) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        let scheme = if self.servers[0].tls().is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!(
            "{scheme}+sentinel://{credentials}{}/{MASTER}",
            hosts.join(",")
        )
    }

    /// Index in [`RedisSentinel::servers`] of the master the first sentinel names.
    pub fn master(&self) -> usize {
        let port = self.sentinels[0]
            .master_port()
            .expect("a sentinel names a master");
        self.servers
            .iter()
            .position(|s| s.port() == port)
            .unwrap_or_else(|| panic!("sentinel names an unknown master :{port}"))
    }

    /// Runs a command on the current master.
    pub fn cmd(&self, args: &[&str]) -> resp::Value {
        self.servers[self.master()].cmd(args)
    }

    /// SIGKILLs the current master; returns its index.
    pub fn kill_master(&mut self) -> usize {
        let m = self.master();
        self.servers[m].kill();
        m
    }

    /// `SENTINEL FAILOVER`: the replica is promoted and the running master demoted.
    /// Returns the old master's index.
    pub fn failover(&self) -> usize {
        let m = self.master();
        let r = self.sentinels[0]
            .try_cmd(&["SENTINEL", "FAILOVER", MASTER])
            .expect("SENTINEL FAILOVER");
        assert_eq!(r.text(), "OK", "SENTINEL FAILOVER: {r:?}");
        m
    }

    /// Waits until every sentinel names a master other than server `old`, that
    /// server answers `ROLE` as master, and every other running server is its replica
    /// again; returns the time waited.
    pub async fn wait_failover(&self, old: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        let old_port = self.servers[old].port();
        loop {
            let ports: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.master_port()).collect();
            let promoted = ports
                .iter()
                .all(|p| p.is_some_and(|p| p != old_port))
                .then(|| ports[0].unwrap());
            if let Some(port) = promoted {
                let s = self.servers.iter().find(|s| s.port() == port).unwrap();
                let replicas_follow = self
                    .servers
                    .iter()
                    .filter(|x| x.port() != port && x.port() != old_port && x.is_running())
                    .all(|x| follows(x, port));
                if role(s).as_deref() == Some("master") && replicas_follow {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < timeout,
                "no failover within {timeout:?}: sentinels name {ports:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until server `old` (a demoted master) answers `ROLE` as a replica;
    /// returns the time waited.
    pub async fn wait_demoted(&self, old: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        while role(&self.servers[old]).as_deref() != Some("slave") {
            assert!(
                start.elapsed() < timeout,
                "server :{} not demoted within {timeout:?}\n{}",
                self.servers[old].port(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Starts the killed server `old` again (empty: no persistence), as its
    /// supervisor would, and waits until it is back in replication: Sentinel made
    /// it a replica of the current master (link up) — or, after a second failover
    /// back to it, its old replica follows it; returns the time waited.
    pub async fn restart_as_replica(&mut self, old: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.servers[old].restart();
        loop {
            // Asked each time: on a loaded machine Sentinel (down-after 1 s) has been
            // seen to fail over a second time, back to the restarted server once it
            // had synced.
            let m = self.master();
            if m != old && follows(&self.servers[old], self.servers[m].port()) {
                break;
            }
            if m == old
                && self.servers.iter().any(|x| {
                    x.port() != self.servers[old].port() && follows(x, self.servers[old].port())
                })
            {
                break;
            }
            assert!(
                start.elapsed() < timeout,
                "restarted server :{} not back in replication within {timeout:?}\n{}",
                self.servers[old].port(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Every sentinel's log (last 2 KiB each).
    pub fn logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel :{} ---\n{}", s.port, tail(&s.log(), 2048)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first word of `ROLE` (`master`, `slave`), if the server answers.
pub fn role(s: &RedisServer) -> Option<String> {
    match s.try_cmd(&["ROLE"]).ok()? {
        resp::Value::Array(Some(items)) => items.first().map(resp::Value::text),
        _ => None,
    }
}

/// Whether `s` is a replica of the server on `port` with its link up.
fn follows(s: &RedisServer, port: u16) -> bool {
    // An error reply (`LOADING` while it reads its append-only file) is "not yet".
    match s.try_cmd(&["INFO", "replication"]) {
        Ok(v @ resp::Value::Bulk(Some(_))) => {
            let info = v.text();
            info.contains(&format!("master_port:{port}")) && info.contains("master_link_status:up")
        }
        _ => false,
    }
}
