//! Sets of sequence numbers, and the exact count of lost and duplicated messages.
//!
//! Each publisher numbers its messages 0, 1, 2, …; it keeps a [`SeqSet`] of the
//! sequences the broker acknowledged, and each subscriber keeps one per publisher it
//! hears from. A message is *lost* for a subscriber when it was acknowledged to the
//! publisher but never reached that subscriber; [`lost`] counts exactly that with word
//! operations on the bitmaps.

/// Sequences above this are not tracked (a bitmap of 32 MiB); nothing a run can reach.
pub const MAX_SEQ: u64 = 1 << 28;

/// A set of sequence numbers as a growable bitmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Adds `seq`; returns whether it was new. Sequences above [`MAX_SEQ`] are refused
    /// (returns false).
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq > MAX_SEQ {
            return false;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            // Grow geometrically so a publisher's steady stream costs amortised O(1).
            let want = (w + 1).max(self.words.len() * 2).max(16);
            self.words.resize(want, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += fresh as u64;
        fresh
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        self.words
            .get(w)
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }

    /// How many sequences the set holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many sequences of `self` are missing from `other`.
    pub fn missing_from(&self, other: Option<&SeqSet>) -> u64 {
        let Some(other) = other else {
            return self.len;
        };
        self.words
            .iter()
            .enumerate()
            .map(|(i, &w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

/// Messages lost for one subscriber: for each publisher it should hear from, the
/// acknowledged sequences it never received.
///
/// `acked[p]` is publisher `p`'s acknowledged set; `received(p)` the subscriber's set
/// for `p`, if it heard from `p` at all.
pub fn lost<'a>(
    acked: &[SeqSet],
    expects: impl IntoIterator<Item = u32>,
    received: impl Fn(u32) -> Option<&'a SeqSet>,
) -> u64 {
    expects
        .into_iter()
        .map(|p| {
            acked
                .get(p as usize)
                .map_or(0, |a| a.missing_from(received(p)))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn insert_reports_duplicates() {
        let mut s = SeqSet::new();
        assert!(s.insert(0));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert_eq!(s.len(), 2);
        assert!(s.contains(1000) && !s.contains(999));
        assert!(!s.insert(MAX_SEQ + 1));
    }

    #[test]
    fn missing_matches_a_reference_model() {
        // A small deterministic generator instead of a dependency.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50 {
            let (mut a, mut b) = (SeqSet::new(), SeqSet::new());
            let (mut ra, mut rb) = (BTreeSet::new(), BTreeSet::new());
            for _ in 0..(next() % 500) {
                let s = next() % 3000;
                a.insert(s);
                ra.insert(s);
            }
            for _ in 0..(next() % 500) {
                let s = next() % 3000;
                b.insert(s);
                rb.insert(s);
            }
            assert_eq!(a.missing_from(Some(&b)), ra.difference(&rb).count() as u64);
            assert_eq!(a.len(), ra.len() as u64);
        }
    }

    #[test]
    fn lost_counts_per_subscriber_and_publisher() {
        // Publisher 0 had 0..10 acknowledged, publisher 1 had 0..5.
        let mut acked = vec![SeqSet::new(), SeqSet::new()];
        (0..10).for_each(|s| {
            acked[0].insert(s);
        });
        (0..5).for_each(|s| {
            acked[1].insert(s);
        });
        // The subscriber got 0..8 from publisher 0 plus an unacknowledged 20 (sent,
        // ack not yet back: not a loss, not a credit), and nothing from publisher 1.
        let mut got = HashMap::new();
        let mut r0 = SeqSet::new();
        (0..8).chain([20]).for_each(|s| {
            r0.insert(s);
        });
        got.insert(0u32, r0);
        assert_eq!(lost(&acked, [0, 1], |p| got.get(&p)), 2 + 5);
        assert_eq!(lost(&acked, [0], |p| got.get(&p)), 2);
        assert_eq!(lost(&acked, [], |p| got.get(&p)), 0);
    }
}
