//! Command line, configuration file and ASTRAMQ_* environment variables:
//! bad values are reported in one line naming the key; overrides apply.
//! (AstraMQ's own contract; no MQTT statement.)

mod common;

use std::time::Duration;

use common::*;

/// Run `astramq broker --listen 127.0.0.1:0 ARGS` expecting a config error.
async fn expect_config_error(config: Option<&str>, args: &[&str], env: &[(&str, &str)], key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = vec!["broker", "--listen", "127.0.0.1:0"];
    let path = dir.path().join("bad.toml");
    let path_s = path.to_str().unwrap().to_string();
    if let Some(c) = config {
        std::fs::write(&path, c).unwrap();
        a.extend(["--config", &path_s]);
    }
    a.extend_from_slice(args);
    let out = run_astramq(&a, env, Duration::from_secs(10)).await;
    assert!(
        !out.status.success(),
        "must exit non-zero for bad {key}: {out:?}"
    );
    assert!(
        !out.stdout.contains("listening on"),
        "must not start listening with a bad config: {out:?}"
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line for bad {key}: {:?}",
        out.stderr
    );
    assert!(
        lines[0].contains(key),
        "error line must name {key}: {:?}",
        lines[0]
    );
}

#[tokio::test]
async fn bad_values_in_config_file() {
    let cases = [
        ("[limits]\nmax_packet_size = \"huge\"\n", "max_packet_size"),
        ("[limits]\nreceive_maximum = 0\n", "receive_maximum"),
        (
            "[limits]\nqueue_overflow = \"sideways\"\n",
            "queue_overflow",
        ),
        (
            "[limits]\nconnect_timeout_secs = -1\n",
            "connect_timeout_secs",
        ),
        ("allow_anonymous = \"maybe\"\n", "allow_anonymous"),
        ("log_level = 3\n", "log_level"),
        ("[limits]\nno_such_key = 1\n", "no_such_key"),
        (
            "[shutdown]\ngrace_period_secs = \"soon\"\n",
            "grace_period_secs",
        ),
    ];
    for (cfg, key) in cases {
        expect_config_error(Some(cfg), &[], &[], key).await;
    }
}

#[tokio::test]
async fn invalid_toml_is_an_error() {
    let out = run_astramq(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/astramq.toml",
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.toml");
    std::fs::write(&p, "[limits\nmax_packet_size = 1").unwrap();
    let out = run_astramq(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--config",
            p.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
}

#[tokio::test]
async fn bad_values_in_environment() {
    expect_config_error(
        None,
        &[],
        &[("ASTRAMQ_LIMITS_MAX_PACKET_SIZE", "huge")],
        "max_packet_size",
    )
    .await;
    expect_config_error(
        None,
        &[],
        &[("ASTRAMQ_SHUTDOWN_GRACE_PERIOD_SECS", "soon")],
        "grace_period_secs",
    )
    .await;
    expect_config_error(
        None,
        &[],
        &[("ASTRAMQ_ALLOW_ANONYMOUS", "maybe")],
        "allow_anonymous",
    )
    .await;
}

#[tokio::test]
async fn bad_flag_value_exits_nonzero() {
    let out = run_astramq(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "perhaps",
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let out = run_astramq(
        &["broker", "--listen", "not-an-address"],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
}

// ASTRAMQ_LIMITS_* override the config file.
#[tokio::test]
async fn env_overrides_config_file() {
    let b = Broker::builder()
        .config("[limits]\nreceive_maximum = 10\n")
        .env("ASTRAMQ_LIMITS_RECEIVE_MAXIMUM", "7")
        .start();
    let (_c, ca) = RawClient::connect(b.addr(), Connect::new(Version::V5, "e")).await;
    assert_eq!(ca.props.get_u32(prop::RECEIVE_MAXIMUM), Some(7));
}

// ASTRAMQ_LISTEN and ASTRAMQ_CONFIG are used when no flag is given.
#[tokio::test]
async fn env_listen_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_packet_size = 2048\n").unwrap();
    let b = Broker::builder()
        .no_listen_arg()
        .env("ASTRAMQ_LISTEN", "127.0.0.1:0")
        .env("ASTRAMQ_CONFIG", cfg.to_str().unwrap())
        .start();
    let (_c, ca) = RawClient::connect(b.addr(), Connect::new(Version::V5, "e")).await;
    assert_eq!(ca.props.get_u32(prop::MAXIMUM_PACKET_SIZE), Some(2048));
}

// ASTRAMQ_ALLOW_ANONYMOUS=false (with ASTRAMQ_PASSWORD_FILE) refuses
// anonymous clients; the flag wins over the environment.
#[tokio::test]
async fn env_allow_anonymous_and_flag_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let pws = pw.to_str().unwrap();
    let out = run_astramq(
        &["passwd", "-c", "-b", pws, "u", "p"],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let b = Broker::builder()
        .env("ASTRAMQ_ALLOW_ANONYMOUS", "false")
        .env("ASTRAMQ_PASSWORD_FILE", pws)
        .start();
    let (_c, ca) = RawClient::connect(b.addr(), Connect::new(Version::V5, "anon")).await;
    assert_eq!(ca.code, rc::NOT_AUTHORIZED);
    let (_c, ca) = RawClient::connect(
        b.addr(),
        Connect::new(Version::V5, "u").credentials("u", Some("p")),
    )
    .await;
    assert_eq!(
        ca.code,
        rc::SUCCESS,
        "password file from ASTRAMQ_PASSWORD_FILE"
    );
    let b = Broker::builder()
        .env("ASTRAMQ_ALLOW_ANONYMOUS", "false")
        .env("ASTRAMQ_PASSWORD_FILE", pws)
        .args(&["--allow-anonymous", "true"])
        .start();
    let (_c, ca) = RawClient::connect(b.addr(), Connect::new(Version::V5, "anon")).await;
    assert_eq!(ca.code, rc::SUCCESS);
}

// Several --listen flags: one `listening on` line each, all serving.
#[tokio::test]
async fn multiple_listeners() {
    let b = Broker::builder().args(&["--listen", "127.0.0.1:0"]).start();
    assert_eq!(b.addrs().len(), 2);
    assert_ne!(b.addrs()[0], b.addrs()[1]);
    for (i, a) in b.addrs().iter().enumerate() {
        RawClient::connect_ok(*a, Connect::new(Version::V311, &format!("l{i}"))).await;
    }
}

// `astramq` without a subcommand runs the broker.
#[tokio::test]
async fn no_subcommand_means_broker() {
    let b = Broker::builder().no_subcommand().start();
    b.client(Version::V5, "x").await.ping().await;
}
