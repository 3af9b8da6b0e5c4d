//! Codec benchmarks: decoding and encoding a PUBLISH with a 64-byte payload in MQTT
//! 3.1.1 and 5.0, and `SharedPublish::encode` per subscriber.

use std::hint::black_box;

use astramq_mqtt::codec::{decode, encode, Delivery, SharedPublish};
use astramq_mqtt::{Packet, Protocol, Publish, PublishProperties, QoS};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn sample() -> Publish {
    Publish {
        qos: QoS::AtLeastOnce,
        topic: "building/7/floor/3/sensor/temperature".into(),
        packet_id: Some(42),
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            user_properties: vec![("origin".into(), "gateway-12".into())],
            ..Default::default()
        }
        .into(),
        payload: Bytes::from(vec![b'x'; 64]),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let publish = Packet::Publish(sample());
    for (name, proto) in [("v311", Protocol::V311), ("v5", Protocol::V5)] {
        let mut wire = BytesMut::new();
        encode(&publish, proto, &mut wire).unwrap();
        let wire = wire.freeze();

        let mut g = c.benchmark_group(format!("publish64_{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("decode", |b| {
            let mut buf = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&wire);
                black_box(decode(&mut buf, Some(proto), 1 << 20).unwrap())
            })
        });
        g.bench_function("encode", |b| {
            let mut out = BytesMut::with_capacity(256);
            b.iter(|| {
                out.clear();
                encode(black_box(&publish), proto, &mut out).unwrap();
                black_box(out.len())
            })
        });
        let shared = SharedPublish::new(&sample());
        let subs = [7u32];
        g.bench_function("shared_encode_per_subscriber", |b| {
            let mut out = BytesMut::with_capacity(256);
            let mut id = 0u16;
            b.iter(|| {
                out.clear();
                id = id.wrapping_add(1).max(1);
                let d = Delivery {
                    qos: QoS::AtLeastOnce,
                    packet_id: Some(id),
                    topic_alias: Some(3),
                    send_topic: true,
                    subscription_ids: &subs,
                    message_expiry: Some(3599),
                    ..Default::default()
                };
                shared.encode(proto, black_box(&d), &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

// `criterion_group!` defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
use group::benches;
criterion_main!(benches);
