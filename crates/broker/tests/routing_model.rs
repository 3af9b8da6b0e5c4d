//! The router against a naive model: for random subscriptions (plain and shared,
//! with QoS, No Local, Retain As Published and subscription identifiers) and random
//! messages, `Router::route` must give every session exactly what a direct reading of
//! the specification gives. The model matches every filter against every topic by
//! walking the levels, and folds overlapping subscriptions of one session by hand.
//! The same model checks `session_grants`, the rules without the index that the
//! cluster's dead-node drain applies to a failed node's sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use astramq_broker::cluster::LocalGroups;
use astramq_broker::config::QueueOverflow;
use astramq_broker::mailbox::{Delivery, Mailbox, MailboxLimits};
use astramq_broker::message::Message;
use astramq_broker::router::{session_grants, Router, Subscriber};
use astramq_broker::session::Subscription;
use mqtt::{Publish, QoS, SubscriptionOptions};
use proptest::prelude::*;

const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];

/// One subscription as generated.
#[derive(Debug, Clone)]
struct Sub {
    client: usize,
    group: Option<&'static str>,
    filter: String,
    qos: QoS,
    no_local: bool,
    rap: bool,
    id: Option<u32>,
}

impl Sub {
    fn full_filter(&self) -> String {
        match self.group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.clone(),
        }
    }
}

/// [MQTT-4.7.1-2] `#` matches its parent and any number of levels; `+` exactly one
/// level; anything else only itself.
fn naive_match(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.first(), topic.first()) {
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => naive_match(&filter[1..], &topic[1..]),
        (Some(f), Some(t)) if f == t => naive_match(&filter[1..], &topic[1..]),
        (None, None) => true,
        _ => false,
    }
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).expect("0..=2")
}

fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c")]
}

fn topic() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![level().prop_map(String::from), Just("+".to_string())];
    (proptest::collection::vec(lvl, 1..4), any::<bool>()).prop_map(|(mut l, hash)| {
        if hash {
            l.push("#".into());
        }
        l.join("/")
    })
}

fn sub() -> impl Strategy<Value = Sub> {
    (
        0..CLIENTS.len(),
        prop_oneof![3 => Just(None), 1 => Just(Some("g0")), 1 => Just(Some("g1"))],
        filter(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u32..100),
    )
        .prop_map(|(client, group, filter, q, no_local, rap, id)| Sub {
            client,
            group,
            filter,
            qos: qos(q),
            // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
            no_local: no_local && group.is_none(),
            rap,
            id,
        })
}

/// What one session should receive through its own (not shared) subscriptions: at
/// most one delivery (qos, retain, sorted ids).
#[derive(Debug, Default, PartialEq, Eq)]
struct Got {
    plain: Vec<(u8, bool, Vec<u32>)>,
}

/// The last SUBSCRIBE of a client to a filter replaces the earlier ones.
fn last_per_filter(subs: Vec<Sub>) -> Vec<Sub> {
    let mut by_key: BTreeMap<(usize, String), Sub> = BTreeMap::new();
    for s in subs {
        by_key.insert((s.client, s.full_filter()), s);
    }
    by_key.into_values().collect()
}

/// The copy session `c` gets through its own (not shared) subscriptions, by the
/// model: at most one.
fn own_copy(
    subs: &[Sub],
    c: usize,
    levels: &[&str],
    msg_qos: u8,
    retain: bool,
    origin: Option<usize>,
) -> Option<(u8, bool, Vec<u32>)> {
    let matches = |s: &Sub| naive_match(&s.filter.split('/').collect::<Vec<_>>(), levels);
    // [MQTT-3.8.3-3] No Local: not to the publishing client itself.
    let own: Vec<&Sub> = subs
        .iter()
        .filter(|s| s.client == c && s.group.is_none() && matches(s))
        .filter(|s| !(s.no_local && origin == Some(c)))
        .collect();
    if own.is_empty() {
        return None;
    }
    // [MQTT-3.3.4-2]/[MQTT-3.3.4-3]: one copy at the highest granted QoS (never
    // above the message's), with every identifier.
    let q = own
        .iter()
        .map(|s| s.qos.min(qos(msg_qos)) as u8)
        .max()
        .unwrap();
    let r = own.iter().any(|s| s.rap && retain);
    let mut ids: Vec<u32> = own.iter().filter_map(|s| s.id).collect();
    ids.sort();
    Some((q, r, ids))
}

/// The copy a shared subscription's member gets: its own options.
fn shape(s: &Sub, msg_qos: u8, retain: bool) -> (u8, bool, Vec<u32>) {
    (
        s.qos.min(qos(msg_qos)) as u8,
        s.rap && retain,
        s.id.into_iter().collect(),
    )
}

fn message(topic: &str, msg_qos: u8, retain: bool, origin: Option<usize>) -> Arc<Message> {
    let publish = Publish {
        topic: topic.to_string(),
        qos: qos(msg_qos),
        retain,
        packet_id: (msg_qos > 0).then_some(1),
        ..Default::default()
    };
    let origin_id = origin.map(|o| Arc::from(CLIENTS[o]));
    Arc::new(Message::new(&publish, origin_id, Instant::now()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The rules the dead-node drain applies to a failed node's sessions (read back
    /// from Redis, no index) give each session what the model gives it: its own
    /// copy, and one per shared group whose copy it takes (here: every group it is
    /// a member of).
    #[test]
    fn session_grants_match_the_naive_model(
        subs in proptest::collection::vec(sub(), 0..12),
        topic in topic(),
        msg_qos in 0u8..3,
        retain in any::<bool>(),
        origin in proptest::option::of(0..CLIENTS.len()),
    ) {
        let subs = last_per_filter(subs);
        let msg = message(&topic, msg_qos, retain, origin);
        let levels: Vec<&str> = topic.split('/').collect();
        for (c, client) in CLIENTS.iter().enumerate() {
            let mine: Vec<&Sub> = subs.iter().filter(|s| s.client == c).collect();
            let held: Vec<(String, Subscription)> = mine
                .iter()
                .map(|s| {
                    let options = SubscriptionOptions {
                        qos: s.qos,
                        no_local: s.no_local,
                        retain_as_published: s.rap,
                        ..Default::default()
                    };
                    (s.full_filter(), Subscription { options, id: s.id })
                })
                .collect();
            let groups = LocalGroups(
                mine.iter()
                    .filter_map(|s| s.group.map(|g| (g.to_string(), s.filter.clone())))
                    .collect(),
            );
            let mut got: Vec<(u8, bool, Vec<u32>)> = session_grants(client, &held, &msg, &groups)
                .into_iter()
                .map(|g| {
                    let mut ids = g.sub_ids;
                    ids.sort();
                    (g.qos as u8, g.retain, ids)
                })
                .collect();
            let matches = |s: &Sub| naive_match(&s.filter.split('/').collect::<Vec<_>>(), &levels);
            let mut want: Vec<(u8, bool, Vec<u32>)> =
                own_copy(&subs, c, &levels, msg_qos, retain, origin).into_iter().collect();
            want.extend(mine.iter().filter(|s| s.group.is_some() && matches(s)).map(|s| shape(s, msg_qos, retain)));
            got.sort();
            want.sort();
            prop_assert_eq!(got, want, "session {}", c);
        }
    }

    #[test]
    fn route_matches_the_naive_model(
        subs in proptest::collection::vec(sub(), 0..12),
        topic in topic(),
        msg_qos in 0u8..3,
        retain in any::<bool>(),
        origin in proptest::option::of(0..CLIENTS.len()),
    ) {
        let subs = last_per_filter(subs);

        let mailboxes: Vec<Arc<Mailbox>> = CLIENTS
            .iter()
            .map(|_| {
                let m = Mailbox::new(MailboxLimits {
                    max_messages: 1000,
                    max_bytes: 1 << 20,
                    overflow: QueueOverflow::DropOldest,
                });
                m.set_online(true);
                m
            })
            .collect();
        let router = Router::new();
        for s in &subs {
            router.subscribe(
                &s.full_filter(),
                Subscriber {
                    client_id: CLIENTS[s.client].into(),
                    username: None,
                    mailbox: mailboxes[s.client].clone(),
                    options: SubscriptionOptions {
                        qos: s.qos,
                        no_local: s.no_local,
                        retain_as_published: s.rap,
                        ..Default::default()
                    },
                    id: s.id,
                },
            );
        }
        let msg = message(&topic, msg_qos, retain, origin);
        let routed = router.route(&msg, None, None, &mut Vec::new(), None, &mut Vec::new());

        // The model.
        let levels: Vec<&str> = topic.split('/').collect();
        let matches = |s: &Sub| naive_match(&s.filter.split('/').collect::<Vec<_>>(), &levels);
        let mut want: Vec<Got> = CLIENTS.iter().map(|_| Got::default()).collect();
        for (c, got) in want.iter_mut().enumerate() {
            got.plain.extend(own_copy(&subs, c, &levels, msg_qos, retain, origin));
        }
        // [MQTT-4.8.2]: one copy per group and filter, to one of its members, with
        // that member's own options.
        let mut groups: BTreeMap<(&str, &str), Vec<&Sub>> = BTreeMap::new();
        for s in subs.iter().filter(|s| s.group.is_some() && matches(s)) {
            groups.entry((s.group.unwrap(), &s.filter)).or_default().push(s);
        }
        let shape = |s: &Sub| shape(s, msg_qos, retain);

        // What the router did.
        let mut got: Vec<Vec<(u8, bool, Vec<u32>)>> = Vec::new();
        for m in &mailboxes {
            let mut ds: Vec<Delivery> = Vec::new();
            m.drain_into(&mut ds, usize::MAX);
            got.push(
                ds.into_iter()
                    .map(|d| {
                        let mut ids = d.sub_ids.clone();
                        ids.sort();
                        (d.qos as u8, d.retain, ids)
                    })
                    .collect(),
            );
        }
        let mut shared_copies = 0;
        for (c, deliveries) in got.iter_mut().enumerate() {
            if let Some(w) = want[c].plain.first() {
                let at = deliveries.iter().position(|d| d == w);
                prop_assert!(at.is_some(), "session {}: wanted {:?} in {:?}", c, w, deliveries);
                deliveries.remove(at.unwrap());
            }
            // Every other copy is a shared group's, in the shape of one of this
            // session's matching shared subscriptions.
            let mine: Vec<_> = groups.values().flatten().filter(|s| s.client == c).map(|s| shape(s)).collect();
            for d in deliveries.iter() {
                prop_assert!(mine.contains(d), "session {}: unexpected {:?} (shared: {:?})", c, d, mine);
            }
            shared_copies += deliveries.len();
        }
        prop_assert_eq!(shared_copies, groups.len(), "one copy per group");
        let plain: usize = want.iter().map(|w| w.plain.len()).sum();
        prop_assert_eq!(routed.delivered, plain + groups.len());
    }
}
