//! The broker's configuration: typed, validated once, with the defaults a new user gets.
//!
//! The TOML file maps one-to-one onto these structs; the binary layers command-line
//! flags and `ASTRAMQ_*` environment variables on top before calling [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::listener::{ListenerSpec, Transport};

mod cluster;
mod store;

pub use cluster::{ClusterSettings, ClusterTuning, ForwardLimits};
pub use store::{StoreTuning, SyncPolicy};

/// A configuration value that cannot be used, naming the key.
#[derive(Debug, Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct ConfigError {
    /// The configuration key (`limits.max_packet_size`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Everything the broker needs to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP addresses to accept MQTT connections on.
    pub listen: Vec<SocketAddr>,
    /// TCP addresses where every connection must start with a PROXY protocol v2
    /// header (from a load balancer); the client address it carries is the one
    /// logged and used. See [`crate::proxy`].
    pub proxy_listen: Vec<SocketAddr>,
    /// TCP addresses for MQTT over TLS (`tls_cert`, `tls_key`).
    pub tls_listen: Vec<SocketAddr>,
    /// Like `tls_listen`, each connection starting with a PROXY protocol v2 header
    /// (before the TLS handshake).
    pub tls_proxy_listen: Vec<SocketAddr>,
    /// TCP addresses for MQTT over WebSocket (HTTP upgrade on `ws_path`).
    pub ws_listen: Vec<SocketAddr>,
    /// Like `ws_listen`, behind a PROXY protocol v2 header.
    pub ws_proxy_listen: Vec<SocketAddr>,
    /// TCP addresses for MQTT over WebSocket over TLS.
    pub wss_listen: Vec<SocketAddr>,
    /// Like `wss_listen`, behind a PROXY protocol v2 header.
    pub wss_proxy_listen: Vec<SocketAddr>,
    /// The HTTP path WebSocket listeners upgrade on; any other gets 404.
    pub ws_path: String,
    /// PEM certificate chain (leaf first) of the TLS and WSS listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates the TLS and WSS listeners
    /// accept; without it no client certificate is asked for.
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: a client without a valid certificate is refused during
    /// the handshake (Mosquitto's `require_certificate`). Without it a certificate is
    /// optional, but one that is sent must be valid.
    pub require_certificate: bool,
    /// The client certificate's Common Name is the client's user name (for the ACL),
    /// whatever CONNECT says, and no password is checked (Mosquitto's
    /// `use_identity_as_username`). Needs `require_certificate`.
    pub use_identity_as_username: bool,
    /// The certificate's whole subject (`CN=…,O=…,C=…`, RFC 4514) is the user name
    /// (Mosquitto's `use_subject_as_username`). Needs `require_certificate`.
    pub use_subject_as_username: bool,
    /// How often the TLS files are read to notice a change (a renewed certificate, a
    /// Kubernetes secret swapped by symlink), in seconds; 0 = only on SIGHUP.
    pub tls_reload_interval_secs: u64,
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// A `mosquitto_passwd` password file.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto `acl_file`.
    pub acl_file: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    pub log_level: String,
    /// TCP address of the HTTP health endpoint (`GET /health`, `GET /metrics`); none
    /// by default. See [`crate::health`].
    pub health_listen: Option<SocketAddr>,
    /// API keys of the admin API on `health_listen` (hashed, `astramq ctl key add`);
    /// without it every `/api/v1` request is refused.
    pub admin_keys_file: Option<PathBuf>,
    /// Protocol limits and queue bounds.
    pub limits: Limits,
    /// Shutdown behaviour.
    pub shutdown: Shutdown,
    /// This node's id in the cluster (required with `redis`).
    pub node_id: Option<String>,
    /// Redis URL: joins a cluster. Without it the node is a single-node broker on the
    /// embedded store.
    pub redis: Option<String>,
    /// UDP address for gossip.
    pub gossip_listen: SocketAddr,
    /// Gossip address other nodes should use, when not `gossip_listen` (NAT).
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses of nodes to join through.
    pub join: Vec<SocketAddr>,
    /// Shared secret authenticating gossip messages.
    pub cluster_key: Option<String>,
    /// Cluster tuning.
    pub cluster: ClusterTuning,
    /// HTTPS on the admin listener (`health_listen`), with the TLS settings of the
    /// MQTT listeners (`tls_cert`, `tls_key`, `tls_client_ca`, `require_certificate`).
    pub admin_tls: bool,
    /// With `admin_tls`: the PEM bundle of the CA(s) that signed the other nodes'
    /// admin certificates, which this node verifies when it asks them for the
    /// cluster-wide answers (presenting its own `tls_cert` as client certificate).
    /// Without it a node with `admin_tls` answers for itself only.
    pub admin_tls_ca: Option<PathBuf>,
    /// How often the `$SYS/broker/...` topics are published, seconds (0: never).
    /// Mosquitto's `sys_interval`.
    pub sys_interval_secs: u64,
    /// A single node's data directory: persistent sessions, their queued messages
    /// and retained messages are kept there and survive a restart. `None`: in memory
    /// only. Not with `redis` (a cluster keeps them in Redis).
    pub data_dir: Option<PathBuf>,
    /// How the data directory is written.
    pub store: StoreTuning,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            proxy_listen: Vec::new(),
            tls_listen: Vec::new(),
            tls_proxy_listen: Vec::new(),
            ws_listen: Vec::new(),
            ws_proxy_listen: Vec::new(),
            wss_listen: Vec::new(),
            wss_proxy_listen: Vec::new(),
            ws_path: "/mqtt".into(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            require_certificate: false,
            use_identity_as_username: false,
            use_subject_as_username: false,
            tls_reload_interval_secs: 5,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            log_level: "info".into(),
            health_listen: None,
            admin_keys_file: None,
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            node_id: None,
            redis: None,
            gossip_listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            gossip_advertise: None,
            join: Vec::new(),
            cluster_key: None,
            cluster: ClusterTuning::default(),
            admin_tls: false,
            admin_tls_ca: None,
            sys_interval_secs: 10,
            data_dir: None,
            store: StoreTuning::default(),
        }
    }
}

/// What to do when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// Drop the oldest queued message to make room (the default: fresh data wins).
    DropOldest,
    /// Drop the message that does not fit (Mosquitto's behaviour).
    DropNewest,
}

/// Default `limits.receive_maximum`. The protocol's own default, 65,535, let one
/// client hold 65,535 unreleased QoS 2 packet ids (each one state, and in a cluster
/// a stored record). Other brokers announce 10 (HiveMQ's server receive maximum),
/// 20 (Mosquitto's `max_inflight_messages`) or 32 (EMQX's `max_inflight`), and EMQX
/// holds at most 100 QoS 2 messages awaiting PUBREL per client (`max_awaiting_rel`),
/// the very thing this limit counts. 100 rather than less because 3.1.1 clients
/// cannot be told the limit and are disconnected when they exceed it: common client
/// libraries keep up to 100 in flight (rumqttc's default), fewer (Paho, libmosquitto:
/// 10 to 20) or use what a v5 server announces.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 100;

/// Protocol limits and per-session bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted, in bytes; sent as Maximum Packet Size in v5 CONNACK.
    pub max_packet_size: u32,
    /// Inbound QoS 2 messages a client may have unreleased (awaiting PUBREL); one
    /// more gets DISCONNECT 0x93. Sent as Receive Maximum in v5 CONNACK; 3.1.1
    /// clients are never told it. See [`DEFAULT_RECEIVE_MAXIMUM`].
    pub receive_maximum: u16,
    /// Cap on the outbound in-flight window (the client's Receive Maximum may lower it).
    pub max_inflight: u16,
    /// Topic aliases a client may use toward us (0 = none); sent in v5 CONNACK.
    pub topic_alias_maximum: u16,
    /// When non-zero, the keep alive imposed on every client (Server Keep Alive).
    /// Takes precedence over `max_keep_alive_secs`.
    pub server_keep_alive_secs: u16,
    /// When non-zero, the longest keep alive a client may use (Mosquitto's
    /// `max_keepalive`): a client asking for more, or for 0 (none), gets this one —
    /// v5 is told through Server Keep Alive [MQTT-3.2.2-21], 3.1.1 (which has no way
    /// to be told) has it applied silently. A client asking for less keeps its own.
    pub max_keep_alive_secs: u16,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Messages queued per session (offline, or beyond the in-flight window).
    pub max_queued_messages: usize,
    /// Bytes of payload queued per session.
    pub max_queued_bytes: usize,
    /// Which message to drop when a session queue is full.
    pub queue_overflow: QueueOverflow,
    /// How long a publisher waits for room in a connected subscriber's full queue
    /// (QoS 1/2) before the overflow policy drops a message. 0 = never wait.
    pub queue_full_wait_ms: u64,
    /// Upper bound on the Session Expiry Interval a client may ask for, in seconds.
    pub max_session_expiry_secs: u32,
    /// PUBLISH packets per second one client may send (token bucket, one second of
    /// burst); beyond it its socket is not read until tokens refill, so TCP slows it
    /// down and nothing is lost. 0 = unlimited.
    pub max_publish_rate: u32,
    /// PUBLISH bytes (topic + payload) per second one client may send, the same way.
    /// 0 = unlimited.
    pub max_publish_bytes_rate: u64,
    /// Open connections per listener; beyond it a new connection is closed at once,
    /// before its CONNECT is read. 0 = unlimited.
    pub max_connections: usize,
    /// New connections per second per listener (token bucket, one second of burst);
    /// beyond it a new connection is closed at once. 0 = unlimited.
    pub max_connection_rate: u32,
    /// Subscriptions one session may hold; a SUBSCRIBE filter beyond it is refused
    /// (v5: 0x97 Quota exceeded, 3.1.1: 0x80 Failure). 0 = unlimited.
    pub max_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 268_435_455,
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            max_inflight: 256,
            topic_alias_maximum: 65_535,
            server_keep_alive_secs: 0,
            max_keep_alive_secs: 0,
            connect_timeout_secs: 10,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_overflow: QueueOverflow::DropOldest,
            queue_full_wait_ms: 5000,
            max_session_expiry_secs: u32::MAX,
            max_publish_rate: 1000,
            max_publish_bytes_rate: 10 * 1024 * 1024,
            max_connections: 100_000,
            max_connection_rate: 1000,
            max_subscriptions: 10_000,
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// How long clients get to be told and flushed before the process exits.
    pub grace_period_secs: u64,
    /// Draining before shutdown: over this many seconds, connected clients are moved
    /// away one by one (v5: DISCONNECT 0x9C Use another server) and the node waits
    /// for their persistent sessions to be taken over elsewhere. Default: 5 s in a
    /// cluster, 0 (no draining) on a single node.
    pub drain_secs: Option<u64>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace_period_secs: 10,
            drain_secs: None,
        }
    }
}

impl Config {
    /// Parses a TOML document; the error names the offending key.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            ConfigError::new(
                if key.is_empty() { "config".into() } else { key },
                e.message().to_string(),
            )
        })
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners().next().is_none() {
            return Err(ConfigError::new("listen", "at least one address is needed"));
        }
        self.validate_tls()?;
        let l = &self.limits;
        if l.max_packet_size < 64 || l.max_packet_size > 268_435_455 {
            return Err(ConfigError::new(
                "limits.max_packet_size",
                "must be between 64 and 268435455 bytes",
            ));
        }
        if l.receive_maximum == 0 {
            return Err(ConfigError::new(
                "limits.receive_maximum",
                "must be at least 1",
            ));
        }
        if l.max_inflight == 0 {
            return Err(ConfigError::new(
                "limits.max_inflight",
                "must be at least 1",
            ));
        }
        if l.max_keep_alive_secs > 0 && l.server_keep_alive_secs > l.max_keep_alive_secs {
            return Err(ConfigError::new(
                "limits.server_keep_alive_secs",
                "must not exceed limits.max_keep_alive_secs",
            ));
        }
        if l.max_queued_messages == 0 {
            return Err(ConfigError::new(
                "limits.max_queued_messages",
                "must be at least 1",
            ));
        }
        if l.max_queued_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_queued_bytes",
                "must be at least 1",
            ));
        }
        if l.connect_timeout_secs == 0 {
            return Err(ConfigError::new(
                "limits.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.admin_tls && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(ConfigError::new("admin_tls", "needs tls_cert and tls_key"));
        }
        if self.admin_tls_ca.is_some() && !self.admin_tls {
            return Err(ConfigError::new(
                "admin_tls_ca",
                "is for admin_tls (the other nodes' HTTPS admin listeners); set admin_tls too",
            ));
        }
        if self.redis.is_some() && self.data_dir.is_some() {
            return Err(ConfigError::new(
                "data_dir",
                "a single node's disk store; a cluster (redis) keeps sessions in Redis",
            ));
        }
        if self.store.sync_interval_ms == 0 {
            return Err(ConfigError::new(
                "store.sync_interval_ms",
                "must be at least 1",
            ));
        }
        if self.store.max_queued == 0 {
            return Err(ConfigError::new("store.max_queued", "must be at least 1"));
        }
        if self.redis.is_some() && self.node_id.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::new("node_id", "required when redis is set"));
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 200 || id.contains(['\n', '{', '}', '@']) {
                return Err(ConfigError::new(
                    "node_id",
                    "must be 1-200 characters without newlines, braces or @",
                ));
            }
        }
        let c = &self.cluster;
        for (key, value) in [
            ("cluster.forward_qos0_backlog", c.forward_qos0_backlog),
            ("cluster.forward_qos12_backlog", c.forward_qos12_backlog),
            ("cluster.forward_backlog_bytes", c.forward_backlog_bytes),
            ("cluster.inbox_backlog_entries", c.inbox_backlog_entries),
            (
                "cluster.session_store_max_queued",
                c.session_store_max_queued,
            ),
            (
                "cluster.session_store_max_changes",
                c.session_store_max_changes,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.cluster.redis_connect_timeout_secs == 0 {
            return Err(ConfigError::new(
                "cluster.redis_connect_timeout_secs",
                "must be at least 1",
            ));
        }
        let c = &self.cluster;
        if c.probe_rtt_ms == 0 || c.probe_rtt_ms >= c.probe_period_ms {
            return Err(ConfigError::new(
                "cluster.probe_rtt_ms",
                "must be above 0 and below cluster.probe_period_ms",
            ));
        }
        if c.suspect_to_down_ms == 0 {
            return Err(ConfigError::new(
                "cluster.suspect_to_down_ms",
                "must be at least 1",
            ));
        }
        if c.liveness_ttl_ms < 400 {
            return Err(ConfigError::new(
                "cluster.liveness_ttl_ms",
                "must be at least 400 (it is refreshed every quarter of it)",
            ));
        }
        if c.redis_wait_replicas > 0 && c.redis_wait_timeout_ms == 0 {
            return Err(ConfigError::new(
                "cluster.redis_wait_timeout_ms",
                "must be at least 1 when cluster.redis_wait_replicas is set (0 would wait forever)",
            ));
        }
        if c.session_grace_secs == 0 {
            return Err(ConfigError::new(
                "cluster.session_grace_secs",
                "must be at least 1 (session keys are refreshed every quarter of it)",
            ));
        }
        match (&c.redis_tls_cert, &c.redis_tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "cluster.redis_tls_key",
                    "required with cluster.redis_tls_cert (the client certificate's key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "cluster.redis_tls_cert",
                    "required with cluster.redis_tls_key",
                ))
            }
            _ => {}
        }
        if !self.allow_anonymous && self.password_file.is_none() {
            return Err(ConfigError::new(
                "allow_anonymous",
                "false without a password_file would refuse every client",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Every listener to bind, in the order the keys are documented (`listen`,
    /// `proxy_listen`, then TLS, WS and WSS, each plain then proxied).
    pub fn listeners(&self) -> impl Iterator<Item = ListenerSpec> + '_ {
        [
            (&self.listen, Transport::Tcp, false),
            (&self.proxy_listen, Transport::Tcp, true),
            (&self.tls_listen, Transport::Tls, false),
            (&self.tls_proxy_listen, Transport::Tls, true),
            (&self.ws_listen, Transport::Ws, false),
            (&self.ws_proxy_listen, Transport::Ws, true),
            (&self.wss_listen, Transport::Wss, false),
            (&self.wss_proxy_listen, Transport::Wss, true),
        ]
        .into_iter()
        .flat_map(|(addrs, transport, proxied)| {
            addrs.iter().map(move |&addr| ListenerSpec {
                addr,
                transport,
                proxied,
            })
        })
    }

    /// The TLS files and client-certificate policy, when `tls_cert` is set.
    pub fn server_tls(&self) -> Option<tls::ServerTls> {
        Some(tls::ServerTls {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            require_certificate: self.require_certificate,
            names: tls::server::SettingNames::KEYS,
        })
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let needs_tls = self.listeners().any(|l| l.transport.is_tls());
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(ConfigError::new("tls_key", "required with tls_cert")),
            (None, Some(_)) => return Err(ConfigError::new("tls_cert", "required with tls_key")),
            (None, None) if needs_tls => {
                return Err(ConfigError::new(
                    "tls_cert",
                    "required by tls_listen and wss_listen (with tls_key)",
                ))
            }
            _ => {}
        }
        if self.require_certificate && self.tls_client_ca.is_none() {
            return Err(ConfigError::new(
                "require_certificate",
                "needs tls_client_ca (the CAs client certificates are checked against)",
            ));
        }
        if self.use_identity_as_username && self.use_subject_as_username {
            return Err(ConfigError::new(
                "use_subject_as_username",
                "cannot be set together with use_identity_as_username",
            ));
        }
        for (key, set) in [
            ("use_identity_as_username", self.use_identity_as_username),
            ("use_subject_as_username", self.use_subject_as_username),
        ] {
            if set && !self.require_certificate {
                return Err(ConfigError::new(
                    key,
                    "needs require_certificate = true (every client then has a certificate to take the name from)",
                ));
            }
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::new("ws_path", "must start with /"));
        }
        Ok(())
    }
}

/// The dotted key whose value starts nearest before byte `pos` of a TOML document.
fn key_at(text: &str, pos: usize) -> String {
    let mut section = String::new();
    let mut key = String::new();
    for line in text[..pos.min(text.len())].lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            key = k.trim().to_string();
        }
    }
    // The error may sit on the line that holds the key itself.
    if let Some(line) = text[pos.min(text.len())..].lines().next() {
        if key.is_empty() {
            if let Some((k, _)) = line.split_once('=') {
                key = k.trim().to_string();
            }
        }
    }
    match (section.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local_only() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:1883".parse().unwrap()]);
        assert!(c.allow_anonymous);
    }

    #[test]
    fn error_names_the_key() {
        let e = Config::from_toml("[limits]\nmax_packet_size = \"big\"\n").unwrap_err();
        assert_eq!(e.key, "limits.max_packet_size", "{e}");
        let e = Config::from_toml("listen = [\"nope\"]\n").unwrap_err();
        assert_eq!(e.key, "listen", "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("[limits]\nmax_pakcet_size = 10\n").unwrap_err();
        assert!(e.to_string().contains("max_pakcet_size"), "{e}");
    }

    #[test]
    fn tls_settings_are_checked() {
        let mut c = Config {
            tls_listen: vec!["127.0.0.1:8883".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "tls_cert");
        c.tls_cert = Some("c.pem".into());
        assert_eq!(c.validate().unwrap_err().key, "tls_key");
        c.tls_key = Some("k.pem".into());
        c.validate().unwrap();
        c.use_identity_as_username = true;
        assert_eq!(c.validate().unwrap_err().key, "use_identity_as_username");
        c.require_certificate = true;
        assert_eq!(c.validate().unwrap_err().key, "require_certificate");
        c.tls_client_ca = Some("ca.pem".into());
        c.validate().unwrap();
        c.use_subject_as_username = true;
        assert_eq!(c.validate().unwrap_err().key, "use_subject_as_username");
        let c = Config {
            ws_listen: vec!["127.0.0.1:8080".parse().unwrap()],
            ws_path: "mqtt".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "ws_path");
    }

    #[test]
    fn listeners_come_in_documented_order() {
        let c = Config::from_toml(
            "listen = []\nwss_listen = [\"127.0.0.1:3\"]\ntls_proxy_listen = [\"127.0.0.1:2\"]\nws_listen = [\"127.0.0.1:1\"]\ntls_cert = \"c\"\ntls_key = \"k\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let l: Vec<_> = c
            .listeners()
            .map(|l| (l.addr.port(), l.transport, l.proxied))
            .collect();
        assert_eq!(
            l,
            vec![
                (2, Transport::Tls, true),
                (1, Transport::Ws, false),
                (3, Transport::Wss, false)
            ]
        );
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = Config::default();
        c.limits.receive_maximum = 0;
        assert_eq!(c.validate().unwrap_err().key, "limits.receive_maximum");
    }

    #[test]
    fn server_keep_alive_may_not_exceed_the_cap() {
        let mut c = Config::default();
        c.limits.max_keep_alive_secs = 30;
        c.limits.server_keep_alive_secs = 30;
        c.validate().unwrap();
        c.limits.server_keep_alive_secs = 31;
        assert_eq!(
            c.validate().unwrap_err().key,
            "limits.server_keep_alive_secs"
        );
    }

    #[test]
    fn bounds_parse_and_are_checked() {
        let c = Config::from_toml(
            "redis = \"redis://127.0.0.1:6379\"\nnode_id = \"n1\"\n[limits]\nmax_publish_rate = 5\nmax_subscriptions = 0\n[cluster]\nforward_qos0_backlog = 7\ninbox_backlog_entries = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.max_publish_rate, 5);
        assert_eq!(c.limits.max_subscriptions, 0, "0 = unlimited");
        let f = c.cluster_settings().unwrap().forward;
        assert_eq!((f.qos0_messages, f.inbox_entries), (7, 3));
        assert_eq!(f.qos12_messages, 10_000);
        let mut bad = c;
        bad.cluster.forward_backlog_bytes = 0;
        assert_eq!(
            bad.validate().unwrap_err().key,
            "cluster.forward_backlog_bytes"
        );
    }

    #[test]
    fn failure_detection_settings_are_checked_and_passed_on() {
        let c = Config::from_toml(
            "redis = \"redis://127.0.0.1:6379\"\nnode_id = \"n1\"\n[cluster]\nprobe_period_ms = 1000\nsuspect_to_down_ms = 4000\nliveness_ttl_ms = 5000\n",
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.cluster_settings().unwrap();
        assert_eq!(s.probe_period, std::time::Duration::from_secs(1));
        assert_eq!(s.suspect_to_down, std::time::Duration::from_secs(4));
        assert_eq!(s.liveness_ttl, std::time::Duration::from_secs(5));
        let mut bad = c.clone();
        bad.cluster.probe_rtt_ms = 1000;
        assert_eq!(bad.validate().unwrap_err().key, "cluster.probe_rtt_ms");
        let mut bad = c;
        bad.cluster.liveness_ttl_ms = 100;
        assert_eq!(bad.validate().unwrap_err().key, "cluster.liveness_ttl_ms");
    }
}
