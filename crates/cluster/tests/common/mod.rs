//! What the cluster crate's tests share: a real `redis-server` on a free loopback
//! port, killed when the test ends.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use astramq_cluster::conn::Redis;
use astramq_cluster::tls::RedisTls;

/// A `redis-server` for one test, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redis-server` on a free loopback port; returns it and its URL once it
/// answers.
pub async fn redis_server() -> (Server, Redis) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let server = Server(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Redis::connect(&url, &RedisTls::default(), Duration::from_secs(1)).await {
            Ok(r) => return (server, r),
            Err(e) => assert!(
                Instant::now() < deadline,
                "redis-server did not answer: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
