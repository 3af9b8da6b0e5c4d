//! [`SharedPublish`] (one encoding shared by every subscriber) against the plain
//! encoder and decoder.

use super::strategies::*;
use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// SharedPublish writes exactly encoded_len bytes, the same bytes as encoding the
    /// equivalent Publish, and they decode to that Publish, for 3.1.1 and 5.0.
    #[test]
    fn shared_publish_matches_plain_encoding((publ, d) in publish_and_delivery()) {
        let (qos, retain, dup, id, topic_alias, send_topic, subs, message_expiry) = d;
        let q = qos != QoS::AtMostOnce;
        let delivery = Delivery {
            qos,
            retain,
            dup: dup && q,
            packet_id: q.then_some(id),
            topic_alias,
            send_topic: send_topic || topic_alias.is_none(),
            subscription_ids: &subs,
            message_expiry,
        };
        let shared = SharedPublish::new(&publ);
        prop_assert_eq!(shared.topic(), publ.topic.as_str());
        prop_assert_eq!(shared.payload(), &publ.payload);
        prop_assert_eq!(shared.message_expiry(), publ.properties.message_expiry_interval);
        for proto in [Protocol::V311, Protocol::V5] {
            let mut out = BytesMut::new();
            shared.encode(proto, &delivery, &mut out);
            prop_assert_eq!(out.len(), shared.encoded_len(proto, &delivery));
            let mut want = shared.to_publish(&delivery);
            if !proto.is_v5() {
                want.topic = publ.topic.clone();
            }
            let plain = enc(&Packet::Publish(want.clone()), proto);
            prop_assert_eq!(&out[..], &plain[..]);
            let want = expected(&Packet::Publish(want), proto);
            prop_assert_eq!(dec(&out, Some(proto)), Ok(Some(want)));
        }
    }
}

#[test]
fn shared_publish_hidden_topic_with_alias() {
    let publ = Publish {
        topic: "sensors/1".into(),
        payload: Bytes::from_static(b"hi"),
        properties: PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(60),
            topic_alias: Some(4),
            subscription_identifiers: vec![9],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let shared = SharedPublish::new(&publ);
    let d = Delivery {
        qos: QoS::AtLeastOnce,
        packet_id: Some(3),
        topic_alias: Some(2),
        send_topic: false,
        subscription_ids: &[1, 300],
        message_expiry: Some(30),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    shared.encode(Protocol::V5, &d, &mut out);
    let Some(Packet::Publish(got)) = dec(&out, Some(Protocol::V5)).unwrap() else {
        panic!()
    };
    assert_eq!(got.topic, "");
    assert_eq!(got.packet_id, Some(3));
    assert_eq!(got.properties.topic_alias, Some(2));
    assert_eq!(got.properties.subscription_identifiers, vec![1, 300]);
    assert_eq!(got.properties.message_expiry_interval, Some(30));
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got, shared.to_publish(&d));
    // In 3.1.1 the topic is always sent and properties are dropped.
    let mut out = BytesMut::new();
    shared.encode(Protocol::V311, &d, &mut out);
    let Some(Packet::Publish(got)) = dec(&out, Some(Protocol::V311)).unwrap() else {
        panic!()
    };
    assert_eq!(got.topic, "sensors/1");
    assert_eq!(got.properties, PublishProperties::default().into());
    assert_eq!(
        SharedPublish::try_new(&Publish {
            topic: "a".repeat(70_000),
            ..Default::default()
        })
        .err(),
        Some(EncodeError::FieldTooLong("topic name"))
    );
}
