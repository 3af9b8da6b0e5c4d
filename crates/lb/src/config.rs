//! [`LbArgs`], the flags of `astramq lb`, and [`LbConfig`], the checked
//! configuration they become. Nothing here binds or connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use crate::error::LbError;
use crate::tls::TlsFiles;

/// How a node is chosen for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// Each live node in turn (the default).
    #[default]
    RoundRobin,
    /// The node with the fewest connections: our own count, plus in gossip mode the
    /// count each node advertises (which includes other balancers' and direct
    /// clients).
    LeastConnections,
    /// Read the CONNECT, refuse anything else, and send the client id to the node
    /// that rendezvous hashing gives it, skipping nodes loaded beyond
    /// `--hash-balance-factor` × the average, so a reconnecting client lands where
    /// its session lives.
    ClientId,
}

/// Which of a broker's listeners gossip-discovered backends are reached on (what
/// the balancer's clients speak).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendTransport {
    /// Plain MQTT (`--listen` / `--proxy-listen`): the default.
    #[default]
    Mqtt,
    /// TLS passed through to the nodes' `tls_listen` / `tls_proxy_listen`: the nodes
    /// terminate it (client certificates included); the balancer reads nothing.
    Tls,
    /// WebSocket passed through to the nodes' `ws_listen` / `ws_proxy_listen`.
    Ws,
    /// WebSocket over TLS passed through to `wss_listen` / `wss_proxy_listen`.
    Wss,
}

/// Flags of `astramq lb`.
#[derive(Debug, Clone, Args)]
pub struct LbArgs {
    /// Address to accept client connections on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Gossip seeds (comma-separated or repeated): join the cluster and send clients
    /// to the live broker nodes it advertises.
    #[arg(
        long,
        value_name = "GOSSIP_ADDR",
        value_delimiter = ',',
        required_unless_present = "backends",
        conflicts_with = "backends"
    )]
    pub join: Vec<SocketAddr>,
    /// A static list of broker MQTT addresses (comma-separated or repeated), instead
    /// of gossip. A node that refuses connections is skipped for a backoff period.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub backends: Vec<SocketAddr>,
    /// How a node is chosen for each new connection.
    #[arg(long, value_enum, default_value_t = Strategy::RoundRobin)]
    pub strategy: Strategy,
    /// With `--join`: which listeners of the nodes to send clients to. `tls`, `ws`
    /// and `wss` pass the connection through untouched to the nodes' TLS or
    /// WebSocket listeners (their PROXY variant when `--proxy-protocol` is true and
    /// the node has one), so the nodes terminate TLS and WebSocket themselves; the
    /// `client-id` strategy cannot read such a stream and is refused with them.
    #[arg(long, value_enum, default_value_t = BackendTransport::Mqtt)]
    pub backend_transport: BackendTransport,
    /// Send a PROXY protocol v2 header carrying the client's address. With `--join`
    /// (default true): a broker advertising a PROXY listener (`--proxy-listen`) gets
    /// the header there; one advertising none gets plain TCP on its MQTT listener
    /// and sees the balancer's address (logged once per node); false: plain
    /// listeners only. With `--backends` it must be given: true when the addresses
    /// are PROXY listeners, false when they are plain MQTT listeners.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub proxy_protocol: Option<bool>,
    /// UDP address for gossip (gossip mode).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7946")]
    pub gossip_listen: SocketAddr,
    /// Gossip address other members reach us at, when `--gossip-listen` is a
    /// wildcard. Default: the local address that routes to the first seed.
    #[arg(long, value_name = "ADDR")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Our gossip node id. Default: `lb-<hostname>-<listen port>`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Shared gossip secret (all members must agree).
    #[arg(
        long,
        value_name = "KEY",
        env = "ASTRAMQ_CLUSTER_KEY",
        hide_env_values = true
    )]
    pub cluster_key: Option<String>,
    /// client-id strategy: a node may hold at most this factor × the average number
    /// of connections before its clients spill to the next node (> 1).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.25)]
    pub hash_balance_factor: f64,
    /// Time allowed to connect to a broker before trying another, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub connect_timeout_ms: u64,
    /// How long a node that refused a connection is skipped, in milliseconds
    /// (doubling on each further failure, up to 30 s).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub backoff_ms: u64,
    /// client-id strategy: time a client has to send its CONNECT, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_packet_timeout_secs: u64,
    /// client-id strategy: largest CONNECT accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    pub max_connect_size: usize,
    /// On SIGTERM/SIGINT, how long open connections may stay before the process
    /// exits, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub grace_period_secs: u64,
    /// Terminate TLS on `--listen` with this PEM certificate chain (leaf first);
    /// requires `--tls-key`. The brokers then get plain MQTT (after the PROXY
    /// header), and every strategy reads the decrypted stream.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`; requires
    /// `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: time a client has to complete the TLS handshake, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub tls_handshake_timeout_secs: u64,
    /// Log level or tracing filter.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Where the backends come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// A fixed list of broker MQTT addresses.
    Static(Vec<SocketAddr>),
    /// Gossip membership: the live members with the broker role.
    Gossip(GossipConfig),
}

/// How the balancer joins gossip.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Our node id.
    pub node_id: String,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address to advertise, when not the bound one.
    pub advertise: Option<SocketAddr>,
    /// Seeds.
    pub join: Vec<SocketAddr>,
    /// Shared secret.
    pub cluster_key: Option<String>,
}

/// The load balancer's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    /// Client listener.
    pub listen: SocketAddr,
    /// Backend source.
    pub discovery: Discovery,
    /// Node choice.
    pub strategy: Strategy,
    /// Which listeners of gossip-discovered brokers get the connections.
    pub backend_transport: BackendTransport,
    /// Whether to send a PROXY v2 header: in static mode to every backend, in gossip
    /// mode to the brokers that advertise a PROXY listener (the others get plain
    /// TCP on their MQTT listener).
    pub proxy_protocol: bool,
    /// Bounded-load factor for the client-id strategy (> 1).
    pub hash_balance_factor: f64,
    /// Broker connect timeout.
    pub connect_timeout: Duration,
    /// First backoff after a refused connection.
    pub backoff: Duration,
    /// Time to read the CONNECT (client-id strategy).
    pub connect_packet_timeout: Duration,
    /// Largest CONNECT (client-id strategy).
    pub max_connect_size: usize,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// TLS termination on the client listener, when set.
    pub tls: Option<TlsFiles>,
}

impl LbConfig {
    /// A static-backend configuration with the defaults, for tests and embedding.
    pub fn with_backends(listen: SocketAddr, backends: Vec<SocketAddr>) -> LbConfig {
        LbConfig {
            listen,
            discovery: Discovery::Static(backends),
            strategy: Strategy::RoundRobin,
            backend_transport: BackendTransport::Mqtt,
            proxy_protocol: true,
            hash_balance_factor: 1.25,
            connect_timeout: Duration::from_secs(2),
            backoff: Duration::from_secs(2),
            connect_packet_timeout: Duration::from_secs(10),
            max_connect_size: 256 * 1024,
            grace_period: Duration::from_secs(10),
            tls: None,
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), LbError> {
        let bad = |why: &str| Err(LbError::Config(why.to_string()));
        match &self.discovery {
            Discovery::Static(list) if list.is_empty() => {
                return bad("--backends: at least one address is needed")
            }
            Discovery::Gossip(g) if g.join.is_empty() => {
                return bad("--join: at least one seed is needed")
            }
            _ => {}
        }
        if !(self.hash_balance_factor > 1.0 && self.hash_balance_factor.is_finite()) {
            return bad("--hash-balance-factor: must be a number greater than 1");
        }
        for (name, d) in [
            ("--connect-timeout-ms", self.connect_timeout),
            ("--backoff-ms", self.backoff),
            ("--connect-packet-timeout-secs", self.connect_packet_timeout),
        ] {
            if d.is_zero() {
                return Err(LbError::Config(format!("{name}: must not be zero")));
            }
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.handshake_timeout.is_zero())
        {
            return bad("--tls-handshake-timeout-secs: must not be zero");
        }
        if self.backend_transport != BackendTransport::Mqtt {
            if self.strategy == Strategy::ClientId {
                return bad(
                    "--strategy client-id reads the MQTT CONNECT, which a TLS or WebSocket \
                     connection passed through hides: use round-robin or least-connections \
                     with --backend-transport tls, ws or wss",
                );
            }
            if self.tls.is_some()
                && matches!(
                    self.backend_transport,
                    BackendTransport::Tls | BackendTransport::Wss
                )
            {
                return bad(
                    "--tls-cert terminates TLS at the balancer: the nodes then get plain \
                     bytes, which their tls/wss listeners refuse (use --backend-transport \
                     mqtt or ws behind it)",
                );
            }
        }
        if self.max_connect_size < 16 {
            return bad("--max-connect-size: must be at least 16 bytes");
        }
        Ok(())
    }
}

impl LbArgs {
    /// The validated configuration these flags stand for.
    pub fn to_config(&self) -> Result<LbConfig, LbError> {
        let discovery = if self.backends.is_empty() {
            let advertise = match self.gossip_advertise {
                Some(a) => Some(a),
                None if self.gossip_listen.ip().is_unspecified() => {
                    Some(route_to(&self.join, self.gossip_listen.port())?)
                }
                None => None,
            };
            Discovery::Gossip(GossipConfig {
                node_id: self
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("lb-{}-{}", hostname(), self.listen.port())),
                listen: self.gossip_listen,
                advertise,
                join: self.join.clone(),
                cluster_key: self.cluster_key.clone(),
            })
        } else {
            Discovery::Static(self.backends.clone())
        };
        let proxy_protocol = match (self.proxy_protocol, &discovery) {
            (Some(p), _) => p,
            (None, Discovery::Gossip(_)) => true,
            // Gossip says which listener is which; a static list does not, and a
            // wrong guess closes every connection.
            (None, Discovery::Static(_)) => {
                return Err(LbError::Config(
                    "--backends needs --proxy-protocol true (the addresses are the nodes' \
                     --proxy-listen listeners) or --proxy-protocol false (they are plain \
                     --listen listeners)"
                        .into(),
                ))
            }
        };
        let config = LbConfig {
            listen: self.listen,
            discovery,
            strategy: self.strategy,
            backend_transport: self.backend_transport,
            proxy_protocol,
            hash_balance_factor: self.hash_balance_factor,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff: Duration::from_millis(self.backoff_ms),
            connect_packet_timeout: Duration::from_secs(self.connect_packet_timeout_secs),
            max_connect_size: self.max_connect_size,
            grace_period: Duration::from_secs(self.grace_period_secs),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
                }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(LbError::Config("--tls-cert requires --tls-key".into()))
                }
                (None, Some(_)) => {
                    return Err(LbError::Config("--tls-key requires --tls-cert".into()))
                }
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The local address the OS would use to reach the first seed, with `port`: what to
/// advertise when gossip binds a wildcard address. A connected UDP socket sends
/// nothing; it only asks the routing table.
fn route_to(seeds: &[SocketAddr], port: u16) -> Result<SocketAddr, LbError> {
    let fail = || {
        LbError::Config(
            "--gossip-advertise: cannot guess which address to advertise; set it".into(),
        )
    };
    if port == 0 {
        return Err(fail());
    }
    let seed = seeds.first().ok_or_else(fail)?;
    let bind: IpAddr = match seed {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((bind, 0)).map_err(|_| fail())?;
    socket.connect(seed).map_err(|_| fail())?;
    let ip = socket.local_addr().map_err(|_| fail())?.ip();
    Ok(SocketAddr::new(ip, port))
}

/// The host name, for the default node id (Linux; `localhost` elsewhere).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lb: LbArgs,
    }

    fn parse(args: &[&str]) -> Result<LbConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("lb").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.lb.to_config().map_err(|e| e.to_string())
    }

    #[test]
    fn static_backends_with_defaults() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:1883",
            "--backends",
            "127.0.0.1:1,127.0.0.1:2",
            "--proxy-protocol",
            "true",
        ])
        .unwrap();
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert!(c.proxy_protocol);
        assert_eq!(
            c.discovery,
            Discovery::Static(vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ])
        );
    }

    /// A static list carries no hint which listener an address is: the user says.
    #[test]
    fn static_backends_need_an_explicit_proxy_protocol() {
        let base = ["--listen", "127.0.0.1:1883", "--backends", "127.0.0.1:1"];
        let e = parse(&base).unwrap_err();
        assert!(e.contains("--proxy-protocol true"), "{e}");
        assert!(e.contains("--proxy-protocol false"), "{e}");
        let c = parse(&[&base[..], &["--proxy-protocol", "false"]].concat()).unwrap();
        assert!(!c.proxy_protocol);
        // Gossip mode needs no choice: PROXY v2 where a node advertises a listener.
        let c = parse(&["--listen", "127.0.0.1:1883", "--join", "127.0.0.1:7946"]).unwrap();
        assert!(c.proxy_protocol);
    }

    #[test]
    fn join_or_backends_is_required_and_not_both() {
        assert!(parse(&["--listen", "127.0.0.1:1883"]).is_err());
        assert!(parse(&[
            "--listen",
            "127.0.0.1:1883",
            "--backends",
            "127.0.0.1:1",
            "--join",
            "127.0.0.1:2"
        ])
        .is_err());
    }

    #[test]
    fn gossip_mode_guesses_the_advertised_address() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:1883",
            "--join",
            "127.0.0.1:7946",
            "--strategy",
            "client-id",
            "--proxy-protocol",
            "false",
        ])
        .unwrap();
        assert_eq!(c.strategy, Strategy::ClientId);
        assert!(!c.proxy_protocol);
        let Discovery::Gossip(g) = c.discovery else {
            panic!("gossip expected")
        };
        assert_eq!(g.advertise, Some("127.0.0.1:7946".parse().unwrap()));
        assert!(g.node_id.starts_with("lb-"));
    }

    #[test]
    fn passthrough_transports_refuse_client_id_and_double_tls() {
        let base = [
            "--listen",
            "127.0.0.1:1880",
            "--join",
            "127.0.0.1:7946",
            "--gossip-listen",
            "127.0.0.1:0",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let c = with(&["--backend-transport", "ws"]).unwrap();
        assert_eq!(c.backend_transport, BackendTransport::Ws);
        let e = with(&["--backend-transport", "tls", "--strategy", "client-id"]).unwrap_err();
        assert!(e.contains("client-id"), "{e}");
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let e = with(&[&["--backend-transport", "wss"][..], &tls].concat()).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        with(&[&["--backend-transport", "ws"][..], &tls].concat()).unwrap();
    }

    #[test]
    fn tls_cert_and_key_come_together() {
        let base = [
            "--listen",
            "127.0.0.1:1883",
            "--backends",
            "127.0.0.1:1",
            "--proxy-protocol",
            "true",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let e = with(&["--tls-cert", "c.pem"]).unwrap_err();
        assert!(e.contains("--tls-key"), "{e}");
        let e = with(&["--tls-key", "k.pem"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let c = with(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert!(with(&[]).unwrap().tls.is_none());
    }

    #[test]
    fn a_balance_factor_of_one_or_less_is_refused() {
        let e = parse(&[
            "--listen",
            "127.0.0.1:1883",
            "--backends",
            "127.0.0.1:1",
            "--proxy-protocol",
            "true",
            "--hash-balance-factor",
            "1",
        ])
        .unwrap_err();
        assert!(e.contains("--hash-balance-factor"), "{e}");
    }
}
