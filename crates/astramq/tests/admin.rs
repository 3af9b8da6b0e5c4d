//! The admin API on the health listener (`/api/v1`, docs/admin.md) and `astramq ctl`:
//! no request without a key (DESIGN invariant 8), read-only keys change nothing, and
//! each endpoint does what it says to real rumqttc clients; `ctl` prints tables or
//! JSON, and finds another node through `--node`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::admin::*;
use common::cluster::*;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

/// Every endpoint, as (method, path).
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/clients"),
    ("GET", "/api/v1/clients?prefix=a&user=b&limit=5&after=x"),
    ("GET", "/api/v1/clients/someone"),
    ("POST", "/api/v1/clients/someone/kick"),
    ("POST", "/api/v1/kick?prefix=some"),
    ("GET", "/api/v1/subscriptions?topic=a"),
    ("GET", "/api/v1/routes?topic=a"),
    ("GET", "/api/v1/config"),
    ("POST", "/api/v1/drain?secs=0"),
    ("DELETE", "/api/v1/drain"),
    ("GET", "/api/v1/retained?filter=%23"),
    ("DELETE", "/api/v1/retained?topic=a"),
    ("POST", "/api/v1/publish"),
    ("GET", "/api/v1/no-such-endpoint"),
];

/// One HTTP/1.1 request (`Connection: close`): the status and the body as JSON
/// (`Value::Null` if it is not JSON).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(k) = key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(T, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {T:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `astramq ctl --url http://HEALTH --key KEY ARGS…`, which must succeed: stdout.
async fn ctl(health: SocketAddr, key: &str, args: &[&str]) -> String {
    let url = format!("http://{health}");
    let mut all = vec!["ctl", "--url", url.as_str(), "--key", key];
    all.extend_from_slice(args);
    let out = run_astramq(&all, &[], T).await;
    assert!(out.status.success(), "ctl {args:?}: {out:?}");
    out.stdout
}

fn broker_with_keys(file: &Path) -> Broker {
    Broker::builder().args(&admin_args(file)).start()
}

// Invariant 8: every endpoint (and any unknown path under /api/v1) answers 401 with
// a JSON reason to a request with no key or a wrong one; a read-only key is 403 for
// every change; a node without a key file refuses everything. /health and /metrics
// stay open.
#[tokio::test]
async fn every_endpoint_refuses_a_request_without_a_valid_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let read = add_key(&file, "grafana", "read").await;
    let admin = add_key(&file, "ops", "admin").await;
    let b = broker_with_keys(&file);
    let h = b.health_addr();
    let wrong = format!("ops.{}", "0".repeat(64));
    for &(method, path) in ENDPOINTS {
        for key in [None, Some(wrong.as_str()), Some("ops"), Some(&read[..4])] {
            let (code, body) = call(h, method, path, key, Some(json!({}))).await;
            assert_eq!(code, 401, "{method} {path} with {key:?}: {body}");
            assert_eq!(body["error"], "unauthorized", "{method} {path}: {body}");
            assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
        let (code, body) = call(h, method, path, Some(&read), Some(json!({}))).await;
        if method == "GET" {
            assert_ne!(code, 401, "{method} {path} with a read key: {body}");
            assert_ne!(code, 403, "{method} {path} with a read key: {body}");
        } else {
            assert_eq!(code, 403, "{method} {path} with a read key: {body}");
            assert_eq!(body["error"], "forbidden");
        }
        let (code, body) = call(h, method, path, Some(&admin), Some(json!({}))).await;
        assert!(
            code != 401 && code != 403,
            "{method} {path} with an admin key: {code} {body}"
        );
    }
    // Errors are JSON with a reason, a wrong method too.
    let (code, body) = call(h, "PUT", "/api/v1/nodes", Some(&admin), None).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
    let (code, _) = call(h, "GET", "/health", None, None).await;
    assert_eq!(code, 200);
    let (code, _) = http_get(h, "/metrics").await.unwrap();
    assert_eq!(code, 200);

    // No key file at all: nothing under /api/v1 is served, whatever the key.
    let bare = Broker::builder()
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    for &(method, path) in ENDPOINTS {
        let (code, body) = call(bare.health_addr(), method, path, Some(&admin), None).await;
        assert_eq!(code, 401, "{method} {path}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains("no API keys"),
            "{body}"
        );
    }
}

// Each endpoint against real clients: list and page clients by prefix and user,
// one client's subscriptions, publish to a subscriber, list and delete a retained
// message, kick (MQTT 5 DISCONNECT 0x98); the same through `astramq ctl`, as tables
// and as JSON.
#[tokio::test]
async fn api_and_ctl_list_show_kick_publish_and_clear_retained() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let key = add_key(&file, "ops", "admin").await;
    let b = broker_with_keys(&file);
    let h = b.health_addr();
    let k = Some(key.as_str());

    let mut opts = V5Client::options(&b, "dev-1");
    opts.set_credentials("alice", "");
    let mut dev1 = V5Client::connect_with(opts).await;
    dev1.subscribe("cmd/dev-1/#", QoS::AtLeastOnce).await;
    let mut opts = V5Client::options(&b, "dev-2");
    opts.set_credentials("bob", "");
    let _dev2 = V5Client::connect_with(opts).await;
    let _other = V5Client::connect(&b, "other").await;

    let (code, nodes) = call(h, "GET", "/api/v1/nodes", k, None).await;
    assert_eq!(code, 200, "{nodes}");
    assert_eq!(nodes["nodes"][0]["self"], true, "{nodes}");
    assert_eq!(nodes["nodes"][0]["clients"], 3, "{nodes}");

    let (_, page) = call(h, "GET", "/api/v1/clients?prefix=dev-&limit=1", k, None).await;
    assert_eq!(page["clients"][0]["client_id"], "dev-1", "{page}");
    assert_eq!(page["clients"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["next"], "dev-1", "{page}");
    let (_, page) = call(
        h,
        "GET",
        "/api/v1/clients?prefix=dev-&limit=1&after=dev-1",
        k,
        None,
    )
    .await;
    assert_eq!(page["clients"][0]["client_id"], "dev-2", "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");
    let (_, by_user) = call(h, "GET", "/api/v1/clients?user=alice", k, None).await;
    let ids: Vec<&str> = by_user["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-1"], "{by_user}");
    assert_eq!(by_user["clients"][0]["protocol"], "5.0");
    assert!(by_user["clients"][0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    let (code, one) = call(h, "GET", "/api/v1/clients/dev-1", k, None).await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["username"], "alice");
    assert_eq!(
        one["subscriptions"],
        json!([{"filter": "cmd/dev-1/#", "qos": 1}])
    );
    let (code, missing) = call(h, "GET", "/api/v1/clients/nobody", k, None).await;
    assert_eq!((code, missing["error"].as_str()), (404, Some("not_found")));

    // Publish through the API: the subscriber gets it.
    let body = json!({"topic": "cmd/dev-1/reboot", "payload": "now", "qos": 1});
    let (code, r) = call(h, "POST", "/api/v1/publish", k, Some(body)).await;
    assert_eq!(code, 200, "{r}");
    let got = dev1
        .wait_incoming(T, "the published command", |p| match p {
            V5Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"cmd/dev-1/reboot"[..], &b"now"[..])
    );
    let (code, r) = call(
        h,
        "POST",
        "/api/v1/publish",
        k,
        Some(json!({"topic": "a/#"})),
    )
    .await;
    assert_eq!(
        (code, r["error"].as_str()),
        (400, Some("bad_request")),
        "{r}"
    );

    // Retained: set through the API, listed, deleted; a new subscriber gets nothing.
    let body = json!({"topic": "state/lamp", "payload": "on", "retain": true});
    assert_eq!(
        call(h, "POST", "/api/v1/publish", k, Some(body)).await.0,
        200
    );
    let (_, list) = call(h, "GET", "/api/v1/retained?filter=state%2F%2B", k, None).await;
    assert_eq!(
        list["retained"],
        json!([{"topic": "state/lamp", "qos": 0, "bytes": 2, "payload": "on", "encoding": "utf8"}])
    );
    let table = ctl(h, &key, &["retained", "list", "--filter", "state/#"]).await;
    assert!(table.starts_with("topic "), "{table}");
    assert!(table.contains("state/lamp"), "{table}");
    let out = ctl(h, &key, &["retained", "rm", "state/lamp"]).await;
    assert!(out.contains("state/lamp"), "{out}");
    let (_, list) = call(h, "GET", "/api/v1/retained", k, None).await;
    assert_eq!(list["retained"], json!([]), "{list}");
    let (code, _) = call(h, "DELETE", "/api/v1/retained?topic=state%2Flamp", k, None).await;
    assert_eq!(code, 404);
    let mut late = V5Client::connect(&b, "late").await;
    late.subscribe("state/#", QoS::AtMostOnce).await;
    let got = tokio::time::timeout(
        ABSENCE,
        late.wait_incoming(T, "nothing", |p| {
            matches!(p, V5Packet::Publish(_)).then_some(())
        }),
    )
    .await;
    assert!(got.is_err(), "a deleted retained message was delivered");

    // ctl: tables by default, the API's JSON with --json.
    let table = ctl(h, &key, &["clients", "list", "--prefix", "dev-"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("client_id"), "{table}");
    assert!(
        lines[1].starts_with("dev-1") && lines[1].contains("alice"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("dev-2") && lines[2].contains("bob"),
        "{table}"
    );
    let json_out = ctl(h, &key, &["--json", "client", "show", "dev-1"]).await;
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["subscriptions"][0]["filter"], "cmd/dev-1/#");
    let nodes = ctl(h, &key, &["nodes"]).await;
    assert!(
        nodes.starts_with("node_id") && nodes.contains("local"),
        "{nodes}"
    );

    // Kick: the MQTT 5 client is told why (read by the raw client, which shows the
    // DISCONNECT rumqttc folds into a connection error), and is gone from the list.
    let mut victim = b.client(Version::V5, "victim").await;
    let out = ctl(h, &key, &["client", "kick", "victim"]).await;
    assert!(out.contains("kicked victim"), "{out}");
    victim.expect_disconnect(0x98, T).await;
    let out = ctl(h, &key, &["client", "kick", "dev-1"]).await;
    assert!(out.contains("kicked dev-1"), "{out}");
    let (code, _) = call(h, "POST", "/api/v1/clients/dev-1/kick", k, None).await;
    assert_eq!(code, 404, "kicked twice");
    let failed = run_astramq(
        &[
            "ctl",
            "--url",
            &format!("http://{h}"),
            "--key",
            &key,
            "client",
            "kick",
            "dev-1",
        ],
        &[],
        T,
    )
    .await;
    assert!(!failed.status.success());
    assert!(failed.stderr.contains("404 not_found"), "{failed:?}");
}

// In a cluster, /nodes lists the other nodes with their admin address; any node
// finds, shows and kicks a client connected to another one (passing the caller's
// key on), `local=true` answers for one node alone, and `ctl --node n2` talks to n2
// through n1's list.
#[tokio::test]
async fn any_node_lists_shows_and_kicks_clients_of_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let read = add_key(&file, "viewer", "read").await;
    let admin = add_key(&file, "ops", "admin").await;
    let c = TestCluster::builder(3)
        .args(&admin_args(&file))
        .start()
        .await;
    let mut a = c.client(0, Version::V5, "dev-a").await;
    let mut b = c.client(1, Version::V5, "dev-b").await;
    let mut c3 = c.client(2, Version::V5, "dev-c").await;
    let h1 = c.node(0).health_addr();
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, nodes) = call(h1, "GET", "/api/v1/nodes", Some(&read), None).await;
        let admins: Vec<Value> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["admin"].clone())
            .collect();
        let want: Vec<Value> = (0..3)
            .map(|i| json!(c.node(i).health_addr().to_string()))
            .collect();
        if admins.len() == 3 && want.iter().all(|w| admins.contains(w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every node listed: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every node reports its own health and counters through the node asked.
    let (_, nodes) = call(h1, "GET", "/api/v1/nodes", Some(&read), None).await;
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["healthy"], true, "{nodes}");
        assert!(n["messages_received"].is_u64(), "{nodes}");
        assert!(n.get("error").is_none(), "{nodes}");
    }
    // Who gets a topic, asked on n1: the subscriptions of n2 and n3 (a shared one
    // with its group); n1's own does not match.
    b.sub("sub/#", 1).await;
    c3.sub("$share/g/sub/+", 0).await;
    a.sub("other/#", 1).await;
    let (code, subs) = call(
        h1,
        "GET",
        "/api/v1/subscriptions?topic=sub/x",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(code, 200, "{subs}");
    let got: Vec<Value> = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!([s["client_id"], s["node"], s["filter"], s["group"], s["qos"]]))
        .collect();
    assert_eq!(
        got,
        [
            json!(["dev-b", "n2", "sub/#", null, 1]),
            json!(["dev-c", "n3", "$share/g/sub/+", "g", 0])
        ],
        "{subs}"
    );
    let (code, r) = call(
        h1,
        "GET",
        "/api/v1/subscriptions?topic=sub/%2B",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(code, 400, "a filter is not a topic: {r}");
    // n1's route table, once the feed brought n2's and n3's routes: both get it,
    // n3 for its shared group.
    c.sync_feed(1, 0).await;
    c.sync_feed(2, 0).await;
    let (code, routes) = call(h1, "GET", "/api/v1/routes?topic=sub/x", Some(&read), None).await;
    assert_eq!(code, 200, "{routes}");
    let remote: Vec<Value> = routes["remote"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["node"], r["groups"]]))
        .collect();
    assert_eq!(
        remote,
        [
            json!(["n2", []]),
            json!(["n3", [{"group": "g", "filter": "sub/+"}]])
        ],
        "{routes}"
    );
    let table = ctl(h1, &read, &["subscriptions", "sub/x"]).await;
    assert!(
        table.contains("dev-b") && table.contains("$share/g/sub/+"),
        "{table}"
    );
    let table = ctl(h1, &read, &["routes", "sub/x"]).await;
    assert!(table.contains("n2") && table.contains("n3"), "{table}");
    // The configuration in force: this node's id and the key file's path.
    let (code, config) = call(h1, "GET", "/api/v1/config", Some(&read), None).await;
    assert_eq!(code, 200, "{config}");
    assert_eq!(config["config"]["node_id"], "n1", "{config}");
    assert_eq!(
        config["config"]["admin_keys_file"],
        file.to_str().unwrap(),
        "{config}"
    );
    let (_, local) = call(h1, "GET", "/api/v1/clients?local=true", Some(&read), None).await;
    assert_eq!(local["clients"].as_array().unwrap().len(), 1, "{local}");
    let (_, all) = call(h1, "GET", "/api/v1/clients?prefix=dev-", Some(&read), None).await;
    let seen: Vec<(String, String)> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["client_id"].as_str().unwrap().into(),
                x["node"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [("dev-a", "n1"), ("dev-b", "n2"), ("dev-c", "n3")];
    assert_eq!(
        seen,
        want.map(|(a, b)| (a.to_string(), b.to_string())),
        "{all}"
    );
    // Paged across nodes: two pages of two, then one.
    let (_, p1) = call(
        h1,
        "GET",
        "/api/v1/clients?prefix=dev-&limit=2",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(p1["next"], "dev-b", "{p1}");
    let (_, p2) = call(
        h1,
        "GET",
        "/api/v1/clients?prefix=dev-&limit=2&after=dev-b",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(p2["clients"][0]["client_id"], "dev-c", "{p2}");
    assert_eq!(p2["next"], Value::Null, "{p2}");

    let (code, one) = call(h1, "GET", "/api/v1/clients/dev-b", Some(&read), None).await;
    assert_eq!((code, one["node"].as_str()), (200, Some("n2")), "{one}");
    let (code, _) = call(
        h1,
        "GET",
        "/api/v1/clients/dev-b?local=true",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, r) = call(h1, "POST", "/api/v1/clients/dev-b/kick", Some(&read), None).await;
    assert_eq!(code, 403, "{r}");
    let (code, r) = call(h1, "POST", "/api/v1/clients/dev-b/kick", Some(&admin), None).await;
    assert_eq!((code, r["node"].as_str()), (200, Some("n2")), "{r}");
    b.expect_disconnect(0x98, T).await;
    let (code, r) = call(h1, "GET", "/api/v1/clients/nobody", Some(&read), None).await;
    assert_eq!(code, 404, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("on any node"), "{r}");

    let table = ctl(
        h1,
        &read,
        &["--node", "n3", "clients", "list", "--prefix", "dev-"],
    )
    .await;
    assert!(table.contains("dev-c"), "{table}");

    // Kick by prefix, from n1, on every node: dev-a (n1) and dev-c (n3) were left.
    let mut keep = c.client(2, Version::V5, "other").await;
    let (code, r) = call(h1, "POST", "/api/v1/kick?prefix=", Some(&admin), None).await;
    assert_eq!(code, 400, "an empty prefix kicks nobody: {r}");
    let out = ctl(h1, &admin, &["clients", "kick", "--prefix", "dev-"]).await;
    assert!(out.starts_with("kicked 2 clients"), "{out}");
    assert!(out.contains("n1: 1") && out.contains("n3: 1"), "{out}");
    a.expect_disconnect(0x98, T).await;
    c3.expect_disconnect(0x98, T).await;
    // Still connected: PUBACK 0x10 (no matching subscribers).
    assert_eq!(keep.publish("still/here", b"x", 1, false).await, 0x10);
}

// Invariant 8, brute force: after 100 missing or wrong keys within a minute from one
// address, every API request from it is 429 (a right key too) for the rest of the
// minute; /health stays open.
#[tokio::test]
async fn repeated_failed_keys_from_one_address_are_refused_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let admin = add_key(&file, "ops", "admin").await;
    let b = broker_with_keys(&file);
    let h = b.health_addr();
    let wrong = format!("ops.{}", "0".repeat(64));
    for i in 0..100 {
        let (code, body) = call(h, "GET", "/api/v1/nodes", Some(&wrong), None).await;
        assert_eq!(code, 401, "attempt {i}: {body}");
    }
    let (code, body) = call(h, "GET", "/api/v1/nodes", Some(&admin), None).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"], "too_many_failures", "{body}");
    let (code, _) = http_get(h, "/health").await.unwrap();
    assert_eq!(code, 200);
}

/// One HTTP/1.1 request over TLS (trusting `ca_pem`): the status and the body.
async fn call_tls(addr: SocketAddr, ca_pem: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let exchange = async {
        let mut s = common::certs::tls_connect(addr, ca_pem, None, &rustls::version::TLS13)
            .await
            .expect("TLS handshake with the admin listener");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(k) = key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        // A TLS peer may close without close_notify: what was read counts.
        let _ = s.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::time::timeout(T, exchange)
        .await
        .expect("an answer over TLS");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

// `admin_tls = true`: the admin listener speaks HTTPS with the node's certificate;
// the key check is the same over it, and plain HTTP gets no answer.
#[tokio::test]
async fn the_admin_listener_serves_https_with_the_nodes_certificate() {
    let pki = common::certs::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let admin = add_key(&file, "ops", "admin").await;
    let toml = format!(
        "admin_tls = true\ntls_cert = {:?}\ntls_key = {:?}\n",
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap()
    );
    let b = Broker::builder()
        .config(&toml)
        .args(&admin_args(&file))
        .start();
    let h = b.health_addr();
    let ca = pki.ca.pem();
    let (code, body) = call_tls(h, &ca, "/health", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = call_tls(h, &ca, "/api/v1/nodes", None).await;
    assert_eq!(code, 401);
    let (code, body) = call_tls(h, &ca, "/api/v1/nodes", Some(&admin)).await;
    assert_eq!(code, 200, "{body}");
    // Plain HTTP on the TLS port: no HTTP answer.
    if let Ok(Ok((code, body))) = tokio::time::timeout(T, http_get(h, "/health")).await {
        panic!("plain HTTP answered {code}: {body}");
    }
}

// `admin_tls` on a cluster, with client certificates required: the node asked
// answers for the whole cluster by asking the other node over HTTPS (verifying it
// with `admin_tls_ca`, presenting its own certificate), and `astramq ctl` speaks
// HTTPS (`--cacert`, `--tls-cert`/`--tls-key`), also to the node `--node` names.
#[tokio::test]
async fn the_cluster_wide_answers_and_ctl_work_over_https() {
    let pki = common::certs::Pki::new();
    let (node_cert, node_key) = pki.ca.node().write(pki.dir.path(), "node");
    let (ctl_cert, ctl_key) = pki
        .ca
        .client(&[(rcgen::DnType::CommonName, "operator")])
        .write(pki.dir.path(), "operator");
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let read = add_key(&file, "viewer", "read").await;
    let ca = pki.ca_file.to_str().unwrap();
    let config = dir.path().join("astramq.toml");
    std::fs::write(
        &config,
        format!(
            "admin_tls = true\nadmin_tls_ca = {ca:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             tls_client_ca = {ca:?}\nrequire_certificate = true\n",
            node_cert.to_str().unwrap(),
            node_key.to_str().unwrap(),
        ),
    )
    .unwrap();
    let mut args = admin_args(&file).to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let c = TestCluster::builder(2).args(&args).start().await;
    let _b = c.client(1, Version::V5, "tls-b").await;
    let url = format!("https://{}", c.node(0).health_addr());
    let tls = [
        "--url",
        url.as_str(),
        "--cacert",
        ca,
        "--tls-cert",
        ctl_cert.to_str().unwrap(),
        "--tls-key",
        ctl_key.to_str().unwrap(),
        "--key",
        read.as_str(),
    ];
    let run = |extra: &[&str]| {
        let mut all = vec!["ctl"];
        all.extend_from_slice(&tls);
        all.extend_from_slice(extra);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // tls-b is on n2: n1 can only list it by asking n2 over HTTPS.
    let list = run(&["--json", "clients", "list"]);
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let out = run_astramq(&list, &[], T).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["clients"][0]["client_id"], "tls-b", "{v}");
    assert_eq!(v["clients"][0]["node"], "n2", "{v}");
    assert!(v.get("errors").is_none(), "{v}");
    let nodes = run(&["--node", "n2", "--json", "nodes"]);
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let out = run_astramq(&nodes, &[], T).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["nodes"][0]["node_id"], "n2", "{v}");
    // No CA: a clear refusal, nothing sent in plain text.
    let out = run_astramq(&["ctl", "--url", &url, "--key", &read, "nodes"], &[], T).await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("--cacert"), "{}", out.stderr);
}

#[tokio::test]
async fn admin_tls_without_a_certificate_is_a_config_error() {
    let out = run_astramq(
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ],
        &[("ASTRAMQ_ADMIN_TLS", "true")],
        Duration::from_secs(20),
    )
    .await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("admin_tls"), "{}", out.stderr);
}

/// Waits until the node answering at `health` sees `node` advertise MQTT listeners
/// through gossip (`serving`) or none.
async fn wait_advertised(health: SocketAddr, key: &str, node: &str, serving: bool) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, nodes) = call(health, "GET", "/api/v1/nodes", Some(key), None).await;
        let mqtt = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == node)
            .and_then(|n| n["mqtt"].as_array().cloned())
            .unwrap_or_default();
        if mqtt.is_empty() != serving {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} still advertised as serving={}: {nodes}",
            !serving
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Drain for maintenance (`ctl drain`, `POST /api/v1/drain`): the node's clients are
// asked to move (MQTT 5 DISCONNECT 0x9C Use another server), new CONNECTs are
// refused with 0x9C, /health answers 503 `draining`, and gossip stops advertising
// its listeners (what `astramq lb` follows). `ctl undrain` undoes all but the moved
// clients. A read-only key may not drain.
#[tokio::test]
async fn drain_moves_clients_away_refuses_new_ones_and_undrain_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(&dir);
    let read = add_key(&file, "viewer", "read").await;
    let admin = add_key(&file, "ops", "admin").await;
    let c = TestCluster::builder(2)
        .args(&admin_args(&file))
        .start()
        .await;
    let (h1, h2) = (c.node(0).health_addr(), c.node(1).health_addr());
    let mut x = c.client(0, Version::V5, "drained-1").await;
    wait_advertised(h2, &read, "n1", true).await;

    let (code, r) = call(h1, "POST", "/api/v1/drain?secs=1", Some(&read), None).await;
    assert_eq!(code, 403, "{r}");
    let out = ctl(h1, &admin, &["drain", "--secs", "1"]).await;
    assert!(out.starts_with("n1 is draining: 1 connected"), "{out}");
    x.expect_disconnect(0x9C, T).await;
    let (_, refused) = try_connect(c.node(0).addr(), Connect::new(Version::V5, "late"), T).await;
    assert_eq!(
        refused.map(|a| a.code),
        Some(0x9C),
        "CONNACK while draining"
    );
    let (_, refused) = try_connect(c.node(0).addr(), Connect::new(Version::V311, "late3"), T).await;
    assert_eq!(
        refused.map(|a| a.code),
        Some(0x03),
        "3.1.1 CONNACK while draining"
    );
    let (code, body) = http_get(h1, "/health").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    wait_advertised(h2, &read, "n1", false).await;
    // The other node serves as before.
    let _ok = c.client(1, Version::V5, "elsewhere").await;

    let out = ctl(h1, &admin, &["undrain"]).await;
    assert_eq!(out.trim(), "n1 accepts connections again", "{out}");
    let (_, accepted) = try_connect(c.node(0).addr(), Connect::new(Version::V5, "back"), T).await;
    assert_eq!(accepted.map(|a| a.code), Some(0), "CONNACK after undrain");
    let (code, body) = http_get(h1, "/health").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"mode\":\"cluster\""), "{body}");
    wait_advertised(h2, &read, "n1", true).await;
}
