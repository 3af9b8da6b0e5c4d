//! TLS termination in the balancer (`--tls-cert`/`--tls-key`): Mosquitto's clients
//! over TLS through it, plain TCP refused, a missing certificate named.

use super::*;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as
/// `cert.pem` and `key.pem` in a temporary directory.
fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (dir, cert, key)
}

/// `mosquitto_sub` and `mosquitto_pub` over TLS through the balancer: a message
/// published through it reaches a subscriber connected through it.
async fn mosquitto_roundtrip_over_tls(lb: &Lb, cafile: &std::path::Path, tag: &str) {
    let port = lb.addr.port().to_string();
    let cafile = cafile.to_str().unwrap();
    let topic = format!("tls/{tag}");
    let payload = format!("hello over tls ({tag})");
    let tls_args = |id: &str| {
        vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.clone(),
            "--cafile".into(),
            cafile.into(),
            "-V".into(),
            "mqttv311".into(),
            "-i".into(),
            id.into(),
            "-t".into(),
            topic.clone(),
        ]
    };
    let mut sub = Command::new("mosquitto_sub")
        .args(tls_args(&format!("tls-sub-{tag}")))
        .args(["-C", "1", "-W", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");
    let sub_err = capture(sub.stderr.take().unwrap());
    let sub_out = capture(sub.stdout.take().unwrap());
    // Publish until the subscriber has it (its SUBSCRIBE may not be in yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub got nothing through the TLS balancer\n--- sub stderr ---\n{}\n--- lb stderr ---\n{}",
            sub_err.lock().unwrap(),
            lb.stderr()
        );
        let publish = Command::new("mosquitto_pub")
            .args(tls_args(&format!("tls-pub-{tag}")))
            .args(["-m", &payload])
            .output()
            .expect("run mosquitto_pub");
        assert!(
            publish.status.success(),
            "mosquitto_pub through the TLS balancer failed: {}",
            String::from_utf8_lossy(&publish.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The capture threads may still be draining the pipes.
    wait_for(T, "the subscriber's output", || {
        sub_out.lock().unwrap().contains(&payload)
    })
    .await;
    assert!(
        status.success(),
        "mosquitto_sub: {status}\n{}",
        sub_err.lock().unwrap()
    );
}

/// `--tls-cert`/`--tls-key`: the balancer terminates TLS and forwards plain MQTT
/// (after the PROXY v2 header) to the broker, with the round-robin and the
/// client-id strategy (which reads the CONNECT after the handshake); a plain-TCP
/// client gets no CONNACK; a missing certificate stops startup with its name.
#[tokio::test]
async fn tls_termination_forwards_decrypted_mqtt_and_refuses_plain_tcp() {
    let (_dir, cert, key) = self_signed();
    let nodes = nodes(1);
    let backends = proxy_addrs(&nodes);
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for strategy in ["round-robin", "client-id"] {
        let lb = Lb::start(&[
            "--backends",
            &backends,
            "--proxy-protocol",
            "true",
            "--strategy",
            strategy,
            "--tls-cert",
            c,
            "--tls-key",
            k,
        ]);
        mosquitto_roundtrip_over_tls(&lb, &cert, strategy).await;
        assert!(nodes[0].connects(&format!("tls-sub-{strategy}")) >= 1);

        // Plain MQTT to the TLS listener: no CONNACK, the connection is closed.
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(&Connect::new(Version::V311, "plain-to-tls").encode())
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .expect("the balancer must close a plain-TCP connection, not wait");
        assert_ne!(got.first(), Some(&0x20), "a CONNACK came back: {got:?}");
        wait_for(T, "the failed handshake in the lb log", || {
            lb.stderr().contains("TLS handshake failed")
        })
        .await;
        // The listener still serves TLS clients afterwards.
        mosquitto_roundtrip_over_tls(&lb, &cert, &format!("{strategy}-after")).await;
    }
    assert_eq!(nodes[0].connects("plain-to-tls"), 0);

    // Startup errors name the flag and the file.
    let out = Command::new(astramq_bin())
        .args(["lb", "--listen", "127.0.0.1:0", "--backends", &backends])
        .args(["--proxy-protocol", "true"])
        .args(["--tls-cert", "/nonexistent/cert.pem", "--tls-key", k])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-cert /nonexistent/cert.pem"), "{err}");
    let out = Command::new(astramq_bin())
        .args(["lb", "--listen", "127.0.0.1:0", "--backends", &backends])
        .args(["--proxy-protocol", "true"])
        .args(["--tls-cert", c])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-key"), "{err}");
}

/// Reads from `s` until the balancer closes it; how long that took.
async fn closed_after(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .expect("the balancer must close a silent connection, not wait")
        .ok();
    assert!(
        got.is_empty() || got.first() != Some(&0x20),
        "no CONNACK: {got:?}"
    );
    start.elapsed()
}

/// A client that opens a connection and says nothing is closed once its time is up,
/// not held: `--tls-handshake-timeout-secs` for the TLS handshake, and
/// `--connect-packet-timeout-secs` for the CONNECT the client-id strategy reads.
#[tokio::test]
async fn silent_clients_are_closed_after_the_handshake_and_connect_timeouts() {
    let (_dir, cert, key) = self_signed();
    let nodes = nodes(1);
    let backends = proxy_addrs(&nodes);
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = Lb::start(&[
        "--backends",
        &backends,
        "--proxy-protocol",
        "true",
        "--tls-cert",
        c,
        "--tls-key",
        k,
        "--tls-handshake-timeout-secs",
        "1",
    ]);
    let took = closed_after(TcpStream::connect(tls.addr).await.unwrap()).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed before its time: {took:?}"
    );

    let plain = Lb::start(&[
        "--backends",
        &backends,
        "--proxy-protocol",
        "true",
        "--strategy",
        "client-id",
        "--connect-packet-timeout-secs",
        "1",
    ]);
    let took = closed_after(TcpStream::connect(plain.addr).await.unwrap()).await;
    assert!(
        took >= Duration::from_millis(900),
        "closed before its time: {took:?}"
    );
    // The balancer still serves afterwards, and the silent clients reached no node.
    let mut ok = RawClient::connect_ok(plain.addr, Connect::new(Version::V311, "after")).await;
    ok.ping().await;
    assert_eq!(nodes[0].connects("after"), 1);
}
