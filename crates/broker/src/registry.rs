//! Which connection owns which session: one live connection per client id
//! [MQTT-3.1.4-3], and the parked state of persistent sessions between connections.
//!
//! A new connection *claims* a client id: if another connection owns it, that one is
//! told to go ([`ConnLink::take_over`]) and the claimer waits until it has parked its
//! session and exited. Each claim bumps the slot's generation, which is how timers
//! (session expiry, will delay) started for an earlier connection know they are stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use mqtt::ReasonCode;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::session::{PendingWill, Session};
use crate::signal::Signal;

/// How long a claimer waits for the previous owner to hand over before taking the
/// slot anyway (the previous connection's state is then discarded).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Registry::expire_keep_alives`] runs.
pub const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// What the registry asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Close with this reason code.
    Leave(ReasonCode),
    /// Hand the cluster a copy of the session (Redis lost its data), and go on.
    Republish,
    /// Report the session's state to the admin API ([`ConnLink::describe`]).
    Describe,
}

/// Who is behind a connection, for the admin API: set once, when the connection is up.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The user name it authenticated as (or its certificate's identity).
    pub username: Option<Arc<str>>,
    /// The client's address (from the PROXY header behind a balancer).
    pub peer: Box<str>,
    /// The protocol version it speaks.
    pub protocol: mqtt::Protocol,
    /// Keep alive in force, in seconds (0 = none).
    pub keep_alive_secs: u64,
    /// When its CONNECT was accepted.
    pub connected_at: SystemTime,
}

/// A connected session's state as its connection reports it ([`ConnLink::describe`]).
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    /// Subscriptions: filter (`$share/…` included) and maximum QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages waiting in the session's queue.
    pub queued: usize,
    /// Session Expiry Interval in force, seconds (`u32::MAX` = never).
    pub expiry_secs: u32,
}

/// One session in [`Registry::sessions`].
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// Its client id.
    pub client_id: Arc<str>,
    /// Its connection, or `None` for a parked (offline, persistent) session.
    pub link: Option<Arc<ConnLink>>,
}

/// The registry's line to one connection: ask it to leave (takeover, shutdown, keep
/// alive) or to republish its session, and learn when it has gone. A few atomics, a
/// [`Signal`] and a `Notify`: far smaller per connection than a channel pair, which
/// matters with a hundred thousand idle clients.
#[derive(Debug, Default)]
pub struct ConnLink {
    /// The reason code the connection is asked to leave with (0 = stay).
    leave: AtomicU8,
    republish: AtomicBool,
    exited: AtomicBool,
    /// When the connection's keep alive runs out, in ms on the registry's clock
    /// (0 = never): checked by [`Registry::expire_keep_alives`], so an idle
    /// connection needs no timer of its own.
    keep_alive_deadline: AtomicU64,
    wake_conn: Signal,
    wake_claimer: Notify,
    /// Set once the connection is up (see [`ConnInfo`]); one pointer until then.
    info: std::sync::OnceLock<Box<ConnInfo>>,
    /// An admin request for the session's state is waiting in `describer`.
    describe: AtomicBool,
    describer: Mutex<Option<oneshot::Sender<SessionView>>>,
}

impl ConnLink {
    /// A new link.
    pub fn new() -> Arc<ConnLink> {
        Arc::new(ConnLink::default())
    }

    /// Sets when the keep alive runs out (`Registry::clock_ms`), 0 for never.
    pub fn set_keep_alive_deadline(&self, ms: u64) {
        self.keep_alive_deadline.store(ms, Ordering::Relaxed);
    }

    /// Tells the connection another one claimed its client id (v5: 0x8E).
    pub fn take_over(&self) {
        self.ask_to_leave(ReasonCode::SessionTakenOver);
    }

    /// Asks the connection to close with `reason` (v5 DISCONNECT; 3.1.1: closed).
    pub fn ask_to_leave(&self, reason: ReasonCode) {
        self.leave.store(reason.as_u8(), Ordering::Release);
        self.wake_conn.notify();
    }

    /// The reason the connection was asked to leave with, if it was.
    pub fn leave_requested(&self) -> Option<ReasonCode> {
        ReasonCode::from_u8(self.leave.load(Ordering::Acquire)).filter(|r| r.is_error())
    }

    /// Asks the connection to hand the cluster a copy of its session.
    pub fn ask_to_republish(&self) {
        self.republish.store(true, Ordering::Release);
        self.wake_conn.notify();
    }

    /// Resolves with the next request to the connection. Cancel-safe.
    pub fn asked(&self) -> impl std::future::Future<Output = Request> + Send + '_ {
        std::future::poll_fn(move |cx| loop {
            if let Some(r) = self.leave_requested() {
                return Poll::Ready(Request::Leave(r));
            }
            if self.republish.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Request::Republish);
            }
            if self.describe.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Request::Describe);
            }
            // Woken: look at the flags again.
            std::task::ready!(self.wake_conn.poll_wait(cx));
        })
    }

    /// Records who is behind the connection (once; later calls are ignored).
    pub fn set_info(&self, info: ConnInfo) {
        let _ = self.info.set(Box::new(info));
    }

    /// Who is behind the connection, once it is up.
    pub fn info(&self) -> Option<&ConnInfo> {
        self.info.get().map(|b| &**b)
    }

    /// Asks the connection for its session's state; `None` if it ended first. A
    /// second request while one waits replaces it (the first gets `None`).
    pub async fn describe(&self) -> Option<SessionView> {
        let (tx, rx) = oneshot::channel();
        *self.describer.lock() = Some(tx);
        self.describe.store(true, Ordering::Release);
        self.wake_conn.notify();
        rx.await.ok()
    }

    /// Answers a [`Request::Describe`].
    pub fn answer_describe(&self, view: SessionView) {
        if let Some(tx) = self.describer.lock().take() {
            let _ = tx.send(view);
        }
    }

    /// Whether the connection task has ended.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// Marks the connection task as ended.
    pub fn set_exited(&self) {
        self.exited.store(true, Ordering::Release);
        // A describe request waiting on a gone connection gets `None`.
        self.describer.lock().take();
        self.wake_claimer.notify_waiters();
    }

    /// Resolves once the connection task has ended.
    pub async fn exited(&self) {
        let notified = self.wake_claimer.notified();
        tokio::pin!(notified);
        // Registered before checking, so an exit in between is not missed.
        notified.as_mut().enable();
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }
}

/// Marks its connection's [`ConnLink`] as exited when dropped, however the task ends.
#[derive(Debug)]
pub struct ExitGuard(pub Arc<ConnLink>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.set_exited();
    }
}

/// The connection that currently owns a client id.
#[derive(Debug)]
pub struct Owner {
    /// Unique id of the connection.
    pub conn_id: u64,
    /// The line to it.
    pub link: Arc<ConnLink>,
    /// The cluster ownership epoch the connection holds (0 on a single node).
    pub epoch: u64,
}

#[derive(Debug, Default)]
struct Slot {
    owner: Option<Owner>,
    parked: Option<Box<Session>>,
    /// A will waiting for its delay while the session is parked.
    will: Option<Box<PendingWill>>,
    generation: u64,
    /// The highest cluster epoch seen for this client id: a connection holding an
    /// older one lost a race on another node and may not own it.
    fence: u64,
    /// Another node asked for this session: the connection hands it here on exit.
    handover: Option<oneshot::Sender<Session>>,
}

/// What a successful claim hands the new owner.
#[derive(Debug)]
pub struct Claim {
    /// The session that existed for this client id, if any.
    pub previous: Option<Session>,
    /// This ownership's generation.
    pub generation: u64,
}

/// What releasing ownership leaves to do.
#[derive(Debug)]
pub enum Released {
    /// The session was parked for a later connection.
    Parked {
        /// The generation it was parked at.
        generation: u64,
    },
    /// The session ends now (expiry 0): the caller removes its subscriptions and
    /// publishes the will, if any.
    Ended(Box<(Session, Option<PendingWill>)>),
    /// Another connection had already taken the slot (after a handover timeout): the
    /// state is stale and must not touch shared state.
    Stale,
    /// Another node took the client id over and received the session.
    HandedOver,
}

/// What a takeover by another node finds here.
#[derive(Debug)]
pub enum Kicked {
    /// No session for this client id.
    Nothing,
    /// A parked session, removed.
    Now(Box<Session>),
    /// A connected session: it arrives once its connection has closed.
    Later(oneshot::Receiver<Session>),
}

/// Sessions by client id.
#[derive(Debug)]
pub struct Registry {
    slots: Mutex<HashMap<Arc<str>, Slot>>,
    next_conn: AtomicU64,
    /// Zero of the clock keep-alive deadlines are kept on.
    started: Instant,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            slots: Mutex::default(),
            next_conn: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// `at` in milliseconds on the registry's clock (never 0 after the first ms).
    pub fn clock_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64 + 1
    }

    /// Asks every connection whose keep alive ran out by `now` to close with 0x8D
    /// [MQTT-3.1.2-24]; returns how many. Run periodically (see
    /// [`KEEP_ALIVE_SWEEP`]): a deadline is met at most that much late.
    pub fn expire_keep_alives(&self, now: Instant) -> usize {
        let now = self.clock_ms(now);
        let mut expired = 0;
        for (client_id, s) in self.slots.lock().iter() {
            let Some(o) = &s.owner else { continue };
            let deadline = o.link.keep_alive_deadline.load(Ordering::Relaxed);
            if deadline != 0 && deadline <= now {
                o.link.set_keep_alive_deadline(0);
                tracing::debug!(%client_id, "keep alive timeout");
                o.link.ask_to_leave(ReasonCode::KeepAliveTimeout);
                expired += 1;
            }
        }
        expired
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `owner` the owner of `client_id`, taking over from any current owner.
    /// `None` when a newer cluster epoch fenced this claim out.
    pub async fn claim(&self, client_id: &Arc<str>, owner: Owner) -> Option<Claim> {
        let mut owner = Some(owner);
        loop {
            let waiting = {
                let mut slots = self.slots.lock();
                let slot = slots.entry(client_id.clone()).or_default();
                let epoch = owner.as_ref().map_or(0, |o| o.epoch);
                if epoch < slot.fence {
                    return None;
                }
                slot.fence = epoch;
                match &slot.owner {
                    Some(current) => {
                        current.link.take_over();
                        current.link.clone()
                    }
                    None => {
                        slot.owner = owner.take();
                        slot.generation += 1;
                        // [MQTT-3.1.3-9] A new connection before the Will Delay
                        // Interval ran out: the will is not sent.
                        slot.will = None;
                        return Some(Claim {
                            previous: slot.parked.take().map(|s| *s),
                            generation: slot.generation,
                        });
                    }
                }
            };
            let handed_over = tokio::time::timeout(HANDOVER_TIMEOUT, waiting.exited())
                .await
                .is_ok();
            if !handed_over {
                tracing::warn!(client_id = %client_id, "previous connection did not hand over its session in time; taking it");
                let mut slots = self.slots.lock();
                let slot = slots.entry(client_id.clone()).or_default();
                slot.owner = None;
            }
        }
    }

    /// Ends `conn_id`'s ownership of `session`'s client id: parks the session if it
    /// outlives the connection (with `will`, waiting for its delay), else hands both
    /// back to be ended.
    pub fn release(&self, conn_id: u64, session: Session, will: Option<PendingWill>) -> Released {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&session.client_id) else {
            return Released::Stale;
        };
        if slot.owner.as_ref().map(|o| o.conn_id) != Some(conn_id) {
            return Released::Stale;
        }
        slot.owner = None;
        if let Some(to) = slot.handover.take() {
            let id = session.client_id.clone();
            slots.remove(&id);
            if let Err(session) = to.send(session) {
                // The requester gave up waiting: the session ends here.
                return Released::Ended(Box::new((session, will)));
            }
            return Released::HandedOver;
        }
        if session.expiry_secs == 0 {
            let id = session.client_id.clone();
            slots.remove(&id);
            Released::Ended(Box::new((session, will)))
        } else {
            slot.parked = Some(Box::new(session));
            slot.will = will.map(Box::new);
            Released::Parked {
                generation: slot.generation,
            }
        }
    }

    /// Takes the waiting will of `client_id` if nobody claimed it since `generation`.
    pub fn take_will(&self, client_id: &str, generation: u64) -> Option<PendingWill> {
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(client_id)?;
        if slot.owner.is_some() || slot.generation != generation {
            return None;
        }
        slot.will.take().map(|w| *w)
    }

    /// Removes and returns the parked session of `client_id` if nobody claimed it since
    /// `generation` (session expiry), with its will if one is still waiting.
    pub fn expire(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Option<(Session, Option<PendingWill>)> {
        let mut slots = self.slots.lock();
        let slot = slots.get(client_id)?;
        if slot.owner.is_some() || slot.generation != generation {
            return None;
        }
        let slot = slots.remove(client_id)?;
        Some((*slot.parked?, slot.will.map(|w| *w)))
    }

    /// Another node owns `client_id` now, with `epoch`: a connected owner is told to
    /// go and its session arrives through the returned receiver once it has; a parked
    /// session is removed and returned at once.
    pub fn kick(&self, client_id: &str, epoch: u64) -> Kicked {
        let mut slots = self.slots.lock();
        let slot = slots.entry(Arc::from(client_id)).or_default();
        slot.fence = slot.fence.max(epoch);
        if let Some(owner) = &slot.owner {
            if owner.epoch >= epoch {
                return Kicked::Nothing;
            }
            owner.link.take_over();
            let (tx, rx) = oneshot::channel();
            slot.handover = Some(tx);
            return Kicked::Later(rx);
        }
        // The slot stays (without a session) so that its fence keeps out a local
        // claim with an older epoch that is still on its way.
        slot.will = None;
        match slot.parked.take() {
            Some(session) => Kicked::Now(session),
            None => Kicked::Nothing,
        }
    }

    /// The links of every connected owner (for draining a node).
    pub fn connected(&self) -> Vec<Arc<ConnLink>> {
        self.slots
            .lock()
            .values()
            .filter_map(|s| s.owner.as_ref().map(|o| o.link.clone()))
            .collect()
    }

    /// Every session here (connected or parked) with the cluster epoch it holds.
    pub fn epochs(&self) -> Vec<(Arc<str>, u64)> {
        self.slots
            .lock()
            .iter()
            .filter(|(_, s)| s.owner.is_some() || s.parked.is_some())
            .map(|(id, s)| (id.clone(), s.fence))
            .collect()
    }

    /// Asks every connection to close with `reason` (the broker is shutting down).
    pub fn ask_all_to_leave(&self, reason: ReasonCode) {
        for s in self.slots.lock().values() {
            if let Some(o) = &s.owner {
                o.link.ask_to_leave(reason);
            }
        }
    }

    /// After Redis lost its data: asks every connection to hand over a copy of its
    /// session, and returns copies of the parked persistent sessions.
    pub fn republish(&self) -> Vec<crate::cluster::RestoredSession> {
        let slots = self.slots.lock();
        let mut parked = Vec::new();
        for s in slots.values() {
            if let Some(o) = &s.owner {
                o.link.ask_to_republish();
            } else if let Some(session) = &s.parked {
                parked.push(session.restore_change(s.fence, s.will.as_deref(), &[]));
            }
        }
        parked
    }

    /// The connection owning `client_id`, if it is connected here.
    pub fn link(&self, client_id: &str) -> Option<Arc<ConnLink>> {
        let slots = self.slots.lock();
        slots.get(client_id)?.owner.as_ref().map(|o| o.link.clone())
    }

    /// Whether a parked (offline, persistent) session of `client_id` is here.
    pub fn is_parked(&self, client_id: &str) -> bool {
        self.slots
            .lock()
            .get(client_id)
            .is_some_and(|s| s.owner.is_none() && s.parked.is_some())
    }

    /// One page of the sessions here (connected and parked) whose client id starts
    /// with `prefix`, comes after `after` and passes `keep`, in client id order: at
    /// most `limit`, and whether more follow. The registry's lock is held while the
    /// candidates are collected (client ids and links only, no session is copied).
    pub fn sessions(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&SessionEntry) -> bool,
    ) -> (Vec<SessionEntry>, bool) {
        let mut found: Vec<SessionEntry> = {
            let slots = self.slots.lock();
            slots
                .iter()
                .filter(|(id, s)| {
                    (s.owner.is_some() || s.parked.is_some())
                        && id.starts_with(prefix)
                        && after.is_none_or(|a| &***id > a)
                })
                .map(|(id, s)| SessionEntry {
                    client_id: id.clone(),
                    link: s.owner.as_ref().map(|o| o.link.clone()),
                })
                .filter(|e| keep(e))
                .collect()
        };
        let more = found.len() > limit;
        if more {
            found.select_nth_unstable_by(limit, |a, b| a.client_id.cmp(&b.client_id));
            found.truncate(limit);
        }
        found.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
        (found, more)
    }

    /// Number of parked (persistent, disconnected) sessions.
    pub fn parked(&self) -> usize {
        self.slots
            .lock()
            .values()
            .filter(|s| s.parked.is_some())
            .count()
    }

    /// Number of known sessions (connected or parked).
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(r: &Registry, id: &str) -> Arc<ConnLink> {
        let link = ConnLink::new();
        let owner = Owner {
            conn_id: r.next_conn_id(),
            link: link.clone(),
            epoch: 0,
        };
        assert!(r.claim(&Arc::from(id), owner).await.is_some());
        link
    }

    // [MQTT-3.1.2-24] No packet within 1.5 x Keep Alive: the server disconnects.
    #[tokio::test]
    async fn the_sweep_asks_expired_keep_alives_to_leave_once() {
        let r = Registry::new();
        let (due, later, off) = (
            connect(&r, "due").await,
            connect(&r, "later").await,
            connect(&r, "off").await,
        );
        let now = Instant::now();
        due.set_keep_alive_deadline(r.clock_ms(now));
        later.set_keep_alive_deadline(r.clock_ms(now + Duration::from_secs(10)));
        // `off` keeps 0: keep alive disabled.
        assert_eq!(r.expire_keep_alives(now), 1);
        assert_eq!(due.leave_requested(), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(later.leave_requested(), None);
        assert_eq!(off.leave_requested(), None);
        // Asked once, not again at every sweep; the later one when its time comes.
        assert_eq!(r.expire_keep_alives(now + Duration::from_secs(1)), 0);
        assert_eq!(r.expire_keep_alives(now + Duration::from_secs(10)), 1);
        assert_eq!(later.leave_requested(), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(off.leave_requested(), None);
    }

    #[tokio::test]
    async fn shutdown_asks_every_connection_to_leave() {
        let r = Registry::new();
        let (a, b) = (connect(&r, "a").await, connect(&r, "b").await);
        r.ask_all_to_leave(ReasonCode::ServerShuttingDown);
        for link in [a, b] {
            let asked = tokio::time::timeout(Duration::from_secs(5), link.asked()).await;
            assert_eq!(
                asked.unwrap(),
                Request::Leave(ReasonCode::ServerShuttingDown)
            );
        }
    }
}
