//! Topic names and filters (spec §4.7): validation, matching, shared subscriptions,
//! and [`TopicTree`], the subscription index the broker matches every PUBLISH against.

use std::collections::HashMap;
use std::hash::Hash;

/// Whether `topic` is a valid Topic Name for PUBLISH: non-empty, at most 65,535 bytes,
/// no `+` or `#` [MQTT-3.3.2-2], no U+0000 [MQTT-1.5.4-2].
pub fn valid_topic_name(topic: &str) -> bool {
    let _ = topic;
    todo!("topic helper")
}

/// Whether `filter` is a valid Topic Filter (§4.7.1): non-empty, `#` only as the whole
/// last level [MQTT-4.7.1-2], `+` only as a whole level [MQTT-4.7.1-3], no U+0000.
/// Shared filters (`$share/...`) are checked with [`parse_shared`] first.
pub fn valid_topic_filter(filter: &str) -> bool {
    let _ = filter;
    todo!("topic helper")
}

/// Whether `filter` matches `topic`, including the rule that filters starting with a
/// wildcard do not match topics starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    let _ = (filter, topic);
    todo!("topic helper")
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` for a filter that
/// is not shared; `Err(())` for a malformed shared filter (empty group, group with
/// `+`/`#`/`/`, missing filter) [MQTT-4.8.2-1, MQTT-4.8.2-2].
#[allow(clippy::result_unit_err)]
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, ()> {
    let _ = filter;
    todo!("topic helper")
}

/// A subscription index: topic filters with, per filter, one value per subscriber key.
/// Matching a topic visits every (key, value) whose filter matches.
#[derive(Debug)]
pub struct TopicTree<K, V> {
    _p: std::marker::PhantomData<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> TopicTree<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        todo!("topic helper")
    }

    /// Adds or replaces `key`'s value under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let _ = (filter, key, value);
        todo!("topic helper")
    }

    /// Removes `key` from `filter`; returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let _ = (filter, key);
        todo!("topic helper")
    }

    /// The value of `key` under exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let _ = (filter, key);
        todo!("topic helper")
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        let _ = (topic, &mut f);
        todo!("topic helper")
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        todo!("topic helper")
    }

    /// Whether the index holds no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
