//! Encoding primitives behind one trait, [`Out`], with two implementations: a
//! [`Sizer`] that counts bytes and checks field limits, and `BytesMut`, which writes.
//! Every packet body is described once, generically, and run through both.

use bytes::{BufMut, BytesMut};

use super::read::VARINT_MAX;
use super::EncodeError;

/// The number of bytes the Variable Byte Integer `v` takes (§1.5.5).
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `v` as a minimal Variable Byte Integer [MQTT-1.5.5-1]. `v` must be at most
/// 268,435,455 (checked by [`Sizer`]).
pub(crate) fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// A destination for encoded fields.
pub(crate) trait Out {
    /// A one-byte integer.
    fn u8(&mut self, v: u8);
    /// A two-byte big-endian integer.
    fn u16(&mut self, v: u16);
    /// A four-byte big-endian integer.
    fn u32(&mut self, v: u32);
    /// A Variable Byte Integer.
    fn varint(&mut self, v: usize);
    /// Length-prefixed UTF-8 string; `what` names it if too long.
    fn str(&mut self, v: &str, what: &'static str);
    /// Length-prefixed binary data; `what` names it if too long.
    fn bin(&mut self, v: &[u8], what: &'static str);
    /// Raw bytes (payloads, pre-encoded blocks).
    fn raw(&mut self, v: &[u8]);

    /// A one-byte property.
    fn p_u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.u8(id);
            self.u8(v);
        }
    }
    /// A boolean property (one byte, 0 or 1).
    fn p_bool(&mut self, id: u8, v: Option<bool>) {
        self.p_u8(id, v.map(u8::from));
    }
    /// A two-byte integer property.
    fn p_u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.u8(id);
            self.u16(v);
        }
    }
    /// A four-byte integer property.
    fn p_u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.u8(id);
            self.u32(v);
        }
    }
    /// A Variable Byte Integer property.
    fn p_varint(&mut self, id: u8, v: u32) {
        self.u8(id);
        self.varint(v as usize);
    }
    /// A string property.
    fn p_str(&mut self, id: u8, v: Option<&str>, what: &'static str) {
        if let Some(v) = v {
            self.u8(id);
            self.str(v, what);
        }
    }
    /// A binary property.
    fn p_bin(&mut self, id: u8, v: Option<&[u8]>, what: &'static str) {
        if let Some(v) = v {
            self.u8(id);
            self.bin(v, what);
        }
    }
    /// User Property (0x26) entries, in order.
    fn p_users(&mut self, v: &[(String, String)]) {
        for (k, val) in v {
            self.u8(0x26);
            self.str(k, "user property name");
            self.str(val, "user property value");
        }
    }
}

/// Counts the bytes an encoding takes and records the first limit it breaks.
#[derive(Debug, Default)]
pub(crate) struct Sizer {
    /// Bytes counted so far.
    pub(crate) len: usize,
    /// The first error met, if any.
    pub(crate) err: Option<EncodeError>,
}

impl Sizer {
    fn fail(&mut self, e: EncodeError) {
        if self.err.is_none() {
            self.err = Some(e);
        }
    }

    fn field(&mut self, n: usize, what: &'static str) {
        if n > usize::from(u16::MAX) {
            self.fail(EncodeError::FieldTooLong(what));
        }
        self.len += 2 + n;
    }
}

impl Out for Sizer {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn varint(&mut self, v: usize) {
        if v > VARINT_MAX as usize {
            self.fail(EncodeError::TooLarge);
        }
        self.len += varint_len(v);
    }
    fn str(&mut self, v: &str, what: &'static str) {
        self.field(v.len(), what);
    }
    fn bin(&mut self, v: &[u8], what: &'static str) {
        self.field(v.len(), what);
    }
    fn raw(&mut self, v: &[u8]) {
        self.len += v.len();
    }
}

impl Out for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn varint(&mut self, v: usize) {
        put_varint(self, v);
    }
    fn str(&mut self, v: &str, _: &'static str) {
        self.put_u16(v.len() as u16);
        self.put_slice(v.as_bytes());
    }
    fn bin(&mut self, v: &[u8], _: &'static str) {
        self.put_u16(v.len() as u16);
        self.put_slice(v);
    }
    fn raw(&mut self, v: &[u8]) {
        self.put_slice(v);
    }
}

/// A set of properties that can describe itself to an [`Out`].
pub(crate) trait PropSet {
    /// Emits every present property (identifier and value).
    fn emit<O: Out>(&self, o: &mut O);

    /// The byte length of the properties, without the Property Length prefix.
    fn props_len(&self) -> usize {
        let mut s = Sizer::default();
        self.emit(&mut s);
        s.len
    }
}

/// Emits a Property Length followed by the properties of `p`.
pub(crate) fn props_block<O: Out, P: PropSet>(o: &mut O, p: &P) {
    o.varint(p.props_len());
    p.emit(o);
}
