//! A server-side TLS stream that holds no buffer while its connection is idle.
//!
//! tokio-rustls drives rustls's buffered `ServerConnection`, whose receive buffer is
//! at least 4 KiB, zero-filled, from the first read for the connection's life: with
//! a hundred thousand idle devices that buffer alone is 400 MB. [`TlsStream`]
//! drives rustls's unbuffered API instead and owns the three buffers itself —
//! records received, plaintext decrypted but not read yet, records to send — each
//! allocated when traffic needs it and given back once it is empty and the socket
//! has nothing more to read (bench/tls.sh measures the difference).
//!
//! [`accept`] runs the handshake; the stream is then an `AsyncRead + AsyncWrite` of
//! plaintext, like tokio-rustls's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus,
};
use tokio_rustls::rustls::{self, ServerConfig};

/// Largest TLS record on the wire: 16 KiB of plaintext plus header and expansion.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;
/// Received bytes buffered at most: a handshake message may span records up to
/// rustls's own 64 KiB limit for handshake messages.
const MAX_INCOMING: usize = 64 * 1024 + MAX_RECORD;
/// The first allocation of the receive buffer.
const FIRST_READ: usize = 4096;
/// Plaintext encrypted per write at most; the rest waits for the next write.
const MAX_WRITE: usize = 64 * 1024;
/// Encrypted bytes waiting to be sent beyond which a write first sends them.
const OUT_HIGH_WATER: usize = 32 * 1024;

/// MQTT over TLS on a server socket, after [`accept`].
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Bytes received and not processed yet: `incoming[..filled]`.
    incoming: Vec<u8>,
    filled: usize,
    /// Plaintext decrypted and not read yet: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Records to send: `outgoing[out_at..out_len]`.
    outgoing: Vec<u8>,
    out_at: usize,
    out_len: usize,
    /// The peer sent close_notify or closed its side: reads return end of file
    /// once `plain` is read.
    read_closed: bool,
    /// close_notify was queued.
    close_sent: bool,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("filled", &self.filled)
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("outgoing", &(self.out_len - self.out_at))
            .finish_non_exhaustive()
    }
}

/// Where rustls stopped.
enum Step {
    /// It needs more bytes from the peer.
    NeedRead,
    /// Application data may be sent (with `Some`, this many bytes of it were
    /// encrypted into `outgoing`).
    Writable(Option<usize>),
    /// Both sides sent close_notify.
    Closed,
}

/// What to do when rustls lets application data be written.
#[derive(Clone, Copy)]
enum Write<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Completes a server handshake with `config` on `io`. The error is rustls's reason
/// ("peer sent no certificates", "invalid peer certificate: UnknownIssuer", …) or
/// the socket's (an end of file before the handshake completed is `UnexpectedEof`).
pub async fn accept<S>(io: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut s = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        filled: 0,
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        out_len: 0,
        read_closed: false,
        close_sent: false,
    };
    std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
    s.release();
    Ok(s)
}

impl<S> TlsStream<S> {
    /// The client's certificate chain (leaf first), if it sent one.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Runs rustls over what was received until it needs the network, doing `write`
    /// if it gets to a point where application data may be sent.
    fn drive(&mut self, write: Write<'_>) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[..self.filled]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.discard(discard);
                    self.queue_alert();
                    return Err(invalid(e));
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        if self.plain_at == self.plain.len() {
                            self.plain.clear();
                            self.plain_at = 0;
                        }
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // Only with `max_early_data_size` set, which our configs never do.
                    while let Some(record) = early.next_record() {
                        discard += record.map_err(invalid)?.discard;
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    loop {
                        let room = &mut self.outgoing[self.out_len..];
                        match encode.encode(room) {
                            Ok(n) => {
                                self.out_len += n;
                                break;
                            }
                            Err(EncodeError::InsufficientSize(e)) => {
                                grow(&mut self.outgoing, self.out_len + e.required_size)
                            }
                            Err(EncodeError::AlreadyEncoded) => break,
                        }
                    }
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Queued in `outgoing`, which is sent before anything later.
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Step::NeedRead),
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    Some(Step::Closed)
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    let wrote = match write {
                        Write::Nothing => None,
                        Write::Encrypt(data) => {
                            let data = &data[..data.len().min(MAX_WRITE)];
                            loop {
                                match traffic.encrypt(data, &mut self.outgoing[self.out_len..]) {
                                    Ok(n) => {
                                        self.out_len += n;
                                        break Some(data.len());
                                    }
                                    Err(EncryptError::InsufficientSize(e)) => {
                                        grow(&mut self.outgoing, self.out_len + e.required_size)
                                    }
                                    Err(e) => return Err(io::Error::other(e)),
                                }
                            }
                        }
                        Write::CloseNotify => loop {
                            match traffic.queue_close_notify(&mut self.outgoing[self.out_len..]) {
                                Ok(n) => {
                                    self.out_len += n;
                                    break Some(0);
                                }
                                Err(EncryptError::InsufficientSize(e)) => {
                                    grow(&mut self.outgoing, self.out_len + e.required_size)
                                }
                                Err(e) => return Err(io::Error::other(e)),
                            }
                        },
                    };
                    Some(Step::Writable(wrote))
                }
                _ => return Err(io::Error::other("unexpected TLS connection state")),
            };
            self.discard(discard);
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// After an error, queues the alert rustls prepared for the peer (if any), to be
    /// sent best-effort before the connection closes.
    fn queue_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self
            .conn
            .process_tls_records(&mut self.incoming[..self.filled]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            grow(&mut self.outgoing, self.out_len + 512);
            if let Ok(n) = encode.encode(&mut self.outgoing[self.out_len..]) {
                self.out_len += n;
            }
        }
    }

    /// Drops `n` processed bytes from the front of the receive buffer.
    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.incoming.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Gives back the buffers that hold nothing (an idle connection holds none).
    fn release(&mut self) {
        if self.filled == 0 && !self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.plain_at == self.plain.len() && self.plain.capacity() > 0 {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        if self.out_at == self.out_len && self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.out_at = 0;
            self.out_len = 0;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Drives the handshake until it is complete (the client's certificate, if any,
    /// checked) and everything we owe the peer is sent.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.drive(Write::Nothing) {
                Ok(step) => step,
                Err(e) => {
                    // The alert, best-effort: the connection is refused either way.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            if self.poll_send(cx)?.is_pending() {
                return Poll::Pending;
            }
            match step {
                Step::Writable(_) if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Step::NeedRead | Step::Writable(_) => {}
            }
            match self.poll_receive(cx)? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(_) => {}
            }
        }
    }

    /// Reads from the socket into the receive buffer. Ready with the number of bytes
    /// read (0: the peer closed).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.filled == self.incoming.len() {
            if self.incoming.len() >= MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than 64 KiB",
                )));
            }
            let len = (self.incoming.len() * 2).clamp(FIRST_READ, MAX_INCOMING);
            self.incoming.resize(len, 0);
        }
        let mut buf = ReadBuf::new(&mut self.incoming[self.filled..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                self.filled += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.release();
                Poll::Pending
            }
        }
    }

    /// Sends what `outgoing` holds. Ready once it is all sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out_len {
            let pending = &self.outgoing[self.out_at..self.out_len];
            match Pin::new(&mut self.io).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out_at = 0;
        self.out_len = 0;
        if self.outgoing.len() > OUT_HIGH_WATER {
            self.outgoing = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            let step = this.drive(Write::Nothing)?;
            // What rustls owes the peer (a key update's answer, session tickets) goes
            // out with the next write or flush; a read never waits for it.
            if this.out_at < this.out_len {
                let _ = this.poll_send(cx)?;
            }
            if this.plain_at < this.plain.len() || this.read_closed {
                continue;
            }
            if let Step::Closed = step {
                this.read_closed = true;
                continue;
            }
            match this.poll_receive(cx)? {
                Poll::Pending => return Poll::Pending,
                // Closed without close_notify: an end of file all the same (MQTT
                // packets carry their own length).
                Poll::Ready(0) => this.read_closed = true,
                Poll::Ready(_) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out_len - this.out_at > OUT_HIGH_WATER && this.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.drive(Write::Encrypt(data))? {
            Step::Writable(Some(n)) => Poll::Ready(Ok(n)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // Best-effort: a connection rustls already failed closes without it.
            let _ = this.drive(Write::CloseNotify);
        }
        if this.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Grows `buf` (zero-filled) to at least `len` bytes.
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len.max(buf.len() * 2).max(512), 0);
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    /// A server config for `localhost` and a client config trusting it, at
    /// `versions`.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()).into();
        let server = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    async fn connect(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (TlsStream<DuplexStream>, Client) {
        let (server_config, client_config) = configs(versions);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(accept(a, server_config), connector.connect(name, b));
        (server.unwrap(), client.unwrap())
    }

    /// The server echoes `len` bytes the client writes; the client reads them back.
    async fn echo(server: &mut TlsStream<DuplexStream>, client: &mut Client, len: usize) {
        let sent: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let write = async {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0; len];
            client.read_exact(&mut back).await.unwrap();
            back
        };
        let serve = async {
            let mut buf = vec![0; len];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&buf).await.unwrap();
            server.flush().await.unwrap();
        };
        let (back, ()) = tokio::join!(write, serve);
        assert!(back == sent, "echoed bytes differ");
    }

    /// Whether a read finds nothing (it must then have given its buffers back).
    async fn read_would_block(server: &mut TlsStream<DuplexStream>) -> bool {
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *server).poll_read(cx, &mut buf)))
            .await
            .is_pending()
    }

    #[tokio::test]
    async fn data_crosses_both_ways_and_an_idle_stream_holds_no_buffer() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (mut server, mut client) = connect(versions).await;
            // Small, a full record, several records and a partial one.
            for len in [1, 100, 16 * 1024, 200_000] {
                echo(&mut server, &mut client, len).await;
                assert!(read_would_block(&mut server).await);
                assert_eq!(
                    (
                        server.incoming.capacity(),
                        server.plain.capacity(),
                        server.outgoing.capacity()
                    ),
                    (0, 0, 0),
                    "an idle stream holds a buffer ({versions:?}, after {len} bytes)"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered() {
        let (mut server, mut client) = connect(&[&rustls::version::TLS13]).await;
        echo(&mut server, &mut client, 1000).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        // Our answer (a key update of our own) must reach the client before data
        // under the new keys, or the client cannot decrypt the echo.
        echo(&mut server, &mut client, 1000).await;
        echo(&mut server, &mut client, 50_000).await;
    }

    #[tokio::test]
    async fn close_notify_both_ways_is_a_clean_end_of_file() {
        let (mut server, mut client) = connect(&[&rustls::version::TLS13]).await;
        echo(&mut server, &mut client, 10).await;
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        server.shutdown().await.unwrap();
        // tokio-rustls reports a close without close_notify as an error.
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_refused() {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let (a, mut b) = tokio::io::duplex(1024);
        b.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
            .await
            .unwrap();
        let e = accept(a, server_config).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // rustls's alert is sent before the refusal.
        let mut alert = [0u8; 7];
        b.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert[0], 21, "an alert record: {alert:?}");
    }
}
