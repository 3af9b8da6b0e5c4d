#!/usr/bin/env bash
# How long a single node with `--data-dir` takes to come back with many queued
# messages, and what they cost in memory (issue #14): SESSIONS persistent sessions
# (MQTT 3.1.1, Clean Session 0) subscribe to one topic and go offline, MESSAGES QoS 1
# messages are published to it (SESSIONS x MESSAGES queued deliveries, written to
# disk), the broker is killed with SIGKILL and started again. Prints the time to
# listen again, the store's own load time, RSS before the kill and after the restart,
# and the data directory's size; then checks one session got all its messages back.
#
#   bench/persist-restart.sh                        # 1000 sessions x 1000 messages
#   SESSIONS=100 MESSAGES=100 bench/persist-restart.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SESSIONS=${SESSIONS:-1000}
MESSAGES=${MESSAGES:-1000}
SYNC=${SYNC:-periodic}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d "${DATA:-/tmp}/astramq-restart.XXXXXX")
PORT=$((20000 + RANDOM % 10000))
PID=

log() { printf '[restart] %s\n' "$*" >&2; }
cleanup() { [[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
command -v mosquitto_pub >/dev/null || { log "mosquitto_pub missing (apt-get install mosquitto-clients)"; exit 1; }
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"
printf 'log_level = "info"\n[limits]\nmax_queued_messages = %s\nmax_queued_bytes = 1073741824\nmax_publish_rate = 0\nmax_connection_rate = 0\n[store]\nsync = "%s"\n' \
    "$((MESSAGES + 10))" "$SYNC" >"$WORK/astramq.toml"

STARTS=0
start() { # waits for the "listening on" line: the port is bound before the store loads
    local t0=$(date +%s%N)
    STARTS=$((STARTS + 1))
    "$ASTRAMQ" --listen "127.0.0.1:$PORT" --config "$WORK/astramq.toml" --data-dir "$WORK/data" >>"$WORK/broker.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 60000); do
        (($(grep -c '^listening on' "$WORK/broker.log") >= STARTS)) && break
        sleep 0.005
    done
    STARTED_MS=$((($(date +%s%N) - t0) / 1000000))
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

start
log "subscribing $SESSIONS persistent sessions"
for i in $(seq 1 "$SESSIONS"); do
    mosquitto_sub -p "$PORT" -V mqttv311 -c -i "s$i" -q 1 -t fill -E
done
log "publishing $MESSAGES messages ($((SESSIONS * MESSAGES)) deliveries)"
t0=$(date +%s%N)
seq 1 "$MESSAGES" | mosquitto_pub -p "$PORT" -V mqttv311 -q 1 -t fill -l
FILL_MS=$((($(date +%s%N) - t0) / 1000000))
RSS_BEFORE=$(rss_kib)
kill -KILL "$PID"; wait "$PID" 2>/dev/null || true
DISK=$(du -sm "$WORK/data" | cut -f1)

start
LOAD=$(grep -o 'data directory loaded.*' "$WORK/broker.log" | tail -n 1)
RSS_AFTER=$(rss_kib)
GOT=$(timeout 120 mosquitto_sub -p "$PORT" -V mqttv311 -c -i s1 -q 1 -t fill -C "$MESSAGES" | wc -l)

echo "| sessions | queued deliveries | fill (s) | RSS before kill | restart to listening | store load | RSS after restart | data dir | s1 got back |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '| %s | %s | %.1f | %s MiB | %s ms | %s | %s MiB | %s MiB | %s/%s |\n' \
    "$SESSIONS" "$((SESSIONS * MESSAGES))" "$(echo "$FILL_MS / 1000" | bc -l)" "$((RSS_BEFORE / 1024))" \
    "$STARTED_MS" "$(echo "$LOAD" | grep -o 'ms=[0-9]*')" "$((RSS_AFTER / 1024))" "$DISK" "$GOT" "$MESSAGES"
