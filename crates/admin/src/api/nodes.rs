//! `GET /api/v1/nodes`: every broker of the cluster with its health and counters.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ask_peers, authorization, ApiResult};
use crate::server::App;

/// Query of `GET /nodes`.
#[derive(Debug, Deserialize)]
pub struct NodesQuery {
    #[serde(default)]
    local: bool,
}

/// `GET /nodes`: this node as it knows itself (health, counters), then every other
/// broker gossip lists. On a cluster each of them is asked for its own entry
/// (`local=true`), so every node shows its health and counters; one that does not
/// answer keeps what gossip says of it, with the reason in `error`. The dashboard's
/// overview polls this.
pub async fn nodes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<NodesQuery>,
) -> ApiResult {
    let (code, health) = app.health();
    let health: Value = serde_json::from_str(&health).unwrap_or(Value::Null);
    let metrics = app.broker.metrics();
    let mut me = json!({
        "node_id": app.node_id(),
        "self": true,
        "status": health.get("status").cloned().unwrap_or(Value::Null),
        "healthy": code == 200,
        "version": env!("CARGO_PKG_VERSION"),
        "mode": health.get("mode").cloned().unwrap_or(Value::Null),
        "clients": health.get("clients").cloned().unwrap_or(Value::Null),
        "sessions": app.broker.registry().len(),
        "retained": app.broker.retained().len(),
        "messages_received": metrics.received_total(),
        "messages_sent": metrics.sent_total(),
        "uptime_secs": app.started.elapsed().as_secs(),
        "admin": app.addr.to_string(),
    });
    if let Some(redis) = health.get("redis") {
        me["redis"] = redis.clone();
    }
    let mut nodes = vec![me];
    let Some(node) = app.node.as_ref().filter(|_| !q.local) else {
        return Ok(Json(json!({ "nodes": nodes })));
    };
    let mut answers = ask_peers(
        &app,
        "GET",
        "/api/v1/nodes?local=true".to_string(),
        authorization(&headers),
    )
    .await;
    for m in node.members() {
        if m.meta.role != membership::Role::Broker {
            continue;
        }
        let mut entry = json!({
            "node_id": m.node_id,
            "self": false,
            "status": "alive",
            "clients": m.meta.connections,
            "admin": m.meta.admin.map(|a| a.to_string()),
            "source": "gossip",
        });
        let answer = answers
            .iter_mut()
            .find(|(id, _)| *id == m.node_id)
            .map(|(_, a)| std::mem::replace(a, Err(String::new())));
        match answer {
            Some(Ok((200, v))) => {
                if let Some(own) = v["nodes"].get(0) {
                    entry = own.clone();
                    entry["self"] = json!(false);
                    entry["source"] = json!("node");
                }
            }
            Some(Ok((code, v))) => {
                entry["error"] = json!(format!(
                    "HTTP {code}: {}",
                    v["reason"].as_str().unwrap_or("")
                ))
            }
            Some(Err(e)) => entry["error"] = json!(e),
            None => {}
        }
        entry["mqtt"] = json!(m
            .meta
            .mqtt
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>());
        entry["gossip"] = json!(m.gossip_addr.to_string());
        nodes.push(entry);
    }
    Ok(Json(json!({ "nodes": nodes })))
}
