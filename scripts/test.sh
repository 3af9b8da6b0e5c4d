#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh Debian machine: installs the system
# packages the tests drive (Mosquitto's clients and mosquitto_passwd, HAProxy, Redis and Redis Sentinel, iptables, Chromium), then checks
# formatting, lints, and runs every test (unit, property/fuzz, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mosquitto_passwd >/dev/null 2>&1 || [ -x /usr/bin/mosquitto_passwd ] || missing+=(mosquitto)
# tests/lb/haproxy.rs runs deploy/haproxy.cfg with Debian's haproxy.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# tests/cluster/ runs real redis-server processes (and redis-cli --cluster create).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# tests/redis_failover.rs runs three redis-sentinel processes beside a master and a replica.
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
# tests/websocket.rs runs MQTT.js (npm) under Node.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# tests/dashboard.rs loads the web dashboard in a real headless Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# tests/partition.rs cuts loopback ports with iptables rules (as root).
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

# tests/websocket.rs drives paho-mqtt (PyPI), a real MQTT-over-WebSocket client.
python3 -c 'import paho.mqtt' 2>/dev/null || python3 -m pip install -q paho-mqtt \
    || python3 -m pip install -q --break-system-packages paho-mqtt

# ...and MQTT.js, the client browser apps use, pinned by package-lock.json.
[ -d crates/astramq/tests/clients/node_modules/mqtt ] \
    || (cd crates/astramq/tests/clients && npm ci --no-audit --no-fund --loglevel=error)

# Tests that hold many sockets need more than the default soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
