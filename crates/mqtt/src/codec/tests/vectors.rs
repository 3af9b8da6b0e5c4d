//! Fixed vectors: exact bytes for each protocol version, the short forms of v5, encode
//! errors, size limits and incomplete input.

use super::*;

#[test]
fn connect_v311_vector() {
    let c = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        ..Default::default()
    };
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), Protocol::V311);
    let body = connect_body("MQTT", 4, 0xC2, &[0, 1, b'c', 0, 1, b'u', 0, 1, b'p']);
    assert_eq!(&bytes[..], &pkt(0x10, &body)[..]);
    assert_eq!(
        dec(&bytes, None).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
}

#[test]
fn connect_v31_uses_mqisdp() {
    let c = Connect {
        protocol: Protocol::V31,
        client_id: "x".into(),
        ..Default::default()
    };
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), Protocol::V31);
    assert_eq!(&bytes[2..10], b"\x00\x06MQIsdp");
    assert_eq!(bytes[10], 3);
    assert_eq!(
        dec(&bytes, None).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
}

#[test]
fn v5_short_forms() {
    let ack = |reason, rs: Option<&str>| {
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason,
            properties: AckProperties {
                reason_string: rs.map(Into::into),
                ..Default::default()
            },
        })
    };
    let v5 = Protocol::V5;
    assert_eq!(
        &enc(&ack(ReasonCode::Success, None), v5)[..],
        [0x40, 2, 0, 1]
    );
    let no_match = ReasonCode::NoMatchingSubscribers;
    assert_eq!(&enc(&ack(no_match, None), v5)[..], [0x40, 3, 0, 1, 0x10]);
    assert_eq!(
        &enc(&ack(ReasonCode::Success, Some("r")), v5)[..],
        [0x40, 8, 0, 1, 0, 4, 0x1F, 0, 1, b'r']
    );
    let disc = Packet::Disconnect(Box::default());
    assert_eq!(&enc(&disc, v5)[..], [0xE0, 0]);
    assert_eq!(&enc(&disc, Protocol::V311)[..], [0xE0, 0]);
    let d2 = Packet::Disconnect(Box::new(Disconnect {
        reason: ReasonCode::ServerBusy,
        ..Default::default()
    }));
    assert_eq!(&enc(&d2, v5)[..], [0xE0, 1, 0x89]);
    assert_eq!(&enc(&Packet::Auth(Box::default()), v5)[..], [0xF0, 0]);
    // Decoding accepts every short form.
    let pubrel = pkt(0x62, &[0, 9]);
    let want = Packet::PubRel(PubResp {
        packet_id: 9,
        ..Default::default()
    });
    assert_eq!(dec(&pubrel, Some(v5)).unwrap(), Some(want));
    assert_eq!(dec(&[0xE0, 0], Some(v5)).unwrap(), Some(disc));
    assert_eq!(
        dec(&[0xF0, 0], Some(v5)).unwrap(),
        Some(Packet::Auth(Box::default()))
    );
    let d1 = Packet::Disconnect(Box::new(Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        ..Default::default()
    }));
    assert_eq!(dec(&[0xE0, 1, 4], Some(v5)).unwrap(), Some(d1));
}

#[test]
fn v3_specific_encodings() {
    let v3 = Protocol::V311;
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
        ],
        ..Default::default()
    });
    assert_eq!(&enc(&suback, v3)[..], [0x90, 6, 0, 1, 0, 2, 0x80, 0x80]);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 7,
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        ..Default::default()
    });
    assert_eq!(&enc(&unsuback, v3)[..], [0xB0, 2, 0, 7]);
    let connack = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        code: ReasonCode::ServerBusy,
        ..Default::default()
    }));
    assert_eq!(&enc(&connack, v3)[..], [0x20, 2, 1, 3]);
    let want = ConnAck {
        session_present: true,
        code: ReasonCode::ServerUnavailable,
        ..Default::default()
    };
    assert_eq!(
        dec(&[0x20, 2, 1, 3], Some(v3)).unwrap(),
        Some(Packet::ConnAck(Box::new(want)))
    );
}

#[test]
fn encode_errors() {
    let auth = Packet::Auth(Box::default());
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&auth, Protocol::V311, &mut out),
        Err(EncodeError::NotInProtocol("AUTH"))
    );
    assert_eq!(encoded_len(&auth, Protocol::V311), 0);
    let long = Packet::Publish(Publish {
        topic: "a".repeat(65_536),
        ..Default::default()
    });
    assert_eq!(
        encode(&long, Protocol::V5, &mut out),
        Err(EncodeError::FieldTooLong("topic name"))
    );
    assert!(out.is_empty(), "nothing appended on error");
    let ok = Packet::Publish(Publish {
        topic: "a".repeat(65_535),
        ..Default::default()
    });
    assert!(encode(&ok, Protocol::V5, &mut out).is_ok());
    let big_sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            ..Default::default()
        }],
        subscription_identifier: Some(268_435_456),
        ..Default::default()
    });
    assert_eq!(
        encode(&big_sub, Protocol::V5, &mut out),
        Err(EncodeError::TooLarge)
    );
}

#[test]
fn too_large_from_fixed_header_alone() {
    // PUBLISH announcing 1000 bytes, only the fixed header present.
    let mut b = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]);
    assert_eq!(
        decode(&mut b, Some(Protocol::V311), 100),
        Err(DecodeError::TooLarge {
            size: 1003,
            max: 100
        })
    );
    // Exactly at the limit is fine (once complete).
    let p = pkt(0x30, &[0, 1, b'a', 1, 2, 3]);
    let mut b = BytesMut::from(&p[..]);
    assert!(decode(&mut b, Some(Protocol::V311), p.len())
        .unwrap()
        .is_some());
    let mut b = BytesMut::from(&p[..]);
    assert!(matches!(
        decode(&mut b, Some(Protocol::V311), p.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn incomplete_remaining_length_waits() {
    assert_eq!(dec(&[], None).unwrap(), None);
    assert_eq!(dec(&[0x30], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x80], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x80, 0x80, 0x80], None).unwrap(), None);
    assert_eq!(dec(&[0x30, 0x05, 0, 1], None).unwrap(), None);
}

#[test]
fn decoded_payload_does_not_pin_read_buffer() {
    let p = pkt(0x30, &[0, 1, b'a', 9, 9, 9]);
    let mut b = BytesMut::from(&p[..]);
    b.extend_from_slice(&[0xC0, 0]);
    let Some(Packet::Publish(publ)) = decode(&mut b, None, MAX).unwrap() else {
        panic!()
    };
    assert_eq!(&publ.payload[..], [9, 9, 9]);
    // The payload is its own allocation, not a view into `b`.
    let range = b.as_ptr() as usize..b.as_ptr() as usize + b.capacity();
    assert!(!range.contains(&(publ.payload.as_ptr() as usize)));
    assert_eq!(decode(&mut b, None, MAX).unwrap(), Some(Packet::PingReq));
}
