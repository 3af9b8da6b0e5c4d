//! Command-line programs run from tests: the astramq binary to completion
//! ([`run_astramq`]), Mosquitto's `mosquitto_pub` / `mosquitto_sub` (to completion, or
//! in the background as [`BgSub`]), any command ([`run_command`]).

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::*;

/// Run the astramq binary to completion (for CLI/config tests).
pub async fn run_astramq(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(astramq_bin());
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("ASTRAMQ_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, timeout).await
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

async fn run_cmd(mut cmd: tokio::process::Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{desc} did not exit within {timeout:?}"))
        .unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...`, run to completion.
pub async fn mosquitto_pub(broker: &Broker, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(10)).await
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT ARGS...`, run to completion; pass
/// `-C count` and `-W secs` so it ends on its own.
pub async fn mosquitto_sub(broker: &Broker, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(15)).await
}

/// `mosquitto_pub -h HOST -p PORT ARGS...` against any listener (TLS ones need
/// `-h localhost`, the name in the test certificates), run to completion.
pub async fn mosquitto_pub_at(host: &str, addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_pub"));
    cmd.args(["-h", host, "-p", &addr.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(10)).await
}

/// `mosquitto_sub -h HOST -p PORT ARGS...` against any listener, run to
/// completion; pass `-C count` and `-W secs` so it ends on its own.
pub async fn mosquitto_sub_at(host: &str, addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"));
    cmd.args(["-h", host, "-p", &addr.port().to_string()])
        .args(args)
        .kill_on_drop(true);
    run_cmd(cmd, Duration::from_secs(15)).await
}

/// Runs any command to completion within `timeout`, capturing its output.
pub async fn run_command(cmd: tokio::process::Command, timeout: Duration) -> Output {
    run_cmd(cmd, timeout).await
}

/// `mosquitto_sub` running in the background; its stdout lines arrive on a
/// channel so a test can wait for "subscribed and receiving".
pub struct BgSub {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl BgSub {
    pub fn spawn(broker: &Broker, args: &[&str]) -> BgSub {
        Self::spawn_at("127.0.0.1", broker.addr(), args)
    }

    /// Like [`BgSub::spawn`], on any listener (`-h HOST -p PORT`).
    pub fn spawn_at(host: &str, addr: SocketAddr, args: &[&str]) -> BgSub {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(required_tool("/usr/bin/mosquitto_sub"))
            .args(["-h", host, "-p", &addr.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        BgSub { child, lines }
    }

    /// Publish `payload` on `topic` every 50 ms (QoS 0, 3.1.1) until
    /// mosquitto_sub prints a line; returns that line. This is how a test
    /// knows the subscription is in place (mosquitto_sub has no ready signal).
    pub async fn probe(&mut self, broker: &Broker, topic: &str, payload: &[u8]) -> String {
        let mut p = broker.client(Version::V311, "bgsub-probe").await;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            p.publish(topic, payload, 0, false).await;
            match tokio::time::timeout(Duration::from_millis(50), self.lines.recv()).await {
                Ok(Some(l)) => return l,
                Ok(None) => panic!("mosquitto_sub exited before receiving anything"),
                Err(_) if tokio::time::Instant::now() > deadline => {
                    panic!("mosquitto_sub received nothing within {T:?}")
                }
                Err(_) => {}
            }
        }
    }

    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn kill(&mut self) {
        self.child.start_kill().expect("kill mosquitto_sub");
    }

    /// Whether mosquitto_sub is still running (its connection is up, as it
    /// exits when the connection drops).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("mosquitto_sub did not exit in time")
            .unwrap()
    }
}
