//! The CONNECT handshake: from the first byte to CONNACK and the resend of a resumed
//! session's in-flight messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt::codec::Delivery as Wire;
use mqtt::topic::valid_topic_name;
use mqtt::{
    ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Protocol, PubResp, ReasonCode,
};
use tokio::io::AsyncWrite;

use crate::connection::ReadSide;
use tokio::sync::watch;

use super::Client;
use crate::broker::Broker;
use crate::cluster::ClaimRequest;
use crate::connection::{Connection, ReadError};
use crate::mailbox::Mailbox;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::registry::{ConnLink, ExitGuard, Owner};
use crate::session::{Outbound, PendingWill, Session};

/// The largest Maximum Packet Size value (the remaining-length limit plus the header).
const PROTOCOL_MAX_PACKET: u32 = 268_435_460;

/// The keep alive in force for a client that asked for `asked` seconds, and the
/// Server Keep Alive to send a v5 client when it differs [MQTT-3.2.2-21/22].
/// `limits.server_keep_alive_secs` imposes one value on everyone; otherwise
/// `limits.max_keep_alive_secs` caps what a client may ask for, 0 (no keep alive)
/// included. A 3.1.1 client cannot be told: the value is applied all the same
/// (a server may close an inactive connection at any time, 3.1.1 §3.1.2.10).
fn keep_alive(limits: &crate::config::Limits, asked: u16) -> (u16, Option<u16>) {
    let cap = limits.max_keep_alive_secs;
    if limits.server_keep_alive_secs > 0 {
        (
            limits.server_keep_alive_secs,
            Some(limits.server_keep_alive_secs),
        )
    } else if cap > 0 && (asked == 0 || asked > cap) {
        (cap, Some(cap))
    } else {
        (asked, None)
    }
}

/// Reads and answers CONNECT. `None` when the connection was refused or closed.
/// `cert_user`: the user name the client's TLS certificate gives
/// (`use_identity_as_username`, `use_subject_as_username`), which replaces the
/// CONNECT's and is not checked against the password file.
pub(super) async fn handshake<R, W>(
    broker: Arc<Broker>,
    mut conn: Connection<R, W>,
    peer: String,
    cert_user: Option<Box<str>>,
    listener: Arc<ListenerMetrics>,
    shutdown: watch::Receiver<bool>,
) -> Option<Box<Client<R, W>>>
where
    R: ReadSide,
    W: AsyncWrite + Unpin,
{
    let timeout = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    let connect = match tokio::time::timeout(timeout, conn.rx.read_packet(None)).await {
        Err(_) => {
            tracing::debug!(%peer, "closing: no CONNECT within limits.connect_timeout_secs");
            return None;
        }
        Ok(Err(ReadError::Closed)) => return None,
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocol(level)))) => {
            // [MQTT-3.1.2-2] Unsupported level: CONNACK 0x01 (3.1.1) / 0x84 (5.0), close.
            let protocol = if level > 5 {
                Protocol::V5
            } else {
                Protocol::V311
            };
            tracing::debug!(%peer, level, "refusing unsupported protocol level");
            refuse(
                &mut conn,
                protocol,
                ReasonCode::UnsupportedProtocolVersion,
                &listener,
            )
            .await;
            return None;
        }
        Ok(Err(ReadError::Decode(e))) => {
            tracing::debug!(%peer, error = %e, "closing: malformed CONNECT");
            Metrics::add(&broker.metrics.protocol_errors, 1);
            return None;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            // [MQTT-3.1.0-1] The first packet must be CONNECT.
            tracing::debug!(%peer, packet = other.name(), "closing: first packet is not CONNECT");
            Metrics::add(&broker.metrics.protocol_errors, 1);
            return None;
        }
    };
    let mut connect = *connect;
    let authenticated = cert_user.is_some();
    if let Some(user) = cert_user {
        connect.username = Some(user.into());
    }
    accept(
        broker,
        conn,
        peer,
        &listener,
        shutdown,
        connect,
        authenticated,
    )
    .await
}

/// Sends a refusing CONNACK, counts it for its listener, and closes.
async fn refuse<R, W>(
    conn: &mut Connection<R, W>,
    protocol: Protocol,
    code: ReasonCode,
    listener: &ListenerMetrics,
) where
    R: ReadSide,
    W: AsyncWrite + Unpin,
{
    let ack = ConnAck {
        session_present: false,
        code,
        properties: ConnAckProperties::default(),
    };
    listener.connack_refused(code);
    conn.tx.queue(&Packet::ConnAck(Box::new(ack)), protocol);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.tx.close()).await;
}

async fn accept<R, W>(
    broker: Arc<Broker>,
    mut conn: Connection<R, W>,
    peer: String,
    listener: &ListenerMetrics,
    shutdown: watch::Receiver<bool>,
    c: Connect,
    authenticated: bool,
) -> Option<Box<Client<R, W>>>
where
    R: ReadSide,
    W: AsyncWrite + Unpin,
{
    let protocol = c.protocol;
    let limits = &broker.config.limits;

    // Enhanced authentication is not supported [MQTT-4.12.0-1].
    if c.properties.authentication_method.is_some() {
        refuse(
            &mut conn,
            protocol,
            ReasonCode::BadAuthenticationMethod,
            listener,
        )
        .await;
        return None;
    }

    // Client identifier: assign one to an empty id where the protocol allows it.
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        // [MQTT-3.1.3-8] (3.1.1) An empty id needs Clean Session; 3.1 needs an id.
        if protocol == Protocol::V31 || (protocol == Protocol::V311 && !c.clean_start) {
            refuse(
                &mut conn,
                protocol,
                ReasonCode::ClientIdentifierNotValid,
                listener,
            )
            .await;
            return None;
        }
        let id = format!("astramq-{:016x}", rand::random::<u64>());
        if protocol.is_v5() {
            // [MQTT-3.2.2-16] Tell a v5 client the id it was given.
            assigned = Some(id.clone());
        }
        id.into()
    } else {
        c.client_id.as_str().into()
    };

    // A user name from a verified client certificate needs no password (as in
    // Mosquitto); the ACL still applies to it.
    let decision = if authenticated {
        Ok(())
    } else {
        broker
            .auth
            .connect(c.username.as_deref(), c.password.as_deref())
    };
    if let Err(code) = decision {
        tracing::info!(%peer, client_id = %client_id, username = ?c.username, ?code, "connection refused");
        refuse(&mut conn, protocol, code, listener).await;
        return None;
    }

    if broker.is_draining() {
        // Drained for maintenance: the client should connect elsewhere (v5 §4.11).
        tracing::debug!(%peer, client_id = %client_id, "connection refused: node draining");
        refuse(&mut conn, protocol, ReasonCode::UseAnotherServer, listener).await;
        return None;
    }

    if let Some(w) = &c.will {
        if !valid_topic_name(&w.topic) {
            refuse(&mut conn, protocol, ReasonCode::TopicNameInvalid, listener).await;
            return None;
        }
    }

    // Session Expiry: v5 says it; 3.1.1's Clean Session 0 means "never expires".
    let requested_expiry = if protocol.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = requested_expiry.min(limits.max_session_expiry_secs);

    // Claim the client id; a current owner is taken over [MQTT-3.1.4-3], first
    // cluster-wide (a connection on another node is told to go), then on this node.
    let will = c.will.map(|will| {
        Box::new(PendingWill {
            client_id: client_id.clone(),
            username: c.username.as_deref().map(Arc::from),
            will,
        })
    });
    let request = ClaimRequest {
        expiry_secs: expiry,
        clean_start: c.clean_start,
        will: will.as_deref(),
        username: c.username.as_deref(),
    };
    let (epoch, handed_over, spilled) = match broker.store().claim(&client_id, request).await {
        Ok(claim) => (claim.epoch, claim.session, claim.spilled),
        Err(e) => {
            if e.is_outage() {
                tracing::debug!(%peer, client_id = %client_id, error = %e, "connection refused: cannot claim the client id");
            } else {
                tracing::warn!(%peer, client_id = %client_id, error = %e, "connection refused: cannot claim the client id");
            }
            refuse(&mut conn, protocol, ReasonCode::ServerUnavailable, listener).await;
            return None;
        }
    };
    let conn_id = broker.registry.next_conn_id();
    let link = ConnLink::new();
    let claim = broker
        .registry
        .claim(
            &client_id,
            Owner {
                conn_id,
                link: link.clone(),
                epoch,
            },
        )
        .await;
    let Some(claim) = claim else {
        // Another node claimed this client id after us [MQTT-3.1.4-3]: it wins.
        refuse(&mut conn, protocol, ReasonCode::SessionTakenOver, listener).await;
        return None;
    };
    // Shutdown asks every registered connection to leave; one registered after
    // that asks itself (the flag is set before the registry is walked).
    if *shutdown.borrow() {
        link.ask_to_leave(ReasonCode::ServerShuttingDown);
    }

    // [MQTT-3.1.2-4] Clean Start discards any existing session; else it resumes.
    let (mut session, session_present) = match claim.previous {
        Some(prev) if !c.clean_start => (prev, true),
        prev => {
            if let Some(prev) = prev {
                broker.end_session(&prev);
            }
            let mailbox = Mailbox::new(broker.mailbox_limits());
            if broker.store().persists() && expiry > 0 {
                mailbox.set_stored(&client_id, epoch);
            }
            let mut session = Session::new(client_id.clone(), mailbox, expiry);
            // A session another node handed over resumes here [MQTT-3.2.2-2].
            let present = match handed_over {
                Some(snapshot) if !c.clean_start => {
                    broker.resume_session(&mut session, snapshot, c.username.as_deref());
                    true
                }
                _ => false,
            };
            (session, present)
        }
    };
    session.expiry_secs = expiry;
    if !spilled.is_empty() && !c.clean_start {
        session.queue_spilled(spilled);
    }
    if broker.store().persists() {
        // A persistent session with a store: its QoS 1/2 deliveries are stored before
        // they are queued, so that it survives this node (or this process).
        if expiry > 0 {
            session.mailbox.set_stored(&client_id, epoch);
        } else {
            session.mailbox.set_memory_only();
        }
    }
    session.mailbox.set_online(true);

    let (keep_alive_secs, server_keep_alive) = keep_alive(limits, c.keep_alive);

    let keep_alive = Duration::from_secs(u64::from(keep_alive_secs));
    let props = &c.properties;
    let client_receive_max = if protocol.is_v5() {
        props.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let mut ack_props = ConnAckProperties::default();
    if protocol.is_v5() {
        ack_props.assigned_client_identifier = assigned;
        if expiry != requested_expiry {
            ack_props.session_expiry_interval = Some(expiry);
        }
        if limits.receive_maximum < u16::MAX {
            ack_props.receive_maximum = Some(limits.receive_maximum);
        }
        if limits.max_packet_size < PROTOCOL_MAX_PACKET {
            ack_props.maximum_packet_size = Some(limits.max_packet_size);
        }
        if limits.topic_alias_maximum > 0 {
            ack_props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        }
        // [MQTT-3.2.2-21] The client must use the Server Keep Alive.
        ack_props.server_keep_alive = server_keep_alive;
    }
    conn.tx.queue(
        &Packet::ConnAck(Box::new(ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties: ack_props,
        })),
        protocol,
    );

    Metrics::add(&broker.metrics.clients_connected, 1);
    tracing::debug!(%peer, client_id = %client_id, ?protocol, session_present, "client connected");

    // Boxed: the connection's task holds a pointer, not the whole state, so its
    // future stays small (idle connections are mostly that future).
    let mut client = Box::new(Client {
        username: c.username.as_deref().map(Arc::from),
        broker: broker.clone(),
        conn,
        protocol,
        peer: peer.into(),
        conn_id,
        client_id,
        session,
        will,
        exit_guard: ExitGuard(link),
        keep_alive: (!keep_alive.is_zero()).then_some(keep_alive),
        last_packet: Instant::now(),
        send_window: usize::from(client_receive_max.min(limits.max_inflight)),
        max_out: props
            .maximum_packet_size
            .unwrap_or(PROTOCOL_MAX_PACKET)
            .min(PROTOCOL_MAX_PACKET) as usize,
        aliases: None,
        alias_out_max: props.topic_alias_maximum.unwrap_or(0),
        pending: VecDeque::new(),
        epoch,
        acks: VecDeque::new(),
        blocked: VecDeque::new(),
        blocked_until: Instant::now(),
        deferred: None,
        throttle: None,
    });
    client.arm_keep_alive();
    if session_present {
        client.resend_inflight();
    }
    Some(client)
}

impl<R: ReadSide, W: AsyncWrite + Unpin> Client<R, W> {
    /// Resends a resumed session's unacknowledged messages in their original order:
    /// PUBLISH with DUP set, PUBREL as is [MQTT-4.4.0-1, MQTT-3.3.1-1].
    fn resend_inflight(&mut self) {
        let protocol = self.protocol;
        for (id, out) in self.session.pending_outbound() {
            match out {
                Outbound::Published(d) => {
                    let wire = Wire {
                        qos: d.qos,
                        retain: d.retain,
                        dup: true,
                        packet_id: Some(id),
                        topic_alias: None,
                        send_topic: true,
                        subscription_ids: if protocol.is_v5() { &d.sub_ids } else { &[] },
                        message_expiry: d.msg.remaining_expiry_now(),
                    };
                    d.msg
                        .publish
                        .encode(protocol, &wire, &mut self.conn.tx.wbuf);
                }
                Outbound::Released(_) => {
                    let rel = PubResp {
                        packet_id: id,
                        ..Default::default()
                    };
                    self.conn.tx.queue(&Packet::PubRel(rel), protocol);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_alive;
    use crate::config::Limits;

    #[test]
    fn keep_alive_cap_and_server_keep_alive() {
        let mut l = Limits::default();
        assert_eq!(keep_alive(&l, 0), (0, None));
        assert_eq!(keep_alive(&l, 600), (600, None));
        l.max_keep_alive_secs = 60;
        assert_eq!(keep_alive(&l, 0), (60, Some(60)));
        assert_eq!(keep_alive(&l, 600), (60, Some(60)));
        assert_eq!(keep_alive(&l, 60), (60, None));
        assert_eq!(keep_alive(&l, 2), (2, None));
        l.server_keep_alive_secs = 30;
        assert_eq!(keep_alive(&l, 2), (30, Some(30)));
    }
}
