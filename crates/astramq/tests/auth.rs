//! Authentication (password files from `astramq passwd` and `mosquitto_passwd`,
//! anonymous access) and authorization (ACL files with %c/%u patterns)
//! (MQTT 3.1.1 §3.1.2.8-9, §3.2.2.3, §5.4.2; MQTT 5.0 §3.1.2.8-9, §3.2.2.2, §5.4.2).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

async fn astramq_passwd(args: &[&str]) {
    let mut a = vec!["passwd"];
    a.extend_from_slice(args);
    let out = run_astramq(&a, &[], Duration::from_secs(30)).await;
    assert!(out.status.success(), "astramq {a:?}: {out:?}");
}

async fn mosquitto_passwd(args: &[&str]) {
    let out = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_passwd"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Password file with alice:s3cret and bob:hunter2, made by `tool`.
async fn password_file(dir: &Path, tool: &str) -> PathBuf {
    let f = dir.join(format!("{tool}.pw"));
    let fs = path_str(&f).to_string();
    if tool == "astramq" {
        astramq_passwd(&["-c", "-b", &fs, "alice", "s3cret"]).await;
        astramq_passwd(&["-b", &fs, "bob", "hunter2"]).await;
    } else {
        mosquitto_passwd(&["-c", "-b", &fs, "alice", "s3cret"]).await;
        mosquitto_passwd(&["-b", &fs, "bob", "hunter2"]).await;
    }
    f
}

fn secured(pw: &Path) -> Broker {
    Broker::start_with(
        "",
        &[
            "--allow-anonymous",
            "false",
            "--password-file",
            path_str(pw),
        ],
    )
}

async fn check_credentials(v: Version, tool: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), tool).await;
    let b = secured(&pw);
    for (user, pass) in [("alice", "s3cret"), ("bob", "hunter2")] {
        let (_c, ca) = RawClient::connect(
            b.addr(),
            Connect::new(v, user).credentials(user, Some(pass)),
        )
        .await;
        assert_eq!(ca.code, 0, "{tool}: {user} with the right password");
    }
    // 3.1.1 [MQTT-3.2.2-?] 0x04 / 5 0x86 Bad User Name or Password, then close.
    for (user, pass) in [
        ("alice", Some("wrong")),
        ("mallory", Some("s3cret")),
        ("alice", None),
    ] {
        let (mut c, ca) =
            RawClient::connect(b.addr(), Connect::new(v, "x").credentials(user, pass)).await;
        assert_eq!(
            ca.code,
            v.pick(
                rc::V3_BAD_USERNAME_OR_PASSWORD,
                rc::BAD_USERNAME_OR_PASSWORD
            ),
            "{tool}: {user}/{pass:?} must be refused"
        );
        c.expect_closed(T).await;
    }
}

// Password file written by `astramq passwd -c -b`.
async fn astramq_passwd_file(v: Version) {
    check_credentials(v, "astramq").await;
}
versions_test!(astramq_passwd_file);

// Password file written by Debian's mosquitto_passwd is accepted as is.
async fn mosquitto_passwd_file(v: Version) {
    check_credentials(v, "mosquitto").await;
}
versions_test!(mosquitto_passwd_file);

// `astramq passwd -D` deletes a user: that user is refused afterwards.
#[tokio::test]
async fn astramq_passwd_delete() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "astramq").await;
    astramq_passwd(&["-D", path_str(&pw), "bob"]).await;
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.contains("alice:") && !text.contains("bob:"), "{text}");
    let b = secured(&pw);
    let (_c, ca) = RawClient::connect(
        b.addr(),
        Connect::new(Version::V5, "b").credentials("bob", Some("hunter2")),
    )
    .await;
    assert_eq!(ca.code, rc::BAD_USERNAME_OR_PASSWORD);
}

// allow_anonymous=false refuses a CONNECT without user name:
// 3.1.1 0x05 Not authorized / 5 0x87 Not authorized.
async fn anonymous_refused(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "astramq").await;
    let b = secured(&pw);
    let (mut c, ca) = RawClient::connect(b.addr(), Connect::new(v, "anon")).await;
    assert_eq!(ca.code, v.pick(rc::V3_NOT_AUTHORIZED, rc::NOT_AUTHORIZED));
    c.expect_closed(T).await;
}
versions_test!(anonymous_refused);

// mosquitto_pub with -u/-P works against a password-protected broker.
#[tokio::test]
async fn mosquitto_pub_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "mosquitto").await;
    let b = secured(&pw);
    let mut s = RawClient::connect_ok(
        b.addr(),
        Connect::new(Version::V5, "s").credentials("bob", Some("hunter2")),
    )
    .await;
    s.sub("cred", 0).await;
    let out = mosquitto_pub(
        &b,
        &["-u", "alice", "-P", "s3cret", "-t", "cred", "-m", "ok"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s.recv_publish(T).await.payload, b"ok");
    let out = mosquitto_pub(&b, &["-u", "alice", "-P", "nope", "-t", "cred", "-m", "x"]).await;
    assert!(!out.status.success(), "wrong password must fail: {out:?}");
}

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic write inbox/alice
topic read public/#

pattern readwrite clients/%c/#
pattern read users/%u/#
";

fn acl_broker(dir: &Path, pw: &Path) -> Broker {
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    Broker::start_with(
        "",
        &[
            "--password-file",
            path_str(pw),
            "--acl-file",
            path_str(&acl),
        ],
    )
}

// [MQTT-3.9.3 / 5.4.2] a denied subscription: SUBACK 0x80 (3.1.1) / 0x87 Not
// authorized (5), other filters in the same SUBSCRIBE unaffected.
async fn acl_denied_subscribe(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "astramq").await;
    let b = acl_broker(dir.path(), &pw);
    let mut alice = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "alice-c").credentials("alice", Some("s3cret")),
    )
    .await;
    let codes = alice
        .subscribe(&[
            ("alice/x", 1),
            ("bob/x", 1),
            ("public/news", 0),
            ("inbox/alice", 0),
        ])
        .await;
    let denied = v.pick(rc::V3_FAILURE, rc::NOT_AUTHORIZED);
    assert_eq!(codes, vec![1, denied, 0, denied]);
}
versions_test!(acl_denied_subscribe);

// A denied PUBLISH is not delivered; 3.1.1 acknowledges it normally
// (dropped silently), 5 answers QoS 1 with PUBACK 0x87.
async fn acl_denied_publish(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "astramq").await;
    let b = acl_broker(dir.path(), &pw);
    let mut watcher = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "w").credentials("alice", Some("s3cret")),
    )
    .await;
    watcher.sub("alice/#", 1).await;
    let mut bob = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "bob-c").credentials("bob", Some("hunter2")),
    )
    .await;
    let code = bob.publish("alice/secret", b"intrusion", 1, false).await;
    assert_eq!(code, v.pick(0, rc::NOT_AUTHORIZED));
    watcher.expect_no_publish(ABSENCE).await;
    // alice may publish there.
    let mut alice = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "a").credentials("alice", Some("s3cret")),
    )
    .await;
    assert!(alice.publish("alice/ok", b"fine", 1, false).await < 0x80);
    assert_eq!(watcher.recv_publish(T).await.payload, b"fine");
}
versions_test!(acl_denied_publish);

// ACL patterns: %c is the client id, %u the user name.
async fn acl_patterns(v: Version) {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "astramq").await;
    let b = acl_broker(dir.path(), &pw);
    let mut c = RawClient::connect_ok(
        b.addr(),
        Connect::new(v, "dev42").credentials("bob", Some("hunter2")),
    )
    .await;
    let denied = v.pick(rc::V3_FAILURE, rc::NOT_AUTHORIZED);
    let codes = c
        .subscribe(&[
            ("clients/dev42/#", 0),
            ("clients/dev43/#", 0),
            ("users/bob/#", 0),
            ("users/alice/#", 0),
        ])
        .await;
    assert_eq!(codes, vec![0, denied, 0, denied]);
    // write through %c works, write to the read-only %u area is dropped.
    assert!(c.publish("clients/dev42/state", b"on", 1, false).await < 0x80);
    assert_eq!(c.recv_publish(T).await.payload, b"on");
    let code = c.publish("users/bob/x", b"nope", 1, false).await;
    assert_eq!(code, v.pick(0, rc::NOT_AUTHORIZED));
    c.expect_no_publish(ABSENCE).await;
}
versions_test!(acl_patterns);
