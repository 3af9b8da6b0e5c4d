//! `deploy/haproxy.cfg` against a 3-node cluster with Debian's haproxy: client-id
//! stickiness, PROXY v2, health checks.

use super::*;

/// `deploy/haproxy.cfg` with the test's addresses: the frontend on `listen`, the
/// servers on the nodes' PROXY listeners.
fn haproxy_cfg(listen: SocketAddr, nodes: &[Node]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
    let cfg = std::fs::read_to_string(&path).expect("read deploy/haproxy.cfg");
    let mut servers = nodes.iter();
    cfg.lines()
        .map(|line| {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let words: Vec<&str> = t.split_whitespace().collect();
            match words.first() {
                Some(&"bind") => format!("{indent}bind {listen}"),
                Some(&"server") => {
                    let node = servers.next().expect("more servers than nodes in the cfg");
                    let rest = words[3..].join(" ");
                    format!("{indent}server {} {} {rest}", words[1], node.proxy)
                }
                Some(&"stats") if words.get(1) == Some(&"socket") => String::new(),
                _ => line.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect()
}

/// Issue #5 §5: `deploy/haproxy.cfg` against a 3-node cluster with Debian's
/// haproxy: client-id stickiness (`mqtt_field_value`), `send-proxy-v2` (the node
/// sees the client's address), MQTT health checks, and new connections keep
/// succeeding when a node is killed.
#[tokio::test]
async fn haproxy_cfg_sticks_client_ids_sends_proxy_v2_and_checks_health() {
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("haproxy is required by this test: install it with `apt-get install haproxy`");
    let mut nodes = nodes(3);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_cfg(listen, &nodes)).unwrap();
    let check = Command::new(&bin)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c rejects the config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = capture(child.stdout.take().unwrap());
    let err = capture(child.stderr.take().unwrap());
    struct Kill(Child, Arc<Mutex<String>>, Arc<Mutex<String>>);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- haproxy ---\n{}{}",
                    self.1.lock().unwrap(),
                    self.2.lock().unwrap()
                );
            }
        }
    }
    let _haproxy = Kill(child, out.clone(), err);
    // haproxy logs a session when it ends (`option tcplog`), with the client id.
    let closed = |id: &str, times: usize| {
        let out = out.clone();
        let suffix = format!(" client_id={id}");
        let what = format!("haproxy to log {id}'s session {times}×");
        async move {
            wait_for(T, &what, || {
                out.lock()
                    .unwrap()
                    .lines()
                    .filter(|l| l.ends_with(&suffix))
                    .count()
                    >= times
            })
            .await
        }
    };

    // Health checks reach every node (an MQTT CONNECT behind a PROXY header).
    wait_for(
        Duration::from_secs(10),
        "haproxy's MQTT health checks on every node",
        || {
            nodes
                .iter()
                .all(|n| n.broker.stderr().contains("client connected"))
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy does not listen on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stickiness: a persistent session is found again on reconnect.
    let ids: Vec<String> = (0..9).map(|i| format!("ha-{i}")).collect();
    let mut home = Vec::new();
    for id in &ids {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(&Connect::persistent(Version::V311, id, false, 0).encode())
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut ack))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "{id}");
        s.write_all(&[0xe0, 0x00]).await.unwrap();
        drop(s);
        let node = landed_on(&nodes, id, 1).await;
        // leastconn counts open sessions: each one is over before the next
        // starts, so that the first placements are spread.
        closed(id, 1).await;
        let needle = format!("peer={me} ");
        wait_for(
            T,
            "send-proxy-v2: the node logs the client's address",
            || nodes[node].broker.stderr().contains(&needle),
        )
        .await;
        home.push(node);
    }
    let used: std::collections::HashSet<_> = home.iter().collect();
    assert!(used.len() >= 2, "9 ids all on one node: {home:?}");
    for (id, &node) in ids.iter().zip(&home) {
        let (c, ack) =
            RawClient::connect(listen, Connect::persistent(Version::V311, id, false, 0)).await;
        assert_eq!(landed_on(&nodes, id, 2).await, node, "{id} moved");
        assert!(ack.session_present, "{id} lost its session through haproxy");
        drop(c);
        closed(id, 2).await;
    }

    // Kill a node: new connections keep succeeding (redispatch, then the health
    // check marks it down).
    drop(nodes.remove(0));
    for i in 0..12 {
        let id = format!("ha-after-{i}");
        let (_c, ack) = tokio::time::timeout(
            Duration::from_secs(10),
            RawClient::connect(listen, Connect::new(Version::V311, &id)),
        )
        .await
        .unwrap_or_else(|_| panic!("{id}: no CONNACK through haproxy"));
        assert_eq!(ack.code, 0);
    }
}
