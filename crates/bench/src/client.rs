//! The lean MQTT client: one tokio task and two buffers per connection.
//!
//! [`Conn::connect`] does TCP (from an optional source address), CONNECT and CONNACK;
//! [`Conn::subscribe`] one SUBSCRIBE/SUBACK. [`drive`] then runs the connection until
//! the run is over: a publisher stamps and writes PUBLISH packets (QoS 0, 1 or 2 with
//! PUBREC/PUBREL/PUBCOMP) within its rate and in-flight window; a subscriber
//! acknowledges, checks the stamp against what it expects, and records latency.
//!
//! The loop is single-task and non-blocking (`readable`/`try_read`,
//! `writable`/`try_write`), so a connection never stalls writing while the broker
//! waits for it to read; writes are batched: everything encoded since the last write
//! leaves in one `write` call.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use mqtt::{
    Connect, ConnectProperties, DecodeError, EncodeError, Packet, Protocol, PubResp, Publish, QoS,
    ReasonCode, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::layout::{ClientSpec, Expects, Role};
use crate::payload::{now_ns, Stamp};
use crate::seqset::SeqSet;
use crate::stats::{Local, Shared};

mod roles;
pub use roles::V311_QOS2_WINDOW;
use roles::{Publisher, Subscriber};

/// Largest packet the client accepts.
const MAX_PACKET: usize = 16 << 20;
/// A publisher stops encoding when this much waits to be written.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How far a rate-limited publisher may fall behind its schedule and still catch up.
const MAX_LAG: Duration = Duration::from_millis(100);

/// Why a connection failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// The broker sent bytes the codec rejects.
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a topic too long, ...).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// CONNACK refused the connection.
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
    /// The WebSocket upgrade or a frame failed (`--ws-path`).
    #[error("{0}")]
    Ws(#[from] crate::ws::WsError),
    /// SUBACK refused the subscription.
    #[error("subscription refused: {0:?}")]
    SubscribeRefused(ReasonCode),
    /// The broker sent DISCONNECT.
    #[error("disconnected by the broker: {0:?}")]
    Disconnected(ReasonCode),
    /// A packet that makes no sense at this point.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// Where the run is; the runner moves every task through these in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connections are being made; nobody publishes.
    Connecting,
    /// Publishers publish.
    Running,
    /// Publishers finish their in-flight messages and leave; subscribers keep reading.
    Draining,
    /// Everyone disconnects.
    Done,
}

/// Connection settings common to all clients of a run.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// MQTT version.
    pub protocol: Protocol,
    /// Clean Session / Clean Start.
    pub clean: bool,
    /// Session Expiry Interval (MQTT 5).
    pub session_expiry: Option<u32>,
    /// Keep Alive, seconds.
    pub keep_alive: u16,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size.
    pub payload: usize,
    /// Messages per second per publisher, `None` = unlimited.
    pub rate: Option<f64>,
    /// In-flight window per publisher.
    pub inflight: u16,
    /// TLS over every connection, when set (`--tls-ca`).
    pub tls: Option<crate::tls::TlsClient>,
    /// MQTT over WebSocket on this path, when set (`--ws-path`).
    pub ws_path: Option<String>,
}

/// An open MQTT connection with its buffers.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Its TLS session (`--tls-ca`); `rbuf` and `wbuf` hold MQTT bytes either way.
    tls: Option<Box<crate::tls::Tls>>,
    /// Its WebSocket framing (`--ws-path`), inside TLS when both are set.
    ws: Option<Box<crate::ws::Ws>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: Protocol,
    /// The broker's Receive Maximum (65,535 when it sent none).
    receive_maximum: u16,
    /// PINGREQs not answered yet.
    pings_out: u32,
}

impl Conn {
    /// Opens TCP to `spec.host` (from `spec.source` when given) and completes
    /// CONNECT/CONNACK.
    pub async fn connect(spec: &ClientSpec, opts: &ClientOptions) -> Result<Conn, ClientError> {
        let socket = match spec.host {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = spec.source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(spec.host).await?;
        stream.set_nodelay(true)?;
        let tls = match &opts.tls {
            Some(t) => {
                let mut session = t.session()?;
                session.handshake(&stream).await?;
                Some(Box::new(session))
            }
            None => None,
        };
        let mut conn = Conn {
            stream,
            tls,
            ws: None,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            protocol: opts.protocol,
            receive_maximum: u16::MAX,
            pings_out: 0,
        };
        if let Some(path) = &opts.ws_path {
            conn.ws = Some(Box::new(crate::ws::Ws::start(&spec.host.to_string(), path)));
            conn.flush().await?;
            while !conn.ws.as_mut().expect("just set").accepted()? {
                conn.stream.readable().await?;
                conn.read_transport(4096)?;
            }
            if let Some(ws) = conn.ws.as_mut() {
                ws.decode(&mut conn.rbuf)?;
            }
        }
        let connect = Connect {
            protocol: opts.protocol,
            clean_start: opts.clean,
            keep_alive: opts.keep_alive,
            client_id: spec.client_id.clone(),
            properties: ConnectProperties {
                session_expiry_interval: opts.session_expiry,
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        conn.send(&Packet::Connect(Box::new(connect))).await?;
        match conn.recv().await? {
            Packet::ConnAck(a) if a.code.is_error() => Err(ClientError::Refused(a.code)),
            Packet::ConnAck(a) => {
                conn.receive_maximum = a.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(conn)
            }
            other => Err(ClientError::Unexpected(other.name())),
        }
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.to_string(),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            ..Subscribe::default()
        };
        self.send(&Packet::Subscribe(sub)).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(a) if a.packet_id == 1 => {
                    return match a.reasons.first() {
                        Some(r) if !r.is_error() => Ok(()),
                        Some(r) => Err(ClientError::SubscribeRefused(*r)),
                        None => Err(ClientError::Unexpected("empty SUBACK")),
                    };
                }
                // Messages of an earlier session may arrive first; they are not ours.
                Packet::Publish(_) | Packet::PingResp => {}
                other => return Err(ClientError::Unexpected(other.name())),
            }
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        mqtt::encode(packet, self.protocol, &mut self.wbuf)?;
        self.flush().await
    }

    /// Writes everything pending (MQTT bytes, WebSocket frames, TLS records).
    async fn flush(&mut self) -> Result<(), ClientError> {
        loop {
            self.write_some()?;
            if !self.writing() {
                return Ok(());
            }
            self.stream.writable().await?;
        }
    }

    async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = mqtt::decode(&mut self.rbuf, Some(self.protocol), MAX_PACKET)? {
                return Ok(p);
            }
            self.stream.readable().await?;
            self.read_some(4096)?;
        }
    }

    /// Whether anything waits to be written (MQTT bytes, WebSocket frames, TLS
    /// records).
    fn writing(&self) -> bool {
        !self.wbuf.is_empty()
            || self.ws.as_ref().is_some_and(|w| !w.out.is_empty())
            || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// One non-blocking read; `Ok(false)` when nothing was there after all.
    fn read_some(&mut self, chunk: usize) -> Result<bool, ClientError> {
        let got = self.read_transport(chunk)?;
        if let Some(ws) = self.ws.as_mut() {
            ws.decode(&mut self.rbuf)?;
        }
        Ok(got)
    }

    /// Reads what the socket has into the MQTT buffer, or the WebSocket's frame
    /// buffer, through TLS when there is TLS.
    fn read_transport(&mut self, chunk: usize) -> Result<bool, ClientError> {
        let into = match self.ws.as_mut() {
            Some(ws) => &mut ws.raw,
            None => &mut self.rbuf,
        };
        if let Some(tls) = self.tls.as_mut() {
            return match tls.read(&self.stream, into) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ClientError::Closed),
                r => Ok(r?),
            };
        }
        into.reserve(chunk);
        match self.stream.try_read_buf(into) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One non-blocking write of whatever is pending (framed first with WebSocket).
    fn write_some(&mut self) -> Result<(), ClientError> {
        let from = match self.ws.as_mut() {
            Some(ws) => {
                ws.encode(&mut self.wbuf);
                &mut ws.out
            }
            None => &mut self.wbuf,
        };
        if let Some(tls) = self.tls.as_mut() {
            return Ok(tls.write(&self.stream, from)?);
        }
        if from.is_empty() {
            return Ok(());
        }
        match self.stream.try_write(from) {
            Ok(n) => {
                from.advance(n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        mqtt::encode(packet, self.protocol, &mut self.wbuf)?;
        if matches!(packet, Packet::PingReq) {
            self.pings_out += 1;
        }
        Ok(())
    }

    /// Sends DISCONNECT after what is pending, giving up after a short while.
    async fn close(mut self) {
        let d = Packet::Disconnect(Box::default());
        if self.queue(&d).is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.flush()).await;
        }
    }
}

/// What a connection leaves for the final accounting.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A publisher's index and the sequences the broker acknowledged.
    pub publisher: Option<(u32, SeqSet)>,
    /// A subscriber's expectations and receptions.
    pub subscriber: Option<SubOutcome>,
}

/// A subscriber's view at the end of the run.
#[derive(Debug)]
pub struct SubOutcome {
    /// Whom it had to hear from.
    pub expects: Expects,
    /// Received sequences per publisher index.
    pub received: HashMap<u32, SeqSet>,
}

/// Runs a connected client in `role` until the run reaches [`Phase::Done`] (or, for a
/// publisher, until its in-flight messages are settled after [`Phase::Running`]).
pub async fn drive(
    mut conn: Conn,
    role: Role,
    opts: Arc<ClientOptions>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Outcome {
    let mut publisher = match &role {
        Role::Publisher { index, topic } => Some(Publisher::new(*index, topic, &opts, &conn)),
        _ => None,
    };
    let mut subscriber = match role {
        Role::Subscriber { expects, .. } => Some(Subscriber::new(expects)),
        _ => None,
    };
    let mut local = Local::default();
    let result = event_loop(
        &mut conn,
        &mut publisher,
        &mut subscriber,
        &opts,
        &shared,
        &mut local,
        phase,
    )
    .await;
    let pub_index = publisher.as_ref().map(|p| p.index);
    local.flush(&shared, pub_index, true);
    match result {
        Ok(()) => conn.close().await,
        Err(e) => {
            shared
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.record_error(format!("connection lost: {e}"));
        }
    }
    Outcome {
        publisher: publisher.map(|p| (p.index, p.acked)),
        subscriber: subscriber.map(|s| SubOutcome {
            expects: s.expects,
            received: s.received,
        }),
    }
}

async fn event_loop(
    conn: &mut Conn,
    publisher: &mut Option<Publisher>,
    subscriber: &mut Option<Subscriber>,
    opts: &ClientOptions,
    shared: &Shared,
    local: &mut Local,
    mut phase: watch::Receiver<Phase>,
) -> Result<(), ClientError> {
    let keep_alive = Duration::from_secs(opts.keep_alive.max(1).into());
    let pinging = opts.keep_alive > 0;
    let mut ping = pin!(tokio::time::sleep(keep_alive));
    let mut wake = pin!(tokio::time::sleep(Duration::ZERO));
    let read_chunk = match (&publisher, &subscriber) {
        (_, Some(_)) => 64 * 1024,
        (Some(_), None) => 4096,
        (None, None) => 256,
    };
    let pub_index = publisher.as_ref().map(|p| p.index);
    let mut current = *phase.borrow_and_update();
    let mut barrier_sent = false;
    loop {
        if current == Phase::Running {
            if let Some(p) = publisher.as_mut() {
                p.fill(&mut conn.wbuf, Instant::now(), shared.run, local)?;
            }
        }
        local.flush(shared, pub_index, false);
        match (current, publisher.as_ref()) {
            (Phase::Done, _) => return Ok(()),
            (Phase::Draining, Some(p)) if p.settled() && !conn.writing() => {
                // A PINGREQ after the last PUBLISH: its answer means the broker has read
                // them all (what waited in socket buffers included).
                if !barrier_sent {
                    conn.queue(&Packet::PingReq)?;
                    barrier_sent = true;
                } else if conn.pings_out == 0 {
                    shared.publisher_drained(Instant::now().into_std());
                    return Ok(());
                }
            }
            _ => {}
        }
        let next_send = match (current, publisher.as_ref()) {
            (Phase::Running, Some(p)) => p.wake_at(conn.wbuf.len()),
            _ => None,
        };
        if let Some(at) = next_send {
            if wake.deadline() != at {
                wake.as_mut().reset(at);
            }
        }
        let writing = conn.writing();
        tokio::select! {
            biased;
            r = conn.stream.readable() => {
                r?;
                if conn.read_some(read_chunk)? {
                    while let Some(packet) =
                        mqtt::decode(&mut conn.rbuf, Some(conn.protocol), MAX_PACKET)?
                    {
                        handle(conn, packet, publisher, subscriber, shared.run, local)?;
                    }
                }
            }
            r = conn.stream.writable(), if writing => {
                r?;
                conn.write_some()?;
            }
            () = &mut wake, if next_send.is_some() => {}
            () = &mut ping, if pinging => {
                conn.queue(&Packet::PingReq)?;
                ping.as_mut().reset(Instant::now() + keep_alive);
            }
            r = phase.changed() => {
                current = if r.is_ok() { *phase.borrow_and_update() } else { Phase::Done };
            }
        }
    }
}

/// Reacts to one packet from the broker.
fn handle(
    conn: &mut Conn,
    packet: Packet,
    publisher: &mut Option<Publisher>,
    subscriber: &mut Option<Subscriber>,
    run: u32,
    local: &mut Local,
) -> Result<(), ClientError> {
    let resp = |packet_id| PubResp {
        packet_id,
        ..PubResp::default()
    };
    match packet {
        Packet::Publish(p) => {
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => conn.queue(&Packet::PubAck(resp(id)))?,
                (QoS::ExactlyOnce, Some(id)) => conn.queue(&Packet::PubRec(resp(id)))?,
                _ => {}
            }
            match subscriber {
                Some(s) => s.receive(&p.payload, run, local),
                None => local.unexpected += 1,
            }
        }
        Packet::PubRel(r) => conn.queue(&Packet::PubComp(resp(r.packet_id)))?,
        Packet::PubAck(r) | Packet::PubComp(r) => {
            if let Some(p) = publisher {
                p.settle(r.packet_id, r.reason, local);
            }
        }
        Packet::PubRec(r) => {
            if let Some(p) = publisher {
                if p.received(r.packet_id, r.reason, local) {
                    conn.queue(&Packet::PubRel(resp(r.packet_id)))?;
                }
            }
        }
        Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
        Packet::PingResp => conn.pings_out = conn.pings_out.saturating_sub(1),
        Packet::SubAck(_) | Packet::UnsubAck(_) => {}
        other => return Err(ClientError::Unexpected(other.name())),
    }
    Ok(())
}
