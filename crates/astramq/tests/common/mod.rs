//! Test harness for AstraMQ's end-to-end suite.
//!
//! Every test starts its own broker process on a free loopback port, so the
//! suite runs in parallel. The map:
//!
//! - [`Broker`]: spawns the real `astramq` binary (or, with
//!   `ASTRAMQ_TEST_BROKER=mosquitto`, Debian's mosquitto as a reference), waits
//!   for its `listening on` line, kills it on drop, keeps its stderr for
//!   failure messages.
//! - [`raw`]: a small independent MQTT 3.1/3.1.1/5.0 encoder/decoder and
//!   [`RawClient`], for exact reason codes, properties and malformed input.
//! - [`V4Client`] / [`V5Client`]: rumqttc clients whose event loop runs in a
//!   task forwarding events to a channel.
//! - [`mosquitto_pub`] / [`mosquitto_sub`]: the Debian command-line clients.
//! - [`wait_for`]: poll a condition with a timeout instead of sleeping.
//! - [`versions_test!`]: run one `async fn(Version)` as a 3.1.1 and a 5.0 test.
//! - [`certs`]: a test CA and certificates (rcgen), written to files.
//! - [`wsclients`]: paho-mqtt and MQTT.js over WebSocket.
//! - [`cluster`]: `redis-server` processes and clusters of `astramq` nodes
//!   (used by `tests/cluster.rs`).

// Each test file compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod raw;
pub mod resp;
pub mod sentinel;
pub mod wsclients;

pub use raw::*;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Default timeout for things that should happen "now" (a reply to a packet).
pub const T: Duration = Duration::from_secs(5);
/// How long tests wait to prove something does *not* happen.
pub const ABSENCE: Duration = Duration::from_millis(500);

/// Run `async fn $name(v: Version)` once per protocol version as
/// `$name::v311` and `$name::v5`.
#[macro_export]
macro_rules! versions_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn v311() {
                super::$name($crate::common::Version::V311).await
            }
            #[tokio::test]
            async fn v5() {
                super::$name($crate::common::Version::V5).await
            }
        }
    };
}

/// True when the suite runs against Debian's mosquitto instead of astramq.
pub fn reference_mode() -> bool {
    std::env::var("ASTRAMQ_TEST_BROKER").is_ok_and(|v| v == "mosquitto")
}

/// Poll `cond` every 20 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of the astramq binary under test.
pub fn astramq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_astramq"))
}

/// A Debian tool that some tests need; missing means a broken test
/// environment, which must fail loudly rather than skip.
pub fn required_tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is required by this test but is missing: install it with \
         `apt-get install mosquitto mosquitto-clients`"
    );
    p
}

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
    child: Child,
    addrs: Vec<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
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
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        let addr = a
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
                        broker.addrs.push(addr);
                    }
                }
                Err(_) => {
                    let status = broker.child.try_wait().ok().flatten();
                    panic!(
                        "astramq did not print `listening on 127.0.0.1:PORT` within 10 s \
                         (exit status: {status:?})\n--- stderr ---\n{}",
                        broker.stderr()
                    );
                }
            }
        }
        // With `--health-listen`, `health on ADDR` follows the listeners.
        if b.args.iter().any(|a| a == "--health-listen") {
            while broker.health.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        if let Some(a) = line.strip_prefix("health on ") {
                            let addr = a
                                .trim()
                                .parse()
                                .unwrap_or_else(|e| panic!("bad health line {line:?}: {e}"));
                            broker.health = Some(addr);
                        }
                    }
                    Err(_) => {
                        let status = broker.child.try_wait().ok().flatten();
                        panic!(
                            "astramq did not print `health on ADDR` within 10 s \
                             (exit status: {status:?})\n--- stderr ---\n{}",
                            broker.stderr()
                        );
                    }
                }
            }
        }
        // A clustered node prints `gossip on ADDR` once it has joined.
        if b.args.iter().any(|a| a == "--redis") {
            while broker.gossip.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        if let Some(a) = line.strip_prefix("gossip on ") {
                            let addr = a
                                .trim()
                                .parse()
                                .unwrap_or_else(|e| panic!("bad gossip line {line:?}: {e}"));
                            broker.gossip = Some(addr);
                        }
                    }
                    Err(_) => {
                        let status = broker.child.try_wait().ok().flatten();
                        panic!(
                            "astramq did not print `gossip on ADDR` within 10 s \
                             (exit status: {status:?})\n--- stderr ---\n{}",
                            broker.stderr()
                        );
                    }
                }
            }
        }
        broker
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

pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn toml_plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn capture(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b2 = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// A running `astramq lb` (`--listen 127.0.0.1:0 --log-level debug` and the given
/// arguments); killed when dropped, its log printed if the test failed.
pub struct Lb {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Lb {
    /// Starts it and waits for its `listening on ADDR` line.
    pub fn start(args: &[&str]) -> Lb {
        Self::start_exact(&[&["--listen", "127.0.0.1:0", "--log-level", "debug"], args].concat())
    }

    /// `astramq lb ARGS` with nothing added (the caller gives `--listen`; info logs),
    /// waiting for its `listening on ADDR` line.
    pub fn start_exact(args: &[&str]) -> Lb {
        let mut cmd = Command::new(astramq_bin());
        cmd.arg("lb")
            .args(args)
            .env_remove("ASTRAMQ_CLUSTER_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn astramq lb");
        let stderr = capture(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "astramq lb printed no `listening on` line\n--- stderr ---\n{}",
                    stderr.lock().unwrap()
                )
            });
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from astramq lb: {line:?}"));
        Lb {
            child,
            addr,
            stderr,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// How many times it started routing to broker `id` (one per run of that node).
    pub fn ups(&self, id: &str) -> usize {
        let token = format!("node={id}");
        self.stderr()
            .lines()
            .filter(|l| l.contains("broker up") && l.split_whitespace().any(|w| w == token))
            .count()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- lb stderr (last 4 KiB) ---\n{}",
                tail(&self.stderr(), 4096)
            );
        }
    }
}

/// The value of sample `name` (labels included) in `GET /metrics` of the health
/// endpoint at `health`; panics if it is missing.
pub async fn metric_at(health: SocketAddr, name: &str) -> u64 {
    let (code, body) = http_get(health, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A plain HTTP/1.1 `GET path` (one request, `Connection: close`): the status code
/// and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(T, exchange)
        .await
        .map_err(|_| std::io::Error::other("no HTTP response within 5 s"))??;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {raw:?}")))?;
    Ok((code, body.to_string()))
}

/// A port that was free a moment ago (only for the mosquitto reference mode,
/// which cannot report the port it bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run the astramq binary to completion (for CLI/config tests).
pub async fn run_astramq(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(astramq_bin());
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("ASTRAMQ_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, timeout).await
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

async fn run_cmd(mut cmd: tokio::process::Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{desc} did not exit within {timeout:?}"))
        .unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...`, run to completion.
pub async fn mosquitto_pub(broker: &Broker, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(10)).await
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT ARGS...`, run to completion; pass
/// `-C count` and `-W secs` so it ends on its own.
pub async fn mosquitto_sub(broker: &Broker, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(15)).await
}

/// `mosquitto_pub -h HOST -p PORT ARGS...` against any listener (TLS ones need
/// `-h localhost`, the name in the test certificates), run to completion.
pub async fn mosquitto_pub_at(host: &str, addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_pub"));
    cmd.args(["-h", host, "-p", &addr.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(10)).await
}

/// `mosquitto_sub -h HOST -p PORT ARGS...` against any listener, run to
/// completion; pass `-C count` and `-W secs` so it ends on its own.
pub async fn mosquitto_sub_at(host: &str, addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"));
    cmd.args(["-h", host, "-p", &addr.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(15)).await
}

/// Runs any command to completion within `timeout`, capturing its output.
pub async fn run_command(cmd: tokio::process::Command, timeout: Duration) -> Output {
    run_cmd(cmd, timeout).await
}

/// `mosquitto_sub` running in the background; its stdout lines arrive on a
/// channel so a test can wait for "subscribed and receiving".
pub struct BgSub {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl BgSub {
    pub fn spawn(broker: &Broker, args: &[&str]) -> BgSub {
        Self::spawn_at("127.0.0.1", broker.addr(), args)
    }

    /// Like [`BgSub::spawn`], on any listener (`-h HOST -p PORT`).
    pub fn spawn_at(host: &str, addr: SocketAddr, args: &[&str]) -> BgSub {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"))
            .args(["-h", host, "-p", &addr.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        BgSub { child, lines }
    }

    /// Publish `payload` on `topic` every 50 ms (QoS 0, 3.1.1) until
    /// mosquitto_sub prints a line; returns that line. This is how a test
    /// knows the subscription is in place (mosquitto_sub has no ready signal).
    pub async fn probe(&mut self, broker: &Broker, topic: &str, payload: &[u8]) -> String {
        let mut p = broker.client(Version::V311, "bgsub-probe").await;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            p.publish(topic, payload, 0, false).await;
            match tokio::time::timeout(Duration::from_millis(50), self.lines.recv()).await {
                Ok(Some(l)) => return l,
                Ok(None) => panic!("mosquitto_sub exited before receiving anything"),
                Err(_) if tokio::time::Instant::now() > deadline => {
                    panic!("mosquitto_sub received nothing within {T:?}")
                }
                Err(_) => {}
            }
        }
    }

    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn kill(&mut self) {
        self.child.start_kill().expect("kill mosquitto_sub");
    }

    /// Whether mosquitto_sub is still running (its connection is up, as it
    /// exits when the connection drops).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("mosquitto_sub did not exit in time")
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// rumqttc clients
// ---------------------------------------------------------------------------

/// rumqttc MQTT 3.1.1 client with its event loop in a task.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    pub connack: rumqttc::ConnAck,
}

impl V4Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V4Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::MqttOptions) -> V4Client {
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(T, events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))))) => break c,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("v4 connect failed: {e}"),
                Ok(None) => panic!("v4 event loop ended before CONNACK"),
                Err(_) => panic!("no CONNACK within {T:?}"),
            }
        };
        V4Client {
            client,
            task,
            events,
            connack,
        }
    }

    /// Next incoming packet matching `f`, within `timeout`.
    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&rumqttc::Packet) -> Option<R>,
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(p)))) => {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Wait `d` and assert no PUBLISH arrived (the one legitimate sleep).
    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error: {e}"),
                Ok(None) => panic!("event loop ended"),
                Err(_) => return,
            }
        }
    }
}

/// rumqttc MQTT 5 client with its event loop in a task.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

pub use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

impl V5Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V5Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::v5::MqttOptions) -> V5Client {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(T, events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(c))))) => break c,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("v5 connect failed: {e}"),
                Ok(None) => panic!("v5 event loop ended before CONNACK"),
                Err(_) => panic!("no CONNACK within {T:?}"),
            }
        };
        V5Client {
            client,
            task,
            events,
            connack,
        }
    }

    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&V5Packet) -> Option<R>,
    ) -> R {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(p)))) => {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            V5Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            V5Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::Publish(p))))) => {
                    panic!("unexpected PUBLISH: {p:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error: {e}"),
                Ok(None) => panic!("event loop ended"),
                Err(_) => return,
            }
        }
    }
}
