//! What a benchmark connection does with its packets: a [`Publisher`] stamps PUBLISH
//! packets within its rate and in-flight window and settles their acknowledgements;
//! a [`Subscriber`] checks each stamp against what it expects (sequence, duplicates,
//! strangers) and records latency. No I/O: the connection's loop in `client.rs` feeds
//! them packets and writes what they encode.

use super::*;

/// An in-flight slot of a QoS 1/2 publisher; packet id = slot index + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(u64),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// The largest QoS 2 window over 3.1.1, whose brokers never say how many unreleased
/// QoS 2 messages they accept: AstraMQ's default `limits.receive_maximum`, beyond
/// which it closes the connection.
pub const V311_QOS2_WINDOW: u16 = 100;

/// A publisher's in-flight window: `inflight`, capped by the broker's Receive Maximum
/// (MQTT 5) or, at QoS 2 over 3.1.1, by [`V311_QOS2_WINDOW`]; 0 at QoS 0.
fn window(qos: QoS, protocol: Protocol, inflight: u16, receive_maximum: u16) -> u16 {
    let cap = match qos {
        QoS::AtMostOnce => return 0,
        QoS::ExactlyOnce if !protocol.is_v5() => receive_maximum.min(V311_QOS2_WINDOW),
        _ => receive_maximum,
    };
    inflight.min(cap).max(1)
}

/// A publisher's state.
#[derive(Debug)]
pub(super) struct Publisher {
    pub(super) index: u32,
    /// The PUBLISH to encode, with a zero payload the stamp is written over.
    packet: Packet,
    payload_len: usize,
    qos: QoS,
    protocol: Protocol,
    period: Option<Duration>,
    next_send: Instant,
    seq: u64,
    slots: Vec<Slot>,
    free: Vec<u16>,
    pub(super) acked: SeqSet,
}

impl Publisher {
    pub(super) fn new(index: u32, topic: &str, opts: &ClientOptions, conn: &Conn) -> Publisher {
        let window = window(opts.qos, opts.protocol, opts.inflight, conn.receive_maximum);
        let period = opts.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        // Start publishers at spread-out offsets so a rate-limited fleet does not send
        // in lockstep bursts.
        let offset = period.map_or(Duration::ZERO, |p| {
            p.mul_f64((index as f64 * 0.618_033_988_7).fract())
        });
        Publisher {
            index,
            packet: Packet::Publish(Publish {
                qos: opts.qos,
                topic: topic.to_string(),
                payload: Bytes::from(vec![0u8; opts.payload]),
                ..Publish::default()
            }),
            payload_len: opts.payload,
            qos: opts.qos,
            protocol: opts.protocol,
            period,
            next_send: Instant::now() + offset,
            seq: 0,
            slots: vec![Slot::Free; window as usize],
            // Popped from the end: ids 1, 2, 3, … first.
            free: (0..window).rev().collect(),
            acked: SeqSet::new(),
        }
    }

    /// Whether a QoS 1/2 window slot is free (always true at QoS 0).
    pub(super) fn has_room(&self) -> bool {
        self.qos == QoS::AtMostOnce || !self.free.is_empty()
    }

    /// Whether nothing is in flight.
    pub(super) fn settled(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// When to wake up to send the next message, for a rate-limited publisher with room.
    pub(super) fn wake_at(&self, pending: usize) -> Option<Instant> {
        self.period?;
        (self.has_room() && pending < WRITE_HIGH_WATER).then_some(self.next_send)
    }

    /// Encodes as many publishes into `out` as rate, window and buffer allow.
    pub(super) fn fill(
        &mut self,
        out: &mut BytesMut,
        now: Instant,
        run: u32,
        local: &mut Local,
    ) -> Result<(), ClientError> {
        let mut stamp_ns = 0;
        while out.len() < WRITE_HIGH_WATER && self.has_room() {
            if let Some(period) = self.period {
                if now < self.next_send {
                    break;
                }
                self.next_send += period;
                // Timers fire a millisecond or two late, so messages that fell due
                // meanwhile go out together; after a longer stall (window full, slow
                // socket) the lost time is given up rather than sent as a burst.
                if now.saturating_duration_since(self.next_send) > MAX_LAG {
                    self.next_send = now;
                }
            }
            let packet_id = if self.qos == QoS::AtMostOnce {
                None
            } else {
                let slot = self.free.pop().expect("has_room checked");
                self.slots[slot as usize] = Slot::Published(self.seq);
                Some(slot + 1)
            };
            if let Packet::Publish(p) = &mut self.packet {
                p.packet_id = packet_id;
            }
            mqtt::encode(&self.packet, self.protocol, out)?;
            if stamp_ns == 0 {
                // One clock read per burst: a burst is written in one call anyway.
                stamp_ns = now_ns();
            }
            let end = out.len();
            Stamp {
                run,
                publisher: self.index,
                seq: self.seq,
                sent_ns: stamp_ns,
            }
            .write(&mut out[end - self.payload_len..end]);
            self.seq += 1;
            local.sent += 1;
        }
        Ok(())
    }

    /// PUBREC for `packet_id`: counts the acknowledgement; returns whether to send
    /// PUBREL.
    pub(super) fn received(
        &mut self,
        packet_id: u16,
        reason: ReasonCode,
        local: &mut Local,
    ) -> bool {
        let i = packet_id.wrapping_sub(1) as usize;
        let Some(Slot::Published(seq)) = self.slots.get(i).copied() else {
            return false;
        };
        if reason.is_error() {
            local.rejected += 1;
            self.free_slot(i);
            return false;
        }
        if self.acked.insert(seq) {
            local.acked += 1;
        }
        self.slots[i] = Slot::Released;
        true
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for `packet_id`: frees its slot.
    pub(super) fn settle(&mut self, packet_id: u16, reason: ReasonCode, local: &mut Local) {
        let i = packet_id.wrapping_sub(1) as usize;
        match self.slots.get(i).copied() {
            Some(Slot::Published(seq)) if self.qos == QoS::AtLeastOnce => {
                if reason.is_error() {
                    local.rejected += 1;
                } else if self.acked.insert(seq) {
                    local.acked += 1;
                }
                self.free_slot(i);
            }
            Some(Slot::Released) => self.free_slot(i),
            _ => {}
        }
    }

    pub(super) fn free_slot(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.free.push(i as u16);
    }
}

/// A subscriber's state.
#[derive(Debug)]
pub(super) struct Subscriber {
    pub(super) expects: Expects,
    pub(super) received: HashMap<u32, SeqSet>,
}

impl Subscriber {
    pub(super) fn new(expects: Expects) -> Subscriber {
        let received = match &expects {
            Expects::Publishers(ps) => ps.iter().map(|&p| (p, SeqSet::new())).collect(),
            Expects::Any => HashMap::new(),
        };
        Subscriber { expects, received }
    }

    pub(super) fn receive(&mut self, payload: &[u8], run: u32, local: &mut Local) {
        let Some(stamp) = Stamp::read(payload) else {
            local.unexpected += 1;
            return;
        };
        let set = match self.expects {
            Expects::Publishers(_) if stamp.run != run => None,
            Expects::Publishers(_) => self.received.get_mut(&stamp.publisher),
            Expects::Any => Some(self.received.entry(stamp.publisher).or_default()),
        };
        let Some(set) = set else {
            local.unexpected += 1;
            return;
        };
        local.received += 1;
        if set.insert(stamp.seq) {
            local.unique += 1;
        } else {
            local.duplicates += 1;
        }
        let latency_us = now_ns().saturating_sub(stamp.sent_ns) / 1000;
        local.latencies.push(latency_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_publisher(qos: QoS, inflight: u16) -> Publisher {
        let window = if qos == QoS::AtMostOnce { 0 } else { inflight };
        Publisher {
            index: 3,
            packet: Packet::Publish(Publish {
                qos,
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; 32]),
                ..Publish::default()
            }),
            payload_len: 32,
            qos,
            protocol: Protocol::V311,
            period: None,
            next_send: Instant::now(),
            seq: 0,
            slots: vec![Slot::Free; window as usize],
            free: (0..window).rev().collect(),
            acked: SeqSet::new(),
        }
    }

    #[test]
    fn window_caps() {
        use Protocol::{V311, V5};
        // MQTT 5: the broker's Receive Maximum, whatever the QoS.
        assert_eq!(window(QoS::AtLeastOnce, V5, 500, 20), 20);
        assert_eq!(window(QoS::ExactlyOnce, V5, 500, 300), 300);
        // 3.1.1 (no Receive Maximum: 65,535): QoS 2 within AstraMQ's default.
        assert_eq!(window(QoS::ExactlyOnce, V311, 500, u16::MAX), 100);
        assert_eq!(window(QoS::ExactlyOnce, V311, 64, u16::MAX), 64);
        assert_eq!(window(QoS::AtLeastOnce, V311, 500, u16::MAX), 500);
        assert_eq!(window(QoS::AtMostOnce, V5, 500, 20), 0);
    }

    #[tokio::test]
    async fn window_limits_and_acks_free_slots() {
        let mut p = local_publisher(QoS::AtLeastOnce, 4);
        let mut out = BytesMut::new();
        let mut local = Local::default();
        p.fill(&mut out, Instant::now(), 9, &mut local).unwrap();
        assert_eq!(local.sent, 4, "window of 4");
        // The encoded packets carry ids 1..=4 and stamps 0..=3.
        let mut ids = vec![];
        while let Some(Packet::Publish(pk)) =
            mqtt::decode(&mut out, Some(Protocol::V311), 1 << 20).unwrap()
        {
            let s = Stamp::read(&pk.payload).unwrap();
            assert_eq!((s.run, s.publisher), (9, 3));
            ids.push((pk.packet_id.unwrap(), s.seq));
        }
        assert_eq!(ids, vec![(1, 0), (2, 1), (3, 2), (4, 3)]);
        p.settle(2, ReasonCode::Success, &mut local);
        p.settle(2, ReasonCode::Success, &mut local); // a stray repeat changes nothing
        assert_eq!(local.acked, 1);
        assert!(p.acked.contains(1));
        p.fill(&mut out, Instant::now(), 9, &mut local).unwrap();
        assert_eq!(local.sent, 5);
        assert!(!p.settled());
    }

    #[tokio::test]
    async fn qos2_acks_on_pubrec_and_frees_on_pubcomp() {
        let mut p = local_publisher(QoS::ExactlyOnce, 1);
        let mut out = BytesMut::new();
        let mut local = Local::default();
        p.fill(&mut out, Instant::now(), 0, &mut local).unwrap();
        assert!(!p.has_room());
        assert!(p.received(1, ReasonCode::Success, &mut local));
        assert_eq!(local.acked, 1);
        assert!(!p.has_room(), "slot held until PUBCOMP");
        p.settle(1, ReasonCode::Success, &mut local);
        assert!(p.settled() && p.has_room());
    }

    #[test]
    fn rejected_publish_is_not_acknowledged() {
        let mut p = local_publisher(QoS::AtLeastOnce, 1);
        let mut local = Local::default();
        p.fill(&mut BytesMut::new(), Instant::now(), 0, &mut local)
            .unwrap();
        p.settle(1, ReasonCode::NotAuthorized, &mut local);
        assert_eq!((local.acked, local.rejected), (0, 1));
        assert!(p.acked.is_empty() && p.settled());
    }

    #[test]
    fn subscriber_counts_duplicates_and_strangers() {
        let mut s = Subscriber::new(Expects::Publishers(vec![1]));
        let mut local = Local::default();
        let mut buf = [0u8; 24];
        let mut send = |s: &mut Subscriber, run, publisher, seq| {
            Stamp {
                run,
                publisher,
                seq,
                sent_ns: now_ns(),
            }
            .write(&mut buf);
            s.receive(&buf, 5, &mut local);
        };
        send(&mut s, 5, 1, 0);
        send(&mut s, 5, 1, 0);
        send(&mut s, 5, 2, 0); // not expected
        send(&mut s, 6, 1, 1); // another run
        assert_eq!(
            (
                local.received,
                local.unique,
                local.duplicates,
                local.unexpected
            ),
            (2, 1, 1, 2)
        );
        s.receive(b"short", 5, &mut local);
        assert_eq!(local.unexpected, 3);
    }
}
