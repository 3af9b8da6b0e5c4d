//! 09 WebSocket: MQTT over WebSocket (`ws_listen`) and over WebSocket over TLS
//! (`wss_listen`), MQTT 5.0 section 6 / 3.1.1 section 6.
//!
//! Clients: paho-mqtt (PyPI, `transport="websockets"`, the script in
//! `tests/clients/paho_ws.py`), MQTT.js (npm, what browser apps use, run by Node:
//! `tests/clients/mqttjs_ws.mjs`), Mosquitto's `mosquitto_sub` on the plain listener
//! to see WebSocket clients' messages cross over, raw HTTP for the exact refusals,
//! and a raw WebSocket client (tokio-tungstenite) for framing and bad input.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::certs::Ca;
use common::wsclients::{mqttjs, paho};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::DnType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

/// A broker with the harness's plain listener, one WS listener and `extra` TOML.
fn start_ws(extra: &str) -> (Broker, SocketAddr) {
    let broker = Broker::builder()
        .config(&format!("ws_listen = [\"127.0.0.1:0\"]\n{extra}"))
        .args(&["--health-listen", "127.0.0.1:0"])
        .start();
    let ws = broker.listener("ws");
    (broker, ws)
}

/// Sends a WebSocket upgrade request for `path` with the given
/// `Sec-WebSocket-Protocol` (none when `None`); returns the status code and the
/// response head.
async fn upgrade(addr: SocketAddr, path: &str, protocol: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let proto = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(T, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => head.extend_from_slice(&b[..n]),
            Err(_) => panic!("no HTTP response within {T:?}"),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (code, head)
}

/// A raw WebSocket client offering `mqtt`.
async fn raw_ws(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    ws
}

/// Reads binary messages until `want` bytes arrived.
async fn read_bytes<S>(ws: &mut S, want: usize) -> Vec<u8>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(T, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected binary data, got {other:?} after {got:?}"),
        }
    }
    got
}

// --- 09-1: MQTT over WebSocket with a real client -------------------------------

/// paho-mqtt over `ws://` with subprotocol `mqtt`: subscribe, publish a small and a
/// 200 KB message (QoS 1) and receive both back; a Mosquitto client on the plain
/// listener sees them too.
#[tokio::test]
async fn ws_paho_with_subprotocol_mqtt_publishes_and_subscribes() {
    let (broker, ws) = start_ws("");
    let mut tcp_sub = BgSub::spawn(&broker, &["-t", "ws/#", "-v"]);
    tcp_sub.probe(&broker, "ws/probe", b"p").await;
    let (ok, out) = paho(&[
        "--port",
        &port(ws),
        "--topic",
        "ws/paho",
        "--sizes",
        "10,200000",
    ])
    .await;
    assert!(ok, "{out}\n{}", broker.stderr());
    assert!(out.contains("received 2 10,200000"), "{out}");
    loop {
        let line = tcp_sub.next_line(T).await.expect("the WS message on TCP");
        if line.starts_with("ws/paho ") {
            assert_eq!(line, format!("ws/paho {}", "A".repeat(10)));
            break;
        }
    }
}

/// MQTT 3.1 clients offered `mqttv3.1`: accepted and selected; and MQTT 5.0 works
/// over WebSocket as well.
#[tokio::test]
async fn ws_paho_mqtt31_with_subprotocol_mqttv31_and_mqtt5() {
    let (broker, ws) = start_ws("");
    let (code, head) = upgrade(ws, "/mqtt", Some("mqttv3.1")).await;
    assert_eq!(code, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqttv3.1"),
        "{head}"
    );
    let (ok, out) = paho(&[
        "--port",
        &port(ws),
        "--protocol",
        "31",
        "--subprotocol",
        "mqttv3.1",
    ])
    .await;
    assert!(
        ok && out.contains("received 1"),
        "{out}\n{}",
        broker.stderr()
    );
    let (ok, out) = paho(&["--port", &port(ws), "--protocol", "5", "--sizes", "5,70000"]).await;
    assert!(
        ok && out.contains("received 2"),
        "{out}\n{}",
        broker.stderr()
    );
}

/// MQTT.js over `ws://`, MQTT 3.1.1 and 5.0, a small and a 200 KB message.
#[tokio::test]
async fn ws_mqttjs_publishes_and_subscribes_311_and_5() {
    let (broker, ws) = start_ws("");
    for protocol in ["4", "5"] {
        let (ok, out) = mqttjs(&[
            "--port",
            &port(ws),
            "--protocol",
            protocol,
            "--sizes",
            "10,200000",
        ])
        .await;
        assert!(
            ok && out.contains("received 2 10,200000"),
            "v{protocol}: {out}\n{}",
            broker.stderr()
        );
    }
    let (ok, out) = mqttjs(&["--port", &port(ws), "--path", "/elsewhere"]).await;
    assert!(!ok && out.contains("connect failed"), "{out}");
}

// --- 09-2: refusals ---------------------------------------------------------------

/// An upgrade on another path than `ws_path` gets 404, and paho cannot connect.
#[tokio::test]
async fn ws_wrong_path_gets_404() {
    let (broker, ws) = start_ws("");
    let (code, head) = upgrade(ws, "/other", Some("mqtt")).await;
    assert_eq!(code, 404, "{head}");
    let (ok, out) = paho(&["--port", &port(ws), "--path", "/other"]).await;
    assert!(!ok && out.contains("connect failed"), "{out}");
    wait_for(T, "the refusal logged", || {
        broker
            .stderr()
            .contains("WebSocket upgrade on a path other than /mqtt")
    })
    .await;
}

/// `ws_path` is configurable.
#[tokio::test]
async fn ws_path_is_configurable() {
    let (_broker, ws) = start_ws("ws_path = \"/custom/mqtt\"\n");
    assert_eq!(upgrade(ws, "/mqtt", Some("mqtt")).await.0, 404);
    let (ok, out) = paho(&["--port", &port(ws), "--path", "/custom/mqtt"]).await;
    assert!(ok, "{out}");
}

/// Without the subprotocol `mqtt` (or `mqttv3.1`) the upgrade is refused with 400:
/// the client must offer it [MQTT-6.0.0-3]. A wrong one likewise.
#[tokio::test]
async fn ws_without_subprotocol_mqtt_is_refused_with_400() {
    let (broker, ws) = start_ws("");
    for offered in [None, Some("chat"), Some("mqttv5, wamp")] {
        let (code, head) = upgrade(ws, "/mqtt", offered).await;
        assert_eq!(code, 400, "{offered:?}: {head}");
    }
    let (ok, out) = paho(&["--port", &port(ws), "--subprotocol", "none"]).await;
    assert!(!ok && out.contains("connect failed"), "{out}");
    wait_for(T, "the refusal logged", || {
        broker
            .stderr()
            .contains("WebSocket upgrade without the subprotocol mqtt")
    })
    .await;
}

/// A text message closes the connection [MQTT-6.0.0-1]; the node serves on.
#[tokio::test]
async fn ws_a_text_message_closes_the_connection() {
    let (broker, ws) = start_ws("");
    let mut c = raw_ws(ws).await;
    c.send(Message::Binary(
        Connect::new(Version::V311, "texter").encode().into(),
    ))
    .await
    .unwrap();
    assert_eq!(read_bytes(&mut c, 4).await, [0x20, 0x02, 0x00, 0x00]);
    c.send(Message::Text("hello".into())).await.unwrap();
    let end = tokio::time::timeout(T, async {
        loop {
            match c.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "still open after a text message");
    broker
        .client(Version::V311, "after-text")
        .await
        .ping()
        .await;
}

/// A connection that never sends its upgrade request is closed after
/// `limits.connect_timeout_secs`.
#[tokio::test]
async fn ws_an_upgrade_never_sent_is_closed_after_the_connect_timeout() {
    let (broker, ws) = start_ws("[limits]\nconnect_timeout_secs = 1\n");
    let mut s = tokio::net::TcpStream::connect(ws).await.unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("not closed within 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_for(T, "the timeout logged", || {
        broker
            .stderr()
            .contains("not done within limits.connect_timeout_secs")
    })
    .await;
}

// --- 09-3: framing ------------------------------------------------------------------

/// A packet may span messages and a message may hold several packets
/// [MQTT-6.0.0-2]: a CONNECT in two messages, then SUBSCRIBE and PINGREQ in one.
#[tokio::test]
async fn ws_packets_span_messages_and_messages_hold_several() {
    let (_broker, ws) = start_ws("");
    let mut c = raw_ws(ws).await;
    let connect = Connect::new(Version::V311, "framer").encode();
    let (a, b) = connect.split_at(5);
    c.send(Message::Binary(a.to_vec().into())).await.unwrap();
    c.send(Message::Binary(b.to_vec().into())).await.unwrap();
    assert_eq!(
        read_bytes(&mut c, 4).await,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK"
    );
    let mut both = encode_subscribe(Version::V311, 1, &Props::new(), &[("f/#", SubOpts::qos(0))]);
    both.extend_from_slice(&encode_pingreq());
    c.send(Message::Binary(both.into())).await.unwrap();
    // SUBACK (5 bytes) and PINGRESP (2 bytes), in whatever messages they come.
    assert_eq!(
        read_bytes(&mut c, 7).await,
        [0x90, 0x03, 0x00, 0x01, 0x00, 0xD0, 0x00]
    );
}

// --- 09-4: WebSocket over TLS -------------------------------------------------------

/// paho-mqtt over `wss://`, trusting the test CA; and with client certificates
/// required, with a certificate (accepted) and without (refused).
#[tokio::test]
async fn wss_paho_publishes_and_subscribes_and_client_certificates_apply() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("wss test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let clients = Ca::new("wss client CA");
    let clients_file = clients.write(dir.path(), "clients");
    let (ccert, ckey) = clients
        .client(&[(DnType::CommonName, "browser-1")])
        .write(dir.path(), "browser-1");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let base = format!(
        "wss_listen = [\"127.0.0.1:0\"]\ntls_cert = {:?}\ntls_key = {:?}\n",
        p(&cert),
        p(&key)
    );
    let broker = Broker::builder().config(&base).start();
    let wss = broker.listener("wss");
    let (ok, out) = paho(&[
        "--port",
        &port(wss),
        "--tls",
        "--ca",
        &p(&ca_file),
        "--sizes",
        "10,100000",
    ])
    .await;
    assert!(
        ok && out.contains("received 2"),
        "{out}\n{}",
        broker.stderr()
    );
    drop(broker);

    let broker = Broker::builder()
        .config(&format!(
            "{base}tls_client_ca = {:?}\nrequire_certificate = true\n",
            p(&clients_file)
        ))
        .start();
    let wss = broker.listener("wss");
    let (ok, out) = paho(&[
        "--port",
        &port(wss),
        "--tls",
        "--ca",
        &p(&ca_file),
        "--cert",
        &p(&ccert),
        "--key",
        &p(&ckey),
    ])
    .await;
    assert!(
        ok && out.contains("received 1"),
        "{out}\n{}",
        broker.stderr()
    );
    let (ok, out) = paho(&["--port", &port(wss), "--tls", "--ca", &p(&ca_file)]).await;
    assert!(!ok, "connected without a client certificate: {out}");
    wait_for(T, "the refusal logged", || {
        broker.stderr().contains("peer sent no certificates")
    })
    .await;
}
