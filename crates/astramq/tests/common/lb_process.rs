//! `astramq lb` as a process ([`Lb`]): started on a free port, its log kept and
//! printed if the test failed, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::*;

/// A running `astramq lb` (`--listen 127.0.0.1:0 --log-level debug` and the given
/// arguments); killed when dropped, its log printed if the test failed.
pub struct Lb {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Lb {
    /// Starts it and waits for its `listening on ADDR` line.
    pub fn start(args: &[&str]) -> Lb {
        Self::start_exact(&[&["--listen", "127.0.0.1:0", "--log-level", "debug"], args].concat())
    }

    /// `astramq lb ARGS` with nothing added (the caller gives `--listen`; info logs),
    /// waiting for its `listening on ADDR` line.
    pub fn start_exact(args: &[&str]) -> Lb {
        let mut cmd = Command::new(astramq_bin());
        cmd.arg("lb")
            .args(args)
            .env_remove("ASTRAMQ_CLUSTER_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn astramq lb");
        let stderr = capture(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "astramq lb printed no `listening on` line\n--- stderr ---\n{}",
                    stderr.lock().unwrap()
                )
            });
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from astramq lb: {line:?}"));
        Lb {
            child,
            addr,
            stderr,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// How many times it started routing to broker `id` (one per run of that node).
    pub fn ups(&self, id: &str) -> usize {
        let token = format!("node={id}");
        self.stderr()
            .lines()
            .filter(|l| l.contains("broker up") && l.split_whitespace().any(|w| w == token))
            .count()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- lb stderr (last 4 KiB) ---\n{}",
                tail(&self.stderr(), 4096)
            );
        }
    }
}
