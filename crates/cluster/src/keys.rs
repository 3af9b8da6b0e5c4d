//! Every Redis key the cluster uses. Each carries the configured prefix and a hash
//! tag, so that each key group used by one command lives in one Redis Cluster slot:
//! `{routes}`, `{retained}`, `{feed}`, one `{inbox:<node>}` stream per node, one
//! `{s:<client id>}` hash tag per session (its hash, subscriptions, journal, done set
//! and inbound QoS 2 ids), and per node its owned-sessions set, liveness key and
//! repair locks. docs/architecture.md's key table lists them with what each holds;
//! a test checks that table against [`Keys::every_key`].

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

    /// The lock one survivor holds while it takes dead `node`'s sessions over.
    pub fn repair(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:repair", self.prefix)
    }

    /// Set while a repair still drains dead `node`'s inbox.
    pub fn draining(&self, node: &str) -> String {
        format!("{}:{{n:{node}}}:draining", self.prefix)
    }

    /// Every node's counters for the cluster-wide `$SYS` totals: field node id,
    /// value `<unix ms>,<counters>`.
    pub fn stats(&self) -> String {
        format!("{}:{{cluster}}:stats", self.prefix)
    }

    /// The marker telling one Redis incarnation (data set) from the next.
    pub fn incarnation(&self) -> String {
        format!("{}:{{cluster}}:incarnation", self.prefix)
    }

    /// Every key this module builds, with `<node>` and `<client id>` standing for
    /// the variable parts (what docs/architecture.md's key table lists).
    pub fn every_key(&self) -> Vec<String> {
        let (n, c) = ("<node>", "<client id>");
        vec![
            self.routes(),
            self.retained(),
            self.feed(),
            self.incarnation(),
            self.stats(),
            self.inbox(n),
            self.alive(n),
            self.owned(n),
            self.repair(n),
            self.draining(n),
            self.session(c),
            self.subscriptions(c),
            self.journal(c),
            self.done(c),
            self.inbound(c),
        ]
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

    /// The key column of docs/architecture.md's "Redis key layout" table.
    fn documented_keys() -> Vec<String> {
        let doc = include_str!("../../../docs/architecture.md");
        let table = doc
            .split("### Redis key layout")
            .nth(1)
            .expect("docs/architecture.md has a Redis key layout section");
        table
            .lines()
            .skip_while(|l| !l.starts_with("| key |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cell = l.split('|').nth(1).unwrap_or("").trim();
                cell.trim_matches('`').to_string()
            })
            .collect()
    }

    #[test]
    fn the_documented_key_table_lists_exactly_the_keys_built_here() {
        let mut built = Keys::new("astramq").every_key();
        let mut documented = documented_keys();
        built.sort();
        documented.sort();
        assert_eq!(
            documented, built,
            "docs/architecture.md's key table and Keys::every_key differ"
        );
    }
}
