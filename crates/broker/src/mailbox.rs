//! A session's mailbox: the bounded queue publishers push deliveries into and the
//! session's connection drains. It outlives connections, so it is also the offline
//! queue of a persistent session.
//!
//! Bounded in messages and bytes (`limits.max_queued_messages`, `max_queued_bytes`);
//! when full, the configured [`QueueOverflow`] policy decides which message is dropped,
//! and the drop is counted. A plain channel can bound only the count, and cannot drop
//! its oldest entry, hence this small queue with a wake-up signal for the reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mqtt::QoS;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::QueueOverflow;
use crate::message::Message;
use crate::signal::Signal;

/// One message on its way to one session, with what this session's subscription(s)
/// made of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS granted for this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of every matching subscription.
    pub sub_ids: Vec<u32>,
    /// Where this delivery is stored in the cluster (persistent sessions in a
    /// cluster only): it survives this node until the client acknowledges it.
    pub journal: Option<Box<Journaled>>,
}

/// A delivery's entry in its session's journal in the cluster store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journaled {
    /// The entry's key within the session's journal.
    pub key: Box<str>,
    /// The packet id reserved for it, so that a resend from another node uses the
    /// same one (the client recognises a QoS 2 duplicate by it [MQTT-4.3.3-9]).
    pub packet_id: u16,
}

/// What happened to a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued, and the oldest queued message was dropped to make room.
    DroppedOldest,
    /// Not queued: the queue was full (drop-newest policy).
    DroppedNew,
    /// Not queued: QoS 0 to an offline session [MQTT-3.1.2-5 allows not storing QoS 0].
    Discarded,
    /// Not queued: the session already has (had) this journaled delivery.
    Known,
}

/// The bounds of a mailbox.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    /// Maximum queued messages.
    pub max_messages: usize,
    /// Maximum queued bytes.
    pub max_bytes: usize,
    /// Overflow policy.
    pub overflow: QueueOverflow,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    /// While a session that just moved here is reconciled with the cluster store:
    /// the journal keys of every delivery it has (had), so that one found again in
    /// the store is not queued twice. Boxed: every idle connection has a mailbox,
    /// and a `HashSet` inline would cost each of them 48 bytes.
    #[allow(clippy::box_collection)]
    known: Option<Box<std::collections::HashSet<Box<str>>>>,
}

impl Queue {
    /// Whether `d` is a journaled delivery this session already has (had), while
    /// journal keys are tracked.
    fn knows(&self, d: &Delivery) -> bool {
        match (self.known.as_ref(), d.journal.as_ref()) {
            (Some(known), Some(j)) => known.contains(&j.key),
            _ => false,
        }
    }

    fn remember(&mut self, d: &Delivery) {
        if let (Some(known), Some(j)) = (self.known.as_mut(), d.journal.as_ref()) {
            known.insert(j.key.clone());
        }
    }
}

/// How a session's QoS 1/2 deliveries outlive the node that queues them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability<'a> {
    /// In this process's memory only: a clean session, or a node without a session
    /// store.
    Memory,
    /// Written to the session store (Redis, the disk) before they are queued, under
    /// the session's ownership epoch (the store's fencing token).
    Stored {
        /// The session's client id.
        client_id: &'a Arc<str>,
        /// The ownership epoch the writes carry.
        epoch: u64,
    },
    /// The session moved to another node (which owns it under a newer epoch): what
    /// still arrives here during the handover grace is stored for it there, not
    /// queued here.
    Moved {
        /// The session's client id.
        client_id: &'a Arc<str>,
        /// The epoch this node held it under.
        epoch: u64,
    },
}

impl<'a> Durability<'a> {
    /// Whether deliveries go to the session store (stored or moved).
    pub fn is_stored(&self) -> bool {
        !matches!(self, Durability::Memory)
    }

    /// The client id and epoch store writes carry, unless in memory only.
    pub fn owner(&self) -> Option<(&'a Arc<str>, u64)> {
        match *self {
            Durability::Memory => None,
            Durability::Stored { client_id, epoch } | Durability::Moved { client_id, epoch } => {
                Some((client_id, epoch))
            }
        }
    }
}

/// A session's bounded delivery queue.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    /// Wakes the connection when a delivery is queued.
    notify: Signal,
    /// Woken when draining frees room, for publishers waiting on a full queue. Made
    /// when a publisher first waits: most mailboxes never fill up.
    room: OnceLock<Box<Notify>>,
    online: AtomicBool,
    limits: MailboxLimits,
    /// The next packet id to hand out (see [`Mailbox::reserve_packet_id`]).
    next_packet_id: AtomicU16,
    /// Deliveries sent and not yet acknowledged, as the session last said (for the
    /// in-flight metric; the session's own state is the truth).
    inflight: std::sync::atomic::AtomicU32,
    /// [`Durability`], kept as atomics because every delivery reads it: the
    /// ownership epoch of a stored session (0: in memory only) ...
    journal_epoch: AtomicU64,
    /// ... its client id (set with the first non-zero epoch) ...
    journal_owner: OnceLock<Arc<str>>,
    /// ... and whether it moved to another node.
    forward_only: AtomicBool,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new(limits: MailboxLimits) -> Arc<Mailbox> {
        Arc::new(Mailbox {
            queue: Mutex::new(Queue::default()),
            notify: Signal::default(),
            room: OnceLock::new(),
            online: AtomicBool::new(false),
            limits,
            next_packet_id: AtomicU16::new(1),
            inflight: Default::default(),
            journal_epoch: AtomicU64::new(0),
            journal_owner: OnceLock::new(),
            forward_only: AtomicBool::new(false),
        })
    }

    /// Hands out the next packet id (never 0, wrapping). The caller skips ids still in
    /// use. Kept here rather than in the session so that a delivery can have its id
    /// reserved when it is journaled, before the connection sends it.
    pub fn reserve_packet_id(&self) -> u16 {
        loop {
            let id = self.next_packet_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Continues packet ids after `id` (a session restored from the cluster store).
    pub fn packet_ids_after(&self, id: u16) {
        self.next_packet_id
            .store(id.wrapping_add(1).max(1), Ordering::Relaxed);
    }

    /// Stores this mailbox's QoS 1/2 deliveries for `client_id` under ownership
    /// `epoch` (a non-zero fencing token from the store's claim) before they are
    /// queued: [`Durability::Stored`].
    pub fn set_stored(&self, client_id: &Arc<str>, epoch: u64) {
        debug_assert!(epoch > 0, "a stored session has a non-zero epoch");
        let _ = self.journal_owner.set(client_id.clone());
        self.journal_epoch.store(epoch, Ordering::Release);
    }

    /// Keeps this mailbox's deliveries in memory only: [`Durability::Memory`].
    pub fn set_memory_only(&self) {
        self.journal_epoch.store(0, Ordering::Release);
    }

    /// Marks a stored session as moved to another node: [`Durability::Moved`].
    pub fn set_moved(&self) {
        self.forward_only.store(true, Ordering::Release);
    }

    /// How this mailbox's QoS 1/2 deliveries outlive this node.
    pub fn durability(&self) -> Durability<'_> {
        let epoch = self.journal_epoch.load(Ordering::Acquire);
        let Some(client_id) = self.journal_owner.get().filter(|_| epoch != 0) else {
            return Durability::Memory;
        };
        if self.forward_only.load(Ordering::Acquire) {
            Durability::Moved { client_id, epoch }
        } else {
            Durability::Stored { client_id, epoch }
        }
    }

    /// Marks whether a connection is draining this mailbox.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    /// Whether a connection is draining this mailbox.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Adds a delivery, applying the bounds.
    pub fn push(&self, d: Delivery) -> Pushed {
        self.push_checked(d, false)
    }

    /// Adds a journaled delivery unless, while this session is being reconciled with
    /// the cluster store, it already has (had) it: the store and the bus may hand the
    /// same copy over twice. `None` when it was known.
    pub fn push_journaled(&self, d: Delivery) -> Option<Pushed> {
        match self.push_checked(d, true) {
            Pushed::Known => None,
            p => Some(p),
        }
    }

    fn push_checked(&self, d: Delivery, skip_known: bool) -> Pushed {
        if d.qos == QoS::AtMostOnce && !self.is_online() {
            return Pushed::Discarded;
        }
        let size = d.msg.size;
        let mut result = Pushed::Queued;
        {
            let mut q = self.queue.lock();
            if skip_known && q.knows(&d) {
                return Pushed::Known;
            }
            while !q.items.is_empty()
                && (q.items.len() >= self.limits.max_messages
                    || q.bytes + size > self.limits.max_bytes)
            {
                match self.limits.overflow {
                    QueueOverflow::DropNewest => return Pushed::DroppedNew,
                    QueueOverflow::DropOldest => {
                        let old = q.items.pop_front().expect("non-empty");
                        q.bytes -= old.msg.size;
                        result = Pushed::DroppedOldest;
                    }
                }
            }
            if size > self.limits.max_bytes {
                return Pushed::DroppedNew;
            }
            q.remember(&d);
            q.bytes += size;
            q.items.push_back(d);
        }
        self.notify.notify();
        result
    }

    /// Adds a delivery if it fits; gives it back if the queue is full, so the caller
    /// can wait for [`Mailbox::room`] instead of dropping a message.
    pub fn try_push(&self, d: Delivery) -> Result<(), Delivery> {
        self.try_push_checked(d, false).map(|_| ())
    }

    /// [`Mailbox::try_push`] for a journaled delivery: `Ok(false)` when the session
    /// already has (had) it (see [`Mailbox::push_journaled`]).
    pub fn try_push_journaled(&self, d: Delivery) -> Result<bool, Delivery> {
        self.try_push_checked(d, true)
    }

    fn try_push_checked(&self, d: Delivery, skip_known: bool) -> Result<bool, Delivery> {
        {
            let mut q = self.queue.lock();
            if skip_known && q.knows(&d) {
                return Ok(false);
            }
            let size = d.msg.size;
            let fits = q.items.is_empty()
                || (q.items.len() < self.limits.max_messages
                    && q.bytes + size <= self.limits.max_bytes);
            if !fits {
                return Err(d);
            }
            q.remember(&d);
            q.bytes += size;
            q.items.push_back(d);
        }
        self.notify.notify();
        Ok(true)
    }

    /// Resolves after the next drain that frees room.
    pub async fn room(&self) {
        self.room_notify().notified().await
    }

    fn room_notify(&self) -> &Notify {
        self.room.get_or_init(|| Box::new(Notify::new()))
    }

    /// Resolves once the queue has room for one more message (at once if it has).
    pub async fn wait_room(&self) {
        let notified = self.room_notify().notified();
        tokio::pin!(notified);
        // Registered before checking, so a drain in between is not missed.
        notified.as_mut().enable();
        if self.has_room() {
            return;
        }
        notified.await
    }

    fn has_room(&self) -> bool {
        let q = self.queue.lock();
        q.items.len() < self.limits.max_messages && q.bytes < self.limits.max_bytes
    }

    /// Moves up to `max` deliveries into `out`, oldest first.
    pub fn drain_into(&self, out: &mut impl Extend<Delivery>, max: usize) {
        let n = {
            let mut q = self.queue.lock();
            let n = max.min(q.items.len());
            let bytes: usize = q.items.iter().take(n).map(|d| d.msg.size).sum();
            q.bytes -= bytes;
            out.extend(q.items.drain(..n));
            n
        };
        // A waiter makes the Notify before it checks for room (under the queue's
        // lock), so one this drain does not see here saw the room itself.
        if let (true, Some(room)) = (n > 0, self.room.get()) {
            room.notify_waiters();
        }
    }

    /// Starts remembering journal keys (see [`Mailbox::push_unknown`]): `keys` (the
    /// session's in-flight deliveries) and those of everything queued now or later.
    pub fn track_journal<'a>(&self, keys: impl Iterator<Item = &'a str>) {
        let mut q = self.queue.lock();
        let mut known: std::collections::HashSet<Box<str>> = keys.map(Box::from).collect();
        known.extend(
            q.items
                .iter()
                .filter_map(|d| d.journal.as_ref().map(|j| j.key.clone())),
        );
        q.known = Some(Box::new(known));
    }

    /// Stops remembering journal keys.
    pub fn stop_tracking(&self) {
        self.queue.lock().known = None;
    }

    /// Queues a journaled delivery found in the cluster store unless this session
    /// already has (had) it. False if it was known, or tracking has stopped.
    pub fn push_unknown(&self, d: Delivery) -> bool {
        if self.queue.lock().known.is_none() {
            return false;
        }
        matches!(
            self.push_journaled(d),
            Some(Pushed::Queued | Pushed::DroppedOldest)
        )
    }

    /// Merges journaled deliveries (oldest first) into the queue by journal key,
    /// which sorts by arrival: deliveries kept on disk while the session was offline
    /// go after what was queued before and ahead of what arrived since. The bounds
    /// then apply as the overflow policy says.
    pub fn merge_journaled(&self, sorted: Vec<Delivery>) {
        if sorted.is_empty() {
            return;
        }
        {
            let mut q = self.queue.lock();
            let old = std::mem::take(&mut q.items);
            let mut merged = VecDeque::with_capacity(old.len() + sorted.len());
            let mut old = old.into_iter().peekable();
            let key = |d: &Delivery| d.journal.as_ref().map(|j| j.key.clone());
            for d in sorted {
                let k = key(&d);
                while let Some(next) = old.peek() {
                    let ahead = match (key(next), &k) {
                        (Some(a), Some(b)) => a < *b,
                        _ => true,
                    };
                    if !ahead {
                        break;
                    }
                    merged.extend(old.next());
                }
                q.bytes += d.msg.size;
                merged.push_back(d);
            }
            merged.extend(old);
            while merged.len() > self.limits.max_messages || q.bytes > self.limits.max_bytes {
                let dropped = match self.limits.overflow {
                    QueueOverflow::DropOldest => merged.pop_front(),
                    QueueOverflow::DropNewest => merged.pop_back(),
                };
                match dropped {
                    Some(d) => q.bytes -= d.msg.size,
                    None => break,
                }
            }
            q.items = merged;
        }
        self.notify.notify();
    }

    /// Copies every queued delivery into `out`, oldest first, leaving the queue as is.
    pub fn peek_into(&self, out: &mut Vec<Delivery>) {
        out.extend(self.queue.lock().items.iter().cloned());
    }

    /// Puts back a delivery taken but not sent, ahead of everything queued. It was
    /// within the bounds when queued, so the bounds are not applied again.
    pub fn push_front(&self, d: Delivery) {
        let mut q = self.queue.lock();
        q.bytes += d.msg.size;
        q.items.push_front(d);
    }

    /// Queued message count.
    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Records how many deliveries the session has in flight (sent, not yet
    /// acknowledged).
    pub fn set_inflight(&self, n: usize) {
        self.inflight
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Deliveries in flight, as last recorded.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed) as usize
    }

    /// Queued messages and their bytes (as the byte bound counts them).
    pub fn depth(&self) -> (usize, usize) {
        let q = self.queue.lock();
        (q.items.len(), q.bytes)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed since the last call returned. Cancel-safe.
    pub fn notified(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.notify.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mqtt::Publish;
    use std::time::Instant;

    #[test]
    fn durability_moves_from_memory_to_stored_to_moved() {
        let m = Mailbox::new(limits(10, QueueOverflow::DropOldest));
        let id: Arc<str> = Arc::from("dev");
        assert_eq!(m.durability(), Durability::Memory);
        m.set_stored(&id, 7);
        assert_eq!(
            m.durability(),
            Durability::Stored {
                client_id: &id,
                epoch: 7
            }
        );
        assert_eq!(m.durability().owner(), Some((&id, 7)));
        m.set_moved();
        assert!(m.durability().is_stored());
        assert_eq!(
            m.durability(),
            Durability::Moved {
                client_id: &id,
                epoch: 7
            }
        );
        m.set_memory_only();
        assert_eq!(m.durability(), Durability::Memory);
        assert_eq!(m.durability().owner(), None);
    }

    fn delivery(n: u8, qos: QoS) -> Delivery {
        let p = Publish {
            topic: "t".into(),
            qos,
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            payload: Bytes::from(vec![n; 9]),
            ..Default::default()
        };
        Delivery {
            msg: Arc::new(Message::new(&p, None, Instant::now())),
            qos,
            retain: false,
            sub_ids: vec![],
            journal: None,
        }
    }

    fn payloads(m: &Mailbox) -> Vec<u8> {
        let mut out = vec![];
        m.drain_into(&mut out, usize::MAX);
        out.iter().map(|d| d.msg.publish.payload()[0]).collect()
    }

    fn limits(max_messages: usize, overflow: QueueOverflow) -> MailboxLimits {
        MailboxLimits {
            max_messages,
            max_bytes: 1000,
            overflow,
        }
    }

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let m = Mailbox::new(limits(2, QueueOverflow::DropOldest));
        assert_eq!(m.push(delivery(1, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(m.push(delivery(2, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(m.push(delivery(3, QoS::AtLeastOnce)), Pushed::DroppedOldest);
        assert_eq!(payloads(&m), vec![2, 3]);
    }

    #[test]
    fn drop_newest_keeps_the_oldest() {
        let m = Mailbox::new(limits(2, QueueOverflow::DropNewest));
        m.push(delivery(1, QoS::AtLeastOnce));
        m.push(delivery(2, QoS::AtLeastOnce));
        assert_eq!(m.push(delivery(3, QoS::AtLeastOnce)), Pushed::DroppedNew);
        assert_eq!(payloads(&m), vec![1, 2]);
    }

    #[test]
    fn byte_bound_holds() {
        let m = Mailbox::new(MailboxLimits {
            max_messages: 100,
            max_bytes: 25, // each delivery is 10 bytes (topic 1 + payload 9)
            overflow: QueueOverflow::DropOldest,
        });
        for i in 0..5 {
            m.push(delivery(i, QoS::AtLeastOnce));
        }
        assert_eq!(payloads(&m), vec![3, 4]);
    }

    #[test]
    fn try_push_gives_back_what_does_not_fit() {
        let m = Mailbox::new(limits(1, QueueOverflow::DropOldest));
        assert!(m.try_push(delivery(1, QoS::AtLeastOnce)).is_ok());
        let back = m.try_push(delivery(2, QoS::AtLeastOnce)).unwrap_err();
        assert_eq!(back.msg.publish.payload()[0], 2);
        assert_eq!(payloads(&m), vec![1], "nothing was dropped");
        assert!(m.try_push(back).is_ok());
    }

    #[tokio::test]
    async fn draining_wakes_a_waiting_publisher() {
        let m = Mailbox::new(limits(1, QueueOverflow::DropOldest));
        m.try_push(delivery(1, QoS::AtLeastOnce)).unwrap();
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.room().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(payloads(&m), vec![1]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    fn journaled(n: u8, key: &str) -> Delivery {
        let mut d = delivery(n, QoS::AtLeastOnce);
        d.journal = Some(Box::new(Journaled {
            key: key.into(),
            packet_id: u16::from(n),
        }));
        d
    }

    #[test]
    fn merged_deliveries_take_their_place_by_journal_key() {
        let m = Mailbox::new(limits(10, QueueOverflow::DropOldest));
        m.push(journaled(1, "01"));
        m.push(journaled(5, "05"));
        m.merge_journaled(vec![journaled(2, "02"), journaled(3, "03")]);
        assert_eq!(payloads(&m), vec![1, 2, 3, 5]);
        // The bound holds after a merge.
        let m = Mailbox::new(limits(3, QueueOverflow::DropOldest));
        m.push(journaled(4, "04"));
        m.merge_journaled(vec![
            journaled(1, "01"),
            journaled(2, "02"),
            journaled(3, "03"),
        ]);
        assert_eq!(payloads(&m), vec![2, 3, 4]);
    }

    #[test]
    fn qos0_is_not_stored_offline() {
        let m = Mailbox::new(limits(2, QueueOverflow::DropOldest));
        assert_eq!(m.push(delivery(1, QoS::AtMostOnce)), Pushed::Discarded);
        m.set_online(true);
        assert_eq!(m.push(delivery(1, QoS::AtMostOnce)), Pushed::Queued);
    }
}
