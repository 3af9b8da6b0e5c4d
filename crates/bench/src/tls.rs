//! TLS for the load generator (`--tls-ca`): rustls driven by hand over the client's
//! non-blocking socket (its sans-I/O API: `read_tls`/`process_new_packets`/`reader`
//! in, `writer`/`write_tls` out), so a TLS connection runs in the same one-task loop
//! as a plain one, with `readable`/`try_read` and `writable`/`try_write`. The crypto
//! provider is the workspace's (ring, through `astramq-tls`).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// The TLS settings of a run: whom to trust, and the name to expect.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsClient {
    /// Trusts the CA certificates in `ca` (PEM) and expects `server_name` in the
    /// broker's certificate.
    pub fn new(ca: &Path, server_name: &str) -> anyhow::Result<TlsClient> {
        let config = tls::client::client_config("--tls-ca", ca, None)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow::anyhow!("--tls-server-name {server_name}: {e}"))?;
        Ok(TlsClient {
            config,
            server_name,
        })
    }

    /// A new client session, not yet shaken hands.
    pub fn session(&self) -> io::Result<Tls> {
        let conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        Ok(Tls { conn })
    }
}

/// One connection's TLS state.
#[derive(Debug)]
pub struct Tls {
    conn: rustls::ClientConnection,
}

/// `io::Read` over a non-blocking socket: `WouldBlock` when it has nothing.
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `io::Write` over a non-blocking socket: `WouldBlock` when it is full.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls {
    /// Completes the handshake on `stream`.
    pub async fn handshake(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                stream.writable().await?;
                self.flush(stream)?;
            } else {
                stream.readable().await?;
                self.read(stream, &mut BytesMut::new())?;
            }
        }
        while self.conn.wants_write() {
            stream.writable().await?;
            self.flush(stream)?;
        }
        Ok(())
    }

    /// Reads what the socket has, decrypts it and appends the plaintext to `rbuf`.
    /// `Ok(false)` when the socket had nothing after all.
    pub fn read(&mut self, stream: &TcpStream, rbuf: &mut BytesMut) -> io::Result<bool> {
        let mut any = false;
        loop {
            match self.conn.read_tls(&mut TryRead(stream)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) => return Err(e),
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Encrypts what `wbuf` holds (as much as rustls buffers) and writes what the
    /// socket takes.
    pub fn write(&mut self, stream: &TcpStream, wbuf: &mut BytesMut) -> io::Result<()> {
        if !wbuf.is_empty() {
            let n = self.conn.writer().write(wbuf)?;
            wbuf.advance(n);
        }
        self.flush(stream)
    }

    /// Writes encrypted bytes until the socket is full or none are left.
    fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut TryWrite(stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether encrypted bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }
}
