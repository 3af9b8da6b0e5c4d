//! One client id on two nodes (invariant 2): whether a connection is live, and what
//! a connection whose client id was taken over elsewhere does once its node is back
//! ([`Fate`]). (`try_connect` is in `common/raw/client.rs`.)

use super::*;

/// Whether the connection answers PINGREQ (live); false once the server closed it.
/// Records DISCONNECT reasons; a PUBLISH on it is returned as an error (a connection
/// that lost its id must not be delivered to).
pub async fn answers_ping(c: &mut RawClient, disconnects: &mut Vec<u8>) -> Result<bool, String> {
    c.send_lossy(&encode_pingreq()).await;
    loop {
        match c.read(T).await {
            Ok(Packet::Pingresp) => return Ok(true),
            Ok(Packet::Disconnect(r, _)) => disconnects.push(r),
            Ok(Packet::Publish(p)) => return Err(format!("PUBLISH delivered: {p:?}")),
            Ok(_) => {}
            Err(ReadError::Timeout) => {
                return Err(format!("no PINGRESP and no close within {T:?}"))
            }
            Err(_) => return Ok(false),
        }
    }
}

/// What a connection whose client id was taken over elsewhere did once its node came
/// back, watched for `T` after a PINGREQ.
pub struct Fate {
    pub answered_ping: bool,
    pub publishes: usize,
    pub disconnects: Vec<u8>,
    /// None: still open after `T`.
    pub closed_after: Option<Duration>,
}

impl Fate {
    /// Closed (after at most a DISCONNECT 0x8E), never answered, never delivered to.
    pub fn ok(&self) -> bool {
        !self.answered_ping
            && self.publishes == 0
            && self.closed_after.is_some()
            && self
                .disconnects
                .iter()
                .all(|&r| r == rc::SESSION_TAKEN_OVER)
    }

    pub fn describe(&self) -> String {
        format!(
            "answered PINGREQ: {}, PUBLISH delivered: {}, DISCONNECT reasons: {:02x?}, {}",
            self.answered_ping,
            self.publishes,
            self.disconnects,
            match self.closed_after {
                Some(d) => format!("closed after {} ms", d.as_millis()),
                None => format!("still open after {} ms", T.as_millis()),
            }
        )
    }
}

pub async fn stale_fate(c: &mut RawClient) -> Fate {
    let start = Instant::now();
    let mut f = Fate {
        answered_ping: false,
        publishes: 0,
        disconnects: Vec::new(),
        closed_after: None,
    };
    c.send_lossy(&encode_pingreq()).await;
    loop {
        let left = T.saturating_sub(start.elapsed());
        match c.read(left).await {
            Ok(Packet::Pingresp) => f.answered_ping = true,
            Ok(Packet::Disconnect(r, _)) => f.disconnects.push(r),
            Ok(Packet::Publish(_)) => f.publishes += 1,
            Ok(_) => {}
            Err(ReadError::Timeout) => return f,
            Err(_) => {
                f.closed_after = Some(start.elapsed());
                return f;
            }
        }
    }
}
