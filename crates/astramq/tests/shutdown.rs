//! Graceful shutdown on SIGTERM/SIGINT: stop accepting, DISCONNECT 0x8B
//! (Server shutting down) to v5 clients, exit 0 within the grace period.

mod common;

use std::time::Duration;

use common::*;

async fn shutdown_on(sig: &str) {
    let mut b = Broker::start_with("[shutdown]\ngrace_period_secs = 3\n", &[]);
    let mut c5 = b.client(Version::V5, "v5").await;
    let mut c3 = b.client(Version::V311, "v3").await;
    let addr = b.addr();
    b.signal(sig);
    // [MQTT-4.13 / 3.14] v5: DISCONNECT 0x8B then close; 3.1.1: close.
    c5.expect_disconnect(rc::SERVER_SHUTTING_DOWN, Duration::from_secs(4))
        .await;
    c3.expect_closed(Duration::from_secs(4)).await;
    let st = b
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("broker still running after SIG{sig} + grace period"));
    assert!(st.success(), "exit status after SIG{sig}: {st:?}");
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn sigterm_graceful() {
    shutdown_on("TERM").await;
}

#[tokio::test]
async fn sigint_graceful() {
    shutdown_on("INT").await;
}

// A client that never reads must not hold the broker past the grace period.
#[tokio::test]
async fn stuck_client_does_not_block_exit() {
    let mut b = Broker::start_with("[shutdown]\ngrace_period_secs = 1\n", &[]);
    let mut s = b.client(Version::V5, "stuck").await;
    s.sub("flood", 0).await;
    let mut p = b.client(Version::V5, "p").await;
    // Fill the socket buffers towards the stuck reader.
    let payload = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        p.publish("flood", &payload, 0, false).await;
    }
    b.signal("TERM");
    let st = b.wait_exit(Duration::from_secs(4)).await;
    assert!(
        st.is_some(),
        "broker must exit within the 1 s grace period (+slack)"
    );
    assert!(st.unwrap().success(), "{st:?}");
}
