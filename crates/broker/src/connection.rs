//! Bytes ⇄ packets on one socket: a read buffer the codec decodes from and a write
//! buffer packets are encoded into, flushed by the client loop.
//!
//! Buffers start empty and grow only as traffic needs, so an idle connection costs
//! little; the read buffer never grows past the maximum packet size because the codec
//! rejects an oversize packet from its fixed header.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mqtt::{decode, encode, DecodeError, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::arrival::{self, ReadWake};

/// The read half of a client transport. [`ReadSide::readable`] lets an idle
/// connection wait for data without holding a read buffer (4 KiB per connection adds
/// up with a hundred thousand idle clients).
pub trait ReadSide: AsyncRead + Unpin + Send {
    /// Ready when a read would find data (or the peer closed). A poll function, not a
    /// future: waiting on it adds a few bytes to an idle connection's task, where
    /// tokio's `readable()` future adds well over a hundred.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;

    /// Size of the read buffer allocated when an idle connection starts reading:
    /// where [`ReadSide::poll_readable`] knows data waits, a full chunk; where it
    /// cannot tell, a small one, so that an idle connection waiting in its read holds
    /// little (it grows to full chunks once data flows).
    const FIRST_READ: usize = READ_CHUNK;

    /// Whether [`ReadSide::poll_readable`] and reads wait on the socket itself, so
    /// that their wake-ups follow the kernel's order (see [`crate::arrival`]).
    const ORDERED: bool = false;
}

/// Bytes reserved for each read once data flows.
const READ_CHUNK: usize = 4096;

/// Room for the next read: a first buffer sized for the transport, then chunks.
fn reserve<R: ReadSide>(rbuf: &mut BytesMut) {
    if rbuf.capacity() == 0 {
        rbuf.reserve(R::FIRST_READ);
    } else if rbuf.capacity() - rbuf.len() < 512 {
        rbuf.reserve(READ_CHUNK);
    }
}

impl ReadSide for tokio::net::tcp::OwnedReadHalf {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let stream: &tokio::net::TcpStream = self.as_ref();
        stream.poll_read_ready(cx)
    }

    const ORDERED: bool = true;
}

/// TLS and WebSocket connections: decrypted or unframed bytes may already wait in
/// the transport's own buffers, where the socket's readiness cannot see them, so
/// they are always "readable" and an idle one waits in a read, holding a small
/// buffer ([`ReadSide::FIRST_READ`]).
impl<S: AsyncRead + Send> ReadSide for tokio::io::ReadHalf<S> {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// An idle TLS or WebSocket connection sits in its read: keep that buffer small.
    const FIRST_READ: usize = 256;
}

/// Stop encoding more deliveries once this many bytes wait to be written.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;

/// How long a connection the broker closes with a reason (a DISCONNECT sent, its
/// write side shut down) goes on reading, and throwing away, what the client still
/// sends. Closing a socket with unread data, or receiving data after the close,
/// makes the kernel answer with a TCP reset; a client still writing then sees its
/// writes fail and may never read the DISCONNECT that says why (and some systems
/// throw away unread data on a reset). Two seconds cover a client that notices the
/// DISCONNECT and closes, over any network a broker should serve; the connection
/// holds no session meanwhile.
pub const LINGER: Duration = Duration::from_secs(2);

/// At most this many bytes are read and thrown away while lingering: a client
/// flooding a closed connection gets a reset after that, rather than broker CPU for
/// the whole [`LINGER`].
pub const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Size of each read while lingering.
const LINGER_CHUNK: usize = 16 * 1024;

/// Why lingering ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerEnd {
    /// The client closed its side (or the socket failed): a clean end.
    Closed,
    /// [`LINGER`] passed first.
    TimedOut,
    /// [`LINGER_MAX_BYTES`] were read first.
    TooMuch,
}

/// What reading from the socket produced.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed or the socket failed.
    Closed,
    /// The bytes are not a valid packet.
    Decode(DecodeError),
}

/// The read side of a client socket: bytes in, packets out.
#[derive(Debug)]
pub struct Reader<R> {
    reader: R,
    rbuf: BytesMut,
    /// Largest packet accepted from the peer.
    pub max_in: usize,
    /// The waker an idle connection waits for its socket with (made at the first
    /// wait), numbering its wake-ups in the kernel's order.
    wake: Option<Arc<ReadWake>>,
    /// The wake-up whose bytes are being handled (0: none): others woken after it
    /// wait for [`Reader::handled`].
    arrived: u64,
}

impl<R> Reader<R> {
    /// The packets read after the last wake-up have been handled (they took effect):
    /// connections woken after this one may go on. See [`crate::arrival`].
    pub fn handled(&mut self) {
        if self.arrived != 0 {
            arrival::handled(std::mem::take(&mut self.arrived));
        }
    }

    /// The connection stops reading for a while (a publish waits for room, a rate
    /// limit): connections woken after it need not wait for it meanwhile.
    pub fn pause(&mut self) {
        if let Some(wake) = &self.wake {
            wake.disarm();
        }
    }
}

impl<R> Drop for Reader<R> {
    fn drop(&mut self) {
        self.handled();
    }
}

/// The write side of a client socket: encoded packets waiting to be written.
#[derive(Debug)]
pub struct Writer<W> {
    writer: W,
    /// Encoded packets waiting to be written.
    pub wbuf: BytesMut,
    /// Bytes handed to the transport that it may still hold (a TLS record, a
    /// WebSocket frame) until flushed. Always false on TCP, whose flush is a no-op.
    unflushed: bool,
}

/// One client socket with its buffers, as two halves that a `select!` can drive at
/// the same time.
#[derive(Debug)]
pub struct Connection<R, W> {
    /// The read half.
    pub rx: Reader<R>,
    /// The write half.
    pub tx: Writer<W>,
}

impl<R: ReadSide> Reader<R> {
    /// The next complete packet already buffered, if any.
    pub fn next_buffered(
        &mut self,
        protocol: Option<Protocol>,
    ) -> Result<Option<Packet>, DecodeError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        decode(&mut self.rbuf, protocol, self.max_in)
    }

    /// Gives the read buffer's memory back when nothing is buffered, so an idle
    /// connection holds no buffer (the next read allocates a fresh one).
    pub fn release_if_empty(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Reads more bytes from the socket. Cancel-safe: usable in `select!`.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        self.handled();
        if R::ORDERED {
            return self.fill_ordered().await;
        }
        if self.rbuf.capacity() == 0 {
            // Allocate only once there is something to read.
            // Borrowed mutably, so `R` needs to be `Send`, not `Sync`.
            let reader = &mut self.reader;
            std::future::poll_fn(move |cx| reader.poll_readable(cx))
                .await
                .map_err(|_| ReadError::Closed)?;
        }
        reserve::<R>(&mut self.rbuf);
        match self.reader.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
        }
    }

    /// [`Reader::fill`] on a socket whose readiness is waited for with the
    /// connection's [`ReadWake`], so the bytes read carry the number of the wake-up
    /// that announced them and take effect after those of connections woken before
    /// (see [`crate::arrival`]). A wake-up that finds nothing to read is handled at
    /// once: it announced bytes already read.
    async fn fill_ordered(&mut self) -> Result<(), ReadError> {
        std::future::poll_fn(|cx| self.poll_fill_ordered(cx)).await?;
        if self.arrived != 0 && arrival::must_wait(self.arrived) {
            // Boxed: rare, and inline its state would size every connection's task.
            Box::pin(arrival::wait_for_earlier(self.arrived)).await;
        }
        Ok(())
    }

    /// One poll of [`Reader::fill_ordered`]'s read. Ready with the wake-up that
    /// announced the bytes in [`Reader::arrived`] (0 if none did).
    fn poll_fill_ordered(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadError>> {
        let wake = self.wake.get_or_insert_with(Default::default);
        wake.arm();
        // A wake-up taken by a poll that then found nothing announced bytes already
        // read: no one should wait for it.
        if self.arrived != 0 {
            arrival::handled(std::mem::take(&mut self.arrived));
        }
        self.arrived = wake.take().unwrap_or(0);
        let waker = wake.waker(cx.waker());
        let mut cx = Context::from_waker(&waker);
        if self.rbuf.capacity() == 0 {
            // Allocate only once there is something to read.
            if self.reader.poll_readable(&mut cx).is_pending() {
                return Poll::Pending;
            }
        }
        reserve::<R>(&mut self.rbuf);
        // tokio's read: a short read clears the socket's readiness, so the next wait
        // costs no extra `recv` that finds nothing.
        let reader = std::pin::Pin::new(&mut self.reader);
        match tokio_util::io::poll_read_buf(reader, &mut cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Err(ReadError::Closed)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Pending => {
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                Poll::Pending
            }
        }
    }

    /// Reads and throws away what the peer sends until it closes, `limit` passes or
    /// `max_bytes` were read, whichever comes first (see [`LINGER`]). Packets
    /// already buffered are thrown away too.
    pub async fn discard(&mut self, limit: Duration, max_bytes: usize) -> LingerEnd {
        self.rbuf = BytesMut::new();
        let mut chunk = vec![0u8; LINGER_CHUNK];
        let mut read = 0;
        let drain = async {
            while read < max_bytes {
                match self.reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => return LingerEnd::Closed,
                    Ok(n) => read += n,
                }
            }
            LingerEnd::TooMuch
        };
        tokio::time::timeout(limit, drain)
            .await
            .unwrap_or(LingerEnd::TimedOut)
    }

    /// Reads until one whole packet is buffered, and returns it.
    pub async fn read_packet(&mut self, protocol: Option<Protocol>) -> Result<Packet, ReadError> {
        loop {
            if let Some(p) = self.next_buffered(protocol).map_err(ReadError::Decode)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Encodes `packet` into the write buffer.
    pub fn queue(&mut self, packet: &Packet, protocol: Protocol) {
        // Encoding our own packets fails only on values we never build (AUTH on v3,
        // 64 KiB strings); dropping such a packet is the safe reaction.
        if let Err(e) = encode(packet, protocol, &mut self.wbuf) {
            tracing::error!(packet = packet.name(), error = %e, "could not encode packet");
        }
    }

    /// Whether [`Writer::write_some`] has work: bytes buffered, or a transport
    /// to flush.
    pub fn has_pending(&self) -> bool {
        !self.wbuf.is_empty() || self.unflushed
    }

    /// Writes some of the write buffer; once it is all written, flushes the
    /// transport (TLS and WebSocket streams may buffer what they accepted).
    /// Cancel-safe: usable in `select!` (an interrupted flush is resumed by the next
    /// call, since [`Writer::has_pending`] stays true).
    pub async fn write_some(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer.write_buf(&mut self.wbuf).await?;
        }
        if self.wbuf.is_empty() {
            // Everything written: an idle connection keeps no write buffer.
            self.wbuf = BytesMut::new();
            self.unflushed = true;
            self.writer.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Writes everything buffered and flushes.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while !self.wbuf.is_empty() {
            self.writer.write_buf(&mut self.wbuf).await?;
        }
        self.writer.flush().await
    }

    /// Flushes, then closes the write side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
    }
}

impl<R: ReadSide, W: AsyncWrite + Unpin> Connection<R, W> {
    /// Wraps the two halves of a socket.
    pub fn new(reader: R, writer: W, max_in: usize) -> Self {
        Connection {
            rx: Reader {
                reader,
                rbuf: BytesMut::new(),
                max_in,
                wake: None,
                arrived: 0,
            },
            tx: Writer {
                writer,
                wbuf: BytesMut::new(),
                unflushed: false,
            },
        }
    }
}
