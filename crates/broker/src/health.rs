//! The node's health, as the admin listener's `GET /health` reports it (the HTTP
//! server is the `admin` crate's).
//!
//! `200 {"status":"ok",...}` while the node serves normally, `503
//! {"status":"unhealthy",...}` while a [`HealthProbe`] says it cannot (in a cluster:
//! Redis unreachable, `"redis":"unreachable since <RFC 3339 time>"`), and `503
//! {"status":"stopping"}` once shutdown began. A single node without a cluster is
//! healthy whenever it serves.

use std::fmt::{Debug, Write as _};

use crate::broker::Broker;
use crate::metrics::Metrics;

/// What a part of the node (the cluster) says about its health.
#[derive(Debug, Clone, Default)]
pub struct HealthReport {
    /// Whether the node can do its job (`false` turns `/health` into a 503).
    pub healthy: bool,
    /// Extra members of the JSON object: name and value, the value already encoded as
    /// JSON (use [`json_string`] for text).
    pub fields: Vec<(String, String)>,
}

/// Something the health endpoint asks before answering (the cluster node).
pub trait HealthProbe: Send + Sync + Debug + 'static {
    /// The current state. (Its metrics are a collector registered in the broker's
    /// [`Metrics`](crate::metrics::Metrics).)
    fn report(&self) -> HealthReport;
}

/// The status code and JSON body of `GET /health`.
pub fn health(broker: &Broker, probe: Option<&dyn HealthProbe>, stopping: bool) -> (u16, String) {
    let report = probe.map(|p| p.report());
    let healthy = report.as_ref().is_none_or(|r| r.healthy);
    let status = if stopping {
        "stopping"
    } else if broker.is_draining() {
        "draining"
    } else if healthy {
        "ok"
    } else {
        "unhealthy"
    };
    let mut body = format!("{{\"status\":{}", json_string(status));
    let mode = broker.peers().mode();
    let _ = write!(body, ",\"mode\":{}", json_string(mode));
    let clients = Metrics::get(&broker.metrics.clients_connected);
    let _ = write!(body, ",\"clients\":{clients}");
    for (name, value) in report.iter().flat_map(|r| &r.fields) {
        let _ = write!(body, ",{}:{value}", json_string(name));
    }
    body.push_str("}\n");
    (if status == "ok" { 200 } else { 503 }, body)
}

/// `s` as a JSON string literal (quotes included).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::config::Config;

    #[derive(Debug)]
    struct Down;

    impl HealthProbe for Down {
        fn report(&self) -> HealthReport {
            HealthReport {
                healthy: false,
                fields: vec![("redis".into(), json_string("unreachable since x"))],
            }
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn single_node_is_healthy_a_failing_probe_is_503_stopping_is_503() {
        let config = Config::default();
        let auth = Authenticator::load(&config).unwrap();
        let broker = Broker::new(config, auth);
        assert_eq!(
            health(&broker, None, false),
            (
                200,
                "{\"status\":\"ok\",\"mode\":\"single\",\"clients\":0}\n".into()
            )
        );
        let (code, body) = health(&broker, Some(&Down), false);
        assert_eq!(code, 503);
        assert!(body.contains("\"status\":\"unhealthy\""), "{body}");
        assert!(body.contains("\"redis\":\"unreachable since x\""), "{body}");
        let (code, body) = health(&broker, None, true);
        assert_eq!(code, 503);
        assert!(body.contains("\"status\":\"stopping\""), "{body}");
    }
}
