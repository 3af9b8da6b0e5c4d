//! [`TopicTree`]: a trie over topic levels, matched against every PUBLISH.
//!
//! Design notes:
//! - One node per distinct filter prefix. A node has literal children (a `HashMap`
//!   keyed by level), an optional `+` child, and two optional subscriber sets: filters
//!   ending exactly at the node (`exact`) and filters that are the node's path plus `#`
//!   (`multi`). Matching a topic with `L` levels visits only the nodes whose path matches
//!   a prefix of the topic, so its cost depends on the shape of the matching filters,
//!   not on how many subscriptions exist.
//! - Nothing recurses. A filter may have up to ~32k levels (65,535 bytes of "a/a/..."),
//!   and broker tasks run on small stacks, so matching, pruning, counting and even
//!   dropping the tree use explicit work lists.
//! - Matching does not allocate on the common path: the levels are slices of the topic
//!   (`split`-style, no `String` built per level) and the pending `+` branches live in a
//!   small on-stack buffer that only spills to the heap past [`INLINE_BRANCHES`].
//! - Children use std's `RandomState` hasher: levels come from clients, so a hasher
//!   without DoS resistance would let one client degrade matching for everybody.

use std::collections::HashMap as StdHashMap;
use std::fmt;
use std::hash::Hash;

/// The tree's maps: level names and subscriber keys are short, and foldhash hashes
/// them several times faster than SipHash while keeping a random per-process seed.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// Pending `+` branches kept on the stack during matching before spilling to the heap.
/// Each level with both a literal and a `+` child adds one; 16 covers realistic trees.
const INLINE_BRANCHES: usize = 16;

/// A subscription index: topic filters with, per filter, one value per subscriber key.
/// Matching a topic visits every (key, value) whose filter matches.
///
/// Filters are stored verbatim and are expected to be valid (see
/// [`valid_topic_filter`](super::valid_topic_filter)); a shared subscription is stored
/// under its inner filter. An invalid filter is not rejected: a misplaced `#` or a
/// partial-level wildcard is kept as a literal level, which matches no valid topic name,
/// exactly as [`matches`](super::matches) treats it.
pub struct TopicTree<K, V> {
    root: Node<K, V>,
    /// Number of (filter, key) entries, kept so `len` is O(1).
    len: usize,
}

/// One topic level of some stored filter.
struct Node<K, V> {
    /// Literal next levels.
    children: HashMap<Box<str>, Node<K, V>>,
    /// The `+` next level; boxed because most nodes have none.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of the filter whose last level is this node.
    exact: Option<Box<Subs<K, V>>>,
    /// Subscribers of this node's path followed by `/#` (or of `#`, at the root).
    multi: Option<Box<Subs<K, V>>>,
}

/// The subscribers of one filter, with the filter text stored once for callbacks.
struct Subs<K, V> {
    filter: Box<str>,
    entries: HashMap<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: HashMap::default(),
            plus: None,
            exact: None,
            multi: None,
        }
    }

    /// The child for one filter level (`+` is the wildcard child).
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if level == "+" {
            return self.plus.get_or_insert_with(|| Box::new(Node::new()));
        }
        // Look up before inserting so an existing level costs no `Box<str>` allocation.
        if !self.children.contains_key(level) {
            self.children.insert(level.into(), Node::new());
        }
        self.children
            .get_mut(level)
            .expect("child was just ensured")
    }

    /// Detaches the child for `level`, if any.
    fn take_child(&mut self, level: &str) -> Option<Node<K, V>> {
        if level == "+" {
            self.plus.take().map(|b| *b)
        } else {
            self.children.remove(level)
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    /// Whether the node holds nothing and can be pruned.
    fn is_empty(&self) -> bool {
        self.exact.is_none() && self.multi.is_none() && self.child_count() == 0
    }

    /// Whether the node only exists to lead to its single child, so removing that child
    /// makes it empty.
    fn is_pass_through(&self) -> bool {
        self.exact.is_none() && self.multi.is_none() && self.child_count() == 1
    }
}

/// Drops a subtree without recursion (a derived drop would recurse once per level).
fn dispose<K, V>(mut node: Node<K, V>) {
    let mut rest = Vec::new();
    loop {
        rest.extend(node.children.drain().map(|(_, child)| child));
        if let Some(plus) = node.plus.take() {
            rest.push(*plus);
        }
        drop(node); // now childless, so this drop is shallow
        match rest.pop() {
            Some(next) => node = next,
            None => break,
        }
    }
}

/// Splits a filter into the levels that form its trie path and whether it ends in `#`.
/// `"#"` has no path levels; `"a/#"` has path `"a"`; `"/#"` has the single empty level.
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

/// The path levels of a filter body from [`split_filter`].
fn levels(path: Option<&str>) -> impl Iterator<Item = &str> + Clone {
    path.into_iter().flat_map(|p| p.split('/'))
}

/// First level of `rest` and what follows it; `None` once the last level is taken.
#[inline]
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

/// A LIFO of pending branches that stays on the stack for the first
/// [`INLINE_BRANCHES`] items, so matching does not allocate in the common case.
struct Pending<T: Copy> {
    inline: [T; INLINE_BRANCHES],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy> Pending<T> {
    fn new(fill: T) -> Self {
        Pending {
            inline: [fill; INLINE_BRANCHES],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, item: T) {
        if self.len < INLINE_BRANCHES {
            self.inline[self.len] = item;
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
        // Spilled items were pushed after the inline ones, so they come off first.
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.inline[self.len])
    }
}

impl<K, V> Drop for TopicTree<K, V> {
    fn drop(&mut self) {
        dispose(std::mem::replace(&mut self.root, Node::new()));
    }
}

impl<K, V> fmt::Debug for TopicTree<K, V> {
    // A summary rather than the whole trie: it is large and deep, and this way the tree
    // is Debug whatever K and V are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> TopicTree<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        TopicTree {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds or replaces `key`'s value under `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (path, multi) = split_filter(filter);
        let mut node = &mut self.root;
        for level in levels(path) {
            node = node.child_or_insert(level);
        }
        let slot = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let subs = slot.get_or_insert_with(|| {
            Box::new(Subs {
                filter: filter.into(),
                entries: HashMap::default(),
            })
        });
        let previous = subs.entries.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key` from `filter`; returns its value.
    ///
    /// Nodes left empty are pruned, so memory follows the live subscriptions rather
    /// than every filter ever subscribed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (path, multi) = split_filter(filter);
        let mut node = &mut self.root;
        for level in levels(path) {
            node = node.child_mut(level)?;
        }
        let slot = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let subs = slot.as_mut()?;
        let value = subs.entries.remove(key)?;
        self.len -= 1;
        if subs.entries.is_empty() {
            *slot = None;
            if node.is_empty() {
                self.prune(path);
            }
        }
        Some(value)
    }

    /// Removes the now-empty node at the end of `path` together with the chain of
    /// pass-through ancestors that only led to it.
    fn prune(&mut self, path: Option<&str>) {
        // First pass, read-only: find the deepest node on the path that must stay (the
        // root, or a node holding subscribers or other children). Doing it in two passes
        // avoids recursion and the borrow gymnastics of pruning while descending.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in levels(path).enumerate() {
            if depth > 0 && !node.is_pass_through() {
                keep = depth;
            }
            node = node.child(level).expect("pruned path exists");
        }
        // Second pass: detach the subtree below `keep`; it is exactly the dead chain.
        let mut levels = levels(path);
        let mut node = &mut self.root;
        for level in levels.by_ref().take(keep) {
            node = node.child_mut(level).expect("pruned path exists");
        }
        if let Some(level) = levels.next() {
            if let Some(dead) = node.take_child(level) {
                dispose(dead);
            }
        }
    }

    /// The value of `key` under exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (path, multi) = split_filter(filter);
        let mut node = &self.root;
        for level in levels(path) {
            node = node.child(level)?;
        }
        let subs = if multi { &node.multi } else { &node.exact };
        subs.as_ref()?.entries.get(key)
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches `topic`.
    ///
    /// Filters starting with a wildcard do not match topics starting with `$`
    /// [MQTT-4.7.2-1]; `$SYS/#` and the like still do. `topic` is not validated.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        let mut emit = |subs: &Option<Box<Subs<K, V>>>| {
            if let Some(subs) = subs {
                for (key, value) in &subs.entries {
                    f(&subs.filter, key, value);
                }
            }
        };

        // The root is special: its `#` and `+` are the wildcard-first filters that
        // must skip `$` topics.
        let root = &self.root;
        let wildcards_at_root = !topic.starts_with('$');
        if wildcards_at_root {
            emit(&root.multi);
        }
        // Work items: a node whose path matched the topic so far, and the rest of the
        // topic after that (None once every level is consumed).
        let mut pending: Pending<(&Node<K, V>, Option<&str>)> = Pending::new((root, None));
        let (level, rest) = split_level(topic);
        if let Some(child) = root.children.get(level) {
            pending.push((child, rest));
        }
        if let (true, Some(plus)) = (wildcards_at_root, root.plus.as_deref()) {
            pending.push((plus, rest));
        }

        while let Some((mut node, mut rest)) = pending.pop() {
            // Follow one path down without touching `pending`; only a level where both
            // a literal and a `+` child match leaves a branch for later.
            loop {
                // "a/#" matches "a" and everything below it [MQTT-4.7.1-2].
                emit(&node.multi);
                let Some(remaining) = rest else {
                    emit(&node.exact);
                    break;
                };
                let (level, next) = split_level(remaining);
                // Skip hashing at nodes with no literal children (e.g. leaves).
                let literal = if node.children.is_empty() {
                    None
                } else {
                    node.children.get(level)
                };
                node = match (literal, node.plus.as_deref()) {
                    (Some(literal), Some(plus)) => {
                        pending.push((plus, next));
                        literal
                    }
                    (Some(only), None) | (None, Some(only)) => only,
                    (None, None) => break,
                };
                rest = next;
            }
        }
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(filter, key, value)` for every entry, in no particular order (for
    /// totals taken now and then, not for routing).
    pub fn for_each(&self, mut f: impl FnMut(&str, &K, &V)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            for subs in [&node.exact, &node.multi].into_iter().flatten() {
                for (key, value) in &subs.entries {
                    f(&subs.filter, key, value);
                }
            }
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
    }

    /// Number of trie nodes, root included: lets tests check that removal prunes.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Independent reference matcher: level-by-level recursion over split vectors, with
    /// the `$` rule [MQTT-4.7.2-1] applied up front.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn go(f: &[&str], t: &[&str]) -> bool {
            match f.split_first() {
                None => t.is_empty(),
                // `#` is only ever last here (generated filters are valid) and matches
                // zero or more remaining levels [MQTT-4.7.1-2].
                Some((&"#", _)) => true,
                Some((&"+", f_rest)) => !t.is_empty() && go(f_rest, &t[1..]),
                Some((level, f_rest)) => t.first() == Some(level) && go(f_rest, &t[1..]),
            }
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        go(&f, &t)
    }

    fn matched(tree: &TopicTree<u8, u32>, topic: &str) -> BTreeSet<(String, u8, u32)> {
        let mut out = BTreeSet::new();
        tree.for_each_match(topic, |f, k, v| {
            assert!(
                out.insert((f.to_owned(), *k, *v)),
                "duplicate match {f} {k}"
            );
        });
        out
    }

    /// Nodes the trie needs for `filters`: the root plus one per distinct path prefix.
    fn expected_nodes<'a>(filters: impl Iterator<Item = &'a str>) -> usize {
        let mut prefixes = BTreeSet::new();
        for filter in filters {
            let (path, _) = split_filter(filter);
            let mut prefix = Vec::new();
            for level in levels(path) {
                prefix.push(level.to_owned());
                prefixes.insert(prefix.clone());
            }
        }
        1 + prefixes.len()
    }

    const FILTER_LEVELS: &[&str] = &["a", "b", "+", "#", "$sys", "$SYS", ""];
    const TOPIC_LEVELS: &[&str] = &["a", "b", "c", "$sys", "$SYS", ""];

    /// Valid filters of 1..=4 levels over a small alphabet, so that they collide often.
    fn filter_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(FILTER_LEVELS), 1..=4)
            .prop_map(|levels| {
                let last = levels.len() - 1;
                // `#` only as the last level [MQTT-4.7.1-2]: elsewhere it becomes `+`.
                let fixed: Vec<&str> = levels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| if *l == "#" && i != last { "+" } else { *l })
                    .collect();
                fixed.join("/")
            })
            // A lone empty level is the empty string, which is not a filter [MQTT-4.7.3-1].
            .prop_filter("non-empty", |f| !f.is_empty())
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("non-empty", |t| !t.is_empty())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (filter_strategy(), 0u8..3).prop_map(|(f, k)| Op::Insert(f, k)),
            (filter_strategy(), 0u8..3).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The tree yields exactly the (filter, key) pairs whose filter matches, and the
        /// free `matches` agrees with the reference matcher.
        #[test]
        fn for_each_match_agrees_with_reference(
            subs in prop::collection::vec((filter_strategy(), 0u8..3), 0..40),
            topics in prop::collection::vec(topic_strategy(), 1..10),
        ) {
            let mut tree = TopicTree::new();
            let mut model = BTreeMap::new();
            for (i, (filter, key)) in subs.iter().enumerate() {
                prop_assert!(super::super::valid_topic_filter(filter));
                let value = i as u32;
                prop_assert_eq!(
                    tree.insert(filter, *key, value),
                    model.insert((filter.clone(), *key), value)
                );
            }
            prop_assert_eq!(tree.len(), model.len());
            for topic in &topics {
                let expected: BTreeSet<(String, u8, u32)> = model
                    .iter()
                    .filter(|((f, _), _)| reference_matches(f, topic))
                    .map(|((f, k), v)| (f.clone(), *k, *v))
                    .collect();
                prop_assert_eq!(matched(&tree, topic), expected, "topic {:?}", topic);
                for (filter, _) in model.keys() {
                    prop_assert_eq!(
                        super::super::matches(filter, topic),
                        reference_matches(filter, topic),
                        "matches({:?}, {:?})", filter, topic
                    );
                }
            }
        }

        /// Random insert/remove churn keeps `len`, `get` and the node count in step with
        /// a model; removing everything leaves only the root (pruning works).
        #[test]
        fn churn_keeps_len_and_nodes_consistent(
            ops in prop::collection::vec(op_strategy(), 0..80),
            topic in topic_strategy(),
        ) {
            let mut tree = TopicTree::new();
            let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Insert(f, k) => prop_assert_eq!(
                        tree.insert(f, *k, i as u32),
                        model.insert((f.clone(), *k), i as u32)
                    ),
                    Op::Remove(f, k) => prop_assert_eq!(
                        tree.remove(f, k),
                        model.remove(&(f.clone(), *k))
                    ),
                }
                prop_assert_eq!(tree.len(), model.len());
                prop_assert_eq!(
                    tree.node_count(),
                    expected_nodes(model.keys().map(|(f, _)| f.as_str()))
                );
            }
            for ((f, k), v) in &model {
                prop_assert_eq!(tree.get(f, k), Some(v));
            }
            let mut every = BTreeMap::new();
            tree.for_each(|f, k, v| {
                every.insert((f.to_string(), *k), *v);
            });
            prop_assert_eq!(&every, &model, "for_each visits every entry once");
            let expected: BTreeSet<(String, u8, u32)> = model
                .iter()
                .filter(|((f, _), _)| reference_matches(f, &topic))
                .map(|((f, k), v)| (f.clone(), *k, *v))
                .collect();
            prop_assert_eq!(matched(&tree, &topic), expected);
            for (f, k) in model.keys() {
                prop_assert!(tree.remove(f, k).is_some());
            }
            prop_assert!(tree.is_empty());
            prop_assert_eq!(tree.node_count(), 1);
        }
    }

    fn tree_of(filters: &[&str]) -> TopicTree<u8, u32> {
        let mut tree = TopicTree::new();
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, 0, i as u32);
        }
        tree
    }

    fn matching_filters(tree: &TopicTree<u8, u32>, topic: &str) -> BTreeSet<String> {
        matched(tree, topic)
            .into_iter()
            .map(|(f, _, _)| f)
            .collect()
    }

    fn set(filters: &[&str]) -> BTreeSet<String> {
        filters.iter().map(|f| f.to_string()).collect()
    }

    /// §4.7.1.2 examples through the tree, including "sport/#" matching "sport"
    /// [MQTT-4.7.1-2].
    #[test]
    fn tree_multi_level_wildcard_mqtt_4_7_1_2() {
        let tree = tree_of(&["sport/tennis/player1/#", "sport/#", "#", "sport/tennis/+"]);
        assert_eq!(
            matching_filters(&tree, "sport/tennis/player1"),
            set(&["sport/tennis/player1/#", "sport/#", "#", "sport/tennis/+"])
        );
        assert_eq!(
            matching_filters(&tree, "sport/tennis/player1/score/wimbledon"),
            set(&["sport/tennis/player1/#", "sport/#", "#"])
        );
        assert_eq!(matching_filters(&tree, "sport"), set(&["sport/#", "#"]));
        assert_eq!(matching_filters(&tree, "sports"), set(&["#"]));
    }

    /// §4.7.1.3 examples through the tree, including empty levels [MQTT-4.7.1-3].
    #[test]
    fn tree_single_level_wildcard_mqtt_4_7_1_3() {
        let tree = tree_of(&["sport/+", "+/+", "/+", "+", "a//b", "a/+/b"]);
        assert_eq!(matching_filters(&tree, "sport"), set(&["+"]));
        assert_eq!(matching_filters(&tree, "sport/"), set(&["sport/+", "+/+"]));
        assert_eq!(matching_filters(&tree, "/finance"), set(&["+/+", "/+"]));
        assert_eq!(matching_filters(&tree, "a//b"), set(&["a//b", "a/+/b"]));
    }

    /// Wildcard-first filters skip `$` topics; `$SYS/#` does not [MQTT-4.7.2-1].
    #[test]
    fn tree_dollar_topics_mqtt_4_7_2_1() {
        let tree = tree_of(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"]);
        assert_eq!(
            matching_filters(&tree, "$SYS/monitor/Clients"),
            set(&["$SYS/#", "$SYS/monitor/+"])
        );
        assert_eq!(matching_filters(&tree, "$SYS"), set(&["$SYS/#"]));
        assert_eq!(
            matching_filters(&tree, "x/monitor/Clients"),
            set(&["#", "+/monitor/Clients"])
        );
    }

    #[test]
    fn insert_get_remove_and_multiple_keys() {
        let mut tree: TopicTree<String, u8> = TopicTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/+", "c1".into(), 1), None);
        assert_eq!(tree.insert("a/+", "c2".into(), 2), None);
        assert_eq!(tree.insert("a/+", "c1".into(), 3), Some(1));
        assert_eq!(tree.insert("a/#", "c1".into(), 4), None);
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.get("a/+", &"c1".into()), Some(&3));
        assert_eq!(tree.get("a/#", &"c1".into()), Some(&4));
        assert_eq!(tree.get("a", &"c1".into()), None);
        assert_eq!(tree.get("a/+/b", &"c1".into()), None);

        let mut seen = Vec::new();
        tree.for_each_match("a/x", |f, k, v| seen.push((f.to_owned(), k.clone(), *v)));
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("a/#".into(), "c1".into(), 4),
                ("a/+".into(), "c1".into(), 3),
                ("a/+".into(), "c2".into(), 2)
            ]
        );

        assert_eq!(tree.remove("a/+", &"c3".into()), None);
        assert_eq!(tree.remove("b", &"c1".into()), None);
        assert_eq!(tree.remove("a/+", &"c1".into()), Some(3));
        assert_eq!(tree.remove("a/+", &"c1".into()), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.remove("a/+", &"c2".into()), Some(2));
        // "a/+" is gone but "a" still holds "a/#".
        assert_eq!(tree.node_count(), 2);
        assert_eq!(tree.remove("a/#", &"c1".into()), Some(4));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    /// Removing a leaf prunes only its dead chain, keeping branches other filters use.
    #[test]
    fn remove_prunes_only_dead_chain() {
        let mut tree = tree_of(&["a/b/c/d", "a/b", "a/x/y", "#"]);
        assert_eq!(tree.node_count(), 1 + 6); // a, b, c, d, x, y
        tree.remove("a/b/c/d", &0);
        assert_eq!(tree.node_count(), 1 + 4); // c, d pruned; b holds "a/b"
        tree.remove("a/b", &0);
        assert_eq!(tree.node_count(), 1 + 3);
        tree.remove("#", &0);
        assert_eq!(tree.node_count(), 1 + 3);
        tree.remove("a/x/y", &0);
        assert_eq!(tree.node_count(), 1);
        assert!(tree.is_empty());
    }

    /// A maximal-depth filter (~32k levels) must not overflow the stack when inserted,
    /// matched, removed or dropped: nothing in the tree recurses per level.
    #[test]
    fn very_deep_filters_do_not_overflow_the_stack() {
        let deep = vec!["a"; 32_000].join("/");
        let deep_plus = vec!["+"; 32_000].join("/");
        let mut tree = TopicTree::new();
        tree.insert(&deep, 1u8, ());
        tree.insert(&deep_plus, 2u8, ());
        tree.insert(&format!("{deep}/#"), 3u8, ());
        let mut keys = Vec::new();
        tree.for_each_match(&deep, |_, k, _| keys.push(*k));
        keys.sort();
        assert_eq!(keys, vec![1, 2, 3]);
        assert_eq!(tree.remove(&deep_plus, &2), Some(()));
        assert_eq!(tree.node_count(), 1 + 32_000);
        // `tree` (still 32k deep) is dropped here.
    }

    /// More pending `+` branches than fit inline exercises the heap spill path.
    #[test]
    fn many_branches_spill_correctly() {
        let levels = 40;
        let mut tree = TopicTree::new();
        // For each depth, a filter with `+` at that depth and literals elsewhere, so
        // every level of the topic has both a literal and a `+` child.
        let mut filters = Vec::new();
        for i in 0..levels {
            let f: Vec<&str> = (0..levels)
                .map(|j| if j == i { "+" } else { "x" })
                .collect();
            filters.push(f.join("/"));
        }
        filters.push(vec!["x"; levels].join("/"));
        for f in &filters {
            tree.insert(f, 0u8, ());
        }
        let topic = vec!["x"; levels].join("/");
        let mut n = 0;
        tree.for_each_match(&topic, |f, _, _| {
            assert!(super::super::matches(f, &topic));
            n += 1;
        });
        assert_eq!(n, filters.len());
    }

    #[test]
    fn debug_is_a_summary() {
        let tree = tree_of(&["a"]);
        assert_eq!(format!("{tree:?}"), "TopicTree { len: 1, .. }");
    }
}
