//! The flags of `astramq bench`, and their check into a [`Plan`].
//!
//! Clap parses; [`BenchArgs::plan`] resolves host names, checks values that parse but
//! cannot work (a payload too small to carry the stamp, QoS 3, no hosts) and returns
//! the typed plan the runner executes. Nothing here touches the network.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};
use mqtt::{Protocol, QoS};
use serde::Serialize;

use crate::payload::HEADER_LEN;
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Ramp `--count` connections at `--conn-rate` and hold them for `--duration`.
    Conn,
    /// `--count` publishers, no subscribers (ingest).
    Pub,
    /// `--count` subscribers to `--topic` (a filter), receiving from other processes.
    Sub,
    /// `--count` publishers to one wildcard subscriber.
    Fanin,
    /// One publisher to `--count` subscribers of its topic.
    Fanout,
    /// `--count` publisher/subscriber pairs, one topic each.
    Pairs,
    /// `--count` QoS 0 pairs publishing as fast as the socket allows and, during that
    /// flood, `--probes` QoS 1 pairs at `--probe-rate`: what a flood does to everyone
    /// else. Reported separately (`flood`, `probe`); `--qos` and `--rate` are ignored.
    Flood,
}

/// `astramq bench SCENARIO [OPTIONS]`: a load generator in the spirit of emqtt-bench.
///
/// Prints a live progress line on a terminal and one JSON line on standard output at
/// the end.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker addresses `HOST:PORT[,HOST:PORT...]`; clients are spread round robin, with
    /// each publisher one node after its subscriber.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:1883")]
    pub hosts: Vec<String>,
    /// Connections (`conn`), publishers (`pub`, `fanin`), subscribers (`sub`,
    /// `fanout`) or pairs (`pairs`).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: u32,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload size in bytes (at least 24: publisher, sequence and send time).
    #[arg(short = 's', long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second per publisher; 0 = as fast as the in-flight window
    /// (QoS 1/2) or the socket (QoS 0) allows.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unacknowledged QoS 1/2 messages per publisher (capped by the broker's Receive
    /// Maximum in MQTT 5, and at QoS 2 over 3.1.1, which has none, by 100: AstraMQ's
    /// default, beyond which it closes the connection).
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
    /// How long to publish (or hold connections): `10s`, `500ms`, `2m`, or seconds.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After `--duration`, how long to wait at most for acknowledgements and
    /// deliveries before counting what is missing.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// MQTT version: 3.1.1 or 5.
    #[arg(short = 'V', long, default_value = "3.1.1", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub clean: bool,
    /// Session Expiry Interval in seconds (MQTT 5).
    #[arg(long, value_name = "SECS")]
    pub session_expiry: Option<u32>,
    /// Keep Alive in seconds (0 = off); clients send PINGREQ at this period.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// New connections per second; 0 = as fast as `--conn-parallel` handshakes allow.
    #[arg(long, default_value_t = 0.0)]
    pub conn_rate: f64,
    /// Connection handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    pub conn_parallel: usize,
    /// Local addresses to connect from, round robin (e.g. 127.0.0.1,127.0.0.2), for more
    /// connections than one address' ephemeral ports allow.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<IpAddr>,
    /// Topic prefix (`PREFIX/pairs/7`); for `sub`, the filter to subscribe to.
    #[arg(short = 't', long, default_value = "bench")]
    pub topic: String,
    /// Client identifier prefix; default `bench-<pid>`.
    #[arg(long)]
    pub client_id_prefix: Option<String>,
    /// PID of the broker, to report its RSS and CPU.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Worker threads of the load generator; default: the CPUs it may run on.
    #[arg(long)]
    pub threads: Option<usize>,
    /// No live progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// `flood`: QoS 1 probe pairs measured during the flood.
    #[arg(long, default_value_t = 20)]
    pub probes: u32,
    /// `flood`: messages per second per probe publisher.
    #[arg(long, default_value_t = 10.0)]
    pub probe_rate: f64,
    /// Connect over TLS, trusting the CA certificates in this PEM file.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With `--tls-ca`: the name the broker's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Connect over WebSocket (subprotocol `mqtt`) on this HTTP path, e.g. `/mqtt`;
    /// with `--tls-ca`, over TLS (wss).
    #[arg(long)]
    pub ws_path: Option<String>,
}

/// Checked, resolved arguments: what the runner executes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Resolved broker addresses, at least one.
    pub hosts: Vec<SocketAddr>,
    /// See [`BenchArgs::count`].
    pub count: u32,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size, at least [`HEADER_LEN`].
    pub payload: usize,
    /// Messages per second per publisher, `None` = unlimited.
    pub rate: Option<f64>,
    /// In-flight window per publisher, at least 1.
    pub inflight: u16,
    /// Publishing time.
    pub duration: Duration,
    /// Longest wait for acknowledgements and deliveries after publishing.
    pub drain: Duration,
    /// MQTT version.
    pub protocol: Protocol,
    /// Clean Session / Clean Start.
    pub clean: bool,
    /// Session Expiry Interval (MQTT 5).
    pub session_expiry: Option<u32>,
    /// Keep Alive in seconds.
    pub keep_alive: u16,
    /// Connections per second, `None` = unlimited.
    pub conn_rate: Option<f64>,
    /// Concurrent handshakes, at least 1.
    pub conn_parallel: usize,
    /// Source addresses, possibly empty (let the OS choose).
    pub source_addrs: Vec<IpAddr>,
    /// Topic prefix or (for `sub`) filter.
    pub topic: String,
    /// Client identifier prefix.
    pub client_id_prefix: String,
    /// Broker PID to observe.
    pub broker_pid: Option<u32>,
    /// Worker threads.
    pub threads: usize,
    /// Whether to draw the progress line (on a terminal only).
    pub progress: bool,
    /// `flood`: probe pairs.
    pub probes: u32,
    /// `flood`: probe messages per second per publisher.
    pub probe_rate: f64,
    /// TLS on every connection (`--tls-ca`).
    pub tls: Option<crate::tls::TlsClient>,
    /// WebSocket on this path (`--ws-path`).
    pub ws_path: Option<String>,
}

impl BenchArgs {
    /// Checks the arguments and resolves the hosts.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let bad = |m: String| Err(BenchError::InvalidArgs(m));
        if self.hosts.is_empty() {
            return bad("--hosts: at least one HOST:PORT is needed".into());
        }
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for h in &self.hosts {
            let addr = h
                .to_socket_addrs()
                .map_err(|e| BenchError::InvalidArgs(format!("--hosts: {h}: {e}")))?
                .next();
            match addr {
                Some(a) => hosts.push(a),
                None => return bad(format!("--hosts: {h}: no address")),
            }
        }
        if self.count == 0 {
            return bad("--count must be at least 1".into());
        }
        if self.payload < HEADER_LEN {
            return bad(format!(
                "--payload must be at least {HEADER_LEN} bytes (publisher, sequence, send time)"
            ));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return bad("--rate must be 0 or a positive number".into());
        }
        if !(self.conn_rate.is_finite() && self.conn_rate >= 0.0) {
            return bad("--conn-rate must be 0 or a positive number".into());
        }
        if self.inflight == 0 {
            return bad("--inflight must be at least 1".into());
        }
        if self.scenario == Scenario::Flood
            && (self.probes == 0 || !(self.probe_rate.is_finite() && self.probe_rate > 0.0))
        {
            return bad("flood: --probes and --probe-rate must be positive".into());
        }
        if self.session_expiry.is_some() && !self.protocol.is_v5() {
            return bad("--session-expiry needs --protocol 5".into());
        }
        let tls = match &self.tls_ca {
            Some(ca) => Some(
                crate::tls::TlsClient::new(ca, &self.tls_server_name)
                    .map_err(|e| BenchError::InvalidArgs(format!("{e:#}")))?,
            ),
            None => None,
        };
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Ok(Plan {
            scenario: self.scenario,
            hosts,
            count: self.count,
            qos: self.qos,
            payload: self.payload,
            rate: (self.rate > 0.0).then_some(self.rate),
            inflight: self.inflight,
            duration: self.duration,
            drain: self.drain,
            protocol: self.protocol,
            clean: self.clean,
            session_expiry: self.session_expiry,
            keep_alive: self.keep_alive,
            conn_rate: (self.conn_rate > 0.0).then_some(self.conn_rate),
            conn_parallel: self.conn_parallel.max(1),
            source_addrs: self.source_addrs.clone(),
            topic: self.topic.clone(),
            client_id_prefix: self
                .client_id_prefix
                .clone()
                .unwrap_or_else(|| format!("bench-{}", std::process::id())),
            broker_pid: self.broker_pid,
            threads: threads.max(1),
            progress: !self.no_progress,
            probes: self.probes,
            probe_rate: self.probe_rate,
            tls,
            ws_path: self.ws_path.clone(),
        })
    }
}

/// Parses `0`, `1` or `2`.
pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not {s:?}"))
}

/// Parses `3.1.1` (or `4`) and `5` (or `5.0`).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "3.1.1" | "4" | "311" => Ok(Protocol::V311),
        "5" | "5.0" => Ok(Protocol::V5),
        "3.1" | "3" => Ok(Protocol::V31),
        _ => Err(format!("protocol must be 3.1.1 or 5, not {s:?}")),
    }
}

/// The protocol as written on the command line.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V31 => "3.1",
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    }
}

/// Parses `250ms`, `10s`, `2m`, or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s, 500ms, 2m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(line: &str) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace())).map(|c| c.args)
    }

    #[test]
    fn defaults() {
        let a = parse("pairs").unwrap();
        let p = a.plan().unwrap();
        assert_eq!(p.scenario, Scenario::Pairs);
        assert_eq!(p.hosts, vec!["127.0.0.1:1883".parse().unwrap()]);
        assert_eq!(p.qos, QoS::AtMostOnce);
        assert_eq!(p.payload, 64);
        assert_eq!(p.rate, None);
        assert_eq!(p.protocol, Protocol::V311);
        assert!(p.clean);
        assert_eq!(p.duration, Duration::from_secs(10));
    }

    #[test]
    fn full_line() {
        let a = parse(
            "fanout -n 100 --qos 2 --payload 128 --rate 1000 --duration 3s --protocol 5 \
             --clean false --session-expiry 60 --hosts 127.0.0.1:1,127.0.0.1:2 \
             --source-addrs 127.0.0.1,127.0.0.2 --broker-pid 42 --conn-rate 500",
        )
        .unwrap();
        let p = a.plan().unwrap();
        assert_eq!(p.scenario, Scenario::Fanout);
        assert_eq!(p.count, 100);
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert_eq!(p.rate, Some(1000.0));
        assert_eq!(p.protocol, Protocol::V5);
        assert!(!p.clean);
        assert_eq!(p.session_expiry, Some(60));
        assert_eq!(p.hosts.len(), 2);
        assert_eq!(p.source_addrs.len(), 2);
        assert_eq!(p.broker_pid, Some(42));
        assert_eq!(p.conn_rate, Some(500.0));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse("pairs --qos 3").is_err());
        assert!(parse("pairs --protocol 6").is_err());
        assert!(parse("nope").is_err());
        assert!(parse("pairs --duration soon").is_err());
        let small = parse("pairs --payload 10").unwrap().plan().unwrap_err();
        assert!(small.to_string().contains("--payload"), "{small}");
        let expiry = parse("pairs --session-expiry 5")
            .unwrap()
            .plan()
            .unwrap_err();
        assert!(expiry.to_string().contains("--protocol 5"), "{expiry}");
        assert!(parse("pairs -n 0").unwrap().plan().is_err());
        assert!(parse("pairs --inflight 0").unwrap().plan().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("-1s").is_err());
    }
}
