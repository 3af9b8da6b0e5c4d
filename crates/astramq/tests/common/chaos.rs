//! The chaos harness for `tests/chaos.rs` (issue #6 item 3): a 3-node cluster behind a
//! gossip-backed `astramq lb`, a load driver that counts every acknowledged message
//! and every receipt, and the table row each scenario reports.
//!
//! Only `tests/chaos.rs` includes this file (`#[path]`), so the other test binaries
//! do not compile it.
//!
//! - [`Chaos`]: a [`TestCluster`] whose nodes also listen for PROXY v2, plus an
//!   `astramq lb` that joins their gossip ([`Lb`]); clients connect through it and are
//!   sent only to live nodes.
//! - [`Load`]: S persistent-session subscribers (at least one whose session lives on
//!   every node) and P publishers with sequence-numbered payloads, each one a task
//!   that reconnects through the balancer whenever its connection ends.
//! - [`Counts`], [`Row`]: lost / duplicates per subscriber, the table row, the JSON
//!   line appended to `chaos.jsonl`.
//!
//! ## Why a hand-written client and not rumqttc
//!
//! The driver's MQTT client is built on the suite's own codec (`common/raw.rs`, which
//! shares no code with the broker) rather than rumqttc 0.24, because rumqttc cannot
//! count exactly across reconnects: `MqttState::clean` (`state.rs`, run on every
//! connection error) forgets the packet ids of inbound QoS 2 messages awaiting
//! PUBREL, so a QoS 2 PUBLISH the broker legitimately resends after a reconnect is
//! handed to the application a second time (a duplicate the broker did not cause),
//! and the broker's PUBREL for it is then an "Unsolicited pubrel" error that drops the
//! connection again, after every reconnect. It also resends unacknowledged PUBLISHes
//! without the DUP flag and maps no acknowledgement back to the message it acknowledges.
//! The client here follows the specification on both ends:
//!
//! - a publisher keeps every unacknowledged QoS 1/2 message with its packet id and,
//!   after a reconnect, resends PUBLISH (DUP = 1) or PUBREL with the original packet id
//!   ([MQTT-4.4.0-1]); a message is *acknowledged* when its PUBACK (QoS 1) or PUBCOMP
//!   (QoS 2) arrives, and a v5 PUBACK/PUBREC with a failure reason (>= 0x80) is counted
//!   as refused, never as acknowledged;
//! - a subscriber hands a QoS 2 message to the application once: a PUBLISH whose packet
//!   id is still awaiting PUBREL is acknowledged again but not delivered again
//!   ([MQTT-4.3.3-9] v5 / [MQTT-4.3.3-2] 3.1.1, "method B"); that state survives a
//!   reconnect with Session Present 1 and is dropped with a session the server lost.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::common::cluster::*;
use crate::common::*;

/// Scenarios run one at a time even when the test harness runs tests in parallel
/// (`cargo test --workspace` does): each one loads the machine, and measures times.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one scenario alone (see [`SERIAL`]), failing it if it takes longer than
/// `limit`.
pub async fn alone_within(limit: Duration, f: impl std::future::Future<Output = ()>) {
    let _alone = SERIAL.lock().await;
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("scenario exceeded {limit:?}"));
}

/// Session expiry of every persistent client in the load (seconds).
pub const EXPIRY: u32 = 300;
/// The keep-alive every load client announces. Clients ping every third of it and
/// drop a connection that stayed silent for a whole keep-alive period.
pub const KEEP_ALIVE: u16 = 6;
/// How long the load runs after the fault is over, so that messages published after
/// recovery are counted too: at least this many more acknowledged messages.
pub const AFTER_RECOVERY: u64 = 200;

// ---------------------------------------------------------------------------
// The load balancer
// ---------------------------------------------------------------------------

/// `astramq lb --join SEED --gossip-listen 127.0.0.1:0`: round robin over the live
/// brokers gossip announces, PROXY v2 toward them.
pub fn start_lb(seed: SocketAddr) -> Lb {
    let seed = seed.to_string();
    Lb::start(&[
        "--join",
        &seed,
        "--gossip-listen",
        "127.0.0.1:0",
        "--node-id",
        "lb",
    ])
}

// ---------------------------------------------------------------------------
// The cluster under test
// ---------------------------------------------------------------------------

/// A fresh cluster of `n` nodes (PROXY v2 listeners for the balancer) and a balancer
/// that routes to every one of them.
pub struct Chaos {
    // Field order is drop order: the balancer first, then the nodes and Redis.
    pub lb: Lb,
    pub cluster: TestCluster,
}

impl Chaos {
    pub async fn start(n: usize) -> Chaos {
        Chaos::start_with(TestCluster::builder(n)).await
    }

    /// [`Chaos::start`] on a cluster built by `builder` (PROXY listeners added).
    pub async fn start_with(builder: ClusterBuilder) -> Chaos {
        let cluster = builder
            .args(&["--proxy-listen", "127.0.0.1:0"])
            .start()
            .await;
        let n = cluster.len();
        let lb = start_lb(cluster.node(0).gossip_addr());
        let ch = Chaos { lb, cluster };
        for i in 0..n {
            ch.wait_lb_routes_to(i, 1).await;
        }
        ch
    }

    /// Waits until the balancer has started routing to node `i` at least `runs` times
    /// (a restarted node is a new run).
    pub async fn wait_lb_routes_to(&self, i: usize, runs: usize) {
        let id = self.cluster.id(i).to_string();
        wait_for(
            STARTUP,
            &format!("the balancer to route to {id} (run {runs})"),
            || self.lb.ups(&id) >= runs,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Time of failure detection, from the nodes' logs
// ---------------------------------------------------------------------------

/// `2026-11-25T06:40:01.123456Z` (tracing's default timestamp) as a SystemTime.
pub fn parse_log_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let whole = days * 86400 + hh * 3600 + mm * 60;
    let t = Duration::from_secs(whole as u64) + Duration::from_secs_f64(secs);
    Some(SystemTime::UNIX_EPOCH + t)
}

/// Milliseconds from `at` to the first line, on any node still running, saying that
/// node `failed` was declared failed (`node failed; … node=nX`).
/// Milliseconds from `at` to the first line containing `needle` in any running node's
/// log, if there is one.
pub fn first_log_ms(c: &TestCluster, needle: &str, at: SystemTime) -> Option<u64> {
    (0..c.len())
        .filter(|&i| c.is_running(i))
        .flat_map(|i| {
            c.node(i)
                .stderr()
                .lines()
                .filter(|l| l.contains(needle))
                .filter_map(|l| parse_log_time(l.split_whitespace().next()?))
                .collect::<Vec<_>>()
        })
        .filter_map(|t| t.duration_since(at).ok())
        .min()
        .map(|d| d.as_millis() as u64)
}

pub fn detect_ms(c: &TestCluster, failed: usize, at: SystemTime) -> Option<u64> {
    let token = format!("node={}", c.id(failed));
    (0..c.len())
        .filter(|&i| i != failed && c.is_running(i))
        .flat_map(|i| {
            c.node(i)
                .stderr()
                .lines()
                .filter(|l| l.contains("node failed") && l.split_whitespace().any(|w| w == token))
                .filter_map(|l| parse_log_time(l.split_whitespace().next()?))
                .collect::<Vec<_>>()
        })
        .filter_map(|t| t.duration_since(at).ok())
        .min()
        .map(|d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------
// A minimal reconnecting MQTT client over the raw codec
// ---------------------------------------------------------------------------

/// One connection: a socket and a buffer of undecoded bytes.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    v: Version,
}

enum ConnError {
    Closed,
    Decode(String),
}

impl Conn {
    /// TCP connect, CONNECT, CONNACK (any code), all within `T`.
    async fn open(addr: SocketAddr, c: &Connect) -> Option<(Conn, Connack)> {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            v: c.version,
        };
        conn.send(&c.encode()).await.ok()?;
        match tokio::time::timeout(T, conn.read()).await {
            Ok(Ok(Packet::Connack(ca))) => Some((conn, ca)),
            _ => None,
        }
    }

    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await
    }

    /// The next packet; cancel-safe (bytes already read stay in `buf`).
    async fn read(&mut self) -> Result<Packet, ConnError> {
        loop {
            if let Some((first, hdr, len)) = frame_header(&self.buf) {
                if self.buf.len() >= hdr + len {
                    let body = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return decode(self.v, first, &body).map_err(|e| ConnError::Decode(e.0));
                }
            }
            self.buf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ConnError::Closed),
                Ok(_) => {}
            }
        }
    }
}

/// What a load client does.
#[derive(Clone, Debug)]
enum Role {
    /// Subscribes (persistent session) to `filter` at `qos`.
    Sub { index: usize, filter: String },
    /// Publishes `index:seq` to `topic` every `period`.
    Pub {
        index: usize,
        topic: String,
        period: Duration,
    },
}

/// Commands to every load client.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ctl {
    Run,
    /// Publishers take no new sequence numbers; unacknowledged ones are still resent.
    StopPublishing,
    /// Every client closes its connection and ends.
    Stop,
}

/// One connection (re-)establishment as a client saw it.
#[derive(Clone, Debug)]
pub struct ConnEvent {
    pub at: Instant,
    pub session_present: bool,
    /// When the first PUBLISH arrived on this connection (subscribers only).
    pub first_publish: Option<Instant>,
    /// When the connection ended (None: still open).
    pub ended: Option<Instant>,
}

/// One delivery of a message: (connection number from 1, packet id, DUP flag).
pub type Delivery = (usize, u16, bool);

#[derive(Default, Debug)]
pub struct SubStats {
    pub id: String,
    /// (publisher, seq) → times handed to the application.
    pub received: HashMap<(usize, u64), u32>,
    /// Every delivery of each message: (connection number, packet id, DUP flag), for
    /// explaining duplicates.
    pub deliveries: HashMap<(usize, u64), Vec<Delivery>>,
    pub connects: Vec<ConnEvent>,
    /// Reconnects answered with Session Present 0: the server lost the session.
    pub sessions_lost: u32,
    /// DISCONNECT reason codes the server sent.
    pub disconnects: Vec<u8>,
    /// SUBACK received on the first connection.
    pub ready: bool,
}

#[derive(Default, Debug)]
pub struct PubStats {
    pub id: String,
    /// Sequence numbers acknowledged (PUBACK / PUBCOMP).
    pub acked: BTreeSet<u64>,
    /// When each acknowledgement arrived.
    pub acked_at: HashMap<u64, Instant>,
    /// Sequence numbers taken (sent at least once).
    pub sent: u64,
    /// v5 PUBACK/PUBREC with a failure reason: released, not acknowledged.
    pub refused: u64,
    /// Unacknowledged right now.
    pub outstanding: usize,
    pub connects: Vec<ConnEvent>,
    pub sessions_lost: u32,
    pub disconnects: Vec<u8>,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub subs: Vec<SubStats>,
    pub pubs: Vec<PubStats>,
    /// The subscribers are the members of one shared subscription group: each
    /// acknowledged message is promised to the group (one member), not to each.
    pub shared: bool,
}

/// The counts a scenario reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Messages acknowledged to their publisher.
    pub acknowledged: u64,
    /// acknowledged × subscribers: the deliveries invariant 1 promises.
    pub expected: u64,
    /// Distinct acknowledged messages received, summed over subscribers.
    pub received: u64,
    /// expected − received.
    pub lost: u64,
    /// Receipts beyond the first of a message by one subscriber.
    pub duplicates: u64,
    /// Reconnects answered with Session Present 0 (subscribers and publishers).
    pub sessions_lost: u64,
    /// Messages published but never acknowledged (not counted as lost).
    pub unacknowledged: u64,
    /// v5 refusals (reason >= 0x80).
    pub refused: u64,
}

impl Stats {
    fn counts(&self) -> Counts {
        let acknowledged: u64 = self.pubs.iter().map(|p| p.acked.len() as u64).sum();
        let mut c = Counts {
            acknowledged,
            expected: acknowledged * self.subs.len() as u64,
            refused: self.pubs.iter().map(|p| p.refused).sum(),
            unacknowledged: self
                .pubs
                .iter()
                .map(|p| p.sent - p.acked.len() as u64 - p.refused)
                .sum(),
            sessions_lost: self
                .subs
                .iter()
                .map(|s| s.sessions_lost as u64)
                .chain(self.pubs.iter().map(|p| p.sessions_lost as u64))
                .sum(),
            ..Counts::default()
        };
        if self.shared {
            // One group: a message is received once some member has it, and every
            // receipt beyond the first, by any member, is a duplicate.
            c.expected = acknowledged;
            for (p, ps) in self.pubs.iter().enumerate() {
                c.received += ps
                    .acked
                    .iter()
                    .filter(|&&q| self.group_receipts(p, q) > 0)
                    .count() as u64;
            }
            let mut receipts: HashMap<(usize, u64), u64> = HashMap::new();
            for s in &self.subs {
                for (&m, &n) in &s.received {
                    *receipts.entry(m).or_insert(0) += u64::from(n);
                }
            }
            c.duplicates = receipts.values().map(|n| n - 1).sum();
        } else {
            for s in &self.subs {
                for (p, ps) in self.pubs.iter().enumerate() {
                    c.received += ps
                        .acked
                        .iter()
                        .filter(|&&q| s.received.contains_key(&(p, q)))
                        .count() as u64;
                }
                c.duplicates += s.received.values().map(|&n| u64::from(n - 1)).sum::<u64>();
            }
        }
        c.lost = c.expected - c.received;
        c
    }

    /// How many times the shared group's members together received message `q` of
    /// publisher `p`.
    fn group_receipts(&self, p: usize, q: u64) -> u32 {
        self.subs
            .iter()
            .filter_map(|s| s.received.get(&(p, q)))
            .sum()
    }

    /// Per subscriber, the acknowledged messages it never received and the messages it
    /// received more than once (first few of each), with its connections' Session
    /// Present flags.
    fn details(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.shared {
            return self.group_details();
        }
        for p in &self.pubs {
            if p.sessions_lost > 0 {
                out.push(format!(
                    "{}: publisher session lost (Session Present per connection: {:?})",
                    p.id,
                    p.connects
                        .iter()
                        .map(|c| c.session_present)
                        .collect::<Vec<_>>()
                ));
            }
        }
        for s in &self.subs {
            let mut dups: Vec<(&(usize, u64), &u32)> =
                s.received.iter().filter(|(_, &n)| n > 1).collect();
            if !dups.is_empty() {
                dups.sort();
                let n = dups.len();
                let first: Vec<String> = dups
                    .iter()
                    .take(8)
                    .map(|((p, q), k)| {
                        let how: Vec<String> = s.deliveries[&(*p, *q)]
                            .iter()
                            .map(|(c, pid, dup)| {
                                format!("conn {c} pid {pid} dup {}", u8::from(*dup))
                            })
                            .collect();
                        format!("{p}:{q}×{k} [{}]", how.join(", "))
                    })
                    .collect();
                out.push(format!(
                    "{}: {n} received more than once (first: {})",
                    s.id,
                    first.join(" ")
                ));
            }
            // Periods the subscriber was between connections: (ended, next CONNACK).
            let gaps: Vec<(Instant, Instant)> = s
                .connects
                .windows(2)
                .filter_map(|w| Some((w[0].ended?, w[1].at)))
                .collect();
            let mut miss = Vec::new();
            let mut in_gap = 0;
            for (p, ps) in self.pubs.iter().enumerate() {
                for &q in &ps.acked {
                    if !s.received.contains_key(&(p, q)) {
                        let t = ps.acked_at[&q];
                        miss.push(format!("{p}:{q} (acked {})", place(&s.connects, t)));
                        in_gap += usize::from(gaps.iter().any(|&(a, b)| a <= t && t <= b));
                    }
                }
            }
            if !miss.is_empty() {
                let n = miss.len();
                miss.truncate(6);
                out.push(format!(
                    "{}: {n} missing, {in_gap} of them acknowledged while it was between \
                     connections (first: {}; Session Present per connection: {:?})",
                    s.id,
                    miss.join(" "),
                    s.connects
                        .iter()
                        .map(|c| c.session_present)
                        .collect::<Vec<_>>()
                ));
            }
        }
        out
    }

    /// [`Stats::details`] for a shared group: the acknowledged messages no member
    /// received, and those members received more than once in all, with where each
    /// copy went.
    fn group_details(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let mut dups = Vec::new();
        for (p, ps) in self.pubs.iter().enumerate() {
            for &q in &ps.acked {
                match self.group_receipts(p, q) {
                    0 => missing.push(format!("{p}:{q}")),
                    1 => {}
                    n => {
                        let how: Vec<String> = self
                            .subs
                            .iter()
                            .filter_map(|s| {
                                let d = s.deliveries.get(&(p, q))?;
                                Some(format!("{} {d:?}", s.id))
                            })
                            .collect();
                        dups.push(format!("{p}:{q}×{n} [{}]", how.join(", ")));
                    }
                }
            }
        }
        if !missing.is_empty() {
            let n = missing.len();
            missing.truncate(12);
            out.push(format!(
                "group: {n} acknowledged messages reached no member (first: {})",
                missing.join(" ")
            ));
        }
        if !dups.is_empty() {
            let n = dups.len();
            dups.truncate(8);
            out.push(format!(
                "group: {n} received more than once (first: {})",
                dups.join(" ")
            ));
        }
        out
    }

    fn all_received(&self) -> bool {
        if self.shared {
            return self
                .pubs
                .iter()
                .enumerate()
                .all(|(p, ps)| ps.acked.iter().all(|&q| self.group_receipts(p, q) > 0));
        }
        self.subs.iter().all(|s| {
            self.pubs
                .iter()
                .enumerate()
                .all(|(p, ps)| ps.acked.iter().all(|&q| s.received.contains_key(&(p, q))))
        })
    }
}

/// Where `t` falls in a client's connection history, for explaining a loss.
fn place(connects: &[ConnEvent], t: Instant) -> String {
    let ms = |d: Duration| d.as_millis();
    match connects.iter().rposition(|c| c.at <= t) {
        None => "before its first CONNACK".to_string(),
        Some(k) => match connects[k].ended {
            Some(e) if e <= t => format!("{} ms after its connection {} ended", ms(t - e), k + 1),
            _ => format!(
                "{} ms into its connection {}",
                ms(t - connects[k].at),
                k + 1
            ),
        },
    }
}

/// The shared side of the load: statistics plus a wake-up for waiters.
struct Shared {
    stats: Mutex<Stats>,
    changed: Notify,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        let r = f(&mut self.stats.lock().unwrap());
        self.changed.notify_waiters();
        r
    }
}

/// An unacknowledged outgoing message.
#[derive(Clone, Debug)]
enum Outgoing {
    /// PUBLISH sent, PUBACK / PUBREC awaited.
    Publish(u64),
    /// PUBREC received, PUBREL sent, PUBCOMP awaited (QoS 2).
    Release(u64),
}

struct Client {
    id: String,
    v: Version,
    qos: u8,
    role: Role,
    addr: SocketAddr,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Ctl>,
    // Publisher state, kept across connections.
    next_seq: u64,
    next_pid: u16,
    outgoing: BTreeMap<u16, Outgoing>,
    // Subscriber state: inbound QoS 2 packet ids awaiting PUBREL.
    awaiting_rel: HashSet<u16>,
    connected_before: bool,
}

/// At most this many unacknowledged messages per publisher (a tick with a full window
/// takes no sequence number).
const WINDOW: usize = 32;

impl Client {
    async fn run(mut self) {
        loop {
            if *self.ctl.borrow() == Ctl::Stop {
                return;
            }
            let connect =
                Connect::persistent(self.v, &self.id, false, EXPIRY).keep_alive(KEEP_ALIVE);
            let Some((mut conn, ack)) = Conn::open(self.addr, &connect).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if ack.code != 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if self
                .session_start(&mut conn, ack.session_present)
                .await
                .is_ok()
            {
                self.session(&mut conn).await;
            }
            self.record_end();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn record_end(&self) {
        let role = self.role.clone();
        self.shared.update(|s| {
            let connects = match role {
                Role::Sub { index, .. } => &mut s.subs[index].connects,
                Role::Pub { index, .. } => &mut s.pubs[index].connects,
            };
            if let Some(c) = connects.last_mut() {
                c.ended.get_or_insert_with(Instant::now);
            }
        });
    }

    fn record_connect(&mut self, session_present: bool) {
        let lost = self.connected_before && !session_present;
        let ev = ConnEvent {
            at: Instant::now(),
            session_present,
            first_publish: None,
            ended: None,
        };
        let role = self.role.clone();
        self.shared.update(|s| match role {
            Role::Sub { index, .. } => {
                let st = &mut s.subs[index];
                st.connects.push(ev);
                st.sessions_lost += u32::from(lost);
            }
            Role::Pub { index, .. } => {
                let st = &mut s.pubs[index];
                st.connects.push(ev);
                st.sessions_lost += u32::from(lost);
            }
        });
        self.connected_before = true;
    }

    /// After CONNACK: re-subscribe when the session is new, resend what is
    /// unacknowledged ([MQTT-4.4.0-1]).
    async fn session_start(&mut self, conn: &mut Conn, present: bool) -> std::io::Result<()> {
        self.record_connect(present);
        if !present {
            // The server has no state for us: no inbound QoS 2 flow is pending.
            self.awaiting_rel.clear();
        }
        match &self.role {
            Role::Sub { filter, .. } => {
                if !present {
                    let sub = encode_subscribe(
                        self.v,
                        1,
                        &Props::new(),
                        &[(filter.as_str(), SubOpts::qos(self.qos))],
                    );
                    conn.send(&sub).await?;
                }
            }
            Role::Pub { topic, .. } => {
                let topic = topic.clone();
                let pending: Vec<(u16, Outgoing)> =
                    self.outgoing.iter().map(|(k, o)| (*k, o.clone())).collect();
                for (pid, o) in pending {
                    match o {
                        Outgoing::Publish(seq) => {
                            let mut p = self.publish_packet(&topic, seq, pid);
                            // DUP only where the server may have seen this packet id.
                            p.dup = present;
                            conn.send(&p.encode(self.v)).await?;
                        }
                        Outgoing::Release(_) => {
                            conn.send(&encode_ack(PUBREL, pid, 0, self.v)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn publish_packet(&self, topic: &str, seq: u64, pid: u16) -> Publish {
        let Role::Pub { index, .. } = self.role else {
            unreachable!()
        };
        Publish::new(topic, format!("{index}:{seq}").as_bytes(), self.qos).pid(pid)
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.outgoing.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// One connection's life; returns when it ends.
    async fn session(&mut self, conn: &mut Conn) {
        let period = match &self.role {
            Role::Pub { period, .. } => *period,
            Role::Sub { .. } => Duration::from_secs(3600),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ka = Duration::from_secs(u64::from(KEEP_ALIVE));
        let mut ping = tokio::time::interval(ka / 3);
        ping.tick().await;
        let mut last_in = Instant::now();
        loop {
            let ctl = *self.ctl.borrow();
            if ctl == Ctl::Stop {
                let _ = conn
                    .send(&encode_disconnect(self.v, 0, &Props::new()))
                    .await;
                return;
            }
            tokio::select! {
                p = conn.read() => {
                    last_in = Instant::now();
                    match p {
                        Ok(p) => {
                            if self.incoming(conn, p).await.is_err() {
                                return;
                            }
                        }
                        Err(ConnError::Closed) => return,
                        Err(ConnError::Decode(e)) => {
                            eprintln!("{}: undecodable packet from the server: {e}", self.id);
                            return;
                        }
                    }
                }
                _ = tick.tick(), if ctl == Ctl::Run && matches!(self.role, Role::Pub { .. }) => {
                    if self.outgoing.len() < WINDOW && self.publish_next(conn).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if last_in.elapsed() > ka {
                        // Silent for a whole keep-alive: the server is gone.
                        return;
                    }
                    if conn.send(&encode_pingreq()).await.is_err() {
                        return;
                    }
                }
                _ = self.ctl.changed() => {}
            }
        }
    }

    async fn publish_next(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        let Role::Pub { index, topic, .. } = self.role.clone() else {
            unreachable!()
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let pid = self.alloc_pid();
        self.outgoing.insert(pid, Outgoing::Publish(seq));
        let n = self.outgoing.len();
        self.shared.update(|s| {
            s.pubs[index].sent += 1;
            s.pubs[index].outstanding = n;
        });
        conn.send(&self.publish_packet(&topic, seq, pid).encode(self.v))
            .await
    }

    fn pub_index(&self) -> usize {
        match self.role {
            Role::Pub { index, .. } | Role::Sub { index, .. } => index,
        }
    }

    async fn incoming(&mut self, conn: &mut Conn, p: Packet) -> std::io::Result<()> {
        match p {
            Packet::Publish(m) => {
                let Role::Sub { index, .. } = self.role else {
                    panic!("{}: a publisher received {m:?}", self.id);
                };
                // Handed to the application on arrival ("method B"), before the
                // acknowledgement is written: a message that arrived is counted even if
                // the connection fails before its PUBACK/PUBREC leaves.
                let deliver = match m.qos {
                    // [MQTT-4.3.3-9]/[MQTT-4.3.3-2]: a resend of a packet id still
                    // awaiting PUBREL is acknowledged, not delivered again.
                    2 => self.awaiting_rel.insert(m.pid),
                    _ => true,
                };
                if deliver {
                    let key = parse_payload(&m.payload)
                        .unwrap_or_else(|| panic!("{}: foreign payload {m:?}", self.id));
                    self.shared.update(|s| {
                        let st = &mut s.subs[index];
                        *st.received.entry(key).or_insert(0) += 1;
                        let conn_no = st.connects.len();
                        st.deliveries
                            .entry(key)
                            .or_default()
                            .push((conn_no, m.pid, m.dup));
                        if let Some(c) = st.connects.last_mut() {
                            c.first_publish.get_or_insert_with(Instant::now);
                        }
                    });
                }
                match m.qos {
                    1 => conn.send(&encode_ack(PUBACK, m.pid, 0, self.v)).await?,
                    2 => conn.send(&encode_ack(PUBREC, m.pid, 0, self.v)).await?,
                    _ => {}
                }
            }
            Packet::Pubrel(a) => {
                self.awaiting_rel.remove(&a.pid);
                conn.send(&encode_ack(PUBCOMP, a.pid, 0, self.v)).await?;
            }
            Packet::Puback(a) => {
                if let Some(Outgoing::Publish(seq)) = self.outgoing.get(&a.pid).cloned() {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, a.reason < 0x80);
                }
            }
            Packet::Pubrec(a) => match self.outgoing.get(&a.pid).cloned() {
                Some(Outgoing::Publish(seq)) if a.reason >= 0x80 => {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, false);
                }
                Some(Outgoing::Publish(seq)) => {
                    self.outgoing.insert(a.pid, Outgoing::Release(seq));
                    conn.send(&encode_ack(PUBREL, a.pid, 0, self.v)).await?;
                }
                // A PUBREC repeated for a message already released: release again.
                Some(Outgoing::Release(_)) => {
                    conn.send(&encode_ack(PUBREL, a.pid, 0, self.v)).await?;
                }
                None => {}
            },
            Packet::Pubcomp(a) => {
                // PUBCOMP ends the flow whatever its reason: ownership passed to the
                // server with PUBREC.
                if let Some(Outgoing::Release(seq)) = self.outgoing.get(&a.pid).cloned() {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, true);
                }
            }
            Packet::Suback(s) => {
                let Role::Sub { index, .. } = self.role else {
                    return Ok(());
                };
                assert_eq!(
                    s.codes,
                    vec![self.qos],
                    "{}: subscription not granted at QoS {}",
                    self.id,
                    self.qos
                );
                self.shared.update(|st| st.subs[index].ready = true);
            }
            Packet::Disconnect(reason, _) => {
                let i = self.pub_index();
                let sub = matches!(self.role, Role::Sub { .. });
                self.shared.update(|s| {
                    if sub {
                        s.subs[i].disconnects.push(reason)
                    } else {
                        s.pubs[i].disconnects.push(reason)
                    }
                });
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            _ => {}
        }
        Ok(())
    }

    fn acked(&mut self, seq: u64, ok: bool) {
        let index = self.pub_index();
        let n = self.outgoing.len();
        self.shared.update(|s| {
            let st = &mut s.pubs[index];
            if ok {
                st.acked.insert(seq);
                st.acked_at.insert(seq, Instant::now());
            } else {
                st.refused += 1;
            }
            st.outstanding = n;
        });
    }
}

fn owned_by(c: &TestCluster, ids: &[String], node_id: &str) -> Vec<String> {
    ids.iter()
        .filter(|id| c.session_owner(id).as_deref() == Some(node_id))
        .cloned()
        .collect()
}

fn parse_payload(b: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (p, q) = s.split_once(':')?;
    Some((p.parse().ok()?, q.parse().ok()?))
}

// ---------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------

/// What load to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Scenario tag: client ids and topics are `chaos-{tag}-...`.
    pub tag: String,
    /// QoS of every publish and subscription (1 or 2).
    pub qos: u8,
    /// Subscribers whose session lives on each node, at least.
    pub subscribers_per_node: usize,
    pub publishers: usize,
    /// Messages per second, all publishers together.
    pub rate: u32,
    /// Subscribe as members of this shared subscription group (`$share/{group}/…`,
    /// MQTT 5 clients only) instead of each on its own.
    pub shared_group: Option<String>,
}

impl LoadSpec {
    pub fn new(tag: &str, qos: u8) -> LoadSpec {
        LoadSpec {
            tag: tag.to_string(),
            qos,
            subscribers_per_node: 2,
            publishers: 4,
            rate: 200,
            shared_group: None,
        }
    }
}

/// Subscribers and publishers running through the balancer.
pub struct Load {
    shared: Arc<Shared>,
    ctl: watch::Sender<Ctl>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub sub_ids: Vec<String>,
    pub pub_ids: Vec<String>,
}

impl Load {
    /// Connects subscribers one at a time through the balancer until every running
    /// node holds at least `subscribers_per_node` of their sessions (by the owner in
    /// Redis), makes sure every node applied every node's route, starts the
    /// publishers, and returns once every subscriber has received a message from every
    /// publisher.
    pub async fn start(ch: &Chaos, spec: &LoadSpec) -> Load {
        let (ctl, ctl_rx) = watch::channel(Ctl::Run);
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats::default()),
            changed: Notify::new(),
        });
        let mut load = Load {
            shared,
            ctl,
            tasks: Vec::new(),
            sub_ids: Vec::new(),
            pub_ids: Vec::new(),
        };
        let c = &ch.cluster;
        let filter = match &spec.shared_group {
            Some(g) => format!("$share/{g}/chaos/{}/#", spec.tag),
            None => format!("chaos/{}/#", spec.tag),
        };
        load.shared
            .update(|s| s.shared = spec.shared_group.is_some());
        let running: Vec<usize> = (0..c.len()).filter(|&i| c.is_running(i)).collect();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let max_subs = 4 * running.len() * spec.subscribers_per_node;
        while running
            .iter()
            .any(|&i| per_node.get(c.id(i)).copied().unwrap_or(0) < spec.subscribers_per_node)
        {
            let index = load.sub_ids.len();
            assert!(
                index < max_subs,
                "the balancer placed {index} subscribers without covering every node: {per_node:?}"
            );
            let id = format!("chaos-{}-sub-{index}", spec.tag);
            // Both protocol versions: even subscribers MQTT 5, odd ones 3.1.1 (shared
            // subscriptions are MQTT 5's: all of a group's members are).
            let v = if spec.shared_group.is_some() {
                Version::V5
            } else {
                [Version::V5, Version::V311][index % 2]
            };
            load.shared.update(|s| {
                s.subs.push(SubStats {
                    id: id.clone(),
                    ..Default::default()
                })
            });
            load.spawn(Client {
                id: id.clone(),
                v,
                qos: spec.qos,
                role: Role::Sub {
                    index,
                    filter: filter.clone(),
                },
                addr: ch.lb.addr(),
                shared: load.shared.clone(),
                ctl: ctl_rx.clone(),
                next_seq: 0,
                next_pid: 0,
                outgoing: BTreeMap::new(),
                awaiting_rel: HashSet::new(),
                connected_before: false,
            });
            load.sub_ids.push(id.clone());
            load.wait(T, &format!("{id} subscribed"), |s| s.subs[index].ready)
                .await;
            let owner = c
                .session_owner(&id)
                .unwrap_or_else(|| panic!("{id}: no session owner in Redis after SUBACK"));
            *per_node.entry(owner).or_insert(0) += 1;
        }
        for &i in &running {
            c.wait_route_visible(i, &filter).await;
            c.sync_from(i).await;
        }
        let period = Duration::from_secs_f64(spec.publishers as f64 / f64::from(spec.rate));
        for index in 0..spec.publishers {
            let id = format!("chaos-{}-pub-{index}", spec.tag);
            let v = [Version::V311, Version::V5][index % 2];
            load.shared.update(|s| {
                s.pubs.push(PubStats {
                    id: id.clone(),
                    ..Default::default()
                })
            });
            load.spawn(Client {
                id: id.clone(),
                v,
                qos: spec.qos,
                role: Role::Pub {
                    index,
                    topic: format!("chaos/{}/{index}", spec.tag),
                    period,
                },
                addr: ch.lb.addr(),
                shared: load.shared.clone(),
                ctl: ctl_rx.clone(),
                next_seq: 0,
                next_pid: 0,
                outgoing: BTreeMap::new(),
                awaiting_rel: HashSet::new(),
                connected_before: false,
            });
            load.pub_ids.push(id);
        }
        if spec.shared_group.is_some() {
            // A group's member gets only some messages: every member receiving, and
            // the group receiving from every publisher.
            load.wait(T, "every member receiving, from every publisher", |s| {
                s.subs.iter().all(|sub| !sub.received.is_empty())
                    && (0..s.pubs.len()).all(|p| {
                        s.subs
                            .iter()
                            .any(|sub| sub.received.keys().any(|&(q, _)| q == p))
                    })
            })
            .await;
        } else {
            load.wait(T, "every subscriber receiving from every publisher", |s| {
                s.subs
                    .iter()
                    .all(|sub| (0..s.pubs.len()).all(|p| sub.received.keys().any(|&(q, _)| q == p)))
            })
            .await;
        }
        load
    }

    fn spawn(&mut self, c: Client) {
        self.tasks.push(tokio::spawn(c.run()));
    }

    /// Waits until `cond` holds on the statistics (re-checked on every change);
    /// panics with `what` after `timeout`.
    pub async fn wait(&self, timeout: Duration, what: &str, cond: impl Fn(&Stats) -> bool) {
        if !self.wait_until(timeout, cond).await {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{:?}",
                self.counts()
            );
        }
    }

    /// Like [`Load::wait`] but returns whether `cond` held in time.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if cond(&self.shared.stats.lock().unwrap()) {
                return true;
            }
            // Periodic re-check as well: a condition may also depend on time.
            let step = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(step.min(deadline), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return cond(&self.shared.stats.lock().unwrap());
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.shared.stats.lock().unwrap().counts()
    }

    pub fn acknowledged(&self) -> u64 {
        self.counts().acknowledged
    }

    /// Waits until `n` more messages than now are acknowledged; false on timeout.
    pub async fn wait_more_acked(&self, n: u64, timeout: Duration) -> bool {
        let target = self.acknowledged() + n;
        self.wait_until(timeout, |s| {
            s.pubs.iter().map(|p| p.acked.len() as u64).sum::<u64>() >= target
        })
        .await
    }

    /// The subscribers whose session Redis says node `node_id` owns.
    pub fn sessions_on(&self, c: &TestCluster, node_id: &str) -> Vec<String> {
        owned_by(c, &self.sub_ids, node_id)
    }

    /// The publishers whose session Redis says node `node_id` owns.
    pub fn publishers_on(&self, c: &TestCluster, node_id: &str) -> Vec<String> {
        owned_by(c, &self.pub_ids, node_id)
    }

    /// Time from `since` until every subscriber in `ids` reconnected after `since`
    /// with Session Present 1 and received a PUBLISH on that connection; `Err` names
    /// the first that lost its session or has not recovered yet.
    pub fn recovery(&self, ids: &[String], since: Instant) -> Result<Duration, String> {
        let s = self.shared.stats.lock().unwrap();
        let mut worst = Duration::ZERO;
        for id in ids {
            let sub = s
                .subs
                .iter()
                .find(|x| &x.id == id)
                .expect("a load subscriber");
            let after: Vec<&ConnEvent> = sub.connects.iter().filter(|c| c.at > since).collect();
            if let Some(c) = after.iter().find(|c| !c.session_present) {
                return Err(format!(
                    "{id} reconnected {:?} after the fault with Session Present 0: its \
                     session was lost",
                    c.at - since
                ));
            }
            match after.iter().find_map(|c| c.first_publish) {
                Some(t) => worst = worst.max(t - since),
                None => return Err(format!("{id} has not resumed receiving yet")),
            }
        }
        Ok(worst)
    }

    /// Waits (event-driven) until [`Load::recovery`] succeeds or a session was lost;
    /// gives up after `timeout`.
    pub async fn wait_recovered(
        &self,
        ids: &[String],
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.recovery(ids, since);
            match &r {
                Ok(_) => return r,
                Err(e) if e.contains("was lost") => return r,
                Err(_) if Instant::now() >= deadline => return r,
                Err(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = self.shared.changed.notified();
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changed).await;
        }
    }

    /// Stops taking new sequence numbers, waits (up to `timeout` in all) until every
    /// publisher's window is empty and every subscriber received every acknowledged
    /// message, then stops every client and returns the counts. A message still
    /// unacknowledged at the end is not counted as lost (nothing was promised for it);
    /// an acknowledged one some subscriber lacks is.
    pub async fn finish(mut self, timeout: Duration) -> (Counts, Vec<String>) {
        let _ = self.ctl.send(Ctl::StopPublishing);
        let deadline = Instant::now() + timeout;
        self.wait_until(timeout, |s| s.pubs.iter().all(|p| p.outstanding == 0))
            .await;
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_until(left.max(Duration::from_secs(1)), Stats::all_received)
            .await;
        let _ = self.ctl.send(Ctl::Stop);
        // Clients end at once unless blocked connecting; those are aborted.
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let joined = tokio::time::timeout(Duration::from_secs(3), async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        if joined.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        let s = self.shared.stats.lock().unwrap();
        (s.counts(), s.details())
    }

    /// Reasons of every DISCONNECT the server sent to load clients, with counts.
    pub fn disconnect_reasons(&self) -> BTreeMap<u8, usize> {
        let s = self.shared.stats.lock().unwrap();
        let mut m = BTreeMap::new();
        for r in s
            .subs
            .iter()
            .flat_map(|x| &x.disconnects)
            .chain(s.pubs.iter().flat_map(|x| &x.disconnects))
        {
            *m.entry(*r).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// One line of the chaos table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub counts: Counts,
    pub detect_ms: Option<u64>,
    pub recover_ms: Option<u64>,
    /// Free text: why recovery is missing, what else was seen.
    pub note: String,
}

/// The markdown table header matching [`Row::markdown`].
pub const TABLE_HEADER: &str = "| scenario | acknowledged | received / expected | lost | duplicates | sessions lost | detect ms | recover ms |";

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "—".to_string(), |n| n.to_string())
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl Row {
    pub fn markdown(&self) -> String {
        let c = &self.counts;
        format!(
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            self.scenario,
            c.acknowledged,
            c.received,
            c.expected,
            c.lost,
            c.duplicates,
            c.sessions_lost,
            opt(self.detect_ms),
            opt(self.recover_ms)
        )
    }

    pub fn json(&self) -> String {
        let c = &self.counts;
        let o = |n: Option<u64>| n.map_or_else(|| "null".to_string(), |n| n.to_string());
        format!(
            "{{\"scenario\":{},\"acknowledged\":{},\"expected\":{},\"received\":{},\"lost\":{},\
             \"duplicates\":{},\"sessions_lost\":{},\"unacknowledged\":{},\"refused\":{},\
             \"detect_ms\":{},\"recover_ms\":{},\"note\":{}}}",
            json_str(&self.scenario),
            c.acknowledged,
            c.expected,
            c.received,
            c.lost,
            c.duplicates,
            c.sessions_lost,
            c.unacknowledged,
            c.refused,
            o(self.detect_ms),
            o(self.recover_ms),
            json_str(&self.note)
        )
    }

    /// Prints the row (with the header) and appends it as JSON to `$ASTRAMQ_CHAOS_OUT`,
    /// default `$CARGO_TARGET_TMPDIR/chaos.jsonl`. Called before a scenario asserts, so
    /// a failing scenario still reports its numbers.
    pub fn emit(&self) {
        println!("{TABLE_HEADER}\n{}", self.markdown());
        if !self.note.is_empty() {
            println!("  note: {}", self.note);
        }
        let path = std::env::var_os("ASTRAMQ_CHAOS_OUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos.jsonl")
            });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "{}", self.json()).unwrap();
    }
}

// ---------------------------------------------------------------------------
// One client id on two nodes (invariant 2)
// ---------------------------------------------------------------------------

/// CONNECT on `addr`; the CONNACK within `t`, or None if the server closed first or
/// said nothing.
pub async fn try_connect(
    addr: std::net::SocketAddr,
    c: Connect,
    t: Duration,
) -> (RawClient, Option<Connack>) {
    let mut cl = RawClient::tcp(addr).await;
    cl.version = c.version;
    cl.send(&c.encode()).await;
    match cl.read(t).await {
        Ok(Packet::Connack(ca)) => (cl, Some(ca)),
        Ok(other) => panic!("expected CONNACK, got {other:?}"),
        Err(_) => (cl, None),
    }
}

/// Whether the connection answers PINGREQ (live); false once the server closed it.
/// Records DISCONNECT reasons; a PUBLISH on it is returned as an error (a connection
/// that lost its id must not be delivered to).
pub async fn answers_ping(c: &mut RawClient, disconnects: &mut Vec<u8>) -> Result<bool, String> {
    c.send_lossy(&encode_pingreq()).await;
    loop {
        match c.read(T).await {
            Ok(Packet::Pingresp) => return Ok(true),
            Ok(Packet::Disconnect(r, _)) => disconnects.push(r),
            Ok(Packet::Publish(p)) => return Err(format!("PUBLISH delivered: {p:?}")),
            Ok(_) => {}
            Err(ReadError::Timeout) => {
                return Err(format!("no PINGRESP and no close within {T:?}"))
            }
            Err(_) => return Ok(false),
        }
    }
}

/// What a connection whose client id was taken over elsewhere did once its node came
/// back, watched for `T` after a PINGREQ.
pub struct Fate {
    pub answered_ping: bool,
    pub publishes: usize,
    pub disconnects: Vec<u8>,
    /// None: still open after `T`.
    pub closed_after: Option<Duration>,
}

impl Fate {
    /// Closed (after at most a DISCONNECT 0x8E), never answered, never delivered to.
    pub fn ok(&self) -> bool {
        !self.answered_ping
            && self.publishes == 0
            && self.closed_after.is_some()
            && self
                .disconnects
                .iter()
                .all(|&r| r == rc::SESSION_TAKEN_OVER)
    }

    pub fn describe(&self) -> String {
        format!(
            "answered PINGREQ: {}, PUBLISH delivered: {}, DISCONNECT reasons: {:02x?}, {}",
            self.answered_ping,
            self.publishes,
            self.disconnects,
            match self.closed_after {
                Some(d) => format!("closed after {} ms", d.as_millis()),
                None => format!("still open after {} ms", T.as_millis()),
            }
        )
    }
}

pub async fn stale_fate(c: &mut RawClient) -> Fate {
    let start = Instant::now();
    let mut f = Fate {
        answered_ping: false,
        publishes: 0,
        disconnects: Vec::new(),
        closed_after: None,
    };
    c.send_lossy(&encode_pingreq()).await;
    loop {
        let left = T.saturating_sub(start.elapsed());
        match c.read(left).await {
            Ok(Packet::Pingresp) => f.answered_ping = true,
            Ok(Packet::Disconnect(r, _)) => f.disconnects.push(r),
            Ok(Packet::Publish(_)) => f.publishes += 1,
            Ok(_) => {}
            Err(ReadError::Timeout) => return f,
            Err(_) => {
                f.closed_after = Some(start.elapsed());
                return f;
            }
        }
    }
}
