//! Retained messages: the last retained PUBLISH per topic, handed to new subscribers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use mqtt::topic::matches;
use parking_lot::RwLock;

use crate::message::Message;

/// The retained message store.
#[derive(Debug, Default)]
pub struct RetainStore {
    by_topic: RwLock<HashMap<String, Arc<Message>>>,
}

impl RetainStore {
    /// An empty store.
    pub fn new() -> RetainStore {
        RetainStore::default()
    }

    /// Stores `msg` as its topic's retained message, or clears the topic when the
    /// payload is empty [MQTT-3.3.1-5, MQTT-3.3.1-6, MQTT-3.3.1-7].
    pub fn set(&self, msg: &Arc<Message>) {
        let topic = msg.topic();
        let mut map = self.by_topic.write();
        if msg.publish.payload().is_empty() {
            map.remove(topic);
        } else {
            map.insert(topic.to_string(), msg.clone());
        }
    }

    /// Clears the retained message of `topic`.
    pub fn remove(&self, topic: &str) {
        self.by_topic.write().remove(topic);
    }

    /// The unexpired retained messages whose topic matches `filter`; expired ones are
    /// dropped on the way [MQTT-3.3.2-5].
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut expired = Vec::new();
        let mut out = Vec::new();
        {
            let map = self.by_topic.read();
            if !filter.contains(['+', '#']) {
                if let Some(m) = map.get(filter) {
                    if m.is_expired(now) {
                        expired.push(filter.to_string());
                    } else {
                        out.push(m.clone());
                    }
                }
            } else {
                for (topic, m) in map.iter() {
                    if matches(filter, topic) {
                        if m.is_expired(now) {
                            expired.push(topic.clone());
                        } else {
                            out.push(m.clone());
                        }
                    }
                }
            }
        }
        if !expired.is_empty() {
            let mut map = self.by_topic.write();
            for t in expired {
                if map.get(&t).is_some_and(|m| m.is_expired(now)) {
                    map.remove(&t);
                }
            }
        }
        out
    }

    /// Every unexpired retained message (what a node re-publishes when the cluster's
    /// copy was lost).
    pub fn all(&self, now: Instant) -> Vec<Arc<Message>> {
        self.by_topic
            .read()
            .values()
            .filter(|m| !m.is_expired(now))
            .cloned()
            .collect()
    }

    /// Number of retained messages (expired ones included until next looked at).
    pub fn len(&self) -> usize {
        self.by_topic.read().len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
