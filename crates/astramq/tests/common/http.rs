//! The health endpoint over plain HTTP/1.1: [`http_get`], [`http_get_full`] and [`metric_at`] (one
//! sample of `GET /metrics`).

use std::net::SocketAddr;

use super::*;

/// The value of sample `name` (labels included) in `GET /metrics` of the health
/// endpoint at `health`; panics if it is missing.
pub async fn metric_at(health: SocketAddr, name: &str) -> u64 {
    let (code, body) = http_get(health, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A plain HTTP/1.1 `GET path` (one request, `Connection: close`): the status code
/// and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let (code, _, body) = http_get_with_headers(addr, path).await?;
    Ok((code, body))
}

/// [`http_get`] that must succeed, with the response's header lines, lower-cased.
pub async fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let (code, head, body) = http_get_with_headers(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (code, head.to_lowercase(), body)
}

async fn http_get_with_headers(
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(T, exchange)
        .await
        .map_err(|_| std::io::Error::other("no HTTP response within 5 s"))??;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {raw:?}")))?;
    Ok((code, head.to_string(), body.to_string()))
}
