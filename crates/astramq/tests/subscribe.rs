//! SUBSCRIBE / UNSUBSCRIBE, topic filters and wildcards, overlapping and
//! shared subscriptions (MQTT 3.1.1 §3.8-3.11, §4.7; MQTT 5.0 §3.8-3.11,
//! §4.7, §4.8.2).

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;

/// Publish every topic in `topics` (QoS 1) then a sentinel on `end`, and
/// return the set of topics `sub` received before the sentinel.
async fn delivered_topics(
    publisher: &mut RawClient,
    sub: &mut RawClient,
    topics: &[&str],
    end: &str,
) -> BTreeSet<String> {
    for t in topics {
        publisher.publish(t, t.as_bytes(), 1, false).await;
    }
    publisher.publish(end, b"end", 1, false).await;
    let mut got = BTreeSet::new();
    loop {
        let p = sub.recv_publish(T).await;
        if p.topic == end {
            return got;
        }
        got.insert(p.topic);
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// [MQTT-4.7.1-2] multi-level wildcard matches the parent and any descendants;
// [MQTT-4.7.1-3] single-level wildcard matches exactly one level (also empty).
async fn wildcards_match(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "pub").await;
    let all = [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "/finance",
        "Sport/tennis",
    ];
    let cases: &[(&str, &[&str])] = &[
        (
            "sport/tennis/player1/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
        ),
        (
            "sport/#",
            &[
                "sport",
                "sport/",
                "sport/tennis",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
        ),
        ("sport/+", &["sport/", "sport/tennis"]),
        ("sport/+/player1", &["sport/tennis/player1"]),
        ("+", &["sport"]),
        (
            "+/+",
            &["sport/", "sport/tennis", "/finance", "Sport/tennis"],
        ),
        ("/+", &["/finance"]),
        (
            "+/tennis/#",
            &[
                "sport/tennis",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
                "Sport/tennis",
            ],
        ),
        // [MQTT-4.7.3-4] matching is case sensitive, no normalisation.
        ("Sport/tennis", &["Sport/tennis"]),
    ];
    for (i, (filter, expected)) in cases.iter().enumerate() {
        let mut s = b.client(v, &format!("sub{i}")).await;
        s.sub(filter, 1).await;
        s.sub("end", 1).await;
        let got = delivered_topics(&mut p, &mut s, &all, "end").await;
        assert_eq!(got, set(expected), "filter {filter:?}");
    }
}
versions_test!(wildcards_match);

// [MQTT-4.7.2-1] filters starting with a wildcard do not match topics that
// start with '$'; a filter naming the '$' level explicitly does.
async fn dollar_topics_not_matched_by_wildcards(v: Version) {
    let b = Broker::start();
    let mut p = b.client(v, "pub").await;
    let mut wild = b.client(v, "wild").await;
    assert_eq!(
        wild.subscribe(&[("#", 1), ("+/x", 1), ("+/+", 1)]).await,
        vec![1, 1, 1]
    );
    let mut explicit = b.client(v, "explicit").await;
    explicit.sub("$test/#", 1).await;

    p.publish("$test/x", b"dollar", 1, false).await;
    p.publish("plain/x", b"plain", 1, false).await;
    let got = explicit.recv_publish(T).await;
    assert_eq!(got.topic, "$test/x", "explicit $ filter receives $ topic");
    // The wildcard subscriber sees the plain message (possibly several copies
    // for overlapping filters) but never the $ one.
    let first = wild.recv_publish(T).await;
    assert_eq!(first.topic, "plain/x");
    loop {
        match wild.read(ABSENCE).await {
            Ok(Packet::Publish(p)) => assert_eq!(p.topic, "plain/x", "{p:?}"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}
versions_test!(dollar_topics_not_matched_by_wildcards);

// [MQTT-3.8.4-6] one SUBACK code per filter, in order; [MQTT-3.9.3-1 area]
// the granted QoS is the requested one when the server supports it.
async fn suback_codes_in_order(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "c").await;
    let codes = c.subscribe(&[("a/2", 2), ("a/0", 0), ("a/1", 1)]).await;
    assert_eq!(codes, vec![2, 0, 1]);
}
versions_test!(suback_codes_in_order);

// [MQTT-3.8.4-3] subscribing again to the same filter replaces the
// subscription (new QoS), it does not add a second one.
async fn resubscribe_replaces(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "c").await;
    c.sub("r/t", 0).await;
    c.sub("r/t", 2).await;
    let mut p = b.client(v, "p").await;
    p.publish("r/t", b"m", 2, false).await;
    let got = c.recv_publish(T).await;
    assert_eq!(got.qos, 2, "new subscription QoS applies");
    c.expect_no_publish(ABSENCE).await; // exactly one copy
}
versions_test!(resubscribe_replaces);

// [MQTT-3.10.4-1] after UNSUBSCRIBE the server stops adding messages;
// [MQTT-3.10.4-4]/[MQTT-3.10.4-5] UNSUBACK is sent even if nothing matched.
async fn unsubscribe_stops_delivery(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "c").await;
    c.sub("u/t", 1).await;
    let mut p = b.client(v, "p").await;
    p.publish("u/t", b"1", 1, false).await;
    assert_eq!(c.recv_publish(T).await.payload, b"1");
    let codes = c.unsubscribe(&["u/t"]).await;
    let nothing = c.unsubscribe(&["never/subscribed"]).await;
    if v.is_v5() {
        assert_eq!(codes, vec![rc::SUCCESS]);
        // 0x11 No subscription existed
        assert_eq!(nothing, vec![0x11]);
    } else {
        assert!(
            codes.is_empty() && nothing.is_empty(),
            "3.1.1 UNSUBACK has no payload"
        );
    }
    p.publish("u/t", b"2", 1, false).await;
    c.expect_no_publish(ABSENCE).await;
}
versions_test!(unsubscribe_stops_delivery);

// [MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (5.0) overlapping subscriptions:
// the message is delivered respecting the maximum QoS of all matching
// subscriptions. Further copies (one per subscription) are allowed, each
// with at most its own subscription's QoS.
async fn overlapping_subscriptions_max_qos(v: Version) {
    let b = Broker::start();
    let mut c = b.client(v, "c").await;
    assert_eq!(
        c.subscribe(&[("o/+", 1), ("o/#", 2), ("o/x", 0)]).await,
        vec![1, 2, 0]
    );
    let mut p = b.client(v, "p").await;
    p.publish("o/x", b"m", 2, false).await;
    let mut copies = vec![c.recv_publish(T).await];
    while let Ok(Packet::Publish(x)) = c.read(ABSENCE).await {
        copies.push(x);
    }
    assert!(
        copies.len() <= 3,
        "at most one copy per matching subscription: {copies:?}"
    );
    assert!(
        copies.iter().any(|x| x.qos == 2),
        "one copy must carry the maximum subscription QoS (2): {copies:?}"
    );
}
versions_test!(overlapping_subscriptions_max_qos);

// [MQTT-4.8.2] shared subscriptions: each message goes to exactly one member
// of the group; the broker spreads them (round-robin expected); a plain
// subscriber and a second group each still get every message.
async fn shared_subscription_distributes(v: Version) {
    let b = Broker::start();
    let mut m1 = b.client(v, "m1").await;
    let mut m2 = b.client(v, "m2").await;
    let mut other_group = b.client(v, "g2").await;
    let mut plain = b.client(v, "plain").await;
    m1.sub("$share/g1/s/+", 1).await;
    m2.sub("$share/g1/s/+", 1).await;
    other_group.sub("$share/g2/s/#", 1).await;
    plain.sub("s/+", 1).await;

    let mut p = b.client(v, "p").await;
    let n = 10;
    for i in 0..n {
        p.publish(&format!("s/{i}"), i.to_string().as_bytes(), 1, false)
            .await;
    }
    assert_eq!(plain.recv_publishes(n, T).await.len(), n);
    assert_eq!(other_group.recv_publishes(n, T).await.len(), n);
    // Members: collect until both are quiet; every message exactly once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_member = [0usize; 2];
    for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
        while let Ok(Packet::Publish(x)) = m.read(ABSENCE).await {
            *seen.entry(x.payload_str()).or_default() += 1;
            per_member[i] += 1;
            if x.qos == 1 {
                m.send(&encode_ack(PUBACK, x.pid, 0, v)).await;
            }
        }
    }
    assert_eq!(
        seen.len(),
        n,
        "every message delivered to the group: {seen:?}"
    );
    assert!(
        seen.values().all(|&c| c == 1),
        "no message to two members: {seen:?}"
    );
    assert!(
        per_member[0] > 0 && per_member[1] > 0,
        "both members get messages (round-robin): {per_member:?}"
    );
}
versions_test!(shared_subscription_distributes);

// Unsubscribing one member moves all traffic to the remaining member.
async fn shared_subscription_unsubscribe(v: Version) {
    let b = Broker::start();
    let mut m1 = b.client(v, "m1").await;
    let mut m2 = b.client(v, "m2").await;
    m1.sub("$share/g/t", 0).await;
    m2.sub("$share/g/t", 0).await;
    m2.unsubscribe(&["$share/g/t"]).await;
    let mut p = b.client(v, "p").await;
    for i in 0..4 {
        p.publish("t", format!("{i}").as_bytes(), 0, false).await;
    }
    assert_eq!(m1.recv_publishes(4, T).await.len(), 4);
    m2.expect_no_publish(ABSENCE).await;
}
versions_test!(shared_subscription_unsubscribe);

// [MQTT-4.7.1-1 area] invalid topic filters ('#' not last, wildcard mixed
// into a level): v5 SUBACK 0x8F (Topic Filter invalid) or DISCONNECT;
// 3.1.1 SUBACK 0x80 or close.
// mosquitto 2.0.11 accepts "$share/g" in v5.
async fn invalid_filters_rejected(v: Version) {
    let b = Broker::start();
    let mut filters = vec!["a/#/b", "a+/b", "a/b#"];
    if v.is_v5() {
        // [MQTT-4.8.2-1]/[MQTT-4.8.2-2] a share name must be followed by "/"
        // and a filter (3.1.1 has no shared subscriptions: "$share/g" is an
        // ordinary filter there).
        filters.push("$share/g");
    }
    for filter in filters {
        let mut c = b.client(v, "c").await;
        let pid = c.pid();
        c.send(&encode_subscribe(
            v,
            pid,
            &Props::new(),
            &[(filter, SubOpts::qos(0))],
        ))
        .await;
        match c.read(T).await {
            Ok(Packet::Suback(s)) => {
                let want = v.pick(rc::V3_FAILURE, 0x8F);
                assert_eq!(s.codes, vec![want], "filter {filter:?}");
            }
            Ok(Packet::Disconnect(r, _)) => {
                assert!(v.is_v5());
                assert!(
                    [0x81, 0x82, 0x8F].contains(&r),
                    "filter {filter:?}: DISCONNECT {r:#x}"
                );
                c.expect_closed(T).await;
            }
            Err(ReadError::Closed) => {}
            other => panic!("filter {filter:?}: {other:?}"),
        }
    }
}
versions_test!(invalid_filters_rejected);

// rumqttc v4/v5 subscribers with wildcards receive a mosquitto_pub message.
#[tokio::test]
async fn rumqttc_subscribers_receive() {
    let b = Broker::start();
    let mut s4 = V4Client::connect(&b, "r4").await;
    let mut s5 = V5Client::connect(&b, "r5").await;
    assert_eq!(
        s4.subscribe("r/+/x", rumqttc::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    s5.subscribe("r/#", rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
        .await;
    let out = mosquitto_pub(&b, &["-t", "r/a/x", "-m", "hello", "-q", "2"]).await;
    assert!(out.status.success(), "{out:?}");
    let p4 = s4.recv_publish(T).await;
    assert_eq!((&p4.topic[..], &p4.payload[..]), ("r/a/x", &b"hello"[..]));
    assert_eq!(p4.qos, rumqttc::QoS::AtLeastOnce);
    let p5 = s5.recv_publish(T).await;
    assert_eq!(&p5.topic[..], b"r/a/x");
    assert_eq!(p5.qos, rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
}

// mosquitto_sub with a wildcard receives messages published by others.
async fn mosquitto_sub_receives(v: Version) {
    let b = Broker::start();
    let mut sub = BgSub::spawn(&b, &["-V", v.cli(), "-t", "ms/#", "-v", "-q", "1"]);
    assert_eq!(sub.probe(&b, "ms/probe", b"p").await, "ms/probe p");
    let mut p = b.client(v, "p").await;
    p.publish("ms/x", b"payload", 1, false).await;
    // Probes sent before the first one arrived may still be in flight.
    loop {
        let l = sub.next_line(T).await.expect("mosquitto_sub line");
        if l != "ms/probe p" {
            assert_eq!(l, "ms/x payload");
            break;
        }
    }
}
versions_test!(mosquitto_sub_receives);
