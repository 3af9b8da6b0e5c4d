//! A minimal HTTP/1.1 client for another node's admin API (one request per
//! connection, `Connection: close`), used to answer for the whole cluster; over
//! HTTPS when the nodes' admin listeners speak it (`admin_tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// How this node reaches the other nodes' admin listeners: as it serves its own.
#[derive(Debug, Clone)]
pub enum PeerTransport {
    /// Plain HTTP (no `admin_tls`).
    Http,
    /// HTTPS, verifying the peers' certificates against `admin_tls_ca` and
    /// presenting this node's own certificate.
    Https(Arc<rustls::ClientConfig>),
    /// HTTPS without `admin_tls_ca`: the peers cannot be verified, so they are not
    /// asked (each shows in the answer's `errors`).
    Unverifiable,
}

/// How long another node has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from another node.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Sends `method path` to `addr` over `transport` with `authorization` (the
/// caller's header, passed on as it came); the status and the body.
pub async fn request(
    addr: SocketAddr,
    transport: &PeerTransport,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        match transport {
            PeerTransport::Http => exchange(tcp, addr, method, path, authorization).await,
            PeerTransport::Https(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                exchange(tls, addr, method, path, authorization).await
            }
            PeerTransport::Unverifiable => {
                Err("HTTPS admin listener, but this node has no admin_tls_ca to verify it".into())
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// One request and its whole answer on an open connection.
async fn exchange(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`; what was
    // read is the whole answer if it parses.
    if let Err(e) = (&mut s).take(MAX_RESPONSE).read_to_end(&mut raw).await {
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e.to_string());
        }
    }
    parse(&raw)
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's
/// unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits a whole response into its status and body (de-chunked if need be).
pub fn parse(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size = std::str::from_utf8(&body[..line]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        let rest = &body[line + 2..];
        out.extend_from_slice(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (404, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse(b"HTTP/1.1 200").is_err());
        assert_eq!(encode("a/b #+x"), "a%2Fb%20%23%2Bx");
    }
}
