//! Client-id mode: the first packet must be an MQTT CONNECT, read in full before a
//! node is chosen. The bytes read are forwarded unchanged afterwards.

use std::time::Duration;

use bytes::BytesMut;
use mqtt::{DecodeError, Packet};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a connection was refused before reaching a node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FirstPacketError {
    /// No complete CONNECT within the time allowed.
    #[error("no CONNECT within {0:?}")]
    Timeout(Duration),
    /// The client closed before sending a whole packet.
    #[error("closed before a complete CONNECT")]
    Closed,
    /// The bytes are not a valid MQTT packet (or are too large).
    #[error("not MQTT: {0}")]
    Invalid(#[from] DecodeError),
    /// The first byte is not CONNECT's fixed header (0x10) [MQTT-3.1.0-1]: refused
    /// at once, without waiting for a length that may never come (`GET / HTTP…`).
    #[error("first byte {0:#04x} is not a CONNECT header")]
    NotConnect(u8),
    /// Reading from the client failed.
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// What was read: every byte so far (the CONNECT and anything the client
/// pipelined after it) and the client id.
#[derive(Debug)]
pub(crate) struct FirstPacket {
    pub bytes: BytesMut,
    pub client_id: String,
}

/// Reads until `buf` holds a complete packet, which must decode as a CONNECT no
/// larger than `max_size`, within `timeout`.
pub(crate) async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
    max_size: usize,
) -> Result<FirstPacket, FirstPacketError> {
    tokio::time::timeout(timeout, read(reader, max_size))
        .await
        .map_err(|_| FirstPacketError::Timeout(timeout))?
}

async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_size: usize,
) -> Result<FirstPacket, FirstPacketError> {
    let mut bytes = BytesMut::with_capacity(256);
    loop {
        if let Some(&first) = bytes.first() {
            if first != 0x10 {
                return Err(FirstPacketError::NotConnect(first));
            }
            // CONNECT sets the protocol itself; decode a copy so that `bytes` keeps
            // everything for forwarding.
            let mut probe = BytesMut::from(&bytes[..]);
            if let Some(packet) = mqtt::decode(&mut probe, None, max_size)? {
                let Packet::Connect(c) = packet else {
                    // Cannot happen (0x10 decodes as CONNECT or fails); stay total.
                    return Err(FirstPacketError::NotConnect(first));
                };
                return Ok(FirstPacket {
                    client_id: c.client_id,
                    bytes,
                });
            }
        }
        if reader.read_buf(&mut bytes).await? == 0 {
            return Err(FirstPacketError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt::{Connect, Protocol};

    fn connect_bytes(id: &str, protocol: Protocol) -> BytesMut {
        let packet = Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }));
        let mut out = BytesMut::new();
        mqtt::encode(&packet, protocol, &mut out).unwrap();
        out
    }

    async fn run(input: &[u8]) -> Result<FirstPacket, FirstPacketError> {
        let mut r = input;
        read_connect(&mut r, Duration::from_secs(1), 1024).await
    }

    #[tokio::test]
    async fn reads_a_connect_and_keeps_pipelined_bytes() {
        for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
            let mut input = connect_bytes("sensor-7", protocol).to_vec();
            input.extend_from_slice(&[0xc0, 0x00]); // PINGREQ right behind
            let got = run(&input).await.unwrap();
            assert_eq!(got.client_id, "sensor-7");
            assert_eq!(&got.bytes[..], &input[..], "{protocol:?}");
        }
    }

    #[tokio::test]
    async fn rejects_what_is_not_a_connect() {
        assert!(matches!(
            run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
            Err(FirstPacketError::NotConnect(b'G'))
        ));
        assert!(matches!(
            run(&[0xc0, 0x00]).await,
            Err(FirstPacketError::NotConnect(0xc0))
        ));
        // Starts like a CONNECT, but the protocol name is wrong.
        let mut bad = connect_bytes("a", Protocol::V311).to_vec();
        bad[4] = b'X';
        assert!(matches!(run(&bad).await, Err(FirstPacketError::Invalid(_))));
        let big = connect_bytes(&"x".repeat(2000), Protocol::V311);
        assert!(matches!(
            run(&big).await,
            Err(FirstPacketError::Invalid(DecodeError::TooLarge { .. }))
        ));
        let mut truncated = connect_bytes("a", Protocol::V311);
        truncated.truncate(5);
        assert!(matches!(
            run(&truncated).await,
            Err(FirstPacketError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (_keep, mut silent) = tokio::io::duplex(64);
        let e = read_connect(&mut silent, Duration::from_millis(50), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, FirstPacketError::Timeout(_)));
    }
}
