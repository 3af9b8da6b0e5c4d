//! The astramq nodes of a test cluster: [`ClusterBuilder`] and [`TestCluster`] (start,
//! kill, stop, restart, pause, and the waits: formed, routes visible, feed synced).

use super::*;

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
            Backend::Sentinel(crate::common::sentinel::RedisSentinel::start_tls(
                replicas,
                tls.clone(),
            ))
        } else if let Some(replicas) = self.sentinel {
            Backend::Sentinel(crate::common::sentinel::RedisSentinel::start(replicas))
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
    pub fn redis_sentinel(&mut self) -> &mut crate::common::sentinel::RedisSentinel {
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
                .is_ok_and(|p| matches!(p, crate::common::Packet::Publish(_)))
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
