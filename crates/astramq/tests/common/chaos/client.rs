//! A minimal reconnecting MQTT client over the raw codec: one load publisher or
//! subscriber, following the specification on both ends (see the harness's map for
//! why not rumqttc).

use super::*;

/// One connection: a socket and a buffer of undecoded bytes.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    v: Version,
}

enum ConnError {
    Closed,
    Decode(String),
}

impl Conn {
    /// TCP connect, CONNECT, CONNACK (any code), all within `T`.
    async fn open(addr: SocketAddr, c: &Connect) -> Option<(Conn, Connack)> {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            v: c.version,
        };
        conn.send(&c.encode()).await.ok()?;
        match tokio::time::timeout(T, conn.read()).await {
            Ok(Ok(Packet::Connack(ca))) => Some((conn, ca)),
            _ => None,
        }
    }

    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await
    }

    /// The next packet; cancel-safe (bytes already read stay in `buf`).
    async fn read(&mut self) -> Result<Packet, ConnError> {
        loop {
            if let Some((first, hdr, len)) = frame_header(&self.buf) {
                if self.buf.len() >= hdr + len {
                    let body = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return decode(self.v, first, &body).map_err(|e| ConnError::Decode(e.0));
                }
            }
            self.buf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ConnError::Closed),
                Ok(_) => {}
            }
        }
    }
}

/// What a load client does.
#[derive(Clone, Debug)]
pub(super) enum Role {
    /// Subscribes (persistent session) to `filter` at `qos`.
    Sub { index: usize, filter: String },
    /// Publishes `index:seq` to `topic` every `period`.
    Pub {
        index: usize,
        topic: String,
        period: Duration,
    },
}

/// Commands to every load client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Ctl {
    Run,
    /// Publishers take no new sequence numbers; unacknowledged ones are still resent.
    StopPublishing,
    /// Every client closes its connection and ends.
    Stop,
}

/// An unacknowledged outgoing message.
#[derive(Clone, Debug)]
enum Outgoing {
    /// PUBLISH sent, PUBACK / PUBREC awaited.
    Publish(u64),
    /// PUBREC received, PUBREL sent, PUBCOMP awaited (QoS 2).
    Release(u64),
}

pub(super) struct Client {
    id: String,
    v: Version,
    qos: u8,
    role: Role,
    addr: SocketAddr,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Ctl>,
    // Publisher state, kept across connections.
    next_seq: u64,
    next_pid: u16,
    outgoing: BTreeMap<u16, Outgoing>,
    // Subscriber state: inbound QoS 2 packet ids awaiting PUBREL.
    awaiting_rel: HashSet<u16>,
    connected_before: bool,
}

/// At most this many unacknowledged messages per publisher (a tick with a full window
/// takes no sequence number).
const WINDOW: usize = 32;

impl Client {
    /// A client that has not connected yet: no sequence numbers taken, nothing
    /// outstanding.
    pub(super) fn new(
        id: String,
        v: Version,
        qos: u8,
        role: Role,
        addr: SocketAddr,
        shared: Arc<Shared>,
        ctl: watch::Receiver<Ctl>,
    ) -> Client {
        Client {
            id,
            v,
            qos,
            role,
            addr,
            shared,
            ctl,
            next_seq: 0,
            next_pid: 0,
            outgoing: BTreeMap::new(),
            awaiting_rel: HashSet::new(),
            connected_before: false,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            if *self.ctl.borrow() == Ctl::Stop {
                return;
            }
            let connect =
                Connect::persistent(self.v, &self.id, false, EXPIRY).keep_alive(KEEP_ALIVE);
            let Some((mut conn, ack)) = Conn::open(self.addr, &connect).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if ack.code != 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if self
                .session_start(&mut conn, ack.session_present)
                .await
                .is_ok()
            {
                self.session(&mut conn).await;
            }
            self.record_end();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn record_end(&self) {
        let role = self.role.clone();
        self.shared.update(|s| {
            let connects = match role {
                Role::Sub { index, .. } => &mut s.subs[index].connects,
                Role::Pub { index, .. } => &mut s.pubs[index].connects,
            };
            if let Some(c) = connects.last_mut() {
                c.ended.get_or_insert_with(Instant::now);
            }
        });
    }

    fn record_connect(&mut self, session_present: bool) {
        let lost = self.connected_before && !session_present;
        let ev = ConnEvent {
            at: Instant::now(),
            session_present,
            first_publish: None,
            ended: None,
        };
        let role = self.role.clone();
        self.shared.update(|s| match role {
            Role::Sub { index, .. } => {
                let st = &mut s.subs[index];
                st.connects.push(ev);
                st.sessions_lost += u32::from(lost);
            }
            Role::Pub { index, .. } => {
                let st = &mut s.pubs[index];
                st.connects.push(ev);
                st.sessions_lost += u32::from(lost);
            }
        });
        self.connected_before = true;
    }

    /// After CONNACK: re-subscribe when the session is new, resend what is
    /// unacknowledged ([MQTT-4.4.0-1]).
    async fn session_start(&mut self, conn: &mut Conn, present: bool) -> std::io::Result<()> {
        self.record_connect(present);
        if !present {
            // The server has no state for us: no inbound QoS 2 flow is pending.
            self.awaiting_rel.clear();
        }
        match &self.role {
            Role::Sub { filter, .. } => {
                if !present {
                    let sub = encode_subscribe(
                        self.v,
                        1,
                        &Props::new(),
                        &[(filter.as_str(), SubOpts::qos(self.qos))],
                    );
                    conn.send(&sub).await?;
                }
            }
            Role::Pub { topic, .. } => {
                let topic = topic.clone();
                let pending: Vec<(u16, Outgoing)> =
                    self.outgoing.iter().map(|(k, o)| (*k, o.clone())).collect();
                for (pid, o) in pending {
                    match o {
                        Outgoing::Publish(seq) => {
                            let mut p = self.publish_packet(&topic, seq, pid);
                            // DUP only where the server may have seen this packet id.
                            p.dup = present;
                            conn.send(&p.encode(self.v)).await?;
                        }
                        Outgoing::Release(_) => {
                            conn.send(&encode_ack(PUBREL, pid, 0, self.v)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn publish_packet(&self, topic: &str, seq: u64, pid: u16) -> Publish {
        let Role::Pub { index, .. } = self.role else {
            unreachable!()
        };
        Publish::new(topic, format!("{index}:{seq}").as_bytes(), self.qos).pid(pid)
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.outgoing.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// One connection's life; returns when it ends.
    async fn session(&mut self, conn: &mut Conn) {
        let period = match &self.role {
            Role::Pub { period, .. } => *period,
            Role::Sub { .. } => Duration::from_secs(3600),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ka = Duration::from_secs(u64::from(KEEP_ALIVE));
        let mut ping = tokio::time::interval(ka / 3);
        ping.tick().await;
        let mut last_in = Instant::now();
        loop {
            let ctl = *self.ctl.borrow();
            if ctl == Ctl::Stop {
                let _ = conn
                    .send(&encode_disconnect(self.v, 0, &Props::new()))
                    .await;
                return;
            }
            tokio::select! {
                p = conn.read() => {
                    last_in = Instant::now();
                    match p {
                        Ok(p) => {
                            if self.incoming(conn, p).await.is_err() {
                                return;
                            }
                        }
                        Err(ConnError::Closed) => return,
                        Err(ConnError::Decode(e)) => {
                            eprintln!("{}: undecodable packet from the server: {e}", self.id);
                            return;
                        }
                    }
                }
                _ = tick.tick(), if ctl == Ctl::Run && matches!(self.role, Role::Pub { .. }) => {
                    if self.outgoing.len() < WINDOW && self.publish_next(conn).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if last_in.elapsed() > ka {
                        // Silent for a whole keep-alive: the server is gone.
                        return;
                    }
                    if conn.send(&encode_pingreq()).await.is_err() {
                        return;
                    }
                }
                _ = self.ctl.changed() => {}
            }
        }
    }

    async fn publish_next(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        let Role::Pub { index, topic, .. } = self.role.clone() else {
            unreachable!()
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let pid = self.alloc_pid();
        self.outgoing.insert(pid, Outgoing::Publish(seq));
        let n = self.outgoing.len();
        self.shared.update(|s| {
            s.pubs[index].sent += 1;
            s.pubs[index].outstanding = n;
        });
        conn.send(&self.publish_packet(&topic, seq, pid).encode(self.v))
            .await
    }

    fn pub_index(&self) -> usize {
        match self.role {
            Role::Pub { index, .. } | Role::Sub { index, .. } => index,
        }
    }

    async fn incoming(&mut self, conn: &mut Conn, p: Packet) -> std::io::Result<()> {
        match p {
            Packet::Publish(m) => {
                let Role::Sub { index, .. } = self.role else {
                    panic!("{}: a publisher received {m:?}", self.id);
                };
                // Handed to the application on arrival ("method B"), before the
                // acknowledgement is written: a message that arrived is counted even if
                // the connection fails before its PUBACK/PUBREC leaves.
                let deliver = match m.qos {
                    // [MQTT-4.3.3-9]/[MQTT-4.3.3-2]: a resend of a packet id still
                    // awaiting PUBREL is acknowledged, not delivered again.
                    2 => self.awaiting_rel.insert(m.pid),
                    _ => true,
                };
                if deliver {
                    let key = parse_payload(&m.payload)
                        .unwrap_or_else(|| panic!("{}: foreign payload {m:?}", self.id));
                    self.shared.update(|s| {
                        let st = &mut s.subs[index];
                        *st.received.entry(key).or_insert(0) += 1;
                        let conn_no = st.connects.len();
                        st.deliveries
                            .entry(key)
                            .or_default()
                            .push((conn_no, m.pid, m.dup));
                        if let Some(c) = st.connects.last_mut() {
                            c.first_publish.get_or_insert_with(Instant::now);
                        }
                    });
                }
                match m.qos {
                    1 => conn.send(&encode_ack(PUBACK, m.pid, 0, self.v)).await?,
                    2 => conn.send(&encode_ack(PUBREC, m.pid, 0, self.v)).await?,
                    _ => {}
                }
            }
            Packet::Pubrel(a) => {
                self.awaiting_rel.remove(&a.pid);
                conn.send(&encode_ack(PUBCOMP, a.pid, 0, self.v)).await?;
            }
            Packet::Puback(a) => {
                if let Some(Outgoing::Publish(seq)) = self.outgoing.get(&a.pid).cloned() {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, a.reason < 0x80);
                }
            }
            Packet::Pubrec(a) => match self.outgoing.get(&a.pid).cloned() {
                Some(Outgoing::Publish(seq)) if a.reason >= 0x80 => {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, false);
                }
                Some(Outgoing::Publish(seq)) => {
                    self.outgoing.insert(a.pid, Outgoing::Release(seq));
                    conn.send(&encode_ack(PUBREL, a.pid, 0, self.v)).await?;
                }
                // A PUBREC repeated for a message already released: release again.
                Some(Outgoing::Release(_)) => {
                    conn.send(&encode_ack(PUBREL, a.pid, 0, self.v)).await?;
                }
                None => {}
            },
            Packet::Pubcomp(a) => {
                // PUBCOMP ends the flow whatever its reason: ownership passed to the
                // server with PUBREC.
                if let Some(Outgoing::Release(seq)) = self.outgoing.get(&a.pid).cloned() {
                    self.outgoing.remove(&a.pid);
                    self.acked(seq, true);
                }
            }
            Packet::Suback(s) => {
                let Role::Sub { index, .. } = self.role else {
                    return Ok(());
                };
                assert_eq!(
                    s.codes,
                    vec![self.qos],
                    "{}: subscription not granted at QoS {}",
                    self.id,
                    self.qos
                );
                self.shared.update(|st| st.subs[index].ready = true);
            }
            Packet::Disconnect(reason, _) => {
                let i = self.pub_index();
                let sub = matches!(self.role, Role::Sub { .. });
                self.shared.update(|s| {
                    if sub {
                        s.subs[i].disconnects.push(reason)
                    } else {
                        s.pubs[i].disconnects.push(reason)
                    }
                });
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            _ => {}
        }
        Ok(())
    }

    fn acked(&mut self, seq: u64, ok: bool) {
        let index = self.pub_index();
        let n = self.outgoing.len();
        self.shared.update(|s| {
            let st = &mut s.pubs[index];
            if ok {
                st.acked.insert(seq);
                st.acked_at.insert(seq, Instant::now());
            } else {
                st.refused += 1;
            }
            st.outstanding = n;
        });
    }
}

fn parse_payload(b: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (p, q) = s.split_once(':')?;
    Some((p.parse().ok()?, q.parse().ok()?))
}
