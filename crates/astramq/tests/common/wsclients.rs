//! Real MQTT-over-WebSocket clients for the tests: paho-mqtt (PyPI, run by Python)
//! and MQTT.js (npm, what browser apps use, run by Node). Both run a script in
//! `tests/clients/` that connects, subscribes, publishes messages of the sizes given
//! with `--sizes` to itself and prints `received N SIZES` (exit 0) or why it failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::run_command;

/// The paho-mqtt client script.
fn paho_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/paho_ws.py")
}

/// Runs the paho script with `args`; (exit success, stdout).
pub async fn paho(args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(paho_script()).args(args).kill_on_drop(true);
    let out = run_command(cmd, Duration::from_secs(30)).await;
    assert!(
        !out.stderr.contains("No module named 'paho'"),
        "paho-mqtt is required by this test: `python3 -m pip install paho-mqtt` (scripts/test.sh does)"
    );
    (
        out.status.success(),
        format!("{}{}", out.stdout, out.stderr),
    )
}

/// Runs the MQTT.js script with `args`; (exit success, output).
pub async fn mqttjs(args: &[&str]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/mqtt").exists(),
        "MQTT.js is required by this test: `npm ci` in {} (scripts/test.sh does)",
        dir.display()
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("mqttjs_ws.mjs"))
        .args(args)
        .kill_on_drop(true);
    let out = run_command(cmd, Duration::from_secs(30)).await;
    (
        out.status.success(),
        format!("{}{}", out.stdout, out.stderr),
    )
}
