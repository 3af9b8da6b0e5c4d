//! PROXY protocol v2 (haproxy's `proxy-protocol.txt`, section 2.2): the header a
//! load balancer sends before the client's bytes, carrying the client's real
//! address.
//!
//! Only listeners configured with `proxy_listen` read it, and there it is
//! required: a header on any other listener would let a client forge its address,
//! and a listener that accepted both could be fooled the same way.
//!
//! [`parse`] is pure (bytes in, header out); [`read_header`] reads exactly the
//! header from a stream, never a byte of what follows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Fixed part of the header: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;

/// Why a PROXY header was refused.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The connection does not start with the v2 signature (no header, or a v1
    /// text header, which we do not accept).
    #[error("no PROXY protocol v2 signature")]
    Signature,
    /// Version nibble other than 2.
    #[error("unsupported PROXY protocol version {0}")]
    Version(u8),
    /// Command other than LOCAL (0) or PROXY (1).
    #[error("unknown PROXY command {0}")]
    Command(u8),
    /// The address block is shorter than its family needs.
    #[error("PROXY address block of {len} bytes is too short for family {family:#04x}")]
    Truncated {
        /// Family and transport byte.
        family: u8,
        /// Announced length.
        len: usize,
    },
    /// Reading the header failed (or the peer closed first).
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client (PROXY command with an IPv4/IPv6 address block);
    /// `None` for LOCAL (health checks from the proxy itself), UNSPEC and UNIX
    /// families: the TCP peer is then the one to report.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, on the proxy.
    pub destination: Option<SocketAddr>,
}

/// Parses a header at the start of `buf`. `Ok(None)`: more bytes are needed;
/// `Ok(Some((header, len)))`: the header is the first `len` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let sig_len = buf.len().min(SIGNATURE.len());
    if buf[..sig_len] != SIGNATURE[..sig_len] {
        return Err(ProxyError::Signature);
    }
    if buf.len() < FIXED_LEN {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0F;
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    if command > 1 {
        return Err(ProxyError::Command(command));
    }
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if buf.len() < FIXED_LEN + len {
        return Ok(None);
    }
    let block = &buf[FIXED_LEN..FIXED_LEN + len];
    let (source, destination) = if command == 0 {
        // LOCAL: the proxy speaks for itself; the address block is to be ignored.
        (None, None)
    } else {
        addresses(family, block)?
    };
    Ok(Some((
        ProxyHeader {
            source,
            destination,
        },
        FIXED_LEN + len,
    )))
}

/// The address block of a PROXY command. TLVs after the addresses are skipped.
fn addresses(
    family: u8,
    block: &[u8],
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ProxyError> {
    let need = |n: usize| {
        if block.len() < n {
            Err(ProxyError::Truncated {
                family,
                len: block.len(),
            })
        } else {
            Ok(())
        }
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    // High nibble: address family; low nibble: transport (STREAM or DGRAM, both
    // carry the same address block).
    match family >> 4 {
        0x1 => {
            need(12)?;
            let src = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let dst = Ipv4Addr::new(block[4], block[5], block[6], block[7]);
            Ok((
                Some(SocketAddr::new(IpAddr::V4(src), port(8))),
                Some(SocketAddr::new(IpAddr::V4(dst), port(10))),
            ))
        }
        0x2 => {
            need(36)?;
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                let v6 = Ipv6Addr::from(o);
                // Show a mapped IPv4 client as the IPv4 address it is.
                v6.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6))
            };
            Ok((
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            ))
        }
        // UNSPEC and UNIX: no IP address to report.
        _ => Ok((None, None)),
    }
}

/// Reads a v2 header from `reader`, consuming exactly its bytes. Bound the call
/// with a timeout: a silent peer keeps it waiting.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut R) -> Result<ProxyHeader, ProxyError> {
    let mut fixed = [0u8; FIXED_LEN];
    // Signature first, so an MQTT client on the wrong port is refused as soon as
    // its first bytes arrive rather than after 16 of them.
    reader.read_exact(&mut fixed[..1]).await?;
    parse(&fixed[..1])?;
    reader.read_exact(&mut fixed[1..]).await?;
    parse(&fixed)?;
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut whole = Vec::with_capacity(FIXED_LEN + len);
    whole.extend_from_slice(&fixed);
    whole.resize(FIXED_LEN + len, 0);
    reader.read_exact(&mut whole[FIXED_LEN..]).await?;
    match parse(&whole)? {
        Some((header, _)) => Ok(header),
        // Cannot happen: `whole` holds exactly the announced length.
        None => Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(cmd: u8, tlv: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(0x11);
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        h.extend_from_slice(&51000u16.to_be_bytes());
        h.extend_from_slice(&1883u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn ipv4_proxy_header_gives_the_client_address() {
        let mut bytes = v4(1, &[]);
        bytes.extend_from_slice(&[0x10, 0x0c]); // MQTT follows
        let (h, len) = parse(&bytes).unwrap().unwrap();
        assert_eq!(len, 28);
        assert_eq!(h.source, Some("192.0.2.1:51000".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.7:1883".parse().unwrap()));
    }

    #[test]
    fn tlvs_are_skipped_and_local_has_no_address() {
        let tlv = [0x04, 0x00, 0x01, 0xAA]; // PP2_TYPE_NOOP
        let (h, len) = parse(&v4(1, &tlv)).unwrap().unwrap();
        assert_eq!(len, 32);
        assert!(h.source.is_some());
        let (h, _) = parse(&v4(0, &[])).unwrap().unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0, 36]);
        h.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&[0x0f, 0xa0, 0x07, 0x5b]);
        let (p, _) = parse(&h).unwrap().unwrap();
        assert_eq!(p.source, Some("10.0.0.1:4000".parse().unwrap()));
        assert_eq!(p.destination, Some("[2001:db8::1]:1883".parse().unwrap()));
    }

    #[test]
    fn partial_input_asks_for_more() {
        let full = v4(1, &[]);
        for n in 0..full.len() {
            assert!(parse(&full[..n]).unwrap().is_none(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        // Plain MQTT (CONNECT) on a PROXY listener.
        assert!(matches!(
            parse(&[0x10, 0x0c, 0, 4]),
            Err(ProxyError::Signature)
        ));
        // v1 text header.
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4"),
            Err(ProxyError::Signature)
        ));
        let mut h = v4(1, &[]);
        h[12] = 0x11;
        assert!(matches!(parse(&h), Err(ProxyError::Version(1))));
        let mut h = v4(1, &[]);
        h[12] = 0x22;
        assert!(matches!(parse(&h), Err(ProxyError::Command(2))));
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&h), Err(ProxyError::Truncated { .. })));
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header() {
        let mut bytes = v4(1, &[0x04, 0x00, 0x00]);
        bytes.extend_from_slice(b"MQTT");
        let mut r = &bytes[..];
        let h = read_header(&mut r).await.unwrap();
        assert_eq!(h.source, Some("192.0.2.1:51000".parse().unwrap()));
        assert_eq!(r, b"MQTT");
        let mut plain: &[u8] = &[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T'];
        assert!(matches!(
            read_header(&mut plain).await,
            Err(ProxyError::Signature)
        ));
    }
}
