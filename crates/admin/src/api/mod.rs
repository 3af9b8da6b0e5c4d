//! The admin HTTP API's endpoints, under `/api/v1` (examples: `docs/admin.md`).
//!
//! | method and path | scope | what |
//! |---|---|---|
//! | `GET /nodes` | read | this node, and the other members gossip knows |
//! | `GET /clients?prefix=&user=&limit=&after=` | read | sessions on this node, a page at a time |
//! | `GET /clients/{id}` | read | one session: connection, subscriptions, queue |
//! | `POST /clients/{id}/kick` | admin | disconnects it (v5: DISCONNECT 0x98) |
//! | `POST /kick?prefix=` | admin | disconnects every client whose id starts with the prefix |
//! | `GET /subscriptions?topic=` | read | every subscription that would receive a message on the topic |
//! | `GET /routes?topic=` | read | the other nodes this node's route table forwards the topic to |
//! | `GET /config` | read | this node's configuration, secrets redacted |
//! | `POST /drain?secs=` | admin | takes this node out of service: clients asked to move, new ones refused |
//! | `DELETE /drain` | admin | puts it back |
//! | `GET /retained?filter=&limit=&after=` | read | retained messages matching a filter |
//! | `DELETE /retained?topic=` | admin | clears one topic's retained message, cluster-wide |
//! | `POST /publish` | admin | publishes a message |
//!
//! On a cluster, `/nodes`, `/clients`, `/clients/{id}`, `kick` and `/subscriptions`
//! answer for the whole cluster:
//! the node asks the other brokers' admin listeners (their addresses come from
//! gossip), passing the caller's key on, with `local=true` so that they answer for
//! themselves only. `local=true` asks one node alone. Errors are JSON:
//! `{"error":"not_found","reason":"…"}`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use broker::message::Message;
use broker::registry::SessionEntry;
use mqtt::ReasonCode;

use crate::server::App;

mod config;
mod drain;
mod nodes;
mod subscriptions;

pub use config::{config, routes};
pub use drain::{drain, undrain};
pub use nodes::nodes;
pub use subscriptions::subscriptions;

/// Largest page.
const MAX_LIMIT: usize = 1000;
/// Page size when none is asked for.
const DEFAULT_LIMIT: usize = 100;
/// How long a connection has to describe itself or to close when kicked.
const CONNECTION_ANSWER: Duration = Duration::from_secs(3);

/// An error answered as `{"error": kind, "reason": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    reason: String,
}

impl ApiError {
    /// An error with this status, kind and reason.
    pub fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.kind, "reason": self.reason});
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

pub(crate) type ApiResult = Result<Json<Value>, ApiError>;

/// A payload as JSON: text when it is UTF-8, else base64.
fn payload_json(payload: &[u8]) -> Value {
    match std::str::from_utf8(payload) {
        Ok(text) => json!({"payload": text, "encoding": "utf8"}),
        Err(_) => json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
            "encoding": "base64",
        }),
    }
}

fn limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

fn protocol_name(p: mqtt::Protocol) -> &'static str {
    match p {
        mqtt::Protocol::V31 => "3.1",
        mqtt::Protocol::V311 => "3.1.1",
        mqtt::Protocol::V5 => "5.0",
    }
}

fn time(t: SystemTime) -> String {
    cluster::health::rfc3339(t)
}

/// Selects one node's own answer, without asking the others.
#[derive(Debug, Default, Deserialize)]
pub struct LocalQuery {
    #[serde(default)]
    local: bool,
}

/// The caller's key as an `Authorization` value, to pass on to other nodes.
pub(crate) fn authorization(headers: &HeaderMap) -> Option<String> {
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        return a.to_str().ok().map(str::to_string);
    }
    let key = headers.get("x-api-key")?.to_str().ok()?;
    Some(format!("Bearer {}", key.trim()))
}

/// What each other broker answered to `method path` (JSON), by node id, asked all at
/// once; a node that could not be asked or did not answer JSON gives its reason.
pub(crate) async fn ask_peers(
    app: &App,
    method: &'static str,
    path: String,
    auth: Option<String>,
) -> Vec<(String, Result<(u16, Value), String>)> {
    let Some(node) = &app.node else {
        return Vec::new();
    };
    let mut asks = tokio::task::JoinSet::new();
    for m in node.members() {
        if m.meta.role != membership::Role::Broker {
            continue;
        }
        let Some(addr) = m.meta.admin else {
            let reason = "advertises no admin listener".to_string();
            asks.spawn(async move { (m.node_id, Err(reason)) });
            continue;
        };
        let (path, auth, transport) = (path.clone(), auth.clone(), app.peers.clone());
        asks.spawn(async move {
            let answer = crate::client::request(addr, &transport, method, &path, auth.as_deref())
                .await
                .and_then(|(code, body)| {
                    serde_json::from_slice(&body)
                        .map(|v| (code, v))
                        .map_err(|e| format!("HTTP {code}, not JSON: {e}"))
                });
            (m.node_id, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok(a) = joined {
            answers.push(a);
        }
    }
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    answers
}

/// A node's failure to answer, as listed in `errors`.
/// `Ok` if `topic` is a topic name (no wildcards, not empty), else the `400` that
/// says so (`/subscriptions` and `/routes` take a topic, not a filter).
pub(crate) fn topic_name(topic: &str) -> Result<(), ApiError> {
    if mqtt::topic::valid_topic_name(topic) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "topic must be a topic name (no wildcards, not empty)",
    ))
}

pub(crate) fn peer_error(node: &str, code: Option<u16>, reason: &str) -> Value {
    json!({"node": node, "status": code, "reason": reason})
}

/// Query of `GET /clients`.
#[derive(Debug, Deserialize)]
pub struct ClientsQuery {
    prefix: Option<String>,
    user: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    #[serde(default)]
    local: bool,
}

fn client_summary(app: &App, e: &SessionEntry) -> Value {
    let mut v = json!({
        "client_id": &*e.client_id,
        "node": app.node_id(),
        "connected": e.link.is_some(),
    });
    if let Some(info) = e.link.as_ref().and_then(|l| l.info()) {
        v["username"] = json!(info.username.as_deref());
        v["peer"] = json!(&*info.peer);
        v["protocol"] = json!(protocol_name(info.protocol));
        v["keep_alive_secs"] = json!(info.keep_alive_secs);
        v["connected_at"] = json!(time(info.connected_at));
    }
    v
}

/// `GET /clients`: sessions whose client id starts with `prefix` (and whose user is
/// `user`), in client id order, `limit` per page from after `after`; `next` is the
/// `after` of the next page, `null` on the last. On a cluster every broker's
/// sessions (each node's page merged), unless `local=true`; nodes that could not
/// answer are listed in `errors` (the page is then partial).
pub async fn clients(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    q: Result<Query<ClientsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let limit = limit(q.limit);
    let user = q.user.as_deref();
    let (page, mut more) = app.broker.registry().sessions(
        q.prefix.as_deref().unwrap_or(""),
        q.after.as_deref(),
        limit,
        |e| {
            user.is_none_or(|u| {
                e.link
                    .as_ref()
                    .and_then(|l| l.info())
                    .and_then(|i| i.username.as_deref())
                    == Some(u)
            })
        },
    );
    let mut list: Vec<Value> = page.iter().map(|e| client_summary(&app, e)).collect();
    let mut errors = Vec::new();
    if !q.local {
        let query = raw.map(|r| format!("{r}&")).unwrap_or_default();
        let path = format!("/api/v1/clients?{query}local=true");
        for (node, answer) in ask_peers(&app, "GET", path, authorization(&headers)).await {
            match answer {
                Ok((200, v)) => {
                    more |= !v["next"].is_null();
                    list.extend(v["clients"].as_array().cloned().unwrap_or_default());
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
    let id = |v: &Value| v["client_id"].as_str().unwrap_or("").to_string();
    list.sort_by(|a, b| (id(a), a["node"].to_string()).cmp(&(id(b), b["node"].to_string())));
    more |= list.len() > limit;
    list.truncate(limit);
    let next = if more { list.last().map(id) } else { None };
    let mut out = json!({ "clients": list, "next": next });
    if !errors.is_empty() {
        out["errors"] = Value::Array(errors);
    }
    Ok(Json(out))
}

/// For a client this node does not have: unless the request asked this node only
/// (`local`) or there is no cluster, asks the other brokers for
/// `/api/v1/clients/{id}{rest}` (`?local=true` appended) until one answers 200: its
/// answer, or the 404 saying no node has the client.
async fn on_another_node(
    app: &App,
    local: bool,
    method: &'static str,
    rest: &str,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult {
    if local || app.node.is_none() {
        return Err(unknown_client(app, id));
    }
    let path = format!("/api/v1/clients/{}{rest}", crate::client::encode(id));
    let mut errors = Vec::new();
    for (node, answer) in ask_peers(
        app,
        method,
        format!("{path}?local=true"),
        authorization(headers),
    )
    .await
    {
        match answer {
            Ok((200, v)) => return Ok(Json(v)),
            Ok((404, _)) => {}
            Ok((code, v)) => errors.push(format!(
                "{node}: HTTP {code} {}",
                v["reason"].as_str().unwrap_or("")
            )),
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    let mut reason = format!("no session with client id {id:?} on any node");
    if !errors.is_empty() {
        reason.push_str(&format!(
            " that answered (not answering: {})",
            errors.join("; ")
        ));
    }
    Err(ApiError::not_found(reason))
}

fn unknown_client(app: &App, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no session with client id {id:?} on node {}",
        app.node_id()
    ))
}

/// `GET /clients/{id}`: one session, with what its connection reports; on a
/// cluster, from the node that has it.
pub async fn client(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LocalQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let Some(link) = app.broker.registry().link(&id) else {
        if app.broker.registry().is_parked(&id) {
            return Ok(Json(json!({
                "client_id": id,
                "node": app.node_id(),
                "connected": false,
            })));
        }
        return on_another_node(&app, q.local, "GET", "", &id, &headers).await;
    };
    let entry = SessionEntry {
        client_id: Arc::from(id.as_str()),
        link: Some(link.clone()),
    };
    let mut v = client_summary(&app, &entry);
    match tokio::time::timeout(CONNECTION_ANSWER, link.describe()).await {
        Ok(Some(s)) => {
            v["subscriptions"] = s
                .subscriptions
                .iter()
                .map(|(filter, qos)| json!({"filter": filter, "qos": qos}))
                .collect();
            v["inflight"] = json!(s.inflight);
            v["queued"] = json!(s.queued);
            v["session_expiry_secs"] = json!(s.expiry_secs);
        }
        Ok(None) => return Err(unknown_client(&app, &id)),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("the connection of {id:?} did not answer within {CONNECTION_ANSWER:?}"),
            ))
        }
    }
    Ok(Json(v))
}

/// `POST /clients/{id}/kick`: closes the client's connection (MQTT 5: DISCONNECT
/// 0x98 Administrative action), on whichever node it is; answers once it is
/// closed. Its session stays (a persistent one is parked as after any
/// disconnection).
pub async fn kick(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LocalQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let Some(link) = app.broker.registry().link(&id) else {
        return on_another_node(&app, q.local, "POST", "/kick", &id, &headers).await;
    };
    link.ask_to_leave(ReasonCode::AdministrativeAction);
    if tokio::time::timeout(CONNECTION_ANSWER, link.exited())
        .await
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("asked {id:?} to leave; its connection has not closed yet"),
        ));
    }
    tracing::info!(client_id = %id, "kicked through the admin API");
    Ok(Json(json!({"kicked": id, "node": app.node_id()})))
}

/// Query of `POST /kick`.
#[derive(Debug, Deserialize)]
pub struct KickQuery {
    prefix: String,
    #[serde(default)]
    local: bool,
}

/// `POST /kick?prefix=P`: closes every connection whose client id starts with `P`
/// (not empty), on every node unless `local=true`, as `/clients/{id}/kick` does one;
/// answers with how many, per node, once they are closed (or after 3 s).
pub async fn kick_prefix(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<KickQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    if q.prefix.is_empty() {
        return Err(ApiError::bad_request(
            "prefix must not be empty (kicking every client is not offered)",
        ));
    }
    let (mine, _) = app
        .broker
        .registry()
        .sessions(&q.prefix, None, usize::MAX, |e| e.link.is_some());
    let links: Vec<_> = mine.into_iter().filter_map(|e| e.link).collect();
    for l in &links {
        l.ask_to_leave(ReasonCode::AdministrativeAction);
    }
    let _ = tokio::time::timeout(CONNECTION_ANSWER, async {
        for l in &links {
            l.exited().await;
        }
    })
    .await;
    tracing::info!(prefix = %q.prefix, kicked = links.len(), "kicked through the admin API");
    let mut total = links.len() as u64;
    let mut nodes = serde_json::Map::new();
    nodes.insert(app.node_id().to_string(), json!(links.len()));
    let mut errors = Vec::new();
    if !q.local {
        let path = format!(
            "/api/v1/kick?prefix={}&local=true",
            crate::client::encode(&q.prefix)
        );
        for (node, answer) in ask_peers(&app, "POST", path, authorization(&headers)).await {
            match answer {
                Ok((200, v)) => {
                    let n = v["kicked"].as_u64().unwrap_or(0);
                    total += n;
                    nodes.insert(node, json!(n));
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
    let mut out = json!({"kicked": total, "nodes": nodes, "prefix": q.prefix});
    if !errors.is_empty() {
        out["errors"] = Value::Array(errors);
    }
    Ok(Json(out))
}

/// Query of `GET /retained`.
#[derive(Debug, Deserialize)]
pub struct RetainedQuery {
    filter: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /retained`: retained messages whose topic matches `filter` (default `#`),
/// in topic order, paged like `/clients`.
pub async fn retained(
    State(app): State<Arc<App>>,
    q: Result<Query<RetainedQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let filter = q.filter.as_deref().unwrap_or("#");
    if !mqtt::topic::valid_topic_filter(filter) {
        return Err(ApiError::bad_request(format!(
            "{filter:?} is not a valid topic filter"
        )));
    }
    let limit = limit(q.limit);
    let mut all = app.broker.retained().matching(filter, Instant::now());
    if let Some(after) = q.after.as_deref() {
        all.retain(|m| m.topic() > after);
    }
    all.sort_unstable_by(|a, b| a.topic().cmp(b.topic()));
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more {
        all.last().map(|m| m.topic().to_string())
    } else {
        None
    };
    let list: Vec<Value> = all
        .iter()
        .map(|m| {
            let mut v = payload_json(m.publish.payload());
            v["topic"] = json!(m.topic());
            v["qos"] = json!(m.qos as u8);
            v["bytes"] = json!(m.publish.payload().len());
            v
        })
        .collect();
    Ok(Json(json!({ "retained": list, "next": next })))
}

/// Query of `DELETE /retained`.
#[derive(Debug, Deserialize)]
pub struct TopicQuery {
    topic: String,
}

fn message(topic: &str, payload: Vec<u8>, qos: mqtt::QoS, retain: bool) -> Arc<Message> {
    let publish = mqtt::Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_string(),
        packet_id: None,
        properties: Default::default(),
        payload: payload.into(),
    };
    Arc::new(Message::from_publish(publish, None, Instant::now()))
}

/// `DELETE /retained?topic=T`: clears `T`'s retained message here and in the store
/// (the cluster's Redis, or the data directory), as an empty retained PUBLISH would,
/// but without delivering anything.
pub async fn delete_retained(
    State(app): State<Arc<App>>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    if !mqtt::topic::valid_topic_name(&q.topic) {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a valid topic name",
            q.topic
        )));
    }
    let exists = app
        .broker
        .retained()
        .matching(&q.topic, Instant::now())
        .iter()
        .any(|m| m.topic() == q.topic);
    if !exists {
        return Err(ApiError::not_found(format!(
            "no retained message on {:?}",
            q.topic
        )));
    }
    let clear = message(&q.topic, Vec::new(), mqtt::QoS::AtMostOnce, true);
    app.broker.set_retained(&clear);
    // The store (Redis, or the data directory) forgets it too.
    app.broker.store().retained(&clear);
    tracing::info!(topic = %q.topic, "retained message deleted through the admin API");
    Ok(Json(json!({"deleted": q.topic})))
}

/// Body of `POST /publish`.
#[derive(Debug, Deserialize)]
pub struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// `POST /publish`: publishes a message as if a client had (no ACL: the key's admin
/// scope is the permission). QoS 1/2 answers once every copy for other nodes is
/// stored (`503` if the cluster cannot store it).
pub async fn publish(
    State(app): State<Arc<App>>,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> ApiResult {
    let Json(b) = body?;
    if !mqtt::topic::valid_topic_name(&b.topic) || b.topic.starts_with('$') {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a topic one may publish to",
            b.topic
        )));
    }
    let qos = match b.qos {
        0 => mqtt::QoS::AtMostOnce,
        1 => mqtt::QoS::AtLeastOnce,
        2 => mqtt::QoS::ExactlyOnce,
        n => return Err(ApiError::bad_request(format!("qos {n}: 0, 1 or 2"))),
    };
    let payload = match b.encoding.as_deref().unwrap_or("utf8") {
        "utf8" => b.payload.into_bytes(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(b.payload.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("payload: {e}")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "encoding {other:?}: utf8 or base64"
            )))
        }
    };
    if payload.len() > app.broker.config().limits.max_packet_size as usize {
        return Err(ApiError::bad_request(
            "payload larger than limits.max_packet_size",
        ));
    }
    let msg = message(&b.topic, payload, qos, b.retain);
    let mut blocked = Vec::new();
    let published = app
        .broker
        .publish(&msg, &mut Vec::new(), &mut blocked, None);
    // No publisher to slow down: full queues get the overflow policy, as for a will.
    for x in blocked {
        app.broker.overflow(&x.mailbox, x.delivery);
    }
    if let Some(durable) = published.durable {
        let stored = tokio::time::timeout(Duration::from_secs(10), durable).await;
        if !matches!(stored, Ok(Ok(()))) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the cluster could not store the message's copies for other nodes",
            ));
        }
    }
    tracing::info!(topic = %b.topic, qos = b.qos, retain = b.retain, "published through the admin API");
    Ok(Json(json!({
        "published": b.topic,
        "qos": b.qos,
        "retain": b.retain,
        "local_deliveries": published.routed.delivered,
        "forwarded": published.forwarded,
    })))
}

/// A method an endpoint does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (see docs/admin.md)",
    )
}

/// Anything else under `/api/v1`.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see docs/admin.md)")
}
