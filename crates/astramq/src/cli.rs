//! Command-line flags and configuration layering.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config` or
//! `ASTRAMQ_CONFIG`), `ASTRAMQ_*` environment variables, command-line flags. All
//! layers are merged as TOML values and deserialized once, so every error, whatever
//! layer it came from, names the configuration key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use broker::Config;
use clap::{Args, Parser, Subcommand};
use toml::{Table, Value};

/// AstraMQ, a distributed MQTT broker.
#[derive(Debug, Parser)]
#[command(
    name = "astramq",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; `broker` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Broker flags, for `astramq` without a subcommand.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker node (the default).
    Broker(Box<BrokerArgs>),
    /// Create or update a Mosquitto-compatible password file.
    Passwd(crate::passwd::PasswdArgs),
    /// Load-test an MQTT broker (scenarios conn, pub, sub, fanin, fanout, pairs).
    Bench(bench::BenchArgs),
    /// Run a load balancer in front of the broker nodes.
    Lb(lb::LbArgs),
    /// Run a local development cluster: redis-server, N broker nodes and a load
    /// balancer, as child processes on loopback.
    Cluster(crate::devcluster::DevClusterArgs),
    /// Talk to a node's admin API (clients, kick, retained messages, nodes), and
    /// manage its API keys.
    Ctl(crate::ctl::CtlArgs),
}

/// Flags of `astramq broker`; each also has a config key and an `ASTRAMQ_*` variable.
#[derive(Debug, Default, Args)]
pub struct BrokerArgs {
    /// Address to accept MQTT on (repeatable). Key `listen`, env `ASTRAMQ_LISTEN`
    /// (comma-separated). Default 127.0.0.1:1883.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Address to accept MQTT on behind a load balancer (repeatable): every
    /// connection must start with a PROXY protocol v2 header. Key `proxy_listen`,
    /// env `ASTRAMQ_PROXY_LISTEN` (comma-separated).
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: Vec<SocketAddr>,
    /// Address to accept MQTT over TLS on (repeatable); needs `--tls-cert` and
    /// `--tls-key`. Key `tls_listen`, env `ASTRAMQ_TLS_LISTEN` (comma-separated).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Like `--tls-listen`, each connection starting with a PROXY protocol v2
    /// header. Key `tls_proxy_listen`, env `ASTRAMQ_TLS_PROXY_LISTEN`.
    #[arg(long, value_name = "ADDR")]
    pub tls_proxy_listen: Vec<SocketAddr>,
    /// Address to accept MQTT over WebSocket on (repeatable). Key `ws_listen`, env
    /// `ASTRAMQ_WS_LISTEN` (comma-separated).
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Vec<SocketAddr>,
    /// Like `--ws-listen`, behind a PROXY protocol v2 header. Key
    /// `ws_proxy_listen`, env `ASTRAMQ_WS_PROXY_LISTEN`.
    #[arg(long, value_name = "ADDR")]
    pub ws_proxy_listen: Vec<SocketAddr>,
    /// Address to accept MQTT over WebSocket over TLS on (repeatable). Key
    /// `wss_listen`, env `ASTRAMQ_WSS_LISTEN` (comma-separated).
    #[arg(long, value_name = "ADDR")]
    pub wss_listen: Vec<SocketAddr>,
    /// Like `--wss-listen`, behind a PROXY protocol v2 header. Key
    /// `wss_proxy_listen`, env `ASTRAMQ_WSS_PROXY_LISTEN`.
    #[arg(long, value_name = "ADDR")]
    pub wss_proxy_listen: Vec<SocketAddr>,
    /// HTTP path of the WebSocket upgrade (default `/mqtt`). Key `ws_path`, env
    /// `ASTRAMQ_WS_PATH`.
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// PEM certificate chain (leaf first) of the TLS and WSS listeners. Key
    /// `tls_cert`, env `ASTRAMQ_TLS_CERT`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`. Key `tls_key`, env `ASTRAMQ_TLS_KEY`.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates are checked against. Key
    /// `tls_client_ca`, env `ASTRAMQ_TLS_CLIENT_CA`.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (needs `--tls-client-ca`). Key
    /// `require_certificate`, env `ASTRAMQ_REQUIRE_CERTIFICATE`.
    #[arg(long, value_name = "BOOL")]
    pub require_certificate: Option<bool>,
    /// The client certificate's Common Name is the user name. Key
    /// `use_identity_as_username`, env `ASTRAMQ_USE_IDENTITY_AS_USERNAME`.
    #[arg(long, value_name = "BOOL")]
    pub use_identity_as_username: Option<bool>,
    /// The client certificate's whole subject is the user name. Key
    /// `use_subject_as_username`, env `ASTRAMQ_USE_SUBJECT_AS_USERNAME`.
    #[arg(long, value_name = "BOOL")]
    pub use_subject_as_username: Option<bool>,
    /// Seconds between checks of the TLS files for changes (0 = SIGHUP only). Key
    /// `tls_reload_interval_secs`, env `ASTRAMQ_TLS_RELOAD_INTERVAL_SECS`.
    #[arg(long, value_name = "SECS")]
    pub tls_reload_interval_secs: Option<u64>,
    /// TOML configuration file. Env `ASTRAMQ_CONFIG`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Whether clients without a user name may connect. Key `allow_anonymous`,
    /// env `ASTRAMQ_ALLOW_ANONYMOUS`.
    #[arg(long, value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file. Key `password_file`, env `ASTRAMQ_PASSWORD_FILE`.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file. Key `acl_file`, env `ASTRAMQ_ACL_FILE`.
    #[arg(long, value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Log level or tracing filter. Key `log_level`, env `ASTRAMQ_LOG_LEVEL`.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Address of the HTTP health endpoint (`GET /health`, `GET /metrics`). Key
    /// `health_listen`, env `ASTRAMQ_HEALTH_LISTEN`. Default: none.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
    /// API keys of the admin API (`/api/v1` on the health listener), made with
    /// `astramq ctl key add`. Key `admin_keys_file`, env `ASTRAMQ_ADMIN_KEYS_FILE`.
    /// Default: none (every API request refused).
    #[arg(long, value_name = "FILE")]
    pub admin_keys_file: Option<PathBuf>,
    /// Keep persistent sessions, their queued messages and retained messages in this
    /// directory, so they survive a restart (a single node; without it, memory only).
    /// Key `data_dir`, env `ASTRAMQ_DATA_DIR`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Longest keep alive a client may use, in seconds; a client asking for more or
    /// for none (0) is given this one (0 = no cap). Key `limits.max_keep_alive_secs`,
    /// env `ASTRAMQ_LIMITS_MAX_KEEP_ALIVE_SECS`.
    #[arg(long, value_name = "SECS")]
    pub max_keep_alive_secs: Option<u16>,
    /// This node's id in the cluster. Key `node_id`, env `ASTRAMQ_NODE_ID`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Redis URL; joins a cluster (`redis://`, `rediss://`, `redis+cluster://h:p,h:p`,
    /// `redis+sentinel://h:p/master`; TLS: `rediss+cluster://`, `rediss+sentinel://`).
    /// Key `redis`, env `ASTRAMQ_REDIS`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// PEM certificate authorities that sign the Redis servers' certificates
    /// (`rediss://` URLs; default: the system's trust store). Key
    /// `cluster.redis_tls_ca`, env `ASTRAMQ_CLUSTER_REDIS_TLS_CA`.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate for Redis servers that require one (mutual TLS). Key
    /// `cluster.redis_tls_cert`, env `ASTRAMQ_CLUSTER_REDIS_TLS_CERT`.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of `--redis-tls-cert`. Key `cluster.redis_tls_key`, env
    /// `ASTRAMQ_CLUSTER_REDIS_TLS_KEY`.
    #[arg(long, value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,
    /// UDP address for gossip. Key `gossip_listen`, env `ASTRAMQ_GOSSIP_LISTEN`.
    #[arg(long, value_name = "ADDR")]
    pub gossip_listen: Option<SocketAddr>,
    /// Gossip address other nodes should use, when not `--gossip-listen` (NAT, a
    /// relay). Key `gossip_advertise`, env `ASTRAMQ_GOSSIP_ADVERTISE`.
    #[arg(long, value_name = "ADDR")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses of nodes to join (comma-separated). Key `join`, env
    /// `ASTRAMQ_JOIN`.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub join: Vec<SocketAddr>,
    /// Shared secret authenticating gossip. Key `cluster_key`, env `ASTRAMQ_CLUSTER_KEY`.
    #[arg(long, value_name = "SECRET")]
    pub cluster_key: Option<String>,
}

/// The `ASTRAMQ_*` variables of the process: the one place the environment is read.
pub fn environment() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("ASTRAMQ_"))
        .collect()
}

/// Builds the configuration from flags, environment and file.
pub fn load_config(args: &BrokerArgs, env: &HashMap<String, String>) -> anyhow::Result<Config> {
    let path = args
        .config
        .clone()
        .or_else(|| env.get("ASTRAMQ_CONFIG").map(PathBuf::from));
    let mut table = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            // Parse alone first so a syntax or type error names its key and file.
            Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            text.parse::<Table>()?
        }
        None => Table::new(),
    };
    apply_env(&mut table, env)?;
    apply_flags(&mut table, args);
    let text = toml::to_string(&table)?;
    let config = Config::from_toml(&text)?;
    config.validate()?;
    Ok(config)
}

/// Top-level keys and the sections whose keys map to `ASTRAMQ_<SECTION>_<KEY>`.
const TOP_KEYS: &[&str] = &[
    "listen",
    "proxy_listen",
    "tls_listen",
    "tls_proxy_listen",
    "ws_listen",
    "ws_proxy_listen",
    "wss_listen",
    "wss_proxy_listen",
    "ws_path",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "require_certificate",
    "use_identity_as_username",
    "use_subject_as_username",
    "tls_reload_interval_secs",
    "allow_anonymous",
    "password_file",
    "acl_file",
    "log_level",
    "health_listen",
    "admin_keys_file",
    "data_dir",
    "sys_interval_secs",
    "admin_tls",
    "admin_tls_ca",
    "node_id",
    "redis",
    "gossip_listen",
    "gossip_advertise",
    "join",
    "cluster_key",
];
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "listen",
    "proxy_listen",
    "tls_listen",
    "tls_proxy_listen",
    "ws_listen",
    "ws_proxy_listen",
    "wss_listen",
    "wss_proxy_listen",
    "join",
];
const SECTIONS: &[&str] = &["limits", "shutdown", "cluster", "store"];

fn apply_env(table: &mut Table, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let mut vars: Vec<_> = env.iter().collect();
    vars.sort();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("ASTRAMQ_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        if rest == "config" {
            continue;
        }
        if LIST_KEYS.contains(&rest.as_str()) {
            let addrs = raw
                .split(',')
                .map(|a| Value::String(a.trim().to_string()))
                .collect();
            table.insert(rest, Value::Array(addrs));
        } else if TOP_KEYS.contains(&rest.as_str()) {
            table.insert(rest, env_value(raw));
        } else if let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
        {
            let entry = table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()));
            let Value::Table(t) = entry else {
                anyhow::bail!("invalid configuration: {section}: must be a table");
            };
            t.insert(key.to_string(), env_value(raw));
        } else {
            anyhow::bail!("unknown environment variable {name}: no such configuration key");
        }
    }
    Ok(())
}

/// An environment value as TOML: a number or boolean when it reads as one, else a string.
fn env_value(raw: &str) -> Value {
    if let Ok(b) = raw.parse::<bool>() {
        Value::Boolean(b)
    } else if let Ok(i) = raw.parse::<i64>() {
        Value::Integer(i)
    } else {
        Value::String(raw.to_string())
    }
}

fn apply_flags(table: &mut Table, args: &BrokerArgs) {
    for (key, addrs) in [
        ("listen", &args.listen),
        ("proxy_listen", &args.proxy_listen),
        ("tls_listen", &args.tls_listen),
        ("tls_proxy_listen", &args.tls_proxy_listen),
        ("ws_listen", &args.ws_listen),
        ("ws_proxy_listen", &args.ws_proxy_listen),
        ("wss_listen", &args.wss_listen),
        ("wss_proxy_listen", &args.wss_proxy_listen),
    ] {
        if !addrs.is_empty() {
            let addrs = addrs.iter().map(|a| Value::String(a.to_string())).collect();
            table.insert(key.into(), Value::Array(addrs));
        }
    }
    for (key, file) in [
        ("tls_cert", &args.tls_cert),
        ("tls_key", &args.tls_key),
        ("tls_client_ca", &args.tls_client_ca),
    ] {
        if let Some(p) = file {
            table.insert(key.into(), Value::String(p.display().to_string()));
        }
    }
    for (key, flag) in [
        ("require_certificate", args.require_certificate),
        ("use_identity_as_username", args.use_identity_as_username),
        ("use_subject_as_username", args.use_subject_as_username),
    ] {
        if let Some(b) = flag {
            table.insert(key.into(), Value::Boolean(b));
        }
    }
    if let Some(p) = &args.ws_path {
        table.insert("ws_path".into(), Value::String(p.clone()));
    }
    if let Some(v) = args.tls_reload_interval_secs {
        table.insert(
            "tls_reload_interval_secs".into(),
            Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
        );
    }
    if let Some(b) = args.allow_anonymous {
        table.insert("allow_anonymous".into(), Value::Boolean(b));
    }
    let path = |p: &PathBuf| Value::String(p.display().to_string());
    if let Some(p) = &args.password_file {
        table.insert("password_file".into(), path(p));
        // A password file without an explicit choice means "users only".
        table
            .entry("allow_anonymous")
            .or_insert(Value::Boolean(false));
    }
    if let Some(p) = &args.acl_file {
        table.insert("acl_file".into(), path(p));
    }
    let text = |s: &str| Value::String(s.to_string());
    if let Some(l) = &args.log_level {
        table.insert("log_level".into(), text(l));
    }
    if let Some(p) = &args.data_dir {
        table.insert("data_dir".into(), path(p));
    }
    if let Some(v) = &args.health_listen {
        table.insert("health_listen".into(), text(&v.to_string()));
    }
    if let Some(p) = &args.admin_keys_file {
        table.insert("admin_keys_file".into(), path(p));
    }
    if let Some(v) = args.max_keep_alive_secs {
        let limits = table
            .entry("limits")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = limits {
            t.insert("max_keep_alive_secs".into(), Value::Integer(i64::from(v)));
        }
    }
    if let Some(v) = &args.node_id {
        table.insert("node_id".into(), text(v));
    }
    if let Some(v) = &args.redis {
        table.insert("redis".into(), text(v));
    }
    for (key, file) in [
        ("redis_tls_ca", &args.redis_tls_ca),
        ("redis_tls_cert", &args.redis_tls_cert),
        ("redis_tls_key", &args.redis_tls_key),
    ] {
        if let Some(p) = file {
            let cluster = table
                .entry("cluster")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = cluster {
                t.insert(key.into(), path(p));
            }
        }
    }
    if let Some(v) = &args.gossip_listen {
        table.insert("gossip_listen".into(), text(&v.to_string()));
    }
    if let Some(v) = &args.gossip_advertise {
        table.insert("gossip_advertise".into(), text(&v.to_string()));
    }
    if !args.join.is_empty() {
        let addrs = args.join.iter().map(|a| text(&a.to_string())).collect();
        table.insert("join".into(), Value::Array(addrs));
    }
    if let Some(v) = &args.cluster_key {
        table.insert("cluster_key".into(), text(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_anything() {
        let c = load_config(&BrokerArgs::default(), &env(&[])).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:1883".parse().unwrap()]);
    }

    #[test]
    fn env_sets_section_keys_and_flags_win() {
        let args = BrokerArgs {
            listen: vec!["127.0.0.1:2000".parse().unwrap()],
            ..Default::default()
        };
        let c = load_config(
            &args,
            &env(&[
                ("ASTRAMQ_LISTEN", "127.0.0.1:1000,127.0.0.1:1001"),
                ("ASTRAMQ_LIMITS_MAX_QUEUED_MESSAGES", "7"),
                ("ASTRAMQ_LIMITS_QUEUE_OVERFLOW", "drop-newest"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:2000".parse().unwrap()]);
        assert_eq!(c.limits.max_queued_messages, 7);
        assert_eq!(
            c.limits.queue_overflow,
            broker::config::QueueOverflow::DropNewest
        );
    }

    #[test]
    fn proxy_listen_from_env_and_flag() {
        let c = load_config(
            &BrokerArgs::default(),
            &env(&[("ASTRAMQ_PROXY_LISTEN", "127.0.0.1:1884,127.0.0.1:1885")]),
        )
        .unwrap();
        assert_eq!(c.proxy_listen.len(), 2);
        let args = BrokerArgs {
            proxy_listen: vec!["127.0.0.1:2884".parse().unwrap()],
            ..Default::default()
        };
        let c = load_config(&args, &env(&[])).unwrap();
        assert_eq!(c.proxy_listen, vec!["127.0.0.1:2884".parse().unwrap()]);
    }

    #[test]
    fn tls_and_websocket_settings_from_env_and_flags() {
        let c = load_config(
            &BrokerArgs::default(),
            &env(&[
                ("ASTRAMQ_TLS_LISTEN", "127.0.0.1:8883,127.0.0.1:8884"),
                ("ASTRAMQ_WSS_LISTEN", "127.0.0.1:8443"),
                ("ASTRAMQ_WS_LISTEN", "127.0.0.1:8080"),
                ("ASTRAMQ_WS_PATH", "/ws"),
                ("ASTRAMQ_TLS_CERT", "/etc/astramq/cert.pem"),
                ("ASTRAMQ_TLS_KEY", "/etc/astramq/key.pem"),
                ("ASTRAMQ_TLS_CLIENT_CA", "/etc/astramq/ca.pem"),
                ("ASTRAMQ_REQUIRE_CERTIFICATE", "true"),
                ("ASTRAMQ_USE_IDENTITY_AS_USERNAME", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tls_listen.len(), 2);
        assert_eq!(c.wss_listen.len(), 1);
        assert_eq!(c.ws_path, "/ws");
        assert!(c.require_certificate && c.use_identity_as_username);
        let args = BrokerArgs {
            tls_listen: vec!["127.0.0.1:9883".parse().unwrap()],
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_reload_interval_secs: Some(1),
            ..Default::default()
        };
        let c = load_config(&args, &env(&[])).unwrap();
        assert_eq!(c.tls_listen, vec!["127.0.0.1:9883".parse().unwrap()]);
        assert_eq!(c.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(c.tls_reload_interval_secs, 1);
        let e = load_config(
            &BrokerArgs::default(),
            &env(&[("ASTRAMQ_TLS_LISTEN", "127.0.0.1:8883")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
    }

    #[test]
    fn health_listen_from_file_env_and_flag() {
        let dir = tempfile_dir();
        let path = dir.join("astramq.toml");
        std::fs::write(&path, "health_listen = \"127.0.0.1:9100\"\n").unwrap();
        let args = BrokerArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = load_config(&args, &env(&[])).unwrap();
        assert_eq!(c.health_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let c = load_config(&args, &env(&[("ASTRAMQ_HEALTH_LISTEN", "127.0.0.1:9101")])).unwrap();
        assert_eq!(c.health_listen, Some("127.0.0.1:9101".parse().unwrap()));
        let args = BrokerArgs {
            config: Some(path),
            health_listen: Some("127.0.0.1:9102".parse().unwrap()),
            ..Default::default()
        };
        let c = load_config(&args, &env(&[("ASTRAMQ_HEALTH_LISTEN", "127.0.0.1:9101")])).unwrap();
        assert_eq!(c.health_listen, Some("127.0.0.1:9102".parse().unwrap()));
        let e = load_config(
            &BrokerArgs::default(),
            &env(&[("ASTRAMQ_HEALTH_LISTEN", "nowhere")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("health_listen"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A fresh scratch directory (no tempfile dependency in the binary crate).
    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "astramq-cli-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn max_keep_alive_from_env_and_flag() {
        let e = env(&[("ASTRAMQ_LIMITS_MAX_KEEP_ALIVE_SECS", "30")]);
        let c = load_config(&BrokerArgs::default(), &e).unwrap();
        assert_eq!(c.limits.max_keep_alive_secs, 30);
        let args = BrokerArgs {
            max_keep_alive_secs: Some(20),
            ..Default::default()
        };
        let c = load_config(&args, &e).unwrap();
        assert_eq!(c.limits.max_keep_alive_secs, 20);
    }

    #[test]
    fn redis_tls_files_from_env_and_flags() {
        let e = env(&[
            ("ASTRAMQ_CLUSTER_REDIS_TLS_CA", "/etc/ca.pem"),
            ("ASTRAMQ_CLUSTER_REDIS_TLS_CERT", "/etc/c.pem"),
            ("ASTRAMQ_CLUSTER_REDIS_TLS_KEY", "/etc/k.pem"),
        ]);
        let c = load_config(&BrokerArgs::default(), &e).unwrap();
        assert_eq!(c.cluster.redis_tls_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.cluster.redis_tls_key, Some(PathBuf::from("/etc/k.pem")));
        let args = BrokerArgs {
            redis_tls_ca: Some("/other/ca.pem".into()),
            ..Default::default()
        };
        let c = load_config(&args, &e).unwrap();
        assert_eq!(c.cluster.redis_tls_ca, Some(PathBuf::from("/other/ca.pem")));
        assert_eq!(c.cluster.redis_tls_cert, Some(PathBuf::from("/etc/c.pem")));
        // A certificate without its key is refused, naming the missing key.
        let args = BrokerArgs {
            redis_tls_cert: Some("/etc/c.pem".into()),
            ..Default::default()
        };
        let e = load_config(&args, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("cluster.redis_tls_key"), "{e}");
    }

    #[test]
    fn bad_env_value_names_the_key() {
        let e = load_config(
            &BrokerArgs::default(),
            &env(&[("ASTRAMQ_LIMITS_MAX_PACKET_SIZE", "huge")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_packet_size"), "{e}");
    }

    #[test]
    fn unknown_env_key_is_an_error() {
        let e = load_config(
            &BrokerArgs::default(),
            &env(&[("ASTRAMQ_LIMITS_NOPE", "1")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.nope"), "{e}");
        let e = load_config(&BrokerArgs::default(), &env(&[("ASTRAMQ_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("ASTRAMQ_NOPE"), "{e}");
    }
}
