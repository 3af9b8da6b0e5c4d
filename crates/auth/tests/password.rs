//! Password file tests, including interoperability with the real Mosquitto tools.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astramq_auth::password::{PasswordError, PasswordFile};

/// Made by `mosquitto_passwd` 2.0.11 (`-b`, `-H sha512`, and the hidden `-I 5`).
const FIXTURE: &str = "\
# made by mosquitto_passwd 2.0.11
alice:$7$101$EowJ+SVajaVHoXTI$4HuFnHKKNCXqwA8swWLy53nspFNrfroLqMwGWVQDe5iDK8AKztK7BCUvr098FfysoZwaTkmSetEGv5aBEx1oZA==
bob:$7$101$LVK2PpCJRda6aq5l$Htyr+GYxpDBEcU30G8n/nlfEIB0OyHRKVporsySuG746ygArpccDllXCEMQgg1gDB8CcRD+BjZ9wNImB0vioFw==

carol:$6$6+f9f2QFzwT2hkvc$3HSv1y/MVZ17Cf5tn+gV+07RF9eRYMGNP9GcSYAEMBmZvOQKY9pVvFjGnswqg0UDM7KmOethBJdlG3b1HNaNIA==
dave:$7$5$f5HvCsMRErtrgDXV$rdv2YUPX2IDmB8XjOF+2D4Ov18TqRSeELDrDBUXsvVkRzd0xOCu6dTND6C5SKbom+cowHy2N1Apv4oqMgVJwgQ==
";

/// Path of a Mosquitto program; panics with a clear message if it is not installed.
fn require(program: &str) -> String {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!(
        "`{program}` not found on PATH: this test checks compatibility with real Mosquitto \
         and needs Debian's `mosquitto` and `mosquitto-clients` packages \
         (apt-get install -y mosquitto mosquitto-clients)"
    );
}

#[test]
fn fixture_from_mosquitto_passwd_verifies() {
    let f = PasswordFile::parse(FIXTURE, "fixture").unwrap();
    assert_eq!(
        f.usernames().collect::<Vec<_>>(),
        ["alice", "bob", "carol", "dave"]
    );
    assert!(f.check("alice", b"secret"));
    assert!(f.check("bob", b"pw2"));
    assert!(f.check("carol", b"c0l0n:pass w/ space"), "$6$ sha512 entry");
    assert!(f.check("dave", b"dpass"), "$7$ with 5 iterations");
    assert!(!f.check("alice", b"Secret"));
    assert!(!f.check("alice", b"secret "));
    assert!(!f.check("alice", b""));
    assert!(!f.check("bob", b"secret"), "another user's password");
    assert!(!f.check("carol", b"c0l0n"));
    assert!(!f.check("mallory", b"secret"), "unknown user");
    assert!(!f.check("", b""));
}

#[test]
fn live_mosquitto_passwd_hash_verifies() {
    let bin = require("mosquitto_passwd");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    for (user, pass, extra) in [
        ("user1", "pass1", &[][..]),
        ("user two", "p:w with spaces", &[][..]),
        ("old", "legacy", &["-H", "sha512"][..]),
        ("ünïcode", "pässwörd", &[][..]),
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args(extra);
        if !path.exists() {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&path)
            .arg(user)
            .arg(pass)
            .output()
            .unwrap();
        assert!(out.status.success(), "mosquitto_passwd failed: {out:?}");
    }
    let f = PasswordFile::load(&path).unwrap();
    assert!(f.check("user1", b"pass1"));
    assert!(f.check("user two", b"p:w with spaces"));
    assert!(f.check("old", b"legacy"));
    assert!(f.check("ünïcode", "pässwörd".as_bytes()));
    assert!(!f.check("user1", b"pass2"));
    assert!(!f.check("old", b"legacy2"));
}

#[test]
fn set_save_load_roundtrip_keeps_comments() {
    let mut f = PasswordFile::parse(FIXTURE, "fixture").unwrap();
    f.set("erin", b"new one").unwrap();
    f.set("alice", b"changed").unwrap();
    assert!(f.remove("bob"));
    assert!(!f.remove("bob"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    f.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# made by mosquitto_passwd 2.0.11\nalice:$7$101$"));
    assert!(
        text.contains("\ncarol:$6$6+f9f2QFzwT2hkvc$"),
        "$6$ entry kept as is"
    );
    let g = PasswordFile::load(&path).unwrap();
    assert_eq!(
        g.usernames().collect::<Vec<_>>(),
        ["alice", "carol", "dave", "erin"]
    );
    assert!(g.check("alice", b"changed"));
    assert!(!g.check("alice", b"secret"));
    assert!(g.check("erin", b"new one"));
    assert!(g.check("carol", b"c0l0n:pass w/ space"));
    assert!(!g.contains("bob"));
    // Only the file itself is left in the directory (no temporary file).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // Saving over an existing file replaces it.
    let mut h = g.clone();
    h.remove("erin");
    h.save(&path).unwrap();
    assert!(!PasswordFile::load(&path).unwrap().contains("erin"));
}

#[test]
fn new_entries_use_fresh_salt_and_mosquitto_defaults() {
    let mut f = PasswordFile::new();
    f.set("a", b"same").unwrap();
    f.set("b", b"same").unwrap();
    let text = f.to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split('$').collect()).collect();
    for (l, fl) in lines.iter().zip(&fields) {
        // user:$7$101$<16 chars = 12 bytes>$<88 chars = 64 bytes>
        assert_eq!(fl[1], "7", "{l}");
        assert_eq!(fl[2], "101", "{l}");
        assert_eq!(fl[3].len(), 16, "{l}");
        assert_eq!(fl[4].len(), 88, "{l}");
    }
    assert_ne!(fields[0][3], fields[1][3], "salts differ");
    assert_ne!(fields[0][4], fields[1][4], "hashes differ");
}

#[test]
fn invalid_usernames_are_rejected() {
    let mut f = PasswordFile::new();
    for bad in ["a:b", "", "#x", " x", "x ", "a\nb", "a\0"] {
        assert!(
            matches!(f.set(bad, b"p"), Err(PasswordError::InvalidUsername { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(f.usernames().count(), 0);
}

#[test]
fn malformed_lines_name_file_and_line() {
    let hash7 = "$7$101$EowJ+SVajaVHoXTI$4HuFnHKKNCXqwA8swWLy53nspFNrfroLqMwGWVQDe5iDK8AKztK7BCUvr098FfysoZwaTkmSetEGv5aBEx1oZA==";
    let cases: Vec<(String, &str)> = vec![
        ("no colon here".into(), "username:hash"),
        ("u:".into(), "no password hash"),
        (":$7$1$a$b".into(), "empty username"),
        ("u:plaintext".into(), "not hashed"),
        ("u:$5$abc$def".into(), "unsupported hash type"),
        ("u:$7$0$EowJ+SVajaVHoXTI$AA==".into(), "iteration"),
        ("u:$7$-1$EowJ+SVajaVHoXTI$AA==".into(), "iteration"),
        ("u:$7$101$!!!$AA==".into(), "base64"),
        ("u:$7$101$AAAA$AA==".into(), "salt is 3 bytes"),
        ("u:$7$101$EowJ+SVajaVHoXTI$AA==".into(), "hash is 1 bytes"),
        ("u:$7$101$EowJ+SVajaVHoXTI".into(), "$7$ hash must be"),
        ("u:$6$EowJ+SVajaVHoXTI".into(), "$6$ hash must be"),
        (format!("u:{hash7}\nu:{hash7}"), "more than once"),
    ];
    for (body, want) in cases {
        let text = format!("# header\n\n{body}\n");
        let line = 2 + body.lines().count();
        match PasswordFile::parse(&text, "/etc/mosquitto/passwd") {
            Err(e @ PasswordError::Parse { line: l, .. }) => {
                let msg = e.to_string();
                assert_eq!(l, line, "{body:?}: {msg}");
                assert!(
                    msg.starts_with(&format!("/etc/mosquitto/passwd:{line}: ")),
                    "{msg}"
                );
                assert!(
                    msg.contains(want),
                    "{body:?}: {msg} should mention {want:?}"
                );
            }
            other => panic!("{body:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn load_missing_file_is_io_error_naming_path() {
    let e = PasswordFile::load(Path::new("/nonexistent/astramq/pw")).unwrap_err();
    assert!(matches!(e, PasswordError::Io { .. }));
    assert!(e.to_string().starts_with("/nonexistent/astramq/pw: "));
}

/// A file written by us is accepted by a real Mosquitto broker: the right password
/// connects and publishes, a wrong one or an unknown user is refused.
#[test]
fn mosquitto_broker_accepts_our_entries() {
    let broker = require("mosquitto");
    let publish = require("mosquitto_pub");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let mut f = PasswordFile::new();
    f.set("ours", b"s3cret pass").unwrap();
    f.set_with_iterations("fast", b"quick", 7).unwrap();
    f.save(&pw).unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    let mut c = std::fs::File::create(&conf).unwrap();
    // `user root`: keep root so the broker can read the 0600 file in our 0700 temp dir.
    writeln!(
        c,
        "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}",
        pw.display()
    )
    .unwrap();
    drop(c);
    let child = Command::new(&broker)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child_guard = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child_guard.0.try_wait().unwrap() {
            panic!("mosquitto exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let try_pub = |user: &str, pass: &str| {
        Command::new(&publish)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "t",
                "-m",
                "x",
            ])
            .args(["-u", user, "-P", pass, "-q", "1"])
            .output()
            .unwrap()
    };
    let ok = try_pub("ours", "s3cret pass");
    assert!(ok.status.success(), "right password refused: {ok:?}");
    let ok = try_pub("fast", "quick");
    assert!(ok.status.success(), "7-iteration entry refused: {ok:?}");
    let bad = try_pub("ours", "s3cret pas");
    assert!(!bad.status.success(), "wrong password accepted: {bad:?}");
    let bad = try_pub("nobody", "s3cret pass");
    assert!(!bad.status.success(), "unknown user accepted: {bad:?}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = PasswordFile::parse(&text, "p");
        }

        #[test]
        fn parse_never_panics_on_likely_lines(
            lines in proptest::collection::vec("[a-z#: ]{0,4}(:\\$[5-8]\\$[0-9]{0,3}\\$[A-Za-z0-9+/=$]{0,100})?", 0..6)
        ) {
            let text = lines.join("\n");
            if let Ok(f) = PasswordFile::parse(&text, "p") {
                let _ = f.check("a", b"x");
                // What parses, saves and parses back the same.
                let again = PasswordFile::parse(&f.to_text(), "p").unwrap();
                prop_assert_eq!(again.to_text(), f.to_text());
            }
        }

        #[test]
        fn set_then_check(user in "[A-Za-z0-9_.@-]{1,20}", pass in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut f = PasswordFile::new();
            f.set_with_iterations(&user, &pass, 2).unwrap();
            let g = PasswordFile::parse(&f.to_text(), "p").unwrap();
            prop_assert!(g.check(&user, &pass));
            // (Not a trailing NUL: HMAC zero-pads short keys, so PBKDF2 cannot tell
            // "p" from "p\0"; Mosquitto passwords are C strings and never hold NUL.)
            let mut other = pass.clone();
            other.push(b'x');
            prop_assert!(!g.check(&user, &other));
        }
    }
}
