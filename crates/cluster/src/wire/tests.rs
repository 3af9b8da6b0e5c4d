//! Round trips of every record and value format, and what a bad record does.

use std::sync::Arc;
use std::time::Instant;

use broker::mailbox::{Delivery as Queued, Journaled};
use broker::message::Message;
use broker::session::{Outbound, PendingWill, SessionSnapshot, Subscription};
use bytes::Bytes;
use mqtt::{Publish, PublishProperties, QoS, RetainHandling, SubscriptionOptions};

use super::parts::*;
use super::*;

fn message() -> Arc<Message> {
    let p = Publish {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(9),
        properties: PublishProperties {
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        }
        .into(),
        payload: Bytes::from_static(b"hello"),
        ..Default::default()
    };
    Arc::new(Message::new(&p, Some("pub-1".into()), Instant::now()))
}

#[test]
fn an_entry_in_another_format_is_refused_not_misread() {
    let mut out = bus_entry();
    put_kick(&mut out, "c1", 7, "n2");
    out[0] = 0x01; // what an entry without the format byte starts with
    let e = read_records(&out).unwrap_err();
    assert!(e.0.contains("format 0x01") && e.0.contains("0xb1"), "{e:?}");
}

#[test]
fn counts_beyond_16_bits_are_capped_not_wrapped() {
    assert_eq!(capped(3), 3);
    assert_eq!(capped(70_000), u16::MAX);
}

#[test]
fn message_and_kick_round_trip() {
    let msg = message();
    let mut out = bus_entry();
    let groups = vec![("g".to_string(), "a/+".to_string())];
    put_message(
        &mut out,
        msg.origin.as_deref(),
        "1700000000000:n1:2a",
        &groups,
        &publish_bytes(&msg),
    );
    put_kick(&mut out, "c1", 7, "n2");
    let records = read_records(&out).unwrap();
    assert_eq!(records.len(), 2);
    match &records[0] {
        BusRecord::Message { msg: m, groups: g } => {
            assert_eq!(m.topic(), "a/b");
            assert_eq!(m.qos, QoS::AtLeastOnce);
            assert!(m.retain);
            assert_eq!(m.origin.as_deref(), Some("pub-1"));
            assert_eq!(m.id.get().map(|s| &**s), Some("1700000000000:n1:2a"));
            assert_eq!(m.publish.payload().as_ref(), b"hello");
            let left = m.remaining_expiry(Instant::now()).unwrap();
            assert!((59..=60).contains(&left), "{left}");
            assert_eq!(g.0, groups);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&records[1], BusRecord::Kick { client_id, epoch: 7, to } if client_id == "c1" && to == "n2")
    );
}

#[test]
fn a_session_handover_round_trips() {
    let msg = message();
    let d = |qos| Queued {
        msg: msg.clone(),
        qos,
        retain: false,
        sub_ids: vec![3, 4],
        journal: (qos == QoS::ExactlyOnce).then(|| {
            Box::new(Journaled {
                key: "j1".into(),
                packet_id: 21,
            })
        }),
    };
    let snapshot = SessionSnapshot {
        expiry_secs: 300,
        subscriptions: vec![(
            "a/+".into(),
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
                id: Some(3),
            },
        )],
        inflight: vec![
            (7, Outbound::Published(d(QoS::AtLeastOnce))),
            (9, Outbound::Released(Some("k9".into()))),
        ],
        inbound_qos2: vec![11],
        queued: vec![d(QoS::ExactlyOnce)],
        unsettled: vec![(12, "1700000000000:n1:7".into())],
        maybe_sent: false,
    };
    let mut out = bus_entry();
    put_handover(&mut out, "c", 5, Some(&snapshot));
    put_handover(&mut out, "d", 6, None);
    let records = read_records(&out).unwrap();
    let BusRecord::Handover {
        client_id,
        epoch: 5,
        session: Some(s),
    } = &records[0]
    else {
        panic!("{:?}", records[0]);
    };
    assert_eq!(client_id, "c");
    assert_eq!(s.expiry_secs, 300);
    assert_eq!(s.subscriptions, snapshot.subscriptions);
    assert_eq!(s.inbound_qos2, vec![11]);
    assert_eq!(s.unsettled, snapshot.unsettled);
    assert!(
        matches!(&s.inflight[0], (7, Outbound::Published(q)) if q.qos == QoS::AtLeastOnce && q.sub_ids == vec![3, 4])
    );
    assert!(matches!(&s.inflight[1], (9, Outbound::Released(Some(k))) if &**k == "k9"));
    assert_eq!(s.queued.len(), 1);
    assert_eq!(s.queued[0].msg.publish.payload().as_ref(), b"hello");
    assert_eq!(
        s.queued[0].journal.as_deref(),
        Some(&Journaled {
            key: "j1".into(),
            packet_id: 21
        }),
        "a journaled delivery keeps its key and reserved packet id across nodes"
    );
    assert!(matches!(
        &records[1],
        BusRecord::Handover {
            session: None,
            epoch: 6,
            ..
        }
    ));
    for cut in 0..out.len() {
        let _ = read_records(&out[..cut]);
    }
}

#[test]
fn truncated_records_are_errors_not_panics() {
    let msg = message();
    let mut out = bus_entry();
    put_message(&mut out, None, "m1", &[], &publish_bytes(&msg));
    for cut in 0..out.len() {
        let _ = read_records(&out[..cut]);
    }
    assert!(read_records(&out[..out.len() - 1]).is_err());
}

#[test]
fn retained_value_round_trips_and_expires() {
    let msg = message();
    let stored = retained_value(&msg);
    let back = read_retained(&stored).unwrap().unwrap();
    assert_eq!(back.topic(), "a/b");
    let mut expired = stored.clone();
    expired[1..9].copy_from_slice(&1u64.to_be_bytes());
    assert!(read_retained(&expired).unwrap().is_none());
    let mut future = stored.clone();
    future[0] = RETAINED_FORMAT + 1;
    let e = read_retained(&future).unwrap_err().to_string();
    assert!(e.contains("format 0x53; this node reads 0x52"), "{e}");
}

#[test]
fn journal_entries_and_subscriptions_round_trip() {
    let d = Queued {
        msg: message(),
        qos: QoS::AtLeastOnce,
        retain: true,
        sub_ids: vec![9],
        journal: Some(Box::new(Journaled {
            key: "k".into(),
            packet_id: 300,
        })),
    };
    match read_journal(&journal_value(&d)).unwrap() {
        JournalEntry::Pending(q) => {
            assert_eq!(
                (q.qos, q.retain, q.sub_ids.clone()),
                (QoS::AtLeastOnce, true, vec![9])
            );
            assert_eq!(q.journal.map(|j| j.packet_id), Some(300));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_journal(&journal_received(300)).unwrap(),
        JournalEntry::Received(300)
    ));
    assert!(
        read_journal(b"X").is_err(),
        "an unknown kind is an error, not a panic"
    );
    let sub = Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        },
        id: Some(77),
    };
    assert_eq!(read_subscription(&subscription_value(&sub)).unwrap(), sub);
    let mut other = subscription_value(&sub);
    other[0] = 0x01;
    let e = read_subscription(&other).unwrap_err().to_string();
    assert!(e.contains("stored subscription in format 0x01"), "{e}");
}

#[test]
fn a_stored_will_round_trips_with_its_delay_and_properties() {
    let w = PendingWill {
        client_id: "c".into(),
        username: Some("u".into()),
        will: mqtt::Will {
            topic: "dead/c".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: mqtt::WillProperties {
                will_delay_interval: Some(5),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        },
    };
    let back = read_will("c", &will_value(&w)).unwrap();
    assert_eq!(back.will, w.will);
    assert_eq!(back.username.as_deref(), Some("u"));
    assert!(read_will("c", b"\x00").is_err());
    let mut other = will_value(&w);
    other[0] = 0x01;
    let e = read_will("c", &other).unwrap_err().to_string();
    assert!(e.contains("stored will in format 0x01"), "{e}");
}

#[test]
fn message_keys_read_as_the_format_they_replace_and_sort_by_time_then_sequence() {
    for (ms, node, seq) in [
        (0, "n1", 0),
        (1_700_000_000_000, "node-a", 0x2a),
        (9_999_999_999_999, "n", u64::MAX),
        (12_345_678_901_234_567, "n2", 7),
    ] {
        assert_eq!(
            message_key(ms, node, seq),
            format!("{ms:013}:{node}:{seq:016x}")
        );
    }
    assert!(
        message_key(1_700_000_000_000, "n1", 0xff) < message_key(1_700_000_000_000, "n1", 0x100)
    );
    assert!(message_key(999_999_999_999, "n1", 5) < message_key(1_000_000_000_000, "n1", 0));
}
