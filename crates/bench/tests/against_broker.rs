//! Runs bench scenarios against a real AstraMQ broker on a free loopback port and checks
//! the accounting: nothing acknowledged is lost, everything acknowledged arrives once.

use std::net::SocketAddr;

use astramq_bench::args::BenchArgs;
use astramq_bench::Report;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Starts a broker on 127.0.0.1:0 on its own runtime thread; returns its address.
fn start_broker() -> SocketAddr {
    spawn_broker(Default::default(), |s| s.local_addrs()[0])
}

/// Runs a broker with `config` (its plain listener on 127.0.0.1:0, no publish rate
/// limit) on its own runtime thread; returns what `addr` picks from the bound server.
fn spawn_broker(
    config: broker::Config,
    addr: impl FnOnce(&broker::Server) -> SocketAddr + Send + 'static,
) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // No publish rate limit: the tests measure the load generator's accounting
            // at full speed (a throttled `pub` run would not see its closing PINGRESP
            // within the drain).
            let config = broker::Config {
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                limits: broker::config::Limits {
                    max_publish_rate: 0,
                    max_publish_bytes_rate: 0,
                    ..Default::default()
                },
                ..config
            };
            let server = broker::Server::bind(config).await.unwrap();
            tx.send(addr(&server)).unwrap();
            server.run(std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}

fn bench(addr: SocketAddr, line: &str) -> Report {
    let line = format!("{line} --hosts {addr} --no-progress --threads 1");
    let args = Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
        .unwrap()
        .args;
    let plan = args.plan().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(astramq_bench::runner::execute(plan)).unwrap();
    eprintln!("{}", report.summary());
    report
}

fn assert_exact(r: &Report) {
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.connections.failed, 0);
    assert!(r.sent > 0 && r.acknowledged > 0, "{r:?}");
    assert_eq!(r.lost, Some(0), "{r:?}");
    assert_eq!(r.duplicates, 0);
}

#[test]
fn pairs_qos1_loses_nothing() {
    let addr = start_broker();
    let r = bench(addr, "pairs -n 20 --qos 1 --duration 2s --inflight 16");
    assert_exact(&r);
    assert_eq!(r.received, r.acknowledged, "{r:?}");
    assert!(r.latency_ms.is_some());
}

#[test]
fn fanout_qos2_v5_delivers_every_message_to_every_subscriber() {
    let addr = start_broker();
    let r = bench(
        addr,
        "fanout -n 5 --qos 2 --protocol 5 --rate 500 --duration 1s",
    );
    assert_exact(&r);
    assert_eq!(r.received, r.acknowledged * 5, "{r:?}");
}

#[test]
fn conn_holds_connections() {
    let addr = start_broker();
    let r = bench(addr, "conn -n 200 --duration 500ms --keep-alive 1");
    assert_eq!(r.connections.connected, 200, "{r:?}");
    assert_eq!(r.connections.dropped, 0, "{r:?}");
}

#[test]
fn pub_qos0_reports_what_the_broker_read() {
    let addr = start_broker();
    let r = bench(addr, "pub -n 4 --qos 0 --duration 1s");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Every publisher's closing PINGREQ was answered, so the broker's reading rate is
    // known; it counts the same messages over a window at least as long as the run.
    let ingested = r.ingested_per_s.expect("every publisher saw its PINGRESP");
    assert!(ingested > 0.0, "{r:?}");
    assert!(ingested <= r.sent_per_s * 1.000_001, "{r:?}");
}

// 3.1.1 clients are never told the broker's Receive Maximum, and the broker closes one
// with more unreleased QoS 2 messages than `limits.receive_maximum` (100 by default):
// at QoS 2 over 3.1.1 the publishers keep their window within that default, however
// large `--inflight` is.
#[test]
fn pairs_qos2_v311_stays_within_the_default_receive_maximum() {
    let addr = start_broker();
    let r = bench(addr, "pairs -n 2 --qos 2 --duration 1s --inflight 500");
    assert_exact(&r);
    assert_eq!(r.received, r.acknowledged, "{r:?}");
}

/// A broker with a TLS listener (a CA made here signs a `localhost` certificate);
/// returns the TLS address and the CA's PEM file.
fn start_tls_broker(dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let config = broker::Config {
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_cert: Some(cert_pem),
        tls_key: Some(key_pem),
        ..Default::default()
    };
    let addr = spawn_broker(config, |server| {
        server
            .listeners()
            .iter()
            .find(|l| l.transport == broker::listener::Transport::Tls)
            .unwrap()
            .addr
    });
    (addr, ca_pem)
}

// `--tls-ca`: the whole run over TLS (handshake, then MQTT through rustls on the
// non-blocking socket), the same accounting; a client that does not trust the
// broker's certificate does not connect.
#[test]
fn pairs_over_tls_lose_nothing_and_an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, ca) = start_tls_broker(dir.path());
    let r = bench(
        addr,
        &format!("pairs -n 4 --qos 1 --duration 1s --tls-ca {}", ca.display()),
    );
    assert_eq!(r.connections.connected, 8, "{:?}", r.connections);
    assert!(r.acknowledged > 100, "{}", r.acknowledged);
    assert_eq!(r.received, r.acknowledged);
    assert_eq!(r.lost, Some(0));

    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = start_tls_broker(other.path());
    let r = bench(
        addr,
        &format!("conn -n 2 --duration 1s --tls-ca {}", other_ca.display()),
    );
    assert_eq!(r.connections.connected, 0, "{:?}", r.connections);
    assert_eq!(r.connections.failed, 2, "{:?}", r.connections);
}

// `--ws-path`: the whole run over WebSocket (upgrade with subprotocol mqtt, binary
// frames both ways), the same accounting.
#[test]
fn pairs_over_websocket_lose_nothing() {
    let config = broker::Config {
        ws_listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let addr = spawn_broker(config, |server| {
        server
            .listeners()
            .iter()
            .find(|l| l.transport == broker::listener::Transport::Ws)
            .unwrap()
            .addr
    });
    let r = bench(addr, "pairs -n 4 --qos 1 --duration 1s --ws-path /mqtt");
    assert_eq!(r.connections.connected, 8, "{:?}", r.connections);
    assert!(r.acknowledged > 100, "{}", r.acknowledged);
    assert_eq!(r.received, r.acknowledged);
    assert_eq!(r.lost, Some(0));
    let r = bench(addr, "conn -n 2 --duration 1s --ws-path /not-mqtt");
    assert_eq!(
        r.connections.failed, 2,
        "an upgrade on another path is refused"
    );
}
