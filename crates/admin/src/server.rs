//! The admin listener (`health_listen`): one axum router for `/health`, `/metrics`
//! and the API under `/api/v1`, which every request must present a key for.
//!
//! `/health` and `/metrics` stay open: load balancers, orchestrators and Prometheus
//! poll them, they change nothing and say nothing of clients. Everything under
//! `/api/v1` (unknown paths included) needs a key ([`crate::keys`]) in
//! `Authorization: Bearer NAME.SECRET` (or `X-API-Key: NAME.SECRET`): `GET` needs the
//! `read` scope, anything else `admin`. A missing or wrong key is `401`, a read-only
//! key asking for a change `403`; refusals are logged at `warn`, at most one line a
//! second with the count since the last. An address that presented
//! [`MAX_FAILURES`] missing or wrong keys within [`FAILURE_WINDOW`] gets `429` for
//! every API request (a right key included) until the window ends.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Router;
use broker::broker::Broker;
use broker::health::HealthProbe;
use broker::metrics::LogLimiter;
use cluster::ClusterNode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, ApiError};
use crate::keys::{KeyStore, Refusal, Scope};

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// The broker served.
    pub broker: Arc<Broker>,
    /// The cluster node, on a cluster.
    pub node: Option<Arc<ClusterNode>>,
    /// What `/health` asks (the cluster node, or the disk store of a single node).
    pub probe: Option<Arc<dyn HealthProbe>>,
    /// The API keys.
    pub keys: Arc<KeyStore>,
    /// Set when shutdown begins: `/health` answers 503 `stopping`.
    pub stopping: Arc<AtomicBool>,
    /// When the node started.
    pub started: Instant,
    /// The admin listener's address.
    pub addr: SocketAddr,
    /// How the other nodes' admin listeners are reached (HTTP or HTTPS).
    pub peers: crate::client::PeerTransport,
    refused_log: LogLimiter,
    /// Failed key checks per client address in the current window.
    failures: parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl App {
    /// This node's id (`local` on a single node).
    pub fn node_id(&self) -> &str {
        self.node.as_deref().map_or("local", ClusterNode::node_id)
    }

    /// `GET /health`'s status and body.
    pub fn health(&self) -> (u16, String) {
        broker::health::health(
            &self.broker,
            self.probe.as_deref(),
            self.stopping.load(Ordering::Relaxed),
        )
    }
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<AdminServer> {
        Ok(AdminServer {
            listener: TcpListener::bind(addr).await?,
            stopping: Arc::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A flag that, once set, makes `/health` answer 503 `stopping` (set it when
    /// shutdown begins, so load balancers stop sending clients before they are moved).
    pub fn stopping_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Serves until the task is aborted (or the runtime stops). `node` on a
    /// cluster; `probe` is what `/health` asks.
    pub fn spawn(
        self,
        broker: Arc<Broker>,
        node: Option<Arc<ClusterNode>>,
        probe: Option<Arc<dyn HealthProbe>>,
        keys: Arc<KeyStore>,
        tls: Option<Arc<broker::listener::tls::TlsReloader>>,
        peers: crate::client::PeerTransport,
    ) -> io::Result<JoinHandle<()>> {
        let app = Arc::new(App {
            broker,
            node,
            probe,
            keys,
            stopping: self.stopping.clone(),
            started: Instant::now(),
            addr: self.listener.local_addr()?,
            peers,
            refused_log: LogLimiter::default(),
            failures: Default::default(),
        });
        let router = router(app);
        Ok(tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<Peer>();
            let served = match tls {
                None => axum::serve(self.listener, service).await,
                Some(tls) => match crate::tls::TlsListener::new(self.listener, tls) {
                    Ok(l) => axum::serve(l, service).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "admin listener stopped");
            }
        }))
    }
}

/// Every route.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/nodes", get(api::nodes))
        .route("/clients", get(api::clients))
        .route("/clients/{id}", get(api::client))
        .route("/clients/{id}/kick", post(api::kick))
        .route("/kick", post(api::kick_prefix))
        .route("/subscriptions", get(api::subscriptions))
        .route("/routes", get(api::routes))
        .route("/config", get(api::config))
        .route("/drain", post(api::drain).delete(api::undrain))
        .route("/retained", get(api::retained).delete(api::delete_retained))
        .route("/publish", post(api::publish))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .route("/", get(crate::dashboard::to_index))
        .route("/ui", get(crate::dashboard::to_index))
        .route("/ui/", get(crate::dashboard::index))
        .route("/ui/app.js", get(crate::dashboard::script))
        .route("/ui/app.css", get(crate::dashboard::style))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /ui/, /health, /metrics or /api/v1/…\n",
            )
        })
        .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let (code, body) = app.health();
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, broker::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        app.broker.metrics().encode(),
    )
        .into_response()
}

/// The key a request presents, if any.
fn presented(req: &Request) -> Option<&str> {
    let headers = req.headers();
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The address a request came from, over plain HTTP or TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Failed key checks an address may make per [`FAILURE_WINDOW`]: far more than a
/// person or a misconfigured script needs to notice, far too few to matter against
/// a 256-bit secret, and a bound on the hashing a stranger can make a node do.
pub const MAX_FAILURES: u32 = 100;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at most (a flood from many addresses forgets the oldest
/// windows first; an address not remembered is not limited).
const MAX_TRACKED: usize = 10_000;

impl App {
    /// Whether `ip` used up its failures in the current window.
    fn locked_out(&self, ip: IpAddr) -> bool {
        let f = self.failures.lock();
        f.get(&ip)
            .is_some_and(|(since, n)| since.elapsed() < FAILURE_WINDOW && *n >= MAX_FAILURES)
    }

    /// Counts a failed key check from `ip`.
    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock();
        if f.len() >= MAX_TRACKED && !f.contains_key(&ip) {
            f.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            if f.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = f.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// Lets a request through if its key has the scope its method needs.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0 .0.ip());
    if ip.is_some_and(|ip| app.locked_out(ip)) {
        refused(&app, &req, "too many failed key checks from this address");
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("more than {MAX_FAILURES} missing or wrong API keys from this address within {} s; try again later", FAILURE_WINDOW.as_secs()),
        )
        .into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(FAILURE_WINDOW.as_secs()),
        );
        return r;
    }
    let needs = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Admin
    };
    match app.keys.check(presented(&req)) {
        Ok((_, scope)) if scope >= needs => next.run(req).await,
        Ok((name, _)) => {
            refused(&app, &req, "read-only key");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key {name:?} is read-only; {} needs an admin key",
                    req.method()
                ),
            )
            .into_response()
        }
        Err(why) => {
            if let Some(ip) = ip {
                app.failed(ip);
            }
            let reason = match why {
                Refusal::Missing => "an API key is required (Authorization: Bearer NAME.SECRET)",
                Refusal::Invalid => "invalid API key",
                Refusal::NoKeys => {
                    "no API keys are configured on this node (admin_keys_file; astramq ctl key add)"
                }
            };
            refused(&app, &req, reason);
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// Logs a refused request, at most one line a second.
fn refused(app: &App, req: &Request, why: &str) {
    if let Some(n) = app.refused_log.due(1) {
        tracing::warn!(
            refused = n,
            method = %req.method(),
            path = %format_args!("/api/v1{}", req.uri().path()),
            "admin API request refused: {why} (count since the last line)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::auth::Authenticator;
    use broker::Config;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_metrics_and_stopping_are_served_without_a_key() {
        let config = Config::default();
        let auth = Authenticator::load(&config).unwrap();
        let broker = Broker::new(config, auth);
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let stopping = server.stopping_flag();
        let keys = Arc::new(KeyStore::load(None).unwrap());
        let task = server
            .spawn(
                broker,
                None,
                None,
                keys,
                None,
                crate::client::PeerTransport::Http,
            )
            .unwrap();
        let close = "Connection: close\r\n\r\n";
        let r = get(addr, &format!("GET /health HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.ends_with("{\"status\":\"ok\",\"mode\":\"single\",\"clients\":0}\n"),
            "{r}"
        );
        let r = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(r.contains("\nastramq_clients_connected 0\n"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        let r = get(addr, &format!("GET /nope HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(
            addr,
            &format!("POST /health HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        stopping.store(true, Ordering::Relaxed);
        let r = get(
            addr,
            &format!("HEAD /health HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
        task.abort();
    }
}
