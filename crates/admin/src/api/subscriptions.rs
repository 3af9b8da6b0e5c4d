//! `GET /api/v1/subscriptions?topic=`: who would receive a message published on a
//! topic — every matching subscription on every node, with its options and whether
//! its session is connected. The question an operator asks when a device does not
//! get its messages.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ask_peers, authorization, peer_error, ApiResult};
use crate::server::App;

/// Most subscriptions one answer lists (per node, and merged).
const MAX_LISTED: usize = 1000;

/// Query of `GET /subscriptions`.
#[derive(Debug, Deserialize)]
pub struct SubscriptionsQuery {
    topic: String,
    #[serde(default)]
    local: bool,
}

/// `GET /subscriptions?topic=`: the subscriptions on this node whose filter matches
/// `topic` (a topic name, not a filter), then, unless `local=true`, those of every
/// other broker; `truncated` when more than 1,000 matched.
pub async fn subscriptions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<SubscriptionsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    super::topic_name(&q.topic)?;
    let mine = app.broker.subscriptions_matching(&q.topic);
    let mut truncated = mine.len() > MAX_LISTED;
    let mut list: Vec<Value> = mine
        .iter()
        .take(MAX_LISTED)
        .map(|m| {
            json!({
                "node": app.node_id(),
                "client_id": &*m.client_id,
                "filter": match &m.group {
                    Some(g) => format!("$share/{g}/{}", m.filter),
                    None => m.filter.clone(),
                },
                "group": m.group.as_deref(),
                "qos": m.options.qos as u8,
                "no_local": m.options.no_local,
                "subscription_id": m.id,
                "connected": m.online,
            })
        })
        .collect();
    let mut errors = Vec::new();
    if !q.local {
        let path = format!(
            "/api/v1/subscriptions?topic={}&local=true",
            crate::client::encode(&q.topic)
        );
        for (node, answer) in ask_peers(&app, "GET", path, authorization(&headers)).await {
            match answer {
                Ok((200, v)) => {
                    truncated |= v["truncated"].as_bool().unwrap_or(false);
                    list.extend(v["subscriptions"].as_array().cloned().unwrap_or_default());
                }
                Ok((code, v)) => errors.push(peer_error(
                    &node,
                    Some(code),
                    v["reason"].as_str().unwrap_or(""),
                )),
                Err(e) => errors.push(peer_error(&node, None, &e)),
            }
        }
    }
    let key = |v: &Value| {
        (
            v["client_id"].as_str().unwrap_or("").to_string(),
            v["filter"].as_str().unwrap_or("").to_string(),
        )
    };
    list.sort_by_key(key);
    truncated |= list.len() > MAX_LISTED;
    list.truncate(MAX_LISTED);
    let mut out = json!({"topic": q.topic, "subscriptions": list, "truncated": truncated});
    if !errors.is_empty() {
        out["errors"] = Value::Array(errors);
    }
    Ok(Json(out))
}
