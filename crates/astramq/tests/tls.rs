//! 08 TLS: MQTT over TLS on a node's own listeners (`tls_listen`), client
//! certificates (`tls_client_ca`, `require_certificate`, `use_identity_as_username`,
//! `use_subject_as_username`) and reloading certificates without a restart.
//!
//! Clients: Mosquitto's `mosquitto_pub` / `mosquitto_sub` (`--cafile`, `--cert`,
//! `--key`, `--tls-version`), and a raw MQTT client over a rustls connection pinned
//! to one TLS version (to check what was negotiated, and to hold one connection
//! open across a reload). Certificates are made by each test (rcgen).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::certs::{tls_connect, tls_over, Pki};
use common::certs::{Ca, Issued};
use common::*;
use rcgen::DnType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A broker with a plain listener (the harness's) and one TLS listener, the
/// server certificate of `pki`, and `extra` TOML.
fn start(pki: &Pki, extra: &str) -> (Broker, SocketAddr) {
    let toml = format!(
        "tls_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
        s(&pki.cert),
        s(&pki.key)
    );
    let broker = Broker::builder()
        .config(&toml)
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    let tls = broker.listener("tls");
    (broker, tls)
}

/// A raw MQTT client connected (CONNACK 0) over TLS.
async fn raw_tls_client(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Issued>,
    id: &str,
) -> RawClient {
    let stream = tls_connect(addr, ca_pem, client, &rustls::version::TLS13)
        .await
        .expect("TLS handshake");
    let mut c = RawClient::over(stream);
    let ack = c.handshake(Connect::new(Version::V311, id)).await;
    assert_eq!(ack.code, 0, "CONNACK over TLS: {ack:?}");
    c
}

/// mosquitto_sub over TLS in the background, subscribed once a probe published
/// on the plain listener (to `PREFIX/probe`) arrives.
async fn tls_sub(broker: &Broker, tls: SocketAddr, prefix: &str, args: &[&str]) -> BgSub {
    let filter = format!("{prefix}/#");
    let mut all = vec!["-t", &filter, "-v"];
    all.extend_from_slice(args);
    let mut sub = BgSub::spawn_at("localhost", tls, &all);
    sub.probe(broker, &format!("{prefix}/probe"), b"p").await;
    sub
}

/// The next line that is not a probe's.
async fn next_message(sub: &mut BgSub, prefix: &str) -> String {
    let probe = format!("{prefix}/probe ");
    loop {
        let line = sub
            .next_line(T)
            .await
            .expect("mosquitto_sub printed nothing in time");
        if !line.starts_with(&probe) {
            return line;
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// --- 08-1: connecting over TLS ----------------------------------------------

/// TLS 1.2 and TLS 1.3 clients (Mosquitto's, pinned with `--tls-version`) publish
/// and subscribe through the TLS listener.
#[tokio::test]
async fn tls_1_2_and_1_3_publish_and_subscribe_with_mosquitto_clients() {
    let pki = Pki::new();
    let (broker, tls) = start(&pki, "");
    for version in ["tlsv1.2", "tlsv1.3"] {
        let prefix = format!("tls/{}", version.replace('.', ""));
        let args = ["--cafile", s(&pki.ca_file), "--tls-version", version];
        let mut sub = tls_sub(&broker, tls, &prefix, &args).await;
        let topic = format!("{prefix}/hello");
        let mut pub_args = args.to_vec();
        pub_args.extend_from_slice(&["-t", &topic, "-m", version, "-q", "1"]);
        let out = mosquitto_pub_at("localhost", tls, &pub_args).await;
        assert!(out.status.success(), "mosquitto_pub {version}: {out:?}");
        assert_eq!(
            next_message(&mut sub, &prefix).await,
            format!("{topic} {version}")
        );
    }
}

/// The version a client is pinned to is the one negotiated, for both versions; a
/// raw MQTT exchange then works over the connection.
#[tokio::test]
async fn tls_1_2_and_1_3_are_negotiated_as_asked() {
    let pki = Pki::new();
    let (_broker, tls) = start(&pki, "");
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let stream = tls_connect(tls, &pki.ca.pem(), None, version)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        let mut c = RawClient::over(stream);
        let ack = c.handshake(Connect::new(Version::V5, "pinned")).await;
        assert_eq!(ack.code, 0);
        c.ping().await;
    }
}

/// A client that trusts another CA refuses the server's certificate.
#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let pki = Pki::new();
    let (_broker, tls) = start(&pki, "");
    let other = Ca::new("some other CA");
    let other_file = other.write(pki.dir.path(), "other-ca");
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&other_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(
        !out.status.success(),
        "published through an untrusted server: {out:?}"
    );
    let e = tls_connect(tls, &other.pem(), None, &rustls::version::TLS13)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

/// Plain MQTT on the TLS port is refused (no CONNACK, closed) and logged.
#[tokio::test]
async fn plain_mqtt_on_the_tls_port_is_refused_and_logged() {
    let pki = Pki::new();
    let (broker, tls) = start(&pki, "");
    let mut c = RawClient::tcp(tls).await;
    c.send(&Connect::new(Version::V311, "plain").encode()).await;
    c.expect_closed(T).await;
    wait_for(T, "a `TLS handshake failed` line", || {
        broker.stderr().contains("TLS handshake failed")
    })
    .await;
    // The node still serves.
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
}

/// Unreadable or invalid TLS files stop start-up with one line naming the key and
/// the file, exit status 1.
#[tokio::test]
async fn bad_tls_files_are_start_up_errors_naming_the_file() {
    let pki = Pki::new();
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not PEM at all\n").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                s(&pki.key),
            ],
            "tls_cert /nonexistent/cert.pem",
        ),
        (
            &["--tls-cert", s(&pki.cert), "--tls-key", s(&junk)],
            "no PEM private key",
        ),
        (
            &[
                "--tls-cert",
                s(&pki.cert),
                "--tls-key",
                s(&pki.key),
                "--tls-client-ca",
                s(&junk),
            ],
            "tls_client_ca",
        ),
        (&[], "tls_cert: required"),
    ];
    for (args, expected) in cases {
        let mut all = vec![
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        let out = run_astramq(&all, &[], T).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

// --- 08-2: client certificates -------------------------------------------------

fn mtls(pki: &Pki, ca: &Path, extra: &str) -> (Broker, SocketAddr) {
    start(pki, &format!("tls_client_ca = {:?}\n{extra}", s(ca)))
}

/// With `require_certificate`, a client without a certificate is refused during
/// the handshake, and the log says why.
#[tokio::test]
async fn mtls_a_client_without_a_certificate_is_refused_in_the_handshake() {
    let pki = Pki::new();
    let (_ca, ca_file) = pki.client_ca("clients");
    let (broker, tls) = mtls(&pki, &ca_file, "require_certificate = true\n");
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(
        !out.status.success(),
        "published without a certificate: {out:?}"
    );
    wait_for(T, "the refusal logged with its reason", || {
        let log = broker.stderr();
        log.contains("TLS handshake failed") && log.contains("peer sent no certificates")
    })
    .await;
    let failures = format!(
        r#"astramq_connection_setup_failures_total{{listener="{tls}",transport="tls",proxy="false",reason="tls"}}"#
    );
    assert!(metric_at(broker.health_addr(), &failures).await >= 1);
}

/// A certificate from a CA not in `tls_client_ca` is refused in the handshake.
#[tokio::test]
async fn mtls_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (_ca, ca_file) = pki.client_ca("clients");
    let (broker, tls) = mtls(&pki, &ca_file, "require_certificate = true\n");
    let rogue = Ca::new("rogue CA").client(&[(DnType::CommonName, "device-1")]);
    let (cert, key) = rogue.write(pki.dir.path(), "rogue");
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &[
            "--cafile",
            s(&pki.ca_file),
            "--cert",
            s(&cert),
            "--key",
            s(&key),
            "-t",
            "t",
            "-m",
            "m",
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "published with a rogue certificate: {out:?}"
    );
    wait_for(T, "the refusal logged with its reason", || {
        let log = broker.stderr();
        log.contains("TLS handshake failed") && log.contains("invalid peer certificate")
    })
    .await;
}

/// A certificate from the client CA is accepted: publish and subscribe work.
#[tokio::test]
async fn mtls_a_good_certificate_is_accepted() {
    let pki = Pki::new();
    let (ca, ca_file) = pki.client_ca("clients");
    let (broker, tls) = mtls(&pki, &ca_file, "require_certificate = true\n");
    let (cert, key) = ca
        .client(&[(DnType::CommonName, "device-1")])
        .write(pki.dir.path(), "device-1");
    let args = [
        "--cafile",
        s(&pki.ca_file),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ];
    let mut sub = tls_sub(&broker, tls, "mtls", &args).await;
    let mut pub_args = args.to_vec();
    pub_args.extend_from_slice(&["-t", "mtls/x", "-m", "ok"]);
    let out = mosquitto_pub_at("localhost", tls, &pub_args).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(next_message(&mut sub, "mtls").await, "mtls/x ok");
}

/// Without `require_certificate` a certificate is optional, but one that is sent
/// must be valid.
#[tokio::test]
async fn mtls_optional_certificate_none_is_accepted_a_bad_one_is_not() {
    let pki = Pki::new();
    let (_ca, ca_file) = pki.client_ca("clients");
    let (_broker, tls) = mtls(&pki, &ca_file, "require_certificate = false\n");
    let base = ["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"];
    let out = mosquitto_pub_at("localhost", tls, &base).await;
    assert!(out.status.success(), "no certificate: {out:?}");
    let (cert, key) = Ca::new("rogue")
        .client(&[(DnType::CommonName, "x")])
        .write(pki.dir.path(), "rogue");
    let mut bad = base.to_vec();
    bad.extend_from_slice(&["--cert", s(&cert), "--key", s(&key)]);
    let out = mosquitto_pub_at("localhost", tls, &bad).await;
    assert!(!out.status.success(), "a rogue certificate: {out:?}");
}

/// `use_identity_as_username`: the certificate's Common Name is the user name the
/// ACL sees, whatever user name CONNECT claims.
#[tokio::test]
async fn mtls_identity_as_username_keys_the_acl() {
    let pki = Pki::new();
    let (ca, ca_file) = pki.client_ca("clients");
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "topic write devices/probe\nuser device-1\ntopic write devices/device-1/#\nuser monitor\ntopic read devices/#\n",
    )
    .unwrap();
    let (broker, tls) = mtls(
        &pki,
        &ca_file,
        &format!(
            "require_certificate = true\nuse_identity_as_username = true\nacl_file = {:?}\n",
            s(&acl)
        ),
    );
    let cert_args = |name: &str| {
        let (c, k) = ca
            .client(&[
                (DnType::OrganizationName, "Acme"),
                (DnType::CommonName, name),
            ])
            .write(pki.dir.path(), name);
        vec![
            "--cafile".to_string(),
            s(&pki.ca_file).to_string(),
            "--cert".to_string(),
            s(&c).to_string(),
            "--key".to_string(),
            s(&k).to_string(),
        ]
    };
    let monitor = cert_args("monitor");
    let monitor: Vec<&str> = monitor.iter().map(String::as_str).collect();
    let mut sub = tls_sub(&broker, tls, "devices", &monitor).await;
    let device = cert_args("device-1");
    let publish = |topic: &'static str| {
        let mut a: Vec<String> = device.clone();
        // The user name CONNECT claims is ignored: the certificate says device-1.
        a.extend(["-u", "monitor", "-t", topic, "-m", "m", "-q", "1"].map(String::from));
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let out = mosquitto_pub_at("localhost", tls, &a).await;
            assert!(out.status.success(), "{topic}: {out:?}");
        }
    };
    publish("devices/device-1/a").await;
    publish("devices/device-2/a").await; // denied by the ACL: dropped (3.1.1)
    publish("devices/device-1/b").await;
    assert_eq!(
        next_message(&mut sub, "devices").await,
        "devices/device-1/a m"
    );
    assert_eq!(
        next_message(&mut sub, "devices").await,
        "devices/device-1/b m"
    );
}

/// `use_subject_as_username`: the whole subject, RFC 4514 style as Mosquitto
/// prints it, is the user name.
#[tokio::test]
async fn mtls_subject_as_username_keys_the_acl() {
    let pki = Pki::new();
    let (ca, ca_file) = pki.client_ca("clients");
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "user CN=sensor-7,O=Acme\\, Inc.,C=DE\ntopic readwrite acme/#\n",
    )
    .unwrap();
    let (broker, tls) = mtls(
        &pki,
        &ca_file,
        &format!(
            "require_certificate = true\nuse_subject_as_username = true\nacl_file = {:?}\n",
            s(&acl)
        ),
    );
    let (c, k) = ca
        .client(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CommonName, "sensor-7"),
        ])
        .write(pki.dir.path(), "sensor");
    let args = ["--cafile", s(&pki.ca_file), "--cert", s(&c), "--key", s(&k)];
    let mut sub_args = args.to_vec();
    sub_args.extend_from_slice(&["-t", "acme/#", "-t", "other/#", "-C", "1", "-W", "10", "-v"]);
    let sub = tokio::spawn({
        let sub_args: Vec<String> = sub_args.iter().map(|a| a.to_string()).collect();
        async move {
            let a: Vec<&str> = sub_args.iter().map(String::as_str).collect();
            mosquitto_sub_at("localhost", tls, &a).await
        }
    });
    // Publish until the subscription is in place; `other/x` first each time, which
    // the ACL refuses this user, so only `acme/x` can be printed.
    let mut pub_args = args.to_vec();
    pub_args.extend_from_slice(&["-t", "other/x", "-m", "no"]);
    let mut acme_args = args.to_vec();
    acme_args.extend_from_slice(&["-t", "acme/x", "-m", "yes"]);
    while !sub.is_finished() {
        assert!(mosquitto_pub_at("localhost", tls, &pub_args)
            .await
            .status
            .success());
        assert!(mosquitto_pub_at("localhost", tls, &acme_args)
            .await
            .status
            .success());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = sub.await.unwrap();
    assert!(out.status.success(), "{out:?}\n{}", broker.stderr());
    assert_eq!(out.stdout.trim(), "acme/x yes");
}

// --- 08-3: reloading certificates ----------------------------------------------

/// Replaces `dir/..data` (a symlink to the current version directory, which the
/// files' own symlinks go through) in one rename, as the kubelet updates a
/// mounted secret.
fn swap_secret(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let target = dir.join(version);
    std::fs::create_dir_all(&target).unwrap();
    for (name, content) in files {
        std::fs::write(target.join(name), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// A Kubernetes-style secret directory: `tls.crt` and `tls.key` link through
/// `..data` to a version directory.
fn secret_dir(root: &Path, server: &Issued) -> PathBuf {
    let dir = root.join("secret");
    std::fs::create_dir_all(&dir).unwrap();
    swap_secret(
        &dir,
        "..v1",
        &[("tls.crt", &server.cert), ("tls.key", &server.key)],
    );
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    dir
}

/// A certificate swapped in by symlink (as Kubernetes does) is noticed by the
/// file poll: new connections get the new certificate, and a connection made
/// before stays up and keeps receiving.
#[tokio::test]
async fn reload_after_a_kubernetes_style_symlink_swap_keeps_connections() {
    let pki = Pki::new();
    let secret = secret_dir(pki.dir.path(), &pki.ca.server());
    let toml = format!(
        "tls_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\ntls_reload_interval_secs = 1\n",
        s(&secret.join("tls.crt")),
        s(&secret.join("tls.key"))
    );
    let broker = Broker::builder().config(&toml).start();
    let tls = broker.listener("tls");
    let mut old = raw_tls_client(tls, &pki.ca.pem(), None, "before-reload").await;
    assert_eq!(old.subscribe(&[("reload/#", 1)]).await, vec![1]);

    let ca2 = Ca::new("the renewed server CA");
    let ca2_file = ca2.write(pki.dir.path(), "ca2");
    let server2 = ca2.server();
    swap_secret(
        &secret,
        "..v2",
        &[("tls.crt", &server2.cert), ("tls.key", &server2.key)],
    );
    wait_for(Duration::from_secs(10), "the reload logged", || {
        broker.stderr().contains("TLS configuration reloaded")
    })
    .await;

    // New connections see the new certificate...
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &[
            "--cafile",
            s(&ca2_file),
            "-t",
            "reload/new",
            "-m",
            "after",
            "-q",
            "1",
        ],
    )
    .await;
    assert!(out.status.success(), "new certificate not served: {out:?}");
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(
        !out.status.success(),
        "the old certificate is still served: {out:?}"
    );
    // ...and the connection made before the reload is still up.
    let p = old.recv_publish(T).await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("reload/new", &b"after"[..])
    );
    old.ping().await;
}

/// SIGHUP reloads the whole configuration, the client CA bundle included: a client
/// certificate from the new CA is accepted afterwards, one from the old CA is not.
#[tokio::test]
async fn sighup_reloads_the_client_ca_bundle() {
    let pki = Pki::new();
    let (ca1, bundle) = pki.client_ca("clients");
    // No polling: only the signal reloads.
    let (broker, tls) = mtls(
        &pki,
        &bundle,
        "require_certificate = true\ntls_reload_interval_secs = 0\n",
    );
    let ca2 = Ca::new("the new client CA");
    let client = |ca: &Ca, name: &str| {
        let (c, k) = ca
            .client(&[(DnType::CommonName, name)])
            .write(pki.dir.path(), name);
        (s(&c).to_string(), s(&k).to_string())
    };
    let (c1, k1) = client(&ca1, "old-device");
    let (c2, k2) = client(&ca2, "new-device");
    let server_ca = s(&pki.ca_file).to_string();
    let publish = |cert: String, key: String| {
        let server_ca = server_ca.clone();
        async move {
            mosquitto_pub_at(
                "localhost",
                tls,
                &[
                    "--cafile", &server_ca, "--cert", &cert, "--key", &key, "-t", "t", "-m", "m",
                ],
            )
            .await
            .status
            .success()
        }
    };
    assert!(publish(c1.clone(), k1.clone()).await);
    assert!(!publish(c2.clone(), k2.clone()).await);

    std::fs::write(&bundle, ca2.pem()).unwrap();
    broker.signal("HUP");
    wait_for(T, "the reload logged", || {
        broker.stderr().contains("TLS configuration reloaded")
    })
    .await;
    assert!(publish(c2, k2).await, "the new client CA is not in force");
    assert!(!publish(c1, k1).await, "the old client CA is still trusted");
}

/// A bad new file keeps the previous configuration in force and is logged once,
/// naming the file; fixing it is picked up.
#[tokio::test]
async fn a_bad_new_file_keeps_the_old_configuration_and_logs_one_line() {
    let pki = Pki::new();
    let (broker, tls) = start(&pki, "tls_reload_interval_secs = 1\n");
    let failed = "TLS reload failed, keeping the previous certificates";
    std::fs::write(&pki.key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    wait_for(Duration::from_secs(10), "the failed reload logged", || {
        broker.stderr().contains(failed)
    })
    .await;
    let log = broker.stderr();
    let line = log.lines().find(|l| l.contains(failed)).unwrap();
    assert!(
        line.contains("tls_key") && line.contains(s(&pki.key)),
        "{line}"
    );
    // The previous certificate and key are still served.
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // Further polls of the same bad file say nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&broker.stderr(), failed), 1, "{}", broker.stderr());
    let reloads = |outcome: &str| format!("astramq_tls_reloads_total{{outcome=\"{outcome}\"}}");
    assert_eq!(metric_at(broker.health_addr(), &reloads("failed")).await, 1);
    assert_eq!(metric_at(broker.health_addr(), &reloads("ok")).await, 0);
    // A good pair again is picked up.
    let ca2 = Ca::new("fixed");
    let ca2_file = ca2.write(pki.dir.path(), "ca2");
    let fixed = ca2.server();
    std::fs::write(&pki.cert, &fixed.cert).unwrap();
    std::fs::write(&pki.key, &fixed.key).unwrap();
    wait_for(Duration::from_secs(10), "the reload logged", || {
        broker.stderr().contains("TLS configuration reloaded")
    })
    .await;
    assert_eq!(metric_at(broker.health_addr(), &reloads("ok")).await, 1);
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&ca2_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
}

/// SIGHUP on a node without TLS is logged and otherwise harmless (its default
/// action would end the process).
#[tokio::test]
async fn sighup_without_tls_is_harmless() {
    let mut broker = Broker::start();
    broker.signal("HUP");
    wait_for(T, "the SIGHUP logged", || {
        broker.stderr().contains("nothing to reload")
    })
    .await;
    assert!(broker.is_running());
    broker
        .client(Version::V311, "still-here")
        .await
        .ping()
        .await;
}

// --- 08-4: bad input ------------------------------------------------------------

/// A client that starts a TLS connection and never finishes the handshake is
/// closed after `limits.connect_timeout_secs`; garbage instead of a ClientHello is
/// refused at once. Both are logged; the node serves on.
#[tokio::test]
async fn an_unfinished_handshake_times_out_and_garbage_is_refused() {
    let pki = Pki::new();
    let (broker, tls) = start(&pki, "[limits]\nconnect_timeout_secs = 1\n");
    let mut silent = tokio::net::TcpStream::connect(tls).await.unwrap();
    // The first bytes of a TLS record header, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(tls).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    for s in [&mut garbage, &mut silent] {
        let mut b = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a TLS alert
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "still open after 5 s");
    }
    wait_for(T, "both logged", || {
        let log = broker.stderr();
        log.contains("TLS handshake failed")
            && log.contains("not done within limits.connect_timeout_secs")
    })
    .await;
    let out = mosquitto_pub_at(
        "localhost",
        tls,
        &["--cafile", s(&pki.ca_file), "-t", "t", "-m", "m"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
}

/// `tls_proxy_listen`: the PROXY v2 header comes before the TLS handshake, and the
/// address it carries is the client's; without it the connection is refused.
#[tokio::test]
async fn tls_proxy_listen_reads_the_header_before_the_handshake() {
    let pki = Pki::new();
    let (broker, _) = start(&pki, "tls_proxy_listen = [\"127.0.0.1:0\"]\n");
    let proxied = broker.listener("tls, proxy");
    // PROXY v2, TCP over IPv4, from 10.9.8.7:12345.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[
        0x21, 0x11, 0, 12, 10, 9, 8, 7, 127, 0, 0, 1, 0x30, 0x39, 7, 91,
    ]);
    let mut tcp = tokio::net::TcpStream::connect(proxied).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let stream = tls_over(tcp, &pki.ca.pem(), None, &rustls::version::TLS13)
        .await
        .unwrap();
    let mut c = RawClient::over(stream);
    assert_eq!(
        c.handshake(Connect::new(Version::V311, "behind-lb"))
            .await
            .code,
        0
    );
    wait_for(T, "the PROXY source address logged", || {
        broker.stderr().contains("peer=10.9.8.7:12345")
    })
    .await;
    // A TLS client without the header is refused.
    assert!(
        tls_connect(proxied, &pki.ca.pem(), None, &rustls::version::TLS13)
            .await
            .is_err()
    );
}

/// A burst of large messages (3 MB) to a TLS subscriber: every one arrives, in
/// order, across many TLS records.
#[tokio::test]
async fn a_tls_subscriber_receives_a_burst_of_large_messages() {
    let pki = Pki::new();
    let (broker, tls) = start(&pki, "");
    let mut sub = tls_sub(
        &broker,
        tls,
        "bulk",
        &["--cafile", s(&pki.ca_file), "-q", "1"],
    )
    .await;
    let mut publisher = broker.client(Version::V311, "bulk-pub").await;
    let payload = vec![b'x'; 10_000];
    for i in 0..300 {
        let topic = format!("bulk/{i}");
        publisher.publish(&topic, &payload, 1, false).await;
    }
    for i in 0..300 {
        let line = next_message(&mut sub, "bulk").await;
        assert!(
            line.starts_with(&format!("bulk/{i} xxx")),
            "message {i}: {:.40}",
            line
        );
    }
}
