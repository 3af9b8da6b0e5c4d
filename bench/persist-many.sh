#!/usr/bin/env bash
# Many offline persistent sessions on a single node with `--data-dir` (issue #14 item
# 5): SESSIONS persistent sessions (MQTT 5, session expiry 1 h) subscribe to one topic
# at QoS 1 and go offline, in waves of WAVE connections (a process may hold 20,000
# files), then MESSAGES QoS 1 messages are published to it: SESSIONS x MESSAGES queued
# deliveries, on disk. Prints RSS with the sessions only, after the fill, after
# `kill -9` and a restart, the restart time, the data directory's size, and checks
# that one session gets its MESSAGES back.
#
#   bench/persist-many.sh                          # 100,000 sessions x 10 messages
#   SESSIONS=20000 MESSAGES=10 bench/persist-many.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SESSIONS=${SESSIONS:-100000}
MESSAGES=${MESSAGES:-10}
WAVE=${WAVE:-15000}
SYNC=${SYNC:-periodic}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ASTRAMQ=$CARGO_TARGET_DIR/release/astramq
WORK=$(mktemp -d "${DATA:-/tmp}/astramq-many.XXXXXX")
PORT=$((20000 + RANDOM % 10000))
PID=

log() { printf '[many] %s\n' "$*" >&2; }
cleanup() { [[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
command -v mosquitto_pub >/dev/null || { log "mosquitto_pub missing (apt-get install mosquitto-clients)"; exit 1; }
log "building astramq (release)"
(cd "$ROOT" && cargo build --release -q -p astramq)
ulimit -n "$(ulimit -Hn)"
printf 'log_level = "info"\n[limits]\nmax_connections = 0\nmax_connection_rate = 0\nmax_publish_rate = 0\n[store]\nsync = "%s"\n' \
    "$SYNC" >"$WORK/astramq.toml"

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
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$PID/status"; }

start
RSS_EMPTY=$(rss_mib)
log "subscribing $SESSIONS persistent sessions, $WAVE at a time"
t0=$(date +%s%N)
done_n=0 wave=0
while ((done_n < SESSIONS)); do
    n=$((SESSIONS - done_n < WAVE ? SESSIONS - done_n : WAVE))
    "$ASTRAMQ" bench sub -n "$n" --qos 1 --protocol 5 --clean false --session-expiry 3600 \
        --topic fill --client-id-prefix "w$wave" --duration 1s --drain 0s \
        --hosts "127.0.0.1:$PORT" --no-progress >/dev/null 2>"$WORK/bench.err" ||
        { log "bench failed: $(tail -n 3 "$WORK/bench.err")"; exit 1; }
    done_n=$((done_n + n)) wave=$((wave + 1))
done
SUB_MS=$((($(date +%s%N) - t0) / 1000000))
RSS_SESSIONS=$(rss_mib)
log "publishing $MESSAGES messages ($((SESSIONS * MESSAGES)) deliveries)"
t0=$(date +%s%N)
# One at a time: each message's SESSIONS deliveries wait for the disk together, and
# more than `store.max_queued` (65,536) of them pass only when nothing else waits.
for i in $(seq 1 "$MESSAGES"); do
    mosquitto_pub -p "$PORT" -V mqttv5 -q 1 -t fill -m "$i" ||
        { log "message $i refused"; exit 1; }
done
FILL_MS=$((($(date +%s%N) - t0) / 1000000))
RSS_FILLED=$(rss_mib)
kill -KILL "$PID"; wait "$PID" 2>/dev/null || true
DISK=$(du -sm "$WORK/data" | cut -f1)

start
LOAD=$(grep -o 'data directory loaded.*' "$WORK/broker.log" | tail -n 1)
RSS_AFTER=$(rss_mib)
GOT=$(timeout 120 mosquitto_sub -p "$PORT" -V mqttv5 -c -x 3600 -i w0-s0 -q 1 -t fill -C "$MESSAGES" -W 60 | wc -l)

echo "| sessions | queued deliveries | subscribe | fill | RSS empty | RSS with the sessions | RSS after the fill | restart to listening | store load | RSS after restart | data dir | one session got back |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '| %s | %s | %.1f s | %.1f s | %s MiB | %s MiB | %s MiB | %s ms | %s | %s MiB | %s MiB | %s/%s |\n' \
    "$SESSIONS" "$((SESSIONS * MESSAGES))" "$(echo "$SUB_MS / 1000" | bc -l)" "$(echo "$FILL_MS / 1000" | bc -l)" \
    "$RSS_EMPTY" "$RSS_SESSIONS" "$RSS_FILLED" "$STARTED_MS" "$(echo "$LOAD" | grep -o 'ms=[0-9]*')" \
    "$RSS_AFTER" "$DISK" "$GOT" "$MESSAGES"
