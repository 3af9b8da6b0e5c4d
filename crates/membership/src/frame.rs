//! The datagram envelope: `HMAC-SHA256(key, payload)[..16] || payload` with a
//! cluster key, the bare payload without one.
//!
//! The tag authenticates the sender as a key holder; it does not encrypt, and it
//! does not stop a replay of a captured datagram (SWIM's incarnation numbers make
//! replayed state stale; see `docs/membership.md`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the truncated tag in front of each authenticated datagram. 128 bits
/// of HMAC-SHA256 is the truncation NIST SP 800-107 considers safe for
/// authentication and saves 16 bytes of every datagram.
pub(crate) const TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Seals and opens datagrams for one cluster key (or none).
#[derive(Clone)]
pub(crate) struct Framer {
    mac: Option<HmacSha256>,
}

impl Framer {
    /// A framer for `key`; `None` means datagrams pass through unchanged.
    pub fn new(key: Option<&str>) -> Self {
        let mac = key.map(|k| {
            HmacSha256::new_from_slice(k.as_bytes()).expect("HMAC accepts keys of any length")
        });
        Self { mac }
    }

    /// Bytes the envelope adds to each payload.
    pub fn overhead(&self) -> usize {
        if self.mac.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    /// Appends the framed `payload` to `out` (cleared first).
    pub fn seal(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if let Some(mac) = &self.mac {
            let mut mac = mac.clone();
            mac.update(payload);
            out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        }
        out.extend_from_slice(payload);
    }

    /// The payload of `datagram`, or `None` when its tag does not verify.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let Some(mac) = &self.mac else {
            return Some(datagram);
        };
        if datagram.len() < TAG_LEN {
            return None;
        }
        let (tag, payload) = datagram.split_at(TAG_LEN);
        let mut mac = mac.clone();
        mac.update(payload);
        // Constant-time comparison: a timing side channel would let a stranger
        // forge a tag byte by byte.
        mac.verify_truncated_left(tag).ok().map(|()| payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagram_opens_with_the_same_key() {
        let framer = Framer::new(Some("secret"));
        let mut out = Vec::new();
        framer.seal(b"hello", &mut out);
        assert_eq!(out.len(), TAG_LEN + 5);
        assert_eq!(&out[TAG_LEN..], b"hello");
        assert_eq!(framer.open(&out), Some(&b"hello"[..]));
    }

    #[test]
    fn tag_is_truncated_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let framer = Framer::new(Some("Jefe"));
        let mut out = Vec::new();
        framer.seal(b"what do ya want for nothing?", &mut out);
        let expected = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7,
        ];
        assert_eq!(&out[..TAG_LEN], &expected);
    }

    #[test]
    fn wrong_key_tampering_and_truncation_are_rejected() {
        let mut out = Vec::new();
        Framer::new(Some("secret")).seal(b"payload", &mut out);

        assert_eq!(Framer::new(Some("other")).open(&out), None);

        let mut tampered = out.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(Framer::new(Some("secret")).open(&tampered), None);

        let mut bad_tag = out.clone();
        bad_tag[0] ^= 1;
        assert_eq!(Framer::new(Some("secret")).open(&bad_tag), None);

        assert_eq!(Framer::new(Some("secret")).open(&out[..TAG_LEN - 1]), None);
        // An unauthenticated datagram is not accepted by a keyed member.
        assert_eq!(Framer::new(Some("secret")).open(b"payload"), None);
    }

    #[test]
    fn without_key_payload_passes_through() {
        let framer = Framer::new(None);
        let mut out = Vec::new();
        framer.seal(b"abc", &mut out);
        assert_eq!(out, b"abc");
        assert_eq!(framer.open(b"abc"), Some(&b"abc"[..]));
        assert_eq!(framer.overhead(), 0);
    }
}
