//! Client -> server packets of the raw codec: CONNECT (with its will), PUBLISH, the
//! acknowledgements, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT and PINGREQ, each as plain
//! bytes a test may edit.

use super::*;

#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
            props: Props::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Props,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    pub fn new(version: Version, client_id: &str) -> Connect {
        Connect {
            version,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            props: Props::new(),
            will: None,
            username: None,
            password: None,
        }
    }
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }
    pub fn props(mut self, props: Props) -> Self {
        self.props = props;
        self
    }
    /// v5 Session Expiry Interval (ignored for v3).
    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.props = self.props.u32(prop::SESSION_EXPIRY_INTERVAL, secs);
        self
    }
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
    pub fn credentials(mut self, user: &str, pass: Option<&str>) -> Self {
        self.username = Some(user.into());
        self.password = pass.map(|p| p.as_bytes().to_vec());
        self
    }

    /// A client that must resume its session after reconnecting: v3 clean
    /// session 0, v5 clean start 0 with a session expiry of `expiry` seconds.
    pub fn persistent(v: Version, id: &str, clean: bool, expiry: u32) -> Connect {
        let c = Connect::new(v, id).clean(clean);
        if v.is_v5() {
            c.session_expiry(expiry)
        } else {
            c
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let v = self.version;
        let mut b = Vec::new();
        put_str(&mut b, if v == Version::V31 { "MQIsdp" } else { "MQTT" });
        b.push(v.level());
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        b.push(flags);
        put_u16(&mut b, self.keep_alive);
        if v.is_v5() {
            b.extend(self.props.encode());
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if v.is_v5() {
                b.extend(w.props.encode());
            }
            put_str(&mut b, &w.topic);
            put_str(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_str(&mut b, p);
        }
        frame(CONNECT << 4, &b)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub props: Props,
}

impl Publish {
    pub fn new(topic: &str, payload: &[u8], qos: u8) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            dup: false,
            pid: 0,
            props: Props::new(),
        }
    }
    pub fn retain(mut self, r: bool) -> Self {
        self.retain = r;
        self
    }
    pub fn props(mut self, p: Props) -> Self {
        self.props = p;
        self
    }
    pub fn pid(mut self, pid: u16) -> Self {
        self.pid = pid;
        self
    }
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn encode(&self, v: Version) -> Vec<u8> {
        let mut first = PUBLISH << 4 | (self.qos << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        let mut b = Vec::new();
        put_str(&mut b, &self.topic);
        if self.qos > 0 {
            put_u16(&mut b, self.pid);
        }
        if v.is_v5() {
            b.extend(self.props.encode());
        }
        b.extend_from_slice(&self.payload);
        frame(first, &b)
    }
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP encoder (reason code omitted when 0, as
/// clients usually do).
pub fn encode_ack(ptype: u8, pid: u16, reason: u8, v: Version) -> Vec<u8> {
    let first = ptype << 4 | if ptype == PUBREL { 0x02 } else { 0 };
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() && reason != 0 {
        b.push(reason);
    }
    frame(first, &b)
}

/// Subscription options byte: QoS plus v5 flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

impl SubOpts {
    pub fn qos(qos: u8) -> SubOpts {
        SubOpts {
            qos,
            ..Default::default()
        }
    }
    pub fn byte(self) -> u8 {
        self.qos
            | if self.no_local { 0x04 } else { 0 }
            | if self.retain_as_published { 0x08 } else { 0 }
            | (self.retain_handling << 4)
    }
}

pub fn encode_subscribe(
    v: Version,
    pid: u16,
    props: &Props,
    filters: &[(&str, SubOpts)],
) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() {
        b.extend(props.encode());
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(o.byte());
    }
    frame(SUBSCRIBE << 4 | 0x02, &b)
}

pub fn encode_unsubscribe(v: Version, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    put_u16(&mut b, pid);
    if v.is_v5() {
        b.extend(Props::new().encode());
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(UNSUBSCRIBE << 4 | 0x02, &b)
}

pub fn encode_disconnect(v: Version, reason: u8, props: &Props) -> Vec<u8> {
    if !v.is_v5() || (reason == 0 && props.0.is_empty()) {
        return vec![DISCONNECT << 4, 0];
    }
    let mut b = vec![reason];
    b.extend(props.encode());
    frame(DISCONNECT << 4, &b)
}

pub fn encode_pingreq() -> Vec<u8> {
    vec![PINGREQ << 4, 0]
}
