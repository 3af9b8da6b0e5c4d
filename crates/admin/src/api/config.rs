//! `GET /api/v1/config` (the configuration this node runs with, secrets redacted)
//! and `GET /api/v1/routes?topic=` (where this node's route table sends a message).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult};
use crate::server::App;

/// `GET /config`: every setting in force on this node, as the configuration file
/// would spell it (defaults filled in), with the Redis URL's password and the
/// gossip key shown as `***`.
pub async fn config(State(app): State<Arc<App>>) -> ApiResult {
    let mut v = serde_json::to_value(app.broker.config()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("configuration not serialisable: {e}"),
        )
    })?;
    redact(&mut v);
    Ok(Json(json!({"node": app.node_id(), "config": v})))
}

/// Hides the secrets a configuration holds: passwords in Redis URLs and the
/// gossip key. File paths (certificates, keys, password files) are not secrets.
fn redact(v: &mut Value) {
    if let Some(url) = v["redis"].as_str() {
        v["redis"] = json!(cluster::conn::redact(url));
    }
    if !v["cluster_key"].is_null() {
        v["cluster_key"] = json!("***");
    }
}

/// Query of `GET /routes`.
#[derive(Debug, Deserialize)]
pub struct RoutesQuery {
    topic: String,
}

/// `GET /routes?topic=`: the other nodes this node would forward a message on
/// `topic` to (by run, `<node>@<generation>`, with the shared groups each serves
/// for it) and the shared groups it serves itself. A single node has no routes.
pub async fn routes(
    State(app): State<Arc<App>>,
    q: Result<Query<RoutesQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    super::topic_name(&q.topic)?;
    let Some(node) = &app.node else {
        return Ok(Json(
            json!({"node": app.node_id(), "topic": q.topic, "remote": [], "local_groups": []}),
        ));
    };
    let placement = node.routes_for(&q.topic);
    let group = |(g, f): &(String, String)| json!({"group": g, "filter": f});
    let mut remote: Vec<Value> = placement
        .remote
        .iter()
        .map(|(run, groups)| {
            json!({"node": cluster::node::node_of(run), "run": run, "groups": groups.iter().map(group).collect::<Vec<_>>()})
        })
        .collect();
    remote.sort_by(|a, b| a["run"].as_str().cmp(&b["run"].as_str()));
    Ok(Json(json!({
        "node": app.node_id(),
        "topic": q.topic,
        "remote": remote,
        "local_groups": placement.local_groups.iter().map(group).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_password_and_the_gossip_key_are_hidden() {
        let mut v = json!({
            "redis": "redis+sentinel://astramq:s3cret@s1:26379,s2:26379/mymaster",
            "cluster_key": "gossip-secret",
            "tls_key": "/etc/astramq/tls.key",
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("gossip-secret"),
            "{text}"
        );
        assert_eq!(
            v["redis"],
            "redis+sentinel://astramq:***@s1:26379,s2:26379/mymaster"
        );
        assert_eq!(v["cluster_key"], "***");
        assert_eq!(v["tls_key"], "/etc/astramq/tls.key");
    }
}
