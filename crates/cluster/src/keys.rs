//! Every Redis key the cluster uses. Each carries the configured prefix and a hash
//! tag, so that each key group used by one command lives in one Redis Cluster slot:
//! `{routes}`, `{retained}`, `{feed}`, one `{inbox:<node>}` stream per node, one
//! `{s:<client id>}` hash tag per session (its hash, subscriptions, journal, done set
//! and inbound QoS 2 ids), and per node its owned-sessions set and liveness key.
//! docs/architecture.md's key table lists them with what each holds.

/// The names of every key AstraMQ uses, under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of every node's routes: field `<node>\n<filter>`.
    pub fn routes(&self) -> String {
        format!("{}:{{routes}}", self.prefix)
    }

    /// Hash of retained messages by topic.
    pub fn retained(&self) -> String {
        format!("{}:{{retained}}", self.prefix)
    }

    /// The change feed stream (routes and retained messages).
    pub fn feed(&self) -> String {
        format!("{}:{{feed}}", self.prefix)
    }

    /// A node's inbox stream.
    pub fn inbox(&self, node: &str) -> String {
        format!("{}:{{inbox:{node}}}", self.prefix)
    }

    /// A session's ownership hash (owner node, epoch, expiry, will).
    pub fn session(&self, client_id: &str) -> String {
        format!("{}:{{s:{client_id}}}", self.prefix)
    }

    /// A persistent session's subscriptions: filter → options (same slot as the
    /// session).
    pub fn subscriptions(&self, client_id: &str) -> String {
        format!("{}:{{s:{client_id}}}:subs", self.prefix)
    }

    /// A persistent session's journal: QoS 1/2 deliveries not yet acknowledged by
    /// the client (same slot as the session).
    pub fn journal(&self, client_id: &str) -> String {
        format!("{}:{{s:{client_id}}}:j", self.prefix)
    }

    /// A persistent session's recently delivered message ids (sorted set by time),
    /// so that a late copy of one is not stored again.
    pub fn done(&self, client_id: &str) -> String {
        format!("{}:{{s:{client_id}}}:done", self.prefix)
    }

    /// A persistent publisher's inbound QoS 2 packet ids awaiting PUBREL → the
    /// message ids they were routed under.
    pub fn inbound(&self, client_id: &str) -> String {
        format!("{}:{{s:{client_id}}}:in", self.prefix)
    }

    /// The client ids whose session or will `node` holds (what a survivor takes over
    /// when it dies).
    pub fn owned(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:own", self.prefix)
    }

    /// `node`'s liveness key: present while it runs (its gossip generation).
    pub fn alive(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:alive", self.prefix)
    }
}

/// The consumer group every inbox is read through.
pub const INBOX_GROUP: &str = "astramq";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_hash_tags() {
        let k = Keys::new("amq");
        assert_eq!(k.inbox("n1"), "amq:{inbox:n1}");
        assert_eq!(k.session("dev/42"), "amq:{s:dev/42}");
        assert_eq!(k.routes(), "amq:{routes}");
    }
}
