//! The stamp at the front of every payload: who sent it, which one, and when.
//!
//! Layout (big-endian, [`HEADER_LEN`] bytes): run id `u32`, publisher index `u32`,
//! sequence `u64` (0, 1, 2, … per publisher), send time `u64` in nanoseconds since the
//! Unix epoch. The rest of the payload is zeros. The wall clock (not a monotonic one) is
//! used so that a `pub` and a `sub` in two processes on one machine measure latency too.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of the stamp; the smallest payload the bench sends.
pub const HEADER_LEN: usize = 24;

/// What a payload says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Identifies one bench run, so a subscriber can ignore strangers on its topic.
    pub run: u32,
    /// Index of the publisher within the run.
    pub publisher: u32,
    /// Per-publisher sequence number, from 0.
    pub seq: u64,
    /// Send time, nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than [`HEADER_LEN`].
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.run.to_be_bytes());
        out[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp from the front of `payload`; `None` when it is too short.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let h = payload.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        Some(Stamp {
            run: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Stamp {
            run: 0xdead_beef,
            publisher: 7,
            seq: u64::MAX - 1,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let mut buf = vec![0u8; 64];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn too_short() {
        assert_eq!(Stamp::read(&[0u8; HEADER_LEN - 1]), None);
    }

    #[test]
    fn clock_is_plausible() {
        // After 2020-01-01.
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
