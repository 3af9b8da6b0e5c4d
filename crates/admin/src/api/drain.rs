//! `POST /api/v1/drain?secs=` and `DELETE /api/v1/drain`: take this node out of
//! service for maintenance without stopping it, and put it back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult};
use crate::server::App;

/// Default time over which the connected clients are asked to move, s.
const DEFAULT_SECS: u64 = 30;
/// Longest drain period accepted, s.
const MAX_SECS: u64 = 3600;

/// Query of `POST /drain`.
#[derive(Debug, Deserialize)]
pub struct DrainQuery {
    secs: Option<u64>,
}

/// `POST /drain?secs=`: this node stops being advertised through gossip (balancers
/// send it nobody), refuses new connections with 0x9C Use another server, answers
/// `/health` with 503 `draining`, and asks its connected clients to move
/// (DISCONNECT 0x9C), spread over `secs` (default 30); their persistent sessions are
/// taken over where they reconnect. The node keeps running: stop it, or undo with
/// `DELETE /drain`.
pub async fn drain(
    State(app): State<Arc<App>>,
    q: Result<Query<DrainQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let secs = q.secs.unwrap_or(DEFAULT_SECS);
    if secs > MAX_SECS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("secs must be at most {MAX_SECS}"),
        ));
    }
    if let Some(node) = &app.node {
        node.set_draining();
    }
    let clients = app.broker.registry().connected().len();
    let started = app.broker.start_drain(Duration::from_secs(secs));
    if started {
        tracing::info!(clients, secs, "drain requested through the admin API");
    }
    Ok(Json(json!({
        "node": app.node_id(),
        "draining": true,
        "already": !started,
        "clients": clients,
        "secs": secs,
    })))
}

/// `DELETE /drain`: accepts connections again and advertises the node's listeners
/// through gossip again. Clients already asked to move are not called back.
pub async fn undrain(State(app): State<Arc<App>>) -> ApiResult {
    let was = app.broker.stop_drain();
    if let Some(node) = &app.node {
        node.set_serving();
    }
    if was {
        tracing::info!("drain ended through the admin API");
    }
    Ok(Json(
        json!({"node": app.node_id(), "draining": false, "was_draining": was}),
    ))
}
