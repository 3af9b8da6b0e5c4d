//! Decoding primitives over a borrowed byte slice: integers, Variable Byte Integers,
//! UTF-8 strings and binary data, each checked against the bytes actually present.

use bytes::Bytes;

use super::DecodeError;

type Result<T> = std::result::Result<T, DecodeError>;

/// The largest value a Variable Byte Integer can carry (spec §1.5.5).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Outcome of reading a Variable Byte Integer from the front of a buffer that may be
/// incomplete (the fixed header's Remaining Length).
pub(crate) enum VarintPrefix {
    /// Not enough bytes yet.
    Incomplete,
    /// The value and how many bytes encoded it.
    Value(u32, usize),
}

/// Reads a Variable Byte Integer from the front of `buf`, which may be incomplete.
/// At most 4 bytes; a 5th continuation byte is malformed [MQTT-1.5.5-1] (v5 §1.5.5,
/// 3.1.1 §2.2.3), and so is a non-minimal encoding (a last byte of 0 after a
/// continuation), since the encoded value MUST use the minimum number of bytes
/// [MQTT-1.5.5-1].
pub(crate) fn varint_prefix(buf: &[u8]) -> Result<VarintPrefix> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(VarintPrefix::Incomplete);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::Malformed("non-minimal variable byte integer"));
            }
            return Ok(VarintPrefix::Value(value, i + 1));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// A cursor over the body of one complete packet. Every read checks the bytes left
/// first, so a truncated field is reported as malformed and nothing is allocated by
/// a length that the buffer does not back.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether everything has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(DecodeError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A one-byte integer.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian two-byte integer (§1.5.2).
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian four-byte integer (§1.5.3).
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer (§1.5.5) that must be complete within the packet.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32> {
        match varint_prefix(self.buf)? {
            VarintPrefix::Incomplete => Err(DecodeError::Malformed(what)),
            VarintPrefix::Value(v, n) => {
                self.buf = &self.buf[n..];
                Ok(v)
            }
        }
    }

    /// Two-byte length followed by that many bytes, borrowed.
    pub(crate) fn bin_slice(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// Binary Data (§1.5.6), copied out of the read buffer.
    pub(crate) fn bin(&mut self, what: &'static str) -> Result<Bytes> {
        Ok(Bytes::copy_from_slice(self.bin_slice(what)?))
    }

    /// A UTF-8 Encoded String (§1.5.4), borrowed. Ill-formed UTF-8 (including
    /// surrogates) is malformed [MQTT-1.5.4-1], and so is U+0000 [MQTT-1.5.4-2].
    pub(crate) fn str_ref(&mut self, what: &'static str) -> Result<&'a str> {
        let raw = self.bin_slice(what)?;
        let s =
            std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
        // [MQTT-1.5.4-2]: a string MUST NOT include U+0000.
        if raw.contains(&0) {
            return Err(DecodeError::Malformed("U+0000 in a string"));
        }
        Ok(s)
    }

    /// A UTF-8 Encoded String (§1.5.4), owned; see [`Reader::str_ref`].
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String> {
        self.str_ref(what).map(str::to_owned)
    }

    /// A UTF-8 String Pair (§1.5.7).
    pub(crate) fn string_pair(&mut self, what: &'static str) -> Result<(String, String)> {
        let k = self.string(what)?;
        let v = self.string(what)?;
        Ok((k, v))
    }

    /// Fails if bytes remain: the packet is longer than its fields.
    pub(crate) fn finish(&self, what: &'static str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(what))
        }
    }
}
