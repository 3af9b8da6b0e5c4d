//! Server -> client packets of the raw codec: [`Packet`] and [`decode`], which
//! reports anything malformed the server sent as a [`DecodeError`].

use super::*;

#[derive(Clone, Debug, PartialEq)]
pub struct Connack {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub pid: u16,
    pub reason: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Suback {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    Connack(Connack),
    Publish(Publish),
    Puback(Ack),
    Pubrec(Ack),
    Pubrel(Ack),
    Pubcomp(Ack),
    Suback(Suback),
    Unsuback(Suback),
    Pingresp,
    /// Reason code (0 when omitted) and properties.
    Disconnect(u8, Props),
    Auth(u8, Props),
    Other {
        first: u8,
        body: Vec<u8>,
    },
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connack(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Puback(_) => "PUBACK",
            Packet::Pubrec(_) => "PUBREC",
            Packet::Pubrel(_) => "PUBREL",
            Packet::Pubcomp(_) => "PUBCOMP",
            Packet::Suback(_) => "SUBACK",
            Packet::Unsuback(_) => "UNSUBACK",
            Packet::Pingresp => "PINGRESP",
            Packet::Disconnect(..) => "DISCONNECT",
            Packet::Auth(..) => "AUTH",
            Packet::Other { .. } => "other",
        }
    }
}

/// Why decoding a server packet failed: the server sent something malformed.
#[derive(Debug)]
pub struct DecodeError(pub String);

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.i
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self
            .b
            .get(self.i)
            .ok_or_else(|| DecodeError("truncated".into()))?;
        self.i += 1;
        Ok(v)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError(format!(
                "truncated: need {n}, have {}",
                self.left()
            )));
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut n = 0u32;
        for shift in 0..4 {
            let b = self.u8()?;
            n |= ((b & 0x7f) as u32) << (7 * shift);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError("varint longer than 4 bytes".into()))
    }
    fn bin(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bin()?).map_err(|_| DecodeError("invalid UTF-8 from server".into()))
    }
    fn props(&mut self) -> Result<Props, DecodeError> {
        let len = self.varint()? as usize;
        let end = self.i + len;
        if end > self.b.len() {
            return Err(DecodeError("property length past end".into()));
        }
        let mut p = Props::new();
        while self.i < end {
            let id = self.varint()? as u8;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    PropValue::Byte(self.u8()?)
                }
                0x13 | 0x21 | 0x22 | 0x23 => PropValue::U16(self.u16()?),
                0x02 | 0x11 | 0x18 | 0x27 => PropValue::U32(self.u32()?),
                0x0B => PropValue::VarInt(self.varint()?),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(self.str()?),
                0x09 | 0x16 => PropValue::Bin(self.bin()?),
                0x26 => PropValue::Pair(self.str()?, self.str()?),
                other => return Err(DecodeError(format!("unknown property id {other:#x}"))),
            };
            p.0.push((id, v));
        }
        if self.i != end {
            return Err(DecodeError("property overran its length".into()));
        }
        Ok(p)
    }
}

/// Decode one complete server packet (`first` byte and body).
pub fn decode(v: Version, first: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    let mut c = Cur { b: body, i: 0 };
    let ptype = first >> 4;
    let flags = first & 0x0f;
    let ack = |c: &mut Cur<'_>| -> Result<Ack, DecodeError> {
        let pid = c.u16()?;
        let mut reason = 0;
        let mut props = Props::new();
        if v.is_v5() && c.left() > 0 {
            reason = c.u8()?;
            if c.left() > 0 {
                props = c.props()?;
            }
        }
        Ok(Ack { pid, reason, props })
    };
    let p = match ptype {
        CONNACK => {
            let f = c.u8()?;
            let code = c.u8()?;
            let props = if v.is_v5() && c.left() > 0 {
                c.props()?
            } else {
                Props::new()
            };
            Packet::Connack(Connack {
                session_present: f & 1 == 1,
                code,
                props,
            })
        }
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            let topic = c.str()?;
            let pid = if qos > 0 { c.u16()? } else { 0 };
            let props = if v.is_v5() { c.props()? } else { Props::new() };
            Packet::Publish(Publish {
                topic,
                payload: c.take(c.left())?.to_vec(),
                qos,
                retain: flags & 1 == 1,
                dup: flags & 8 == 8,
                pid,
                props,
            })
        }
        PUBACK => Packet::Puback(ack(&mut c)?),
        PUBREC => Packet::Pubrec(ack(&mut c)?),
        PUBREL => Packet::Pubrel(ack(&mut c)?),
        PUBCOMP => Packet::Pubcomp(ack(&mut c)?),
        SUBACK | UNSUBACK => {
            let pid = c.u16()?;
            let props = if v.is_v5() { c.props()? } else { Props::new() };
            let s = Suback {
                pid,
                codes: c.take(c.left())?.to_vec(),
                props,
            };
            if ptype == SUBACK {
                Packet::Suback(s)
            } else {
                Packet::Unsuback(s)
            }
        }
        PINGRESP => Packet::Pingresp,
        DISCONNECT | AUTH => {
            let reason = if c.left() > 0 { c.u8()? } else { 0 };
            let props = if c.left() > 0 {
                c.props()?
            } else {
                Props::new()
            };
            if ptype == DISCONNECT {
                Packet::Disconnect(reason, props)
            } else {
                Packet::Auth(reason, props)
            }
        }
        _ => Packet::Other {
            first,
            body: body.to_vec(),
        },
    };
    if c.left() != 0 {
        return Err(DecodeError(format!(
            "{} left {} trailing bytes",
            p.name(),
            c.left()
        )));
    }
    Ok(p)
}
