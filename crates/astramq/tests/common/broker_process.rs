//! A broker under test as a process: [`BrokerBuilder`] starts the real `astramq`
//! binary (or, in reference mode, Debian's mosquitto), [`Broker`] waits for its
//! listeners, answers for its addresses and logs, and kills it on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Builder for a broker process.
#[derive(Default)]
pub struct BrokerBuilder {
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    listen: bool,
    no_subcommand: bool,
}

impl BrokerBuilder {
    /// TOML written to a temp file and passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    pub fn env(mut self, key: &str, val: &str) -> Self {
        self.env.push((key.into(), val.into()));
        self
    }
    /// Run plain `astramq FLAGS` (no `broker` subcommand).
    pub fn no_subcommand(mut self) -> Self {
        self.no_subcommand = true;
        self
    }
    /// Do not pass `--listen 127.0.0.1:0` (the listener comes from config/env).
    pub fn no_listen_arg(mut self) -> Self {
        self.listen = false;
        self
    }
    pub fn start(self) -> Broker {
        if reference_mode() {
            Broker::start_mosquitto(self)
        } else {
            Broker::start_astramq(self)
        }
    }
}

/// A running broker; killed when dropped.
pub struct Broker {
    // Read by `TestCluster::kill` (common/cluster/nodes.rs).
    pub(super) child: Child,
    addrs: Vec<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    pub(super) exited: Option<ExitStatus>,
    /// The gossip address a clustered node printed (`gossip on ADDR`).
    gossip: Option<SocketAddr>,
    /// The health endpoint's address (`health on ADDR`, with `--health-listen`).
    health: Option<SocketAddr>,
    /// Every line the broker printed on standard output so far.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            listen: true,
            ..Default::default()
        }
    }

    pub fn start() -> Broker {
        Self::builder().start()
    }

    /// Start with a TOML config (empty = none) and extra command-line args.
    pub fn start_with(config_toml: &str, extra_args: &[&str]) -> Broker {
        let mut b = Self::builder().args(extra_args);
        if !config_toml.trim().is_empty() {
            b = b.config(config_toml);
        }
        b.start()
    }

    pub fn start_astramq(b: BrokerBuilder) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(astramq_bin());
        if !b.no_subcommand {
            cmd.arg("broker");
        }
        if b.listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(cfg) = &b.config {
            let path = dir.path().join("astramq.toml");
            std::fs::write(&path, cfg).unwrap();
            cmd.arg("--config").arg(&path);
        }
        cmd.args(&b.args);
        // The suite's own environment must not leak broker settings in.
        for (k, _) in std::env::vars() {
            if k.starts_with("ASTRAMQ_") {
                cmd.env_remove(k);
            }
        }
        if !b.args.iter().any(|a| a == "--log-level")
            && b.env.iter().all(|(k, _)| k != "ASTRAMQ_LOG_LEVEL")
        {
            cmd.env("ASTRAMQ_LOG_LEVEL", "debug");
        }
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn astramq binary");
        let stderr = capture(child.stderr.take().unwrap());

        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push(line.clone());
                // The start-up loops stop listening once they have what they need.
                let _ = tx.send(line);
            }
        });
        let mut broker = Broker {
            child,
            addrs: Vec::new(),
            stderr,
            dir,
            exited: None,
            gossip: None,
            health: None,
            stdout: lines,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let expected = b.listen_count();
        while broker.addrs.len() < expected {
            let addr = broker.printed_addr(&rx, deadline, "listening on ", "127.0.0.1:PORT");
            broker.addrs.push(addr);
        }
        // With `--health-listen`, `health on ADDR` follows the listeners.
        if b.args.iter().any(|a| a == "--health-listen") {
            broker.health = Some(broker.printed_addr(&rx, deadline, "health on ", "ADDR"));
        }
        // A clustered node prints `gossip on ADDR` once it has joined.
        if b.args.iter().any(|a| a == "--redis") {
            broker.gossip = Some(broker.printed_addr(&rx, deadline, "gossip on ", "ADDR"));
        }
        broker
    }

    /// The address on the next line of standard output that starts with `prefix`
    /// (`listening on `, `health on `, `gossip on `), skipping other lines; panics with
    /// the exit status and stderr if none arrived by `deadline` (`shape` names what was
    /// expected after the prefix).
    fn printed_addr(
        &mut self,
        rx: &mpsc::Receiver<String>,
        deadline: Instant,
        prefix: &str,
        shape: &str,
    ) -> SocketAddr {
        let kind = prefix.trim_end().trim_end_matches(" on");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix(prefix) {
                        return a
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad {kind} line {line:?}: {e}"));
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "astramq did not print `{prefix}{shape}` within 10 s \
                         (exit status: {status:?})\n--- stderr ---\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    fn start_mosquitto(b: BrokerBuilder) -> Broker {
        let bin = required_tool("/usr/sbin/mosquitto");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type all\n\
             set_tcp_nodelay true\nuser root\n"
        );
        let mut allow_anon = "true".to_string();
        let mut set = |key: &str, val: String, conf: &mut String| match key {
            "allow_anonymous" => allow_anon = val,
            "password_file" => conf.push_str(&format!("password_file {val}\n")),
            "acl_file" => conf.push_str(&format!("acl_file {val}\n")),
            "max_packet_size" => conf.push_str(&format!("max_packet_size {val}\n")),
            "receive_maximum" => conf.push_str(&format!("max_inflight_messages {val}\n")),
            "max_inflight" => conf.push_str(&format!("max_inflight_messages {val}\n")),
            "topic_alias_maximum" => conf.push_str(&format!("max_topic_alias {val}\n")),
            "max_queued_messages" => conf.push_str(&format!("max_queued_messages {val}\n")),
            "max_queued_bytes" => conf.push_str(&format!("max_queued_bytes {val}\n")),
            "server_keep_alive_secs" => conf.push_str(&format!("max_keepalive {val}\n")),
            "max_keep_alive_secs" => conf.push_str(&format!("max_keepalive {val}\n")),
            _ => {} // no mosquitto equivalent
        };
        if let Some(cfg) = &b.config {
            let table: toml::Table = cfg.parse().expect("test config is valid TOML");
            for (k, v) in &table {
                match v {
                    toml::Value::Table(sub) => {
                        for (k2, v2) in sub {
                            set(k2, toml_plain(v2), &mut conf);
                        }
                    }
                    other => set(k, toml_plain(other), &mut conf),
                }
            }
        }
        let mut args = b.args.iter();
        while let Some(a) = args.next() {
            let key = a.trim_start_matches("--").replace('-', "_");
            if let Some(v) = args.next() {
                set(&key, v.clone(), &mut conf);
            }
        }
        conf.push_str(&format!("allow_anonymous {allow_anon}\n"));
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, &conf).unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto");
        let stderr = capture(child.stderr.take().unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                panic!(
                    "mosquitto did not start\n{conf}\n--- stderr ---\n{}",
                    stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Broker {
            child,
            addrs: vec![addr],
            stderr,
            dir,
            exited: None,
            gossip: None,
            health: None,
            stdout: Arc::default(),
        }
    }

    /// The address of the listener printed as `listening on ADDR (KIND)` (`tls`,
    /// `ws`, `wss`, `tls, proxy`…), waiting up to 10 s for the line.
    pub fn listener(&self, kind: &str) -> SocketAddr {
        let suffix = format!(" ({kind})");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.stdout.lock().unwrap().iter().find_map(|l| {
                l.strip_prefix("listening on ")?
                    .strip_suffix(&suffix)?
                    .parse()
                    .ok()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no `listening on ADDR ({kind})` line within 10 s; stdout: {:?}\n--- stderr ---\n{}",
                self.stdout.lock().unwrap(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    pub fn port(&self) -> u16 {
        self.addr().port()
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The gossip address of a clustered node (started with `--redis`).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip
            .expect("not a clustered node: no `gossip on` line was printed")
    }
    /// The health endpoint of a node started with `--health-listen`.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
            .expect("no `health on` line was printed: start the node with --health-listen")
    }

    /// `GET /health` on this node: the status code and the body.
    pub async fn health(&self) -> (u16, String) {
        http_get(self.health_addr(), "/health")
            .await
            .unwrap_or_else(|e| panic!("GET /health on {}: {e}", self.health_addr()))
    }

    /// Scratch directory that lives as long as the broker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Everything the broker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Send a signal (e.g. "TERM", "INT") to the broker process.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Wait for the process to exit; None on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::tcp(self.addr()).await
    }

    /// A raw client connected (clean, keep alive 60) with CONNACK success.
    pub async fn client(&self, v: Version, id: &str) -> RawClient {
        RawClient::connect_ok(self.addr(), Connect::new(v, id)).await
    }
}

impl BrokerBuilder {
    fn listen_count(&self) -> usize {
        let mut n = if self.listen { 1 } else { 0 };
        n += self.args.windows(2).filter(|w| w[0] == "--listen").count();
        if n == 0 {
            // Listener from config file or environment: expect at least one.
            n = 1;
        }
        n
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- broker stderr (last 8 KiB) ---\n{}",
                tail(&self.stderr(), 8192)
            );
        }
    }
}

fn toml_plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
