//! What the load clients record ([`Stats`]: connections, deliveries, acknowledgements)
//! and what a scenario reports from it ([`Counts`]: lost, duplicates…).

use super::*;

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
    pub(super) fn counts(&self) -> Counts {
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
    pub(super) fn details(&self) -> Vec<String> {
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

    pub(super) fn all_received(&self) -> bool {
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
pub(super) struct Shared {
    pub(super) stats: Mutex<Stats>,
    pub(super) changed: Notify,
}

impl Shared {
    pub(super) fn update<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        let r = f(&mut self.stats.lock().unwrap());
        self.changed.notify_waiters();
        r
    }
}
