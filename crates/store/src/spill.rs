//! Deliveries to offline persistent sessions kept on disk only: while a session waits
//! for its client, what arrives for it is written to its journal and not queued in
//! memory, so many offline sessions with many messages cost disk, not RAM. When the
//! client comes back, its claim reads them (`ClusterClaim::spilled`) and they join
//! its queue.
//!
//! Per session the writer remembers how many entries are spilled and the oldest one's
//! key: the session's queue bound (`limits.max_queued_messages`) and overflow policy
//! apply to them as to a queue in memory. Changes made while writing a batch are
//! undone if its commit fails, so memory never disagrees with the disk.

use std::collections::HashMap;
use std::sync::Arc;

/// One offline session's entries on disk only.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spill {
    /// How many.
    pub count: usize,
    /// The oldest one's key in the journal keyspace.
    pub oldest: Option<Vec<u8>>,
}

/// Every offline session's spill, with an undo log for the batch being written.
#[derive(Debug, Default)]
pub(crate) struct Spills {
    map: HashMap<Arc<str>, Spill>,
    total: usize,
    undo: HashMap<Arc<str>, Option<Spill>>,
    total_before: Option<usize>,
}

impl Spills {
    /// Spills read back at start-up: every restored session is offline.
    pub fn new(map: HashMap<Arc<str>, Spill>) -> Spills {
        let total = map.values().map(|s| s.count).sum();
        Spills {
            map,
            total,
            ..Default::default()
        }
    }

    /// Entries spilled in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The spill of `client_id`, if its session is offline.
    pub fn get(&self, client_id: &str) -> Option<&Spill> {
        self.map.get(client_id)
    }

    fn touch(&mut self, client_id: &Arc<str>) {
        self.total_before.get_or_insert(self.total);
        if !self.undo.contains_key(client_id) {
            let before = self.map.get(client_id).cloned();
            self.undo.insert(client_id.clone(), before);
        }
    }

    /// The session went offline: from now on its deliveries are spilled.
    pub fn park(&mut self, client_id: &Arc<str>) {
        if !self.map.contains_key(client_id) {
            self.touch(client_id);
            self.map.insert(client_id.clone(), Spill::default());
        }
    }

    /// An entry was spilled under `key`.
    pub fn added(&mut self, client_id: &Arc<str>, key: &[u8]) {
        self.touch(client_id);
        if let Some(s) = self.map.get_mut(client_id) {
            s.count += 1;
            s.oldest.get_or_insert_with(|| key.to_vec());
            self.total += 1;
        }
    }

    /// The oldest entry was dropped (overflow); `next` is the new oldest.
    pub fn dropped_oldest(&mut self, client_id: &Arc<str>, next: Option<Vec<u8>>) {
        self.touch(client_id);
        if let Some(s) = self.map.get_mut(client_id) {
            s.count = s.count.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
            s.oldest = next;
        }
    }

    /// The session is back (or ended): its spill, which stops.
    pub fn take(&mut self, client_id: &Arc<str>) -> Option<Spill> {
        if !self.map.contains_key(client_id) {
            return None;
        }
        self.touch(client_id);
        let s = self.map.remove(client_id)?;
        self.total = self.total.saturating_sub(s.count);
        Some(s)
    }

    /// The batch was committed: its changes stay.
    pub fn commit(&mut self) {
        self.undo.clear();
        self.total_before = None;
    }

    /// The batch failed: its changes are undone.
    pub fn rollback(&mut self) {
        for (client_id, before) in self.undo.drain() {
            match before {
                Some(s) => self.map.insert(client_id, s),
                None => self.map.remove(&client_id),
            };
        }
        if let Some(t) = self.total_before.take() {
            self.total = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_leaves_the_spills_as_they_were() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let mut s = Spills::default();
        s.park(&a);
        s.added(&a, b"a\0k1");
        s.commit();
        s.added(&a, b"a\0k2");
        s.park(&b);
        s.added(&b, b"b\0k1");
        s.dropped_oldest(&a, Some(b"a\0k2".to_vec()));
        assert_eq!(s.total(), 2);
        s.rollback();
        assert_eq!(s.total(), 1);
        let sa = s.get("a").unwrap();
        assert_eq!((sa.count, sa.oldest.as_deref()), (1, Some(&b"a\0k1"[..])));
        assert!(s.get("b").is_none());
        let taken = s.take(&a).unwrap();
        assert_eq!(taken.count, 1);
        assert_eq!(s.total(), 0);
        s.rollback();
        assert_eq!(s.total(), 1, "a take is undone too");
    }
}
