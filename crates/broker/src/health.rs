//! The health endpoint (`health_listen`): a minimal HTTP/1.1 server on tokio alone.
//!
//! - `GET /health` → `200 {"status":"ok",...}` while the node serves normally,
//!   `503 {"status":"unhealthy",...}` while a [`HealthProbe`] says it cannot (in a
//!   cluster: Redis unreachable, `"redis":"unreachable since <RFC 3339 time>"`), and
//!   `503 {"status":"stopping"}` once shutdown began. A single node without a cluster
//!   is healthy whenever it serves.
//! - `GET /metrics` → every metric of the broker's registry (the cluster's included,
//!   through its collector) in the Prometheus text exposition format
//!   ([`crate::metrics`]).
//! - Anything else: 404 (unknown path) or 405 (method other than GET/HEAD).
//!
//! One request per connection (`Connection: close`), a request head of at most 8 KiB
//! read within 5 s: enough for load balancers, orchestrators and `curl`, and nothing a
//! slow or hostile client can hold open.

use std::fmt::{Debug, Write as _};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::metrics::Metrics;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The health endpoint, bound and ready to serve.
#[derive(Debug)]
pub struct HealthServer {
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<HealthServer> {
        Ok(HealthServer {
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

    /// Serves requests in a task until it is aborted (or the runtime stops).
    pub fn spawn(self, broker: Arc<Broker>, probe: Option<Arc<dyn HealthProbe>>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.listener.accept().await {
                    Ok((stream, _)) => {
                        let (broker, probe) = (broker.clone(), probe.clone());
                        let stopping = self.stopping.clone();
                        tokio::spawn(async move {
                            let state = State {
                                broker: &broker,
                                probe: probe.as_deref(),
                                stopping: stopping.load(Ordering::Relaxed),
                            };
                            if let Err(e) = serve(stream, &state).await {
                                tracing::debug!(error = %e, "health endpoint: request failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "health endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }
}

struct State<'a> {
    broker: &'a Broker,
    probe: Option<&'a dyn HealthProbe>,
    stopping: bool,
}

async fn serve(mut stream: TcpStream, state: &State<'_>) -> io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        Some(head) => respond(&head, state),
        None => Response::text(400, "Bad Request", "bad request\n"),
    };
    stream.write_all(&response.encode()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the request head; `None` if it is too long or
/// the peer closed first.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn respond(head: &str, state: &State<'_>) -> Response {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
    }
    let mut response = match path {
        "/health" | "/healthz" => health(state),
        "/metrics" => Response {
            content_type: crate::metrics::CONTENT_TYPE,
            ..Response::text(200, "OK", &metrics(state))
        },
        _ => Response::text(404, "Not Found", "not found: try /health or /metrics\n"),
    };
    response.head_only = head_only;
    response
}

fn health(state: &State<'_>) -> Response {
    let report = state.probe.map(|p| p.report());
    let healthy = report.as_ref().is_none_or(|r| r.healthy);
    let status = if state.stopping {
        "stopping"
    } else if healthy {
        "ok"
    } else {
        "unhealthy"
    };
    let mut body = format!("{{\"status\":{}", json_string(status));
    let mode = if state.broker.cluster().is_some() {
        "cluster"
    } else {
        "single"
    };
    let _ = write!(body, ",\"mode\":{}", json_string(mode));
    let clients = Metrics::get(&state.broker.metrics.clients_connected);
    let _ = write!(body, ",\"clients\":{clients}");
    for (name, value) in report.iter().flat_map(|r| &r.fields) {
        let _ = write!(body, ",{}:{value}", json_string(name));
    }
    body.push_str("}\n");
    let (code, reason) = if status == "ok" {
        (200, "OK")
    } else {
        (503, "Service Unavailable")
    };
    Response {
        content_type: "application/json",
        ..Response::text(code, reason, &body)
    }
}

fn metrics(state: &State<'_>) -> String {
    state.broker.metrics.encode()
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

    fn broker() -> Arc<Broker> {
        let config = Config::default();
        let auth = Authenticator::load(&config).unwrap();
        Broker::new(config, auth)
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[tokio::test]
    async fn single_node_is_healthy_and_a_failing_probe_is_503() {
        let server = HealthServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let task = server.spawn(broker(), None);
        let r = get(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.ends_with("{\"status\":\"ok\",\"mode\":\"single\",\"clients\":0}\n"),
            "{r}"
        );
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.contains("\nastramq_clients_connected 0\n"), "{r}");
        let r = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(addr, "POST /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        task.abort();

        let server = HealthServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let stopping = server.stopping_flag();
        let task = server.spawn(broker(), Some(Arc::new(Down)));
        let r = get(addr, "GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("\"status\":\"unhealthy\""), "{r}");
        assert!(r.contains("\"redis\":\"unreachable since x\""), "{r}");
        stopping.store(true, Ordering::Relaxed);
        let r = get(addr, "HEAD /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
        task.abort();
    }
}
