//! What a node is told ([`MembershipConfig`]) and what it advertises ([`NodeMeta`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::MembershipError;

/// Largest datagram we send or accept, envelope included. 1400 bytes stays under a
/// 1500-byte Ethernet MTU with IP/UDP headers to spare (RFC 8085 guidance), so
/// gossip is never fragmented.
pub(crate) const MAX_DATAGRAM: usize = 1400;

/// Longest accepted node id, in bytes. The id travels in every packet header
/// (twice: source and destination), so it is kept short.
pub(crate) const MAX_NODE_ID_LEN: usize = 128;

/// Largest encoded metadata record. Leaves room in a datagram for the foca header
/// and a few membership updates next to it.
pub(crate) const MAX_META_LEN: usize = 900;

/// What kind of member a node is. Consumers filter on it: the load balancer sends
/// clients only to [`Role::Broker`] members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A broker node that accepts MQTT clients.
    Broker,
    /// A load balancer: a gossip member that only watches the brokers.
    LoadBalancer,
}

/// What a node advertises to the rest of the cluster. Carried in versioned gossip
/// broadcasts, so any field may change at run time (see
/// [`MembershipHandle::set_connections`](super::MembershipHandle::set_connections)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Broker or load balancer.
    pub role: Role,
    /// Plain MQTT listener addresses (`--listen`): what clients connect to, and what
    /// a load balancer uses when the node has no PROXY listener.
    pub mqtt: Vec<SocketAddr>,
    /// Admin / health HTTP address, if the node serves one.
    pub admin: Option<SocketAddr>,
    /// Number of client connections the node currently holds.
    pub connections: u64,
    /// PROXY protocol v2 listener addresses (`--proxy-listen`): a connection there
    /// must start with a PROXY v2 header, so only load balancers use them. Last in
    /// the encoding, so a reader that predates it still decodes the fields above.
    pub proxy: Vec<SocketAddr>,
    /// TLS and WebSocket listeners (`tls_listen`, `ws_listen`, `wss_listen` and their
    /// PROXY variants), for a load balancer passing those transports through
    /// (`astramq lb --backend-transport`). Appended after `proxy` for the same reason.
    pub listeners: Vec<AdvertisedListener>,
}

/// The transport of an advertised listener other than plain MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenerKind {
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

/// A TLS or WebSocket listener a broker advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedListener {
    /// What it speaks.
    pub kind: ListenerKind,
    /// Where.
    pub addr: SocketAddr,
    /// Whether each connection must start with a PROXY protocol v2 header.
    pub proxy: bool,
}

impl NodeMeta {
    /// A broker with no listeners and no connections yet.
    pub fn broker() -> Self {
        Self {
            role: Role::Broker,
            mqtt: Vec::new(),
            admin: None,
            connections: 0,
            proxy: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// A load balancer member (no MQTT listeners of its own advertised).
    pub fn load_balancer() -> Self {
        Self {
            role: Role::LoadBalancer,
            ..Self::broker()
        }
    }
}

/// Configuration of one gossip member.
///
/// The timing fields are SWIM's knobs; see `docs/membership.md` for how they add
/// up to the detection time and what making them smaller costs.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's id, unique in the cluster (a restarted node reuses it).
    pub node_id: String,
    /// UDP address to bind for gossip. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address other members should use to reach us, when it differs from `listen`
    /// (binding `0.0.0.0`, NAT, containers). Defaults to the bound address.
    pub advertise: Option<SocketAddr>,
    /// Seed members' gossip addresses. One reachable seed is enough to discover the
    /// whole cluster. Our own address may appear here (it is skipped), so every node
    /// can share one seed list.
    pub join: Vec<SocketAddr>,
    /// Shared secret. When set, every datagram carries an HMAC-SHA256 tag and
    /// datagrams without a valid tag are dropped. All members must agree.
    pub cluster_key: Option<String>,
    /// How often this node probes one random member.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    /// Must be less than `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute the suspicion before it is
    /// declared down.
    pub suspect_to_down: Duration,
    /// How often pending updates are pushed to a few random members, on top of
    /// SWIM's piggybacking on probes. Bounds how fast metadata changes spread.
    pub gossip_period: Duration,
    /// While this node knows no other member, how often it re-announces itself to
    /// the seeds (seeds may start after us, or come back after a partition).
    pub join_retry: Duration,
    /// How often this node re-broadcasts its metadata even when unchanged, so that
    /// a member that missed an update (lost datagrams) converges.
    pub meta_refresh: Duration,
    /// What this node advertises.
    pub meta: NodeMeta,
}

impl MembershipConfig {
    /// Defaults tuned for a LAN: a killed node is declared down in about 1.5–2.5 s
    /// (≤ 3 s), see `docs/membership.md`.
    pub fn new(node_id: impl Into<String>, listen: SocketAddr, meta: NodeMeta) -> Self {
        Self {
            node_id: node_id.into(),
            listen,
            advertise: None,
            join: Vec::new(),
            cluster_key: None,
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down: Duration::from_millis(1000),
            gossip_period: Duration::from_millis(200),
            join_retry: Duration::from_millis(500),
            meta_refresh: Duration::from_secs(5),
            meta,
        }
    }

    /// A broker member on `127.0.0.1:0` with faster timers, for tests.
    pub fn for_test(node_id: &str) -> Self {
        Self {
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_millis(600),
            gossip_period: Duration::from_millis(100),
            join_retry: Duration::from_millis(200),
            meta_refresh: Duration::from_secs(1),
            ..Self::new(
                node_id,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                NodeMeta::broker(),
            )
        }
    }

    /// Checks what can be checked before binding anything.
    pub(crate) fn validate(&self) -> Result<(), MembershipError> {
        let bad = |why: String| Err(MembershipError::Config(why));
        if self.node_id.is_empty() || self.node_id.len() > MAX_NODE_ID_LEN {
            return bad(format!(
                "node_id must be 1..={MAX_NODE_ID_LEN} bytes, got {}",
                self.node_id.len()
            ));
        }
        for (name, value) in [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down", self.suspect_to_down),
            ("gossip_period", self.gossip_period),
            ("join_retry", self.join_retry),
            ("meta_refresh", self.meta_refresh),
        ] {
            if value.is_zero() {
                return bad(format!("{name} must not be zero"));
            }
        }
        if self.probe_rtt >= self.probe_period {
            return bad(format!(
                "probe_rtt ({:?}) must be less than probe_period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.cluster_key.as_deref() == Some("") {
            return bad("cluster_key must not be empty (leave it unset instead)".into());
        }
        if let Some(advertise) = self.advertise {
            if advertise.ip().is_unspecified() || advertise.port() == 0 {
                return bad(format!("advertise address {advertise} is not reachable"));
            }
        }
        Ok(())
    }

    /// The foca configuration these settings stand for.
    ///
    /// Starts from foca's LAN profile (memberlist's) and overrides the timers; the
    /// extensions it enables are the ones we want: gossip on a timer, telling a
    /// member it was declared down so it rejoins under a new generation, and
    /// periodic announces that heal partitions.
    pub(crate) fn foca_config(&self, max_payload: usize) -> foca::Config {
        let mut config = foca::Config::new_lan(std::num::NonZeroU32::new(8).expect("8 > 0"));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_packet_size = NonZeroUsize::new(max_payload).expect("payload room > 0");
        // Small clusters: every update is sent a handful of times more than
        // log10(n)*4 would suggest, because losing a Down or a metadata update costs
        // more than a few extra bytes.
        config.max_transmissions = NonZeroU8::new(6).expect("6 > 0");
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(3).expect("3 > 0"),
        });
        config
    }
}
