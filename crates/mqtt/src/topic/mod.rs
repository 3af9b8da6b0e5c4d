//! Topic names and filters (spec §4.7): validation, matching, shared subscriptions,
//! and [`TopicTree`], the subscription index the broker matches every PUBLISH against.

mod tree;

pub use tree::TopicTree;

/// The longest topic name or filter: a UTF-8 Encoded String carries a 16-bit length
/// [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix that makes a Topic Filter a Shared Subscription (§4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Whether `topic` is a valid Topic Name for PUBLISH: non-empty, at most 65,535 bytes,
/// no `+` or `#` [MQTT-3.3.2-2], no U+0000 [MQTT-1.5.4-2].
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// Whether `filter` is a valid Topic Filter (§4.7.1): non-empty, `#` only as the whole
/// last level [MQTT-4.7.1-2], `+` only as a whole level [MQTT-4.7.1-3], no U+0000.
/// Shared filters (`$share/...`) are checked with [`parse_shared`] first.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            // A wildcard character inside a longer level ("sport+", "a#") is invalid.
            _ => !level.bytes().any(|b| b == b'+' || b == b'#'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic`, including the rule that filters starting with a
/// wildcard do not match topics starting with `$` [MQTT-4.7.2-1].
///
/// Both are assumed valid (see [`valid_topic_filter`], [`valid_topic_name`]); a shared
/// filter must be passed as its inner filter (see [`parse_shared`]). Levels are
/// compared byte for byte: no case folding or normalisation [MQTT-4.7.3-4].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches the parent level too: "sport/#" matches "sport" [MQTT-4.7.1-2].
            // A `#` that is not last (invalid filter) falls through to the literal arm and
            // then never matches, as no valid topic name contains `#`; TopicTree agrees.
            (Some("#"), _) if f.clone().next().is_none() => return true,
            // `+` matches exactly one level, including an empty one.
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` for a filter that
/// is not shared; `Err(())` for a malformed shared filter (empty group, group with
/// `+`/`#`/`/`, missing filter) [MQTT-4.8.2-1, MQTT-4.8.2-2].
///
/// The inner filter is also checked with [`valid_topic_filter`], so `Ok(Some(..))`
/// means the whole shared filter is usable as is.
#[allow(clippy::result_unit_err)]
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, ()> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        // "$share" alone or "$sharex/..." are ordinary filters whose first level merely
        // starts with '$'.
        return Ok(None);
    };
    if filter.len() > MAX_TOPIC_LEN {
        return Err(());
    }
    // The group ends at the first '/', so it can never contain one; "$share/g" has no
    // '/' after the group and hence no filter.
    let (group, inner) = rest.split_once('/').ok_or(())?;
    let group_ok = !group.is_empty() && !group.bytes().any(|b| matches!(b, b'+' | b'#' | 0));
    if group_ok && valid_topic_filter(inner) {
        Ok(Some((group, inner)))
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §4.7.1.2 examples for the multi-level wildcard [MQTT-4.7.1-2].
    #[test]
    fn multi_level_wildcard_examples_mqtt_4_7_1_2() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        // "sport/#" also matches the parent level "sport".
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/"));
        assert!(!matches("sport/#", "sports"));
        assert!(matches("#", "anything/at/all"));
        assert!(matches("#", "/"));

        assert!(valid_topic_filter("#"));
        assert!(valid_topic_filter("sport/tennis/#"));
        assert!(!valid_topic_filter("sport/tennis#"));
        assert!(!valid_topic_filter("sport/tennis/#/ranking"));
        assert!(!valid_topic_filter("#/"));
        assert!(!valid_topic_filter("##"));
    }

    /// §4.7.1.3 examples for the single-level wildcard [MQTT-4.7.1-3].
    #[test]
    fn single_level_wildcard_examples_mqtt_4_7_1_3() {
        let f = "sport/tennis/+";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis/player1/ranking"));
        // "sport/+" does not match "sport" but does match "sport/" (an empty level).
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        // "/finance" has an empty first level.
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));

        assert!(valid_topic_filter("+"));
        assert!(valid_topic_filter("+/tennis/#"));
        assert!(valid_topic_filter("sport/+/player1"));
        assert!(!valid_topic_filter("sport+"));
        assert!(!valid_topic_filter("sport/+x/player1"));
    }

    /// §4.7.2: wildcard-first filters never match `$` topics [MQTT-4.7.2-1].
    #[test]
    fn dollar_topics_mqtt_4_7_2_1() {
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // Only the first character counts: '$' later in the topic is an ordinary char.
        assert!(matches("#", "a/$SYS"));
        assert!(matches("a/+", "a/$x"));
    }

    /// §4.7.3: empty levels, case sensitivity, no normalisation [MQTT-4.7.3-4].
    #[test]
    fn topic_semantics_mqtt_4_7_3() {
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(matches("Accounts payable", "Accounts payable"));
        assert!(!matches("/finance", "finance"));
        assert!(!matches("finance/", "finance"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("/", "/"));
        assert!(matches("+/+", "/"));
    }

    /// Topic names: non-empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2], no NUL
    /// [MQTT-4.7.3-2], at most 65,535 bytes [MQTT-4.7.3-3].
    #[test]
    fn topic_name_validation() {
        assert!(valid_topic_name("a"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("a//b"));
        assert!(valid_topic_name("/a"));
        assert!(valid_topic_name("$SYS/x"));
        assert!(valid_topic_name("Accounts payable"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+b"));
        assert!(!valid_topic_name("a\0b"));
        assert!(valid_topic_name(&"x".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_name(&"x".repeat(MAX_TOPIC_LEN + 1)));
    }

    /// Topic filters: the same length/NUL/empty rules [MQTT-4.7.3-1..3].
    #[test]
    fn topic_filter_validation() {
        assert!(valid_topic_filter("a//b"));
        assert!(valid_topic_filter("/a"));
        assert!(valid_topic_filter("/"));
        assert!(valid_topic_filter("+/+"));
        assert!(valid_topic_filter("/#"));
        assert!(valid_topic_filter("$SYS/#"));
        assert!(!valid_topic_filter(""));
        assert!(!valid_topic_filter("a\0"));
        assert!(!valid_topic_filter("a/b#"));
        assert!(valid_topic_filter(&"x".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_filter(&"x".repeat(MAX_TOPIC_LEN + 1)));
    }

    /// §4.8.2 shared subscriptions [MQTT-4.8.2-1, MQTT-4.8.2-2].
    #[test]
    fn shared_subscriptions_mqtt_4_8_2() {
        assert_eq!(
            parse_shared("$share/consumer1/sport/tennis/+"),
            Ok(Some(("consumer1", "sport/tennis/+")))
        );
        assert_eq!(parse_shared("$share/g/#"), Ok(Some(("g", "#"))));
        assert_eq!(parse_shared("$share/g//"), Ok(Some(("g", "/"))));
        assert_eq!(parse_shared("$share/g/$SYS/#"), Ok(Some(("g", "$SYS/#"))));
        // Not shared at all.
        assert_eq!(parse_shared("sport/tennis"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$sharex/g/a"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        // Malformed: no filter, empty group, wildcard in group, invalid inner filter.
        assert_eq!(parse_shared("$share/"), Err(()));
        assert_eq!(parse_shared("$share/g"), Err(()));
        assert_eq!(parse_shared("$share/g/"), Err(()));
        assert_eq!(parse_shared("$share//f"), Err(()));
        assert_eq!(parse_shared("$share/g+/f"), Err(()));
        assert_eq!(parse_shared("$share/+/f"), Err(()));
        assert_eq!(parse_shared("$share/g#/f"), Err(()));
        assert_eq!(parse_shared("$share/g/a/#/b"), Err(()));
        assert_eq!(parse_shared("$share/g/a+"), Err(()));
        assert_eq!(parse_shared("$share/g\0/a"), Err(()));
        let long = format!("$share/g/{}", "x".repeat(MAX_TOPIC_LEN));
        assert_eq!(parse_shared(&long), Err(()));
    }
}
