//! The subscription index and fan-out: which sessions a PUBLISH goes to.
//!
//! Like nats-server's `sublist`, the index is read-mostly shared state behind a
//! read-write lock: every publishing connection matches in its own task, in parallel,
//! and only SUBSCRIBE/UNSUBSCRIBE take the write lock. Deliveries then go into each
//! session's [`Mailbox`] after the lock is released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mqtt::topic::{parse_shared, TopicTree};
use mqtt::{QoS, SubscriptionOptions};
use parking_lot::RwLock;

use crate::cluster::LocalGroups;
use crate::mailbox::{Delivery, Mailbox, Pushed};
use crate::message::Message;

mod grant;

pub use grant::{session_grants, Grant};

/// Who a subscription belongs to, within one topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubKey {
    /// A client's own subscription.
    Client(Arc<str>),
    /// A shared-subscription group (`$share/{group}/...`).
    Group(Arc<str>),
}

/// One session's subscription to one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing client.
    pub client_id: Arc<str>,
    /// Its user name, for per-message read checks.
    pub username: Option<Arc<str>>,
    /// Where its deliveries go.
    pub mailbox: Arc<Mailbox>,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier.
    pub id: Option<u32>,
}

/// The members of one shared-subscription group on one filter.
#[derive(Debug, Default)]
pub struct Group {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

/// A subscription entry in the index.
#[derive(Debug)]
pub enum Entry {
    /// A client's subscription.
    Client(Subscriber),
    /// A shared group.
    Group(Group),
}

/// Decides whether a subscriber may read a topic (the ACL), per delivery.
pub type ReadCheck<'a> = &'a dyn Fn(&Subscriber, &str) -> bool;

/// Counts from routing one message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Deliveries lost to a full queue (the dropped message may be an older one).
    pub overflowed: usize,
}

/// One subscription matching a topic, as [`Router::matching`] reports it.
#[derive(Debug, Clone)]
pub struct Matching {
    /// The filter as subscribed, without `$share/{group}/`.
    pub filter: String,
    /// The shared group, for a shared subscription.
    pub group: Option<Arc<str>>,
    /// The subscribing client.
    pub client_id: Arc<str>,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier.
    pub id: Option<u32>,
    /// Whether a connection is draining the session's mailbox.
    pub online: bool,
}

/// A delivery target found while the index lock is held.
#[derive(Debug)]
pub struct Target {
    mailbox: Arc<Mailbox>,
    grant: Grant,
    shared: bool,
}

/// A delivery waiting for room in a connected session's full queue.
#[derive(Debug)]
pub struct Blocked {
    /// The full mailbox.
    pub mailbox: Arc<Mailbox>,
    /// What waits to go in.
    pub delivery: Delivery,
}

/// The subscription index.
#[derive(Debug, Default)]
pub struct Router {
    index: RwLock<TopicTree<SubKey, Entry>>,
}

impl Router {
    /// An empty index.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds or replaces `sub`'s subscription to `filter` (which may be `$share/g/f`;
    /// the caller validated it). Returns true if it replaced an existing one.
    pub fn subscribe(&self, filter: &str, sub: Subscriber) -> bool {
        let mut index = self.index.write();
        match parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let key = SubKey::Group(group.into());
                let mut g = match index.remove(inner, &key) {
                    Some(Entry::Group(g)) => g,
                    _ => Group::default(),
                };
                let existed = match g.members.iter_mut().find(|m| m.client_id == sub.client_id) {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        g.members.push(sub);
                        false
                    }
                };
                index.insert(inner, key, Entry::Group(g));
                existed
            }
            _ => {
                let key = SubKey::Client(sub.client_id.clone());
                index.insert(filter, key, Entry::Client(sub)).is_some()
            }
        }
    }

    /// Removes `client_id`'s subscription to `filter`; true if it existed.
    pub fn unsubscribe(&self, filter: &str, client_id: &Arc<str>) -> bool {
        self.remove_subscription(filter, client_id, None)
    }

    /// Removes `client_id`'s subscription to `filter` only if it still delivers into
    /// `mailbox` (a newer session of the same client may have replaced it). True if
    /// it was removed.
    pub fn unsubscribe_if(
        &self,
        filter: &str,
        client_id: &Arc<str>,
        mailbox: &Arc<Mailbox>,
    ) -> bool {
        self.remove_subscription(filter, client_id, Some(mailbox))
    }

    /// Removes `client_id`'s subscription to `filter` (with `mailbox`: only the one
    /// delivering into it). True if one was removed.
    fn remove_subscription(
        &self,
        filter: &str,
        client_id: &Arc<str>,
        mailbox: Option<&Arc<Mailbox>>,
    ) -> bool {
        let matches = |s: &Subscriber| {
            &s.client_id == client_id && mailbox.is_none_or(|m| Arc::ptr_eq(&s.mailbox, m))
        };
        let mut index = self.index.write();
        match parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let key = SubKey::Group(group.into());
                let Some(Entry::Group(mut g)) = index.remove(inner, &key) else {
                    return false;
                };
                let before = g.members.len();
                g.members.retain(|m| !matches(m));
                let removed = g.members.len() != before;
                if !g.members.is_empty() {
                    index.insert(inner, key, Entry::Group(g));
                }
                removed
            }
            _ => {
                let key = SubKey::Client(client_id.clone());
                match index.remove(filter, &key) {
                    Some(Entry::Client(s)) if !matches(&s) => {
                        index.insert(filter, key, Entry::Client(s));
                        false
                    }
                    Some(_) => true,
                    None => false,
                }
            }
        }
    }

    /// Number of (filter, subscriber-or-group) entries.
    pub fn len(&self) -> usize {
        self.index.read().len()
    }

    /// Whether no subscription exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages and bytes queued in the mailboxes of every subscribed session, and
    /// deliveries in flight, each mailbox counted once (for the queue-depth metrics,
    /// read at each scrape; a session without subscriptions gets nothing new).
    pub fn queued(&self) -> (usize, usize, usize) {
        let index = self.index.read();
        let mut seen = std::collections::HashSet::new();
        let (mut messages, mut bytes, mut inflight) = (0, 0, 0);
        index.for_each(|_, _, entry| {
            let members = match entry {
                Entry::Client(s) => std::slice::from_ref(s),
                Entry::Group(g) => &g.members[..],
            };
            for s in members {
                if seen.insert(Arc::as_ptr(&s.mailbox)) {
                    let (m, b) = s.mailbox.depth();
                    messages += m;
                    bytes += b;
                    inflight += s.mailbox.inflight();
                }
            }
        });
        (messages, bytes, inflight)
    }

    /// Every local subscription whose filter matches `topic`, for an operator asking
    /// who gets a message (the admin API); a shared group lists each member. Not
    /// for routing: it allocates, and ignores the ACL and No Local.
    pub fn matching(&self, topic: &str) -> Vec<Matching> {
        let mut out = Vec::new();
        self.index
            .read()
            .for_each_match(topic, |filter, key, entry| {
                let group = match key {
                    SubKey::Group(g) => Some(g.clone()),
                    SubKey::Client(_) => None,
                };
                let members = match entry {
                    Entry::Client(s) => std::slice::from_ref(s),
                    Entry::Group(g) => &g.members[..],
                };
                out.extend(members.iter().map(|s| Matching {
                    filter: filter.to_string(),
                    group: group.clone(),
                    client_id: s.client_id.clone(),
                    options: s.options,
                    id: s.id,
                    online: s.mailbox.is_online(),
                }));
            });
        out
    }

    /// Queues `msg` for every session with a matching subscription: one delivery per
    /// session for its own subscriptions (highest QoS, every subscription identifier
    /// [MQTT-3.3.4-2, MQTT-3.3.4-3]) and one per shared group, to one member chosen
    /// round robin, preferring connected members (v5 §4.8.2). `scratch` is reused
    /// between calls so routing does not allocate per message.
    ///
    /// In a cluster, `groups` names the shared groups this node serves for this message
    /// (another node serves the others); `None` serves every group.
    ///
    /// With `blocked`, a QoS 1/2 delivery to a connected session whose queue is full
    /// is not dropped but handed back there, for the caller to wait for room
    /// (backpressure); without it, or for offline sessions, the overflow policy
    /// applies.
    pub fn route(
        &self,
        msg: &Arc<Message>,
        can_read: Option<ReadCheck<'_>>,
        groups: Option<&LocalGroups>,
        scratch: &mut Vec<Target>,
        mut blocked: Option<&mut Vec<Blocked>>,
        journal: &mut Vec<Blocked>,
    ) -> Routed {
        scratch.clear();
        let topic = msg.topic();
        {
            let index = self.index.read();
            index.for_each_match(topic, |filter, key, entry| match entry {
                Entry::Client(s) => {
                    if can_read.is_some_and(|f| !f(s, topic)) {
                        return;
                    }
                    // None: No Local, the publisher's own subscription.
                    if let Some(grant) = Grant::of(msg, &s.client_id, &s.options, s.id) {
                        scratch.push(Target {
                            mailbox: s.mailbox.clone(),
                            grant,
                            shared: false,
                        });
                    }
                }
                Entry::Group(g) => {
                    if let (Some(local), SubKey::Group(name)) = (groups, key) {
                        if !local.contains(name, filter) {
                            return;
                        }
                    }
                    let ok = |s: &Subscriber| can_read.is_none_or(|f| f(s, topic));
                    let picked = g.pick(msg.id.get().map(|k| &**k), ok);
                    // A shared subscription has no No Local [MQTT-3.8.3-4].
                    if let Some(s) = picked {
                        if let Some(grant) = Grant::of(msg, &s.client_id, &s.options, s.id) {
                            scratch.push(Target {
                                mailbox: s.mailbox.clone(),
                                grant,
                                shared: true,
                            });
                        }
                    }
                }
            });
        }
        merge_per_session(scratch);
        let mut routed = Routed::default();
        for t in scratch.drain(..) {
            let d = t.grant.deliver(msg);
            if d.qos != QoS::AtMostOnce && t.mailbox.durability().is_stored() {
                // A persistent session in a cluster: stored first, queued after.
                routed.delivered += 1;
                journal.push(Blocked {
                    mailbox: t.mailbox,
                    delivery: d,
                });
                continue;
            }
            if let Some(blocked) = blocked.as_deref_mut() {
                if d.qos != QoS::AtMostOnce && t.mailbox.is_online() {
                    match t.mailbox.try_push(d) {
                        Ok(()) => routed.delivered += 1,
                        Err(d) => {
                            routed.delivered += 1;
                            blocked.push(Blocked {
                                mailbox: t.mailbox,
                                delivery: d,
                            });
                        }
                    }
                    continue;
                }
            }
            let pushed = t.mailbox.push(d);
            match pushed {
                Pushed::Queued => routed.delivered += 1,
                Pushed::DroppedOldest => {
                    routed.delivered += 1;
                    routed.overflowed += 1;
                }
                Pushed::DroppedNew => routed.overflowed += 1,
                Pushed::Discarded | Pushed::Known => {}
            }
        }
        routed
    }
}

impl Group {
    /// One member among those `ok` accepts, preferring connected members: round
    /// robin, or, for a message with a cluster-wide id (`key`), the member that id
    /// ranks highest ([`rendezvous`]) — so a QoS 2 message a publisher sends again
    /// after its node died reaches the member the first copy reached, and that
    /// member's session recognises it (exactly once to the group, [MQTT-4.8.2]).
    fn pick(&self, key: Option<&str>, ok: impl Fn(&Subscriber) -> bool) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        if let Some(key) = key {
            let score = |m: &&Subscriber| rendezvous(key, &m.client_id);
            let accepted = || self.members.iter().filter(|m| ok(m));
            return accepted()
                .filter(|m| m.mailbox.is_online())
                .max_by_key(score)
                .or_else(|| accepted().max_by_key(score));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|i| &self.members[(start + i) % n]);
        let mut fallback = None;
        for m in candidates {
            if !ok(m) {
                continue;
            }
            if m.mailbox.is_online() {
                return Some(m);
            }
            fallback.get_or_insert(m);
        }
        fallback
    }
}

/// Rendezvous (highest random weight) hashing: the score of candidate `name` for
/// `key`. The candidate with the highest score wins; removing any other candidate
/// leaves the winner unchanged. FNV-1a over `key`, a separator and `name`: stable
/// across processes, platforms and releases, so every node ranks alike.
pub fn rendezvous(key: &str, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly: finish with a multiply-xorshift.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Folds several non-shared targets of one session into one delivery.
fn merge_per_session(targets: &mut Vec<Target>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_by_key(|t| (t.shared, Arc::as_ptr(&t.mailbox) as usize));
    let mut out = 0;
    for i in 0..targets.len() {
        let same = out > 0
            && !targets[i].shared
            && !targets[out - 1].shared
            && Arc::ptr_eq(&targets[out - 1].mailbox, &targets[i].mailbox);
        if same {
            let (head, tail) = targets.split_at_mut(i);
            let (prev, cur) = (&mut head[out - 1], &mut tail[0]);
            prev.grant.fold(&mut cur.grant);
        } else {
            targets.swap(out, i);
            out += 1;
        }
    }
    targets.truncate(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueOverflow;
    use crate::mailbox::MailboxLimits;
    use mqtt::Publish;
    use std::time::Instant;

    fn mailbox() -> Arc<Mailbox> {
        let m = Mailbox::new(MailboxLimits {
            max_messages: 100,
            max_bytes: 100_000,
            overflow: QueueOverflow::DropOldest,
        });
        m.set_online(true);
        m
    }

    fn sub(client: &str, mb: &Arc<Mailbox>, qos: QoS, id: Option<u32>) -> Subscriber {
        Subscriber {
            client_id: client.into(),
            username: None,
            mailbox: mb.clone(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id,
        }
    }

    fn msg(topic: &str, qos: QoS) -> Arc<Message> {
        let p = Publish {
            topic: topic.into(),
            qos,
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            ..Default::default()
        };
        Arc::new(Message::new(&p, Some("pub".into()), Instant::now()))
    }

    fn drain(mb: &Mailbox) -> Vec<Delivery> {
        let mut v = vec![];
        mb.drain_into(&mut v, usize::MAX);
        v
    }

    #[test]
    fn overlapping_subscriptions_give_one_copy_at_highest_qos_with_all_ids() {
        let r = Router::new();
        let mb = mailbox();
        r.subscribe("a/+", sub("c", &mb, QoS::AtMostOnce, Some(1)));
        r.subscribe("a/#", sub("c", &mb, QoS::ExactlyOnce, Some(2)));
        let routed = r.route(
            &msg("a/b", QoS::ExactlyOnce),
            None,
            None,
            &mut vec![],
            None,
            &mut vec![],
        );
        assert_eq!(routed.delivered, 1);
        let d = drain(&mb);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].qos, QoS::ExactlyOnce);
        let mut ids = d[0].sub_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn shared_group_delivers_to_one_member_round_robin() {
        let r = Router::new();
        let (m1, m2) = (mailbox(), mailbox());
        r.subscribe("$share/g/t", sub("c1", &m1, QoS::AtLeastOnce, None));
        r.subscribe("$share/g/t", sub("c2", &m2, QoS::AtLeastOnce, None));
        for _ in 0..10 {
            assert_eq!(
                r.route(
                    &msg("t", QoS::AtLeastOnce),
                    None,
                    None,
                    &mut vec![],
                    None,
                    &mut vec![]
                )
                .delivered,
                1
            );
        }
        assert_eq!((drain(&m1).len(), drain(&m2).len()), (5, 5));
        assert!(r.unsubscribe("$share/g/t", &"c1".into()));
        r.route(
            &msg("t", QoS::AtLeastOnce),
            None,
            None,
            &mut vec![],
            None,
            &mut vec![],
        );
        assert_eq!((drain(&m1).len(), drain(&m2).len()), (0, 1));
    }

    #[test]
    fn shared_group_prefers_connected_members() {
        let r = Router::new();
        let (m1, m2) = (mailbox(), mailbox());
        m1.set_online(false);
        r.subscribe("$share/g/t", sub("c1", &m1, QoS::AtLeastOnce, None));
        r.subscribe("$share/g/t", sub("c2", &m2, QoS::AtLeastOnce, None));
        for _ in 0..4 {
            r.route(
                &msg("t", QoS::AtLeastOnce),
                None,
                None,
                &mut vec![],
                None,
                &mut vec![],
            );
        }
        assert_eq!((drain(&m1).len(), drain(&m2).len()), (0, 4));
    }

    #[test]
    fn cluster_decides_which_groups_are_served_here() {
        let r = Router::new();
        let (m1, m2) = (mailbox(), mailbox());
        r.subscribe("$share/a/t/+", sub("c1", &m1, QoS::AtLeastOnce, None));
        r.subscribe("$share/b/t/+", sub("c2", &m2, QoS::AtLeastOnce, None));
        let here = LocalGroups(vec![("b".into(), "t/+".into())]);
        let routed = r.route(
            &msg("t/x", QoS::AtLeastOnce),
            None,
            Some(&here),
            &mut vec![],
            None,
            &mut vec![],
        );
        assert_eq!(routed.delivered, 1);
        assert_eq!((drain(&m1).len(), drain(&m2).len()), (0, 1));
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let r = Router::new();
        let mb = mailbox();
        let mut s = sub("pub", &mb, QoS::AtLeastOnce, None);
        s.options.no_local = true;
        r.subscribe("t", s);
        assert_eq!(
            r.route(
                &msg("t", QoS::AtLeastOnce),
                None,
                None,
                &mut vec![],
                None,
                &mut vec![]
            )
            .delivered,
            0
        );
    }

    #[test]
    fn read_check_filters_deliveries() {
        let r = Router::new();
        let mb = mailbox();
        r.subscribe("#", sub("c", &mb, QoS::AtLeastOnce, None));
        let deny: ReadCheck<'_> = &|_, t| t != "secret";
        assert_eq!(
            r.route(
                &msg("secret", QoS::AtLeastOnce),
                Some(deny),
                None,
                &mut vec![],
                None,
                &mut vec![],
            )
            .delivered,
            0
        );
        assert_eq!(
            r.route(
                &msg("open", QoS::AtLeastOnce),
                Some(deny),
                None,
                &mut vec![],
                None,
                &mut vec![],
            )
            .delivered,
            1
        );
    }

    #[test]
    fn unsubscribe_removes() {
        let r = Router::new();
        let mb = mailbox();
        r.subscribe("t", sub("c", &mb, QoS::AtLeastOnce, None));
        assert!(r.unsubscribe("t", &"c".into()));
        assert!(!r.unsubscribe("t", &"c".into()));
        assert!(r.is_empty());
    }
}
