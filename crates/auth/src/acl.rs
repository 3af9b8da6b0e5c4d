//! Mosquitto's `acl_file` format and the access decision.
//!
//! # Format
//!
//! ```text
//! # comment
//! topic [read|write|readwrite|deny] <topic>     # before any `user` line: anonymous clients
//! user <username>                               # starts a block for that user
//! topic [read|write|readwrite|deny] <topic>     # inside a block: that user only
//! pattern [read|write|readwrite|deny] <topic>   # anywhere: every client, %c/%u substituted
//! ```
//!
//! The access word may be left out (`topic <topic>`), meaning `readwrite`. The topic is
//! the rest of the line, so it may contain spaces. A `user` line naming a user seen
//! before adds to that user's block.
//!
//! # Decision (as Mosquitto 2.0's default ACL check)
//!
//! 1. The client's `topic` rules are those of its user's block, or, for an anonymous
//!    client, those written before the first `user` line. An authenticated client gets
//!    no rules from the anonymous section (Mosquitto's man page: "The first set of
//!    topics are applied to anonymous clients").
//! 2. Among those rules, a matching `deny` refuses; otherwise a matching rule whose
//!    access includes the request allows.
//! 3. Otherwise, if there are `pattern` rules and the username or client id contains `+`
//!    or `#`, access is refused.
//! 4. Among the patterns, a matching `deny` refuses; otherwise a matching pattern whose
//!    access includes the request allows. A pattern using `%u` does not apply to an
//!    anonymous client.
//! 5. Otherwise access is refused.
//!
//! `%c` and `%u` are substituted only where they make up a whole topic level. A
//! substituted value that is empty or contains `/`, `+` or `#` makes the pattern not
//! match (so that client id `a/b` cannot reach `devices/a/b` through `devices/%c/#`).
//!
//! Topics starting with `$` are matched only by rules starting with `$` (so `#` does not
//! cover `$SYS/...`), as in MQTT.
//!
//! For [`Access::Read`] the topic may be a subscription filter: a rule covers it only
//! if every topic the filter can match is matched by the rule, level by level: a rule
//! `+` covers a requested `+` or a name but not `#`, a rule `#` covers anything, and a
//! rule name covers only the same name. A `deny` rule refuses a filter only if it
//! covers the whole filter, so a broker must also check each delivered message with
//! `Access::Read` on its topic name (as Mosquitto does).

use std::collections::HashMap;
use std::path::Path;
use thiserror::Error;

/// The access a client asks for on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (SUBSCRIBE, and each delivery).
    Read,
    /// Send messages (PUBLISH, will).
    Write,
}

/// Why an ACL file could not be used.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not valid.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::Read | Grant::ReadWrite, Access::Read)
                | (Grant::Write | Grant::ReadWrite, Access::Write)
        )
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    /// The topic filter, split into levels.
    levels: Vec<String>,
}

/// A list of rules, deny rules kept apart so they are checked first.
#[derive(Debug, Clone, Default)]
struct RuleList {
    deny: Vec<Rule>,
    grant: Vec<Rule>,
}

impl RuleList {
    fn push(&mut self, rule: Rule) {
        if rule.grant == Grant::Deny {
            self.deny.push(rule);
        } else {
            self.grant.push(rule);
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.grant.is_empty()
    }

    /// `Some(decision)` if a rule decides, `None` if none matches.
    fn decide(&self, request: &[&str], access: Access, subst: Option<Subst<'_>>) -> Option<bool> {
        if self.deny.iter().any(|r| covers(&r.levels, request, subst)) {
            return Some(false);
        }
        if self
            .grant
            .iter()
            .any(|r| r.grant.allows(access) && covers(&r.levels, request, subst))
        {
            return Some(true);
        }
        None
    }
}

/// Values for `%c` and `%u` in pattern rules.
#[derive(Debug, Clone, Copy)]
struct Subst<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
}

/// A loaded ACL file.
///
/// [`AclFile::default`] has no rules and so refuses everything.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    /// Rules before the first `user` line: anonymous clients.
    anonymous: RuleList,
    /// Rules of each `user` block.
    users: HashMap<String, RuleList>,
    /// `pattern` rules.
    patterns: RuleList,
}

/// Checks a topic filter the way Mosquitto's `mosquitto_sub_topic_check` does.
fn check_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty topic".to_string());
    }
    if topic.len() > 65535 {
        return Err("topic longer than 65535 bytes".to_string());
    }
    if topic.contains('\0') {
        return Err("topic contains NUL".to_string());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) && level.len() > 1 {
            return Err(format!(
                "invalid topic {topic:?}: '+' and '#' must be a whole level"
            ));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err(format!(
                "invalid topic {topic:?}: '#' must be the last level"
            ));
        }
    }
    Ok(())
}

/// Whether the rule filter `rule` covers the requested topic name or filter `request`.
fn covers(rule: &[String], request: &[&str], subst: Option<Subst<'_>>) -> bool {
    // `$` topics only match rules that start with `$` too (checked on the raw rule,
    // as Mosquitto does).
    let rule_dollar = rule.first().is_some_and(|l| l.starts_with('$'));
    let req_dollar = request.first().is_some_and(|l| l.starts_with('$'));
    if rule_dollar != req_dollar {
        return false;
    }
    let mut req = request.iter();
    for level in rule {
        match level.as_str() {
            // `#` covers the rest, including nothing ("a/#" covers "a").
            "#" => return true,
            "+" => match req.next() {
                Some(&"#") | None => return false,
                Some(_) => {}
            },
            lit => {
                let want = match (subst, lit) {
                    (Some(s), "%c") => Some(s.client_id),
                    (Some(s), "%u") => s.username,
                    (Some(_), _) | (None, _) => Some(lit),
                };
                let Some(want) = want else { return false };
                if (subst.is_some() && (lit == "%c" || lit == "%u"))
                    && (want.is_empty() || want.contains(['/', '+', '#']))
                {
                    return false;
                }
                match req.next() {
                    Some(r) if *r == want => {}
                    _ => return false,
                }
            }
        }
    }
    req.next().is_none()
}

/// Splits `"read" topic…` / `topic…` into the access and the topic, as Mosquitto does:
/// with a single word that word is the topic and access is `readwrite`.
fn parse_rule(rest: &str) -> Result<Rule, String> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err("missing topic".to_string());
    }
    let (grant, topic) = match rest.split_once(char::is_whitespace) {
        None => (Grant::ReadWrite, rest),
        Some((word, topic)) => {
            let grant = match word {
                "read" => Grant::Read,
                "write" => Grant::Write,
                "readwrite" => Grant::ReadWrite,
                "deny" => Grant::Deny,
                other => {
                    return Err(format!(
                        "invalid access type {other:?} (expected read, write, readwrite or deny)"
                    ))
                }
            };
            (grant, topic.trim())
        }
    };
    check_filter(topic)?;
    let levels: Vec<String> = topic.split('/').map(str::to_string).collect();
    Ok(Rule { grant, levels })
}

impl AclFile {
    /// Loads and parses `path`.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: name.clone(),
            source,
        })?;
        AclFile::parse(&text, &name)
    }

    /// Parses the text of an ACL file; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let err = |reason: String| AclError::Parse {
                path: path.to_string(),
                line: i + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match keyword {
                "topic" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    match &user {
                        None => acl.anonymous.push(rule),
                        Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                    }
                }
                "pattern" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    acl.patterns.push(rule);
                }
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(err("missing username".to_string()));
                    }
                    acl.users.entry(name.to_string()).or_default();
                    user = Some(name.to_string());
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected topic, pattern or user)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Whether client `client_id` authenticated as `username` (None = anonymous) may
    /// have `access` to `topic` (a topic name for Write, a topic name or filter for Read).
    ///
    /// See the [module documentation](self) for the rules. Invalid topics (empty,
    /// misplaced wildcards, wildcards in a Write) are refused.
    pub fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        if check_filter(topic).is_err() {
            return false;
        }
        if access == Access::Write && topic.contains(['+', '#']) {
            return false;
        }
        let request: Vec<&str> = topic.split('/').collect();

        let own = match username {
            Some(u) => self.users.get(u),
            None => Some(&self.anonymous),
        };
        if let Some(decision) = own.and_then(|rules| rules.decide(&request, access, None)) {
            return decision;
        }

        if self.patterns.is_empty() {
            return false;
        }
        if username.is_some_and(|u| u.contains(['+', '#'])) || client_id.contains(['+', '#']) {
            return false;
        }
        let subst = Subst {
            client_id,
            username,
        };
        self.patterns
            .decide(&request, access, Some(subst))
            .unwrap_or(false)
    }
}
