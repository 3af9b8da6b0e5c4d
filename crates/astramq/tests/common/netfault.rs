//! Real network faults for the partition suite (`tests/partition.rs`): iptables rules
//! on loopback that the test adds and removes, and a UDP relay that delays (and, with
//! an iptables `statistic` rule, loses) gossip datagrams.
//!
//! Only loopback traffic is touched, and only the test's own ports: every rule names a
//! destination or source port (and loopback address) of a process the test started,
//! carries the comment `astramq-test-<pid>`, and is deleted when its [`Firewall`] is
//! dropped (also on a panic). Rules left by a test process that was killed are swept
//! away by the next [`Firewall::new`].
//!
//! Why not `tc netem`: the kernels this suite runs on (a 2-core Debian VM, CI the same)
//! ship without the `sch_netem` qdisc (`tc qdisc add dev lo root netem` answers
//! "Specified qdisc kind is unknown"), so delay comes from [`UdpDelay`], a relay the
//! nodes' gossip is advertised through, and loss from iptables' `statistic` match.
//!
//! Only `tests/partition.rs` includes this file (`#[path]`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The comment every rule of this process carries.
fn tag() -> String {
    format!("astramq-test-{}", std::process::id())
}

/// The iptables command: from `PATH`, or Debian's `/usr/sbin/iptables` when `PATH`
/// lacks `/usr/sbin`.
fn iptables_cmd() -> Command {
    let sbin = std::path::Path::new("/usr/sbin/iptables");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("iptables").exists()));
    Command::new(if on_path || !sbin.exists() {
        "iptables".as_ref()
    } else {
        sbin
    })
}

/// Runs `iptables -w` with `args`; panics with its output on failure.
fn iptables(args: &[String]) {
    let out = iptables_cmd()
        .arg("-w")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run iptables (the partition suite needs it; .ci/run installs it): {e}")
        });
    assert!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// iptables rules on loopback, removed on drop.
pub struct Firewall {
    /// Each rule as `(chain, match arguments)`, in the order added.
    rules: Vec<(String, Vec<String>)>,
}

impl Firewall {
    /// No rules yet. Sweeps away rules an earlier, killed test process left behind.
    pub fn new() -> Firewall {
        sweep_stale();
        Firewall { rules: Vec::new() }
    }

    /// Adds a DROP rule in `chain` (`INPUT` drops on arrival: the sender's write
    /// succeeds and the packet silently vanishes, as on a cut link) for packets
    /// matching `matches` (iptables match arguments, e.g. `-p udp --dport 7946`).
    pub fn drop(&mut self, chain: &str, matches: &[String]) {
        assert!(
            matches.iter().any(|m| m == "--dport" || m == "--sport"),
            "a rule must name one of the test's ports: {matches:?}"
        );
        let mut args = vec![
            "-I".to_string(),
            chain.to_string(),
            "-i".into(),
            "lo".into(),
        ];
        args.extend(matches.iter().cloned());
        args.extend(["-m".into(), "comment".into(), "--comment".into(), tag()]);
        args.extend(["-j".into(), "DROP".into()]);
        iptables(&args);
        self.rules.push((chain.to_string(), args[2..].to_vec()));
    }

    /// Drops UDP datagrams to and from `port` (a node's gossip socket): it neither
    /// hears nor is heard.
    pub fn cut_udp_port(&mut self, port: u16) {
        self.drop("INPUT", &udp(&["--dport", &port.to_string()]));
        self.drop("INPUT", &udp(&["--sport", &port.to_string()]));
    }

    /// Drops UDP datagrams from port `from` to port `to` only (one direction).
    pub fn cut_udp_one_way(&mut self, from: u16, to: u16) {
        self.drop(
            "INPUT",
            &udp(&["--sport", &from.to_string(), "--dport", &to.to_string()]),
        );
    }

    /// Drops the given fraction of the UDP datagrams arriving at `port`.
    pub fn lose_udp(&mut self, port: u16, probability: f64) {
        let mut m = udp(&["--dport", &port.to_string()]);
        m.extend(
            ["-m", "statistic", "--mode", "random", "--probability"]
                .iter()
                .map(|s| s.to_string()),
        );
        m.push(format!("{probability}"));
        self.drop("INPUT", &m);
    }

    /// Drops TCP traffic both ways between anything and `addr` (a loopback address
    /// and port that only one process uses, such as a node's own address of Redis).
    pub fn cut_tcp(&mut self, addr: SocketAddr) {
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        self.drop("INPUT", &tcp(&["-d", &ip, "--dport", &port]));
        self.drop("INPUT", &tcp(&["-s", &ip, "--sport", &port]));
    }

    /// Removes every rule added so far (the partition heals).
    pub fn heal(&mut self) {
        for (chain, args) in self.rules.drain(..).rev() {
            let mut del = vec!["-D".to_string(), chain];
            del.extend(args);
            iptables(&del);
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for (chain, args) in self.rules.drain(..).rev() {
            let mut del = vec!["-w".to_string(), "-D".to_string(), chain];
            del.extend(args);
            // Never panic in drop: a failure here is reported, the sweep retries.
            match iptables_cmd().args(&del).output() {
                Ok(o) if o.status.success() => {}
                other => eprintln!("could not remove iptables rule {del:?}: {other:?}"),
            }
        }
    }
}

fn udp(rest: &[&str]) -> Vec<String> {
    ["-p", "udp"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

fn tcp(rest: &[&str]) -> Vec<String> {
    ["-p", "tcp"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// Deletes rules tagged by test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pid) = line
            .split("astramq-test-")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // `-A INPUT ...` → `-D INPUT ...`
        let Some(spec) = line.strip_prefix("-A ") else {
            continue;
        };
        let mut args = vec!["-w".to_string(), "-D".to_string()];
        args.extend(
            spec.split_whitespace()
                .map(|s| s.trim_matches('"').to_string()),
        );
        let _ = iptables_cmd().args(&args).output();
    }
}

/// A UDP relay in front of one gossip socket: what arrives at [`UdpDelay::addr`] is
/// sent on to the target after the current delay (0 at first). Nodes advertise the
/// relay's address (`--gossip-advertise`), so every datagram to that node passes here.
/// Gossip does not use a datagram's source address (members are named inside the
/// messages), so the relay's own address as the source is harmless.
pub struct UdpDelay {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpDelay {
    /// A relay on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> UdpDelay {
        let socket = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind relay"),
        );
        let addr = socket.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let relayed = Arc::new(AtomicU64::new(0));
        let count = relayed.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, _)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let datagram = buf[..n].to_vec();
                count.fetch_add(1, Ordering::Relaxed);
                let d = delay.load(Ordering::Relaxed);
                if d == 0 {
                    let _ = socket.send_to(&datagram, target).await;
                    continue;
                }
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(d)).await;
                    let _ = socket.send_to(&datagram, target).await;
                });
            }
        });
        UdpDelay {
            addr,
            delay_ms,
            relayed,
            task,
        }
    }

    /// The address to advertise.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Sets the delay every datagram gets from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for UdpDelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
