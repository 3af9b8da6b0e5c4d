//! MQTT 5 properties for the raw codec: [`PropValue`] and [`Props`], an ordered list
//! that may hold duplicates (for malformed-packet tests), with its encoder.

use super::*;

#[derive(Clone, Debug, PartialEq)]
pub enum PropValue {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// An ordered list of MQTT 5 properties (duplicates allowed, for tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Props(pub Vec<(u8, PropValue)>);

impl Props {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Self {
        self.0.push((id, PropValue::Byte(v)));
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Self {
        self.0.push((id, PropValue::U16(v)));
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Self {
        self.0.push((id, PropValue::U32(v)));
        self
    }
    pub fn varint(mut self, id: u8, v: u32) -> Self {
        self.0.push((id, PropValue::VarInt(v)));
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Self {
        self.0.push((id, PropValue::Str(v.into())));
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Self {
        self.0.push((id, PropValue::Bin(v.into())));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Self {
        self.0
            .push((prop::USER_PROPERTY, PropValue::Pair(k.into(), v.into())));
        self
    }

    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }
    pub fn get_u32(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            PropValue::U32(v) | PropValue::VarInt(v) => Some(*v),
            PropValue::U16(v) => Some(*v as u32),
            PropValue::Byte(v) => Some(*v as u32),
            _ => None,
        }
    }
    pub fn get_str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            PropValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn get_bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id)? {
            PropValue::Bin(b) => Some(b),
            _ => None,
        }
    }
    /// All values of a repeatable numeric property (subscription identifiers).
    pub fn all_u32(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::VarInt(n) | PropValue::U32(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Encoded with its variable-length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, v) in &self.0 {
            body.extend(varint(*id as u32));
            match v {
                PropValue::Byte(b) => body.push(*b),
                PropValue::U16(n) => put_u16(&mut body, *n),
                PropValue::U32(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::VarInt(n) => body.extend(varint(*n)),
                PropValue::Str(s) => put_str(&mut body, s),
                PropValue::Bin(b) => put_str(&mut body, b),
                PropValue::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        let mut out = varint(body.len() as u32);
        out.extend(body);
        out
    }
}
