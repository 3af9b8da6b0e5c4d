//! ACL tests. Cases cite mosquitto.conf(5) (`acl_file`) and, where noted, behaviour
//! observed with a real Mosquitto 2.0.11 broker.

use astramq_auth::acl::{AclError, AclFile};
use astramq_auth::Access::{Read, Write};

const ACL: &str = "\
# General rules: before any `user` line, they apply to anonymous clients.
topic read public/#
topic readwrite sandbox/+
topic deny public/secret

  # Indented comment, indented rule.
	topic write anon/out

user alice
topic readwrite alice/#
topic read sensors/+/temp
topic deny alice/private
topic write $SYS/alice

user bob with spaces
topic sensors/#

user carol
topic read #

user alice
topic read added/later

pattern write devices/%c/out
pattern read devices/%c/in/#
pattern readwrite users/%u/#
pattern deny devices/%c/out/blocked
pattern read shared/%u/%c
";

fn acl() -> AclFile {
    AclFile::parse(ACL, "acl").unwrap()
}

/// (client id, username, topic, access, expected, why)
type Case = (
    &'static str,
    Option<&'static str>,
    &'static str,
    astramq_auth::Access,
    bool,
    &'static str,
);

#[test]
fn access_table() {
    let a = acl();
    let cases: &[Case] = &[
        // --- General (anonymous) section. Man page: "The first set of topics are
        // applied to anonymous clients". Observed on 2.0.11: an authenticated user
        // gets nothing from it.
        ("c", None, "public/news", Read, true, "anon read public/#"),
        (
            "c",
            None,
            "public",
            Read,
            true,
            "'#' also matches the parent level",
        ),
        ("c", None, "public/news", Write, false, "read-only rule"),
        ("c", None, "sandbox/x", Write, true, "readwrite +"),
        ("c", None, "sandbox/x/y", Write, false, "+ is one level"),
        ("c", None, "anon/out", Write, true, "indented rule"),
        ("c", None, "anon/out", Read, false, "write-only rule"),
        (
            "c",
            Some("alice"),
            "public/news",
            Read,
            false,
            "general rules are anonymous-only",
        ),
        (
            "c",
            Some("nobody"),
            "public/news",
            Read,
            false,
            "user without block",
        ),
        // --- deny: "deny" rules are checked before grants.
        (
            "c",
            None,
            "public/secret",
            Read,
            false,
            "deny beats the read grant",
        ),
        (
            "c",
            None,
            "public/secret/x",
            Read,
            true,
            "deny is an exact filter, not a prefix",
        ),
        // --- User blocks.
        (
            "c",
            Some("alice"),
            "alice/a/b",
            Write,
            true,
            "alice readwrite alice/#",
        ),
        ("c", Some("alice"), "alice/a/b", Read, true, ""),
        (
            "c",
            Some("alice"),
            "alice/private",
            Write,
            false,
            "alice's deny",
        ),
        (
            "c",
            Some("alice"),
            "alice/private",
            Read,
            false,
            "deny is all access",
        ),
        ("c", Some("alice"), "sensors/k/temp", Read, true, ""),
        ("c", Some("alice"), "sensors/k/temp", Write, false, ""),
        (
            "c",
            Some("alice"),
            "added/later",
            Read,
            true,
            "second `user alice` block merges",
        ),
        (
            "c",
            Some("bob"),
            "alice/a",
            Read,
            false,
            "other user's rule",
        ),
        (
            "c",
            None,
            "alice/a",
            Read,
            false,
            "anonymous gets no user rules",
        ),
        (
            "c",
            Some("bob with spaces"),
            "sensors/a/b",
            Write,
            true,
            "`topic X` = readwrite; username is the rest of the line",
        ),
        ("c", Some("bob with spaces"), "sensors/a/b", Read, true, ""),
        (
            "c",
            Some("bob"),
            "sensors/a/b",
            Read,
            false,
            "username must match exactly",
        ),
        // --- `$` topics are not matched by a leading wildcard.
        (
            "c",
            Some("carol"),
            "anything/at/all",
            Read,
            true,
            "carol read #",
        ),
        (
            "c",
            Some("carol"),
            "$SYS/broker/uptime",
            Read,
            false,
            "# does not cover $SYS",
        ),
        (
            "c",
            Some("alice"),
            "$SYS/alice",
            Write,
            true,
            "rule starting with $ matches",
        ),
        // --- Patterns: apply to every client, anonymous included.
        (
            "dev1",
            None,
            "devices/dev1/out",
            Write,
            true,
            "%c substituted",
        ),
        (
            "dev1",
            Some("alice"),
            "devices/dev1/out",
            Write,
            true,
            "patterns apply to users too",
        ),
        (
            "dev1",
            None,
            "devices/dev2/out",
            Write,
            false,
            "another client's id",
        ),
        (
            "dev1",
            None,
            "devices/dev1/out",
            Read,
            false,
            "write-only pattern",
        ),
        ("dev1", None, "devices/dev1/in/a/b", Read, true, ""),
        (
            "dev1",
            None,
            "devices/dev1/in",
            Read,
            true,
            "'#' matches the parent",
        ),
        (
            "dev1",
            None,
            "devices/dev1/out/blocked",
            Write,
            false,
            "deny pattern",
        ),
        (
            "dev1",
            Some("carol"),
            "devices/dev1/out/blocked",
            Read,
            true,
            "user grant decides before patterns (Mosquitto order)",
        ),
        ("c", Some("u1"), "users/u1/x", Write, true, "%u substituted"),
        ("c", Some("u1"), "users/u2/x", Write, false, ""),
        (
            "c",
            None,
            "users/%u/x",
            Write,
            false,
            "%u pattern never applies to anonymous",
        ),
        ("c", None, "users//x", Write, false, ""),
        (
            "cid",
            Some("u"),
            "shared/u/cid",
            Read,
            true,
            "%u and %c together",
        ),
        ("cid", Some("u"), "shared/u/other", Read, false, ""),
        (
            "devABC",
            None,
            "devices/dev/out",
            Write,
            false,
            "whole level, not a prefix",
        ),
        (
            "dev",
            None,
            "devices/devABC/out",
            Write,
            false,
            "whole level, not a prefix",
        ),
        // --- Dangerous ids: Mosquitto refuses pattern access to a client whose
        // username or client id contains + or #.
        ("d+", None, "devices/d+/out", Write, false, "+ in client id"),
        ("d#", None, "devices/d#/out", Write, false, "# in client id"),
        ("c", Some("u#"), "users/u#/x", Write, false, "# in username"),
        (
            "+",
            None,
            "devices/x/out",
            Write,
            false,
            "+ as client id is not a wildcard",
        ),
        (
            "c+",
            Some("alice"),
            "alice/x",
            Write,
            true,
            "user rules are checked before that refusal",
        ),
        // '/' in a substituted value: the pattern does not apply (stricter than Mosquitto).
        (
            "dev1/out",
            None,
            "devices/dev1/out/out",
            Write,
            false,
            "client id with /",
        ),
        ("dev1", None, "devices/dev1/out/x", Write, false, ""),
        (
            "",
            None,
            "devices//out",
            Write,
            false,
            "empty client id never substitutes",
        ),
        // --- Subscription filters (Read): covered only if the rule allows all of it.
        (
            "c",
            Some("alice"),
            "alice/#",
            Read,
            true,
            "alice/# covers alice/#",
        ),
        ("c", Some("alice"), "alice/+/x", Read, true, "# covers +"),
        (
            "c",
            Some("alice"),
            "sensors/+/temp",
            Read,
            true,
            "+ covers +",
        ),
        (
            "c",
            Some("alice"),
            "sensors/#",
            Read,
            false,
            "+ does not cover #",
        ),
        (
            "c",
            Some("alice"),
            "sensors/+/+",
            Read,
            false,
            "literal temp does not cover +",
        ),
        ("c", Some("alice"), "#", Read, false, ""),
        ("c", Some("carol"), "#", Read, true, "# covers #"),
        ("c", Some("carol"), "+/#", Read, true, ""),
        ("c", None, "public/+", Read, true, ""),
        (
            "c",
            None,
            "+/news",
            Read,
            false,
            "a requested + is covered only by + or #",
        ),
        (
            "dev1",
            None,
            "devices/dev1/in/#",
            Read,
            true,
            "filter through a pattern",
        ),
        (
            "dev1",
            None,
            "devices/+/in/#",
            Read,
            false,
            "%c does not cover +",
        ),
        // --- Invalid requests are refused.
        (
            "c",
            Some("alice"),
            "alice/+",
            Write,
            false,
            "wildcard in a publish",
        ),
        ("c", Some("alice"), "alice/#", Write, false, ""),
        ("c", Some("carol"), "a/b#", Read, false, "invalid filter"),
        ("c", Some("carol"), "a/#/b", Read, false, "invalid filter"),
        ("c", Some("carol"), "", Read, false, "empty topic"),
    ];
    let mut failures = Vec::new();
    for &(cid, user, topic, access, want, why) in cases {
        if a.allowed(cid, user, topic, access) != want {
            failures.push(format!(
                "client {cid:?} user {user:?} {access:?} {topic:?}: expected {want} ({why})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_rules_means_deny() {
    let empty = AclFile::default();
    assert!(!empty.allowed("c", None, "a", Read));
    let only_comments = AclFile::parse("# nothing\n\n", "acl").unwrap();
    assert!(!only_comments.allowed("c", Some("u"), "a", Write));
}

#[test]
fn single_word_is_the_topic() {
    // Mosquitto: with one word after `topic`, that word is the topic, readwrite.
    let a = AclFile::parse("topic read\ntopic  deny \n", "acl").unwrap();
    assert!(a.allowed("c", None, "read", Write));
    assert!(a.allowed("c", None, "deny", Read));
}

#[test]
fn topic_may_contain_spaces() {
    let a = AclFile::parse("topic read a b/c d  \n", "acl").unwrap();
    assert!(a.allowed("c", None, "a b/c d", Read));
}

#[test]
fn parse_errors_name_file_and_line() {
    let cases = [
        ("topic", "missing topic"),
        ("topic read a/#/b", "'#' must be the last level"),
        ("topic read a/b+", "must be a whole level"),
        ("topic writ a", "invalid access type"),
        ("pattern", "missing topic"),
        ("user", "missing username"),
        ("user   ", "missing username"),
        ("users alice", "unknown keyword"),
        ("publish a", "unknown keyword"),
    ];
    for (body, want) in cases {
        let text = format!("# c\ntopic a\n{body}\n");
        match AclFile::parse(&text, "/etc/mosquitto/acl") {
            Err(e @ AclError::Parse { line: 3, .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with("/etc/mosquitto/acl:3: "), "{msg}");
                assert!(msg.contains(want), "{body:?}: {msg}");
            }
            other => panic!("{body:?}: expected parse error at line 3, got {other:?}"),
        }
    }
}

#[test]
fn load_reads_file_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("acl");
    std::fs::write(&p, ACL).unwrap();
    let a = AclFile::load(&p).unwrap();
    assert!(a.allowed("c", Some("alice"), "alice/x", Write));
    let e = AclFile::load(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(e, AclError::Io { .. }));
    assert!(e.to_string().contains("missing"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = AclFile::parse(&text, "acl");
        }

        #[test]
        fn parse_and_check_never_panic(
            lines in proptest::collection::vec(
                "(topic|pattern|user|#| )( (read|write|readwrite|deny|x))?( [a-z%cu+#$/ ]{0,12})?", 0..8),
            cid in "[a-z+#/%]{0,4}",
            user in proptest::option::of("[a-z+#/%]{0,4}"),
            topic in "[a-z+#/$]{0,10}",
        ) {
            if let Ok(a) = AclFile::parse(&lines.join("\n"), "acl") {
                let _ = a.allowed(&cid, user.as_deref(), &topic, Read);
                let _ = a.allowed(&cid, user.as_deref(), &topic, Write);
            }
        }

        /// A topic name is allowed for Read iff the same check passes with the rule as
        /// a filter: a `topic read #` user may read every non-$ topic name.
        #[test]
        fn read_all_allows_every_plain_name(topic in "[a-z]{1,3}(/[a-z]{0,3}){0,4}") {
            let a = AclFile::parse("user u\ntopic read #", "acl").unwrap();
            prop_assert!(a.allowed("c", Some("u"), &topic, Read));
            prop_assert!(!a.allowed("c", Some("u"), &topic, Write));
        }
    }
}
