//! Codec tests: fixed vectors, a table of malformed inputs with the spec statement
//! each one checks, round-trip and decoder-robustness property tests, and
//! [`SharedPublish`] against the plain encoder and decoder.
//!
//! The files: `vectors.rs` (fixed byte vectors), `malformed.rs` (the malformed-input
//! table), `strategies.rs` (proptest strategies for every packet, and what a receiver
//! of each version gets back), `properties.rs` (round trip, split input, fuzzing) and
//! `shared_publish.rs`; this file holds the helpers they share.

mod malformed;
mod properties;
mod shared_publish;
mod strategies;
mod vectors;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::packet::*;

const MAX: usize = 1 << 20;

fn enc(p: &Packet, proto: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, proto, &mut out).expect("encodable");
    assert_eq!(out.len(), encoded_len(p, proto), "encoded_len for {p:?}");
    out
}

fn dec(bytes: &[u8], proto: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut b = BytesMut::from(bytes);
    let r = decode(&mut b, proto, MAX);
    if let Ok(Some(_)) = r {
        assert!(b.is_empty(), "decode left {} bytes", b.len());
    } else {
        assert_eq!(
            &b[..],
            bytes,
            "nothing consumed unless a packet is returned"
        );
    }
    r
}

/// A packet from its first byte and body, with the Remaining Length filled in.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[first]);
    write::put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// A CONNECT body: protocol name, level, flags, keep alive 60, then `rest`.
fn connect_body(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[level, flags, 0, 60]);
    b.extend_from_slice(rest);
    b
}
