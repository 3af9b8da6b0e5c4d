//! `astramq cluster` (issue #4, item 6): a development cluster of real processes.
//!
//! Runs `astramq cluster --nodes 3`, reads the endpoints it prints, checks that a
//! message published on node 1 reaches subscribers on node 3 and behind the load
//! balancer, then sends SIGTERM and checks that every process it started
//! (redis-server included) is gone and its ports are closed.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Start-up of redis-server, three debug-build nodes and the balancer.
const START: Duration = Duration::from_secs(60);

/// `n` consecutive TCP ports on 127.0.0.1 that were all free a moment ago.
fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if u32::from(base) + u32::from(n) > 65535 {
            continue;
        }
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found");
}

/// What `astramq cluster` printed.
#[derive(Debug, Default)]
struct Endpoints {
    redis: Option<SocketAddr>,
    nodes: Vec<SocketAddr>,
    lb: Option<SocketAddr>,
    pids: Vec<u32>,
}

impl Endpoints {
    fn parse(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        if let Some(pid) = value("pid").and_then(|p| p.parse().ok()) {
            self.pids.push(pid);
        }
        let addr = |key: &str| value(key).and_then(|a| a.parse::<SocketAddr>().ok());
        match words.first() {
            Some(&"redis") => {
                self.redis = value("redis")
                    .and_then(|url| url.strip_prefix("redis://"))
                    .and_then(|a| a.parse().ok());
            }
            Some(&"node") => self.nodes.extend(addr("mqtt")),
            Some(&"lb") => self.lb = addr("mqtt"),
            _ => {}
        }
    }
}

/// A `mosquitto_sub` that exits after one message (or 30 s).
fn subscribe(addr: SocketAddr, topic: &str) -> tokio::process::Child {
    tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-t", topic, "-v", "-C", "1", "-W", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub starts")
}

fn is_running(pid: u32) -> bool {
    // A zombie is not running; /proc/PID/stat's third field is the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn cluster_of_three_serves_clients_and_stops_everything_on_sigterm() {
    let base = consecutive_free_ports(3);
    let lb_port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cluster = tokio::process::Command::new(astramq_bin())
        .args(["cluster", "--nodes", "3"])
        .args(["--base-port", &base.to_string()])
        .args(["--lb-port", &lb_port.to_string()])
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("astramq cluster starts");
    let logs = || std::fs::read_to_string(log.path()).unwrap_or_default();

    // The endpoint lines, up to "ready".
    let mut lines = BufReader::new(cluster.stdout.take().unwrap()).lines();
    let mut endpoints = Endpoints::default();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + START;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => break,
            Ok(Ok(Some(line))) => endpoints.parse(&line),
            other => panic!(
                "no 'ready' line ({other:?}); printed so far: {endpoints:?}\n{}",
                logs()
            ),
        }
    }
    println!("cluster ready in {:?}: {endpoints:?}", started.elapsed());
    let nodes: Vec<SocketAddr> = (base..base + 3)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    assert_eq!(endpoints.nodes, nodes);
    let redis = endpoints.redis.expect("a redis line");
    let lb = endpoints.lb.expect("an lb line");
    assert_eq!(lb.port(), lb_port);
    assert_eq!(endpoints.pids.len(), 5, "redis, 3 nodes, lb: {endpoints:?}");

    // Subscribers on node 3 and behind the balancer; publish on node 1 until both
    // got a message (routes reach node 1 through Redis within a moment).
    let on_node3 = subscribe(nodes[2], "dev/#");
    let via_lb = subscribe(lb, "dev/#");
    let publisher = async {
        loop {
            let status = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_pub"))
                .args(["-h", "127.0.0.1", "-p", &base.to_string()])
                .args(["-t", "dev/hello", "-m", "from node 1"])
                .kill_on_drop(true)
                .status()
                .await
                .unwrap();
            assert!(status.success(), "mosquitto_pub on node 1 failed");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let received = async {
        let (a, b) = tokio::join!(on_node3.wait_with_output(), via_lb.wait_with_output());
        (a.unwrap(), b.unwrap())
    };
    let (a, b) = tokio::select! {
        r = received => r,
        () = publisher => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(30)) => panic!("no message within 30 s\n{}", logs()),
    };
    for (who, out) in [("node 3", &a), ("load balancer", &b)] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            "dev/hello from node 1",
            "subscriber on {who}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
    }

    // SIGTERM: everything stops, redis-server included.
    let pid = cluster.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), cluster.wait())
        .await
        .expect("astramq cluster exits within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}\n{}", logs());
    for pid in &endpoints.pids {
        assert!(!is_running(*pid), "child {pid} still running\n{}", logs());
    }
    for addr in nodes.iter().chain([&lb, &redis]) {
        assert!(
            TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_err(),
            "{addr} still accepts connections"
        );
    }
}
