//! [`RawClient`]: a byte-level MQTT client over TCP or TLS, built on the raw codec.
//! Packets a helper is not waiting for are queued, not lost.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::common::{ABSENCE, T};

#[derive(Debug)]
pub enum ReadError {
    Timeout,
    Closed,
    Io(std::io::Error),
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a [`RawClient`] talks over: TCP, or TLS over TCP.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {
    /// The client's own address.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl RawStream for TcpStream {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
}

impl RawStream for tokio_rustls::client::TlsStream<TcpStream> {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }
}

/// A byte-level MQTT client. Packets that a helper is not waiting for are
/// queued and returned by later reads, so interleavings do not lose packets.
pub struct RawClient {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
    pub version: Version,
    pending: VecDeque<Packet>,
    /// Acknowledge incoming QoS 1/2 PUBLISH and PUBREL automatically in
    /// [`RawClient::recv_publish`] (on by default).
    pub auto_ack: bool,
    next_pid: u16,
    /// Total bytes of every packet received, with its type, for size checks.
    pub received_sizes: Vec<(u8, usize)>,
}

impl RawClient {
    pub async fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    /// Like [`RawClient::tcp`], with the socket's send buffer fixed at `bytes` (no
    /// autotuning): writes block soon after the server stops reading, instead of
    /// filling megabytes of kernel buffers.
    pub async fn tcp_small_send_buffer(addr: SocketAddr, bytes: u32) -> RawClient {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket.set_send_buffer_size(bytes).expect("SO_SNDBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        Self::over(stream)
    }

    /// A client over an already established stream (a TLS connection).
    pub fn over(stream: impl RawStream + 'static) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
            version: Version::V311,
            pending: VecDeque::new(),
            auto_ack: true,
            next_pid: 0,
            received_sizes: Vec::new(),
        }
    }

    /// Send CONNECT and return the CONNACK, whatever its code.
    pub async fn connect(addr: SocketAddr, c: Connect) -> (RawClient, Connack) {
        let mut cl = RawClient::tcp(addr).await;
        let ca = cl.handshake(c).await;
        (cl, ca)
    }

    /// Send CONNECT on this connection and return the CONNACK, whatever its code.
    pub async fn handshake(&mut self, c: Connect) -> Connack {
        self.version = c.version;
        self.send(&c.encode()).await;
        match self.read(T).await {
            Ok(Packet::Connack(ca)) => ca,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connect and assert CONNACK success.
    pub async fn connect_ok(addr: SocketAddr, c: Connect) -> RawClient {
        let id = c.client_id.clone();
        let (cl, ca) = Self::connect(addr, c).await;
        assert_eq!(ca.code, 0, "CONNACK for {id:?} refused: {ca:?}");
        cl
    }

    /// The client's own address (what a node should log as its `peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("write failed: {e}"));
    }

    /// Write, returning the error instead of panicking.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Write, ignoring errors (the server may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Read raw bytes (whatever arrives first) within `t`.
    pub async fn read_bytes(&mut self, t: Duration) -> Result<Vec<u8>, ReadError> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut chunk = vec![0u8; 65536];
        match tokio::time::timeout(t, self.stream.read(&mut chunk)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(n)) => Ok(chunk[..n].to_vec()),
            Ok(Err(e)) => Err(ReadError::Io(e)),
        }
    }

    /// Next packet (queued ones first) within `t`.
    pub async fn read(&mut self, t: Duration) -> Result<Packet, ReadError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        self.read_wire(t).await
    }

    /// The next whole packet already read from the socket, if any.
    fn take_buffered(&mut self) -> Option<Result<Packet, ReadError>> {
        let (first, hdr, len) = frame_header(&self.buf)?;
        if self.buf.len() < hdr + len {
            return None;
        }
        let body: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        self.received_sizes.push((first >> 4, hdr + len));
        Some(decode(self.version, first, &body).map_err(ReadError::Decode))
    }

    async fn read_wire(&mut self, t: Duration) -> Result<Packet, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(p) = self.take_buffered() {
                return p;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(_)) => {}
                // A reset after the server closes counts as closed.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(ReadError::Closed)
                }
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Next packet, panicking on timeout/close.
    pub async fn next(&mut self, t: Duration) -> Packet {
        self.read(t)
            .await
            .unwrap_or_else(|e| panic!("expected a packet within {t:?}: {e}"))
    }

    /// Read until a packet for which `f` returns Some; others are queued.
    pub async fn wait_packet<R>(
        &mut self,
        t: Duration,
        what: &str,
        mut f: impl FnMut(&Packet) -> Option<R>,
    ) -> R {
        // Look in the queue first.
        for i in 0..self.pending.len() {
            if let Some(r) = f(&self.pending[i]) {
                self.pending.remove(i);
                return r;
            }
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = match self.read_wire(left).await {
                Ok(p) => p,
                Err(e) => panic!("waiting for {what}: {e} (queued: {:?})", self.pending),
            };
            if let Some(r) = f(&p) {
                return r;
            }
            self.pending.push_back(p);
        }
    }

    /// The connection must be closed by the server within `t`. Packets sent
    /// before the close are returned (e.g. a v5 DISCONNECT).
    pub async fn expect_closed(&mut self, t: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + t;
        let mut seen: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_wire(left).await {
                Ok(p) => seen.push(p),
                Err(ReadError::Closed) | Err(ReadError::Io(_)) => return seen,
                // Garbage after the close decision is no reason to fail here.
                Err(ReadError::Decode(_)) => {}
                Err(ReadError::Timeout) => {
                    panic!("connection still open after {t:?}; packets seen: {seen:?}")
                }
            }
        }
    }

    /// The server must close the connection; for v5, it must first send
    /// DISCONNECT with `v5_reason` [MQTT-4.13.1-1 / 4.13.2-1 area]. For v3 the
    /// server must just close (3.1.1 has no server DISCONNECT).
    pub async fn expect_disconnect(&mut self, v5_reason: u8, t: Duration) {
        let seen = self.expect_closed(t).await;
        let discs: Vec<_> = seen
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(r, _) => Some(*r),
                _ => None,
            })
            .collect();
        if self.version.is_v5() {
            assert_eq!(
                discs,
                vec![v5_reason],
                "expected DISCONNECT {v5_reason:#04x} before close; saw {seen:?}"
            );
        } else {
            assert!(
                discs.is_empty(),
                "3.1.1 server must not send DISCONNECT: {seen:?}"
            );
        }
    }

    /// The server must send DISCONNECT with `reason` (v5), then close the
    /// connection in order (TCP FIN) within `t`. A reset instead fails: a client
    /// meeting one may never read the DISCONNECT (its writes fail first, and some
    /// systems throw away unread data on a reset).
    pub async fn expect_orderly_disconnect(&mut self, reason: u8, t: Duration) {
        let deadline = tokio::time::Instant::now() + t;
        let mut seen: Vec<Packet> = self.pending.drain(..).collect();
        loop {
            if let Some(p) = self.take_buffered() {
                seen.push(p.unwrap_or_else(|e| panic!("{e} after {seen:?}")));
                continue;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("connection still open after {t:?}; packets seen: {seen:?}"),
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    panic!("the connection ended with \"{e}\", not an orderly close; packets seen: {seen:?}")
                }
            }
        }
        let discs: Vec<u8> = seen
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(r, _) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(
            discs,
            vec![reason],
            "expected DISCONNECT {reason:#04x} before the close; saw {seen:?}"
        );
    }

    /// The server closed the connection, or a v5 server sent DISCONNECT whose
    /// reason is in `allowed` then closed.
    pub async fn expect_closed_with_any(&mut self, allowed: &[u8], t: Duration) -> Option<u8> {
        let seen = self.expect_closed(t).await;
        let mut reason = None;
        for p in &seen {
            if let Packet::Disconnect(r, _) = p {
                assert!(
                    self.version.is_v5(),
                    "3.1.1 server must not send DISCONNECT"
                );
                assert!(
                    allowed.contains(r),
                    "DISCONNECT reason {r:#04x} not in {allowed:02x?}"
                );
                reason = Some(*r);
            }
        }
        reason
    }

    /// The connection must stay open and silent for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(p) = self.pending.pop_front() {
            panic!("unexpected packet: {p:?}");
        }
        match self.read_wire(d).await {
            Err(ReadError::Timeout) => {}
            other => panic!("expected silence for {d:?}, got {other:?}"),
        }
    }

    pub async fn subscribe_with(&mut self, filters: &[(&str, SubOpts)], props: Props) -> Suback {
        let pid = self.pid();
        let v = self.version;
        self.send(&encode_subscribe(v, pid, &props, filters)).await;
        let s = self
            .wait_packet(T, "SUBACK", |p| match p {
                Packet::Suback(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        assert_eq!(s.pid, pid, "SUBACK packet id [MQTT-3.8.4-2]");
        assert_eq!(
            s.codes.len(),
            filters.len(),
            "one SUBACK code per filter [MQTT-3.8.4-6]"
        );
        s
    }

    /// Subscribe and return the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        let f: Vec<_> = filters
            .iter()
            .map(|(f, q)| (*f, SubOpts::qos(*q)))
            .collect();
        self.subscribe_with(&f, Props::new()).await.codes
    }

    /// Subscribe to one filter and assert it was granted `qos`.
    pub async fn sub(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe(&[(filter, qos)]).await;
        assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    }

    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let pid = self.pid();
        let v = self.version;
        self.send(&encode_unsubscribe(v, pid, filters)).await;
        let s = self
            .wait_packet(T, "UNSUBACK", |p| match p {
                Packet::Unsuback(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        assert_eq!(s.pid, pid, "UNSUBACK packet id [MQTT-3.10.4-4]");
        s.codes
    }

    /// Publish and complete the QoS flow; returns the PUBACK/PUBREC reason
    /// code (0 for QoS 0).
    pub async fn publish_msg(&mut self, mut p: Publish) -> u8 {
        if p.qos > 0 && p.pid == 0 {
            p.pid = self.pid();
        }
        let v = self.version;
        self.send(&p.encode(v)).await;
        let pid = p.pid;
        match p.qos {
            0 => 0,
            1 => {
                self.wait_packet(T, "PUBACK", |x| match x {
                    Packet::Puback(a) if a.pid == pid => Some(a.reason),
                    _ => None,
                })
                .await
            }
            _ => {
                let r = self
                    .wait_packet(T, "PUBREC", |x| match x {
                        Packet::Pubrec(a) if a.pid == pid => Some(a.reason),
                        _ => None,
                    })
                    .await;
                if r >= 0x80 {
                    return r;
                }
                self.send(&encode_ack(PUBREL, pid, 0, v)).await;
                let c = self
                    .wait_packet(T, "PUBCOMP", |x| match x {
                        Packet::Pubcomp(a) if a.pid == pid => Some(a.reason),
                        _ => None,
                    })
                    .await;
                assert_eq!(c, 0, "PUBCOMP reason");
                r
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> u8 {
        self.publish_msg(Publish::new(topic, payload, qos).retain(retain))
            .await
    }

    /// Next PUBLISH within `t`; with `auto_ack`, QoS 1 is PUBACKed, QoS 2 is
    /// PUBRECed, and PUBRELs seen meanwhile are PUBCOMPed.
    pub async fn recv_publish(&mut self, t: Duration) -> Publish {
        self.try_recv_publish(t)
            .await
            .unwrap_or_else(|e| panic!("expected PUBLISH within {t:?}: {e}"))
    }

    /// Like [`RawClient::recv_publish`], but says why no PUBLISH came instead of
    /// panicking. `t` bounds the whole wait: other packets (queued before or read
    /// meanwhile) stay queued, in order, for later reads.
    pub async fn try_recv_publish(&mut self, t: Duration) -> Result<Publish, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        // Packets already queued are looked at once, not read back forever.
        let mut skipped = VecDeque::new();
        let mut queued = std::mem::take(&mut self.pending);
        let outcome = loop {
            let p = match queued.pop_front() {
                Some(p) => p,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.read_wire(left).await {
                        Ok(p) => p,
                        Err(e) => break Err(e),
                    }
                }
            };
            match p {
                Packet::Publish(p) => {
                    if self.auto_ack {
                        let v = self.version;
                        match p.qos {
                            1 => self.send(&encode_ack(PUBACK, p.pid, 0, v)).await,
                            2 => self.send(&encode_ack(PUBREC, p.pid, 0, v)).await,
                            _ => {}
                        }
                    }
                    break Ok(p);
                }
                Packet::Pubrel(a) if self.auto_ack => {
                    let v = self.version;
                    self.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await;
                }
                other => skipped.push_back(other),
            }
        };
        // Skipped packets first, then what was queued after the PUBLISH.
        skipped.append(&mut queued);
        self.pending = skipped;
        outcome
    }

    /// The next PUBLISH within `t`, acknowledged whatever `auto_ack` says (QoS 1:
    /// PUBACK, QoS 2: PUBREC; PUBRELs seen meanwhile get PUBCOMP), or why none came.
    pub async fn next_publish_acked(&mut self, t: Duration) -> Result<Publish, ReadError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await? {
                Packet::Publish(p) => {
                    let v = self.version;
                    match p.qos {
                        1 => self.send(&encode_ack(PUBACK, p.pid, 0, v)).await,
                        2 => self.send(&encode_ack(PUBREC, p.pid, 0, v)).await,
                        _ => {}
                    }
                    return Ok(p);
                }
                Packet::Pubrel(a) => {
                    let v = self.version;
                    self.send(&encode_ack(PUBCOMP, a.pid, 0, v)).await;
                }
                _ => {}
            }
        }
    }

    /// Collect `n` PUBLISH packets.
    pub async fn recv_publishes(&mut self, n: usize, t: Duration) -> Vec<Publish> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.recv_publish(t).await);
        }
        v
    }

    /// No PUBLISH may arrive for `d` (the legitimate wait for an absence).
    /// PUBRELs are still completed.
    pub async fn expect_no_publish(&mut self, d: Duration) {
        match self.try_recv_publish(d).await {
            Err(ReadError::Timeout) => {}
            Ok(p) => panic!("unexpected PUBLISH: {p:?}"),
            Err(e) => panic!("connection failed while expecting no PUBLISH: {e}"),
        }
    }

    pub async fn expect_no_publish_default(&mut self) {
        self.expect_no_publish(ABSENCE).await
    }

    /// Send DISCONNECT (normal) and wait for the server to close.
    pub async fn disconnect(mut self) {
        let v = self.version;
        self.send_lossy(&encode_disconnect(v, 0, &Props::new()))
            .await;
        let _ = self.stream.shutdown().await;
        // Wait for the server's close so the next step sees the session gone.
        let _ = tokio::time::timeout(T, async {
            let mut b = [0u8; 1024];
            while let Ok(n) = self.stream.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Drop the TCP connection without DISCONNECT (an abrupt close).
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    pub async fn ping(&mut self) {
        self.send(&encode_pingreq()).await;
        self.wait_packet(T, "PINGRESP", |p| {
            matches!(p, Packet::Pingresp).then_some(())
        })
        .await;
    }
}

/// CONNECT on `addr` (a fresh connection); the CONNACK within `t`, or None if the
/// server closed first or said nothing.
pub async fn try_connect(
    addr: SocketAddr,
    c: Connect,
    t: Duration,
) -> (RawClient, Option<Connack>) {
    let mut cl = RawClient::tcp(addr).await;
    cl.version = c.version;
    cl.send(&c.encode()).await;
    match cl.read(t).await {
        Ok(Packet::Connack(ca)) => (cl, Some(ca)),
        Ok(other) => panic!("expected CONNACK, got {other:?}"),
        Err(_) => (cl, None),
    }
}
