//! Property tests of the decoder: encode → decode round trips, input split anywhere,
//! arbitrary and mutated bytes never panic and never half-consume.

use super::strategies::*;
use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// encode → decode gives back the packet (less what the version cannot carry), and
    /// encoded_len is exact.
    #[test]
    fn roundtrip((proto, p) in proto_and_packet()) {
        let bytes = enc(&p, proto);
        let back = dec(&bytes, Some(proto));
        prop_assert_eq!(back, Ok(Some(expected(&p, proto))));
        // CONNECT also decodes before the version is known.
        if let Packet::Connect(_) = p {
            prop_assert_eq!(dec(&bytes, None), Ok(Some(expected(&p, proto))));
        }
    }

    /// Fed a valid packet in two pieces split anywhere, the decoder waits, then yields
    /// the same packet; two packets back to back come out one at a time.
    #[test]
    fn split_anywhere((proto, p) in proto_and_packet(), q in packet(Protocol::V5)) {
        let bytes = enc(&p, proto);
        let want = expected(&p, proto);
        for k in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..k]);
            prop_assert_eq!(decode(&mut b, Some(proto), MAX), Ok(None));
            prop_assert_eq!(b.len(), k);
            b.extend_from_slice(&bytes[k..]);
            prop_assert_eq!(decode(&mut b, Some(proto), MAX), Ok(Some(want.clone())));
            prop_assert!(b.is_empty());
        }
        let mut two = enc(&q, Protocol::V5);
        two.extend_from_slice(&enc(&q, Protocol::V5));
        prop_assert_eq!(decode(&mut two, Some(Protocol::V5), MAX), Ok(Some(q.clone())));
        prop_assert_eq!(decode(&mut two, Some(Protocol::V5), MAX), Ok(Some(q)));
        prop_assert!(two.is_empty());
    }

    /// Arbitrary bytes never panic the decoder; it consumes a whole packet or nothing,
    /// and what it accepts re-encodes to bytes that decode to the same packet.
    #[test]
    fn fuzz_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        proto in opt(any_proto()),
        max in prop_oneof![Just(8usize), Just(64), Just(MAX)],
    ) {
        check_decoder(&bytes, proto, max)?;
    }

    /// Valid packets with a byte changed, removed or inserted never panic the decoder.
    #[test]
    fn fuzz_mutated_packets(
        (proto, p) in proto_and_packet(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        op in 0..4u8,
        dproto in opt(any_proto()),
    ) {
        let mut bytes = enc(&p, proto).to_vec();
        let i = pos.index(bytes.len());
        match op {
            0 => bytes[i] = byte,
            1 => bytes[i] ^= 1 << (byte % 8),
            2 => { bytes.remove(i); }
            _ => bytes.insert(i, byte),
        }
        check_decoder(&bytes, Some(proto), MAX)?;
        check_decoder(&bytes, dproto, MAX)?;
    }
}

/// The decoder contract for one input.
fn check_decoder(bytes: &[u8], proto: Option<Protocol>, max: usize) -> Result<(), TestCaseError> {
    let mut b = BytesMut::from(bytes);
    match decode(&mut b, proto, max) {
        Ok(None) | Err(_) => prop_assert_eq!(&b[..], bytes),
        Ok(Some(p)) => {
            let used = bytes.len() - b.len();
            prop_assert!(used >= 2 && used <= bytes.len() && used <= max);
            prop_assert_eq!(&b[..], &bytes[used..]);
            // Accepted packets are valid: they re-encode and decode to themselves.
            let eproto = match &p {
                Packet::Connect(c) => c.protocol,
                _ => proto.unwrap_or(Protocol::V311),
            };
            let again = enc(&p, eproto);
            prop_assert_eq!(dec(&again, proto), Ok(Some(p)));
        }
    }
    Ok(())
}
