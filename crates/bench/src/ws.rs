//! MQTT over WebSocket for the load generator (`--ws-path`): the HTTP upgrade with the
//! `mqtt` subprotocol, then binary frames both ways, kept as plain byte buffers so a
//! WebSocket connection runs in the client's one-task non-blocking loop like a plain
//! one (and over TLS with `--tls-ca`: wss). The frame format (RFC 6455 §5.2) is
//! written here: tungstenite's `WebSocket` wants to own a blocking-style stream and
//! drive reads itself; its handshake helpers make and check the keys.

use bytes::{Buf, BufMut, BytesMut};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Frames this client understands.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Why a WebSocket connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The upgrade was not accepted as MQTT over WebSocket.
    #[error("websocket upgrade refused: {0}")]
    Upgrade(String),
    /// A frame this client may not receive.
    #[error("websocket: {0}")]
    Frame(&'static str),
    /// The broker closed the WebSocket.
    #[error("websocket closed by the broker")]
    Closed,
}

/// One connection's WebSocket state: frames read and not yet decoded, frames encoded
/// and not yet written.
#[derive(Debug)]
pub struct Ws {
    /// Bytes from the transport, not yet a whole frame.
    pub raw: BytesMut,
    /// Encoded frames waiting for the transport.
    pub out: BytesMut,
    /// The `Sec-WebSocket-Key` sent.
    key: String,
    /// Masking keys: a counter stirred per frame (a load generator's frames need not
    /// be unpredictable to anyone).
    mask: u32,
}

impl Ws {
    /// The upgrade request for `path` on `host`, queued in `out`.
    pub fn start(host: &str, path: &str) -> Ws {
        let key = generate_key();
        let mut out = BytesMut::new();
        out.put_slice(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            )
            .as_bytes(),
        );
        Ws {
            raw: BytesMut::new(),
            out,
            key,
            mask: 0x9e37_79b9,
        }
    }

    /// Checks the upgrade response once `raw` holds all of it: `Ok(true)` when
    /// accepted (what follows it stays in `raw`), `Ok(false)` when more is needed.
    pub fn accepted(&mut self) -> Result<bool, WsError> {
        let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(false);
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).to_string();
        self.raw.advance(end + 4);
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(WsError::Upgrade(status.to_string()));
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if header("sec-websocket-accept") != Some(derive_accept_key(self.key.as_bytes())) {
            return Err(WsError::Upgrade("wrong Sec-WebSocket-Accept".into()));
        }
        if header("sec-websocket-protocol").as_deref() != Some("mqtt") {
            return Err(WsError::Upgrade("subprotocol mqtt not selected".into()));
        }
        Ok(true)
    }

    /// Moves the payloads of the whole frames in `raw` to `plain`; answers pings.
    pub fn decode(&mut self, plain: &mut BytesMut) -> Result<(), WsError> {
        loop {
            if self.raw.len() < 2 {
                return Ok(());
            }
            let (b0, b1) = (self.raw[0], self.raw[1]);
            if b1 & 0x80 != 0 {
                return Err(WsError::Frame("masked frame from the server"));
            }
            let (len, header) = match b1 & 0x7f {
                126 if self.raw.len() >= 4 => {
                    (u16::from_be_bytes([self.raw[2], self.raw[3]]) as usize, 4)
                }
                127 if self.raw.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&self.raw[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => return Ok(()),
                n => (n as usize, 2),
            };
            if self.raw.len() < header + len {
                self.raw.reserve(header + len - self.raw.len());
                return Ok(());
            }
            self.raw.advance(header);
            let payload = self.raw.split_to(len);
            match b0 & 0x0f {
                BINARY | CONTINUATION => plain.put_slice(&payload),
                PING => self.frame(PONG, &payload),
                PONG => {}
                CLOSE => return Err(WsError::Closed),
                TEXT => return Err(WsError::Frame("text frame (MQTT travels in binary)")),
                _ => return Err(WsError::Frame("unknown opcode")),
            }
        }
    }

    /// Wraps everything in `plain` in one binary frame, queued in `out`.
    pub fn encode(&mut self, plain: &mut BytesMut) {
        if !plain.is_empty() {
            self.frame(BINARY, plain);
            plain.clear();
        }
    }

    /// Queues one masked frame (FIN set).
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.out.put_u8(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.out.put_u8(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                self.out.put_u8(0x80 | 126);
                self.out.put_u16(n as u16);
            }
            n => {
                self.out.put_u8(0x80 | 127);
                self.out.put_u64(n as u64);
            }
        }
        self.mask = self.mask.rotate_left(5) ^ 0x2545_f491;
        let mask = self.mask.to_be_bytes();
        self.out.put_slice(&mask);
        self.out.reserve(payload.len());
        for (i, b) in payload.iter().enumerate() {
            self.out.put_u8(b ^ mask[i % 4]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A frame as the broker sends it (unmasked), split anywhere, gives its payload
    // once whole; a ping is answered with a masked pong of the same payload.
    #[test]
    fn frames_are_decoded_when_whole_and_pings_answered() {
        let mut ws = Ws::start("h", "/mqtt");
        ws.out.clear();
        let mut plain = BytesMut::new();
        let frame = [0x82, 3, b'a', b'b', b'c', 0x89, 1, b'p'];
        ws.raw.put_slice(&frame[..4]);
        ws.decode(&mut plain).unwrap();
        assert!(plain.is_empty());
        ws.raw.put_slice(&frame[4..]);
        ws.decode(&mut plain).unwrap();
        assert_eq!(&plain[..], b"abc");
        assert_eq!(ws.out[0], 0x80 | PONG);
        assert_eq!(ws.out[1], 0x80 | 1, "masked, length 1");
        let mask = [ws.out[2], ws.out[3], ws.out[4], ws.out[5]];
        assert_eq!(ws.out[6] ^ mask[0], b'p');
        ws.raw.put_slice(&[0x81, 0]);
        assert!(ws.decode(&mut plain).is_err(), "text frames are refused");
    }

    #[test]
    fn encoded_frames_are_masked_binary_frames() {
        let mut ws = Ws::start("h", "/mqtt");
        ws.out.clear();
        let mut plain = BytesMut::from(&[7u8; 300][..]);
        ws.encode(&mut plain);
        assert!(plain.is_empty());
        assert_eq!(ws.out[0], 0x82);
        assert_eq!(ws.out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([ws.out[2], ws.out[3]]), 300);
        let mask = [ws.out[4], ws.out[5], ws.out[6], ws.out[7]];
        assert!(ws.out[8..]
            .iter()
            .enumerate()
            .all(|(i, b)| b ^ mask[i % 4] == 7));
    }
}
