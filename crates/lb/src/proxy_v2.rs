//! The PROXY protocol v2 header the balancer sends before the client's bytes
//! (haproxy's `proxy-protocol.txt`, section 2.2). The broker's parser lives in
//! `astramq-broker`'s `proxy` module.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Appends a v2 `PROXY` header for a TCP connection from `client` to `local` (the
/// balancer's listening address the client reached). IPv4 when both are IPv4,
/// else IPv6 with IPv4 addresses mapped.
pub(crate) fn encode(client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (client.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_spec_layout() {
        let mut out = Vec::new();
        encode(
            "192.0.2.1:51000".parse().unwrap(),
            "198.51.100.7:1883".parse().unwrap(),
            &mut out,
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12]);
        expected.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        expected.extend_from_slice(&51000u16.to_be_bytes());
        expected.extend_from_slice(&1883u16.to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn mixed_families_use_ipv6_with_mapped_addresses() {
        let mut out = Vec::new();
        encode(
            "10.0.0.1:4000".parse().unwrap(),
            "[2001:db8::1]:1883".parse().unwrap(),
            &mut out,
        );
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &out[16..32],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&out[48..50], &4000u16.to_be_bytes());
    }
}
