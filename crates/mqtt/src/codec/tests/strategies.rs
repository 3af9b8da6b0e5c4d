//! Proptest strategies for every packet of every version, and [`expected`]: what a
//! receiver of a packet encoded for one version gets back.

use super::*;

const VARINT_MAX: u32 = 268_435_455;

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/ é€😀]{0,6}"
}
fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9/é]{1,8}"
}
fn filter() -> impl Strategy<Value = String> {
    "[a-z0-9/+#]{0,8}"
}
fn bin() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}
fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    prop::collection::vec((text(), text()), 0..3)
}
pub(super) fn opt<T: std::fmt::Debug>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}
fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}
fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_filter_map("defined reason code", ReasonCode::from_u8)
}
fn ack_props() -> impl Strategy<Value = AckProperties> {
    (opt(text()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            opt(any::<u32>()),
            opt(1..=u16::MAX),
            opt(1..=u32::MAX),
            opt(any::<u16>()),
        ),
        (
            opt(any::<bool>()),
            opt(any::<bool>()),
            users(),
            opt(text()),
            opt(bin()),
        ),
    )
        .prop_map(
            |((sei, rm, mps, tam), (rri, rpi, up, am, ad))| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_data: if am.is_some() { ad } else { None },
                authentication_method: am,
            },
        )
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        opt(any::<u32>()),
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(text()),
        opt(topic_name()),
        opt(bin()),
        users(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(proto: Protocol) -> impl Strategy<Value = Packet> {
    let will = opt((topic_name(), bin(), qos(), any::<bool>(), will_props())).prop_map(|w| {
        w.map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
    });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        opt(text()),
        opt(bin()),
        connect_props(),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                if !proto.is_v5() && password.is_some() && username.is_none() {
                    username = Some(String::new()); // [MQTT-3.1.2-22]
                }
                Packet::Connect(Box::new(Connect {
                    protocol: proto,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    let a = (
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(0..=1u8),
        opt(any::<bool>()),
        opt(1..=u32::MAX),
        opt(text()),
    );
    let b = (
        opt(any::<u16>()),
        opt(text()),
        users(),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    let c = (
        opt(any::<u16>()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(bin()),
    );
    (any::<bool>(), reason(), a, b, c).prop_map(|(session_present, code, a, b, c)| {
        Packet::ConnAck(Box::new(ConnAck {
            session_present,
            code,
            properties: ConnAckProperties {
                session_expiry_interval: a.0,
                receive_maximum: a.1,
                maximum_qos: a.2,
                retain_available: a.3,
                maximum_packet_size: a.4,
                assigned_client_identifier: a.5,
                topic_alias_maximum: b.0,
                reason_string: b.1,
                user_properties: b.2,
                wildcard_subscription_available: b.3,
                subscription_identifiers_available: b.4,
                shared_subscription_available: b.5,
                server_keep_alive: c.0,
                response_information: c.1,
                server_reference: c.2,
                authentication_method: c.3,
                authentication_data: c.4,
            },
        }))
    })
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(1..=u16::MAX),
        opt(topic_name()),
        opt(bin()),
        users(),
        prop::collection::vec(1..=VARINT_MAX, 0..3),
        opt(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

fn publish(v5: bool) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(String::new()), topic_name()],
        1..=u16::MAX,
        publish_props(),
        bin(),
    )
        .prop_map(
            move |(qos, dup, retain, mut topic, id, properties, payload)| {
                if topic.is_empty() && (!v5 || properties.topic_alias.is_none()) {
                    topic = "t".into();
                }
                let q = qos != QoS::AtMostOnce;
                Publish {
                    dup: dup && q,
                    qos,
                    retain,
                    topic,
                    packet_id: q.then_some(id),
                    properties: properties.into(),
                    payload,
                }
            },
        )
}

fn pub_resp() -> impl Strategy<Value = PubResp> {
    (1..=u16::MAX, reason(), ack_props()).prop_map(|(packet_id, reason, properties)| PubResp {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let opts = (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(|(qos, nl, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: [
                RetainHandling::SendAlways,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ][rh as usize],
        }
    });
    let f = (filter(), opts).prop_map(|(filter, options)| SubscribeFilter { filter, options });
    (
        1..=u16::MAX,
        prop::collection::vec(f, 1..4),
        opt(1..=VARINT_MAX),
        users(),
    )
        .prop_map(
            |(packet_id, filters, subscription_identifier, user_properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    subscription_identifier,
                    user_properties,
                })
            },
        )
}

pub(super) fn packet(proto: Protocol) -> BoxedStrategy<Packet> {
    let v5 = proto.is_v5();
    let mut arms: Vec<BoxedStrategy<Packet>> = vec![
        connect(proto).boxed(),
        connack().boxed(),
        publish(v5).prop_map(Packet::Publish).boxed(),
        pub_resp().prop_map(Packet::PubAck).boxed(),
        pub_resp().prop_map(Packet::PubRec).boxed(),
        pub_resp().prop_map(Packet::PubRel).boxed(),
        pub_resp().prop_map(Packet::PubComp).boxed(),
        subscribe().boxed(),
        (
            1..=u16::MAX,
            prop::collection::vec(reason(), 0..4),
            ack_props(),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        (1..=u16::MAX, prop::collection::vec(filter(), 1..4), users())
            .prop_map(|(packet_id, filters, user_properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    user_properties,
                })
            })
            .boxed(),
        (
            1..=u16::MAX,
            prop::collection::vec(reason(), 0..4),
            ack_props(),
        )
            .prop_map(|(packet_id, reasons, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (
            reason(),
            opt(any::<u32>()),
            opt(text()),
            users(),
            opt(text()),
        )
            .prop_map(|(reason, sei, rs, up, sr)| {
                Packet::Disconnect(Box::new(Disconnect {
                    reason,
                    properties: DisconnectProperties {
                        session_expiry_interval: sei,
                        reason_string: rs,
                        user_properties: up,
                        server_reference: sr,
                    },
                }))
            })
            .boxed(),
    ];
    if v5 {
        arms.push(
            (reason(), opt(text()), opt(bin()), opt(text()), users())
                .prop_map(|(reason, am, ad, rs, up)| {
                    Packet::Auth(Box::new(Auth {
                        reason,
                        properties: AuthProperties {
                            authentication_method: am,
                            authentication_data: ad,
                            reason_string: rs,
                            user_properties: up,
                        },
                    }))
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

pub(super) fn any_proto() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

/// What a receiver of `p` encoded for `proto` gets back: v5-only fields dropped and
/// v5 codes folded onto their v3 equivalents for 3.1/3.1.1.
pub(super) fn expected(p: &Packet, proto: Protocol) -> Packet {
    if proto.is_v5() {
        return p.clone();
    }
    let mut p = p.clone();
    match &mut p {
        Packet::Connect(c) => {
            c.properties = Default::default();
            if let Some(w) = &mut c.will {
                w.properties = Default::default();
            }
        }
        Packet::ConnAck(c) => {
            c.code = ReasonCode::from_v3_connack(c.code.to_v3_connack()).unwrap();
            c.properties = Default::default();
        }
        Packet::Publish(p) => p.properties = Default::default(),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.reason = ReasonCode::Success;
            r.properties = Default::default();
        }
        Packet::Subscribe(s) => {
            s.subscription_identifier = None;
            s.user_properties.clear();
            for f in &mut s.filters {
                f.options = SubscriptionOptions {
                    qos: f.options.qos,
                    ..Default::default()
                };
            }
        }
        Packet::SubAck(s) => {
            s.properties = Default::default();
            for r in &mut s.reasons {
                if r.as_u8() > 2 {
                    *r = ReasonCode::UnspecifiedError;
                }
            }
        }
        Packet::Unsubscribe(u) => u.user_properties.clear(),
        Packet::UnsubAck(u) => {
            u.reasons.clear();
            u.properties = Default::default();
        }
        Packet::Disconnect(d) => **d = Default::default(),
        Packet::PingReq | Packet::PingResp | Packet::Auth(_) => {}
    }
    p
}

pub(super) fn proto_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    any_proto().prop_flat_map(|proto| (Just(proto), packet(proto)))
}

/// The varying fields of a [`Delivery`]: QoS, retain, dup, packet id, topic alias,
/// send topic, subscription ids, message expiry.
pub(super) type DeliveryParts = (
    QoS,
    bool,
    bool,
    u16,
    Option<u16>,
    bool,
    Vec<u32>,
    Option<u32>,
);

/// A v5 PUBLISH that can be fanned out, and one delivery of it.
pub(super) fn publish_and_delivery() -> impl Strategy<Value = (Publish, DeliveryParts)> {
    (
        publish(true),
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            1..=u16::MAX,
            opt(1..=u16::MAX),
            any::<bool>(),
            prop::collection::vec(1..=VARINT_MAX, 0..4),
            opt(any::<u32>()),
        ),
    )
        .prop_map(|(mut p, d)| {
            if p.topic.is_empty() {
                p.topic = "t".into();
            }
            (p, d)
        })
}
