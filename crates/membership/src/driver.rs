//! The membership task: one `select!` loop that owns the UDP socket, foca, the
//! timer queue and the published view.
//!
//! Every input (a datagram, a due timer, a tick, a command) is handed to foca,
//! which answers through its [`foca::AccumulatingRuntime`]: datagrams to send,
//! timers to arm, notifications. [`Driver::flush`] then carries those out and
//! republishes the view. Nothing else touches foca, so no locks are needed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, info, trace, warn};

use super::config::{NodeMeta, MAX_DATAGRAM};
use super::frame::Framer;
use super::identity::NodeIdentity;
use super::meta::{MetaHandler, MetaInbox, MetaRecord};
use super::view::{Member, MemberEvent, View};

pub(crate) type Swim = Foca<NodeIdentity, PostcardCodec, StdRng, MetaHandler>;

/// Requests from the handle that need an answer.
pub(crate) enum Command {
    /// Announce a clean leave, send it, then stop. Answered once sent.
    Leave(oneshot::Sender<()>),
}

/// Counters shared with the handle (see [`super::MembershipStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub rejected_auth: AtomicU64,
    pub rejected_invalid: AtomicU64,
    /// Largest delay, in microseconds, between a timer's deadline and its handling.
    pub max_timer_lag_us: AtomicU64,
    /// The generation of our current identity (renewed when the cluster declared us
    /// down and we rejoined); 0 until the handle sets the first one.
    pub generation: AtomicU64,
    /// Other members foca knows, by state (alive, suspect, down): counted after each
    /// event, read by metrics.
    pub alive: AtomicU64,
    /// See `alive`.
    pub suspect: AtomicU64,
    /// See `alive`.
    pub down: AtomicU64,
}

/// A timer handled this late means the loop was starved (CPU, a blocked thread):
/// worth a warning, since failure detection is only as prompt as this loop.
const LAG_WARN: Duration = Duration::from_millis(100);

/// At most this many queued datagrams are read before due timers are handled, so
/// a flood cannot hold the timers back indefinitely.
const DRAIN_MAX: usize = 256;

/// Everything the task owns.
pub(crate) struct Driver {
    pub foca: Swim,
    pub runtime: AccumulatingRuntime<NodeIdentity>,
    pub socket: UdpSocket,
    /// The same socket, for reads that must not depend on tokio's cached readiness
    /// (see [`Driver::drain_socket`]). Non-blocking, like `socket`.
    pub socket_now: std::net::UdpSocket,
    pub framer: Framer,
    pub seeds: Vec<SocketAddr>,
    pub inbox: MetaInbox,
    pub view: View,
    pub meta: NodeMeta,
    /// Version of our own metadata record; bumped on every re-advertisement.
    pub meta_version: u64,
    pub members_tx: watch::Sender<Vec<Member>>,
    pub events_tx: broadcast::Sender<MemberEvent>,
    pub meta_rx: watch::Receiver<NodeMeta>,
    pub commands: mpsc::Receiver<Command>,
    pub counters: Arc<Counters>,
    pub join_retry: Duration,
    pub meta_refresh: Duration,
    /// foca timers, soonest first. foca asks for timers to be delivered in order
    /// (`Timer` sorts ties), which a heap keyed by deadline gives for free.
    pub timers: BinaryHeap<Reverse<(Instant, Timer<NodeIdentity>)>>,
    /// Reused for sealing outgoing datagrams.
    pub send_buf: Vec<u8>,
}

impl Driver {
    /// Runs until the handle leaves (clean) or is dropped (silent, like a crash).
    pub async fn run(mut self) {
        let mut join_tick = interval(self.join_retry);
        join_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh_tick = interval(self.meta_refresh);
        refresh_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        refresh_tick.reset(); // the first advertisement is already queued
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];

        self.advertise();
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    // ICMP port-unreachable from a dead peer surfaces here on some
                    // platforms; it says nothing SWIM does not find out itself.
                    Err(e) => trace!(error = %e, "gossip recv error"),
                },
                () = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    // Datagrams first: after the loop was held up, an ack or a
                    // refutation that arrived in time must be seen before the timer
                    // that would declare its sender failed.
                    self.drain_socket(&mut buf);
                    self.on_due_timers();
                }
                _ = join_tick.tick() => self.rejoin_if_alone(),
                _ = refresh_tick.tick() => self.advertise(),
                changed = self.meta_rx.changed() => {
                    if changed.is_err() {
                        debug!("membership handle dropped; stopping without leave");
                        return;
                    }
                    self.meta = self.meta_rx.borrow_and_update().clone();
                    self.advertise();
                    // Push the change now instead of waiting for the next probe or
                    // gossip round to piggyback it.
                    log_foca(self.foca.broadcast(&mut self.runtime));
                }
                command = self.commands.recv() => match command {
                    None => {
                        debug!("membership handle dropped; stopping without leave");
                        return;
                    }
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                },
            }
            self.flush().await;
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if datagram.len() > MAX_DATAGRAM {
            self.counters
                .rejected_invalid
                .fetch_add(1, Ordering::Relaxed);
            debug!(%from, len = datagram.len(), "oversized gossip datagram dropped");
            return;
        }
        let Some(payload) = self.framer.open(datagram) else {
            self.counters.rejected_auth.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "gossip datagram failed authentication; dropped");
            return;
        };
        if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
            self.counters
                .rejected_invalid
                .fetch_add(1, Ordering::Relaxed);
            debug!(%from, error = %e, "gossip datagram rejected by foca");
        }
    }

    /// Hands foca every datagram already queued on the socket, without waiting.
    ///
    /// Called before due timers are handled. A timer is SWIM's "no answer by the
    /// deadline": the end of a probe (no ack: suspect) or of a suspicion (no
    /// refutation: down). When this loop is held up past a deadline (a starved or
    /// paused process, a busy thread), the answer may be sitting in the socket
    /// buffer, received by the kernel before the deadline. Handling the timer first
    /// would declare a member failed on the strength of our own delay; this is
    /// what turned short stalls of the observer into false `Down`s.
    ///
    /// Reads through a duplicate of the socket: tokio's `try_recv_from` answers
    /// `WouldBlock` without asking the kernel until its reactor has seen the socket
    /// become readable, which after a stall it may not have yet. (When tokio later
    /// finds nothing to read it clears its readiness, as for any spurious wake-up.)
    fn drain_socket(&mut self, buf: &mut [u8]) {
        for _ in 0..DRAIN_MAX {
            match self.socket_now.recv_from(buf) {
                Ok((len, from)) => self.on_datagram(&buf[..len], from),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => trace!(error = %e, "gossip recv error"),
            }
        }
    }

    fn on_due_timers(&mut self) {
        let now = Instant::now();
        if let Some(Reverse((at, _))) = self.timers.peek() {
            self.note_lag(now.saturating_duration_since(*at));
        }
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            log_foca(self.foca.handle_timer(timer, &mut self.runtime));
        }
    }

    /// Records how late the earliest due timer was handled.
    fn note_lag(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.counters
            .max_timer_lag_us
            .fetch_max(us, Ordering::Relaxed);
        if lag >= LAG_WARN {
            warn!(
                lag_ms = lag.as_millis() as u64,
                "gossip timers handled late: this process was starved or paused; \
                 failure detection may suspect members (or be suspected)"
            );
        }
    }

    /// Announces to the seeds while we know nobody: at start, when seeds start
    /// after us, and after a partition left us alone.
    fn rejoin_if_alone(&mut self) {
        if self.foca.num_members() > 0 {
            return;
        }
        let own = self.foca.identity().addr;
        for &seed in &self.seeds {
            if seed != own {
                log_foca(
                    self.foca
                        .announce(NodeIdentity::seed(seed), &mut self.runtime),
                );
            }
        }
    }

    /// Queues a new version of our metadata record for gossip.
    fn advertise(&mut self) {
        self.queue_record(false);
    }

    fn queue_record(&mut self, leaving: bool) {
        self.meta_version += 1;
        let me = self.foca.identity();
        let record = MetaRecord {
            node_id: me.node_id.clone(),
            addr: me.addr,
            generation: me.generation,
            version: self.meta_version,
            leaving,
            meta: self.meta.clone(),
        };
        // Size was checked at spawn for the initial metadata; a later set_meta
        // that grew too big is refused by foca and logged.
        match postcard::to_allocvec(&record) {
            Ok(bytes) => log_foca(self.foca.add_broadcast(&bytes).map(drop)),
            Err(e) => debug!(error = %e, "cannot encode own metadata"),
        }
    }

    /// Clean leave: a final metadata record marked `leaving` plus foca's own
    /// "declare myself down" update, pushed to a few members right away.
    async fn leave(&mut self) {
        self.queue_record(true);
        log_foca(self.foca.leave_cluster(&mut self.runtime));
        self.flush().await;
        info!("left the cluster");
    }

    /// Carries out what foca asked for, then republishes the view.
    async fn flush(&mut self) {
        loop {
            while let Some((to, data)) = self.runtime.to_send() {
                self.framer.seal(&data, &mut self.send_buf);
                match self.socket.send_to(&self.send_buf, to.addr).await {
                    Ok(_) => {
                        self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => trace!(to = %to.addr, error = %e, "gossip send failed"),
                }
            }
            let now = Instant::now();
            while let Some((after, timer)) = self.runtime.to_schedule() {
                self.timers.push(Reverse((now + after, timer)));
            }
            let mut readvertise = false;
            while let Some(notification) = self.runtime.to_notify() {
                match notification {
                    OwnedNotification::MemberUp(id) => {
                        debug!(member = ?id, "member up");
                        self.view.member_up(&id);
                        // A newcomer knows nothing of our metadata: foca's join
                        // reply carries identities only, and our last broadcast
                        // may be done spreading.
                        readvertise = true;
                    }
                    OwnedNotification::MemberDown(id) => {
                        debug!(member = ?id, "member down");
                        self.view.member_down(&id);
                    }
                    OwnedNotification::Rename(old, new) => {
                        debug!(?old, ?new, "member restarted");
                        self.view.member_renamed(&old, &new);
                    }
                    OwnedNotification::Rejoin(id) => {
                        // The cluster declared us down and foca renewed our
                        // identity: our record must carry the new generation.
                        info!(identity = ?id, "declared down by the cluster; rejoined");
                        self.counters
                            .generation
                            .store(id.generation, std::sync::atomic::Ordering::Release);
                        readvertise = true;
                    }
                    other => debug!(notification = ?other, "foca"),
                }
            }
            let records: Vec<MetaRecord> = std::mem::take(
                &mut *self
                    .inbox
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            for record in records {
                self.view.record(record);
            }
            let events = self.view.publish(std::time::Instant::now());
            if !events.is_empty() {
                self.members_tx.send_replace(self.view.members());
                for event in events {
                    debug!(?event, "membership event");
                    // No subscribers is fine: members() still tells the state.
                    let _ = self.events_tx.send(event);
                }
            }
            if readvertise {
                self.advertise();
            }
            if self.runtime.backlog() == 0 {
                self.count_states();
                break;
            }
        }
    }
}

impl Driver {
    /// Counts the members foca knows by state, for [`MembershipStats`](crate::MembershipStats).
    fn count_states(&self) {
        let mut by_state = [0u64; 3];
        for m in self.foca.iter_membership_state() {
            by_state[match m.state() {
                foca::State::Alive => 0,
                foca::State::Suspect => 1,
                foca::State::Down => 2,
            }] += 1;
        }
        let c = &self.counters;
        c.alive.store(by_state[0], Ordering::Relaxed);
        c.suspect.store(by_state[1], Ordering::Relaxed);
        c.down.store(by_state[2], Ordering::Relaxed);
    }
}

/// foca reports protocol oddities (data from a stale identity, a malformed
/// packet, a late timer) as errors; none of them stops membership.
fn log_foca(result: Result<(), foca::Error>) {
    if let Err(e) = result {
        debug!(error = %e, "foca");
    }
}
