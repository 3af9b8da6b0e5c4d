//! What a failed node's inbox holds for the sessions it had: the drain that a
//! survivor runs after taking those sessions over decides, per drained message, which
//! sessions would have received it, exactly as the failed node's router would have.

use std::sync::Arc;

use broker::cluster::LocalGroups;
use broker::message::Message;
use broker::router::session_grants;

/// Which of a failed node's sessions takes each shared group's copy of a message
/// drained from its inbox (`groups`: those the sending node assigned to the failed
/// node): one member per group, like the router's choice on a live node, so the
/// message reaches the group once. A member that already holds the message
/// (`held[i]`: the failed node delivered it there before it died) takes it again;
/// otherwise members are taken in turn, starting at `turn`.
pub(super) fn group_members(
    targets: &Taken,
    groups: &LocalGroups,
    turn: usize,
    held: &[bool],
) -> Vec<LocalGroups> {
    let mut per_target = vec![LocalGroups::default(); targets.len()];
    if targets.is_empty() {
        return per_target;
    }
    for (group, inner) in &groups.0 {
        let is_member = |subs: &[(String, broker::session::Subscription)]| {
            subs.iter().any(|(f, _)| {
                mqtt::topic::parse_shared(f) == Ok(Some((group.as_str(), inner.as_str())))
            })
        };
        let holder = (0..targets.len())
            .find(|&i| held.get(i).copied().unwrap_or(false) && is_member(&targets[i].1));
        let chosen = holder.or_else(|| {
            (0..targets.len())
                .map(|k| (turn + k) % targets.len())
                .find(|&i| is_member(&targets[i].1))
        });
        if let Some(i) = chosen {
            per_target[i].0.push((group.clone(), inner.clone()));
        }
    }
    per_target
}

/// What a failed node's session with `subs` is journaled of `msg` (`groups`: the
/// shared groups, `(group, inner filter)`, whose copy this session takes), or
/// `None`: the router's copies for it ([`session_grants`], the rules a live node
/// applies), QoS 1/2 only (a QoS 0 copy is never stored), folded into one — a
/// journal holds one entry per message.
pub(super) fn delivery_for(
    client_id: &str,
    subs: &[(String, broker::session::Subscription)],
    msg: &Arc<Message>,
    groups: &LocalGroups,
) -> Option<broker::mailbox::Delivery> {
    let mut stored = session_grants(client_id, subs, msg, groups)
        .into_iter()
        .filter(|g| g.qos != mqtt::QoS::AtMostOnce);
    let mut first = stored.next()?;
    for mut g in stored {
        first.fold(&mut g);
    }
    Some(first.deliver(msg))
}

/// The sessions a failed node held, with their subscriptions: what a drain of its
/// inbox serves.
pub(super) type Taken = Vec<(String, Vec<(String, broker::session::Subscription)>)>;

#[cfg(test)]
mod tests {
    use super::*;
    use broker::session::Subscription;
    use mqtt::packet::SubscriptionOptions;
    use mqtt::QoS;

    fn sub(qos: QoS) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id: None,
        }
    }

    fn session(id: &str, filters: &[&str]) -> (String, Vec<(String, Subscription)>) {
        let subs = filters
            .iter()
            .map(|f| (f.to_string(), sub(QoS::AtLeastOnce)))
            .collect();
        (id.to_string(), subs)
    }

    fn message(topic: &str) -> Arc<Message> {
        let p = mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_string(),
            packet_id: Some(1),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        };
        Arc::new(Message::new(&p, None, std::time::Instant::now()))
    }

    fn groups(g: &[(&str, &str)]) -> LocalGroups {
        LocalGroups(
            g.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    /// [MQTT-4.8.2]: a shared group's message goes to one member. A copy assigned to a
    /// failed node's group is drained into exactly one of its members' sessions, and
    /// successive messages take the members in turn.
    #[test]
    fn a_drained_group_copy_goes_to_exactly_one_member() {
        let targets: Taken = vec![
            session("a", &["$share/g/t/#"]),
            session("b", &["plain/#"]),
            session("c", &["$share/g/t/#", "$share/other/t/#"]),
        ];
        let g = groups(&[("g", "t/#")]);
        let mut chosen = Vec::new();
        for turn in 0..4 {
            let m = group_members(&targets, &g, turn, &[]);
            let members: Vec<usize> = (0..3).filter(|&i| !m[i].0.is_empty()).collect();
            assert_eq!(members.len(), 1, "turn {turn}: {m:?}");
            assert_ne!(members[0], 1, "b is not a member");
            chosen.push(members[0]);
        }
        assert!(
            chosen.contains(&0) && chosen.contains(&2),
            "members in turn: {chosen:?}"
        );
    }

    /// A copy the failed node had already delivered to one member (its journal or
    /// done set has it) goes back to that member, whatever the turn: a second member
    /// would receive the message twice within the group (QoS 2: exactly once).
    #[test]
    fn a_drained_group_copy_goes_back_to_the_member_that_holds_it() {
        let targets: Taken = vec![
            session("a", &["$share/g/t/#"]),
            session("b", &["plain/#"]),
            session("c", &["$share/g/t/#"]),
        ];
        let g = groups(&[("g", "t/#")]);
        for turn in 0..4 {
            let m = group_members(&targets, &g, turn, &[false, false, true]);
            let members: Vec<usize> = (0..3).filter(|&i| !m[i].0.is_empty()).collect();
            assert_eq!(members, [2], "turn {turn}: {m:?}");
        }
        // Holding it without being a member of the group changes nothing.
        let m = group_members(&targets, &g, 0, &[false, true, false]);
        let members: Vec<usize> = (0..3).filter(|&i| !m[i].0.is_empty()).collect();
        assert_eq!(members, [0]);
    }

    #[test]
    fn a_drained_group_copy_is_delivered_to_the_chosen_member_only() {
        let msg = message("t/1");
        let targets: Taken = vec![
            session("a", &["$share/g/t/#"]),
            session("c", &["$share/g/t/#"]),
        ];
        let m = group_members(&targets, &groups(&[("g", "t/#")]), 0, &[]);
        let d: Vec<bool> = targets
            .iter()
            .zip(&m)
            .map(|((id, subs), g)| delivery_for(id, subs, &msg, g).is_some())
            .collect();
        assert_eq!(d, vec![true, false]);
        // A group this node was not assigned: no member gets it from the drain.
        let m = group_members(&targets, &groups(&[("other", "t/#")]), 0, &[]);
        assert!(targets
            .iter()
            .zip(&m)
            .all(|((id, subs), g)| delivery_for(id, subs, &msg, g).is_none()));
    }

    #[test]
    fn plain_subscriptions_of_every_session_match_as_usual() {
        let msg = message("plain/x");
        let targets: Taken = vec![session("a", &["plain/#"]), session("b", &["other"])];
        let m = group_members(&targets, &LocalGroups::default(), 0, &[]);
        assert!(delivery_for("a", &targets[0].1, &msg, &m[0]).is_some());
        assert!(delivery_for("b", &targets[1].1, &msg, &m[1]).is_none());
    }
}
